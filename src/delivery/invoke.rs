//! Calling a function over wRPC, on the wire protocol of wRPC over NATS (`wrpc.0.0.1`), with a
//! demultiplexer of our own: [`Caller`]. The provider calls components' `handle-message` with it
//! ([`HandlerClients`]); the tests' played component calls the provider's `consumer` with it.
//!
//! wrpc-transport-nats loses the reply of an invocation now and then, in both versions we could
//! use. Its client sends each call's subscriptions to a demultiplexing task over a channel and
//! publishes the invocation right after; the task, when it wakes, looks at that channel and then
//! at the incoming messages. 0.29 picks between the two at random; 0.31 looks at the channel first
//! (`biased`), but a thread preempted between the two looks still routes an answer that arrived
//! meanwhile before the subscription that was sent meanwhile: the answer is dropped ("no
//! subscriber"), and the call waits until its deadline although the component handled the
//! message. Traced in a one-at-a-time run (BENCHMARKS.md, "Losses and stalls seen"): about one
//! call in 30,000 under load, each one stalling its session for `delivery_timeout_ms`.
//!
//! Here a call's subjects are registered in the routing table before its invocation is published,
//! in the calling task, so no answer can come before its route. The rest is the protocol as
//! wrpc-transport-nats speaks it: the invocation goes to
//! `<lattice>.<component>.wrpc.0.0.1.<instance>.<function>` with the call's inbox as its reply
//! subject and the parameters (those past nats-server's `max_payload` follow to
//! `<handshake reply>.params` once the component answered the handshake, then an empty message
//! ends them); the result comes on `<inbox>.results`. The encoding of the message and the result
//! is the generated bindings' (wit-bindgen-wrpc 0.11). One NATS connection of its own (made from
//! the HostData credentials) serves every delivery, with the headers the SDK's client would add
//! (`source-id` = the provider, `target-id` = the component). Any function's parameters and
//! result can go through [`Caller::call`], with the bindings' types of that function.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context as _};
use delivery_bindgen::bytes::{Bytes, BytesMut};
use delivery_bindgen::wrpc_transport::{Decode, Encode};
use delivery_nats::{HeaderMap, StatusCode, Subject};
use futures::StreamExt as _;
use tokio::sync::{mpsc, OnceCell};
use tokio_util::codec::{Decoder as _, Encoder as _};
use tracing::debug;
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

/// The deliveries' connection to the lattice.
struct Lattice {
    caller: Caller,
    lattice: String,
    provider_id: String,
}

/// Calls functions over wRPC on one NATS connection: one inbox subscription serves every call.
pub struct Caller {
    nats: delivery_nats::Client,
    inbox: Arc<Inbox>,
}

/// A function of a component (or provider) to call, with the headers every call of it carries.
pub struct Callee {
    /// `<lattice>.<target>.wrpc.0.0.1.<instance>.<function>`
    subject: Subject,
    headers: HeaderMap,
    /// What the headers take of nats-server's `max_payload` (`NATS/1.0`, each `key: value`).
    headers_len: usize,
}

impl Callee {
    /// `function` (e.g. `wasmcloud:messaging/handler@0.2.0.handle-message`) of `target` on
    /// `lattice`.
    pub fn new(lattice: &str, target: &str, function: &str, headers: HeaderMap) -> Self {
        let headers_len = b"NATS/1.0\r\n\r\n".len()
            + headers
                .iter()
                .flat_map(|(k, vs)| vs.iter().map(move |v| (k, v)))
                .map(|(k, v)| {
                    let k: &[u8] = k.as_ref();
                    k.len() + v.as_str().len() + b": \r\n".len()
                })
                .sum::<usize>();
        Callee {
            subject: Subject::from(format!("{lattice}.{target}.wrpc.0.0.1.{function}")),
            headers,
            headers_len,
        }
    }
}

impl Caller {
    /// Subscribes to a new inbox on `nats` and starts routing its answers.
    pub async fn start(nats: delivery_nats::Client) -> anyhow::Result<Self> {
        let inbox = Inbox::start(&nats).await?;
        Ok(Caller { nats, inbox })
    }

