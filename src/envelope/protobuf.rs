//! Format `protobuf`: the envelope as the Protocol Buffers message `Envelope` of
//! proto/envelope.proto (the file shipped for clients), one per binary frame. The Rust code is
//! prost's, generated from that file at build time (build.rs), so the two cannot drift apart.

use bytes::Bytes;
use prost::Message as _;

use super::{control, DecodeError, Frame, Incoming};
use crate::bindings::wasmcloud::messaging::types::BrokerMessage;

#[allow(clippy::all, clippy::pedantic)]
mod generated {
    include!(concat!(
        env!("OUT_DIR"),
        "/wasmcloud.messaging.websocket.v1.rs"
    ));
}

pub use generated::Envelope;

/// `msg` as an `Envelope` (with `id` when acknowledged delivery is on).
pub fn encode(msg: &BrokerMessage, id: Option<&str>) -> Bytes {
    let envelope = Envelope {
        subject: msg.subject.clone(),
        body: msg.body.clone(),
        reply_to: msg.reply_to.clone(),
        id: id.map(str::to_string),
        ..Envelope::default()
    };
    Bytes::from(envelope.encode_to_vec())
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
        return control(envelope.ack, envelope.subscribe, envelope.unsubscribe);
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
