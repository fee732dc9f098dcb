//! The keys of a link that dials a server: `uri` (shown without its credentials), the handshake
//! headers, reconnecting, rate and acknowledged delivery.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use super::keys::{number, number_or_zero, Key, Mode, Secret, Value, MILLISECONDS};
use super::layers::Layers;
use super::{invalid, ConfigError, Format};
use crate::subjects::Pattern;

/// The handshake header carrying `auth_token`.
pub const AUTHORIZATION: &str = "authorization";

pub(crate) const HEADER_PREFIX: &str = "header.";

/// The row of every `header.<Name>` key.
pub(crate) const HEADER: Key = Key::new(
    "header.<Name>",
    Mode::Dialling,
    Secret::Preferred,
    Value::Text,
);

/// The keys of a dialling link, in the order of the contract's table.
#[rustfmt::skip]
pub(crate) const KEYS: &[Key] = &[
    Key::new("uri", Mode::Dialling, Secret::Allowed, Value::Text),
    HEADER,
    Key::new("max_publish_rate", Mode::Dialling, Secret::No, number_or_zero(0, 1_000_000, "a whole number of messages per second (0 = no limit)")),
    Key::new("reconnect_initial_delay_ms", Mode::Dialling, Secret::No, number(250, 3_600_000, MILLISECONDS)),
    Key::new("reconnect_max_delay_ms", Mode::Dialling, Secret::No, number(30_000, 3_600_000, MILLISECONDS)),
    Key::new("reconnect_max_attempts", Mode::Dialling, Secret::No, number_or_zero(0, 1_000_000, "a whole number of attempts (0 = retry forever)")),
    Key::new("ack", Mode::Dialling, Secret::No, Value::Flag(false)),
    Key::new("subscriptions", Mode::Dialling, Secret::No, Value::Text),
    Key::new("pool", Mode::Dialling, Secret::No, Value::Text),
];

/// Handshake headers the WebSocket client sets itself; a `header.<Name>` may not replace them.
pub(crate) const RESERVED_HEADERS: &[&str] = &[
    "host",
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
];

/// A server's URL. It may carry credentials (a password in its userinfo, a token in its query),
/// so wherever it is shown, in logs, errors, health and `$ws.sessions`, it is shown as
/// [`Uri::shown`]: userinfo and query replaced by `***`. `Display` and `Debug` show that form;
/// only [`Uri::full`] (what is dialled) holds the rest.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Uri {
    pub(super) full: String,
    pub(super) shown: String,
}

impl Uri {
    /// The URL as given, credentials included: for dialling only, never to show.
    pub fn full(&self) -> &str {
        &self.full
    }

    /// The URL as shown: `ws://***@host/path?***`.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Whether the scheme is `wss`.
    pub fn is_tls(&self) -> bool {
        self.full
            .get(..4)
            .is_some_and(|s| s.eq_ignore_ascii_case("wss:"))
    }
}

impl fmt::Display for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.shown, f)
    }
}

