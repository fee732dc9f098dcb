//! The threads a listener's clients run on: a runtime of their own, apart from the one that
//! serves the lattice (the component's wRPC calls and their answers, NATS).
//!
//! On one runtime, a broadcast to 1,000 clients wakes 1,000 writer tasks on the worker that
//! queued it, ahead of the task that sends the publish's answer: the component's next publish
//! came only after every client's write, so each publish's frame was alone in every queue (one
//! write per frame per client). Apart, the answer goes out at once, publishes keep arriving
//! while the writers work, and each writer finds several frames queued and writes them at once.

use std::sync::OnceLock;

use tokio::runtime::{Builder, Handle, Runtime};
use tracing::warn;

/// Built on first use, and never dropped (a runtime cannot be dropped from async code; the
/// process's end takes its threads).
static CLIENTS: OnceLock<Option<Runtime>> = OnceLock::new();

/// The clients' runtime, or the caller's when its threads could not be started (said once).
pub fn handle() -> Handle {
    CLIENTS
        .get_or_init(|| {
            let threads = std::thread::available_parallelism().map_or(2, usize::from);
            Builder::new_multi_thread()
                .worker_threads(threads)
                .thread_name("ws-clients")
                .enable_all()
                .build()
                .map_err(|e| {
                    warn!(error = %e, "cannot start the listeners' own threads; their clients share the provider's");
                })
                .ok()
        })
        .as_ref()
        .map_or_else(Handle::current, |runtime| runtime.handle().clone())
}

/// The tasks alive on the clients' runtime (0 before its first listener).
pub fn alive_tasks() -> usize {
    CLIENTS
        .get()
        .and_then(Option::as_ref)
        .map_or(0, |runtime| runtime.metrics().num_alive_tasks())
}
