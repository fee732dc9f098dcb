//! wasmCloud's NATS messaging provider, run exactly as its own binary runs it (HostData on stdin),
//! so that `benches/throughput.rs` can drive it through the same phases as ours.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    wasmcloud_provider_messaging_nats::run().await
}
