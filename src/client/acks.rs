//! Acknowledged delivery (`ack = true`), the outgoing half: envelopes waiting for the server's
//! `{"ack": "<id>"}`.
//!
//! A `publish` registers its frame under a fresh id before queueing it and waits for the ack until
//! its deadline. The socket task marks a frame written as it hands it to the socket (before the
//! write can break, so a connection lost mid-write never forgets it); after a reconnect it sends
//! every written-but-unacknowledged frame again before anything else (at-least-once). A
//! `publish` that gives up drops its [`AckTicket`], which forgets the frame, so it is never sent
//! again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::envelope::Frame;

struct Entry {
    frame: Frame,
    written: bool,
    acked: Option<oneshot::Sender<()>>,
}

/// The outgoing envelopes of one session that wait for their acks.
#[derive(Clone, Default)]
pub struct Acks {
    waiting: Arc<Mutex<HashMap<String, Entry>>>,
}

/// A registered envelope; dropping it forgets the envelope.
pub struct AckTicket {
    pub id: String,
    pub acked: oneshot::Receiver<()>,
    acks: Acks,
}

impl Drop for AckTicket {
    fn drop(&mut self) {
        self.acks.lock().remove(&self.id);
    }
}

impl Acks {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh id: the session id keeps it unique across sessions, the token across restarts.
    pub fn new_id(session_id: &str) -> String {
        format!("{session_id}.{}", crate::identity::token(16))
    }

    pub fn register(&self, id: String, frame: Frame) -> AckTicket {
        let (tx, acked) = oneshot::channel();
        self.lock().insert(
            id.clone(),
            Entry {
                frame,
                written: false,
                acked: Some(tx),
            },
        );
        AckTicket {
            id,
            acked,
            acks: self.clone(),
        }
    }

    /// The frame with this id was handed to a connection.
    pub fn written(&self, id: &str) {
        if let Some(entry) = self.lock().get_mut(id) {
            entry.written = true;
        }
    }

    /// Whether the frame with this id was handed to a connection (and so goes out again after a
    /// reconnect while its publish waits).
    pub fn is_written(&self, id: &str) -> bool {
        self.lock().get(id).is_some_and(|e| e.written)
    }

    /// The server acknowledged `id`; false when nothing waits for it (a late or unknown ack).
    pub fn acked(&self, id: &str) -> bool {
        let mut waiting = self.lock();
        match waiting.get_mut(id).and_then(|e| e.acked.take()) {
            Some(tx) => {
                waiting.remove(id);
                tx.send(()).is_ok()
            }
            None => false,
        }
    }

    /// The frames written on a connection that is gone and not yet acknowledged, to send again.
    pub fn unacknowledged(&self) -> Vec<(String, Frame)> {
        self.lock()
            .iter()
            .filter(|(_, e)| e.written)
            .map(|(id, e)| (id.clone(), e.frame.clone()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn written_unacked_frames_are_resent_until_acked_or_given_up() {
        let acks = Acks::default();
        let frame = Frame::Text(Bytes::from_static(b"{}"));
        let mut a = acks.register("s.a".into(), frame.clone());
        let b = acks.register("s.b".into(), frame.clone());
        assert!(acks.unacknowledged().is_empty(), "nothing written yet");
        acks.written("s.a");
        acks.written("s.b");
        assert_eq!(acks.unacknowledged().len(), 2);
        assert!(acks.acked("s.a"));
        assert!(a.acked.try_recv().is_ok());
        assert!(!acks.acked("s.a"), "a second ack is unmatched");
        drop(b); // the publish gave up: never sent again
        assert!(acks.unacknowledged().is_empty());
        assert!(acks.is_empty());
        drop(a);
    }

    #[test]
    fn ids_are_unique_and_carry_the_session() {
        let (a, b) = (Acks::new_id("ws_x"), Acks::new_id("ws_x"));
        assert_ne!(a, b);
        assert!(a.starts_with("ws_x."));
    }
}
