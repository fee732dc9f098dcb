//! History (issue 29): what a recovery costs, and what keeping a history costs a broadcast.
//!
//! Real parts, as the tests run them: one nats-server with JetStream, the provider's release
//! binary started as the host starts it, a played component over wRPC in this process, and
//! tokio-tungstenite clients on 127.0.0.1, also in this process.
//!
//! - recovery: `BENCH_CLIENTS` (1000) clients subscribe to `news.all` on a listener with
//!   `history_size` = `BENCH_MISSED` (10000), each gets one broadcast (its offset) and leaves;
//!   the component publishes `BENCH_MISSED` broadcasts of 16 B (16 in flight) while nobody
//!   listens; then every client comes back at once and subscribes with `since` its offset. Time
//!   until the last client has all it missed and its `"recovered": true`; messages lost (missed
//!   and not replayed), duplicated or out of order; the provider's CPU and peak memory.
//! - fanout: two listeners of one provider, one keeping a history (`history_size` 100) and one
//!   not, each with `BENCH_CLIENTS` subscribed clients; `BENCH_BROADCASTS` (1000) broadcasts of
//!   16 B, one publish in flight, then 16 in flight, off and on alternately, twice: frames/s
//!   until the last client got the last one, and the ratio on / off.
//!
//! `BENCH_PHASES` (`recovery,fanout`) picks phases. Numbers go to stdout.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::component::PlayedComponent;
use common::nats::{free_port, NatsServer};
use common::provider::ProviderProcess;
use futures::{SinkExt as _, StreamExt as _};
use support::{cpu_of, env_usize, listener};
use tokio_tungstenite::tungstenite::Message;

