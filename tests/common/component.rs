//! A played component: calls the provider's `consumer` export over wRPC with the headers the host
//! sets (`source-id`, `link-name`), and serves `handler.handle-message`, recording every message.
//!
//! Its calls go through the provider's own wRPC caller (`invoke::Caller`), not through
//! wrpc-transport-nats 0.31's client, which now and then drops a result that arrives before its
//! subscription is applied (src/invoke.rs): a loss of the test's client must not be counted as
//! the provider's.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use tokio::sync::Notify;
use wasmcloud_provider_messaging_websocket::delivery::invoke::{Callee, Caller};

use super::played;
use super::played::wasmcloud::messaging::types::BrokerMessage;
use super::provider::ProviderProcess;
use super::wait::Counter;

/// A callback that sees every message the handler gets.
pub type OnMessage = Arc<dyn Fn(&BrokerMessage) + Send + Sync>;

/// What the played component's handler does with a message.
#[derive(Clone, Default)]
pub struct Behaviour {
    /// Sleep this long before answering.
    pub delay: Duration,
    /// Answer with this error instead of Ok.
    pub fail_with: Option<String>,
    /// Wait for a permit of [`PlayedComponent::release`] before answering.
    pub gated: bool,
    /// Answer a message that has a `reply_to`: publish `answer: <body>` to it through this link.
    pub answer_through: Option<String>,
    /// Count messages without keeping them (benchmarks of large bodies).
    pub count_only: bool,
    /// Make a `request` to subject `ask` through this link before answering, and record its
    /// result (see [`PlayedComponent::requests_made`]).
    pub request_through: Option<String>,
    /// Called with every message before it is counted (the loss benchmark's tally).
    pub on_message: Option<OnMessage>,
}

/// Calls the provider's `consumer` functions as component `id`, as the host does.
pub struct Consumer {
    caller: Caller,
    lattice: String,
    target: String,
    id: String,
}

impl Consumer {
    fn callee(&self, function: &str, link_name: &str) -> Callee {
        Callee::new(
            &self.lattice,
            &self.target,
            &format!("wasmcloud:messaging/consumer@0.2.0.{function}"),
            headers(&self.id, link_name),
        )
    }

    /// `consumer.publish`; the outer error is a wRPC failure.
    async fn publish(
        &self,
        link_name: &str,
        msg: &BrokerMessage,
    ) -> anyhow::Result<Result<(), String>> {
        let stage = AtomicU8::new(0);
        let (result,) = self
            .caller
            .call(&self.callee("publish", link_name), (msg,), &stage)
            .await?;
        Ok(result)
    }

    /// `consumer.request`; the outer error is a wRPC failure.
    async fn request(
        &self,
        link_name: &str,
        subject: &str,
        body: &Bytes,
        timeout_ms: u32,
    ) -> anyhow::Result<Result<BrokerMessage, String>> {
        let stage = AtomicU8::new(0);
        let (result,) = self
            .caller
            .call(
                &self.callee("request", link_name),
                (subject, body, timeout_ms),
                &stage,
            )
            .await?;
        Ok(result)
    }
}

#[derive(Clone)]
struct Recorder {
    received: Arc<Mutex<Vec<BrokerMessage>>>,
    /// Every message handled, kept or not.
    count: Arc<Counter>,
    changed: Arc<Notify>,
    behaviour: Arc<Mutex<Behaviour>>,
    running: Arc<AtomicUsize>,
    max_running: Arc<AtomicUsize>,
    gate: Arc<tokio::sync::Semaphore>,
    /// The results of the requests the handler made (`request_through`).
    requests: Arc<Mutex<Vec<Result<BrokerMessage, String>>>>,
    /// What the handler needs to call the provider back.
    caller: Arc<Mutex<Option<Arc<Consumer>>>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            received: Arc::default(),
            count: Arc::default(),
            changed: Arc::default(),
            behaviour: Arc::default(),
            running: Arc::default(),
            max_running: Arc::default(),
            gate: Arc::new(tokio::sync::Semaphore::new(0)),
            requests: Arc::default(),
            caller: Arc::default(),
        }
    }
}

