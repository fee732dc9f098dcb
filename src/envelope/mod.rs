//! The wire format: how a broker message becomes a WebSocket frame and back.
//!
//! Format `json` (the default) puts one JSON object per frame:
//! `{"subject": "...", "body": "<standard base64>", "reply_to": "..."}` with `reply_to` omitted
//! when absent. Format `msgpack` carries the same envelope as a MessagePack map in a binary frame,
//! `body` as bin (no base64). Format `protobuf` carries it as the Protocol Buffers message of
//! proto/envelope.proto ([`protobuf`]). Format `raw` carries the body alone, for third-party feeds.
//!
//! This module knows nothing of sockets: it maps [`BrokerMessage`]s to [`Frame`]s, which the
//! session module turns into the WebSocket library's own message type.

mod control;
pub mod gateway;
pub mod protobuf;

use std::borrow::Cow;
use std::fmt;

use base64_simd::{AsOut as _, STANDARD};
use bytes::Bytes;
use serde::Deserialize;

use crate::bindings::wasmcloud::messaging::types::BrokerMessage;
use crate::config::Format;
use control::{control, Control};

/// One outgoing or incoming WebSocket data frame, independent of the WebSocket library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A text frame; the bytes are valid UTF-8.
    Text(Bytes),
    Binary(Bytes),
}

impl Frame {
    pub fn payload(&self) -> &Bytes {
        match self {
            Frame::Text(b) | Frame::Binary(b) => b,
        }
    }

    pub fn len(&self) -> usize {
        self.payload().len()
    }

    pub fn is_empty(&self) -> bool {
        self.payload().is_empty()
    }
}

/// Why an incoming frame is not a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The frame is not JSON at all.
    NotJson(String),
    /// The frame is not MessagePack at all.
    NotMsgpack(String),
    /// The frame is not a protobuf `Envelope`.
    NotProtobuf(String),
    /// JSON, but not an envelope (no `subject`, wrong types, ...).
    NotEnvelope(String),
    /// `body` is not standard base64.
    BadBase64(String),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::NotJson(e) => write!(f, "frame is not JSON: {e}"),
            DecodeError::NotMsgpack(e) => write!(f, "frame is not MessagePack: {e}"),
            DecodeError::NotProtobuf(e) => write!(f, "frame is not a protobuf Envelope: {e}"),
            DecodeError::NotEnvelope(e) => write!(f, "frame is not a message envelope: {e}"),
            DecodeError::BadBase64(e) => write!(f, "`body` is not standard base64: {e}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// An incoming frame: an envelope, or an acknowledgement `{"ack": "<id>"}`.
#[derive(Deserialize)]
struct InFrame<'a> {
    #[serde(default)]
    subject: Option<String>,
    // Borrowed where the JSON string has no escapes, so the base64 text is not copied.
    #[serde(borrow, default)]
    body: Option<Cow<'a, str>>,
    #[serde(default)]
    reply_to: Option<String>,
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(default)]
    ack: Option<serde_json::Value>,
    #[serde(default)]
    subscribe: Option<serde_json::Value>,
    #[serde(default)]
    unsubscribe: Option<serde_json::Value>,
    #[serde(default)]
    since: Option<Since>,
    #[serde(default)]
    presence: Option<serde_json::Value>,
}

/// What an incoming data frame carries.
#[derive(Debug)]
pub enum Incoming {
    /// A message, with the string `id` the server wants acknowledged, if any.
    Message {
        msg: BrokerMessage,
        id: Option<String>,
    },
    /// The server acknowledges the outgoing envelope with this id.
    Ack(String),
    /// A listener's client subscribes to a pattern: `{"subscribe": "<pattern>"}`, with
    /// `"since"` when it recovers what it missed from the listener's history.
    Subscribe {
        pattern: String,
        since: Option<Since>,
    },
    /// A listener's client leaves a pattern: `{"unsubscribe": "<pattern>"}`.
    Unsubscribe(String),
    /// A listener's client asks who is subscribed to a subject: `{"presence": "<subject>"}`.
    Presence(String),
}

/// Where a client left off in a listener's history: the `offset` and `epoch` of the last
/// broadcast it got (`{"subscribe": "<pattern>", "since": {"offset": N, "epoch": "E"}}`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Since {
    pub offset: u64,
    /// Empty: whatever the history's epoch is (`{"offset": 0}` asks for all it holds).
    #[serde(default)]
    pub epoch: String,
}

/// Where a broadcast sits in its listener's history: every frame a subscriber gets of a
/// listener with history carries both.
#[derive(Debug, Clone, Copy)]
pub struct Offset<'a> {
    pub offset: u64,
    pub epoch: &'a str,
}

/// Encodes `msg` as a JSON envelope `{"subject", "body", "reply_to"?, "id"?}` (the `id` when
/// acknowledged delivery is on), written straight into one buffer of the final size. The body's
/// base64 goes in place, without a string of its own and without the escaping scan a JSON
/// serializer would run over it (base64 never needs escaping); the profile of the publish path
/// showed that scan and the formatting machinery it came through. The strings are escaped by
/// serde_json.
pub fn encode_json(msg: &BrokerMessage, id: Option<&str>) -> Bytes {
    encode_json_at(msg, id, None)
}

