//! Listeners across replicas: every replica listens (on one host they share the port with
//! SO_REUSEPORT), and the lattice's core NATS joins their clients into one set.
//!
//! - Presence: a replica with listeners says which (by lease key) on `<prefix>.presence` when
//!   that changes and every [`PRESENCE_PERIOD`]; it answers a replica it had not heard of at
//!   once, so two replicas know of each other within a round trip. A replica not heard of for
//!   [`PEER_EXPIRY`] is forgotten.
//! - Fan-out: a `publish` reaches the replica's own subscribed clients, and, when some other
//!   replica listens for the same link, goes once over `<prefix>.f.<lease key>`; each of them
//!   hands it to its own subscribed clients.
//! - One client: a client's id carries its replica's tag, so a call for a client elsewhere goes
//!   straight to `<prefix>.c.<tag>` (served like the forwarded calls of sessions).

use std::collections::BTreeSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::HeaderMap;
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Lattice;
use crate::bindings::wasmcloud::messaging::types::BrokerMessage;

/// How often a replica with listeners says so.
pub const PRESENCE_PERIOD: Duration = Duration::from_secs(1);
/// How long a replica is known without being heard of.
pub const PEER_EXPIRY: Duration = Duration::from_millis(3500);
/// The length of a replica's tag, which starts every client id of its listeners (after `c`).
pub const TAG_LEN: usize = 8;

/// Another replica with listeners, as last heard of.
#[derive(Debug, Clone)]
pub struct Peer {
    pub host: String,
    keys: BTreeSet<String>,
    seen: Instant,
}

/// What a replica says of its listeners.
#[derive(Debug, Serialize, Deserialize)]
struct Presence {
    tag: String,
    host: String,
    /// The lease keys of the links it listens for.
    keys: BTreeSet<String>,
}

/// The tag of the replica a client id belongs to: `c<tag><random>`.
pub fn tag_of(client_id: &str) -> Option<&str> {
    client_id
        .strip_prefix('c')
        .filter(|rest| rest.len() > TAG_LEN)
        .and_then(|rest| rest.get(..TAG_LEN))
}

impl Lattice {
    /// The subject of the calls for this replica's clients.
    pub fn client_subject(&self, tag: &str) -> String {
        format!("{}.c.{tag}", self.subject_prefix)
    }

    fn fanout_subject(&self, key: &str) -> String {
        format!("{}.f.{key}", self.subject_prefix)
    }

    fn presence_subject(&self) -> String {
        format!("{}.presence", self.subject_prefix)
    }

    /// The other replicas listening for the link of lease key `key` now: (tag, host).
    pub fn peers_listening(&self, key: &str) -> Vec<(String, String)> {
        let mut peers: Vec<_> = lock(&self.peers)
            .iter()
            .filter(|(_, p)| p.seen.elapsed() < PEER_EXPIRY && p.keys.contains(key))
            .map(|(tag, p)| (tag.clone(), p.host.clone()))
            .collect();
        peers.sort();
        peers
    }

    /// Every other replica with listeners now: (tag, host).
    pub fn listening_peers(&self) -> Vec<(String, String)> {
        let mut peers: Vec<_> = lock(&self.peers)
            .iter()
            .filter(|(_, p)| p.seen.elapsed() < PEER_EXPIRY && !p.keys.is_empty())
            .map(|(tag, p)| (tag.clone(), p.host.clone()))
            .collect();
        peers.sort();
        peers
    }

    /// Sends a `publish` on to the other replicas that listen for the link of `key` (none: no
    /// message at all).
    pub async fn fan_out(&self, key: &str, msg: &BrokerMessage) -> Result<(), String> {
        if self.peers_listening(key).is_empty() {
            return Ok(());
        }
        let mut headers = HeaderMap::new();
        headers.insert("ws-origin", self.tag.as_str());
        headers.insert("ws-subject", msg.subject.as_str());
        if let Some(reply_to) = &msg.reply_to {
            headers.insert("ws-reply-to", reply_to.as_str());
        }
        self.nats
            .publish_with_headers(self.fanout_subject(key), headers, msg.body.clone())
            .await
            .map_err(|e| format!("the lattice's NATS did not take it ({e})"))
    }

