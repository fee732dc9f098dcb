//! Invoking a component's `handle-message` over wRPC.
//!
//! The SDK's wRPC client (wrpc-transport-nats 0.29) can lose the reply of an invocation: its
//! demultiplexing task may route the reply before it has registered the call's subscription, and
//! the call then hangs until its timeout although the component handled the message. With
//! `max_in_flight = 1` that stalls a session for the whole timeout. wrpc-transport-nats 0.31 fixes
//! the race and speaks the same wire protocol, so deliveries go through it, on a NATS connection of
//! their own made from the HostData credentials, with the headers the SDK's client would add
//! (`source-id` = the provider, `target-id` = the component).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use tokio::sync::OnceCell;
use wasmcloud_provider_sdk::load_host_data;

use crate::bindings::wasmcloud::messaging::types::BrokerMessage;

mod bindings {
    delivery_bindgen::generate!({
        world: "handler-client",
        with: {
            "wasmcloud:messaging/handler@0.2.0": generate,
            "wasmcloud:messaging/types@0.2.0": generate,
        },
        anyhow_path: "::delivery_bindgen::anyhow",
        bitflags_path: "::delivery_bindgen::bitflags",
        bytes_path: "::delivery_bindgen::bytes",
        futures_path: "::delivery_bindgen::futures",
        tokio_path: "::delivery_bindgen::tokio",
        tokio_util_path: "::delivery_bindgen::tokio_util",
        tracing_path: "::delivery_bindgen::tracing",
        wasm_tokio_path: "::delivery_bindgen::wasm_tokio",
        wrpc_transport_path: "::delivery_bindgen::wrpc_transport",
    });
}

/// A message as the delivery bindings carry it (the same fields as the provider's own
/// `BrokerMessage`, from the other bindings generator).
pub type Message = bindings::wasmcloud::messaging::types::BrokerMessage;

impl From<BrokerMessage> for Message {
    /// Moves the fields over: nothing is copied on the way to the component.
    fn from(msg: BrokerMessage) -> Self {
        Message {
            subject: msg.subject,
            body: msg.body,
            reply_to: msg.reply_to,
        }
    }
}

/// What the provider needs to reach components on the lattice.
#[derive(Clone)]
struct Lattice {
    nats: Arc<delivery_nats::Client>,
    lattice: String,
    provider_id: String,
}

type ClientCell = Arc<OnceCell<Arc<HandlerClient>>>;

/// One wRPC client per target component, created on first use and reused by every session that
/// delivers to that component (each client holds a NATS inbox subscription of its own).
#[derive(Clone, Default)]
pub struct HandlerClients {
    lattice: Arc<OnceCell<Lattice>>,
    clients: Arc<Mutex<HashMap<String, ClientCell>>>,
}

/// Calls `handle-message` on one component.
pub struct HandlerClient {
    client: delivery_wrpc::Client,
    headers: delivery_nats::HeaderMap,
}

impl HandlerClient {
    /// Delivers `msg`; the outer error is a transport failure, the inner one the component's own
    /// error result. Unbounded here: the caller bounds the whole call (the transport's own
    /// timeout would bound only the start of the invocation, with a second timer per call).
    pub async fn handle_message(&self, msg: &Message) -> anyhow::Result<Result<(), String>> {
        bindings::wasmcloud::messaging::handler::handle_message(
            &self.client,
            Some(self.headers.clone()),
            msg,
        )
        .await
    }
}

impl HandlerClients {
    /// The client of `component`, connecting to the lattice first if needed.
    pub async fn get(&self, component: &str) -> anyhow::Result<Arc<HandlerClient>> {
        let lattice = self.lattice.get_or_try_init(connect).await?.clone();
        let cell = {
            let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(clients.entry(component.to_string()).or_default())
        };
        cell.get_or_try_init(|| async {
            let prefix = format!("{}.{component}", lattice.lattice);
            let client = delivery_wrpc::Client::new(
                Arc::clone(&lattice.nats),
                prefix.clone(),
                Some(prefix.into()),
            )
            .await
            .with_context(|| {
                format!("failed to create the wRPC client of component {component}")
            })?;
            let mut headers = delivery_nats::HeaderMap::new();
            headers.insert("source-id", lattice.provider_id.as_str());
            headers.insert("target-id", component);
            Ok(Arc::new(HandlerClient { client, headers }))
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

/// The deliveries' own connection to the lattice's NATS.
async fn connect() -> anyhow::Result<Lattice> {
    let host_data = load_host_data().context("failed to load host data")?;
    let nats = crate::lattice::connect(host_data, "delivery").await?;
    Ok(Lattice {
        nats: Arc::new(nats),
        lattice: host_data.lattice_rpc_prefix.clone(),
        provider_id: host_data.provider_key.clone(),
    })
}
