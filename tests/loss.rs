//! The loss benchmark's version in the test suite (`benches/loss.rs` runs 1,000,000): 20,000
//! calls from a component (publishes and requests, one at a time and 64 in flight) and 20,000
//! deliveries (`max_in_flight` 1 and 64), bodies of 16 B, 1 KiB, 64 KiB and 1.5 MiB mixed, over
//! nats-server's default `max_payload`. Nothing may fail, go unanswered, go missing or arrive
//! twice, and the provider's loss counters stay 0.

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_calls_and_deliveries_lose_nothing() {
    let outcome = common::loss::run(20_000).await;
    outcome.print();
    assert_eq!(outcome.losses(), 0, "losses (see the table above)");
}
