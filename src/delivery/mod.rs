//! Delivery of incoming messages to a component's `handle-message` over wRPC.
//!
//! One delivery task per session takes messages in the order the socket task read them and starts
//! their invocations in that order. Each message carries a slot of the session's budget (one of
//! `max_in_flight`, its body's bytes of `max_in_flight_bytes`) and releases it when its invocation
//! ends, which is what lets the socket task hand over the next one: at the limit, it reads ahead a bounded number of messages,
//! then stops reading and TCP pushes back on the server.
//!
//! Every call has a deadline (`delivery_timeout_ms`) that covers the whole call: the wRPC
//! transport's own timeout bounds only the start of an invocation, so a result that never comes
//! back (lost on the lattice, or a handler that never returns) would otherwise hold its slot
//! forever, and with `max_in_flight = 1` stall the session with nothing logged.

pub mod budget;
pub mod invoke;
pub mod pool;

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::StreamExt as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::delivery::budget::Slot;
pub use crate::delivery::invoke::HandlerClients;
pub(crate) use crate::delivery::invoke::{HandlerClient, Message, Stage};
use crate::identity::SessionKey;
use crate::lattice::lease::Fence;
use crate::stats::{self, SessionStats};
use crate::subjects::Pattern;

/// A decoded message on its way to the handler, holding its in-flight slot (taken before it
/// is handed over), and the id to acknowledge once the handler accepted it (`ack = true`).
pub struct Inbound {
    pub msg: Message,
    pub ack_id: Option<String>,
    pub slot: Option<Slot>,
    /// A pool's message going to several handlers: acknowledged once all of them accepted it.
    pub joint: Option<Arc<pool::Joint>>,
}

/// Queues the acknowledgement of an envelope id (client mode, `ack = true`).
pub type Ack = Arc<dyn Fn(&str) + Send + Sync>;

/// Where a session's messages go.
pub struct Target {
    pub session_id: String,
    pub key: SessionKey,
    pub handler_linked: Arc<AtomicBool>,
    /// The subjects the handler link receives (`subscriptions`).
    pub routes: Routes,
    /// Sends acknowledgements, with `ack = true`: called with an envelope's id once the handler
    /// accepted it.
    pub acker: Option<Ack>,
    pub stats: Arc<SessionStats>,
    pub clients: HandlerClients,
    /// The deadline of one `handle-message` call.
    pub timeout: Duration,
    /// With `replicas = one`: this replica delivers only while it holds the session's lease.
    pub fence: Option<Fence>,
}

/// The subjects a handler link receives: its `subscriptions` (any subject while it set none).
/// Set when the handler link is put, read for every message.
#[derive(Clone, Default)]
pub struct Routes(Arc<RwLock<Option<Arc<[Pattern]>>>>);

impl Routes {
    /// The handler link's patterns; `None` = every subject.
    pub fn set(&self, patterns: Option<Vec<Pattern>>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = patterns.map(Into::into);
    }

    /// Whether a message with `subject` goes to the handler.
    pub fn admit(&self, subject: &str) -> bool {
        match &*self.0.read().unwrap_or_else(|e| e.into_inner()) {
            None => true,
            Some(patterns) => patterns.iter().any(|p| p.matches(subject)),
        }
    }
}

