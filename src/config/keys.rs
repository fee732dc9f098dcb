//! What a row of the key table says: a key's name, the mode it belongs to, whether its value may
//! come from a secret, and what its value is (text, a flag, a choice, a bounded number). The rows
//! live with their concern (common.rs, client.rs, server.rs, replicas.rs, tls.rs); the table is
//! [`super::keys`], and the parser, the unknown-key warning and the docs' test read it.

/// The mode a key belongs to: a link sets `uri` (dialling) or `listen` (a listener).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Either mode.
    Both,
    /// A link that dials a server: a listener's link may not set it.
    Dialling,
    /// A listener: a dialling link may not set it.
    Listener,
}

/// Where a key's value may come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secret {
    /// Plain config only.
    No,
    /// A secret (the link's, then the provider's) first, else plain config: certificates, public
    /// keys and a URL that may carry credentials.
    Allowed,
    /// A credential: a secret first, plain config only with a warning, and its value is never
    /// shown in an error, a log line or `Debug` output.
    Preferred,
}

/// What a key's value is.
#[derive(Debug, Clone, Copy)]
pub enum Value {
    /// Text, checked by its concern's parser; its default (if any) is that parser's.
    Text,
    /// `true` or `false`, with its default.
    Flag(bool),
    /// One of these words; the first is the default.
    Choice(&'static [&'static str]),
    /// A whole number within its bound.
    Number(Bound),
}

/// A numeric key's default and the largest value accepted. Every number has a bound, so that no
/// value, however large, can overflow a duration, exhaust memory or trip an assertion of a
/// library (tokio's semaphore refuses more than 2^61 permits, `Instant + Duration` panics on
/// overflow); a value above it refuses the link with a message that gives the bound.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub default: u64,
    pub max: u64,
    /// What the number counts, for messages: "whole seconds", ...
    pub unit: &'static str,
    /// Why the bound is what it is, when that is not obvious.
    pub why: &'static str,
    /// Whether 0 is a value (forever, no limit); every other number is at least 1.
    pub zero: bool,
}

/// One row of the key table.
#[derive(Debug)]
pub struct Key {
    pub name: &'static str,
    pub mode: Mode,
    pub secret: Secret,
    pub value: Value,
}

impl Key {
    pub(crate) const fn new(name: &'static str, mode: Mode, secret: Secret, value: Value) -> Key {
        Key {
            name,
            mode,
            secret,
            value,
        }
    }

    /// A number's bound, none for other keys.
    pub fn bound(&self) -> Option<&Bound> {
        match &self.value {
            Value::Number(bound) => Some(bound),
            _ => None,
        }
    }
}

pub(crate) const SECONDS: &str = "whole seconds";
pub(crate) const MILLISECONDS: &str = "whole milliseconds";

/// A number of `unit` from 1 to `max`.
pub(crate) const fn number(default: u64, max: u64, unit: &'static str) -> Value {
    Value::Number(Bound {
        default,
        max,
        unit,
        why: "",
        zero: false,
    })
}

/// A number of `unit` from 0 (no limit, forever) to `max`.
pub(crate) const fn number_or_zero(default: u64, max: u64, unit: &'static str) -> Value {
    Value::Number(Bound {
        default,
        max,
        unit,
        why: "",
        zero: true,
    })
}

/// A number of `unit` from 1 to `max`, with the reason of the bound.
pub(crate) const fn number_why(
    default: u64,
    max: u64,
    unit: &'static str,
    why: &'static str,
) -> Value {
    Value::Number(Bound {
        default,
        max,
        unit,
        why,
        zero: false,
    })
}