impl played::exports::wasmcloud::messaging::handler::Handler<delivery_wrpc::NatsContext>
    for Recorder
{
    async fn handle_message(
        &self,
        _cx: delivery_wrpc::NatsContext,
        msg: BrokerMessage,
    ) -> anyhow::Result<Result<(), String>> {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(now, Ordering::SeqCst);
        let behaviour = self.behaviour.lock().unwrap().clone();
        let reply_to = msg.reply_to.clone();
        let mut answer = b"answer: ".to_vec();
        if behaviour.answer_through.is_some() {
            answer.extend_from_slice(&msg.body);
        }
        if let Some(on_message) = &behaviour.on_message {
            on_message(&msg);
        }
        if !behaviour.count_only {
            self.received.lock().unwrap().push(msg);
        }
        self.count.bump();
        self.changed.notify_waiters();
        let caller = self.caller.lock().unwrap().clone();
        if let (Some(link), Some(reply_to), Some(consumer)) =
            (&behaviour.answer_through, reply_to, caller)
        {
            let reply = BrokerMessage {
                subject: reply_to,
                body: answer.into(),
                reply_to: None,
            };
            let result = consumer.publish(link, &reply).await;
            if !matches!(result, Ok(Ok(()))) {
                self.running.fetch_sub(1, Ordering::SeqCst);
                return Ok(Err(format!("answering failed: {result:?}")));
            }
        }
        let caller = self.caller.lock().unwrap().clone();
        if let (Some(link), Some(consumer)) = (&behaviour.request_through, caller) {
            let result = consumer
                .request(link, "ask", &Bytes::from_static(b"question"), 3000)
                .await;
            let result = match result {
                Ok(result) => result,
                Err(e) => Err(format!("the request call failed: {e:#}")),
            };
            self.requests.lock().unwrap().push(result);
            self.changed.notify_waiters();
        }
        if !behaviour.delay.is_zero() {
            tokio::time::sleep(behaviour.delay).await;
        }
        if behaviour.gated {
            self.gate.acquire().await.unwrap().forget();
        }
        self.running.fetch_sub(1, Ordering::SeqCst);
        Ok(behaviour.fail_with.map_or(Ok(()), Err))
    }
}

pub struct PlayedComponent {
    pub id: String,
    provider: Arc<Consumer>,
    recorder: Recorder,
    serving: tokio::task::JoinHandle<()>,
}

impl PlayedComponent {
    /// Serves `handle-message` for component `id` on the provider's lattice.
    pub async fn start(provider: &ProviderProcess, nats_url: &str, id: &str) -> Self {
        Self::start_for(&provider.lattice, &provider.provider_key, nats_url, id).await
    }

