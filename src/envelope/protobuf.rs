//! Format `protobuf`: the envelope as the Protocol Buffers message `Envelope` of
//! proto/envelope.proto (the file shipped for clients), one per binary frame. The Rust code is
//! prost's, generated from that file at build time (build.rs), so the two cannot drift apart.

use bytes::Bytes;
use prost::Message as _;

use super::control::{control, Control};
use super::{DecodeError, Frame, Incoming, Offset, Since};
use crate::bindings::wasmcloud::messaging::types::BrokerMessage;

#[allow(clippy::all, clippy::pedantic)]
pub mod generated {
    include!(concat!(
        env!("OUT_DIR"),
        "/wasmcloud.messaging.websocket.v1.rs"
    ));
}

pub use generated::Envelope;

/// `msg` as an `Envelope` (with `id` when acknowledged delivery is on).
pub fn encode(msg: &BrokerMessage, id: Option<&str>) -> Bytes {
    encode_at(msg, id, None)
}

/// [`encode`], with `offset` and `epoch` when the message is a stored broadcast.
pub fn encode_at(msg: &BrokerMessage, id: Option<&str>, at: Option<Offset<'_>>) -> Bytes {
    let envelope = Envelope {
        subject: msg.subject.clone(),
        body: msg.body.clone(),
        reply_to: msg.reply_to.clone(),
        id: id.map(str::to_string),
        offset: at.map(|a| a.offset),
        epoch: at.map(|a| a.epoch.to_string()),
        ..Envelope::default()
    };
    Bytes::from(envelope.encode_to_vec())
}

/// The answer to a subscribe with `since`: `ok` (the pattern) and `recovered`.
pub fn encode_recovered(pattern: &str, recovered: bool) -> Frame {
    let envelope = Envelope {
        ok: Some(pattern.to_string()),
        recovered: Some(recovered),
        ..Envelope::default()
    };
    Frame::Binary(Bytes::from(envelope.encode_to_vec()))
}

/// An `Envelope` with only this control field set: an ack, or a listener's `ok` / `error`
/// answer to a subscribe.
pub fn encode_control(key: &str, value: &str) -> Frame {
    let value = Some(value.to_string());
    let mut envelope = Envelope::default();
    match key {
        "ack" => envelope.ack = value,
        "ok" => envelope.ok = value,
        _ => envelope.error = value,
    }
    Frame::Binary(Bytes::from(envelope.encode_to_vec()))
}

/// Decodes a frame holding an `Envelope`. A missing (empty) `subject` makes it a control frame
/// (`ack`, `subscribe` or `unsubscribe`); unknown fields are skipped, as protobuf does. The body
/// is a slice of `payload`, not a copy.
pub fn decode(payload: Bytes) -> Result<Incoming, DecodeError> {
    let envelope =
        Envelope::decode(payload).map_err(|e| DecodeError::NotProtobuf(e.to_string()))?;
    if envelope.subject.is_empty() {
        let since = envelope.since.map(|s| Since {
            offset: s.offset,
            epoch: s.epoch,
        });
        return control(Control {
            ack: envelope.ack,
            subscribe: envelope.subscribe,
            unsubscribe: envelope.unsubscribe,
            since,
            presence: envelope.presence,
        });
    }
    Ok(Incoming::Message {
        msg: BrokerMessage {
            subject: envelope.subject,
            body: envelope.body,
            reply_to: envelope.reply_to,
        },
        id: envelope.id,
    })
}