/// The delivery task of one session. The component's wRPC client is made on the first message
/// (it may need a NATS connection), before any call is in flight, and kept for the session.
pub async fn run(target: Target, mut inbound: mpsc::Receiver<Inbound>, cancel: CancellationToken) {
    let mut in_flight = FuturesUnordered::new();
    let mut client: Option<Arc<HandlerClient>> = None;
    // Whether the last message was dropped for want of the lease: warned once per run.
    let mut fenced = false;
    loop {
        let next = tokio::select! {
            () = cancel.cancelled() => break,
            Some(()) = in_flight.next(), if !in_flight.is_empty() => continue,
            next = inbound.recv() => next,
        };
        let Some(Inbound {
            msg,
            ack_id,
            slot,
            joint,
        }) = next
        else {
            break;
        };
        // Checked at the last moment: a replica that was paused past its lease's deadline
        // delivers nothing it read, even before its socket task has noticed.
        if target.fence.as_ref().is_some_and(|f| !f.holds()) {
            stats::bump(&target.stats.dropped_on_close);
            if !fenced {
                warn!(session = %target.session_id, component = %target.key.component, link_name = %target.key.link_name, subject = %msg.subject, "this replica no longer holds the session's lease; messages it read are dropped, not delivered (counted as dropped_on_close)");
            }
            fenced = true;
            continue;
        }
        fenced = false;
        if !target.routes.admit(&msg.subject) {
            // The handler link's `subscriptions` leave it out: deliberately not delivered, so
            // acknowledged (a server would otherwise send it again and again).
            stats::bump(&target.stats.unrouted);
            debug!(session = %target.session_id, component = %target.key.component, link_name = %target.key.link_name, subject = %msg.subject, "no pattern of the handler link's `subscriptions` matches; not delivered (counted as unrouted)");
            if let (Some(acker), Some(id)) = (&target.acker, ack_id) {
                acker(&id);
            }
            continue;
        }
        if !target.handler_linked.load(Ordering::Relaxed) {
            if let Some(count) = stats::bump_loss(&target.stats.dropped_no_handler) {
                warn!(session = %target.session_id, component = %target.key.component, link_name = %target.key.link_name, subject = %msg.subject, count, "a frame came while the session has no handler link; dropped (counted as dropped_no_handler; logged at the 1st, 10th, 100th, ...)");
            }
            continue;
        }
        let ready = match &client {
            Some(ready) => Arc::clone(ready),
            // Only before the first call: nothing is in flight yet, so waiting here holds up no
            // invocation. Once made, the client serves the session for good.
            None => {
                let got = tokio::select! {
                    () = cancel.cancelled() => break,
                    got = target.clients.get(&target.key.component) => got,
                };
                match got {
                    Ok(ready) => {
                        client = Some(Arc::clone(&ready));
                        ready
                    }
                    Err(error) => {
                        stats::bump(&target.stats.delivery_errors);
                        warn!(session = %target.session_id, component = %target.key.component, error = %format!("{error:#}"), subject = %msg.subject, "cannot reach the component over wRPC; message dropped");
                        continue;
                    }
                }
            }
        };
        in_flight.push(deliver(&target, ready, msg, ack_id, slot, joint));
    }
    // The link went (or the provider stops). What was read but not handed to the component is
    // counted and reported; calls under way finish (each has its deadline).
    inbound.close();
    let mut dropped = 0;
    while inbound.try_recv().is_ok() {
        dropped += 1;
    }
    dropped_on_close(&target.stats, &target.session_id, &target.key, dropped);
    while in_flight.next().await.is_some() {}
}

/// Counts and reports, in one warn line, the messages of a closing session that were read from
/// the server but never handed to the component (by the socket task or the delivery task).
pub fn dropped_on_close(stats: &SessionStats, session_id: &str, key: &SessionKey, dropped: usize) {
    if dropped > 0 {
        stats::add(&stats.dropped_on_close, dropped);
        warn!(session = %session_id, component = %key.component, link_name = %key.link_name, dropped, "the session closed with messages read from the server but not yet delivered; they are dropped (counted as dropped_on_close)");
    }
}

pub(crate) async fn deliver(
    target: &Target,
    client: Arc<HandlerClient>,
    msg: Message,
    ack_id: Option<String>,
    slot: Option<Slot>,
    joint: Option<Arc<pool::Joint>>,
) {
    let stage = AtomicU8::new(Stage::Invoke as u8);
    let result = tokio::time::timeout(target.timeout, client.handle_message(&msg, &stage)).await;
    drop(slot);
    match result {
        Ok(Ok(Ok(()))) => {
            stats::bump(&target.stats.delivered);
            if let Some(joint) = joint {
                joint.accepted();
            }
            // Only now: a handler error, a timeout or a crash leaves the message
            // unacknowledged, and the server may send it again.
            if let (Some(acker), Some(id)) = (&target.acker, ack_id) {
                acker(&id);
            }
        }
        Ok(Ok(Err(error))) => {
            stats::bump(&target.stats.delivery_errors);
            warn!(session = %target.session_id, component = %target.key.component, link_name = %target.key.link_name, subject = %msg.subject, %error, "component's handle-message returned an error");
        }
        Ok(Err(error)) => {
            stats::bump(&target.stats.delivery_errors);
            warn!(session = %target.session_id, component = %target.key.component, link_name = %target.key.link_name, subject = %msg.subject, error = %format!("{error:#}"), "delivery to the component failed (no result: the component is not running, trapped, or timed out; the host's log says more)");
        }
        Err(_) => {
            stats::bump(&target.stats.delivery_timeouts);
            let stage = Stage::load(&stage).describe();
            warn!(session = %target.session_id, component = %target.key.component, link_name = %target.key.link_name, subject = %msg.subject, timeout_ms = target.timeout.as_millis() as u64, stage, acknowledged = false, "handle-message did not return within delivery_timeout_ms; the call is abandoned and its slot freed");
        }
    }
}
