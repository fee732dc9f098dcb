//! The loss benchmark, shared by `benches/loss.rs` (1,000,000 calls and as many deliveries) and
//! `tests/loss.rs` (the test suite's 20,000-call version): every call and every message carries
//! its own id in its subject (`loss.<phase>.<id>`), its body's size follows from the id (16 B,
//! 1 KiB, 64 KiB, 1.5 MiB mixed), and a tally per id shows what arrived, what arrived twice and
//! what never came.
//!
//! Real parts only: the provider binary, a played component, nats-server with its default
//! `max_payload` (1 MiB, so bodies of 1.5 MiB are streamed over wRPC), and a WebSocket server
//! (tokio-tungstenite) that records publishes, answers requests and pushes the deliveries.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use super::component::{Behaviour, PlayedComponent};
use super::nats::NatsServer;
use super::provider::{ProviderOptions, ProviderProcess};
use super::wait::Counter;

/// The body size of call or message `id`: one in 1,000 is 1.5 MiB (over nats-server's default
/// `max_payload`), one in 100 is 64 KiB, half are 1 KiB, the rest 16 B.
pub fn size_of(id: usize) -> usize {
    if id.is_multiple_of(1000) {
        1536 * 1024
    } else if id % 100 == 1 {
        64 * 1024
    } else if id.is_multiple_of(2) {
        1024
    } else {
        16
    }
}

/// The byte every body of `id` is made of (so a body that arrives under another id shows).
fn fill(id: usize) -> u8 {
    b'a' + (id % 26) as u8
}

pub fn body_of(id: usize) -> Bytes {
    Bytes::from(vec![fill(id); size_of(id)])
}

/// Whether `body` is the body of `id`.
fn is_body_of(id: usize, body: &[u8]) -> bool {
    body.len() == size_of(id) && body.iter().all(|&b| b == fill(id))
}

/// The id in a subject `loss.<phase>.<id>`.
fn id_in(subject: &str) -> Option<usize> {
    subject
        .strip_prefix("loss.")?
        .split('.')
        .nth(1)?
        .parse()
        .ok()
}

/// How often each id arrived somewhere (at the server, or at the component's handler).
pub struct Tally {
    seen: Vec<AtomicU8>,
    /// A subject without an id of this run, or a body that is not its id's.
    pub wrong: AtomicUsize,
    /// Arrivals of this run's ids (a duplicate counts again).
    pub arrivals: Counter,
}

impl Tally {
    pub fn new(ids: usize) -> Arc<Self> {
        Arc::new(Tally {
            seen: (0..ids).map(|_| AtomicU8::new(0)).collect(),
            wrong: AtomicUsize::new(0),
            arrivals: Counter::default(),
        })
    }

    pub fn record(&self, subject: &str, body: &[u8]) {
        match id_in(subject).filter(|&id| id < self.seen.len()) {
            Some(id) if is_body_of(id, body) => {
                let _ = self.seen[id].fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some(n.saturating_add(1))
                });
                self.arrivals.bump();
            }
            _ => {
                self.wrong.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Ids of `ids` that never arrived.
    pub fn missing(&self, ids: Range<usize>) -> usize {
        ids.filter(|&id| self.seen[id].load(Ordering::Relaxed) == 0)
            .count()
    }

    /// Ids of `ids` that arrived more than once.
    pub fn duplicated(&self, ids: Range<usize>) -> usize {
        ids.filter(|&id| self.seen[id].load(Ordering::Relaxed) > 1)
            .count()
    }
}

/// The WebSocket server the provider dials: records every envelope it gets, answers those with a
/// `reply_to` with the same body, and pushes deliveries on the connection of a given path.
pub struct LossServer {
    pub addr: SocketAddr,
    conns: Arc<Mutex<HashMap<String, mpsc::Sender<Message>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl LossServer {
    pub async fn start(tally: Arc<Tally>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<HashMap<String, mpsc::Sender<Message>>>> = Arc::default();
        let accept = tokio::spawn({
            let conns = Arc::clone(&conns);
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(serve(stream, Arc::clone(&tally), Arc::clone(&conns)));
                }
            }
        });
        LossServer {
            addr,
            conns,
            accept,
        }
    }

