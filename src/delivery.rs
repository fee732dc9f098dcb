//! Delivery of incoming messages to a component's `handle-message` over wRPC.
//!
//! One delivery task per session takes messages in the order the socket task read them and starts
//! their invocations in that order. Each message carries a permit of the session's
//! `max_in_flight` semaphore and releases it when its invocation ends, which is what lets the
//! socket task read the next frame: at the limit, reading stops and TCP pushes back on the server.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::stream::FuturesUnordered;
use futures::StreamExt as _;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

pub use crate::invoke::HandlerClients;
use crate::invoke::{HandlerClient, Message};
use crate::session::{Acker, SessionKey};
use crate::stats::{self, SessionStats};

/// A decoded message on its way to the handler, holding its in-flight permit (taken before it
/// is handed over), and the id to acknowledge once the handler accepted it (`ack = true`).
pub struct Inbound {
    pub msg: Message,
    pub ack_id: Option<String>,
    pub permit: Option<OwnedSemaphorePermit>,
}

/// Where a session's messages go.
pub struct Target {
    pub session_id: String,
    pub key: SessionKey,
    pub handler_linked: Arc<AtomicBool>,
    /// Sends acknowledgements, with `ack = true`.
    pub acker: Option<Acker>,
    pub stats: Arc<SessionStats>,
    pub clients: HandlerClients,
}

/// The delivery task of one session.
pub async fn run(target: Target, mut inbound: mpsc::Receiver<Inbound>, cancel: CancellationToken) {
    let mut in_flight = FuturesUnordered::new();
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            next = inbound.recv() => {
                let Some(Inbound { msg, ack_id, permit }) = next else { break };
                if !target.handler_linked.load(Ordering::Relaxed) {
                    stats::bump(&target.stats.dropped_no_handler);
                    debug!(session = %target.session_id, subject = %msg.subject, "no handler link on this session; message dropped");
                    continue;
                }
                let client = match target.clients.get(&target.key.component).await {
                    Ok(client) => client,
                    Err(error) => {
                        stats::bump(&target.stats.delivery_errors);
                        warn!(session = %target.session_id, component = %target.key.component, error = %format!("{error:#}"), "cannot reach the component over wRPC; message dropped");
                        continue;
                    }
                };
                in_flight.push(deliver(&target, client, msg, ack_id, permit));
            }
        }
    }
}

async fn deliver(
    target: &Target,
    client: Arc<HandlerClient>,
    msg: Message,
    ack_id: Option<String>,
    permit: Option<OwnedSemaphorePermit>,
) {
    let result = client.handle_message(&msg).await;
    drop(permit);
    match result {
        Ok(Ok(())) => {
            stats::bump(&target.stats.delivered);
            // Only now: a handler error or a crash leaves the message unacknowledged, and the
            // server may send it again.
            if let (Some(acker), Some(id)) = (&target.acker, ack_id) {
                acker.ack(&id);
            }
        }
        Ok(Err(error)) => {
            stats::bump(&target.stats.delivery_errors);
            warn!(session = %target.session_id, component = %target.key.component, link_name = %target.key.link_name, subject = %msg.subject, %error, "component's handle-message returned an error");
        }
        Err(error) => {
            stats::bump(&target.stats.delivery_errors);
            warn!(session = %target.session_id, component = %target.key.component, link_name = %target.key.link_name, subject = %msg.subject, error = %format!("{error:#}"), "delivery to the component failed (no result: the component is not running, trapped, or timed out; the host's log says more)");
        }
    }
}
