//! A listener as a real-time gateway, besides history ([`super::history`]): presence
//! (`presence`: who is subscribed to a subject, asked by a client with `{"presence"}`),
//! presence events (`presence_events`: `joined` / `left` frames to the subscribers of a
//! pattern), and client publish (`client_publish`: a client's envelope fanned out to the
//! subscribers too).
//!
//! What spans the provider's replicas is not this module's business: a [`Relay`] (given by the
//! provider) takes a client's broadcast the way a component's `publish` goes (to every replica,
//! through the history when there is one), lists the subscribers of every replica, and tells the
//! other replicas of a join or leave ([`Listener::member_changed`] is where theirs arrive).

use std::sync::atomic::Ordering;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::bindings::wasmcloud::messaging::types::BrokerMessage;
use crate::envelope::gateway::{Change, Member};
use crate::server::client::Client;
use crate::server::subscriptions::Pattern;
use crate::server::{read, Listener, Shared};

/// What the provider does for a listener across its replicas.
pub trait Relay: Send + Sync + 'static {
    /// A client's envelope (`client_publish`) to the subscribers of every replica, as a
    /// component's `publish` of it would go.
    fn broadcast(&self, msg: BrokerMessage) -> BoxFuture<'static, Result<(), String>>;
    /// The clients of every replica subscribed to a pattern that matches `subject`, oldest
    /// first.
    fn presence(&self, subject: String) -> BoxFuture<'static, Result<Vec<Member>, String>>;
    /// Tells the other replicas that a client joined or left a pattern.
    fn changed(&self, change: MemberChange) -> BoxFuture<'static, ()>;
}

/// A join or leave, as replicas tell each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberChange {
    pub pattern: String,
    pub joined: bool,
    pub id: String,
    pub user: Option<String>,
}

impl Shared {
    /// A client joined or left `pattern`: with `presence_events`, the pattern's other
    /// subscribers here are told, and the other replicas' through the relay.
    pub(super) fn member_changed(&self, client: &Client, pattern: &Pattern, joined: bool) {
        if !self.listen().presence_events || self.stop.is_cancelled() {
            return;
        }
        let change = MemberChange {
            pattern: pattern.as_str().to_string(),
            joined,
            id: client.id.to_string(),
            user: client.user.clone(),
        };
        self.tell(&change);
        self.tasks.spawn(self.relay.changed(change));
    }

    /// Sends a join or leave to this listener's subscribers of its pattern (not to the client
    /// it is about).
    fn tell(&self, change: &MemberChange) {
        let member = Member {
            id: change.id.clone(),
            user: change.user.clone(),
            connected_at: None,
        };
        let kind = if change.joined {
            Change::Joined
        } else {
            Change::Left
        };
        let mut frame = None;
        let mut sent = 0;
        for client in read(&self.clients).values() {
            if *client.id == *change.id || client.closed.load(Ordering::Relaxed) {
                continue;
            }
            if !crate::server::client::lock(&client.subscriptions)
                .iter()
                .any(|p| p.as_str() == change.pattern)
            {
                continue;
            }
            let frame = frame
                .get_or_insert_with(|| self.codec.encode_change(&change.pattern, kind, &member));
            if client.send(frame.clone(), self).is_ok() {
                sent += 1;
            }
        }
        crate::stats::add(&self.counters.presence_events, sent);
    }
}

impl Listener {
    /// A join or leave another replica told of: to this listener's subscribers of the pattern.
    pub fn member_changed(&self, change: &MemberChange) {
        if self.shared.listen().presence_events {
            self.shared.tell(change);
        }
    }
}
