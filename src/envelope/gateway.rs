//! The gateway frames of a listener, in each format: the answer to a client's
//! `{"presence": "<subject>"}`, and the `joined` / `left` frames of `presence_events`.

use bytes::Bytes;
use prost::Message as _;
use serde::Serialize;

use super::protobuf::generated;
use super::{Codec, Format, Frame};

/// A client as presence shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    pub id: String,
    /// The JWT's `sub`, if it presented one.
    pub user: Option<String>,
    /// When it connected (RFC 3339); in presence answers, not in events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connected_at: Option<String>,
}

impl Member {
    fn proto(&self) -> generated::Member {
        generated::Member {
            id: self.id.clone(),
            user: self.user.clone(),
            connected_at: self.connected_at.clone(),
        }
    }
}

/// Whether a member joined or left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Joined,
    Left,
}

impl Change {
    pub fn key(self) -> &'static str {
        match self {
            Change::Joined => "joined",
            Change::Left => "left",
        }
    }
}

impl Codec {
    /// The answer to `{"presence": "<subject>"}`: `{"presence": "<subject>", "clients": [...]}`.
    pub fn encode_presence(&self, subject: &str, clients: &[Member]) -> Frame {
        match self.format {
            Format::Protobuf => proto(generated::Envelope {
                presence: Some(subject.to_string()),
                clients: clients.iter().map(Member::proto).collect(),
                ..generated::Envelope::default()
            }),
            _ => self.map(&serde_json::json!({ "presence": subject, "clients": clients })),
        }
    }

    /// A member joined or left `pattern`: `{"subject": "<pattern>", "joined": {"id", "user"}}`.
    pub fn encode_change(&self, pattern: &str, change: Change, member: &Member) -> Frame {
        match self.format {
            Format::Protobuf => {
                let mut envelope = generated::Envelope {
                    subject: pattern.to_string(),
                    ..generated::Envelope::default()
                };
                match change {
                    Change::Joined => envelope.joined = Some(member.proto()),
                    Change::Left => envelope.left = Some(member.proto()),
                }
                proto(envelope)
            }
            _ => self.map(&serde_json::json!({ "subject": pattern, change.key(): member })),
        }
    }

    /// A map as the format writes it: MessagePack for `msgpack`, JSON text otherwise.
    fn map(&self, value: &serde_json::Value) -> Frame {
        match self.format {
            Format::Msgpack => Frame::Binary(Bytes::from(
                rmp_serde::to_vec_named(value).expect("a JSON value is valid MessagePack"),
            )),
            _ => Frame::Text(Bytes::from(value.to_string())),
        }
    }
}

fn proto(envelope: generated::Envelope) -> Frame {
    Frame::Binary(Bytes::from(envelope.encode_to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Incoming;

    fn alice() -> Member {
        Member {
            id: "c1".into(),
            user: Some("alice".into()),
            connected_at: None,
        }
    }

    #[test]
    fn presence_frames_in_every_format() {
        let json = Codec::new(Format::Json, "");
        assert_eq!(
            json.encode_change("room.*", Change::Joined, &alice())
                .payload(),
            &Bytes::from_static(br#"{"joined":{"id":"c1","user":"alice"},"subject":"room.*"}"#)
        );
        let listed = Member {
            connected_at: Some("2026-12-07T00:00:00Z".into()),
            user: None,
            ..alice()
        };
        assert_eq!(
            json.encode_presence("room.a", std::slice::from_ref(&listed)).payload(),
            &Bytes::from_static(
                br#"{"clients":[{"connected_at":"2026-12-07T00:00:00Z","id":"c1","user":null}],"presence":"room.a"}"#
            )
        );
        assert!(matches!(
            json.decode(Bytes::from_static(br#"{"presence":"room.a"}"#)),
            Ok(Incoming::Presence(s)) if s == "room.a"
        ));
        assert!(json
            .decode(Bytes::from_static(
                br#"{"presence":"room.a","subscribe":"x"}"#
            ))
            .is_err());

        let msgpack = Codec::new(Format::Msgpack, "");
        let value: serde_json::Value = rmp_serde::from_slice(
            msgpack
                .encode_change("room.*", Change::Left, &alice())
                .payload(),
        )
        .unwrap();
        assert_eq!(value["left"]["user"], "alice");
        assert_eq!(value["subject"], "room.*");
        let question = rmp_serde::to_vec_named(&serde_json::json!({"presence": "room.a"})).unwrap();
        assert!(matches!(
            msgpack.decode(Bytes::from(question)),
            Ok(Incoming::Presence(s)) if s == "room.a"
        ));

        let protobuf = Codec::new(Format::Protobuf, "");
        let answer = generated::Envelope::decode(
            protobuf
                .encode_presence("room.a", &[listed])
                .payload()
                .clone(),
        )
        .unwrap();
        assert_eq!(answer.presence.as_deref(), Some("room.a"));
        assert_eq!(answer.clients[0].id, "c1");
        assert_eq!(answer.clients[0].user, None);
        let joined = generated::Envelope::decode(
            protobuf
                .encode_change("room.*", Change::Joined, &alice())
                .payload()
                .clone(),
        )
        .unwrap();
        assert_eq!(joined.subject, "room.*");
        assert_eq!(joined.joined.unwrap().user.as_deref(), Some("alice"));
        let question = generated::Envelope {
            presence: Some("room.a".into()),
            ..generated::Envelope::default()
        };
        assert!(matches!(
            protobuf.decode(Bytes::from(question.encode_to_vec())),
            Ok(Incoming::Presence(s)) if s == "room.a"
        ));
    }
}