    /// The URI of a session; `path` names its connection for [`LossServer::push`].
    pub fn uri(&self, path: &str) -> String {
        format!("ws://{}/{path}", self.addr)
    }

    /// Waits until a session is connected on `path`.
    pub async fn connected(&self, path: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.conns.lock().unwrap().contains_key(path) {
            assert!(
                Instant::now() < deadline,
                "no session on /{path} within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Writes the deliveries `ids` to the connection on `path`, in order, as fast as the provider
    /// reads them; returns once all are written.
    pub async fn push(&self, path: &str, ids: Range<usize>) {
        let tx = self.conns.lock().unwrap().get(path).cloned();
        let tx = tx.unwrap_or_else(|| panic!("no session on /{path}"));
        for id in ids {
            let frame = serde_json::json!({
                "subject": format!("loss.delivery.{id}"),
                "body": base64::engine::general_purpose::STANDARD.encode(body_of(id)),
            });
            tx.send(Message::text(frame.to_string()))
                .await
                .expect("the session is still connected");
        }
    }
}

impl Drop for LossServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

// The handshake callback's error type is the library's, large as it is.
#[allow(clippy::result_large_err)]
async fn serve(
    stream: tokio::net::TcpStream,
    tally: Arc<Tally>,
    conns: Arc<Mutex<HashMap<String, mpsc::Sender<Message>>>>,
) {
    let mut path = String::new();
    let config = WebSocketConfig::default()
        .max_message_size(Some(16 << 20))
        .max_frame_size(Some(16 << 20));
    let ws = tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        |request: &Request, response: Response| {
            path = request.uri().path().trim_start_matches('/').to_string();
            Ok(response)
        },
        Some(config),
    )
    .await;
    let Ok(ws) = ws else { return };
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Message>(256);
    conns.lock().unwrap().insert(path.clone(), tx.clone());
    let writer = tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            if sink.feed(message).await.is_err() {
                return;
            }
            if rx.is_empty() && sink.flush().await.is_err() {
                return;
            }
        }
    });
    while let Some(Ok(message)) = stream.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let Ok(envelope) = serde_json::from_str::<serde_json::Value>(text.as_str()) else {
            tally.wrong.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let subject = envelope["subject"].as_str().unwrap_or_default();
        let body = envelope["body"].as_str().unwrap_or_default();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap_or_default();
        tally.record(subject, &decoded);
        if let Some(reply_to) = envelope["reply_to"].as_str() {
            let answer = serde_json::json!({ "subject": reply_to, "body": body });
            if tx.send(Message::text(answer.to_string())).await.is_err() {
                break;
            }
        }
    }
    conns.lock().unwrap().remove(&path);
    writer.abort();
}

/// What one phase counted.
#[derive(Debug, Default, Clone)]
pub struct Counts {
    pub phase: String,
    pub calls: usize,
    pub in_flight: usize,
    pub seconds: f64,
    /// Calls that returned an error (or, for a request, an answer that is not its body).
    pub failed: usize,
    /// Calls that got no answer within the call's own deadline.
    pub unanswered: usize,
    /// Ids that never arrived at the other end.
    pub missing: usize,
    /// Ids that arrived more than once.
    pub duplicated: usize,
    pub first_error: Option<String>,
}

impl Counts {
    pub fn losses(&self) -> usize {
        self.failed + self.unanswered + self.missing + self.duplicated
    }
}

/// The whole run's outcome: each phase's counts and the provider's own (`$ws.stats`).
pub struct Outcome {
    pub phases: Vec<Counts>,
    pub wrong: usize,
    /// `delivery_timeouts`, `call_errors`, `delivery_errors` and every `dropped_*` of
    /// `$ws.stats`, summed over the sessions (only those that are not 0).
    pub provider: Vec<(String, u64)>,
}

impl Outcome {
    pub fn losses(&self) -> usize {
        self.phases.iter().map(Counts::losses).sum::<usize>()
            + self.wrong
            + self
                .provider
                .iter()
                .map(|(_, n)| *n as usize)
                .sum::<usize>()
    }

