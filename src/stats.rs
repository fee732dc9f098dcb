//! Counters: plain atomics, bumped on the hot paths without a lock.
//!
//! Every session has its own [`SessionStats`]. The provider's totals are the sum over the live
//! sessions plus [`Totals::retired`], into which a session's counters move when its last holder
//! (the session and its tasks) lets go of them, so closing a session never makes a provider
//! counter go down.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};

/// Upper bounds (milliseconds, inclusive) of the request latency histogram's buckets; one more
/// bucket holds everything slower.
pub const LATENCY_BOUNDS_MS: [u64; 14] = [
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000,
];

/// How long answered requests took, from the call to the reply, in fixed buckets.
#[derive(Debug, Default)]
pub struct Latency {
    buckets: [AtomicU64; LATENCY_BOUNDS_MS.len() + 1],
    sum_micros: AtomicU64,
}

impl Latency {
    pub fn record(&self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BOUNDS_MS
            .iter()
            .position(|&ms| micros <= ms * 1000)
            .unwrap_or(LATENCY_BOUNDS_MS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    fn add_to(&self, into: &Latency) {
        for (from, to) in self.buckets.iter().zip(&into.buckets) {
            to.fetch_add(from.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        into.sum_micros
            .fetch_add(self.sum_micros.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// `{"count", "sum_ms", "bounds_ms", "bucket_counts"}`: `bucket_counts[i]` requests took at
    /// most `bounds_ms[i]` and more than the bound before; the last one counts the rest.
    pub fn to_json(&self) -> Value {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        json!({
            "count": counts.iter().sum::<u64>(),
            "sum_ms": self.sum_micros.load(Ordering::Relaxed) as f64 / 1000.0,
            "bounds_ms": LATENCY_BOUNDS_MS,
            "bucket_counts": counts,
        })
    }
}

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// What one session has done since it was created (or, in [`Totals::retired`], what
        /// the sessions that are gone did).
        #[derive(Debug, Default)]
        pub struct SessionStats {
            $($(#[$doc])* pub $name: AtomicU64,)*
            pub request_latency: Latency,
            /// Where the counters go when the last holder drops them.
            retire_into: Option<Arc<SessionStats>>,
        }

        impl SessionStats {
            /// Every counter's name, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$(stringify!($name)),*];

            /// Every counter by its name, in declaration order.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Ordering::Relaxed)),)*]
            }

            fn add_to(&self, into: &SessionStats) {
                $(into.$name.fetch_add(self.$name.load(Ordering::Relaxed), Ordering::Relaxed);)*
                self.request_latency.add_to(&into.request_latency);
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
    /// Payload bytes of the data frames read (after decompression).
    bytes_in,
    /// Payload bytes of the data frames written (before compression).
    bytes_out,
    /// `publish` calls that returned Ok.
    published,
    /// `publish` calls that returned an error.
    publish_errors,
    /// Outgoing messages (publish, request) that waited for their turn under `max_publish_rate`.
    publish_rate_waits,
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
    /// Messages no pattern of the handler link's `subscriptions` matches: not delivered (and
    /// acknowledged, with `ack`), by the link's choice.
    unrouted,
    /// Messages read from the socket but not yet delivered when the link went (or the provider
    /// stopped); a lost connection does not drop them.
    dropped_on_close,
    /// `handle-message` calls abandoned at their `delivery_timeout_ms`.
    delivery_timeouts,
    /// `request` calls.
    requests,
    /// `request` calls that got no reply in time.
    request_timeouts,
}

impl SessionStats {
    /// The counters of a new session, which move into `totals` when they are dropped.
    pub fn for_session(totals: &Totals) -> Self {
        let mut stats = SessionStats::default();
        stats.retire_into = Some(Arc::clone(&totals.retired));
        stats
    }

    /// Adds the counters to a JSON object, by name.
    pub fn add_json(&self, object: &mut Map<String, Value>) {
        for (name, value) in self.snapshot() {
            object.insert(name.into(), json!(value));
        }
        object.insert("request_latency_ms".into(), self.request_latency.to_json());
    }
}

impl Drop for SessionStats {
    fn drop(&mut self) {
        if let Some(into) = &self.retire_into {
            self.add_to(into);
        }
    }
}

/// The provider's counters of the sessions that are gone.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    retired: Arc<SessionStats>,
}

impl Totals {
    /// The provider's totals: the retired counters plus those of `live`.
    pub fn sum<'a>(&self, live: impl IntoIterator<Item = &'a SessionStats>) -> SessionStats {
        let sum = SessionStats::default();
        self.retired.add_to(&sum);
        for stats in live {
            stats.add_to(&sum);
        }
        sum
    }
}

/// Counts one lost message on `counter` and says whether to log it, with how many so far: the
/// 1st, 10th, 100th, ... of the counter (its first one and then ever more rarely), so each kind
/// of loss is warned with a subject without a flood of lines from a hostile or broken peer.
pub fn bump_loss(counter: &AtomicU64) -> Option<u64> {
    let n = counter.fetch_add(1, Ordering::Relaxed).saturating_add(1);
    (10u64.pow(n.ilog10()) == n).then_some(n)
}

/// Components' calls (`publish`, `request`) that failed on the wRPC transport, so the provider
/// could not take them or could not send their result: a streamed parameter lost or cut, a
/// result the caller was no longer there for. The calling component then gets a wRPC error or no
/// answer; each one is also warned about. Provider-wide: such a call names no session.
pub static CALL_ERRORS: AtomicU64 = AtomicU64::new(0);

/// Adds one to a counter.
pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Adds `n` to a counter.
pub fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loss_is_logged_at_the_first_and_every_power_of_ten() {
        let counter = AtomicU64::new(0);
        let logged: Vec<u64> = (0..12_000).filter_map(|_| bump_loss(&counter)).collect();
        assert_eq!(logged, [1, 10, 100, 1000, 10_000]);
        assert_eq!(counter.load(Ordering::Relaxed), 12_000);
        // A counter at its end neither overflows nor panics.
        assert_eq!(bump_loss(&AtomicU64::new(u64::MAX)), None);
    }

    #[test]
    fn latency_lands_in_the_first_bucket_that_holds_it() {
        let latency = Latency::default();
        for ms in [0, 1, 2, 3, 30_000, 30_001] {
            latency.record(Duration::from_millis(ms));
        }
        latency.record(Duration::from_micros(1001));
        let json = latency.to_json();
        assert_eq!(json["count"], 7);
        let counts: Vec<u64> = serde_json::from_value(json["bucket_counts"].clone()).unwrap();
        assert_eq!(counts.len(), LATENCY_BOUNDS_MS.len() + 1);
        // <= 1 ms: 0 and 1; <= 2 ms: 2 and 1.001; <= 5 ms: 3; <= 30 s: 30 s; above: 30.001 s.
        assert_eq!(&counts[..3], &[2, 2, 1]);
        assert_eq!(counts[LATENCY_BOUNDS_MS.len() - 1], 1);
        assert_eq!(counts[LATENCY_BOUNDS_MS.len()], 1);
        assert_eq!(json["sum_ms"], 60_008.001);
    }

    #[test]
    fn a_dropped_sessions_counters_stay_in_the_totals() {
        let totals = Totals::default();
        let gone = SessionStats::for_session(&totals);
        let live = SessionStats::for_session(&totals);
        bump(&gone.frames_in);
        add(&gone.bytes_in, 10);
        gone.request_latency.record(Duration::from_millis(3));
        bump(&live.frames_in);
        assert_eq!(
            totals.sum([&gone, &live]).frames_in.load(Ordering::Relaxed),
            2
        );
        drop(gone);
        let sum = totals.sum([&live]);
        assert_eq!(sum.frames_in.load(Ordering::Relaxed), 2);
        assert_eq!(sum.bytes_in.load(Ordering::Relaxed), 10);
        assert_eq!(sum.request_latency.to_json()["count"], 1);
        // A sum is not a session: dropping it retires nothing.
        drop(sum);
        assert_eq!(
            totals
                .sum(std::iter::empty())
                .frames_in
                .load(Ordering::Relaxed),
            1
        );
    }
}
