//! Delivery of incoming messages to a component's `handle-message` over wRPC.
//!
//! One delivery task per session takes messages in the order the socket task read them and starts
//! their invocations in that order. Each message carries a permit of the session's
//! `max_in_flight` semaphore and releases it when its invocation ends, which is what lets the
//! socket task read the next frame: at the limit, reading stops and TCP pushes back on the server.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::stream::FuturesUnordered;
use futures::StreamExt as _;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use wasmcloud_provider_sdk::get_connection;
use wasmcloud_provider_sdk::provider::WrpcClient;

use crate::bindings::wasmcloud::messaging::handler::handle_message;
use crate::bindings::wasmcloud::messaging::types::BrokerMessage;
use crate::session::SessionKey;
use crate::stats::{self, SessionStats};

/// A decoded message on its way to the handler, holding its in-flight permit.
pub struct Inbound {
    pub msg: BrokerMessage,
    pub permit: OwnedSemaphorePermit,
}

type ClientCell = Arc<tokio::sync::OnceCell<Arc<WrpcClient>>>;

/// One wRPC client per target component, created on first use and reused by every session
/// delivering to that component (each client holds its own NATS inbox subscription).
#[derive(Clone, Default)]
pub struct HandlerClients {
    clients: Arc<Mutex<HashMap<String, ClientCell>>>,
}

impl HandlerClients {
    async fn get(&self, component: &str) -> anyhow::Result<Arc<WrpcClient>> {
        let cell = {
            let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(clients.entry(component.to_string()).or_default())
        };
        cell.get_or_try_init(|| async {
            get_connection()
                .get_wrpc_client(component)
                .await
                .map(Arc::new)
        })
        .await
        .cloned()
    }

    /// Forgets the client of a component that has no handler link left.
    pub fn forget(&self, component: &str) {
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(component);
    }
}

/// Where a session's messages go.
pub struct Target {
    pub session_id: String,
    pub key: SessionKey,
    pub handler_linked: Arc<AtomicBool>,
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
                let Some(Inbound { msg, permit }) = next else { break };
                if !target.handler_linked.load(Ordering::Relaxed) {
                    stats::bump(&target.stats.dropped_no_handler);
                    debug!(session = %target.session_id, subject = %msg.subject, "no handler link on this session; message dropped");
                    continue;
                }
                let client = match target.clients.get(&target.key.component).await {
                    Ok(client) => client,
                    Err(error) => {
                        stats::bump(&target.stats.delivery_errors);
                        warn!(session = %target.session_id, component = %target.key.component, %error, "cannot create the wRPC client of the component; message dropped");
                        continue;
                    }
                };
                in_flight.push(deliver(&target, client, msg, permit));
            }
        }
    }
}

async fn deliver(
    target: &Target,
    client: Arc<WrpcClient>,
    msg: BrokerMessage,
    permit: OwnedSemaphorePermit,
) {
    let result = handle_message(&*client, None, &msg).await;
    drop(permit);
    match result {
        Ok(Ok(())) => stats::bump(&target.stats.delivered),
        Ok(Err(error)) => {
            stats::bump(&target.stats.delivery_errors);
            warn!(session = %target.session_id, component = %target.key.component, link_name = %target.key.link_name, subject = %msg.subject, %error, "component's handle-message returned an error");
        }
        Err(error) => {
            stats::bump(&target.stats.delivery_errors);
            warn!(session = %target.session_id, component = %target.key.component, link_name = %target.key.link_name, subject = %msg.subject, error = %format!("{error:#}"), "delivery to the component failed");
        }
    }
}
