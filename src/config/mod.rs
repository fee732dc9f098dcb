//! Connection settings: the config keys of the contract, parsed and validated.
//!
//! The effective settings of a link are the provider's config (the defaults, from wadm's
//! `capability.properties.config`) overlaid key by key by the link's own config. Sensitive keys
//! (`auth_token`, `header.<Name>`, `tls_client_key`) are looked up in the link's secrets first,
//! then in the provider's secrets, and only then in plain config (with a warning, since plain
//! config is stored and shown in clear by the lattice). The PEM certificates `tls_ca` and
//! `tls_client_cert` may come from secrets or config alike.
//!
//! Errors name the key and the bad value, except for sensitive keys, whose values never appear in
//! an error, a log line or `Debug` output.

mod client;
mod common;
pub mod jwt;
pub mod keys;
mod layers;
mod replicas;
mod server;
pub mod tls;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::Duration;

use tracing::{debug, warn};
use wasmcloud_provider_sdk::core::secrets::SecretValue;

use self::keys::{Bound, Key, Secret};
use self::layers::Layers;
use self::tls::Tls;
use crate::subjects::Pattern;

pub(crate) use self::client::HEADER_PREFIX;
pub use self::client::{redact_uri, Uri, AUTHORIZATION};
pub use self::common::{Compression, Format, MAX_REQUEST_TIMEOUT_MS};
pub use self::keys::Mode;
pub use self::replicas::Replicas;
pub use self::server::{HistoryConfig, ListenConfig};

/// The key table: every key this version understands, one row each, gathered from the files of
/// their concerns in the order of the contract's table. The parser reads each key as its row
/// says, the unknown-key warning lists their names, and `docs_configuration_tables_match_the_code`
/// holds docs/configuration.md to them.
pub fn keys() -> impl Iterator<Item = &'static Key> + Clone {
    [
        common::KEYS,
        client::KEYS,
        tls::KEYS,
        replicas::KEYS,
        server::KEYS,
    ]
    .into_iter()
    .flatten()
}

/// The row of `name` (every `header.<Name>` shares one), none for a key this version does not
/// understand.
pub fn key(name: &str) -> Option<&'static Key> {
    if name.starts_with(HEADER_PREFIX) {
        return Some(&client::HEADER);
    }
    keys().find(|k| k.name == name)
}

/// Every numeric key with its bound.
pub fn numbers() -> impl Iterator<Item = (&'static Key, &'static Bound)> + Clone {
    keys().filter_map(|k| k.bound().map(|b| (k, b)))
}

/// Whether `key` may come from a secret.
pub fn may_be_secret(key: &str) -> bool {
    self::key(key).is_some_and(|k| k.secret != Secret::No)
}

/// Keys whose values are credentials: read from secrets first, never logged.
pub fn is_sensitive(key: &str) -> bool {
    self::key(key).is_some_and(|k| k.secret == Secret::Preferred)
}

/// A config key with a value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    /// The offending value, `None` for sensitive keys (never shown).
    pub value: Option<String>,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(value) => write!(f, "invalid `{}` '{}': {}", self.key, value, self.reason),
            None if is_sensitive(&self.key) => {
                write!(f, "invalid `{}` (value hidden): {}", self.key, self.reason)
            }
            None => write!(f, "invalid `{}`: {}", self.key, self.reason),
        }
    }
}

impl std::error::Error for ConfigError {}

pub(crate) fn invalid(key: &str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        value: (!is_sensitive(key)).then(|| value.to_string()),
        reason: reason.into(),
    }
}