    /// Follows the fan-out of the link of lease key `key` until `stop`: what other replicas
    /// publish goes to `deliver`. The replica says that it listens for the link once it follows.
    pub fn follow_fanout(
        self: &Arc<Self>,
        key: String,
        stop: CancellationToken,
        deliver: impl Fn(BrokerMessage) + Send + 'static,
    ) {
        let lattice = Arc::clone(self);
        tokio::spawn(async move {
            let subject = lattice.fanout_subject(&key);
            let mut messages = match lattice.nats.subscribe(subject.clone()).await {
                Ok(messages) => messages,
                Err(e) => {
                    warn!(%subject, error = %e, "cannot follow the other replicas' publishes for a listener: its clients get only what lands on this replica");
                    return;
                }
            };
            lattice.listening(&key, true);
            loop {
                let message = tokio::select! {
                    () = stop.cancelled() => break,
                    message = messages.next() => message,
                };
                let Some(message) = message else { break };
                let headers = message.headers.as_ref();
                let get = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.to_string());
                if get("ws-origin").as_deref() == Some(lattice.tag.as_str()) {
                    continue;
                }
                let Some(subject) = get("ws-subject") else {
                    debug!("a fanned-out publish without a subject; ignored");
                    continue;
                };
                deliver(BrokerMessage {
                    subject,
                    body: message.payload,
                    reply_to: get("ws-reply-to"),
                });
            }
            lattice.listening(&key, false);
        });
    }

    /// Records whether this replica listens for the link of lease key `key`, and says so.
    fn listening(&self, key: &str, on: bool) {
        let mut keys = lock(&self.listening);
        let changed = if on {
            keys.insert(key.to_string())
        } else {
            keys.remove(key)
        };
        drop(keys);
        if changed {
            self.announce.notify_one();
        }
    }

    async fn say_presence(&self) {
        let presence = Presence {
            tag: self.tag.clone(),
            host: self.me.host.clone(),
            keys: lock(&self.listening).clone(),
        };
        let body = serde_json::to_vec(&presence).expect("presence serializes");
        if let Err(e) = self
            .nats
            .publish(self.presence_subject(), body.into())
            .await
        {
            debug!(error = %e, "could not say which listeners this replica has");
        }
    }

    /// Takes in what another replica says; true when it was not known.
    fn heard(&self, presence: Presence) -> bool {
        if presence.tag == self.tag {
            return false;
        }
        let mut peers = lock(&self.peers);
        let new = peers
            .get(&presence.tag)
            .is_none_or(|p| p.seen.elapsed() >= PEER_EXPIRY);
        if new && !presence.keys.is_empty() {
            info!(replica = %presence.host, listeners = presence.keys.len(), "another replica listens too: publishes reach its clients, and its clients are listed and reachable");
        }
        peers.insert(
            presence.tag,
            Peer {
                host: presence.host,
                keys: presence.keys,
                seen: Instant::now(),
            },
        );
        peers.retain(|_, p| p.seen.elapsed() < PEER_EXPIRY);
        new
    }
}

/// Says and hears presence while the lattice lives: on every change of this replica's listeners,
/// every [`PRESENCE_PERIOD`] while it has some (once more when the last goes), and at once to a
/// replica not heard of before.
pub async fn presence(lattice: Weak<Lattice>) {
    let Some(alive) = lattice.upgrade() else {
        return;
    };
    let subject = alive.presence_subject();
    let mut heard = match alive.nats.subscribe(subject.clone()).await {
        Ok(heard) => heard,
        Err(e) => {
            warn!(%subject, error = %e, "cannot hear other replicas' listeners: publishes reach only this replica's clients");
            return;
        }
    };
    let announce = Arc::clone(&alive.announce);
    drop(alive);
    let mut tick = tokio::time::interval(PRESENCE_PERIOD);
    let mut said_some = false;
    loop {
        let say = tokio::select! {
            _ = tick.tick() => false,
            () = announce.notified() => true,
            message = heard.next() => {
                let Some(message) = message else { return };
                let Some(lattice) = lattice.upgrade() else { return };
                match serde_json::from_slice::<Presence>(&message.payload) {
                    Ok(presence) => {
                        if lattice.heard(presence) && !lock(&lattice.listening).is_empty() {
                            lattice.say_presence().await;
                        }
                    }
                    Err(e) => debug!(error = %e, "a presence message that is not one; ignored"),
                }
                continue;
            }
        };
        let Some(lattice) = lattice.upgrade() else {
            return;
        };
        let some = !lock(&lattice.listening).is_empty();
        if some || said_some || say {
            lattice.say_presence().await;
        }
        said_some = some;
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_name_their_replica() {
        assert_eq!(tag_of("cABCDEFGHxyz123456789"), Some("ABCDEFGH"));
        assert_eq!(tag_of("cABCDEFGH"), None);
        assert_eq!(tag_of("ws_0123456789abcdef"), None);
        assert_eq!(tag_of(""), None);
        assert_eq!(tag_of("cé"), None);
    }
}