    pub fn print(&self) {
        println!(
            "{:<10} {:>9} {:>9} {:>9} {:>7} {:>10} {:>8} {:>10}",
            "phase", "in flight", "calls", "per s", "failed", "unanswered", "missing", "duplicated"
        );
        for c in &self.phases {
            println!(
                "{:<10} {:>9} {:>9} {:>9.0} {:>7} {:>10} {:>8} {:>10}",
                c.phase,
                c.in_flight,
                c.calls,
                c.calls as f64 / c.seconds,
                c.failed,
                c.unanswered,
                c.missing,
                c.duplicated
            );
            if let Some(e) = &c.first_error {
                println!("  first error: {e}");
            }
        }
        println!("wrong subject or body: {}", self.wrong);
        let timeouts = self
            .provider
            .iter()
            .find(|(k, _)| k == "delivery_timeouts")
            .map_or(0, |(_, n)| *n);
        println!("delivery_timeouts: {timeouts}");
        let others: Vec<_> = self
            .provider
            .iter()
            .filter(|(k, _)| k != "delivery_timeouts")
            .collect();
        println!("other loss counters of $ws.stats (call_errors, delivery_errors, dropped_*) not 0: {others:?}");
    }
}

/// The deadline of one call: past it, the call counts as unanswered.
const CALL_DEADLINE: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(120);
/// Four times nats-server's default `max_payload`, and room for the 1.5 MiB bodies.
const MAX_MESSAGE_BYTES: &str = "4194304";

/// Runs the loss benchmark with `calls` calls (half publishes, half requests; a quarter of each
/// one at a time, the rest 64 in flight) and `calls` deliveries (an eighth one at a time, the
/// rest with `max_in_flight = 64`).
pub async fn run(calls: usize) -> Outcome {
    let nats = NatsServer::start().await;
    let provider = ProviderProcess::start(
        &nats,
        ProviderOptions {
            log_level: Some(wasmcloud_provider_sdk::core::logging::Level::Warn),
            ..Default::default()
        },
    )
    .await;
    let component = PlayedComponent::start(&provider, &nats.url, "loss").await;
    let deliveries = calls;
    let tally = Tally::new(calls + deliveries);
    component.set_behaviour(Behaviour {
        count_only: true,
        on_message: Some(Arc::new({
            let tally = Arc::clone(&tally);
            move |msg| tally.record(&msg.subject, &msg.body)
        })),
        ..Default::default()
    });
    let server = LossServer::start(Arc::clone(&tally)).await;
    for (link, limit) in [("one", "1"), ("many", "64")] {
        let uri = server.uri(link);
        let config = [
            ("uri", uri.as_str()),
            ("max_message_bytes", MAX_MESSAGE_BYTES),
            ("max_in_flight", limit),
            ("max_pending", "4096"),
        ];
        provider
            .put_link(&provider.consumer_link("loss", link, &config))
            .await;
        provider
            .put_link(&provider.handler_link("loss", link, &config))
            .await;
        server.connected(link, WAIT).await;
    }
    // The consumer link is served once a publish through it succeeds (its subject has no id of
    // this run: the tally's `wrong` is reset after it).
    component
        .publish_when_ready("many", "warm", &b""[..], WAIT)
        .await;
    tally.wrong.store(0, Ordering::Relaxed);

    let mut phases = Vec::new();
    let half = calls / 2;
    let quarter = half / 4;
    let mut next = 0;
    let mut take = |n: usize| {
        let ids = next..next + n;
        next += n;
        ids
    };
    for (kind, in_flight, ids) in [
        ("publish", 1, take(quarter)),
        ("publish", 64, take(half - quarter)),
        ("request", 1, take(quarter)),
        ("request", 64, take(calls - half - quarter)),
    ] {
        phases.push(calls_phase(&component, &tally, kind, in_flight, ids).await);
    }
    let one = deliveries / 8;
    for (link, in_flight, ids) in [("one", 1, take(one)), ("many", 64, take(deliveries - one))] {
        phases.push(delivery_phase(&server, &tally, link, in_flight, ids).await);
    }
    let mut provider_counts = Vec::new();
    for link in ["one", "many"] {
        let stats = component.stats(link).await;
        count_losses(&stats, &mut provider_counts);
    }
    Outcome {
        phases,
        wrong: tally.wrong.load(Ordering::Relaxed),
        provider: provider_counts,
    }
}

