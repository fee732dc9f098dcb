//! Replicas: how long a failover takes, and what forwarding a call to the owner costs.
//!
//! `cargo bench --bench replicas` runs, on one nats-server with JetStream and real provider
//! processes (the release build):
//! - failover: two replicas with `failover_sec = 2` hold one session to a WebSocket server; the
//!   owner is killed (SIGKILL) 10 times (a new replica joins after each kill), at a random point
//!   of its renewal period, and each time the time from the kill to the standby's connection at
//!   the server is measured (expected: between 3F/4 and F, F = `failover_sec`);
//! - forwarding: `BENCH_CALLS` (2000) publishes of 16 B, one in flight, from one played component,
//!   with one replica (every call lands on the owner) and with two (calls land on either; those on
//!   the standby are forwarded). Each call's latency is recorded. With two replicas the latencies
//!   are bimodal: the faster half are the calls that landed on the owner, the slower half the
//!   forwarded ones, so their medians are the p25 and p75 of all calls.
//!
//! Numbers go to stdout and `target/bench/replicas.json`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::replicas::Replicas;
use common::ws::WsServer;

const LIMIT: Duration = Duration::from_secs(30);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn failovers() -> Vec<Duration> {
    let server = WsServer::recorder().await;
    let mut replicas = Replicas::start(2, &[]).await;
    replicas
        .link_both_ways("bench-failover", &server.uri(), &[("failover_sec", "2")])
        .await;
    server.connected(LIMIT).await;
    let mut times = Vec::new();
    for _ in 0..10 {
        let owner = replicas.owner(LIMIT).await;
        replicas.settled(owner, LIMIT).await;
        // A kill at a random point of the owner's renewal period (F/4 = 500 ms), after the
        // standby has seen renewals through its watch (it first read the lease when it joined):
        // killed right after the join, every failover would take F exactly.
        let phase = rand::random_range(0..500);
        tokio::time::sleep(Duration::from_millis(1000 + phase)).await;
        replicas.signal(owner, "KILL");
        let killed = Instant::now();
        server.connected(LIMIT).await;
        times.push(killed.elapsed());
        replicas.add(&[]).await;
    }
    times
}

async fn publishes(replicas: usize, calls: usize) -> (f64, Vec<Duration>) {
    let server = WsServer::recorder().await;
    let mut set = Replicas::start(replicas, &[]).await;
    set.link_both_ways("bench-forward", &server.uri(), &[])
        .await;
    let component = set.component("bench-forward").await;
    server.connected(LIMIT).await;
    component
        .publish_when_ready("default", "warm", &b"w"[..], LIMIT)
        .await;
    let body = vec![b'x'; 16];
    let mut latencies = Vec::with_capacity(calls);
    let started = Instant::now();
    for _ in 0..calls {
        let call = Instant::now();
        component
            .publish("default", "bench", body.clone(), None)
            .await
            .expect("answered")
            .expect("published");
        latencies.push(call.elapsed());
    }
    let rate = calls as f64 / started.elapsed().as_secs_f64();
    latencies.sort();
    (rate, latencies)
}

#[tokio::main]
async fn main() {
    let calls: usize = std::env::var("BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let mut times = failovers().await;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "failover (failover_sec = 2), 10 SIGKILLs of the owner, kill -> standby connected: {:?} ms",
        times
            .iter()
            .map(|d| ms(*d).round() as u64)
            .collect::<Vec<_>>()
    );
    times.sort();
    let (median, worst) = (percentile(&times, 0.5), *times.last().unwrap());
    println!("  median {:.0} ms, worst {:.0} ms", ms(median), ms(worst));

    let (one_rate, one) = publishes(1, calls).await;
    let (two_rate, two) = publishes(2, calls).await;
    println!("publish, 16 B, one in flight, {calls} calls:");
    println!(
        "  one replica (all on the owner):   {one_rate:.0} calls/s, p50 {:.3} ms, p99 {:.3} ms",
        ms(percentile(&one, 0.5)),
        ms(percentile(&one, 0.99))
    );
    println!(
        "  two replicas (half forwarded):    {two_rate:.0} calls/s, p25 (landed on the owner) {:.3} ms, p75 (forwarded) {:.3} ms, p99 {:.3} ms",
        ms(percentile(&two, 0.25)),
        ms(percentile(&two, 0.75)),
        ms(percentile(&two, 0.99))
    );
    let json = serde_json::json!({
        "failover_ms": times.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
        "failover_median_ms": ms(median),
        "failover_worst_ms": ms(worst),
        "calls": calls,
        "one_replica": {"rate": one_rate, "p50_ms": ms(percentile(&one, 0.5)), "p99_ms": ms(percentile(&one, 0.99))},
        "two_replicas": {"rate": two_rate, "p25_ms": ms(percentile(&two, 0.25)), "p75_ms": ms(percentile(&two, 0.75)), "p99_ms": ms(percentile(&two, 0.99))},
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(
        dir.join("replicas.json"),
        serde_json::to_vec_pretty(&json).unwrap(),
    );
}
