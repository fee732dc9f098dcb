//! What a frame without `subject` may be: an ack, a subscription change or a presence question.

use super::{DecodeError, Incoming, Since};

/// The fields a frame without `subject` may have (string values only).
#[derive(Default)]
pub(super) struct Control {
    pub ack: Option<String>,
    pub subscribe: Option<String>,
    pub unsubscribe: Option<String>,
    pub since: Option<Since>,
    pub presence: Option<String>,
}

/// What a frame without `subject` may be: an ack, a subscription change or a presence
/// question, when its value is a string; `since` goes with a subscribe only.
pub(super) fn control(c: Control) -> Result<Incoming, DecodeError> {
    if c.since.is_some() && c.subscribe.is_none() {
        return Err(DecodeError::NotEnvelope(
            "`since` without `subscribe` (it says where a subscription's recovery starts)".into(),
        ));
    }
    match (c.ack, c.subscribe, c.unsubscribe, c.presence) {
        (Some(id), None, None, None) => Ok(Incoming::Ack(id)),
        (None, Some(pattern), None, None) => Ok(Incoming::Subscribe {
            pattern,
            since: c.since,
        }),
        (None, None, Some(pattern), None) => Ok(Incoming::Unsubscribe(pattern)),
        (None, None, None, Some(subject)) => Ok(Incoming::Presence(subject)),
        (None, None, None, None) => Err(DecodeError::NotEnvelope("missing field `subject`".into())),
        _ => Err(DecodeError::NotEnvelope(
            "more than one of `ack`, `subscribe`, `unsubscribe` and `presence`".into(),
        )),
    }
}