/// `value` with whatever may be a credential replaced by `***`: the userinfo (between `://` and
/// the `@` before the path) and the query and fragment. Works on text that is not a valid URL
/// too, since it also words the errors about bad ones.
pub fn redact_uri(value: &str) -> String {
    let (scheme, rest) = match value.find("://") {
        Some(at) => value.split_at(at + 3),
        None => ("", value),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let host = match authority.rfind('@') {
        Some(at) => format!("***@{}", &authority[at + 1..]),
        None => authority.to_string(),
    };
    let tail = match tail.find(['?', '#']) {
        Some(at) => format!("{}{}***", &tail[..at], &tail[at..at + 1]),
        None => tail.to_string(),
    };
    format!("{scheme}{host}{tail}")
}

pub(crate) fn parse_uri(value: &str) -> Result<Uri, ConfigError> {
    let shown = redact_uri(value);
    // The URL library's messages do not quote the input; ours shows the redacted form.
    let url =
        url::Url::parse(value).map_err(|e| invalid("uri", &shown, format!("not a URL ({e})")))?;
    if !matches!(url.scheme(), "ws" | "wss") {
        return Err(invalid("uri", &shown, "expected a ws:// or wss:// URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("uri", &shown, "the URL has no host"));
    }
    Ok(Uri {
        full: value.to_string(),
        shown,
    })
}

pub(crate) fn check_header_name(key: &str, name: &str) -> Result<(), ConfigError> {
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(ConfigError {
            key: key.to_string(),
            value: None,
            reason: format!("'{name}' is not a valid HTTP header name"),
        });
    }
    if RESERVED_HEADERS
        .iter()
        .any(|r| name.eq_ignore_ascii_case(r))
    {
        return Err(ConfigError {
            key: key.to_string(),
            value: None,
            reason: format!("the WebSocket handshake sets '{name}' itself"),
        });
    }
    Ok(())
}

pub(crate) fn check_header_value(key: &str, value: &str) -> Result<(), ConfigError> {
    http::HeaderValue::from_str(value).map(|_| ()).map_err(|_| {
        invalid(
            key,
            value,
            "not a valid HTTP header value (control characters or non-ASCII)",
        )
    })
}

impl Layers<'_> {
    /// `uri`: required for a dialling link (`require_uri`; provider-level config may leave it to
    /// the links), ignored by a listener's link when it comes from the provider's defaults.
    pub(crate) fn uri(&self, listening: bool, require_uri: bool) -> Result<Uri, ConfigError> {
        Ok(match self.value("uri")? {
            // A listener's link ignores a provider-wide `uri` (the defaults of dialling links);
            // set on the link itself, it is refused by `check_mode`.
            Some(_) if listening => Uri::default(),
            Some(uri) => parse_uri(&uri)?,
            None if require_uri && !listening => {
                return Err(ConfigError {
                    key: "uri".into(),
                    value: None,
                    reason: "required (a ws:// or wss:// URL; or `listen` for a listener) but not set in the link's or the provider's config".into(),
                })
            }
            None => Uri::default(),
        })
    }

    /// `auth_token`, checked as the value of an `Authorization: Bearer` header.
    pub(crate) fn auth_token(&self) -> Result<Option<String>, ConfigError> {
        self.value("auth_token")?
            .map(|token| {
                check_header_value("auth_token", &format!("Bearer {token}"))?;
                Ok(token)
            })
            .transpose()
    }

    /// Every `header.<Name>`, by the name as the user wrote it.
    pub(crate) fn headers(
        &self,
        auth_token: Option<&str>,
    ) -> Result<BTreeMap<String, String>, ConfigError> {
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
            let value = self.value(key)?.unwrap_or_default();
            check_header_value(key, &value)?;
            headers.insert(name.to_string(), value);
        }
        Ok(headers)
    }

    /// The first and the largest reconnect delay.
    pub(crate) fn reconnect_delays(&self) -> Result<(Duration, Duration), ConfigError> {
        let initial = self.millis("reconnect_initial_delay_ms")?;
        let max = self.millis("reconnect_max_delay_ms")?;
        if max < initial {
            return Err(invalid(
                "reconnect_max_delay_ms",
                &max.as_millis().to_string(),
                format!(
                    "must not be less than reconnect_initial_delay_ms ({})",
                    initial.as_millis()
                ),
            ));
        }
        Ok((initial, max))
    }

    /// `subscriptions`: the subject patterns a handler link receives (a comma list, NATS
    /// wildcards); `None` (every subject) when not set.
    pub(crate) fn subscriptions(&self) -> Result<Option<Vec<Pattern>>, ConfigError> {
        self.plain("subscriptions")
            .map(|list| Pattern::parse_list(list).map_err(|e| invalid("subscriptions", list, e)))
            .transpose()
    }

    /// `pool`: the name of the connection this link shares with the other links of that name,
    /// whatever their component.
    pub(crate) fn pool(&self) -> Result<Option<String>, ConfigError> {
        let Some(name) = self.plain("pool") else {
            return Ok(None);
        };
        let fine = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if name.is_empty() || name.len() > 64 || !name.chars().all(fine) {
            return Err(invalid(
                "pool",
                name,
                "expected a name of 1 to 64 letters, digits, `-`, `_` or `.`",
            ));
        }
        Ok(Some(name.to_string()))
    }

    /// `ack`, which needs an envelope with an id.
    pub(crate) fn ack(&self, format: Format) -> Result<bool, ConfigError> {
        let ack = self.flag("ack")?;
        if ack && format == Format::Raw {
            return Err(invalid(
                "ack",
                "true",
                "acknowledged delivery needs format json or msgpack (a raw frame carries no id)",
            ));
        }
        Ok(ack)
    }
}
