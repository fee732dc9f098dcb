//! Reading a link's settings from its four places (link secrets, link config, provider
//! secrets, provider config) in order, each key parsed and checked against its bounds.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use tracing::warn;
use wasmcloud_provider_sdk::core::secrets::SecretValue;

use super::*;
use crate::config::jwt::JwtKey;
use crate::config::tls::{ServerTls, Tls, TlsKeys};

/// The four places a value can come from, in order of precedence for sensitive keys.
pub(crate) struct Layers<'a> {
    pub(crate) link_config: &'a HashMap<String, String>,
    pub(crate) link_secrets: &'a HashMap<String, SecretValue>,
    pub(crate) defaults: &'a ProviderDefaults,
}

impl Layers<'_> {
    /// A plain key: the link's value, else the provider's.
    pub(crate) fn plain(&self, key: &str) -> Option<&str> {
        self.link_config
            .get(key)
            .or_else(|| self.defaults.config.get(key))
            .map(String::as_str)
    }

    /// A key from the secrets only: the link's, then the provider's.
    pub(crate) fn secret(&self, key: &str) -> Result<Option<String>, ConfigError> {
        debug_assert!(
            may_be_secret(key),
            "`{key}` is read from secrets but not listed in SECRET_KEYS"
        );
        for secrets in [self.link_secrets, &self.defaults.secrets] {
            if let Some(secret) = secrets.get(key) {
                let value = match secret {
                    SecretValue::String(s) => s.clone(),
                    SecretValue::Bytes(b) => {
                        String::from_utf8(b.clone()).map_err(|_| ConfigError {
                            key: key.to_string(),
                            value: None,
                            reason: "the secret's bytes are not valid UTF-8".into(),
                        })?
                    }
                };
                return Ok(Some(value));
            }
        }
        Ok(None)
    }

    /// A sensitive key: link secret, provider secret, then plain config with a warning.
    pub(crate) fn sensitive(&self, key: &str) -> Result<Option<String>, ConfigError> {
        if let Some(value) = self.secret(key)? {
            return Ok(Some(value));
        }
        Ok(self.plain(key).map(|value| {
            warn!(
                key,
                "sensitive setting taken from plain config; put it in a secret instead"
            );
            value.to_string()
        }))
    }

    /// A key that may live in a secret or in plain config (a public certificate): secrets first.
    pub(crate) fn secret_or_plain(&self, key: &str) -> Result<Option<String>, ConfigError> {
        Ok(self
            .secret(key)?
            .or_else(|| self.plain(key).map(str::to_string)))
    }

    /// Names of all `header.<Name>` keys found in any layer.
    pub(crate) fn header_keys(&self) -> BTreeSet<&str> {
        self.link_config
            .keys()
            .chain(self.defaults.config.keys())
            .chain(self.link_secrets.keys())
            .chain(self.defaults.secrets.keys())
            .map(String::as_str)
            .filter(|k| k.starts_with(HEADER_PREFIX))
            .collect()
    }

    pub(crate) fn parse(
        &self,
        link_name: &str,
        require_uri: bool,
    ) -> Result<ConnectionConfig, ConfigError> {
        let listen = self.listener()?;
        // `uri` may carry credentials (userinfo, a `?token=`), so it may come from a secret.
        let uri = match self.secret_or_plain("uri")? {
            // A listener's link ignores a provider-wide `uri` (the defaults of dialling links);
            // set on the link itself, it is refused by `check_mode`.
            Some(_) if listen.is_some() => Uri::default(),
            Some(uri) => parse_uri(&uri)?,
            None if require_uri && listen.is_none() => {
                return Err(ConfigError {
                    key: "uri".into(),
                    value: None,
                    reason: "required (a ws:// or wss:// URL; or `listen` for a listener) but not set in the link's or the provider's config".into(),
                })
            }
            None => Uri::default(),
        };
        let auth_token = self
            .sensitive("auth_token")?
            .map(|token| {
                let value = format!("Bearer {token}");
                check_header_value("auth_token", &value)?;
                Ok::<_, ConfigError>(token)
            })
            .transpose()?;
        let mut headers = BTreeMap::new();
        for key in self.header_keys() {
            let name = &key[HEADER_PREFIX.len()..];
            check_header_name(key, name)?;
            if auth_token.is_some() && name.eq_ignore_ascii_case(AUTHORIZATION) {
                return Err(invalid(
                    key,
                    "",
                    "conflicts with `auth_token`, which already sets the Authorization header",
                ));
            }
            let value = self.sensitive(key)?.unwrap_or_default();
            check_header_value(key, &value)?;
            headers.insert(name.to_string(), value);
        }
        let raw_subject = match self.plain("raw_subject") {
            Some(s) => {
                if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(invalid(
                        "raw_subject",
                        s,
                        "expected a non-empty subject without whitespace",
                    ));
                }
                s.to_string()
            }
            None => link_name.to_string(),
        };
        let reconnect_initial_delay = self.millis("reconnect_initial_delay_ms")?;
        let reconnect_max_delay = self.millis("reconnect_max_delay_ms")?;
        if reconnect_max_delay < reconnect_initial_delay {
            return Err(invalid(
                "reconnect_max_delay_ms",
                &reconnect_max_delay.as_millis().to_string(),
                format!(
                    "must not be less than reconnect_initial_delay_ms ({})",
                    reconnect_initial_delay.as_millis()
                ),
            ));
        }
        let format = match self.plain("format") {
            None | Some("json") => Format::Json,
            Some("msgpack") => Format::Msgpack,
            Some("raw") => Format::Raw,
            Some(other) => {
                return Err(invalid(
                    "format",
                    other,
                    "expected `json`, `msgpack` or `raw`",
                ))
            }
        };
        let tls = Tls::new(TlsKeys {
            ca: self.secret_or_plain("tls_ca")?,
            ca_file: self.plain("tls_ca_file").map(str::to_string),
            client_cert: self.secret_or_plain("tls_client_cert")?,
            client_key: self.sensitive("tls_client_key")?,
        })?;
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
        let compression = match self.plain("compression") {
            None | Some("none") => Compression::None,
            Some("deflate") => Compression::Deflate,
            Some(other) => {
                return Err(invalid(
                    "compression",
                    other,
                    "expected `none` or `deflate`",
                ))
            }
        };
        let ack = self.boolean("ack", false)?;
        if ack && format == Format::Raw {
            return Err(invalid(
                "ack",
                "true",
                "acknowledged delivery needs format json or msgpack (a raw frame carries no id)",
            ));
        }
        let replicas = match self.plain("replicas") {
            None | Some("one") => Replicas::One,
            Some("all") => Replicas::All,
            Some(other) => return Err(invalid("replicas", other, "expected `one` or `all`")),
        };
        Ok(ConnectionConfig {
            uri,
            auth_token,
            headers,
            connect_timeout: self.seconds("connect_timeout_sec")?,
            enable_session_tracking: self.boolean("enable_session_tracking", true)?,
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
            failover: self.seconds("failover_sec")?,
            listen,
        })
    }

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
        let jwt = match (self.sensitive("jwt_secret")?, self.secret_or_plain("jwt_public_key")?) {
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
        if jwt.is_some() && self.sensitive("auth_token")?.is_some() {
            return Err(invalid(
                "auth_token",
                "",
                "set together with a JWT key (`jwt_secret` / `jwt_public_key`): clients present one or the other; choose one",
            ));
        }
        let tls = match (
            self.secret_or_plain("tls_cert")?,
            self.sensitive("tls_key")?,
        ) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(invalid(
                    "tls_key",
                    "",
                    "not set, but `tls_cert` is: a wss listener needs both",
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "tls_cert",
                    "",
                    "not set, but `tls_key` is: a wss listener needs both",
                ))
            }
            (Some(cert), Some(key)) => Some(ServerTls::new(cert, key)?),
        };
        Ok(Some(ListenConfig {
            addr,
            path,
            max_clients: self.count("max_clients")?,
            allowed_origins,
            jwt,
            client_queue_bytes: self.count("client_queue_bytes")?,
            client_rate_limit: self.small("client_rate_limit")?,
            client_events: self.boolean("client_events", false)?,
            tls,
        }))
    }

    /// Keys of the other mode set on the link itself: a listener's link with dialling keys, or a
    /// dialling link with listener keys (provider config may carry the defaults of both).
    pub(crate) fn check_mode(&self, listening: bool) -> Result<(), ConfigError> {
        let (wrong, mode, fix): (&[&str], _, _) = if listening {
            (
                DIALLING_KEYS,
                "a listener (`listen` is set)",
                "they apply to links that dial a server (`uri`)",
            )
        } else {
            (
                LISTENER_KEYS,
                "a link that dials a server (no `listen`)",
                "they apply to a listener: set `listen` too",
            )
        };
        let link_sets =
            |key: &str| self.link_config.contains_key(key) || self.link_secrets.contains_key(key);
        let mut set: Vec<&str> = wrong.iter().copied().filter(|k| link_sets(k)).collect();
        if listening {
            set.extend(
                self.link_config
                    .keys()
                    .chain(self.link_secrets.keys())
                    .map(String::as_str)
                    .filter(|k| k.starts_with(HEADER_PREFIX)),
            );
        }
        set.sort_unstable();
        match set.first() {
            None => Ok(()),
            Some(first) => Err(ConfigError {
                key: (*first).to_string(),
                value: None,
                reason: format!(
                    "{} cannot be set on {mode}: {fix}",
                    set.iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }),
        }
    }

    pub(crate) fn inbox_prefix(&self) -> Result<String, ConfigError> {
        let Some(prefix) = self.plain("inbox_prefix") else {
            return Ok("_INBOX".into());
        };
        if prefix.is_empty()
            || prefix.starts_with('.')
            || prefix.ends_with('.')
            || prefix.contains("..")
            || prefix.starts_with(crate::subjects::RESERVED_SUBJECT_PREFIX)
            || prefix.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(invalid(
                "inbox_prefix",
                prefix,
                "expected a subject prefix such as `_INBOX` (no whitespace, no empty tokens, not `$ws.`)",
            ));
        }
        Ok(prefix.to_string())
    }

    /// A numeric key within its [`Bound`]: at least 1 (0 too for the [`ZERO_ALLOWED`] keys),
    /// at most the bound.
    pub(crate) fn number(&self, key: &str) -> Result<u64, ConfigError> {
        let bound = bound(key);
        let min = u64::from(!ZERO_ALLOWED.contains(&key));
        let Some(value) = self.plain(key) else {
            return Ok(bound.default);
        };
        let unit = bound.unit;
        let digits = value.trim();
        let n = match digits.parse::<u64>() {
            Ok(n) => n,
            // Digits only, but more than a u64 holds: still a number above the bound.
            Err(_) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => u64::MAX,
            Err(_) => return Err(invalid(key, value, format!("expected {unit}"))),
        };
        if n < min {
            Err(invalid(key, value, format!("must be at least 1 ({unit})")))
        } else if n > bound.max {
            Err(invalid(
                key,
                value,
                format!("at most {}{} ({unit})", bound.max, bound.why),
            ))
        } else {
            Ok(n)
        }
    }

    pub(crate) fn millis(&self, key: &str) -> Result<Duration, ConfigError> {
        self.number(key).map(Duration::from_millis)
    }

    pub(crate) fn seconds(&self, key: &str) -> Result<Duration, ConfigError> {
        self.number(key).map(Duration::from_secs)
    }

    pub(crate) fn count(&self, key: &str) -> Result<usize, ConfigError> {
        // Every bound fits in a usize of 32 bits or more.
        Ok(usize::try_from(self.number(key)?).unwrap_or(usize::MAX))
    }

    /// A number whose bound fits in a u32.
    pub(crate) fn small(&self, key: &str) -> Result<u32, ConfigError> {
        Ok(u32::try_from(self.number(key)?).unwrap_or(u32::MAX))
    }

    pub(crate) fn boolean(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        match self.plain(key) {
            None => Ok(default),
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(other) => Err(invalid(key, other, "expected `true` or `false`")),
        }
    }
}
