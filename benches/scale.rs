//! Server mode at scale: the provider's listener next to nats-server's own WebSocket listener,
//! the same workloads against both in one run, 10,000 clients on this machine.
//!
//! Real parts, as the tests run them: ONE nats-server (JetStream on, as the provider needs it)
//! that also has a `websocket { no_tls: true }` listener (the peer), the provider's release
//! binary started as the host starts it on that server (its lattice), with one listener on
//! `127.0.0.1:<port>` path `/` (both links of a played component, `max_clients` 20000, every other
//! setting at its default, keepalive pings every 20 s included), the played component over wRPC in
//! this process, and the clients, also in this process.
//!
//! The clients are one lean implementation for both systems: a raw `TcpStream`, a hand-written
//! HTTP/1.1 upgrade, a minimal frame reader (8 KiB read buffer, no extensions), masked writes,
//! pings answered. Ours subscribes with `{"subscribe":"bench.all"}` and counts one text frame per
//! message; the peer speaks NATS inside the frames (`CONNECT`, `SUB bench.all 1`, `PING` until
//! `PONG`) and counts `MSG`s from the byte stream (a frame may carry many, a message may span
//! frames). Publishing: ours through the played component's `publish` (up to 64 calls in flight),
//! the peer's through a core NATS client in this process (publishes, then a flush). Each client
//! records the arrival of its k-th message of a burst into a shared `fetch_max` slot k
//! (nanoseconds since the start), so a publish's latency is the arrival at the last client minus
//! the time it was issued; a phase ends when every client got every message or after 60 s
//! (reported as incomplete).
//!
//! Phases (`BENCH_PHASES`, default `idle,fanout,slow,inbound,churn`), each for ours then for
//! the peer:
//!
//! - idle: `BENCH_CLIENTS` (10000) clients connect, 64 at a time, each subscribed: clients/s over
//!   the whole fleet, the server's RSS before them, 3 s after the last connect and after 10 s more
//!   (KiB per client over the RSS before; nats-server's RSS before already holds the provider's
//!   connections), and the server's CPU over those 10 s;
//! - fanout: 200 publishes back to back (ours: `BENCH_FANOUT_IN_FLIGHT`, 64, in flight) of 16 B and of 1 KiB to all clients, then 100 publishes
//!   of 16 B one every 10 ms ("tick"); then all but 1000 clients leave and the same again with
//!   1000: messages/s delivered (publishes x clients / first publish to last arrival), p50 and p99
//!   of the publish-to-last-client latency over the publishes;
//! - slow: 1000 clients, `BENCH_SLOW_PUBLISHES` (6000) publishes of 1 KiB: the messages/s of 900 of
//!   them with all reading, then with the other 100 not reading (they keep their socket open). On
//!   loopback the kernel holds about 5 MB per unread socket (the receiver's 1.4 MB, the sender's up
//!   to 4 MB), so fewer publishes (2000: 2.8 MB of envelopes) never fill ours's 1 MiB queue. Ours
//!   closes a client whose outgoing queue is full with 1008: counted by `$ws.stats`
//!   (`slow_consumer_closes`), and by the 100 once they read again (a Close frame, or only the end
//!   of the connection when the Close could not be written);
//! - inbound: 1000 fresh clients each send 16 B messages at `BENCH_INBOUND_RATE` (40) per second (40,000/s offered, over the ceiling)
//!   for `BENCH_INBOUND_SECS` (5) s: messages/s reaching the component's handle-message (ours,
//!   which only counts) or a NATS subscriber in this process (the peer; its latency from a
//!   timestamp in the body). Next to it the lattice's ceiling: handle-message called directly
//!   over wRPC from this process, 64 in flight;
//! - churn: for `BENCH_CHURN_SECS` (10) s, 64 workers connect (and subscribe / CONNECT + PING),
//!   send a Close and wait for the server to close, over and over: connections/s, and the server's
//!   RSS after it and 5 s later.
//!
//! Each row has the server's CPU seconds (the provider for ours, nats-server for the peer), this
//! process's (the clients, the component, the publisher) and nats-server's (for ours, the
//! lattice's share). Rows go to stdout, then a side-by-side table (ours, peer, ours/peer), and all
//! of them to `target/bench/scale.json`; the provider's log to `target/bench/scale-provider.log`.
//! Run: `CARGO_TARGET_DIR=target cargo bench --bench scale`.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/fleet.rs"]
mod fleet;
mod support;
use fleet::*;
#[path = "support/target.rs"]
mod target;
use target::*;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::component::{Behaviour, PlayedComponent};
use common::nats::{free_port, NatsServer};
use futures::StreamExt as _;
use support::{env_usize, listener};
use tokio::io::AsyncWriteExt as _;

