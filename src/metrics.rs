//! OpenTelemetry metrics: the counters of [`crate::stats`], exported when the host's OTEL
//! settings turn metrics on.
//!
//! The provider SDK's `initialize_observability!` installs the global meter provider (an OTLP
//! exporter on a periodic reader) when the host enables metrics, and leaves the no-op one
//! otherwise, so without metrics all of this costs nothing but a few no-op calls.
//!
//! Counters are observed, not recorded: at each export a callback reads the sessions' atomics,
//! so the hot paths bump exactly one atomic as before. The latency histogram is recorded at each
//! answered request (OpenTelemetry has no observed histogram).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use wasmcloud_provider_sdk::wasmcloud_tracing::{global, Histogram, KeyValue, Meter};

use crate::identity::SessionKey;
use crate::stats::{SessionStats, LATENCY_BOUNDS_MS};

/// What the metrics read of a session at each export.
pub struct SessionView {
    pub stats: Arc<SessionStats>,
    /// [`attributes`] of the session, shared with it (nothing is copied at an export).
    pub attributes: Arc<[KeyValue]>,
    /// Whether its connection is open.
    pub open: bool,
}

/// What the metrics read of a listener at each export.
pub struct ListenerView {
    pub key: SessionKey,
    /// The address it listens on.
    pub listen: String,
    pub clients: usize,
}

/// The prefix of every metric name.
pub const PREFIX: &str = "messaging_websocket";

fn meter() -> Meter {
    global::meter(crate::identity::PROVIDER_NAME)
}

/// The attributes of one session's measurements: `component`, `link_name`, `session`.
pub fn attributes(session_id: &str, key: &SessionKey) -> Arc<[KeyValue]> {
    Arc::new([
        KeyValue::new("component", key.component.clone()),
        KeyValue::new("link_name", key.link_name.clone()),
        KeyValue::new("session", session_id.to_string()),
    ])
}

/// Records one answered request's latency in `messaging_websocket.request_latency` (ms).
pub fn record_request_latency(took: Duration, attributes: &[KeyValue]) {
    static HISTOGRAM: OnceLock<Histogram<f64>> = OnceLock::new();
    HISTOGRAM
        .get_or_init(|| {
            meter()
                .f64_histogram(format!("{PREFIX}.request_latency"))
                .with_unit("ms")
                .with_description("Time from a request to its reply, for answered requests")
                .with_boundaries(LATENCY_BOUNDS_MS.iter().map(|&ms| ms as f64).collect())
                .build()
        })
        .record(took.as_secs_f64() * 1000.0, attributes);
}

/// Registers the observed instruments: one counter per [`SessionStats`] counter, per session
/// (`messaging_websocket.<counter>`), and the gauges `messaging_websocket.sessions` and
/// `messaging_websocket.sessions_open`. `sessions` lists the live sessions at each export.
pub fn register(sessions: impl Fn() -> Vec<SessionView> + Send + Sync + 'static) {
    let meter = meter();
    let sessions = Arc::new(sessions);
    for (index, name) in SessionStats::NAMES.iter().enumerate() {
        let sessions = Arc::clone(&sessions);
        meter
            .u64_observable_counter(format!("{PREFIX}.{name}"))
            .with_unit(if name.starts_with("bytes") { "By" } else { "1" })
            .with_callback(move |observer| {
                for session in sessions() {
                    let (_, value) = session.stats.snapshot()[index];
                    observer.observe(value, &session.attributes);
                }
            })
            .build();
    }
    let all = Arc::clone(&sessions);
    meter
        .u64_observable_gauge(format!("{PREFIX}.sessions"))
        .with_description("Sessions of the provider's links, connected or not")
        .with_callback(move |observer| observer.observe(all().len() as u64, &[]))
        .build();
    meter
        .u64_observable_counter(format!("{PREFIX}.call_errors"))
        .with_description("Components' calls that failed on the wRPC transport")
        .with_callback(|observer| {
            observer.observe(
                crate::stats::CALL_ERRORS.load(std::sync::atomic::Ordering::Relaxed),
                &[],
            );
        })
        .build();
    meter
        .u64_observable_gauge(format!("{PREFIX}.sessions_open"))
        .with_description("Sessions with an open connection")
        .with_callback(move |observer| {
            let open = sessions().iter().filter(|s| s.open).count();
            observer.observe(open as u64, &[]);
        })
        .build();
}

/// Registers the listeners' instruments: one counter per name of `names` (the listeners'
/// counters, `messaging_websocket.<counter>`, for all listeners together: one series per client
/// would be unbounded; `counters` gives their values in that order), and the gauge
/// `messaging_websocket.clients` per listener (attributes `component`, `link_name`, `listen`).
pub fn register_listeners(
    names: &'static [&'static str],
    counters: impl Fn() -> Vec<(&'static str, u64)> + Send + Sync + 'static,
    listeners: impl Fn() -> Vec<ListenerView> + Send + Sync + 'static,
) {
    let meter = meter();
    let counters = Arc::new(counters);
    for (index, name) in names.iter().enumerate() {
        let counters = Arc::clone(&counters);
        meter
            .u64_observable_counter(format!("{PREFIX}.{name}"))
            .with_unit("1")
            .with_callback(move |observer| {
                if let Some(&(_, value)) = counters().get(index) {
                    observer.observe(value, &[]);
                }
            })
            .build();
    }
    meter
        .u64_observable_gauge(format!("{PREFIX}.clients"))
        .with_description("Clients connected to a listener (server mode)")
        .with_callback(move |observer| {
            for listener in listeners() {
                observer.observe(
                    listener.clients as u64,
                    &[
                        KeyValue::new("component", listener.key.component.clone()),
                        KeyValue::new("link_name", listener.key.link_name.clone()),
                        KeyValue::new("listen", listener.listen),
                    ],
                );
            }
        })
        .build();
}
