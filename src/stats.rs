//! Per-session counters: plain atomics, bumped on the hot paths without a lock.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// What one session has done since it was created.
        #[derive(Debug, Default)]
        pub struct SessionStats {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        impl SessionStats {
            /// Every counter by its name, in declaration order.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

counters! {
    /// Successful connections, the first one included.
    connects,
    /// Successful connections after a lost or failed one.
    reconnects,
    /// Data frames read from the socket.
    frames_in,
    /// Data frames written to the socket.
    frames_out,
    bytes_in,
    bytes_out,
    /// `publish` calls that returned Ok.
    published,
    /// `publish` calls that returned an error.
    publish_errors,
    /// Messages the component's `handle-message` accepted.
    delivered,
    /// Deliveries that failed: an error result, or a wRPC failure or timeout.
    delivery_errors,
    /// Frames that were not valid envelopes.
    dropped_malformed,
    /// Frames refused for exceeding `max_message_bytes`.
    dropped_oversized,
    /// Replies nobody waited for any more.
    dropped_unmatched,
    /// Frames that arrived while the session had no handler link.
    dropped_no_handler,
    requests,
    request_timeouts,
}

/// Adds one to a counter.
pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Adds `n` to a counter.
pub fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Ordering::Relaxed);
}
