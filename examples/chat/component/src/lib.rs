//! Chat: the component behind the provider's listener. A browser sends `{"subject": "chat.<room>",
//! "body": ...}`; the provider delivers it here (with a reply-to naming that one client, which a
//! chat does not need); the component publishes the same subject and body, and the provider fans
//! the message out to every client subscribed to `chat.<room>`, the sender included. The
//! component keeps no state: who is in which room is the provider's subscription table.
//!
//! Anything else (another subject, a malformed room, an oversized body) is refused with an error
//! the provider logs, so one browser cannot make the others receive what the page never sends.

wit_bindgen::generate!({
    world: "chat",
    path: "wit",
    generate_all,
});

use exports::wasmcloud::messaging::handler::Guest;
use wasmcloud::messaging::consumer;
use wasmcloud::messaging::types::BrokerMessage;

/// Rooms live under this subject prefix; what follows it is the room's name.
const ROOM_PREFIX: &str = "chat.";
/// A room name is 1 to this many characters of `[A-Za-z0-9_-]`: one subject token, so no
/// wildcard (`*`, `>`) or separator (`.`) can widen a publish to other rooms.
const MAX_ROOM_LEN: usize = 64;
/// The largest body relayed: a chat line with its sender's name, with room to spare; anything
/// larger is not from the page.
const MAX_BODY_BYTES: usize = 4096;

struct Chat;

impl Guest for Chat {
    fn handle_message(msg: BrokerMessage) -> Result<(), String> {
        let Some(room) = room_of(&msg.subject) else {
            return Err(format!(
                "subject {:?} is not chat.<room> (room: 1-{MAX_ROOM_LEN} characters of A-Z a-z 0-9 _ -)",
                shorten(&msg.subject)
            ));
        };
        if msg.body.len() > MAX_BODY_BYTES {
            return Err(format!(
                "message for room {room} has {} bytes, over the {MAX_BODY_BYTES}-byte limit",
                msg.body.len()
            ));
        }
        let relayed = BrokerMessage {
            subject: msg.subject,
            body: msg.body,
            reply_to: None,
        };
        consumer::publish(&relayed)
            .map_err(|e| format!("publishing to {} failed: {e}", relayed.subject))
    }
}

/// The room of a `chat.<room>` subject, or `None` when the subject is anything else.
fn room_of(subject: &str) -> Option<&str> {
    let room = subject.strip_prefix(ROOM_PREFIX)?;
    let valid = (1..=MAX_ROOM_LEN).contains(&room.len())
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    valid.then_some(room)
}

/// A subject as far as an error message needs it: a client chooses it, so its length is not ours
/// to put in the log.
fn shorten(subject: &str) -> String {
    const SHOWN: usize = 80;
    match subject.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{}...", &subject[..end]),
        None => subject.to_owned(),
    }
}

export!(Chat);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_are_one_token_of_safe_characters() {
        assert_eq!(room_of("chat.lobby"), Some("lobby"));
        assert_eq!(room_of("chat.a_B-9"), Some("a_B-9"));
        let longest = format!("chat.{}", "r".repeat(MAX_ROOM_LEN));
        assert_eq!(room_of(&longest), Some(&longest[ROOM_PREFIX.len()..]));

        let too_long = format!("chat.{}", "r".repeat(MAX_ROOM_LEN + 1));
        for subject in [
            "chat.",
            "chat",
            "lobby",
            "chat.lobby.x",
            "chat.*",
            "chat.>",
            "chat.l obby",
            "chat.lobbé",
            "Chat.lobby",
            too_long.as_str(),
        ] {
            assert_eq!(room_of(subject), None, "{subject:?}");
        }
    }

    #[test]
    fn long_subjects_are_shortened_on_a_character_boundary() {
        assert_eq!(shorten("chat.lobby"), "chat.lobby");
        let long = "é".repeat(100);
        assert_eq!(shorten(&long), format!("{}...", "é".repeat(80)));
    }
}
