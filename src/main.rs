//! The provider binary, started by the wasmCloud host with HostData on stdin.

// Most of the provider's own CPU time went to allocation (the wRPC and NATS transports allocate
// per message): mimalloc makes that cheaper. See BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    wasmcloud_provider_messaging_websocket::run().await
}
