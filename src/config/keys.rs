//! The config keys: which exist, which may come from a secret, which are sensitive, the
//! handshake headers a link may not set, and every numeric key's bounds.

/// The handshake header carrying `auth_token`.
pub const AUTHORIZATION: &str = "authorization";

pub(crate) const HEADER_PREFIX: &str = "header.";

/// Every plain (non-prefixed) key this version understands, in the order of the contract's table.
pub const KNOWN_KEYS: &[&str] = &[
    "uri",
    "auth_token",
    "connect_timeout_sec",
    "enable_session_tracking",
    "format",
    "raw_subject",
    "send_timeout_ms",
    "request_timeout_ms",
    "inbox_prefix",
    "max_pending",
    "max_in_flight",
    "max_in_flight_bytes",
    "delivery_timeout_ms",
    "max_publish_rate",
    "max_message_bytes",
    "reconnect_initial_delay_ms",
    "reconnect_max_delay_ms",
    "reconnect_max_attempts",
    "ping_interval_sec",
    "pong_timeout_sec",
    "tls_ca",
    "tls_ca_file",
    "tls_client_cert",
    "tls_client_key",
    "compression",
    "ack",
    "replicas",
    "failover_sec",
    "listen",
    "path",
    "max_clients",
    "allowed_origins",
    "jwt_secret",
    "jwt_public_key",
    "jwt_audience",
    "jwt_issuer",
    "client_queue_bytes",
    "client_rate_limit",
    "client_events",
    "tls_cert",
    "tls_key",
];

/// The keys of a listener (server mode, `listen`): a link without `listen` may not set them.
pub const LISTENER_KEYS: &[&str] = &[
    "listen",
    "path",
    "max_clients",
    "allowed_origins",
    "jwt_secret",
    "jwt_public_key",
    "jwt_audience",
    "jwt_issuer",
    "client_queue_bytes",
    "client_rate_limit",
    "client_events",
    "tls_cert",
    "tls_key",
];

/// The keys of a dialling session only (client mode): a link with `listen` may not set them.
pub(crate) const DIALLING_KEYS: &[&str] = &[
    "uri",
    "tls_ca",
    "tls_ca_file",
    "tls_client_cert",
    "tls_client_key",
    "reconnect_initial_delay_ms",
    "reconnect_max_delay_ms",
    "reconnect_max_attempts",
    "ack",
    "max_publish_rate",
    "replicas",
    "failover_sec",
];

/// The keys whose value may come from a secret (the link's, then the provider's), besides
/// `header.<Name>`: the credentials ([`is_sensitive`]) and the certificates, public keys and URL
/// that may carry or pin them.
pub const SECRET_KEYS: &[&str] = &[
    "uri",
    "auth_token",
    "tls_ca",
    "tls_client_cert",
    "tls_client_key",
    "jwt_secret",
    "jwt_public_key",
    "tls_cert",
    "tls_key",
];

/// Whether `key` may come from a secret.
pub fn may_be_secret(key: &str) -> bool {
    SECRET_KEYS.contains(&key) || key.starts_with(HEADER_PREFIX)
}

/// Keys whose values are credentials: read from secrets first, never logged.
pub fn is_sensitive(key: &str) -> bool {
    matches!(
        key,
        "auth_token" | "tls_client_key" | "jwt_secret" | "tls_key"
    ) || key.starts_with(HEADER_PREFIX)
}

pub(crate) fn is_known(key: &str) -> bool {
    KNOWN_KEYS.contains(&key) || key.starts_with(HEADER_PREFIX)
}

/// The longest `request` (and `publish`) wait: the host cuts a component-to-provider call at
/// 10 s, and the answer must be back before that.
pub const MAX_REQUEST_TIMEOUT_MS: u64 = 9_500;