    /// Calls `callee` with `params` and returns its result; the error is a transport failure.
    /// Unbounded here: the caller bounds the whole call. `stage` tells a caller whose deadline
    /// passed how far the call got.
    pub async fn call<P, R>(
        &self,
        callee: &Callee,
        params: P,
        stage: &AtomicU8,
    ) -> anyhow::Result<R>
    where
        P: Encode<delivery_wrpc::ParamWriter>,
        <P::Encoder as tokio_util::codec::Encoder<P>>::Error: Into<anyhow::Error>,
        R: Decode<delivery_wrpc::Reader>,
        <R::Decoder as tokio_util::codec::Decoder>::Error: Into<anyhow::Error>,
    {
        let mut encoded = BytesMut::new();
        let mut encoder = P::Encoder::default();
        encoder
            .encode(params, &mut encoded)
            .map_err(Into::into)
            .context("failed to encode the parameters")?;
        let mut params = encoded.freeze();
        let nats = &self.nats;
        let max_payload = nats.server_info().max_payload;
        let mut call = self.inbox.call();
        let first = params.split_to(
            max_payload
                .saturating_sub(callee.headers_len)
                .min(params.len()),
        );
        nats.publish_with_reply_and_headers(
            callee.subject.clone(),
            call.handshake.clone(),
            callee.headers.clone(),
            first,
        )
        .await
        .context("failed to publish the invocation")?;
        stage.store(Stage::Handshake as u8, Ordering::Relaxed);
        let handshake = call
            .handshake_rx
            .recv()
            .await
            .context("the wRPC inbox closed")?;
        let reply = match (handshake.status, handshake.reply) {
            (Some(StatusCode::NO_RESPONDERS), _) => {
                bail!(
                    "no instance of {} serves it (no responders)",
                    callee.subject
                )
            }
            (Some(status), _) if !status.is_success() => bail!(
                "the lattice answered the invocation with status {status}{}",
                handshake
                    .description
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default()
            ),
            (_, Some(reply)) => reply,
            (_, None) => bail!("the handshake names no subject for the parameters"),
        };
        // The rest of the parameters past `max_payload`, then their end.
        let rest = Subject::from(format!("{reply}.params"));
        while !params.is_empty() {
            let chunk = params.split_to(max_payload.min(params.len()));
            nats.publish(rest.clone(), chunk)
                .await
                .context("failed to publish the parameters")?;
        }
        nats.publish(rest, Bytes::new())
            .await
            .context("failed to end the parameters")?;
        stage.store(Stage::Result as u8, Ordering::Relaxed);
        let mut decoder = R::Decoder::default();
        let mut received = BytesMut::new();
        loop {
            let message = call
                .result_rx
                .recv()
                .await
                .context("the wRPC inbox closed")?;
            if message.payload.is_empty() {
                bail!("incomplete result: the callee ended its result stream early");
            }
            received.extend_from_slice(&message.payload);
            if let Some(result) = decoder
                .decode(&mut received)
                .map_err(Into::into)
                .context("failed to decode the result")?
            {
                return Ok(result);
            }
        }
    }
}

/// Where the answers of the calls under way go: one wildcard subscription on `<inbox>.>`, and
/// a route per subject of each call.
struct Inbox {
    /// `<inbox>.`; a call's subject is this and a number.
    prefix: String,
    next: AtomicU64,
    routes: Mutex<HashMap<String, mpsc::UnboundedSender<delivery_nats::Message>>>,
}

impl Inbox {
    /// Subscribes and starts routing.
    async fn start(nats: &delivery_nats::Client) -> anyhow::Result<Arc<Self>> {
        let prefix = format!("{}.", nats.new_inbox());
        let mut subscription = nats
            .subscribe(format!("{prefix}>"))
            .await
            .context("failed to subscribe to the deliveries' inbox")?;
        let inbox = Arc::new(Inbox {
            prefix,
            next: AtomicU64::new(0),
            routes: Mutex::default(),
        });
        let routing = Arc::downgrade(&inbox);
        tokio::spawn(async move {
            while let Some(message) = subscription.next().await {
                let Some(inbox) = routing.upgrade() else {
                    return;
                };
                let route = inbox.routes().get(message.subject.as_str()).cloned();
                match route {
                    Some(route) => {
                        let _ = route.send(message);
                    }
                    // The end of a result already read.
                    None if message.payload.is_empty() => {}
                    // The answer of a call abandoned at its deadline (counted then as a timeout).
                    None => debug!(subject = %message.subject, "answer of no call under way"),
                }
            }
        });
        Ok(inbox)
    }