/// The effective settings of one session. Two are equal when [`ConnectionConfig::differing_keys`]
/// finds no key that differs (one comparison for joining a session and for a repeated put).
#[derive(Clone)]
pub struct ConnectionConfig {
    /// `ws://` or `wss://` URL of the server; shown with its userinfo and query hidden.
    pub uri: Uri,
    /// Sent as `Authorization: Bearer <token>`.
    pub auth_token: Option<String>,
    /// Extra handshake headers, by the name as the user wrote it.
    pub headers: BTreeMap<String, String>,
    pub connect_timeout: Duration,
    pub enable_session_tracking: bool,
    pub format: Format,
    /// Subject of frames delivered in format `raw` (the link name unless set).
    pub raw_subject: String,
    pub send_timeout: Duration,
    /// The wait of a `request` called with `timeout-ms = 0`.
    pub request_timeout: Duration,
    /// Prefix of request inboxes.
    pub inbox_prefix: String,
    pub max_pending: usize,
    pub max_in_flight: usize,
    /// Bodies of the deliveries in flight, in bytes: reading pauses at either bound.
    pub max_in_flight_bytes: usize,
    /// Deadline of one `handle-message` call.
    pub delivery_timeout: Duration,
    /// Outgoing messages per second (publish and request), 0 = no limit.
    pub max_publish_rate: u32,
    pub max_message_bytes: usize,
    /// Backoff before reconnect attempt n: d = min(initial * 2^(n-1), max), drawn from [d/2, d].
    pub reconnect_initial_delay: Duration,
    pub reconnect_max_delay: Duration,
    /// Consecutive failed attempts after which the session gives up; 0 = never.
    pub reconnect_max_attempts: u32,
    /// Keepalive: a ping every `ping_interval`; a connection from which nothing (no pong, no
    /// frame) arrived for `ping_interval + pong_timeout` is dead.
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    /// Trust roots and client certificate for `wss://`.
    pub tls: Tls,
    pub compression: Compression,
    /// Acknowledged delivery (format `json` only).
    pub ack: bool,
    /// Whether one replica holds the connection or each replica its own.
    pub replicas: Replicas,
    /// How long an owner may be silent before a standby takes its sessions over.
    pub failover: Duration,
    /// The shared connection this link joins (`pool`), by name.
    pub pool: Option<String>,
    /// The subjects a handler link receives (`subscriptions`), `None` = every subject. Not part
    /// of a session's settings: read from the handler link.
    pub subscriptions: Option<Vec<Pattern>>,
    /// Server mode: the listener's settings (`listen` and the keys that go with it). Then `uri`
    /// is empty, and `auth_token` is what clients must present.
    pub listen: Option<ListenConfig>,
}

impl PartialEq for ConnectionConfig {
    fn eq(&self, other: &Self) -> bool {
        self.differing_keys(other).is_empty()
    }
}

impl Eq for ConnectionConfig {}

impl fmt::Debug for ConnectionConfig {
    // Written by hand so that credentials never reach a log through `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionConfig")
            .field("uri", &self.uri)
            .field(
                "auth_token",
                &self.auth_token.as_ref().map(|_| "<redacted>"),
            )
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("connect_timeout", &self.connect_timeout)
            .field("enable_session_tracking", &self.enable_session_tracking)
            .field("format", &self.format)
            .field("raw_subject", &self.raw_subject)
            .field("send_timeout", &self.send_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("inbox_prefix", &self.inbox_prefix)
            .field("max_pending", &self.max_pending)
            .field("max_in_flight", &self.max_in_flight)
            .field("max_in_flight_bytes", &self.max_in_flight_bytes)
            .field("delivery_timeout", &self.delivery_timeout)
            .field("max_publish_rate", &self.max_publish_rate)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("reconnect_initial_delay", &self.reconnect_initial_delay)
            .field("reconnect_max_delay", &self.reconnect_max_delay)
            .field("reconnect_max_attempts", &self.reconnect_max_attempts)
            .field("ping_interval", &self.ping_interval)
            .field("pong_timeout", &self.pong_timeout)
            .field("tls", &self.tls)
            .field("compression", &self.compression)
            .field("ack", &self.ack)
            .field("replicas", &self.replicas)
            .field("failover", &self.failover)
            .field("pool", &self.pool)
            .field("subscriptions", &self.subscriptions)
            .field("listen", &self.listen)
            .finish()
    }
}

/// The provider-level config and secrets: the defaults every link starts from.
#[derive(Clone, Default)]
pub struct ProviderDefaults {
    config: HashMap<String, String>,
    secrets: HashMap<String, SecretValue>,
}

impl fmt::Debug for ProviderDefaults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderDefaults")
            .field("config_keys", &self.config.keys().collect::<BTreeSet<_>>())
            .field("secret_keys", &self.secrets.keys().collect::<BTreeSet<_>>())
            .finish()
    }
}

impl ProviderDefaults {
    /// Validates the provider-level config: every known key present must have a usable value
    /// (`uri` may be missing, links then have to set it). Keys this provider does not know are
    /// only logged at debug, since provider config also carries keys meant for others (`OTEL_*`).
    pub fn new(
        config: &HashMap<String, String>,
        secrets: &HashMap<String, SecretValue>,
    ) -> Result<Self, ConfigError> {
        let defaults = ProviderDefaults {
            config: config.clone(),
            secrets: secrets.clone(),
        };
        for key in config.keys().filter(|k| key(k).is_none()) {
            debug!(
                key,
                "provider config key is not a WebSocket setting; ignored"
            );
        }
        let merged = Layers {
            link_config: &HashMap::new(),
            link_secrets: &HashMap::new(),
            defaults: &defaults,
        };
        merged.parse("default", false)?;
        Ok(defaults)
    }

    /// Whether the provider's config or secrets set `key`.
    pub fn sets(&self, key: &str) -> bool {
        self.config.contains_key(key) || self.secrets.contains_key(key)
    }