    /// Serves `handle-message` for component `id` on `lattice`, and calls `consumer` on
    /// `target` there (a provider, or the benchmark's trivial server).
    pub async fn start_for(lattice: &str, target: &str, nats_url: &str, id: &str) -> Self {
        // Its connection's events (a disconnect, a slow consumer dropping messages) are printed:
        // they are how a call or a result goes missing on this side.
        let nats = delivery_nats::ConnectOptions::new()
            .event_callback(|event| async move {
                eprintln!("played component's NATS connection: {event}");
            })
            .connect(nats_url)
            .await
            .unwrap();
        let nats = Arc::new(nats);
        let own = delivery_wrpc::Client::new(Arc::clone(&nats), format!("{lattice}.{id}"), None)
            .await
            .unwrap();
        let recorder = Recorder::default();
        let invocations = played::serve(&own, recorder.clone()).await.unwrap();
        // The server has registered the subscriptions once it answered a ping after them: no
        // delivery can arrive before the component is listening.
        nats.flush().await.unwrap();
        let serving = tokio::spawn(async move {
            let _own = own;
            let mut all = futures::stream::select_all(invocations.into_iter().map(|(_, _, s)| s));
            // Failures are printed: a call the provider waits for in vain must not fail unseen.
            while let Some(invocation) = all.next().await {
                match invocation {
                    Ok(fut) => {
                        tokio::spawn(async move {
                            if let Err(e) = fut.await {
                                eprintln!("played component: serving an invocation failed: {e:#}");
                            }
                        });
                    }
                    Err(e) => eprintln!("played component: accepting an invocation failed: {e:#}"),
                }
            }
        });
        let provider_client = Arc::new(Consumer {
            caller: Caller::start((*nats).clone()).await.unwrap(),
            lattice: lattice.to_string(),
            target: target.to_string(),
            id: id.to_string(),
        });
        *recorder.caller.lock().unwrap() = Some(Arc::clone(&provider_client));
        PlayedComponent {
            id: id.into(),
            provider: provider_client,
            recorder,
            serving,
        }
    }

    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *self.recorder.behaviour.lock().unwrap() = behaviour;
    }

    /// Lets `n` gated handler invocations answer.
    pub fn release(&self, n: usize) {
        self.recorder.gate.add_permits(n);
    }

    /// `consumer.publish` through `link_name`; the outer error is a wRPC failure.
    pub async fn publish(
        &self,
        link_name: &str,
        subject: &str,
        body: impl Into<Bytes>,
        reply_to: Option<&str>,
    ) -> anyhow::Result<Result<(), String>> {
        let msg = BrokerMessage {
            subject: subject.into(),
            body: body.into(),
            reply_to: reply_to.map(Into::into),
        };
        let call = self.provider.publish(link_name, &msg);
        tokio::time::timeout(Duration::from_secs(20), call)
            .await
            .map_err(|_| anyhow::anyhow!("publish call got no answer within 20 s"))?
    }

    /// Publishes until the call returns Ok (the provider serves its exports and the session
    /// connects in the background), within `limit`.
    pub async fn publish_when_ready(
        &self,
        link_name: &str,
        subject: &str,
        body: impl Into<Bytes>,
        limit: Duration,
    ) {
        let body = body.into();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let last = match self.publish(link_name, subject, body.clone(), None).await {
                Ok(Ok(())) => return,
                Ok(Err(e)) => e,
                Err(e) => e.to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                panic!("publish never succeeded within {limit:?}; last error: {last}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The `$ws.sessions` entries of listener clients, through link `default` (on whichever
    /// replica).
    pub async fn client_entries(&self) -> Vec<serde_json::Value> {
        let answer = self
            .request("default", "$ws.sessions", &b""[..], 0)
            .await
            .expect("the call is answered")
            .expect("$ws.sessions answers");
        let all: Vec<serde_json::Value> = serde_json::from_slice(&answer.body).expect("JSON");
        all.into_iter().filter(|e| e["kind"] == "client").collect()
    }

    /// `consumer.request` through `link_name`.
    pub async fn request(
        &self,
        link_name: &str,
        subject: &str,
        body: impl Into<Bytes>,
        timeout_ms: u32,
    ) -> anyhow::Result<Result<BrokerMessage, String>> {
        let body: Bytes = body.into();
        let call = self.provider.request(link_name, subject, &body, timeout_ms);
        tokio::time::timeout(Duration::from_secs(20), call)
            .await
            .map_err(|_| anyhow::anyhow!("request call got no answer within 20 s"))?
    }

    /// The provider's `$ws.stats` answer through `link_name`, or its refusal (while the link's
    /// put, published without an answer, has not been handled yet, say).
    pub async fn try_stats(&self, link_name: &str) -> Result<serde_json::Value, String> {
        let answer = self
            .request(link_name, "$ws.stats", &b""[..], 0)
            .await
            .expect("the $ws.stats call is answered")?;
        Ok(serde_json::from_slice(&answer.body).expect("$ws.stats answers JSON"))
    }

    /// The provider's `$ws.stats` answer to a request through `link_name`.
    pub async fn stats(&self, link_name: &str) -> serde_json::Value {
        self.try_stats(link_name).await.expect("$ws.stats answers")
    }

    /// The results of the requests the handler made, once `n` were made (within `limit`).
    pub async fn requests_made(
        &self,
        n: usize,
        limit: Duration,
    ) -> Vec<Result<BrokerMessage, String>> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.recorder.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let made = self.recorder.requests.lock().unwrap().clone();
            if made.len() >= n {
                return made;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("{} of {n} handler requests within {limit:?}", made.len());
            }
        }
    }

    pub fn received(&self) -> Vec<BrokerMessage> {
        self.recorder.received.lock().unwrap().clone()
    }

    /// How many messages the handler got, kept or not.
    pub fn count(&self) -> usize {
        self.recorder.count.get()
    }

    /// Waits until the handler got `n` messages in all (kept or not), or `limit` passed; returns
    /// the count then.
    pub async fn wait_count(&self, n: usize, limit: Duration) -> usize {
        self.recorder.count.wait_for(n, limit).await
    }

    /// The most handler invocations that ran at once.
    pub fn max_concurrent(&self) -> usize {
        self.recorder.max_running.load(Ordering::SeqCst)
    }

    /// Waits until the handler got at least `n` messages, and returns them all.
    pub async fn wait_received(&self, n: usize, limit: Duration) -> Vec<BrokerMessage> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.recorder.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let received = self.received();
            if received.len() >= n {
                return received;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "handler got {} of {n} messages within {limit:?}",
                    self.received().len()
                );
            }
        }
    }
}

impl Drop for PlayedComponent {
    fn drop(&mut self) {
        self.serving.abort();
    }
}

/// The headers the host sets on a component's call to a provider.
fn headers(component: &str, link_name: &str) -> delivery_nats::HeaderMap {
    let mut headers = delivery_nats::HeaderMap::new();
    headers.insert("source-id", component);
    headers.insert("link-name", link_name);
    headers
}