/// [`encode_json`], with `"offset"` and `"epoch"` when the message is a stored broadcast.
fn encode_json_at(msg: &BrokerMessage, id: Option<&str>, stored: Option<Offset<'_>>) -> Bytes {
    let body_len = STANDARD.encoded_length(msg.body.len());
    let strings = msg.subject.len() + msg.reply_to.as_ref().map_or(0, String::len);
    let mut out = Vec::with_capacity(
        48 + strings + body_len + id.map_or(0, str::len) + stored.map_or(0, |a| 40 + a.epoch.len()),
    );
    out.extend_from_slice(br#"{"subject":"#);
    json_string(&mut out, &msg.subject);
    out.extend_from_slice(br#","body":""#);
    let at = out.len();
    out.resize(at + body_len, 0);
    let _ = STANDARD.encode(&msg.body, out[at..].as_out());
    out.push(b'"');
    if let Some(reply_to) = &msg.reply_to {
        out.extend_from_slice(br#","reply_to":"#);
        json_string(&mut out, reply_to);
    }
    if let Some(id) = id {
        out.extend_from_slice(br#","id":"#);
        json_string(&mut out, id);
    }
    if let Some(at) = stored {
        out.extend_from_slice(br#","offset":"#);
        out.extend_from_slice(at.offset.to_string().as_bytes());
        out.extend_from_slice(br#","epoch":"#);
        json_string(&mut out, at.epoch);
    }
    out.push(b'}');
    Bytes::from(out)
}

/// Appends `s` as a JSON string (quoted, escaped).
fn json_string(out: &mut Vec<u8>, s: &str) {
    // Writing a string into a Vec cannot fail.
    serde_json::to_writer(&mut *out, s).expect("a string serializes");
}

/// The acknowledgement of an incoming JSON envelope: `{"ack": "<id>"}`.
pub fn encode_ack(id: &str) -> Frame {
    Frame::Text(Bytes::from(serde_json::json!({ "ack": id }).to_string()))
}

/// Encodes `msg` as a MessagePack map `{subject: str, body: bin, reply_to?: str, id?: str}`,
/// written into one buffer of the final size.
pub fn encode_msgpack(msg: &BrokerMessage, id: Option<&str>) -> Bytes {
    encode_msgpack_at(msg, id, None)
}

/// [`encode_msgpack`], with `offset` (uint) and `epoch` when the message is a stored broadcast.
fn encode_msgpack_at(msg: &BrokerMessage, id: Option<&str>, at: Option<Offset<'_>>) -> Bytes {
    let strings = msg.subject.len() + msg.reply_to.as_ref().map_or(0, String::len);
    let mut out = Vec::with_capacity(48 + strings + msg.body.len() + id.map_or(0, str::len));
    let fields = 2
        + u32::from(msg.reply_to.is_some())
        + u32::from(id.is_some())
        + 2 * u32::from(at.is_some());
    // Writing into a Vec cannot fail (it grows); the lengths are bounded by max_message_bytes.
    let _ = rmp::encode::write_map_len(&mut out, fields);
    msgpack_field(&mut out, "subject", &msg.subject);
    let _ = rmp::encode::write_str(&mut out, "body");
    let _ = rmp::encode::write_bin(&mut out, &msg.body);
    if let Some(reply_to) = &msg.reply_to {
        msgpack_field(&mut out, "reply_to", reply_to);
    }
    if let Some(id) = id {
        msgpack_field(&mut out, "id", id);
    }
    if let Some(at) = at {
        let _ = rmp::encode::write_str(&mut out, "offset");
        let _ = rmp::encode::write_uint(&mut out, at.offset);
        msgpack_field(&mut out, "epoch", at.epoch);
    }
    Bytes::from(out)
}

fn msgpack_field(out: &mut Vec<u8>, key: &str, value: &str) {
    let _ = rmp::encode::write_str(&mut *out, key);
    let _ = rmp::encode::write_str(&mut *out, value);
}

/// The acknowledgement of an incoming MessagePack envelope: the map `{ack: "<id>"}`.
pub fn encode_msgpack_ack(id: &str) -> Frame {
    let mut out = Vec::with_capacity(8 + id.len());
    let _ = rmp::encode::write_map_len(&mut out, 1);
    msgpack_field(&mut out, "ack", id);
    Frame::Binary(Bytes::from(out))
}

/// Decodes a MessagePack frame: a map with the envelope's keys. Unknown keys are ignored; a
/// missing `body` is an empty body; `body` may be bin or str (its UTF-8 bytes); an `id` that is
/// not a string is ignored. The body is a slice of `payload`, not a copy.
pub fn decode_msgpack(payload: &Bytes) -> Result<Incoming, DecodeError> {
    let frame: MsgpackFrame<'_> = rmp_serde::from_slice(payload).map_err(|e| match e {
        rmp_serde::decode::Error::InvalidMarkerRead(_)
        | rmp_serde::decode::Error::InvalidDataRead(_)
        | rmp_serde::decode::Error::Utf8Error(_)
        | rmp_serde::decode::Error::TypeMismatch(rmp::Marker::Reserved)
        | rmp_serde::decode::Error::DepthLimitExceeded => DecodeError::NotMsgpack(e.to_string()),
        other => DecodeError::NotEnvelope(other.to_string()),
    })?;
    let Some(subject) = frame.subject else {
        return control(Control {
            ack: frame.ack,
            subscribe: frame.subscribe,
            unsubscribe: frame.unsubscribe,
            since: frame.since,
            presence: frame.presence,
        });
    };
    Ok(Incoming::Message {
        msg: BrokerMessage {
            subject,
            body: frame.body.map_or_else(Bytes::new, |b| payload.slice_ref(b)),
            reply_to: frame.reply_to,
        },
        id: frame.id,
    })
}

/// An incoming MessagePack frame. Read by hand (a map and nothing else: serde's derived reader
/// would also take an array, field by position), borrowing the body from the frame.
#[derive(Default)]
struct MsgpackFrame<'a> {
    subject: Option<String>,
    body: Option<&'a [u8]>,
    reply_to: Option<String>,
    /// A string `id` (anything else is ignored).
    id: Option<String>,
    /// A string `ack` (anything else is ignored).
    ack: Option<String>,
    /// A string `subscribe` or `unsubscribe` (anything else is ignored).
    subscribe: Option<String>,
    unsubscribe: Option<String>,
    since: Option<Since>,
    presence: Option<String>,
}

impl<'de> Deserialize<'de> for MsgpackFrame<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Map;
        impl<'de> serde::de::Visitor<'de> for Map {
            type Value = MsgpackFrame<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map with the keys `subject`, `body`, `reply_to`")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut frame = MsgpackFrame::default();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    match &*key {
                        "subject" => frame.subject = Some(map.next_value()?),
                        "body" => frame.body = Some(map.next_value::<BorrowedBody<'de>>()?.0),
                        "reply_to" => frame.reply_to = map.next_value()?,
                        "id" => frame.id = map.next_value::<AnyString>()?.0,
                        "ack" => frame.ack = map.next_value::<AnyString>()?.0,
                        "subscribe" => frame.subscribe = map.next_value::<AnyString>()?.0,
                        "unsubscribe" => frame.unsubscribe = map.next_value::<AnyString>()?.0,
                        "since" => frame.since = map.next_value()?,
                        "presence" => frame.presence = map.next_value::<AnyString>()?.0,
                        _ => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(frame)
            }
        }
        deserializer.deserialize_map(Map)
    }
}

/// A body borrowed from the frame: bin, or str for its UTF-8 bytes.
struct BorrowedBody<'a>(&'a [u8]);