/// The bound of every wait: a phase that has not finished by then is reported as incomplete.
const LIMIT: Duration = Duration::from_secs(60);
const COMPONENT: &str = "bench-scale";
const SUBJECT: &str = "bench.all";
const INBOUND_SUBJECT: &str = "bench.in";
const READ_BUF: usize = 8 * 1024;
const CONNECT_AT_ONCE: usize = 64;
const IN_FLIGHT: usize = 64;

/// Ours's publishes in flight in the fan-out bursts: `BENCH_FANOUT_IN_FLIGHT` (64); 1 is a
/// component that publishes one at a time, each waiting for its answer (the peer's publisher
/// never waits).
fn fanout_in_flight() -> usize {
    env_usize("BENCH_FANOUT_IN_FLIGHT", IN_FLIGHT).max(1)
}

/// The provider's own `handler-client` world: bindings that invoke `handle-message` (the ceiling).
#[allow(dead_code)]
mod hc {
    delivery_bindgen::generate!({
        world: "handler-client",
        path: "wit",
        anyhow_path: "::delivery_bindgen::anyhow",
        bitflags_path: "::delivery_bindgen::bitflags",
        bytes_path: "::delivery_bindgen::bytes",
        futures_path: "::delivery_bindgen::futures",
        tokio_path: "::delivery_bindgen::tokio",
        tokio_util_path: "::delivery_bindgen::tokio_util",
        tracing_path: "::delivery_bindgen::tracing",
        wasm_tokio_path: "::delivery_bindgen::wasm_tokio",
        wrpc_transport_path: "::delivery_bindgen::wrpc_transport",
        with: {
            "wasmcloud:messaging/handler@0.2.0": generate,
            "wasmcloud:messaging/types@0.2.0": generate,
        }
    });
}

