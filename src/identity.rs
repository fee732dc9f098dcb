//! What names a session and its parts in both modes: the session key (component and link name),
//! session ids (random, or stable across replicas), listener client ids, the random tokens of
//! request inboxes and ack ids, and what `$ws.sessions` shows of either kind of session.

use std::fmt;

use rand::Rng as _;
use serde::Serialize;

/// The provider's name: its OpenTelemetry meter, its NATS connections' names, the SDK's
/// `run_provider`.
pub const PROVIDER_NAME: &str = "messaging-websocket-provider";

/// What identifies a session: the component and the link name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey {
    pub component: String,
    pub link_name: String,
}

impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.component, self.link_name)
    }
}

/// `len` random characters of `[A-Za-z0-9]`: the unguessable part of session ids, request
/// inboxes and ack ids.
pub fn token(len: usize) -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// A session id of one replica: unique, `[A-Za-z0-9_-]` only (so it never contains a `.`).
pub fn random_session_id() -> String {
    format!("ws_{}", token(16))
}

/// The session id of `replicas = one` (and its lease key): the same on every replica, so that
/// any of them can name and address it, and stable across failovers.
pub fn stable_session_id(component: &str, link_name: &str) -> String {
    // FNV-1a, 64 bits: stable across builds and platforms (std's hasher promises neither).
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in component
        .bytes()
        .chain(std::iter::once(0))
        .chain(link_name.bytes())
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("ws_{hash:016x}")
}

/// A listener client's id: `c`, the listener's replica tag, and a random part.
pub fn client_id(replica_tag: &str) -> String {
    format!("c{replica_tag}{}", token(12))
}

/// The `kind` of a listener's client in `$ws.sessions` (a dialling session has none).
pub const CLIENT_KIND: &str = "client";

/// What `$ws.sessions` shows of a session that dials a server or of a listener's client: the
/// fields both have, and the mode's own (`M`, flattened in beside them).
#[derive(Serialize)]
pub struct SessionInfo<'a, M: Serialize> {
    pub id: &'a str,
    /// [`CLIENT_KIND`] for a listener's client, none for a dialling session.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub link_name: &'a str,
    pub state: &'static str,
    /// RFC 3339, milliseconds; none while not connected.
    pub connected_at: Option<String>,
    pub frames_in: u64,
    pub frames_out: u64,
    #[serde(flatten)]
    pub mode: M,
}

/// `at` as `$ws.sessions` shows it: RFC 3339 with milliseconds.
pub fn rfc3339(at: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_unique_and_dot_free() {
        let a = random_session_id();
        let b = random_session_id();
        assert_ne!(a, b);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'));
    }
}