impl<'de> Deserialize<'de> for BorrowedBody<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Body;
        impl<'de> serde::de::Visitor<'de> for Body {
            type Value = BorrowedBody<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`body` as bin or str")
            }
            fn visit_borrowed_bytes<E>(self, v: &'de [u8]) -> Result<Self::Value, E> {
                Ok(BorrowedBody(v))
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(BorrowedBody(v.as_bytes()))
            }
        }
        deserializer.deserialize_bytes(Body)
    }
}

/// A value kept when it is a string and ignored otherwise (`id`, `ack`).
struct AnyString(Option<String>);

impl<'de> Deserialize<'de> for AnyString {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Any;
        impl<'de> serde::de::Visitor<'de> for Any {
            type Value = AnyString;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(AnyString(Some(v.to_string())))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(AnyString(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(AnyString(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(AnyString(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(AnyString(None))
            }
            fn visit_bytes<E>(self, _: &[u8]) -> Result<Self::Value, E> {
                Ok(AnyString(None))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(AnyString(None))
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(AnyString(None))
            }
            fn visit_some<D: serde::Deserializer<'de>>(
                self,
                d: D,
            ) -> Result<Self::Value, D::Error> {
                AnyString::deserialize(d)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(AnyString(None))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(AnyString(None))
            }
        }
        deserializer.deserialize_any(Any)
    }
}

/// Decodes a JSON frame. Unknown fields are ignored; a missing `body` is an empty body; an `id`
/// that is not a string is ignored.
pub fn decode_json(payload: &[u8]) -> Result<Incoming, DecodeError> {
    let frame: InFrame<'_> = serde_json::from_slice(payload).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            DecodeError::NotJson(e.to_string())
        } else {
            DecodeError::NotEnvelope(e.to_string())
        }
    })?;
    let Some(subject) = frame.subject else {
        let string = |v: Option<serde_json::Value>| match v {
            Some(serde_json::Value::String(s)) => Some(s),
            _ => None,
        };
        return control(Control {
            ack: string(frame.ack),
            subscribe: string(frame.subscribe),
            unsubscribe: string(frame.unsubscribe),
            since: frame.since,
            presence: string(frame.presence),
        });
    };
    let body = match frame.body {
        Some(text) => STANDARD
            .decode_to_vec(text.as_bytes())
            .map_err(|_| DecodeError::BadBase64(base64_mistake(&text)))?,
        None => Vec::new(),
    };
    Ok(Incoming::Message {
        msg: BrokerMessage {
            subject,
            body: Bytes::from(body),
            reply_to: frame.reply_to,
        },
        id: frame.id.and_then(|v| v.as_str().map(str::to_string)),
    })
}