async fn idle(t: &Target<'_>, rows: &mut Vec<Row>, clients: usize) -> Fleet {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = t.rss();
    let from = t.cpu();
    let fleet = Fleet::connect(t.sys, t.port, clients, &t.shared).await;
    let to = t.cpu();
    let connected = fleet.clients.len();
    let counted = match t.sys {
        Sys::Ours => stat(t.component, "clients").await.to_string(),
        Sys::Peer => "-".into(),
    };
    rows.push(t.row(
        format!("connect {clients} clients, {CONNECT_AT_ONCE} at a time"),
        connected as f64 / (to.at - from.at).as_secs_f64(),
        "clients/s",
        format!(
            "{connected} connected and subscribed, {} failed; $ws.stats clients {counted}",
            fleet.failed
        ),
        from,
        to,
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_3 = t.rss();
    let from = t.cpu();
    let per = |rss: u64| rss.saturating_sub(rss_before) as f64 / connected.max(1) as f64;
    rows.push(t.row(
        "idle RSS, 3 s after the last connect",
        per(rss_3),
        "KiB/client",
        format!("server RSS {rss_before} -> {rss_3} KiB"),
        from,
        from,
    ));
    tokio::time::sleep(Duration::from_secs(10)).await;
    let to = t.cpu();
    let rss_13 = t.rss();
    rows.push(t.row(
        "idle RSS, 10 s later",
        per(rss_13),
        "KiB/client",
        format!("server RSS {rss_before} -> {rss_13} KiB"),
        to,
        to,
    ));
    rows.push(t.row(
        format!("idle CPU over 10 s, {connected} clients"),
        (to.server - from.server) / (to.at - from.at).as_secs_f64() * 100.0,
        "% of a core",
        format!(
            "{} messages, {} connections ended meanwhile",
            t.shared.total.load(Ordering::Relaxed),
            t.shared.ended.load(Ordering::Relaxed)
        ),
        from,
        to,
    ));
    fleet
}

async fn fanout(t: &Target<'_>, rows: &mut Vec<Row>, fleet: &mut Fleet) {
    for clients in [fleet.clients.len(), 1000.min(fleet.clients.len())] {
        if clients < fleet.clients.len() {
            fleet.shrink(clients).await;
            if t.sys == Sys::Ours {
                let deadline = Instant::now() + Duration::from_secs(20);
                while stat(t.component, "clients").await as usize > clients
                    && Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let clients = fleet.clients.len();
        t.fanout(rows, clients, 16, 200, None, "burst").await;
        t.fanout(rows, clients, 1024, 200, None, "burst").await;
        t.fanout(
            rows,
            clients,
            16,
            100,
            Some(Duration::from_millis(10)),
            "tick 10 ms",
        )
        .await;
    }
}

async fn slow(t: &Target<'_>, rows: &mut Vec<Row>, fleet: &mut Fleet, n: usize) {
    let clients = fleet.clients.len();
    let readers = clients.saturating_sub(100);
    let (all_rate, got, target, failed, from, to) = t.slow_run(fleet, n, QUIET).await;
    rows.push(t.row(
        format!("slow: 1 KiB x {n} to {clients}, all reading: {readers}'s rate"),
        all_rate,
        "msgs/s",
        format!("{got} of {target} messages, {failed} publishes failed"),
        from,
        to,
    ));
    let closes_before = t.shared.closes(1008);
    let ended_before = t.shared.ended.load(Ordering::Relaxed);
    let stat_before = match t.sys {
        Sys::Ours => stat(t.component, "slow_consumer_closes").await,
        Sys::Peer => 0,
    };
    let (slow_rate, got, target, failed, from, to) = t.slow_run(fleet, n, PAUSED).await;
    let server_rss = t.rss();
    // The 100 read again (what is left): a close the server sent them shows now.
    for client in &fleet.clients[..100.min(clients)] {
        client.ctl.set(QUIET);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let closed = t.shared.closes(1008) - closes_before;
    let ended = t.shared.ended.load(Ordering::Relaxed) - ended_before;
    let stat_closes = match t.sys {
        Sys::Ours => (stat(t.component, "slow_consumer_closes").await - stat_before).to_string(),
        Sys::Peer => "-".into(),
    };
    rows.push(t.row(
        format!("slow: 1 KiB x {n} to {clients}, 100 not reading: {readers}'s rate"),
        slow_rate,
        "msgs/s",
        format!(
            "{got} of {target} messages, {failed} publishes failed; of the 100, once reading again: {closed} got a 1008 Close, {ended} connections ended (slow_consumer_closes +{stat_closes}); server RSS then {server_rss} KiB"
        ),
        from,
        to,
    ));
    rows.push(t.row(
        "slow: rate with 100 not reading / all reading",
        slow_rate / all_rate,
        "ratio",
        String::new(),
        from,
        to,
    ));
}

async fn inbound(t: &Target<'_>, rows: &mut Vec<Row>, fleet: &Fleet, rate: usize, secs: usize) {
    let clients = fleet.clients.len();
    let each = rate * secs;
    let total = clients * each;
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    // The peer's arrivals: a NATS subscriber here, latency from the body's timestamp.
    let counted = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let mut subscriber = None;
    if t.sys == Sys::Peer {
        let mut sub = t.publisher.subscribe(INBOUND_SUBJECT).await.unwrap();
        t.publisher.flush().await.unwrap();
        let (counted, latencies) = (Arc::clone(&counted), Arc::clone(&latencies));
        subscriber = Some(tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let now = now_ns();
                if let Some(sent) = std::str::from_utf8(&msg.payload)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                {
                    latencies
                        .lock()
                        .unwrap()
                        .push(now.saturating_sub(sent) as f64 / 1e6);
                }
                counted.fetch_add(1, Ordering::Relaxed);
            }
        }));
    } else {
        t.component.set_behaviour(Behaviour {
            count_only: true,
            ..Default::default()
        });
    }
    let before = t.component.count();
    let arrived = || match t.sys {
        Sys::Ours => t.component.count() - before,
        Sys::Peer => counted.load(Ordering::Relaxed),
    };
    let from = t.cpu();
    let t0 = tokio::time::Instant::now() + Duration::from_millis(20);
    let sys = t.sys;
    let senders: Vec<_> = fleet
        .clients
        .iter()
        .enumerate()
        .map(|(i, client)| {
            let wr = Arc::clone(&client.wr);
            let mut next = t0 + period.mul_f64(i as f64 / clients as f64);
            tokio::spawn(async move {
                let mut sent = 0;
                for _ in 0..each {
                    tokio::time::sleep_until(next).await;
                    next += period;
                    let stamp = format!("{:016}", now_ns());
                    let payload = match sys {
                        Sys::Ours => {
                            common::envelope(INBOUND_SUBJECT, stamp.as_bytes(), None).into_bytes()
                        }
                        Sys::Peer => {
                            format!("PUB {INBOUND_SUBJECT} 16\r\n{stamp}\r\n").into_bytes()
                        }
                    };
                    let opcode = if sys == Sys::Ours { TEXT } else { BINARY };
                    if wr
                        .lock()
                        .await
                        .write_all(&frame(opcode, &payload))
                        .await
                        .is_err()
                    {
                        break;
                    }
                    sent += 1;
                }
                sent
            })
        })
        .collect();
    let start = Instant::now();
    let (mut got, mut last_arrival) = (0, Duration::ZERO);
    let mut sent = None;
    let mut senders = Some(senders);
    while start.elapsed() < LIMIT {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = arrived();
        if now > got {
            got = now;
            last_arrival = start.elapsed();
        }
        if sent.is_none() && senders.as_ref().unwrap().iter().all(|s| s.is_finished()) {
            let mut n = 0;
            for s in senders.take().unwrap() {
                n += s.await.unwrap_or(0);
            }
            sent = Some(n);
        }
        if got >= total
            || (sent.is_some() && start.elapsed() - last_arrival > Duration::from_secs(12))
        {
            break;
        }
    }
    let to = t.cpu();
    if let Some(s) = subscriber {
        s.abort();
    }
    let sent = sent.map_or("?".to_string(), |n| n.to_string());
    let mut lat = std::mem::take(&mut *latencies.lock().unwrap());
    lat.sort_by(f64::total_cmp);
    let phase = format!("inbound 16 B, {clients} clients x {rate}/s for {secs} s");
    let offered = (clients * rate) as f64;
    rows.push(t.row(
        format!("{phase}: arrived"),
        got as f64 / last_arrival.saturating_sub(Duration::from_millis(20)).as_secs_f64(),
        "msgs/s",
        format!(
            "{got} of {total} arrived ({sent} sent), the last after {:.2} s; offered {offered:.0}/s; {}",
            last_arrival.as_secs_f64(),
            match t.sys {
                Sys::Ours => "latency not measured (the played component keeps no arrival times)",
                Sys::Peer => "at a NATS subscriber in the bench",
            }
        ),
        from,
        to,
    ));
    if t.sys == Sys::Ours {
        for p in ["p50", "p99"] {
            rows.push(t.row(
                format!("{phase}: {p}"),
                f64::NAN,
                "ms",
                "not measured".into(),
                from,
                to,
            ));
        }
    } else {
        rows.push(t.row(
            format!("{phase}: p50"),
            percentile(&lat, 0.5),
            "ms",
            "send to arrival".into(),
            from,
            to,
        ));
        rows.push(t.row(
            format!("{phase}: p99"),
            percentile(&lat, 0.99),
            "ms",
            "send to arrival".into(),
            from,
            to,
        ));
    }
}

/// The lattice's ceiling for ours: handle-message called directly, 64 in flight; msgs/s.
async fn ceiling(t: &Target<'_>, rows: &mut Vec<Row>, n: usize) -> f64 {
    t.component.set_behaviour(Behaviour {
        count_only: true,
        ..Default::default()
    });
    let nats = Arc::new(delivery_nats::connect(t.nats_url.as_str()).await.unwrap());
    let client =
        delivery_wrpc::Client::new(nats, format!("{}.{COMPONENT}", t.provider.lattice), None)
            .await
            .unwrap();
    let msg = hc::wasmcloud::messaging::types::BrokerMessage {
        subject: INBOUND_SUBJECT.into(),
        body: Bytes::from_static(b"0000000000000000"),
        reply_to: None,
    };
    let before = t.component.count();
    let from = t.cpu();
    let failed = futures::stream::iter(0..n)
        .map(|_| {
            let call = hc::wasmcloud::messaging::handler::handle_message(&client, None, &msg);
            async move {
                matches!(
                    tokio::time::timeout(Duration::from_secs(10), call).await,
                    Ok(Ok(Ok(())))
                )
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .filter(|ok| futures::future::ready(!*ok))
        .count()
        .await;
    let to = t.cpu();
    let rate = (n - failed) as f64 / (to.at - from.at).as_secs_f64();
    rows.push(t.row(
        format!("lattice ceiling: handle-message x {n} direct, {IN_FLIGHT} in flight"),
        rate,
        "msgs/s",
        format!(
            "{failed} failed, {} counted by the component (server CPU = the idle provider)",
            t.component.count() - before
        ),
        from,
        to,
    ));
    rate
}

async fn churn(t: &Target<'_>, rows: &mut Vec<Row>, secs: u64) {
    let rss_before = t.rss();
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let from = t.cpu();
    let end = Instant::now() + Duration::from_secs(secs);
    let (sys, port) = (t.sys, t.port);
    let workers: Vec<_> = (0..CONNECT_AT_ONCE)
        .map(|_| {
            let (ok, failed, errors) = (Arc::clone(&ok), Arc::clone(&failed), Arc::clone(&errors));
            tokio::spawn(async move {
                while Instant::now() < end {
                    let one = tokio::time::timeout(Duration::from_secs(10), async {
                        let mut conn = Conn::open(sys, port).await?;
                        conn.subscribe(sys, false).await?;
                        conn.wr
                            .write_all(&close_frame())
                            .await
                            .map_err(|e| format!("close: {e}"))?;
                        // Until the server closes: its Close, then its end of the TCP connection.
                        let _ = tokio::time::timeout(Duration::from_secs(2), async {
                            loop {
                                match conn.reader.fill(&mut conn.rd).await {
                                    Ok(0) | Err(_) => break,
                                    Ok(_) => {
                                        let _ = conn.reader.process(&mut conn.evs);
                                        conn.evs.clear();
                                    }
                                }
                            }
                        })
                        .await;
                        Ok::<_, String>(())
                    })
                    .await
                    .unwrap_or_else(|_| Err("no answer within 10 s".into()));
                    match one {
                        Ok(()) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            let e: String = e.chars().take(80).collect();
                            *errors.lock().unwrap().entry(e).or_default() += 1;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
    let to = t.cpu();
    let rss_after = t.rss();
    let ok = ok.load(Ordering::Relaxed);
    let errors = errors.lock().unwrap().clone();
    rows.push(t.row(
        format!("churn: {CONNECT_AT_ONCE} workers connect, subscribe, close for {secs} s"),
        ok as f64 / (to.at - from.at).as_secs_f64(),
        "conns/s",
        format!(
            "{ok} connections, {} failed {errors:?}",
            failed.load(Ordering::Relaxed)
        ),
        from,
        to,
    ));
    rows.push(t.row(
        "churn: server RSS right after",
        rss_after as f64,
        "KiB",
        format!("{rss_before} KiB before the churn"),
        to,
        to,
    ));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let later = t.cpu();
    rows.push(t.row(
        "churn: server RSS 5 s later",
        t.rss() as f64,
        "KiB",
        String::new(),
        to,
        later,
    ));
}

async fn run_system(
    t: &Target<'_>,
    rows: &mut Vec<Row>,
    phase: &dyn Fn(&str) -> bool,
    clients: usize,
) {
    println!("--- {} ---", t.sys.name());
    let mut fleet = None;
    if phase("idle") || phase("fanout") {
        let mut f = idle(t, rows, clients).await;
        if phase("fanout") {
            fanout(t, rows, &mut f).await;
        }
        fleet = Some(f);
    }
    if phase("slow") {
        let mut f = match fleet.take() {
            Some(mut f) if f.clients.len() >= 1000 => {
                f.shrink(1000).await;
                f
            }
            other => {
                if let Some(mut f) = other {
                    f.shrink(0).await;
                }
                Fleet::connect(t.sys, t.port, 1000, &t.shared).await
            }
        };
        slow(t, rows, &mut f, env_usize("BENCH_SLOW_PUBLISHES", 6000)).await;
        f.shrink(0).await;
    }
    if let Some(mut f) = fleet.take() {
        f.shrink(0).await;
    }
    if phase("inbound") {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let f = Fleet::connect(t.sys, t.port, 1000, &t.shared).await;
        inbound(
            t,
            rows,
            &f,
            env_usize("BENCH_INBOUND_RATE", 40),
            env_usize("BENCH_INBOUND_SECS", 5),
        )
        .await;
        let mut f = f;
        f.shrink(0).await;
        if t.sys == Sys::Ours {
            let ceiling_rate = ceiling(t, rows, env_usize("BENCH_CEILING_CALLS", 20000)).await;
            let inbound_rate = rows
                .iter()
                .rev()
                .find(|r| {
                    r.system == "ours" && r.phase.starts_with("inbound") && r.unit == "msgs/s"
                })
                .map_or(f64::NAN, |r| r.value);
            let now = t.cpu();
            rows.push(t.row(
                "inbound / lattice ceiling",
                inbound_rate / ceiling_rate,
                "ratio",
                String::new(),
                now,
                now,
            ));
        }
    }
    if phase("churn") {
        tokio::time::sleep(Duration::from_secs(1)).await;
        churn(t, rows, env_usize("BENCH_CHURN_SECS", 10) as u64).await;
    }
}

fn fmt_value(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_nan() => "-".into(),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
        None => "-".into(),
    }
}

#[tokio::main]
async fn main() {
    START.get_or_init(Instant::now);
    let nofile = raise_nofile();
    let clients = env_usize("BENCH_CLIENTS", 10_000);
    let phases =
        std::env::var("BENCH_PHASES").unwrap_or_else(|_| "idle,fanout,slow,inbound,churn".into());
    let phase = |name: &str| phases.split(',').any(|p| p.trim() == name);
    if (nofile as usize) < clients + 512 {
        eprintln!("RLIMIT_NOFILE is {nofile}: too low for {clients} clients");
    }

    let ws_port = free_port();
    let nats = NatsServer::start_with_config(&format!(
        "websocket {{\n  listen: \"127.0.0.1:{ws_port}\"\n  no_tls: true\n}}\n"
    ))
    .await;
    let nats_pid = nats.pid().expect("nats-server runs").to_string();
    let port = free_port();
    let provider = listener(
        &nats,
        COMPONENT,
        &[("path", "/"), ("max_clients", "20000")],
        format!("127.0.0.1:{port}"),
    )
    .await;
    let component = PlayedComponent::start(&provider, &nats.url, COMPONENT).await;
    // The listener answers once the session runs: a publish that succeeds says so.
    component
        .publish_when_ready("default", "bench.warm", &b""[..], LIMIT)
        .await;
    println!(
        "scale: {clients} clients, provider pid {} on 127.0.0.1:{port}, nats-server pid {nats_pid} (websocket 127.0.0.1:{ws_port}), RLIMIT_NOFILE {nofile}, phases {phases}",
        provider.pid()
    );

    let mut rows = Vec::new();
    let mut ends = serde_json::Map::new();
    for sys in [Sys::Ours, Sys::Peer] {
        let t = Target {
            sys,
            port: if sys == Sys::Ours { port } else { ws_port },
            server_pid: match sys {
                Sys::Ours => provider.pid().to_string(),
                Sys::Peer => nats_pid.clone(),
            },
            nats_pid: nats_pid.clone(),
            nats_url: nats.url.clone(),
            component: &component,
            publisher: nats.client().await,
            provider: &provider,
            shared: Shared::new(),
        };
        run_system(&t, &mut rows, &phase, clients).await;
        let errors = t.shared.errors.lock().unwrap().clone();
        let codes = t.shared.close_codes.lock().unwrap().clone();
        let mut end = serde_json::json!({
            "connections_ended_by_server": t.shared.ended.load(Ordering::Relaxed),
            "close_codes": codes,
            "first_errors": errors,
        });
        if sys == Sys::Ours {
            end["stats"] = stats(&component).await;
        }
        println!("{} at the end: {end}", sys.name());
        ends.insert(sys.name().into(), end);
    }

    println!();
    println!("| phase | ours | peer (nats-server) | ours / peer | unit |");
    println!("|---|--:|--:|--:|---|");
    let mut phases_seen: Vec<(&str, &str)> = Vec::new();
    for r in &rows {
        if !phases_seen.iter().any(|(p, _)| *p == r.phase) {
            phases_seen.push((&r.phase, r.unit));
        }
    }
    for (p, unit) in phases_seen {
        let value = |sys: &str| {
            rows.iter()
                .find(|r| r.phase == p && r.system == sys)
                .map(|r| r.value)
        };
        let (ours, peer) = (value("ours"), value("peer"));
        let ratio = match (ours, peer) {
            (Some(o), Some(p)) if p != 0.0 => Some(o / p),
            _ => None,
        };
        println!(
            "| {p} | {} | {} | {} | {unit} |",
            fmt_value(ours),
            fmt_value(peer),
            fmt_value(ratio)
        );
    }

    let logs = provider.logs.all();
    let warned: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    println!();
    println!("provider log: {} warn/error lines", warned.len());
    for line in warned.iter().take(5) {
        println!("  {}", &line[..line.len().min(300)]);
    }

    let json = serde_json::json!({
        "clients": clients,
        "rlimit_nofile": nofile,
        "rows": rows,
        "end": ends,
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(
        dir.join("scale.json"),
        serde_json::to_vec_pretty(&json).unwrap(),
    );
    let _ = std::fs::write(dir.join("scale-provider.log"), logs);
}
