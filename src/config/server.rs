//! The keys of a listener (server mode): where it listens, whom it admits (origins, a token or
//! JWTs), and how much each client may take.

use super::jwt::JwtKey;
use super::keys::{number, number_or_zero, Key, Mode, Secret, Value};
use super::layers::Layers;
use super::tls::ServerTls;
use super::{invalid, ConfigError};

/// The keys of a listener, in the order of the contract's table (`tls_cert` and `tls_key` are
/// in tls.rs).
#[rustfmt::skip]
pub(crate) const KEYS: &[Key] = &[
    Key::new("listen", Mode::Listener, Secret::No, Value::Text),
    Key::new("path", Mode::Listener, Secret::No, Value::Text),
    Key::new("max_clients", Mode::Listener, Secret::No, number(10_000, 1_000_000, "a whole number of clients")),
    Key::new("allowed_origins", Mode::Listener, Secret::No, Value::Text),
    Key::new("jwt_secret", Mode::Listener, Secret::Preferred, Value::Text),
    Key::new("jwt_public_key", Mode::Listener, Secret::Allowed, Value::Text),
    Key::new("jwt_audience", Mode::Listener, Secret::No, Value::Text),
    Key::new("jwt_issuer", Mode::Listener, Secret::No, Value::Text),
    Key::new("client_queue_bytes", Mode::Listener, Secret::No, super::keys::number_why(1 << 20, 1 << 30, "a whole number of bytes", " (1 GiB)")),
    Key::new("client_rate_limit", Mode::Listener, Secret::No, number_or_zero(0, 1_000_000, "a whole number of messages per second (0 = no limit)")),
    Key::new("client_events", Mode::Listener, Secret::No, Value::Flag(false)),
    Key::new("history_size", Mode::Listener, Secret::No, number_or_zero(0, MAX_HISTORY_SIZE, "a whole number of messages kept per subject (0 = no history)")),
    Key::new("presence", Mode::Listener, Secret::No, Value::Flag(false)),
    Key::new("presence_events", Mode::Listener, Secret::No, Value::Flag(false)),
    Key::new("client_publish", Mode::Listener, Secret::No, Value::Flag(false)),
    Key::new("history_ttl_sec", Mode::Listener, Secret::No, number_or_zero(0, 366 * 24 * 3600, "a whole number of seconds (0 = kept until history_size pushes them out)")),
];

/// The most messages `history_size` keeps per subject.
pub(crate) const MAX_HISTORY_SIZE: u64 = 10_000_000;

/// A listener's history (`history_size`, `history_ttl_sec`): what is kept of its broadcasts
/// for clients to recover after a reconnect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryConfig {
    /// Messages kept per subject; 0 = no bound (then `ttl` is set).
    pub size: u64,
    /// How long a message is kept; zero = until `size` pushes it out.
    pub ttl: std::time::Duration,
}

/// The settings of a listener (server mode): where it listens and whom it admits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenConfig {
    pub addr: std::net::SocketAddr,
    /// The HTTP path of the upgrade.
    pub path: String,
    pub max_clients: usize,
    /// Allowed `Origin` values (lowercase, no trailing `/`); empty = any.
    pub allowed_origins: Vec<String>,
    /// Verifies client JWTs (`jwt_secret` or `jwt_public_key`).
    pub jwt: Option<JwtKey>,
    /// Bound of one client's outgoing queue, in bytes.
    pub client_queue_bytes: usize,
    /// Incoming messages per second per client, 0 = no limit.
    pub client_rate_limit: u32,
    /// Deliver `$ws.connected` and `$ws.disconnected` to the component.
    pub client_events: bool,
    /// `wss`: the certificate chain and key.
    pub tls: Option<ServerTls>,
    /// The history of broadcasts, when `history_size` or `history_ttl_sec` is set.
    pub history: Option<HistoryConfig>,
    /// Answer `$ws.presence.<subject>` and clients' `{"presence"}`.
    pub presence: bool,
    /// Send `joined` / `left` frames to the subscribers of a pattern.
    pub presence_events: bool,
    /// Fan clients' envelopes out to the subscribers (and the history) too.
    pub client_publish: bool,
}

/// `listen`: an IP address and port (`0.0.0.0:8080`, `[::]:8080`), or `localhost:<port>`. No
/// host names: resolving one would block the SDK's command loop.
pub(crate) fn parse_listen(value: &str) -> Result<std::net::SocketAddr, ConfigError> {
    let parsed = match value.strip_prefix("localhost:") {
        Some(port) => port
            .parse::<u16>()
            .ok()
            .map(|port| std::net::SocketAddr::from(([127, 0, 0, 1], port))),
        None => value.parse().ok(),
    };
    parsed.ok_or_else(|| {
        invalid(
            "listen",
            value,
            "expected an IP address and port such as `0.0.0.0:8080`, `127.0.0.1:8080` or `[::]:8080` (or `localhost:<port>`)",
        )
    })
}