    /// The same secrets with new plain config (a provider config update).
    pub fn with_config(&self, config: &HashMap<String, String>) -> Result<Self, ConfigError> {
        Self::new(config, &self.secrets)
    }
}

impl ConnectionConfig {
    /// The effective settings of a link: provider defaults overlaid by the link's config,
    /// sensitive keys from secrets first. Unknown keys in the link's config are warned about,
    /// since a typo must not pass silently.
    pub fn from_link(
        defaults: &ProviderDefaults,
        component: &str,
        link_name: &str,
        link_config: &HashMap<String, String>,
        link_secrets: &HashMap<String, SecretValue>,
    ) -> Result<Self, ConfigError> {
        for key in link_config.keys().filter(|k| key(k).is_none()) {
            warn!(
                key,
                component,
                link_name,
                known = layers::known_names(),
                "unknown key in link config is ignored"
            );
        }
        let layers = Layers {
            link_config,
            link_secrets,
            defaults,
        };
        let config = layers.parse(link_name, true)?;
        layers.check_mode(config.listen.is_some())?;
        Ok(config)
    }

    /// The keys whose effective values differ between two configs: a link may only join a
    /// session whose settings equal its own. Every field is destructured by name, so a setting
    /// added to [`ConnectionConfig`] does not compile until it is compared here too.
    pub fn differing_keys(&self, other: &Self) -> Vec<String> {
        let ConnectionConfig {
            uri,
            auth_token,
            headers,
            connect_timeout,
            enable_session_tracking,
            format,
            raw_subject,
            send_timeout,
            request_timeout,
            inbox_prefix,
            max_pending,
            max_in_flight,
            max_in_flight_bytes,
            delivery_timeout,
            max_publish_rate,
            max_message_bytes,
            reconnect_initial_delay,
            reconnect_max_delay,
            reconnect_max_attempts,
            ping_interval,
            pong_timeout,
            tls,
            compression,
            ack,
            replicas,
            failover,
            pool,
            // The handler link's own: two links with different ones still share a session.
            subscriptions: _,
            listen,
        } = self;
        let mut keys = Vec::new();
        let mut check = |key: &str, same: bool| {
            if !same {
                keys.push(key.to_string());
            }
        };
        check("uri", *uri == other.uri);
        check("auth_token", *auth_token == other.auth_token);
        check(
            "connect_timeout_sec",
            *connect_timeout == other.connect_timeout,
        );
        check(
            "enable_session_tracking",
            *enable_session_tracking == other.enable_session_tracking,
        );
        check("format", *format == other.format);
        check("raw_subject", *raw_subject == other.raw_subject);
        check("send_timeout_ms", *send_timeout == other.send_timeout);
        check(
            "request_timeout_ms",
            *request_timeout == other.request_timeout,
        );
        check("inbox_prefix", *inbox_prefix == other.inbox_prefix);
        check("max_pending", *max_pending == other.max_pending);
        check("max_in_flight", *max_in_flight == other.max_in_flight);
        check(
            "max_in_flight_bytes",
            *max_in_flight_bytes == other.max_in_flight_bytes,
        );
        check(
            "max_publish_rate",
            *max_publish_rate == other.max_publish_rate,
        );
        check(
            "delivery_timeout_ms",
            *delivery_timeout == other.delivery_timeout,
        );
        check(
            "max_message_bytes",
            *max_message_bytes == other.max_message_bytes,
        );
        check(
            "reconnect_initial_delay_ms",
            *reconnect_initial_delay == other.reconnect_initial_delay,
        );
        check(
            "reconnect_max_delay_ms",
            *reconnect_max_delay == other.reconnect_max_delay,
        );
        check(
            "reconnect_max_attempts",
            *reconnect_max_attempts == other.reconnect_max_attempts,
        );
        check("ping_interval_sec", *ping_interval == other.ping_interval);
        check("pong_timeout_sec", *pong_timeout == other.pong_timeout);
        check("compression", *compression == other.compression);
        check("ack", *ack == other.ack);
        check("replicas", *replicas == other.replicas);
        check("failover_sec", *failover == other.failover);
        check("pool", *pool == other.pool);
        match (listen, &other.listen) {
            (Some(mine), Some(theirs)) => keys.extend(mine.differing_keys(theirs)),
            (None, None) => {}
            _ => keys.push("listen".to_string()),
        }
        keys.extend(tls.differing_keys(&other.tls).into_iter().map(String::from));
        let names: BTreeSet<&String> = headers.keys().chain(other.headers.keys()).collect();
        for name in names {
            if headers.get(name) != other.headers.get(name) {
                keys.push(format!("{HEADER_PREFIX}{name}"));
            }
        }
        keys
    }

