//! The keys of replicas (client mode): whether one replica holds a session's connection or each
//! its own, and how soon a standby takes over.

use std::time::Duration;

use super::keys::{number, Key, Mode, Secret, Value, SECONDS};
use super::layers::Layers;
use super::ConfigError;

/// The keys of replicas.
#[rustfmt::skip]
pub(crate) const KEYS: &[Key] = &[
    Key::new("replicas", Mode::Dialling, Secret::No, Value::Choice(&["one", "all"])),
    Key::new("failover_sec", Mode::Dialling, Secret::No, number(10, 86_400, SECONDS)),
];

/// How several replicas of the provider share a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replicas {
    /// One replica in the lattice holds the connection; the others stand by and forward.
    One,
    /// Every replica holds a connection of its own.
    All,
}

impl Replicas {
    pub fn as_str(self) -> &'static str {
        match self {
            Replicas::One => "one",
            Replicas::All => "all",
        }
    }
}

impl Layers<'_> {
    /// `replicas` and `failover_sec`.
    pub(crate) fn replicas(&self) -> Result<(Replicas, Duration), ConfigError> {
        let replicas = match self.choice("replicas")? {
            "all" => Replicas::All,
            _ => Replicas::One,
        };
        Ok((replicas, self.seconds("failover_sec")?))
    }
}