/// Adds up the counters of `$ws.stats` that stand for a loss (only those not 0).
fn count_losses(stats: &serde_json::Value, into: &mut Vec<(String, u64)>) {
    let mut add = |name: &str, n: u64| {
        if n == 0 {
            return;
        }
        match into.iter_mut().find(|(k, _)| k == name) {
            Some((_, total)) => *total += n,
            None => into.push((name.to_string(), n)),
        }
    };
    for session in stats["sessions"].as_array().into_iter().flatten() {
        let Some(fields) = session.as_object() else {
            continue;
        };
        for (name, value) in fields {
            let counted = name == "delivery_timeouts"
                || name == "delivery_errors"
                || name == "call_errors"
                || name.starts_with("dropped_");
            if counted {
                add(name, value.as_u64().unwrap_or_default());
            }
        }
    }
}

async fn calls_phase(
    component: &PlayedComponent,
    tally: &Tally,
    kind: &str,
    in_flight: usize,
    ids: Range<usize>,
) -> Counts {
    let before = tally.arrivals.get();
    let started = Instant::now();
    let outcomes: Vec<Result<(), (bool, String)>> = futures::stream::iter(ids.clone())
        .map(|id| async move {
            let subject = format!("loss.{kind}.{id}");
            let call = async {
                if kind == "publish" {
                    component
                        .publish("many", &subject, body_of(id), None)
                        .await
                        .map(|r| r.map(|()| None))
                } else {
                    component
                        .request("many", &subject, body_of(id), 9_000)
                        .await
                        .map(|r| r.map(Some))
                }
            };
            match tokio::time::timeout(CALL_DEADLINE, call).await {
                Err(_) => Err((
                    true,
                    format!("{subject}: no answer within {CALL_DEADLINE:?}"),
                )),
                Ok(Err(e)) if format!("{e:#}").contains("got no answer") => {
                    Err((true, format!("{subject}: {e:#}")))
                }
                Ok(Err(e)) => Err((false, format!("{subject}: {e:#}"))),
                Ok(Ok(Err(e))) => Err((false, format!("{subject}: {e}"))),
                Ok(Ok(Ok(Some(reply)))) if !is_body_of(id, &reply.body) => Err((
                    false,
                    format!(
                        "{subject}: the answer has {} bytes, not its body's {}",
                        reply.body.len(),
                        size_of(id)
                    ),
                )),
                Ok(Ok(Ok(_))) => Ok(()),
            }
        })
        .buffer_unordered(in_flight)
        .collect()
        .await;
    let seconds = started.elapsed().as_secs_f64();
    let mut counts = Counts {
        phase: kind.to_string(),
        calls: ids.len(),
        in_flight,
        seconds,
        ..Default::default()
    };
    for outcome in outcomes {
        if let Err((unanswered, e)) = outcome {
            if unanswered {
                counts.unanswered += 1;
            } else {
                counts.failed += 1;
            }
            counts.first_error.get_or_insert(e);
        }
    }
    // What the server has not seen yet is on its way: wait for it (a lost one shows as missing).
    settle(tally, before + ids.len()).await;
    counts.missing = tally.missing(ids.clone());
    counts.duplicated = tally.duplicated(ids);
    counts
}

async fn delivery_phase(
    server: &LossServer,
    tally: &Tally,
    link: &str,
    in_flight: usize,
    ids: Range<usize>,
) -> Counts {
    let before = tally.arrivals.get();
    let started = Instant::now();
    server.push(link, ids.clone()).await;
    settle(tally, before + ids.len()).await;
    Counts {
        phase: "delivery".to_string(),
        calls: ids.len(),
        in_flight,
        seconds: started.elapsed().as_secs_f64(),
        missing: tally.missing(ids.clone()),
        duplicated: tally.duplicated(ids),
        ..Default::default()
    }
}

/// Waits until `expected` arrivals were tallied, or nothing arrived for 15 s (longer than
/// `delivery_timeout_ms`, so a call that timed out has let the next ones through).
async fn settle(tally: &Tally, expected: usize) {
    let mut last = tally.arrivals.get();
    while last < expected {
        let now = tally
            .arrivals
            .wait_for(expected, Duration::from_secs(15))
            .await;
        if now == last {
            return;
        }
        last = now;
    }
}