const LIMIT: Duration = Duration::from_secs(120);
const SUBJECT: &str = "news.all";

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str) -> Ws {
    for _ in 0..100 {
        if let Ok((ws, _)) = tokio_tungstenite::connect_async(url).await {
            return ws;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("cannot connect to {url}");
}

/// Subscribes (with `since` when given) and waits for the `ok` answer.
async fn subscribe(ws: &mut Ws, since: Option<(u64, &str)>) {
    let frame = match since {
        Some((offset, epoch)) => {
            serde_json::json!({ "subscribe": SUBJECT, "since": { "offset": offset, "epoch": epoch } })
        }
        None => serde_json::json!({ "subscribe": SUBJECT }),
    };
    ws.send(Message::text(frame.to_string())).await.unwrap();
    if since.is_none() {
        let answer = ws.next().await.unwrap().unwrap();
        assert!(answer.to_text().unwrap().contains("\"ok\""), "{answer:?}");
    }
}

fn json(message: &Message) -> serde_json::Value {
    serde_json::from_slice(&message.clone().into_data()).unwrap()
}

async fn publish(component: &PlayedComponent, body: Bytes) -> bool {
    matches!(
        component.publish("default", SUBJECT, body, None).await,
        Ok(Ok(()))
    )
}

/// `n` publishes of 16 B, `in_flight` at once; how many failed.
async fn broadcast(component: &PlayedComponent, n: usize, in_flight: usize) -> usize {
    let body = Bytes::from_static(b"0123456789abcdef");
    futures::stream::iter(0..n)
        .map(|_| publish(component, body.clone()))
        .buffer_unordered(in_flight)
        .filter(|ok| futures::future::ready(!ok))
        .count()
        .await
}

/// The provider's resident KiB, sampled every 50 ms until `stop`; the peak.
fn sample_rss(
    pid: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut peak = 0;
        while !stop.load(Ordering::Relaxed) {
            peak = peak.max(support::rss_of(&pid));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        peak
    })
}

async fn recovery(nats: &NatsServer, clients: usize, missed: usize) {
    let listen = format!("127.0.0.1:{}", free_port());
    let url = format!("ws://{listen}/");
    let size = missed.to_string();
    let provider = listener(nats, "bench-recovery", &[("history_size", &size)], listen).await;
    provider
        .logs
        .wait_for(&["a listener keeps its broadcasts"], LIMIT)
        .await;
    let component = PlayedComponent::start(&provider, &nats.url, "bench-recovery").await;
    // Every client subscribes, gets one broadcast and leaves with its offset and epoch.
    let mut sockets = Vec::with_capacity(clients);
    for _ in 0..clients {
        let mut ws = connect(&url).await;
        subscribe(&mut ws, None).await;
        sockets.push(ws);
    }
    component
        .publish_when_ready("default", SUBJECT, &b"first"[..], LIMIT)
        .await;
    let mut since = Vec::with_capacity(clients);
    for mut ws in sockets {
        let frame = json(&ws.next().await.unwrap().unwrap());
        since.push((
            frame["offset"].as_u64().unwrap(),
            frame["epoch"].as_str().unwrap().to_string(),
        ));
        let _ = ws.close(None).await;
    }
    let failed = broadcast(&component, missed, 16).await;
    assert_eq!(failed, 0, "publishes failed while the clients were away");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = provider.rss_kib();

    let pid = provider.pid().to_string();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let peak = sample_rss(pid.clone(), Arc::clone(&stop));
    let (cpu_provider, cpu_bench) = (cpu_of(&pid), cpu_of("self"));
    let started = Instant::now();
    let lost = Arc::new(AtomicUsize::new(0));
    let wrong = Arc::new(AtomicUsize::new(0));
    let incomplete = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = since
        .into_iter()
        .map(|(offset, epoch)| {
            let (url, lost, wrong, incomplete) =
                (url.clone(), lost.clone(), wrong.clone(), incomplete.clone());
            tokio::spawn(async move {
                let mut ws = connect(&url).await;
                subscribe(&mut ws, Some((offset, &epoch))).await;
                let mut got = 0usize;
                let mut last = offset;
                let deadline = tokio::time::Instant::now() + LIMIT;
                loop {
                    let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline, ws.next()).await
                    else {
                        break;
                    };
                    // Pings (the keepalive, past ping_interval_sec) are not broadcasts.
                    let Message::Text(text) = &message else {
                        continue;
                    };
                    let text = text.as_str();
                    if text.contains("\"recovered\"") {
                        if !text.contains("true") {
                            incomplete.fetch_add(1, Ordering::Relaxed);
                        }
                        break;
                    }
                    // Cheap: the offset is the only field read of 10 million frames.
                    let at = text.find("\"offset\":").map(|i| i + 9);
                    let this: u64 = at
                        .and_then(|i| {
                            text[i..]
                                .split(|c: char| !c.is_ascii_digit())
                                .next()
                                .and_then(|d| d.parse().ok())
                        })
                        .unwrap_or(0);
                    if this != last + 1 && wrong.fetch_add(1, Ordering::Relaxed) < 4 {
                        println!("  out of order: after {last} came {this}: {text:.200}");
                    }
                    last = this;
                    got += 1;
                }
                if got != missed {
                    println!("  a client got {got} of the {missed} it missed");
                }
                lost.fetch_add(missed.saturating_sub(got), Ordering::Relaxed);
                let elapsed = started.elapsed();
                let _ = ws.close(None).await;
                elapsed
            })
        })
        .collect();
    let mut times = Vec::with_capacity(clients);
    for task in tasks {
        times.push(task.await.unwrap());
    }
    let wall = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let peak = peak.await.unwrap();
    let (cpu_provider, cpu_bench) = (cpu_of(&pid) - cpu_provider, cpu_of("self") - cpu_bench);
    times.sort();
    let frames = clients * missed;
    println!(
        "recovery: {clients} clients x {missed} missed = {frames} frames in {:.2} s ({:.0} frames/s); caught up p50 {:.2} s, p99 {:.2} s, last {:.2} s; lost {}, out of order {}, recovered false {}; CPU s provider {cpu_provider:.2}, bench {cpu_bench:.2}; provider RSS {} MiB before, peak {} MiB",
        wall.as_secs_f64(),
        frames as f64 / wall.as_secs_f64(),
        times[clients / 2].as_secs_f64(),
        times[clients * 99 / 100].as_secs_f64(),
        times[clients - 1].as_secs_f64(),
        lost.load(Ordering::Relaxed),
        wrong.load(Ordering::Relaxed),
        incomplete.load(Ordering::Relaxed),
        rss_before / 1024,
        peak / 1024,
    );
    drop(component);
    drop(provider);
}