/// One numeric key: its default and the largest value accepted. Every number has a bound, so that
/// no value, however large, can overflow a duration, exhaust memory or trip an assertion of a
/// library (tokio's semaphore refuses more than 2^61 permits, `Instant + Duration` panics on
/// overflow); a value above it refuses the link with a message that gives the bound.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub key: &'static str,
    pub default: u64,
    pub max: u64,
    /// What the number counts, for messages: "whole seconds", ...
    pub unit: &'static str,
    /// Why the bound is what it is, when that is not obvious.
    pub why: &'static str,
}

pub(crate) const SECONDS: &str = "whole seconds";
pub(crate) const MILLISECONDS: &str = "whole milliseconds";
pub(crate) const HOST_CUT: &str =
    " (the wasmCloud host cuts a component's call to a provider at 10 s)";

/// Every numeric key with its bound, in the order of the contract's table.
#[rustfmt::skip]
pub const BOUNDS: &[Bound] = &[
    Bound { key: "connect_timeout_sec", default: 10, max: 86_400, unit: SECONDS, why: "" },
    Bound { key: "send_timeout_ms", default: 5_000, max: MAX_REQUEST_TIMEOUT_MS, unit: MILLISECONDS, why: HOST_CUT },
    Bound { key: "request_timeout_ms", default: 5_000, max: MAX_REQUEST_TIMEOUT_MS, unit: MILLISECONDS, why: HOST_CUT },
    Bound { key: "max_pending", default: 1024, max: 65_536, unit: "a whole number", why: "" },
    Bound { key: "max_in_flight", default: 512, max: 65_536, unit: "a whole number", why: "" },
    Bound { key: "max_in_flight_bytes", default: 4 << 20, max: 1 << 30, unit: "a whole number of bytes", why: " (1 GiB)" },
    Bound { key: "delivery_timeout_ms", default: 10_000, max: 600_000, unit: MILLISECONDS, why: "" },
    Bound { key: "max_publish_rate", default: 0, max: 1_000_000, unit: "a whole number of messages per second (0 = no limit)", why: "" },
    Bound { key: "max_message_bytes", default: 1 << 20, max: 256 << 20, unit: "a whole number of bytes", why: " (256 MiB)" },
    Bound { key: "reconnect_initial_delay_ms", default: 250, max: 3_600_000, unit: MILLISECONDS, why: "" },
    Bound { key: "reconnect_max_delay_ms", default: 30_000, max: 3_600_000, unit: MILLISECONDS, why: "" },
    Bound { key: "reconnect_max_attempts", default: 0, max: 1_000_000, unit: "a whole number of attempts (0 = retry forever)", why: "" },
    Bound { key: "ping_interval_sec", default: 20, max: 86_400, unit: SECONDS, why: "" },
    Bound { key: "pong_timeout_sec", default: 10, max: 86_400, unit: SECONDS, why: "" },
    Bound { key: "failover_sec", default: 10, max: 86_400, unit: SECONDS, why: "" },
    Bound { key: "max_clients", default: 10_000, max: 1_000_000, unit: "a whole number of clients", why: "" },
    Bound { key: "client_queue_bytes", default: 1 << 20, max: 1 << 30, unit: "a whole number of bytes", why: " (1 GiB)" },
    Bound { key: "client_rate_limit", default: 0, max: 1_000_000, unit: "a whole number of messages per second (0 = no limit)", why: "" },
];

/// The numeric keys where 0 is a value (forever, no limit); every other number is at least 1.
pub(crate) const ZERO_ALLOWED: &[&str] = &[
    "reconnect_max_attempts",
    "max_publish_rate",
    "client_rate_limit",
];

pub(crate) fn bound(key: &str) -> &'static Bound {
    BOUNDS
        .iter()
        .find(|b| b.key == key)
        .expect("every numeric key has a bound")
}

/// Handshake headers the WebSocket client sets itself; a `header.<Name>` may not replace them.
pub(crate) const RESERVED_HEADERS: &[&str] = &[
    "host",
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
];
