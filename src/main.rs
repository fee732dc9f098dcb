//! The provider binary, started by the wasmCloud host with HostData on stdin.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    wasmcloud_provider_messaging_websocket::run().await
}