    /// The handshake headers to send: `Authorization: Bearer <token>` and every `header.<Name>`.
    pub fn handshake_headers(&self) -> impl Iterator<Item = (&str, String)> {
        self.auth_token
            .iter()
            .map(|t| ("Authorization", format!("Bearer {t}")))
            .chain(self.headers.iter().map(|(n, v)| (n.as_str(), v.clone())))
    }
}

impl Layers<'_> {
    /// Every key of a link, each by its concern's parser.
    pub(crate) fn parse(
        &self,
        link_name: &str,
        require_uri: bool,
    ) -> Result<ConnectionConfig, ConfigError> {
        let listen = self.listener()?;
        let uri = self.uri(listen.is_some(), require_uri)?;
        let auth_token = self.auth_token()?;
        let headers = self.headers(auth_token.as_deref())?;
        let raw_subject = self.raw_subject(link_name)?;
        let (reconnect_initial_delay, reconnect_max_delay) = self.reconnect_delays()?;
        let format = self.format()?;
        if listen.as_ref().is_some_and(|l| l.history.is_some()) && format == Format::Raw {
            return Err(invalid(
                "history_size",
                "",
                "set on a listener of format `raw`, whose frames have no room for a broadcast's offset: use format `json`, `msgpack` or `protobuf` (or no history)",
            ));
        }
        let tls = self.client_tls()?;
        let tls_keys = tls.set_keys();
        if !tls_keys.is_empty() && !uri.is_tls() && !uri.full.is_empty() {
            // A client key or a CA meant for TLS while the token and headers would go out in
            // clear: most likely a uri typed wrong, never what the user wants.
            let named: Vec<String> = tls_keys.iter().map(|k| format!("`{k}`")).collect();
            let verb = if named.len() == 1 { "is" } else { "are" };
            return Err(invalid(
                "uri",
                &uri.shown,
                format!(
                    "is ws:// (no TLS), but {} {verb} set: use wss:// (the `tls_*` settings and any credentials would otherwise go out in clear, or not be used)",
                    named.join(", ")
                ),
            ));
        }
        let compression = self.compression()?;
        let ack = self.ack(format)?;
        let (replicas, failover) = self.replicas()?;
        let subscriptions = self.subscriptions()?;
        let pool = self.pool()?;
        Ok(ConnectionConfig {
            uri,
            auth_token,
            headers,
            connect_timeout: self.seconds("connect_timeout_sec")?,
            enable_session_tracking: self.flag("enable_session_tracking")?,
            format,
            raw_subject,
            send_timeout: self.millis("send_timeout_ms")?,
            request_timeout: self.millis("request_timeout_ms")?,
            inbox_prefix: self.inbox_prefix()?,
            max_pending: self.count("max_pending")?,
            max_in_flight: self.count("max_in_flight")?,
            max_in_flight_bytes: self.count("max_in_flight_bytes")?,
            delivery_timeout: self.millis("delivery_timeout_ms")?,
            max_publish_rate: self.small("max_publish_rate")?,
            max_message_bytes: self.count("max_message_bytes")?,
            reconnect_initial_delay,
            reconnect_max_delay,
            reconnect_max_attempts: self.small("reconnect_max_attempts")?,
            ping_interval: self.seconds("ping_interval_sec")?,
            pong_timeout: self.seconds("pong_timeout_sec")?,
            tls,
            compression,
            ack,
            replicas,
            failover,
            pool,
            subscriptions,
            listen,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::keys::Value;
    use super::*;

    #[test]
    fn the_key_table_has_one_row_per_name_and_modes_that_fit() {
        let mut seen = BTreeSet::new();
        for k in keys() {
            assert!(seen.insert(k.name), "`{}` has two rows", k.name);
        }
        assert!(seen.len() >= 42, "{} rows", seen.len());
        for k in server::KEYS {
            assert_eq!(k.mode, Mode::Listener, "`{}`", k.name);
        }
        for k in client::KEYS.iter().chain(replicas::KEYS) {
            assert_eq!(k.mode, Mode::Dialling, "`{}`", k.name);
        }
        for k in common::KEYS {
            assert_eq!(k.mode, Mode::Both, "`{}`", k.name);
        }
        assert_eq!(key("header.X-Tenant").unwrap().name, "header.<Name>");
        assert!(key("urı").is_none() && key("header").is_none());
        assert!(is_sensitive("tls_key") && !is_sensitive("tls_cert") && may_be_secret("tls_cert"));
    }

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn secrets(pairs: &[(&str, &str)]) -> HashMap<String, SecretValue> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), SecretValue::String(v.to_string())))
            .collect()
    }

    fn link(
        defaults: &ProviderDefaults,
        cfg: &[(&str, &str)],
    ) -> Result<ConnectionConfig, ConfigError> {
        ConnectionConfig::from_link(defaults, "c", "default", &map(cfg), &HashMap::new())
    }

    #[test]
    fn defaults_apply_when_only_uri_is_set() {
        let cfg = link(
            &ProviderDefaults::default(),
            &[("uri", "ws://127.0.0.1:9/x")],
        )
        .unwrap();
        assert_eq!(cfg.uri.full(), "ws://127.0.0.1:9/x");
        assert_eq!(cfg.auth_token, None);
        assert!(cfg.headers.is_empty());
        assert_eq!(cfg.connect_timeout, Duration::from_secs(10));
        assert!(cfg.enable_session_tracking);
        assert_eq!(cfg.format, Format::Json);
        assert_eq!(cfg.raw_subject, "default");
        assert_eq!(cfg.send_timeout, Duration::from_millis(5000));
        assert_eq!(cfg.request_timeout, Duration::from_millis(5000));
        assert_eq!(cfg.inbox_prefix, "_INBOX");
        assert_eq!(cfg.max_pending, 1024);
        assert_eq!(cfg.max_in_flight, 512);
        assert_eq!(cfg.max_in_flight_bytes, 4 << 20);
        assert_eq!(cfg.max_publish_rate, 0);
        assert_eq!(cfg.max_message_bytes, 1_048_576);
    }

    #[test]
    fn every_key_parses() {
        let cfg = link(
            &ProviderDefaults::default(),
            &[
                ("uri", "wss://example.com:8443/feed?x=1"),
                ("auth_token", "tok"),
                ("header.X-Tenant", "acme"),
                ("connect_timeout_sec", "3"),
                ("enable_session_tracking", "false"),
                ("format", "raw"),
                ("raw_subject", "feed.prices"),
                ("send_timeout_ms", "250"),
                ("request_timeout_ms", "9500"),
                ("inbox_prefix", "_R.app"),
                ("max_pending", "8"),
                ("max_in_flight", "1"),
                ("max_message_bytes", "4096"),
            ],
        )
        .unwrap();
        assert_eq!(cfg.auth_token.as_deref(), Some("tok"));
        assert_eq!(
            cfg.headers.get("X-Tenant").map(String::as_str),
            Some("acme")
        );
        assert_eq!(cfg.connect_timeout, Duration::from_secs(3));
        assert!(!cfg.enable_session_tracking);
        assert_eq!(cfg.format, Format::Raw);
        assert_eq!(cfg.raw_subject, "feed.prices");
        assert_eq!(cfg.send_timeout, Duration::from_millis(250));
        assert_eq!(cfg.request_timeout, Duration::from_millis(9500));
        assert_eq!(cfg.inbox_prefix, "_R.app");
        assert_eq!(
            (cfg.max_pending, cfg.max_in_flight, cfg.max_message_bytes),
            (8, 1, 4096)
        );
        let headers: Vec<_> = cfg.handshake_headers().collect();
        assert_eq!(
            headers,
            vec![
                ("Authorization", "Bearer tok".to_string()),
                ("X-Tenant", "acme".to_string())
            ]
        );
    }

    #[test]
    fn link_overrides_provider_key_by_key() {
        let defaults = ProviderDefaults::new(
            &map(&[
                ("uri", "ws://a:1"),
                ("max_pending", "10"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "x"),
            ]),
            &HashMap::new(),
        )
        .unwrap();
        let cfg = link(&defaults, &[("uri", "ws://b:2")]).unwrap();
        assert_eq!(cfg.uri.full(), "ws://b:2");
        assert_eq!(
            cfg.max_pending, 10,
            "a key the link does not set keeps the default"
        );
        let cfg = link(&defaults, &[]).unwrap();
        assert_eq!(cfg.uri.full(), "ws://a:1");
    }

    #[test]
    fn secrets_win_link_first_then_provider() {
        let defaults = ProviderDefaults::new(
            &map(&[("auth_token", "plain-provider")]),
            &secrets(&[("auth_token", "provider-secret"), ("header.X-Key", "p")]),
        )
        .unwrap();
        let cfg = ConnectionConfig::from_link(
            &defaults,
            "c",
            "l",
            &map(&[
                ("uri", "ws://h"),
                ("auth_token", "plain-link"),
                ("header.X-Key", "plain"),
            ]),
            &HashMap::new(),
        )
        .unwrap();
        assert_eq!(cfg.auth_token.as_deref(), Some("provider-secret"));
        assert_eq!(cfg.headers["X-Key"], "p");
        let cfg = ConnectionConfig::from_link(
            &defaults,
            "c",
            "l",
            &map(&[("uri", "ws://h"), ("auth_token", "plain-link")]),
            &secrets(&[("auth_token", "link-secret")]),
        )
        .unwrap();
        assert_eq!(cfg.auth_token.as_deref(), Some("link-secret"));
        let plain_only = link(
            &ProviderDefaults::default(),
            &[("uri", "ws://h"), ("auth_token", "p")],
        )
        .unwrap();
        assert_eq!(plain_only.auth_token.as_deref(), Some("p"));
    }

    fn ca_pem() -> String {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn tls_settings_come_from_secrets_first_and_are_compared_by_key() {
        let pem = ca_pem();
        // A secret wins over plain config for the certificates too (no warning for them).
        let cfg = ConnectionConfig::from_link(
            &ProviderDefaults::default(),
            "c",
            "default",
            &map(&[("uri", "wss://h"), ("tls_ca", "not pem")]),
            &secrets(&[("tls_ca", &pem)]),
        )
        .unwrap();
        assert!(cfg.tls.is_set());
        let plain = link(&ProviderDefaults::default(), &[("uri", "wss://h")]).unwrap();
        assert_eq!(cfg.differing_keys(&plain), vec!["tls_ca"]);
        let err = link(
            &ProviderDefaults::default(),
            &[("uri", "wss://h"), ("tls_client_key", "zq-secret-zq")],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid `tls_client_cert`: not set, but `tls_client_key` is: mutual TLS needs both"
        );
        let err = link(
            &ProviderDefaults::default(),
            &[
                ("uri", "wss://h"),
                ("tls_client_cert", &pem),
                ("tls_client_key", "zq-secret-zq"),
            ],
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid `tls_client_key` (value hidden): not a PEM private key"),
            "{err}"
        );
        assert!(!err.to_string().contains("zq-secret-zq"));
    }

    #[test]
    fn bad_values_name_key_and_value() {
        let d = ProviderDefaults::default();
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("uri", "http://x")],
                "invalid `uri` 'http://x': expected a ws:// or wss:// URL",
            ),
            (&[("uri", "not a url")], "invalid `uri` 'not a url'"),
            (
                &[("uri", "ws://h"), ("connect_timeout_sec", "abc")],
                "invalid `connect_timeout_sec` 'abc': expected whole seconds",
            ),
            (
                &[("uri", "ws://h"), ("connect_timeout_sec", "0")],
                "invalid `connect_timeout_sec` '0'",
            ),
            (
                &[("uri", "ws://h"), ("send_timeout_ms", "-1")],
                "invalid `send_timeout_ms` '-1'",
            ),
            (
                &[("uri", "ws://h"), ("max_pending", "1.5")],
                "invalid `max_pending` '1.5'",
            ),
            (
                &[("uri", "ws://h"), ("max_in_flight", "0")],
                "invalid `max_in_flight` '0'",
            ),
            (
                &[("uri", "ws://h"), ("max_message_bytes", "")],
                "invalid `max_message_bytes` ''",
            ),
            (
                &[("uri", "ws://h"), ("format", "xml")],
                "invalid `format` 'xml': expected `json`, `msgpack`, `protobuf` or `raw`",
            ),
            (
                &[("uri", "ws://h"), ("enable_session_tracking", "yes")],
                "invalid `enable_session_tracking` 'yes'",
            ),
            (
                &[("uri", "ws://h"), ("raw_subject", "a b")],
                "invalid `raw_subject` 'a b'",
            ),
            (
                &[("uri", "ws://h"), ("header.Bad Name", "v")],
                "invalid `header.Bad Name`",
            ),
            (
                &[("uri", "ws://h"), ("header.Upgrade", "v")],
                "sets 'Upgrade' itself",
            ),
            (&[], "invalid `uri`: required"),
        ];
        for (cfg, expected) in cases {
            let err = link(&d, cfg).unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{cfg:?}: got {err:?}, wanted {expected:?}"
            );
        }
    }

    #[test]
    fn sensitive_values_never_appear_in_errors_or_debug() {
        let d = ProviderDefaults::default();
        let err = link(&d, &[("uri", "ws://h"), ("auth_token", "sec\nret")]).unwrap_err();
        assert_eq!(err.key, "auth_token");
        assert!(!err.to_string().contains("sec"), "{err}");
        let err = link(&d, &[("uri", "ws://h"), ("header.X-A", "zq\u{1}zq")]).unwrap_err();
        assert!(!err.to_string().contains("zq"), "{err}");
        let cfg = link(
            &d,
            &[
                ("uri", "ws://h"),
                ("auth_token", "tok-123"),
                ("header.X-A", "val-456"),
            ],
        )
        .unwrap();
        let debug = format!("{cfg:?}");
        assert!(
            !debug.contains("tok-123") && !debug.contains("val-456"),
            "{debug}"
        );
        let defaults =
            ProviderDefaults::new(&map(&[("auth_token", "tok-123")]), &HashMap::new()).unwrap();
        assert!(!format!("{defaults:?}").contains("tok-123"));
    }

    #[test]
    fn provider_level_validation_allows_missing_uri_but_not_bad_values() {
        assert!(ProviderDefaults::new(&map(&[("max_pending", "5")]), &HashMap::new()).is_ok());
        let err =
            ProviderDefaults::new(&map(&[("max_pending", "five")]), &HashMap::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid `max_pending` 'five': expected a whole number"
        );
    }

    #[test]
    fn differing_keys_are_named() {
        let d = ProviderDefaults::default();
        let a = link(
            &d,
            &[("uri", "ws://h"), ("auth_token", "a"), ("header.X", "1")],
        )
        .unwrap();
        let b = link(
            &d,
            &[
                ("uri", "ws://h2"),
                ("auth_token", "b"),
                ("header.Y", "1"),
                ("max_in_flight", "2"),
            ],
        )
        .unwrap();
        assert!(a.differing_keys(&a.clone()).is_empty());
        assert_eq!(
            a.differing_keys(&b),
            vec!["uri", "auth_token", "max_in_flight", "header.X", "header.Y"]
        );
    }

    #[test]
    fn uris_are_shown_without_userinfo_and_query() {
        for (given, shown) in [
            ("ws://u:zq1@host:80/p?token=zq2", "ws://***@host:80/p?***"),
            ("wss://host/p#frag", "wss://host/p#***"),
            ("ws://host", "ws://host"),
            ("ws://user@host?x", "ws://***@host?***"),
            ("not a url @ all?zq", "***@ all?***"),
            ("ws://a@b@host/x@y", "ws://***@host/x@y"),
        ] {
            assert_eq!(redact_uri(given), shown, "{given}");
        }
        let d = ProviderDefaults::default();
        let cfg = link(&d, &[("uri", "ws://u:zq1@h/p?token=zq2")]).unwrap();
        assert_eq!(cfg.uri.full(), "ws://u:zq1@h/p?token=zq2");
        assert_eq!(cfg.uri.to_string(), "ws://***@h/p?***");
        assert!(!format!("{cfg:?}").contains("zq"));
        let err = link(&d, &[("uri", "http://u:zq1@h/?t=zq2")]).unwrap_err();
        assert!(!err.to_string().contains("zq"), "{err}");
        // From a secret, the uri is taken before plain config.
        let cfg = ConnectionConfig::from_link(
            &d,
            "c",
            "l",
            &map(&[("uri", "ws://plain")]),
            &secrets(&[("uri", "ws://secret/?t=zq")]),
        )
        .unwrap();
        assert_eq!(cfg.uri.full(), "ws://secret/?t=zq");
    }

    #[test]
    fn tls_settings_with_a_plain_uri_refuse_the_link() {
        let pem = ca_pem();
        let err = link(
            &ProviderDefaults::default(),
            &[("uri", "ws://h/?token=zq"), ("tls_ca", &pem)],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid `uri` 'ws://h/?***': is ws:// (no TLS), but `tls_ca` is set: use wss:// (the `tls_*` settings and any credentials would otherwise go out in clear, or not be used)"
        );
        assert!(link(
            &ProviderDefaults::default(),
            &[("uri", "wss://h"), ("tls_ca", &pem)]
        )
        .is_ok());
    }

    /// The key that picks the mode a key belongs to: `listen` for a listener's keys.
    fn mode(key: &str) -> (&'static str, &'static str) {
        if super::key(key).is_some_and(|k| k.mode == Mode::Listener) {
            ("listen", "127.0.0.1:9")
        } else {
            ("uri", "ws://h")
        }
    }

    #[test]
    fn numbers_past_their_bound_or_a_u64_are_refused_with_the_bound() {
        let d = ProviderDefaults::default();
        for (key, bound) in numbers() {
            for value in [
                "18446744073709551615",
                "99999999999999999999999",
                "2305843009213693952",
            ] {
                let err = link(&d, &[mode(key.name), (key.name, value)]).unwrap_err();
                assert_eq!(err.key, key.name);
                assert!(
                    err.to_string().contains(&format!("at most {}", bound.max)),
                    "{err}"
                );
            }
        }
        let err = link(&d, &[("uri", "ws://h"), ("send_timeout_ms", "10000")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid `send_timeout_ms` '10000': at most 9500 (the wasmCloud host cuts a component's call to a provider at 10 s) (whole milliseconds)"
        );
    }

    /// One table of docs/configuration.md: its rows, split into cells.
    fn doc_table(doc: &str, heading: &str) -> Vec<Vec<String>> {
        let section = doc
            .split(&format!("\n## {heading}"))
            .nth(1)
            .unwrap_or_else(|| panic!("docs/configuration.md has a section \"## {heading}\""));
        let section = section.split("\n## ").next().unwrap();
        section
            .lines()
            .filter(|l| l.starts_with("| `"))
            .map(|l| {
                l.trim_matches('|')
                    .split(" | ")
                    .map(|c| c.trim().to_string())
                    .collect()
            })
            .collect()
    }

    /// docs/configuration.md has one table per mode, and each lists exactly the keys the code
    /// accepts in that mode, with the code's defaults, bounds and secret handling, and an
    /// example the code accepts.
    #[test]
    fn docs_configuration_tables_match_the_code() {
        let doc = include_str!("../../docs/configuration.md");
        let names = |keep: &dyn Fn(&Key) -> bool| -> BTreeSet<&str> {
            keys().filter(|k| keep(k)).map(|k| k.name).collect()
        };
        let replicas = names(&|k| replicas::KEYS.iter().any(|r| r.name == k.name));
        let client = names(&|k| k.mode != Mode::Listener && !replicas.contains(k.name));
        let server = names(&|k| k.mode != Mode::Dialling);
        let d = ProviderDefaults::default();
        let mut checked = 0;
        for (heading, expected, mode) in [
            ("Client mode", client, ("uri", "wss://h")),
            ("Server mode", server, ("listen", "127.0.0.1:9")),
            ("Replicas", replicas, ("uri", "wss://h")),
        ] {
            let rows = doc_table(doc, heading);
            let keys: BTreeSet<&str> = rows.iter().map(|r| r[0].trim_matches('`')).collect();
            assert_eq!(keys, expected, "the keys of \"{heading}\"");
            assert_eq!(keys.len(), rows.len(), "one row per key in \"{heading}\"");
            for row in &rows {
                assert_eq!(row.len(), 7, "{row:?}");
                let name = row[0].trim_matches('`');
                let key = if name == "header.<Name>" {
                    "header.X-Tenant"
                } else {
                    name
                };
                let entry = super::key(key).unwrap();
                let (ty, default, max, secret, example) =
                    (&row[1], &row[2], &row[3], &row[4], &row[5]);
                let secret_mark = match entry.secret {
                    Secret::Preferred => "preferred",
                    Secret::Allowed => "yes",
                    Secret::No => "no",
                };
                assert_eq!(secret, secret_mark, "the secret column of `{name}`");
                // A key that needs another to be accepted.
                let companion = match key {
                    "jwt_audience" | "jwt_issuer" => {
                        Some(("jwt_secret", "a-secret-of-thirty-two-bytes-xyz"))
                    }
                    _ => None,
                };
                let with = |pairs: &[(&str, &str)]| {
                    let mut cfg = vec![mode];
                    cfg.extend(companion);
                    cfg.extend_from_slice(pairs);
                    link(&d, &cfg)
                };
                let base = with(&[]).unwrap();
                if let Some(value) = default.strip_prefix('`').and_then(|v| v.strip_suffix('`')) {
                    let explicit = with(&[(key, value)]).unwrap();
                    assert_eq!(explicit, base, "the default of `{name}` is `{value}`");
                    checked += 1;
                }
                // The example is accepted (a file path only where the file exists).
                if let Some(value) = example.strip_prefix('`').and_then(|v| v.strip_suffix('`')) {
                    if key != "tls_ca_file" || std::path::Path::new(value).exists() {
                        with(&[(key, value)])
                            .unwrap_or_else(|e| panic!("the example of `{name}`: {e}"));
                    }
                    checked += 1;
                }
                match entry.value {
                    Value::Flag(flag) => {
                        assert_eq!(ty, "bool", "the type of `{name}`");
                        assert_eq!(*default, format!("`{flag}`"), "default of `{name}`");
                    }
                    Value::Choice(words) => {
                        let listed: Vec<String> = words.iter().map(|w| format!("`{w}`")).collect();
                        assert_eq!(*ty, listed.join(", "), "the type of `{name}`");
                        assert_eq!(*default, listed[0], "default of `{name}`");
                    }
                    Value::Text => {}
                    Value::Number(bound) => {
                        assert_eq!(*max, bound.max.to_string(), "the bound of `{name}`");
                        assert_eq!(
                            *default,
                            format!("`{}`", bound.default),
                            "default of `{name}`"
                        );
                        let at_max = bound.max.to_string();
                        let over = (bound.max + 1).to_string();
                        let mut cfg = vec![(key, at_max.as_str())];
                        if key == "reconnect_initial_delay_ms" {
                            cfg.push(("reconnect_max_delay_ms", "3600000"));
                        }
                        assert!(with(&cfg).is_ok(), "`{name}` = its bound is accepted");
                        let err = with(&[(key, over.as_str())]).unwrap_err();
                        assert!(
                            err.to_string().contains(&format!("at most {}", bound.max)),
                            "{err}"
                        );
                    }
                }
                if entry.bound().is_none() {
                    assert_eq!(max, "-", "`{name}` is not a number");
                }
            }
        }
        assert!(checked >= 80, "defaults and examples checked: {checked}");
    }
}
