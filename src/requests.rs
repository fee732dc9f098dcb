//! Request-reply correlation: the requests of one session waiting for their replies.
//!
//! A request sends an envelope whose `reply_to` is a fresh inbox
//! `<inbox_prefix>.<session id>.<token>`, and waits for the first incoming envelope whose subject is
//! that inbox. The socket task offers every decoded message here before delivery, so a matched
//! reply never reaches the handler. Because session ids are unique, a subject that starts with
//! `<inbox_prefix>.<session id>.` but matches no waiting request is a late reply (its request timed
//! out or was cancelled): it is dropped and counted, while other subjects, including inboxes a
//! component made itself, go to the handler as usual.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::bindings::wasmcloud::messaging::types::BrokerMessage;

/// A waiting request: where its reply goes, and whether its frame was handed to a connection.
struct Waiter {
    reply: oneshot::Sender<Result<BrokerMessage, String>>,
    written: bool,
}

/// What became of an incoming message offered to [`Pending::route`].
pub enum Routed {
    /// It answered a waiting request.
    Reply,
    /// It answers a request that no longer waits (its subject).
    Late(String),
    /// Not a reply: deliver it.
    Deliver(BrokerMessage),
}

/// The waiting requests of one session, by inbox.
#[derive(Clone)]
pub struct Pending {
    /// `<inbox_prefix>.<session id>.`
    inbox_base: Arc<str>,
    waiting: Arc<Mutex<HashMap<String, Waiter>>>,
}

/// A registered request; dropping it (answered, timed out, or the caller gone) forgets the inbox,
/// so nothing is left behind whatever happens to the request.
pub struct Ticket {
    pub inbox: String,
    pub reply: oneshot::Receiver<Result<BrokerMessage, String>>,
    pending: Pending,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.pending.lock().remove(&self.inbox);
    }
}

impl Pending {
    pub fn new(inbox_prefix: &str, session_id: &str) -> Self {
        Pending {
            inbox_base: format!("{inbox_prefix}.{session_id}.").into(),
            waiting: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Waiter>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a request under a fresh inbox, before its frame is sent (the reply may come fast).
    pub fn register(&self) -> Ticket {
        let inbox = format!("{}{}", self.inbox_base, crate::identity::token(22));
        let (tx, reply) = oneshot::channel();
        self.lock().insert(
            inbox.clone(),
            Waiter {
                reply: tx,
                written: false,
            },
        );
        Ticket {
            inbox,
            reply,
            pending: self.clone(),
        }
    }

    /// Hands a reply to its request, recognises a late reply, or gives the message back.
    pub fn route(&self, msg: BrokerMessage) -> Routed {
        if !msg.subject.starts_with(&*self.inbox_base) {
            return Routed::Deliver(msg);
        }
        match self.lock().remove(&msg.subject) {
            // A request that gave up in the meantime drops its receiver: that is a late reply too.
            Some(waiter) => match waiter.reply.send(Ok(msg)) {
                Ok(()) => Routed::Reply,
                Err(returned) => Routed::Late(returned.map(|m| m.subject).unwrap_or_default()),
            },
            None => Routed::Late(msg.subject),
        }
    }

    /// The request's frame was handed to a connection: when that connection is lost, the reply
    /// cannot come.
    pub fn written(&self, inbox: &str) {
        if let Some(waiter) = self.lock().get_mut(inbox) {
            waiter.written = true;
        }
    }

    /// Fails the requests whose frames were handed to the connection that was lost. Requests
    /// whose frames still wait in the queue go out on the next connection and keep waiting.
    pub fn fail_written(&self, reason: &str) {
        let mut waiting = self.lock();
        let lost: Vec<String> = waiting
            .iter()
            .filter(|(_, w)| w.written)
            .map(|(inbox, _)| inbox.clone())
            .collect();
        for inbox in lost {
            if let Some(waiter) = waiting.remove(&inbox) {
                let _ = waiter.reply.send(Err(reason.to_string()));
            }
        }
    }

    /// Fails every waiting request at once (the session closed).
    pub fn fail_all(&self, reason: &str) {
        for (_, waiter) in self.lock().drain() {
            let _ = waiter.reply.send(Err(reason.to_string()));
        }
    }

    /// How many requests wait now.
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

    fn msg(subject: &str) -> BrokerMessage {
        BrokerMessage {
            subject: subject.into(),
            body: Bytes::from_static(b"x"),
            reply_to: None,
        }
    }

    #[test]
    fn replies_match_their_inbox_and_tickets_clean_up() {
        let pending = Pending::new("_INBOX", "ws_abc");
        let mut ticket = pending.register();
        assert!(ticket.inbox.starts_with("_INBOX.ws_abc."));
        assert_eq!(pending.len(), 1);
        assert!(matches!(pending.route(msg(&ticket.inbox)), Routed::Reply));
        assert_eq!(
            ticket.reply.try_recv().unwrap().unwrap().subject,
            ticket.inbox
        );
        assert!(
            matches!(pending.route(msg(&ticket.inbox)), Routed::Late(_)),
            "a second reply is late"
        );
        drop(ticket);
        assert!(pending.is_empty());

        let ticket = pending.register();
        let inbox = ticket.inbox.clone();
        drop(ticket); // timed out
        assert!(pending.is_empty(), "no leak");
        assert!(matches!(pending.route(msg(&inbox)), Routed::Late(_)));
    }

    #[test]
    fn other_subjects_are_delivered() {
        let pending = Pending::new("_INBOX", "ws_abc");
        let _ticket = pending.register();
        for subject in [
            "orders",
            "_INBOX.mine.1",
            "_INBOX.ws_abcd.1",
            "_INBOX.ws_ab.x",
        ] {
            assert!(
                matches!(pending.route(msg(subject)), Routed::Deliver(_)),
                "{subject}"
            );
        }
    }

    #[test]
    fn a_lost_connection_fails_only_the_requests_it_carried() {
        let pending = Pending::new("_INBOX", "s");
        let mut sent = pending.register();
        let mut queued = pending.register();
        pending.written(&sent.inbox);
        pending.fail_written("lost");
        assert_eq!(sent.reply.try_recv().unwrap().unwrap_err(), "lost");
        assert!(queued.reply.try_recv().is_err(), "still waiting");
        assert_eq!(pending.len(), 1);
        assert!(matches!(pending.route(msg(&queued.inbox)), Routed::Reply));
    }

    #[test]
    fn fail_all_answers_every_waiter() {
        let pending = Pending::new("_INBOX", "s");
        let mut a = pending.register();
        let mut b = pending.register();
        assert_ne!(a.inbox, b.inbox);
        pending.fail_all("connection lost");
        assert_eq!(a.reply.try_recv().unwrap().unwrap_err(), "connection lost");
        assert_eq!(b.reply.try_recv().unwrap().unwrap_err(), "connection lost");
        assert!(pending.is_empty());
    }
}