/// One listener's clients, counting the frames they get.
struct Audience {
    component: PlayedComponent,
    frames: Arc<AtomicUsize>,
}

async fn audience(
    provider: &ProviderProcess,
    nats: &NatsServer,
    id: &str,
    url: &str,
    clients: usize,
) -> Audience {
    let component = PlayedComponent::start(provider, &nats.url, id).await;
    let frames = Arc::new(AtomicUsize::new(0));
    for _ in 0..clients {
        let mut ws = connect(url).await;
        subscribe(&mut ws, None).await;
        let frames = Arc::clone(&frames);
        tokio::spawn(async move {
            while let Some(Ok(message)) = ws.next().await {
                if message.is_text() {
                    frames.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    Audience { component, frames }
}

/// Frames/s of `n` broadcasts to `audience`'s clients, `in_flight` publishes at once.
async fn fanout_rate(audience: &Audience, clients: usize, n: usize, in_flight: usize) -> f64 {
    let start = audience.frames.load(Ordering::Relaxed);
    let target = start + n * clients;
    let began = Instant::now();
    let failed = broadcast(&audience.component, n, in_flight).await;
    assert_eq!(failed, 0, "publishes failed");
    let deadline = Instant::now() + LIMIT;
    while audience.frames.load(Ordering::Relaxed) < target && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let got = audience.frames.load(Ordering::Relaxed) - start;
    assert_eq!(got, n * clients, "frames lost");
    got as f64 / began.elapsed().as_secs_f64()
}

async fn fanout(nats: &NatsServer, clients: usize, broadcasts: usize) {
    let (off_listen, on_listen) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let provider = listener(nats, "bench-off", &[], off_listen.clone()).await;
    let on_config = [("listen", on_listen.as_str()), ("history_size", "100")];
    provider
        .put_link(&provider.consumer_link("bench-on", "default", &on_config))
        .await;
    provider
        .put_link(&provider.handler_link("bench-on", "default", &on_config))
        .await;
    provider
        .logs
        .wait_for(&["a listener keeps its broadcasts"], LIMIT)
        .await;
    let off = audience(
        &provider,
        nats,
        "bench-off",
        &format!("ws://{off_listen}/"),
        clients,
    )
    .await;
    let on = audience(
        &provider,
        nats,
        "bench-on",
        &format!("ws://{on_listen}/"),
        clients,
    )
    .await;
    for audience in [&off, &on] {
        // Warm-up: every client gets one.
        fanout_rate(audience, clients, 10, 1).await;
    }
    for in_flight in [1, 16] {
        let mut ratios = Vec::new();
        for round in 0..2 {
            let off_rate = fanout_rate(&off, clients, broadcasts, in_flight).await;
            let on_rate = fanout_rate(&on, clients, broadcasts, in_flight).await;
            ratios.push(on_rate / off_rate);
            println!(
                "fanout {clients} clients x {broadcasts} of 16 B, {in_flight} in flight, round {round}: history off {off_rate:.0} frames/s, on {on_rate:.0} frames/s, on/off {:.2}",
                on_rate / off_rate
            );
        }
        println!(
            "fanout {in_flight} in flight: on/off {:?}",
            ratios.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>()
        );
    }
}

#[tokio::main]
async fn main() {
    let clients = env_usize("BENCH_CLIENTS", 1000);
    let missed = env_usize("BENCH_MISSED", 10_000);
    let broadcasts = env_usize("BENCH_BROADCASTS", 1000);
    let phases = std::env::var("BENCH_PHASES").unwrap_or_else(|_| "recovery,fanout".into());
    let nats = NatsServer::start().await;
    for phase in phases.split(',') {
        match phase.trim() {
            "recovery" => recovery(&nats, clients, missed).await,
            "fanout" => fanout(&nats, clients, broadcasts).await,
            other => panic!("unknown phase {other}"),
        }
    }
}
