//! Quick throughput figures through the real provider binary, driven exactly as the tests drive
//! it: a real nats-server, HostData on stdin, a played component over wRPC and a WebSocket server
//! on 127.0.0.1.
//!
//! `cargo bench --bench throughput` (release build). `BENCH_MESSAGES` sets the messages per phase.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use common::ws::{Event, Message, WsServer};
use common::Rig;
use futures::StreamExt as _;

const WAIT: Duration = Duration::from_secs(120);

struct Row {
    phase: String,
    size: usize,
    in_flight: usize,
    messages: usize,
    seconds: f64,
}

#[tokio::main]
async fn main() {
    let messages: usize = std::env::var("BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let mut rows = Vec::new();
    for size in [16, 1024] {
        for in_flight in [1, 64] {
            let n = if in_flight == 1 {
                messages / 4
            } else {
                messages
            };
            rows.push(publish(size, in_flight, n).await);
        }
        for in_flight in [1, 64] {
            let n = if in_flight == 1 {
                messages / 4
            } else {
                messages
            };
            rows.push(delivery(size, in_flight, n).await);
        }
    }
    let mut latencies = Vec::new();
    for in_flight in [1, 64] {
        let n = if in_flight == 1 {
            messages / 4
        } else {
            messages
        };
        let (row, p50, p99) = request(16, in_flight, n).await;
        rows.push(row);
        latencies.push((in_flight, p50, p99));
    }
    println!(
        "\n{:<10} {:>6} {:>10} {:>9} {:>9} {:>12}",
        "phase", "bytes", "in flight", "messages", "seconds", "msgs/s"
    );
    for r in &rows {
        println!(
            "{:<10} {:>6} {:>10} {:>9} {:>9.3} {:>12.0}",
            r.phase,
            r.size,
            r.in_flight,
            r.messages,
            r.seconds,
            r.messages as f64 / r.seconds
        );
    }
    println!();
    for (in_flight, p50, p99) in latencies {
        println!("request round trip, {in_flight} in flight: p50 {p50:?}, p99 {p99:?}");
    }
}

/// `request` calls answered by a responder server: throughput and round-trip percentiles.
async fn request(size: usize, in_flight: usize, n: usize) -> (Row, Duration, Duration) {
    let rig = Rig::start().await;
    let server = WsServer::responder().await;
    rig.provider
        .put_link(
            &rig.provider
                .consumer_link("bench", "default", &[("uri", &server.uri())]),
        )
        .await;
    let component = rig.component("bench").await;
    component
        .publish_when_ready("default", "warm", &b""[..], WAIT)
        .await;
    let body = vec![b'x'; size];
    let started = Instant::now();
    let mut took: Vec<Duration> = futures::stream::iter(0..n)
        .map(|_| async {
            let t = Instant::now();
            let answer = component
                .request("default", "bench.request", body.clone(), 5000)
                .await;
            assert!(matches!(answer, Ok(Ok(_))), "request failed: {answer:?}");
            t.elapsed()
        })
        .buffer_unordered(in_flight)
        .collect()
        .await;
    let seconds = started.elapsed().as_secs_f64();
    took.sort();
    let pct = |p: f64| took[((took.len() as f64 * p) as usize).min(took.len() - 1)];
    let row = Row {
        phase: "request".into(),
        size,
        in_flight,
        messages: n,
        seconds,
    };
    (row, pct(0.50), pct(0.99))
}

/// `publish` calls from the component until the server has received every frame.
async fn publish(size: usize, in_flight: usize, n: usize) -> Row {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let max_pending = (in_flight * 2).to_string();
    rig.provider
        .put_link(&rig.provider.consumer_link(
            "bench",
            "default",
            &[("uri", &server.uri()), ("max_pending", &max_pending)],
        ))
        .await;
    let component = rig.component("bench").await;
    component
        .publish_when_ready("default", "warm", &b""[..], WAIT)
        .await;
    server.frame(WAIT).await;
    let body = vec![b'x'; size];

    let started = Instant::now();
    let calls = futures::stream::iter(0..n)
        .map(|_| component.publish("default", "bench.publish", body.clone(), None))
        .buffer_unordered(in_flight);
    let failures: Vec<String> = calls
        .filter_map(|r| {
            futures::future::ready(match r {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(e) => Some(format!("{e:#}")),
            })
        })
        .collect()
        .await;
    let mut frames = 0;
    server
        .expect("every frame", WAIT, |e| {
            frames += usize::from(matches!(e, Event::Frame { .. }));
            (frames == n - failures.len()).then_some(())
        })
        .await;
    let seconds = started.elapsed().as_secs_f64();
    assert!(
        failures.is_empty(),
        "{} publish calls failed, first: {}",
        failures.len(),
        failures[0]
    );
    Row {
        phase: "publish".into(),
        size,
        in_flight,
        messages: n,
        seconds,
    }
}

/// Frames pushed by the server until the component's handler got every one.
async fn delivery(size: usize, max_in_flight: usize, n: usize) -> Row {
    let rig = Rig::start().await;
    let server = WsServer::recorder().await;
    let component = rig.component("bench").await;
    let limit = max_in_flight.to_string();
    rig.provider
        .put_link(&rig.provider.handler_link(
            "bench",
            "default",
            &[("uri", &server.uri()), ("max_in_flight", &limit)],
        ))
        .await;
    server.connected(WAIT).await;
    let frame = serde_json::json!({
        "subject": "bench.delivery",
        "body": base64::engine::general_purpose::STANDARD.encode(vec![b'x'; size]),
    })
    .to_string();
    let started = Instant::now();
    for _ in 0..n {
        server.push(Message::text(frame.clone()));
    }
    let received = component.wait_received(n, WAIT).await;
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(received.len(), n, "messages lost or duplicated");
    Row {
        phase: "delivery".into(),
        size,
        in_flight: max_in_flight,
        messages: n,
        seconds,
    }
}
