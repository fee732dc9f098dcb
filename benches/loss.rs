//! The loss benchmark: `BENCH_LOSS_CALLS` (1,000,000) calls from a played component through the
//! real provider binary (half publishes, half requests; a quarter of each one at a time, the rest
//! 64 in flight) and as many deliveries pushed by the WebSocket server (an eighth with
//! `max_in_flight = 1`, the rest 64), with bodies of 16 B, 1 KiB, 64 KiB and 1.5 MiB mixed, on a
//! nats-server with its default `max_payload`. It prints, per phase, the calls that failed, got
//! no answer, never arrived or arrived twice, and the provider's loss counters (`$ws.stats`:
//! `delivery_timeouts`, `call_errors`, `delivery_errors`, `dropped_*`); it exits with 1 when any
//! is not 0. See tests/common/loss.rs; the test suite runs 20,000 (tests/loss.rs).
//!
//! `cargo bench --bench loss`

#[path = "../tests/common/mod.rs"]
mod common;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let calls = std::env::var("BENCH_LOSS_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let started = std::time::Instant::now();
    let outcome = common::loss::run(calls).await;
    println!(
        "loss benchmark: {calls} calls and {calls} deliveries in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    outcome.print();
    if outcome.losses() > 0 {
        std::process::exit(1);
    }
}
