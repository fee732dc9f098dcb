//! A pool's deliveries (`pool`: several links, of any components, on one connection): each
//! message goes to every member handler link whose `subscriptions` match its subject, once
//! each, through that member's own delivery task and budget (`max_in_flight`,
//! `max_in_flight_bytes`); a message no member matches is counted as `unrouted`. With `ack`, the
//! server's envelope is acknowledged once every member it went to accepted it.
//!
//! The session's own slot (taken by the socket task) is held until the message is handed to its
//! members, so a member that does not keep up holds up reading for the whole pool: one socket,
//! one TCP window, bounded memory.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::delivery::budget::Budget;
use crate::delivery::{self, Ack, HandlerClients, Inbound, Routes, Target};
use crate::identity::SessionKey;
use crate::lattice::lease::Fence;
use crate::stats::{self, SessionStats};
use crate::subjects::Pattern;

/// A message on its way to several members: acknowledged (with `ack`) when the last member's
/// delivery ends, if every member accepted it.
pub struct Joint {
    id: String,
    acker: Ack,
    expected: usize,
    accepted: AtomicUsize,
}

impl Joint {
    /// One member's handler accepted the message.
    pub fn accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Joint {
    fn drop(&mut self) {
        if *self.accepted.get_mut() == self.expected {
            (self.acker)(&self.id);
        }
    }
}

/// One member handler link of a pool.
struct Member {
    key: SessionKey,
    routes: Routes,
    budget: Budget,
    queue: mpsc::Sender<Inbound>,
    cancel: CancellationToken,
}

/// What every member's delivery shares: the pool's session.
pub struct Common {
    pub session_id: String,
    pub stats: Arc<SessionStats>,
    pub clients: HandlerClients,
    pub fence: Option<Fence>,
}

/// A member handler link's own delivery settings: what it receives and its bounds.
pub struct Own {
    /// `subscriptions`; `None` = every subject.
    pub subscriptions: Option<Vec<Pattern>>,
    pub max_in_flight: usize,
    pub max_in_flight_bytes: usize,
    /// `delivery_timeout_ms`.
    pub timeout: std::time::Duration,
}

/// The member handler links of a pool.
pub struct Members {
    common: Common,
    members: RwLock<Vec<Arc<Member>>>,
}

impl Members {
    pub fn new(common: Common) -> Self {
        Members {
            common,
            members: RwLock::default(),
        }
    }

    /// Adds (or, for a key already in, replaces) a member handler link with its own settings
    /// and a delivery task of its own.
    pub fn add(&self, key: SessionKey, own: Own) {
        self.remove(&key);
        let common = &self.common;
        let (queue, rx) = mpsc::channel(own.max_in_flight);
        let routes = Routes::default();
        routes.set(own.subscriptions);
        let cancel = CancellationToken::new();
        let target = Target {
            session_id: common.session_id.clone(),
            key: key.clone(),
            handler_linked: Arc::new(AtomicBool::new(true)),
            // The dispatcher has matched the subscriptions already.
            routes: Routes::default(),
            // Acknowledged by the message's `Joint`.
            acker: None,
            stats: Arc::clone(&common.stats),
            clients: common.clients.clone(),
            timeout: own.timeout,
            fence: common.fence.clone(),
        };
        tokio::spawn(delivery::run(target, rx, cancel.clone()));
        let member = Member {
            key,
            routes,
            budget: Budget::new(own.max_in_flight, own.max_in_flight_bytes),
            queue,
            cancel,
        };
        write(&self.members).push(Arc::new(member));
    }

    /// Removes a member handler link: its deliveries under way finish, what was queued for it is
    /// counted as `dropped_on_close`; the other members are not disturbed.
    pub fn remove(&self, key: &SessionKey) {
        let mut members = write(&self.members);
        if let Some(at) = members.iter().position(|m| m.key == *key) {
            members.remove(at).cancel.cancel();
        }
    }

    fn matching(&self, subject: &str) -> Vec<Arc<Member>> {
        read(&self.members)
            .iter()
            .filter(|m| m.routes.admit(subject))
            .cloned()
            .collect()
    }

    /// Whether any member handler link is in.
    pub fn is_empty(&self) -> bool {
        read(&self.members).is_empty()
    }

    /// Stops every member's delivery.
    pub fn close(&self) {
        for member in write(&self.members).drain(..) {
            member.cancel.cancel();
        }
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

/// The pool's dispatcher, in place of a session's delivery task: hands each message the socket
/// task read to the members it is for, in the order read.
pub async fn dispatch(
    members: Arc<Members>,
    key: SessionKey,
    acker: Option<Ack>,
    mut inbound: mpsc::Receiver<Inbound>,
    cancel: CancellationToken,
) {
    let common = &members.common;
    loop {
        let next = tokio::select! {
            () = cancel.cancelled() => break,
            next = inbound.recv() => next,
        };
        let Some(Inbound {
            msg, ack_id, slot, ..
        }) = next
        else {
            break;
        };
        let to = members.matching(&msg.subject);
        if to.is_empty() {
            stats::bump(&common.stats.unrouted);
            debug!(session = %common.session_id, pool_link = %key, subject = %msg.subject, "no member handler link of the pool takes this subject (none, or none whose `subscriptions` match); not delivered (counted as unrouted)");
            if let (Some(acker), Some(id)) = (&acker, ack_id) {
                acker(&id);
            }
            continue;
        }
        let joint = match (&acker, ack_id) {
            (Some(acker), Some(id)) => Some(Arc::new(Joint {
                id,
                acker: Arc::clone(acker),
                expected: to.len(),
                accepted: AtomicUsize::new(0),
            })),
            _ => None,
        };
        for member in to {
            let mut one = Inbound {
                msg: msg.clone(),
                ack_id: None,
                slot: None,
                joint: joint.clone(),
            };
            let slot = tokio::select! {
                () = cancel.cancelled() => None,
                () = member.cancel.cancelled() => None,
                slot = member.budget.take(&one) => slot,
            };
            let Some(slot) = slot else {
                // The member left (or the pool closes) while the message waited for its slot.
                stats::bump(&common.stats.dropped_on_close);
                continue;
            };
            one.slot = Some(slot);
            // Cannot be full: the queue holds as many messages as the member has slots.
            if member.queue.try_send(one).is_err() {
                stats::bump(&common.stats.dropped_on_close);
            }
        }
        drop(joint);
        drop(slot);
    }
    info!(session = %common.session_id, "the pool's deliveries stop");
    members.close();
}