    fn routes(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::UnboundedSender<delivery_nats::Message>>>
    {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new call's subjects (handshake, result), routed from now until the call ends.
    fn call(self: &Arc<Self>) -> Call {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let handshake = Subject::from(format!("{}{n}", self.prefix));
        let result = Subject::from(format!("{handshake}.results"));
        let (handshake_tx, handshake_rx) = mpsc::unbounded_channel();
        let (result_tx, result_rx) = mpsc::unbounded_channel();
        {
            let mut routes = self.routes();
            routes.insert(handshake.to_string(), handshake_tx);
            routes.insert(result.to_string(), result_tx);
        }
        Call {
            inbox: Arc::clone(self),
            handshake,
            result,
            handshake_rx,
            result_rx,
        }
    }
}

/// The routes of one call; dropping it (the call ended or was abandoned) removes them.
struct Call {
    inbox: Arc<Inbox>,
    handshake: Subject,
    result: Subject,
    handshake_rx: mpsc::UnboundedReceiver<delivery_nats::Message>,
    result_rx: mpsc::UnboundedReceiver<delivery_nats::Message>,
}

impl Drop for Call {
    fn drop(&mut self) {
        let mut routes = self.inbox.routes();
        routes.remove(self.handshake.as_str());
        routes.remove(self.result.as_str());
    }
}

/// One client per target component, created on first use and reused by every session that
/// delivers to that component.
#[derive(Clone, Default)]
pub struct HandlerClients {
    lattice: Arc<OnceCell<Arc<Lattice>>>,
    clients: Arc<Mutex<HashMap<String, Arc<HandlerClient>>>>,
}

/// Calls `handle-message` on one component.
pub struct HandlerClient {
    lattice: Arc<Lattice>,
    callee: Callee,
}

impl HandlerClient {
    /// Delivers `msg`; the outer error is a transport failure, the inner one the component's own
    /// error result. Unbounded here: the caller bounds the whole call. `stage` tells a caller
    /// whose deadline passed how far the call got.
    pub async fn handle_message(
        &self,
        msg: &Message,
        stage: &AtomicU8,
    ) -> anyhow::Result<Result<(), String>> {
        let (result,) = self
            .lattice
            .caller
            .call(&self.callee, (msg,), stage)
            .await?;
        Ok(result)
    }
}

/// The instance and function a delivery invokes.
const HANDLE_MESSAGE: &str = "wasmcloud:messaging/handler@0.2.0.handle-message";

/// How far a `handle-message` call got, in the order of its steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Stage {
    /// Publishing the invocation.
    Invoke = 0,
    /// Waiting for the component's handshake, which ends the parameters.
    Handshake = 1,
    /// Waiting for the result.
    Result = 2,
}

impl Stage {
    /// The stage recorded in `stage` by [`HandlerClient::handle_message`].
    pub fn load(stage: &AtomicU8) -> Self {
        match stage.load(Ordering::Relaxed) {
            0 => Self::Invoke,
            1 => Self::Handshake,
            _ => Self::Result,
        }
    }

    /// For logs.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Invoke => "publishing the invocation",
            Self::Handshake => "waiting for the component's handshake",
            Self::Result => "waiting for the result",
        }
    }
}

impl HandlerClients {
    /// The client of `component`, connecting to the lattice first if needed.
    pub async fn get(&self, component: &str) -> anyhow::Result<Arc<HandlerClient>> {
        let lattice = Arc::clone(self.lattice.get_or_try_init(connect).await?);
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let client = clients.entry(component.to_string()).or_insert_with(|| {
            let mut headers = HeaderMap::new();
            headers.insert("source-id", lattice.provider_id.as_str());
            headers.insert("target-id", component);
            Arc::new(HandlerClient {
                callee: Callee::new(&lattice.lattice, component, HANDLE_MESSAGE, headers),
                lattice: Arc::clone(&lattice),
            })
        });
        Ok(Arc::clone(client))
    }

    /// Forgets the client of a component that has no handler link left.
    pub fn forget(&self, component: &str) {
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(component);
    }
}

/// The deliveries' own connection to the lattice's NATS, and its inbox.
async fn connect() -> anyhow::Result<Arc<Lattice>> {
    let host_data = load_host_data().context("failed to load host data")?;
    let nats = crate::lattice::connect(host_data, "delivery").await?;
    Ok(Arc::new(Lattice {
        caller: Caller::start(nats).await?,
        lattice: host_data.lattice_rpc_prefix.clone(),
        provider_id: host_data.provider_key.clone(),
    }))
}
