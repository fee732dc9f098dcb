//! The keys of both modes: timeouts, the envelope, the delivery budget and keepalive, and the
//! parsing of those that are not a plain number, flag or choice.

use super::keys::{number, number_why, Key, Mode, Secret, Value, MILLISECONDS, SECONDS};
use super::layers::Layers;
use super::{invalid, ConfigError};

/// The longest `request` (and `publish`) wait: the host cuts a component-to-provider call at
/// 10 s, and the answer must be back before that.
pub const MAX_REQUEST_TIMEOUT_MS: u64 = 9_500;

const HOST_CUT: &str = " (the wasmCloud host cuts a component's call to a provider at 10 s)";

const COUNT: &str = "a whole number";
const BYTES: &str = "a whole number of bytes";

/// The keys of both modes, in the order of the contract's table.
#[rustfmt::skip]
pub(crate) const KEYS: &[Key] = &[
    Key::new("auth_token", Mode::Both, Secret::Preferred, Value::Text),
    Key::new("connect_timeout_sec", Mode::Both, Secret::No, number(10, 86_400, SECONDS)),
    Key::new("enable_session_tracking", Mode::Both, Secret::No, Value::Flag(true)),
    Key::new("format", Mode::Both, Secret::No, Value::Choice(&["json", "msgpack", "protobuf", "raw"])),
    Key::new("raw_subject", Mode::Both, Secret::No, Value::Text),
    Key::new("send_timeout_ms", Mode::Both, Secret::No, number_why(5_000, MAX_REQUEST_TIMEOUT_MS, MILLISECONDS, HOST_CUT)),
    Key::new("request_timeout_ms", Mode::Both, Secret::No, number_why(5_000, MAX_REQUEST_TIMEOUT_MS, MILLISECONDS, HOST_CUT)),
    Key::new("inbox_prefix", Mode::Both, Secret::No, Value::Text),
    Key::new("max_pending", Mode::Both, Secret::No, number(1024, 65_536, COUNT)),
    Key::new("max_in_flight", Mode::Both, Secret::No, number(512, 65_536, COUNT)),
    Key::new("max_in_flight_bytes", Mode::Both, Secret::No, number_why(4 << 20, 1 << 30, BYTES, " (1 GiB)")),
    Key::new("delivery_timeout_ms", Mode::Both, Secret::No, number(10_000, 600_000, MILLISECONDS)),
    Key::new("max_message_bytes", Mode::Both, Secret::No, number_why(1 << 20, 256 << 20, BYTES, " (256 MiB)")),
    Key::new("ping_interval_sec", Mode::Both, Secret::No, number(20, 86_400, SECONDS)),
    Key::new("pong_timeout_sec", Mode::Both, Secret::No, number(10, 86_400, SECONDS)),
    Key::new("compression", Mode::Both, Secret::No, Value::Choice(&["none", "deflate"])),
];

/// How messages are framed on the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One JSON envelope `{subject, body (base64), reply_to}` per frame.
    Json,
    /// The same envelope as a MessagePack map in a binary frame (`body` as bin, no base64).
    Msgpack,
    /// The same envelope as the Protocol Buffers message of proto/envelope.proto, binary frames.
    Protobuf,
    /// The body alone; incoming frames get the subject `raw_subject`.
    Raw,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Msgpack => "msgpack",
            Format::Protobuf => "protobuf",
            Format::Raw => "raw",
        }
    }
}

/// Per-message compression of a session's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    /// permessage-deflate (RFC 7692), when the server accepts it.
    Deflate,
}

impl Layers<'_> {
    pub(crate) fn format(&self) -> Result<Format, ConfigError> {
        Ok(match self.choice("format")? {
            "msgpack" => Format::Msgpack,
            "protobuf" => Format::Protobuf,
            "raw" => Format::Raw,
            _ => Format::Json,
        })
    }

    pub(crate) fn compression(&self) -> Result<Compression, ConfigError> {
        Ok(match self.choice("compression")? {
            "deflate" => Compression::Deflate,
            _ => Compression::None,
        })
    }

    /// `raw_subject`, the link name unless set.
    pub(crate) fn raw_subject(&self, link_name: &str) -> Result<String, ConfigError> {
        match self.value("raw_subject")? {
            Some(s) => {
                if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(invalid(
                        "raw_subject",
                        &s,
                        "expected a non-empty subject without whitespace",
                    ));
                }
                Ok(s)
            }
            None => Ok(link_name.to_string()),
        }
    }

    pub(crate) fn inbox_prefix(&self) -> Result<String, ConfigError> {
        let Some(prefix) = self.value("inbox_prefix")? else {
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
                &prefix,
                "expected a subject prefix such as `_INBOX` (no whitespace, no empty tokens, not `$ws.`)",
            ));
        }
        Ok(prefix)
    }
}