/// What is wrong with a `body` the decoder refused (the SIMD decoder says only that it failed):
/// the first byte outside the alphabet, or the length or padding.
fn base64_mistake(text: &str) -> String {
    let alphabet = |c: char| c.is_ascii_alphanumeric() || c == '+' || c == '/';
    let data = text.trim_end_matches('=');
    match data.char_indices().find(|&(_, c)| !alphabet(c)) {
        Some((at, c)) => format!(
            "invalid character {} at offset {at}",
            crate::subjects::quoted(c.encode_utf8(&mut [0; 4]))
        ),
        None if !text.len().is_multiple_of(4) => format!(
            "length {} is not a multiple of 4 (standard base64 is padded with '=')",
            text.len()
        ),
        None => "bad padding or trailing bits".to_string(),
    }
}

/// Maps messages to frames and back for one session's format.
#[derive(Debug, Clone)]
pub struct Codec {
    format: Format,
    raw_subject: String,
}

impl Codec {
    pub fn new(format: Format, raw_subject: impl Into<String>) -> Self {
        Codec {
            format,
            raw_subject: raw_subject.into(),
        }
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// The frame `publish` sends for `msg` (with `id` when acknowledged delivery is on).
    pub fn encode(&self, msg: &BrokerMessage, id: Option<&str>) -> Frame {
        match self.format {
            Format::Json => Frame::Text(encode_json(msg, id)),
            Format::Msgpack => Frame::Binary(encode_msgpack(msg, id)),
            Format::Protobuf => Frame::Binary(protobuf::encode(msg, id)),
            Format::Raw if std::str::from_utf8(&msg.body).is_ok() => Frame::Text(msg.body.clone()),
            Format::Raw => Frame::Binary(msg.body.clone()),
        }
    }

    /// The frame of a broadcast stored in the listener's history: the envelope with its
    /// `offset` and `epoch` (format `raw` has no room for them; such listeners keep no history).
    pub fn encode_stored(&self, msg: &BrokerMessage, at: Offset<'_>) -> Frame {
        match self.format {
            Format::Json => Frame::Text(encode_json_at(msg, None, Some(at))),
            Format::Msgpack => Frame::Binary(encode_msgpack_at(msg, None, Some(at))),
            Format::Protobuf => Frame::Binary(protobuf::encode_at(msg, None, Some(at))),
            Format::Raw => self.encode(msg, None),
        }
    }

    /// The answer to a subscribe with `since`: `{"ok": "<pattern>", "recovered": <bool>}`.
    pub fn encode_recovered(&self, pattern: &str, recovered: bool) -> Frame {
        match self.format {
            Format::Msgpack => {
                let mut out = Vec::with_capacity(24 + pattern.len());
                let _ = rmp::encode::write_map_len(&mut out, 2);
                msgpack_field(&mut out, "ok", pattern);
                let _ = rmp::encode::write_str(&mut out, "recovered");
                let _ = rmp::encode::write_bool(&mut out, recovered);
                Frame::Binary(Bytes::from(out))
            }
            Format::Protobuf => protobuf::encode_recovered(pattern, recovered),
            Format::Json | Format::Raw => Frame::Text(Bytes::from(
                serde_json::json!({ "ok": pattern, "recovered": recovered }).to_string(),
            )),
        }
    }

    /// The acknowledgement of an incoming envelope with this `id`, in the session's format.
    pub fn encode_ack(&self, id: &str) -> Frame {
        match self.format {
            Format::Msgpack => encode_msgpack_ack(id),
            Format::Protobuf => protobuf::encode_control("ack", id),
            Format::Json | Format::Raw => encode_ack(id),
        }
    }

    /// A listener's answer to a client's subscribe or unsubscribe, `{<key>: <value>}` (`ok` or
    /// `error`), in the session's format: a MessagePack map for `msgpack`, an `Envelope` with that
    /// field for `protobuf`, JSON text otherwise.
    pub fn encode_answer(&self, key: &str, value: &str) -> Frame {
        match self.format {
            Format::Msgpack => {
                let mut out = Vec::with_capacity(8 + key.len() + value.len());
                let _ = rmp::encode::write_map_len(&mut out, 1);
                msgpack_field(&mut out, key, value);
                Frame::Binary(Bytes::from(out))
            }
            Format::Protobuf => protobuf::encode_control(key, value),
            Format::Json | Format::Raw => {
                Frame::Text(Bytes::from(serde_json::json!({ key: value }).to_string()))
            }
        }
    }

    /// The message an incoming data frame carries (text and binary frames alike).
    pub fn decode(&self, payload: Bytes) -> Result<Incoming, DecodeError> {
        match self.format {
            Format::Json => decode_json(&payload),
            Format::Msgpack => decode_msgpack(&payload),
            Format::Protobuf => protobuf::decode(payload),
            Format::Raw => Ok(Incoming::Message {
                msg: BrokerMessage {
                    subject: self.raw_subject.clone(),
                    body: payload,
                    reply_to: None,
                },
                id: None,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn msg(subject: &str, body: &[u8], reply_to: Option<&str>) -> BrokerMessage {
        BrokerMessage {
            subject: subject.into(),
            body: Bytes::copy_from_slice(body),
            reply_to: reply_to.map(Into::into),
        }
    }

    fn message(incoming: Incoming) -> BrokerMessage {
        match incoming {
            Incoming::Message { msg, .. } => msg,
            other => panic!("{other:?}, not a message"),
        }
    }

    fn same(a: &BrokerMessage, b: &BrokerMessage) -> bool {
        a.subject == b.subject && a.body == b.body && a.reply_to == b.reply_to
    }

    #[test]
    fn encodes_exactly_the_contract_envelope() {
        let json = encode_json(&msg("orders.created", b"hello", Some("_INBOX.3vX9")), None);
        assert_eq!(
            &json[..],
            br#"{"subject":"orders.created","body":"aGVsbG8=","reply_to":"_INBOX.3vX9"}"#
        );
        let json = encode_json(&msg("a", b"", None), None);
        assert_eq!(&json[..], br#"{"subject":"a","body":""}"#);
    }

    #[test]
    fn decodes_with_unknown_fields_and_null_reply_to() {
        let m = message(
            decode_json(br#"{"id":7,"subject":"s","body":"AAE=","reply_to":null,"x":[1]}"#)
                .unwrap(),
        );
        assert!(same(&m, &msg("s", &[0, 1], None)));
        let m = message(decode_json(br#"{"subject":"s"}"#).unwrap());
        assert!(m.body.is_empty());
        // JSON may escape the base64 alphabet's '/'.
        let m = message(decode_json(br#"{"subject":"s","body":"\/w=="}"#).unwrap());
        assert_eq!(&m.body[..], &[0xff]);
    }

    #[test]
    fn rejects_what_is_not_an_envelope_and_says_why() {
        let cases: &[(&[u8], &str)] = &[
            (b"hello", "frame is not JSON"),
            (b"{\"subject\":", "frame is not JSON"),
            (br#"{"body":"AA=="}"#, "missing field `subject`"),
            (br#"{"subject":5,"body":""}"#, "not a message envelope"),
            (br#"{"subject":"s","body":7}"#, "not a message envelope"),
            (br#"[1,2]"#, "not a message envelope"),
            (
                br#"{"subject":"s","body":"%%%"}"#,
                "`body` is not standard base64",
            ),
            (
                br#"{"subject":"s","body":"AA"}"#,
                "`body` is not standard base64: length 2 is not a multiple of 4",
            ),
            (
                br#"{"subject":"s","body":"AB%D"}"#,
                "`body` is not standard base64: invalid character \"%\" at offset 2",
            ),
            (
                br#"{"subject":"s","body":"AB=="}"#,
                "`body` is not standard base64: bad padding or trailing bits",
            ),
        ];
        for (frame, expected) in cases {
            let err = decode_json(frame).unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{:?}: {err}",
                String::from_utf8_lossy(frame)
            );
        }
    }

    #[test]
    fn ids_and_acks() {
        let json = encode_json(&msg("s", b"", None), Some("m-1"));
        assert_eq!(&json[..], br#"{"subject":"s","body":"","id":"m-1"}"#);
        match decode_json(br#"{"subject":"s","body":"","id":"m-1"}"#).unwrap() {
            Incoming::Message { id, .. } => assert_eq!(id.as_deref(), Some("m-1")),
            other => panic!("{other:?}"),
        }
        match decode_json(br#"{"ack":"m-1"}"#).unwrap() {
            Incoming::Ack(id) => assert_eq!(id, "m-1"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            encode_ack("m-1"),
            Frame::Text(Bytes::from_static(br#"{"ack":"m-1"}"#))
        );
        let err = decode_json(br#"{"ack":5}"#).unwrap_err().to_string();
        assert!(err.contains("missing field `subject`"), "{err}");
    }

    #[test]
    fn raw_format_passes_bytes_through() {
        let codec = Codec::new(Format::Raw, "feed");
        assert_eq!(
            codec.encode(&msg("ignored", b"text", None), None),
            Frame::Text(Bytes::from_static(b"text"))
        );
        assert_eq!(
            codec.encode(&msg("x", &[0xff, 0], None), None),
            Frame::Binary(Bytes::from_static(&[0xff, 0]))
        );
        let m = message(codec.decode(Bytes::from_static(&[1, 2, 3])).unwrap());
        assert!(same(&m, &msg("feed", &[1, 2, 3], None)));
    }

    #[test]
    fn strings_that_need_escaping_are_escaped() {
        let subject = "q\"uote\\back\u{1}ctl\nnl\u{7f}ü日";
        let original = msg(subject, &[0, 255, 10], Some("r\"\t"));
        let json = encode_json(&original, Some("id\"\u{0}"));
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"subject": subject, "body": "AP8K", "reply_to": "r\"\t", "id": "id\"\u{0}"})
        );
        assert!(json.starts_with(br#"{"subject":"q\"uote\\back\u0001ctl\nnl"#));
    }

    proptest! {
        #[test]
        fn json_round_trip_is_byte_exact(
            subject in "\\PC{1,40}",
            body in proptest::collection::vec(any::<u8>(), 0..600),
            reply_to in proptest::option::of("\\PC{0,40}"),
        ) {
            let original = msg(&subject, &body, reply_to.as_deref());
            let codec = Codec::new(Format::Json, "unused");
            let frame = codec.encode(&original, None);
            prop_assert!(matches!(frame, Frame::Text(_)));
            let back = message(codec.decode(frame.payload().clone()).unwrap());
            prop_assert!(same(&original, &back));
        }

        #[test]
        fn raw_round_trip_is_byte_exact(body in proptest::collection::vec(any::<u8>(), 0..600)) {
            let codec = Codec::new(Format::Raw, "s");
            let frame = codec.encode(&msg("s", &body, None), None);
            prop_assert_eq!(&frame.payload()[..], &body[..]);
            prop_assert_eq!(&message(codec.decode(frame.payload().clone()).unwrap()).body[..], &body[..]);
        }
    }

    fn mp(value: rmpv::Value) -> Bytes {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, &value).unwrap();
        Bytes::from(out)
    }

    fn map(pairs: &[(&str, rmpv::Value)]) -> rmpv::Value {
        rmpv::Value::Map(
            pairs
                .iter()
                .map(|(k, v)| (rmpv::Value::from(*k), v.clone()))
                .collect(),
        )
    }

    #[test]
    fn stored_broadcasts_carry_offset_and_epoch_and_subscribes_carry_since() {
        let m = msg("news.a", b"hi", None);
        let at = Offset {
            offset: 7,
            epoch: "18c3",
        };
        let json = Codec::new(Format::Json, "");
        assert_eq!(
            json.encode_stored(&m, at).payload(),
            &Bytes::from_static(br#"{"subject":"news.a","body":"aGk=","offset":7,"epoch":"18c3"}"#)
        );
        assert_eq!(
            json.encode_recovered("news.>", false).payload(),
            &Bytes::from_static(br#"{"ok":"news.>","recovered":false}"#)
        );
        let since = Some(Since {
            offset: 3,
            epoch: "x".into(),
        });
        let decoded = json.decode(Bytes::from_static(
            br#"{"subscribe":"news.*","since":{"offset":3,"epoch":"x"}}"#,
        ));
        assert!(
            matches!(&decoded, Ok(Incoming::Subscribe { pattern, since: s }) if pattern == "news.*" && *s == since),
            "{decoded:?}"
        );
        for bad in [
            &br#"{"unsubscribe":"news.*","since":{"offset":3,"epoch":"x"}}"#[..],
            br#"{"subscribe":"news.*","since":{"offset":-1,"epoch":"x"}}"#,
            br#"{"subscribe":"news.*","since":{"epoch":"x"}}"#,
            br#"{"subscribe":"news.*","since":"3"}"#,
        ] {
            assert!(
                matches!(
                    json.decode(Bytes::copy_from_slice(bad)),
                    Err(DecodeError::NotEnvelope(_))
                ),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }

        let msgpack = Codec::new(Format::Msgpack, "");
        let stored = msgpack_map_of(msgpack.encode_stored(&m, at).payload());
        assert_eq!(stored["offset"], rmpv::Value::from(7u64));
        assert_eq!(stored["epoch"], rmpv::Value::from("18c3"));
        assert_eq!(stored["body"], rmpv::Value::Binary(b"hi".to_vec()));
        let subscribe = mp(map(&[
            ("subscribe", "news.*".into()),
            (
                "since",
                map(&[("offset", 3u64.into()), ("epoch", "x".into())]),
            ),
        ]));
        assert!(matches!(
            msgpack.decode(subscribe),
            Ok(Incoming::Subscribe { since: s, .. }) if s == since
        ));
        let recovered = msgpack_map_of(msgpack.encode_recovered("news.>", true).payload());
        assert_eq!(recovered["recovered"], rmpv::Value::from(true));

        let proto = Codec::new(Format::Protobuf, "");
        let stored: protobuf::Envelope =
            prost::Message::decode(proto.encode_stored(&m, at).payload().clone()).unwrap();
        assert_eq!(
            (stored.offset, stored.epoch.as_deref()),
            (Some(7), Some("18c3"))
        );
        let subscribe = protobuf::Envelope {
            subscribe: Some("news.*".into()),
            since: Some(protobuf::generated::Since {
                offset: 3,
                epoch: "x".into(),
            }),
            ..Default::default()
        };
        let decoded = proto.decode(Bytes::from(prost::Message::encode_to_vec(&subscribe)));
        assert!(matches!(decoded, Ok(Incoming::Subscribe { since: s, .. }) if s == since));
    }

    fn msgpack_map_of(payload: &Bytes) -> std::collections::BTreeMap<String, rmpv::Value> {
        let value = rmpv::decode::read_value(&mut &payload[..]).unwrap();
        value
            .as_map()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.as_str().unwrap().to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn msgpack_encodes_exactly_the_contract_map() {
        let codec = Codec::new(Format::Msgpack, "unused");
        let frame = codec.encode(
            &msg("orders.created", b"\x00\xffhi", Some("_INBOX.1")),
            None,
        );
        let Frame::Binary(bytes) = frame else {
            panic!("a binary frame");
        };
        let value = rmpv::decode::read_value(&mut &bytes[..]).unwrap();
        assert_eq!(
            value,
            map(&[
                ("subject", "orders.created".into()),
                ("body", rmpv::Value::Binary(b"\x00\xffhi".to_vec())),
                ("reply_to", "_INBOX.1".into()),
            ])
        );
        let bytes = encode_msgpack(&msg("a", b"", None), Some("m-1"));
        let value = rmpv::decode::read_value(&mut &bytes[..]).unwrap();
        assert_eq!(
            value,
            map(&[
                ("subject", "a".into()),
                ("body", rmpv::Value::Binary(vec![])),
                ("id", "m-1".into()),
            ])
        );
        let Frame::Binary(ack) = codec.encode_ack("m-1") else {
            panic!("a binary ack");
        };
        assert_eq!(
            rmpv::decode::read_value(&mut &ack[..]).unwrap(),
            map(&[("ack", "m-1".into())])
        );
    }

    #[test]
    fn msgpack_decodes_str_bodies_unknown_keys_and_odd_ids() {
        let frame = mp(map(&[
            (
                "x",
                rmpv::Value::Array(vec![1.into(), map(&[("y", 2.into())])]),
            ),
            ("subject", "s".into()),
            ("body", "text body".into()),
            ("reply_to", rmpv::Value::Nil),
            ("id", 7.into()),
        ]));
        match decode_msgpack(&frame).unwrap() {
            Incoming::Message { msg: m, id } => {
                assert!(same(&m, &msg("s", b"text body", None)));
                assert_eq!(id, None);
            }
            other => panic!("{other:?}"),
        }
        let m = message(decode_msgpack(&mp(map(&[("subject", "s".into())]))).unwrap());
        assert!(m.body.is_empty());
        match decode_msgpack(&mp(map(&[("ack", "m-9".into())]))).unwrap() {
            Incoming::Ack(id) => assert_eq!(id, "m-9"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn msgpack_rejects_what_is_not_an_envelope_and_says_why() {
        let cases: Vec<(Bytes, &str)> = vec![
            (Bytes::from_static(b""), "frame is not MessagePack"),
            (Bytes::from_static(&[0xc1]), "frame is not MessagePack"),
            (
                mp(map(&[("body", rmpv::Value::Binary(vec![1]))])),
                "missing field `subject`",
            ),
            (mp(map(&[("subject", 5.into())])), "not a message envelope"),
            (
                mp(map(&[("subject", "s".into()), ("body", 5.into())])),
                "not a message envelope",
            ),
            (
                mp(rmpv::Value::Array(vec![
                    "s".into(),
                    rmpv::Value::Binary(vec![]),
                ])),
                "not a message envelope",
            ),
            (
                Bytes::from_static(br#"{"subject":"s","body":""}"#),
                "not a message envelope",
            ),
            // A map cut short.
            (
                mp(map(&[("subject", "s".into())])).slice(..4),
                "frame is not MessagePack",
            ),
        ];
        for (frame, expected) in cases {
            let err = decode_msgpack(&frame).unwrap_err().to_string();
            assert!(err.contains(expected), "{frame:?}: {err}");
        }
    }

    proptest! {
        #[test]
        fn binary_round_trips_are_byte_exact(
            format in prop_oneof![Just(Format::Msgpack), Just(Format::Protobuf)],
            subject in "\\PC{1,40}",
            body in proptest::collection::vec(any::<u8>(), 0..600),
            reply_to in proptest::option::of("\\PC{0,40}"),
            id in proptest::option::of("[a-z0-9-]{1,20}"),
        ) {
            let original = msg(&subject, &body, reply_to.as_deref());
            let codec = Codec::new(format, "unused");
            let frame = codec.encode(&original, id.as_deref());
            prop_assert!(matches!(frame, Frame::Binary(_)));
            match codec.decode(frame.payload().clone()).unwrap() {
                Incoming::Message { msg: back, id: back_id } => {
                    prop_assert!(same(&original, &back));
                    prop_assert_eq!(back_id, id);
                }
                other => prop_assert!(false, "{:?}", other),
            }
        }
    }

    #[test]
    fn protobuf_control_frames_and_refusals() {
        let codec = Codec::new(Format::Protobuf, "unused");
        let ack = codec.encode_ack("srv-1");
        match codec.decode(ack.payload().clone()).unwrap() {
            Incoming::Ack(id) => assert_eq!(id, "srv-1"),
            other => panic!("{other:?}"),
        }
        let subscribe = protobuf::Envelope {
            subscribe: Some("feed.*".into()),
            ..Default::default()
        };
        let bytes = Bytes::from(prost::Message::encode_to_vec(&subscribe));
        assert!(
            matches!(codec.decode(bytes), Ok(Incoming::Subscribe { pattern, since: None }) if pattern == "feed.*")
        );
        let empty = codec.decode(Bytes::new()).unwrap_err();
        assert_eq!(
            empty.to_string(),
            "frame is not a message envelope: missing field `subject`"
        );
        let garbage = codec.decode(Bytes::from_static(&[0x0a, 0xff])).unwrap_err();
        assert!(
            garbage
                .to_string()
                .starts_with("frame is not a protobuf Envelope: "),
            "{garbage}"
        );
    }

    /// Random bytes, and a valid frame truncated or with bytes overwritten.
    fn mangled(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
        let valid_len = valid.len();
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..300),
            (0..valid_len).prop_map({
                let valid = valid.clone();
                move |n| valid[..n].to_vec()
            }),
            proptest::collection::vec((0..valid_len, any::<u8>()), 1..8).prop_map(move |edits| {
                let mut v = valid.clone();
                for (i, b) in edits {
                    v[i] = b;
                }
                v
            }),
        ]
    }

    /// Hostile input: whatever arrives, the decoder answers Ok or a reason, and never panics.
    fn hostile() -> impl Strategy<Value = Vec<u8>> {
        let valid = encode_json(
            &msg("orders.created", b"some body bytes", Some("_INBOX.x")),
            Some("id-1"),
        )
        .to_vec();
        prop_oneof![
            mangled(valid),
            // Deeply nested JSON, in and around the fields.
            (1usize..20_000, 0usize..3).prop_map(|(depth, place)| {
                let nest = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
                match place {
                    0 => nest,
                    1 => format!(r#"{{"subject":{nest},"body":""}}"#),
                    _ => format!(r#"{{"subject":"s","body":"","x":{nest}}}"#),
                }
                .into_bytes()
            }),
            // Huge and odd numbers where strings belong, and as ids and acks.
            prop_oneof![
                Just("1e999999999".to_string()),
                Just("-0".to_string()),
                Just("123456789012345678901234567890123456789".to_string()),
                Just("NaN".to_string()),
                any::<f64>().prop_map(|f| f.to_string()),
            ]
            .prop_flat_map(|n| prop_oneof![
                Just(format!(r#"{{"subject":{n},"body":""}}"#)),
                Just(format!(r#"{{"subject":"s","body":"","id":{n}}}"#)),
                Just(format!(r#"{{"ack":{n}}}"#)),
                Just(n),
            ])
            .prop_map(String::into_bytes),
        ]
    }

    /// Hostile MessagePack: random bytes, a valid envelope cut or overwritten, deep nesting, and
    /// lengths that claim far more than the frame holds.
    fn hostile_protobuf() -> impl Strategy<Value = Vec<u8>> {
        let valid = protobuf::encode(
            &msg("orders.created", b"some body bytes", Some("_INBOX.x")),
            Some("id-1"),
        )
        .to_vec();
        prop_oneof![
            mangled(valid),
            // Unknown groups (field 15, start group) nested deeper than any stack allows.
            (1usize..100_000).prop_map(|depth| vec![(15 << 3) | 3; depth]),
            // A body claiming up to 2^63 bytes.
            any::<u64>().prop_map(|len| {
                let mut v = vec![0x12];
                prost::encoding::encode_varint(len, &mut v);
                v
            }),
        ]
    }

    fn hostile_msgpack() -> impl Strategy<Value = Vec<u8>> {
        let valid = encode_msgpack(
            &msg("orders.created", b"some body bytes", Some("_INBOX.x")),
            Some("id-1"),
        )
        .to_vec();
        prop_oneof![
            mangled(valid),
            // Nested arrays (fixarray of one) as the subject, deeper than any stack allows.
            (1usize..100_000).prop_map(|depth| {
                let mut v = vec![0x81, 0xa7];
                v.extend_from_slice(b"subject");
                v.extend(std::iter::repeat_n(0x91u8, depth));
                v.push(0xc0);
                v
            }),
            // A map, str, bin or array header claiming up to 4 GiB.
            (
                prop_oneof![Just(0xdfu8), Just(0xdb), Just(0xc6), Just(0xdd)],
                any::<u32>()
            )
                .prop_map(|(marker, len)| {
                    let mut v = vec![0x81, 0xa4, b'b', b'o', b'd', b'y', marker];
                    v.extend_from_slice(&len.to_be_bytes());
                    v
                }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(100_000))]

        #[test]
        fn hostile_frames_never_panic_the_decoder(input in hostile()) {
            let codec = Codec::new(Format::Json, "unused");
            let _ = codec.decode(Bytes::from(input));
        }

        #[test]
        fn hostile_frames_never_panic_the_msgpack_decoder(input in hostile_msgpack()) {
            let codec = Codec::new(Format::Msgpack, "unused");
            let _ = codec.decode(Bytes::from(input));
        }

        #[test]
        fn hostile_frames_never_panic_the_protobuf_decoder(input in hostile_protobuf()) {
            let codec = Codec::new(Format::Protobuf, "unused");
            let _ = codec.decode(Bytes::from(input));
        }
    }
}