impl ListenConfig {
    /// The listener keys whose values differ.
    pub fn differing_keys(&self, other: &Self) -> Vec<String> {
        let ListenConfig {
            addr,
            path,
            max_clients,
            allowed_origins,
            jwt,
            client_queue_bytes,
            client_rate_limit,
            client_events,
            tls,
            history,
            presence,
            presence_events,
            client_publish,
        } = self;
        [
            ("listen", *addr == other.addr),
            ("path", *path == other.path),
            ("max_clients", *max_clients == other.max_clients),
            ("allowed_origins", *allowed_origins == other.allowed_origins),
            (
                "jwt_secret / jwt_public_key / jwt_audience / jwt_issuer",
                *jwt == other.jwt,
            ),
            (
                "client_queue_bytes",
                *client_queue_bytes == other.client_queue_bytes,
            ),
            (
                "client_rate_limit",
                *client_rate_limit == other.client_rate_limit,
            ),
            ("client_events", *client_events == other.client_events),
            ("tls_cert / tls_key", *tls == other.tls),
            ("history_size / history_ttl_sec", *history == other.history),
            ("presence", *presence == other.presence),
            ("presence_events", *presence_events == other.presence_events),
            ("client_publish", *client_publish == other.client_publish),
        ]
        .into_iter()
        .filter(|(_, same)| !same)
        .map(|(key, _)| key.to_string())
        .collect()
    }
}

impl Layers<'_> {
    /// The listener's settings when `listen` is set (link or provider), else none; the other
    /// listener keys are read only then.
    pub(crate) fn listener(&self) -> Result<Option<ListenConfig>, ConfigError> {
        let Some(listen) = self.plain("listen") else {
            return Ok(None);
        };
        let addr = parse_listen(listen)?;
        let path = match self.plain("path") {
            None => "/".to_string(),
            Some(p) if p.starts_with('/') && !p.contains('?') && !p.contains('#') && !p.chars().any(|c| c.is_whitespace() || c.is_control()) => p.to_string(),
            Some(p) => {
                return Err(invalid(
                    "path",
                    p,
                    "expected an HTTP path such as `/` or `/chat` (starting with `/`, no query, no whitespace)",
                ))
            }
        };
        let allowed_origins = match self.plain("allowed_origins") {
            None => Vec::new(),
            Some(list) => {
                let origins: Vec<String> = list
                    .split(',')
                    .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
                    .collect();
                if origins
                    .iter()
                    .any(|o| o.is_empty() || o.chars().any(|c| c.is_whitespace() || c.is_control()))
                {
                    return Err(invalid(
                        "allowed_origins",
                        list,
                        "expected a comma list of origins such as `https://chat.example.com,http://localhost:8080`",
                    ));
                }
                origins
            }
        };
        let jwt = match (self.value("jwt_secret")?, self.value("jwt_public_key")?) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "jwt_public_key",
                    "",
                    "set together with `jwt_secret`: choose one (a secret for HS256, or a public key for RS256 / ES256)",
                ))
            }
            (Some(secret), None) => Some(JwtKey::secret(&secret)?),
            (None, Some(pem)) => Some(JwtKey::public_key(&pem)?),
            (None, None) => None,
        };
        let [audience, issuer] = ["jwt_audience", "jwt_issuer"].map(|key| match self.plain(key) {
            Some("") => Err(invalid(
                key,
                "",
                "empty: give the value client JWTs must carry",
            )),
            value => Ok(value.map(str::to_string)),
        });
        let (audience, issuer) = (audience?, issuer?);
        let jwt = match jwt {
            Some(key) => Some(key.requiring(audience, issuer)),
            None => {
                for (key, value) in [("jwt_audience", &audience), ("jwt_issuer", &issuer)] {
                    if let Some(value) = value {
                        return Err(invalid(
                            key,
                            value,
                            "set, but no JWT key is (`jwt_secret` or `jwt_public_key`): it applies to client JWTs only",
                        ));
                    }
                }
                None
            }
        };
        if jwt.is_some() && self.value("auth_token")?.is_some() {
            return Err(invalid(
                "auth_token",
                "",
                "set together with a JWT key (`jwt_secret` / `jwt_public_key`): clients present one or the other; choose one",
            ));
        }
        let tls = self.server_tls()?;
        let history = match (
            self.number("history_size")?,
            self.seconds("history_ttl_sec")?,
        ) {
            (0, ttl) if ttl.is_zero() => None,
            (size, ttl) => Some(HistoryConfig { size, ttl }),
        };
        Ok(Some(ListenConfig {
            addr,
            path,
            max_clients: self.count("max_clients")?,
            allowed_origins,
            jwt,
            client_queue_bytes: self.count("client_queue_bytes")?,
            client_rate_limit: self.small("client_rate_limit")?,
            client_events: self.flag("client_events")?,
            tls,
            history,
            presence: self.flag("presence")?,
            presence_events: self.flag("presence_events")?,
            client_publish: self.flag("client_publish")?,
        }))
    }
}
