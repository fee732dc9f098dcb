//! What names a session and its parts in both modes: the session key (component and link name)
//! and the random tokens of session ids, client ids, request inboxes and ack ids.

use std::fmt;

use rand::Rng as _;

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
