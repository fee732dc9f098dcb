//! A server's `uri` (shown without its credentials), `listen` addresses, and handshake headers
//! checked.

use std::fmt;

use super::*;

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
        ]
        .into_iter()
        .filter(|(_, same)| !same)
        .map(|(key, _)| key.to_string())
        .collect()
    }
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
