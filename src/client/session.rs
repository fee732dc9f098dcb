//! A session: one WebSocket connection, owned by one task.
//!
//! The task's life is explicit in [`SocketTask::run`]: an attempt (in the background, so putting
//! a link never waits for the network), then `drive` while the connection lasts, then `lost`,
//! the backoff of [`Attempts`], and the next attempt; until the session is closed or gives up.
//! While a connection is open, frames queued by `publish` are written in batches (fed, then
//! flushed once), and incoming data frames are decoded, matched against waiting requests, and
//! handed to the delivery task with a [`Slot`] of the session's [`Budget`] (`max_in_flight`
//! messages, `max_in_flight_bytes` of bodies). With no slot left the task reads ahead a bounded
//! number of messages (so replies still get through), then stops reading, so a slow component
//! pushes back on the server through TCP instead of growing a buffer.
//!
//! What the connection's futures hold when it ends is kept outside them and accounted for: the
//! frames not yet written go out on the next connection, acknowledged envelopes handed to the
//! socket are sent again, requests fail with the connection that carried them, and messages read
//! ahead are still delivered (only when the session closes are those left counted as
//! `dropped_on_close` and reported).
//!
//! This module and [`crate::client::socket`] are the only ones that touch the WebSocket library's types.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt as _, StreamExt as _};
use rand::Rng as _;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use wasmcloud_provider_sdk::wasmcloud_tracing::KeyValue;
use yawc::close::CloseCode;
use yawc::{Frame as WsFrame, OpCode, WebSocketError};

use crate::bindings::wasmcloud::messaging::types::BrokerMessage;
use crate::client::acks::Acks;
use crate::client::socket::{self, Socket};
use crate::config::{Compression, ConnectionConfig, Format};
use crate::delivery::budget::{Budget, Held, Slot};
use crate::delivery::{self, Inbound};
use crate::envelope::{Codec, Frame, Incoming};
use crate::identity::{token, SessionKey};
use crate::lattice::lease::Fence;
use crate::requests::{Pending, Routed};
use crate::stats::{self, SessionStats, Totals};
use crate::websocket::describe;

/// Most frames written before one flush.
const WRITE_BATCH: usize = 64;
/// How long a Close frame may take to leave when a session ends.
const CLOSE_GRACE: Duration = Duration::from_millis(100);
/// The reason of the Close frame sent when a link goes or the provider stops.
const GOODBYE: &str = "link deleted or provider stopped";
/// The reason of the Close frame sent when another replica takes the session over.
const HANDOVER: &str = "another replica of the provider takes this session over";
/// A connection that stayed open this long resets the backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// Another replica holds the connection (`replicas = one`); this one stands by.
    Standby,
    Connecting,
    Open,
    Reconnecting,
    Closed,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Standby => "standby",
            SessionState::Connecting => "connecting",
            SessionState::Open => "open",
            SessionState::Reconnecting => "reconnecting",
            SessionState::Closed => "closed",
        }
    }
}

/// A frame waiting in the send queue, with the caller waiting for it to be written.
struct Outgoing {
    frame: Frame,
    deadline: Instant,
    /// The caller waiting for the write; `None` when nobody waits (an acknowledgement).
    done: Option<oneshot::Sender<Result<(), String>>>,
    /// What else waits on this frame once it is handed to the socket.
    tracked: Tracked,
}

/// What waits on an outgoing frame besides its caller: marked when the frame is handed to the
/// socket, so that a connection lost mid-write neither forgets an acknowledged envelope nor
/// fails a request whose frame never left.
#[derive(Debug, Clone)]
enum Tracked {
    Nothing,
    /// An envelope of `ack = true` with this id: sent again after a reconnect until acked.
    Ack(String),
    /// A request waiting on this inbox: failed when its connection is lost, not before.
    Request(String),
}

/// Sends `{"ack": "<id>"}` for incoming envelopes the handler accepted (`ack = true`).
#[derive(Clone)]
struct Acker {
    session_id: String,
    codec: Codec,
    queue: mpsc::Sender<Outgoing>,
    send_timeout: Duration,
}

impl Acker {
    /// Queues the acknowledgement without waiting; when it cannot be sent the server resends the
    /// envelope, which at-least-once delivery allows.
    fn ack(&self, id: &str) {
        let outgoing = Outgoing {
            frame: self.codec.encode_ack(id),
            deadline: Instant::now() + self.send_timeout,
            done: None,
            tracked: Tracked::Nothing,
        };
        if self.queue.try_send(outgoing).is_err() {
            warn!(session = %self.session_id, id, "could not queue the ack (send queue full or closed); the server may send the message again");
        }
    }
}

/// The handle to a session shared by its links and the provider. Cheap to look up; the socket
/// itself lives in the session's task.
pub struct Session {
    pub id: String,
    pub key: SessionKey,
    pub config: ConnectionConfig,
    pub stats: Arc<SessionStats>,
    codec: Codec,
    queue: mpsc::Sender<Outgoing>,
    state: watch::Receiver<SessionState>,
    connected_at: Arc<Mutex<Option<SystemTime>>>,
    /// Since when the session has had no connection: its start, or the loss of the last one;
    /// `None` while connected.
    down_since: Arc<Mutex<Option<Instant>>>,
    /// The attributes of the session's OpenTelemetry measurements.
    pub metric_attributes: Vec<KeyValue>,
    handler_linked: Arc<AtomicBool>,
    pending: Pending,
    acks: Acks,
    /// The failed attempts after which the session gave up; 0 while it has not.
    gave_up: Arc<AtomicU32>,
    /// `max_publish_rate`: the turns of outgoing messages, when set.
    rate: Option<RateLimiter>,
    cancel: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// With `replicas = one`: whether this replica holds the session's lease now.
    pub fence: Option<Fence>,
}

type RateLimiter = governor::DefaultDirectRateLimiter;

/// A bucket of one: a message every 1/`per_second` s, never a burst (servers that ban clients
/// for bursts count messages in short windows).
fn rate_limiter(per_second: u32) -> Option<RateLimiter> {
    let rate = std::num::NonZeroU32::new(per_second)?;
    let quota = governor::Quota::per_second(rate).allow_burst(std::num::NonZeroU32::MIN);
    Some(governor::RateLimiter::direct(quota))
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("key", &self.key)
            .field("uri", &self.config.uri)
            .field("state", &self.state())
            .finish()
    }
}

impl Session {
    /// Creates the session and starts its tasks; the connection is made in the background, once
    /// `fence` holds when there is one (`replicas = one`: this replica owns the session). `id` is
    /// the lattice-wide id of a replicated session; a fresh one when `None`.
    pub fn start(
        key: SessionKey,
        config: ConnectionConfig,
        clients: delivery::HandlerClients,
        handler_linked: bool,
        totals: &Totals,
        replicated: Option<(String, Fence)>,
    ) -> Arc<Self> {
        let (id, fence) = match replicated {
            Some((id, fence)) => (id, Some(fence)),
            None => (new_session_id(), None),
        };
        let stats = Arc::new(SessionStats::for_session(totals));
        let codec = Codec::new(config.format, config.raw_subject.clone());
        let (queue, queue_rx) = mpsc::channel(config.max_pending);
        let (state_tx, state) = watch::channel(SessionState::Connecting);
        // Set before the tasks start: a frame may arrive the moment the connection is up.
        let handler_linked = Arc::new(AtomicBool::new(handler_linked));
        let cancel = CancellationToken::new();
        // Every delivery holds a slot, which takes one of `max_in_flight` permits, so the channel
        // to the delivery task can never hold more than `max_in_flight` messages.
        let budget = Budget::new(config.max_in_flight, config.max_in_flight_bytes);
        let (inbound_tx, inbound_rx) = mpsc::channel(config.max_in_flight);
        let connected_at = Arc::new(Mutex::new(None));
        let down_since = Arc::new(Mutex::new(Some(Instant::now())));
        let pending = Pending::new(&config.inbox_prefix, &id);
        let gave_up = Arc::new(AtomicU32::new(0));
        let acks = Acks::default();
        let acker = config.ack.then(|| {
            let acker = Acker {
                session_id: id.clone(),
                codec: codec.clone(),
                queue: queue.clone(),
                send_timeout: config.send_timeout,
            };
            Arc::new(move |id: &str| acker.ack(id)) as delivery::Ack
        });

        let delivery = tokio::spawn(delivery::run(
            delivery::Target {
                session_id: id.clone(),
                key: key.clone(),
                handler_linked: Arc::clone(&handler_linked),
                acker,
                stats: Arc::clone(&stats),
                clients,
                timeout: config.delivery_timeout,
                fence: fence.clone(),
            },
            inbound_rx,
            cancel.clone(),
        ));
        let socket = tokio::spawn(
            SocketTask {
                id: id.clone(),
                key: key.clone(),
                config: config.clone(),
                codec: codec.clone(),
                stats: Arc::clone(&stats),
                state: state_tx,
                connected_at: Arc::clone(&connected_at),
                down_since: Arc::clone(&down_since),
                cancel: cancel.clone(),
                budget,
                inbound: inbound_tx,
                pending: pending.clone(),
                gave_up: Arc::clone(&gave_up),
                acks: acks.clone(),
                fence: fence.clone(),
            }
            .run(queue_rx),
        );
        if fence.is_some() {
            info!(session = %id, component = %key.component, link_name = %key.link_name, uri = %config.uri, "session created; it connects when this replica owns it (replicas = one)");
        } else {
            info!(session = %id, component = %key.component, link_name = %key.link_name, uri = %config.uri, "session created; connecting");
        }
        let metric_attributes = crate::metrics::attributes(&id, &key);
        let rate = rate_limiter(config.max_publish_rate);
        Arc::new(Session {
            id,
            key,
            config,
            stats,
            codec,
            queue,
            state,
            connected_at,
            down_since,
            metric_attributes,
            handler_linked,
            pending,
            acks,
            gave_up,
            rate,
            cancel,
            tasks: Mutex::new(vec![delivery, socket]),
            fence,
        })
    }

    pub fn state(&self) -> SessionState {
        *self.state.borrow()
    }

    /// How many of `sessions` have an open connection.
    pub fn count_open(sessions: &[Arc<Session>]) -> usize {
        sessions
            .iter()
            .filter(|s| s.state() == SessionState::Open)
            .count()
    }

    /// When the current (or last) connection was made; `None` before the first one.
    pub fn connected_at(&self) -> Option<SystemTime> {
        *self.connected_at.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long the session has been without a connection (since it started, or since it lost
    /// its last one, whether it still tries or gave up); `None` while connected.
    pub fn down_for(&self) -> Option<Duration> {
        self.down_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|since| since.elapsed())
    }

    /// Whether incoming messages go to the component's handler (a handler link exists).
    pub fn set_handler_linked(&self, linked: bool) {
        self.handler_linked.store(linked, Ordering::Relaxed);
    }

    /// Sends `msg` as one frame; Ok once the frame is written to the socket.
    pub async fn publish(&self, msg: &BrokerMessage) -> Result<(), String> {
        let deadline = Instant::now() + self.config.send_timeout;
        let result = if self.config.ack {
            self.publish_acknowledged(msg, deadline).await
        } else {
            match self.encode(msg, None) {
                Ok(frame) => self.send(frame, deadline, Tracked::Nothing).await,
                Err(e) => Err(e),
            }
        };
        match &result {
            Ok(()) => stats::bump(&self.stats.published),
            Err(_) => stats::bump(&self.stats.publish_errors),
        }
        result
    }

    /// `publish` with `ack = true`: Ok once the server acknowledged the envelope's id. The wait
    /// for the connection, the write and the ack share `send_timeout_ms`; a connection lost
    /// meanwhile makes the envelope go out again after the reconnect.
    async fn publish_acknowledged(
        &self,
        msg: &BrokerMessage,
        deadline: Instant,
    ) -> Result<(), String> {
        let id = Acks::new_id(&self.id);
        let frame = self.encode(msg, Some(&id))?;
        let mut ticket = self.acks.register(id.clone(), frame.clone());
        let no_ack = || {
            format!(
                "no ack for {id} within {} ms (send_timeout_ms); the message is not sent again",
                self.config.send_timeout.as_millis()
            )
        };
        match self.send(frame, deadline, Tracked::Ack(id.clone())).await {
            Ok(()) => {}
            Err(_) if Instant::now() >= deadline => return Err(no_ack()),
            // Handed to a socket whose connection then broke: it goes out again after the
            // reconnect, so the ack may still come.
            Err(_) if self.acks.is_written(&id) => {}
            Err(e) => return Err(e),
        }
        match tokio::time::timeout_at(deadline, &mut ticket.acked).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(no_ack()),
        }
    }

    /// Sends `subject`/`body` with a fresh inbox as `reply_to` and waits (at most `timeout`) for
    /// the first envelope on this session addressed to that inbox.
    pub async fn request(
        &self,
        subject: &str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<BrokerMessage, String> {
        stats::bump(&self.stats.requests);
        if self.config.format == Format::Raw {
            return Err(format!(
                "request needs format json or msgpack, but link {} uses format {} (a raw frame has no reply_to)",
                self.key.link_name,
                self.config.format.as_str()
            ));
        }
        let started = Instant::now();
        let deadline = started + timeout;
        // Registered before the frame leaves: the reply may come back at once.
        let ticket = self.pending.register();
        let msg = BrokerMessage {
            subject: subject.to_string(),
            body,
            reply_to: Some(ticket.inbox.clone()),
        };
        let frame = self.encode(&msg, None)?;
        self.send(
            frame,
            deadline.min(started + self.config.send_timeout),
            Tracked::Request(ticket.inbox.clone()),
        )
        .await?;
        let mut ticket = ticket;
        match tokio::time::timeout_at(deadline, &mut ticket.reply).await {
            Ok(Ok(Ok(reply))) => {
                let took = started.elapsed();
                self.stats.request_latency.record(took);
                crate::metrics::record_request_latency(took, &self.metric_attributes);
                Ok(reply)
            }
            Ok(Ok(Err(reason))) => Err(format!("request to {subject} failed: {reason}")),
            Ok(Err(_)) => Err(format!(
                "request to {subject} failed: session {} closed",
                self.id
            )),
            Err(_) => {
                stats::bump(&self.stats.request_timeouts);
                Err(format!(
                    "request to {subject} timed out after {} ms",
                    timeout.as_millis()
                ))
            }
        }
    }

    /// How many requests wait for their replies now.
    pub fn pending_requests(&self) -> usize {
        self.pending.len()
    }

    /// The frame of `msg`, refused when it is larger than `max_message_bytes`.
    fn encode(&self, msg: &BrokerMessage, id: Option<&str>) -> Result<Frame, String> {
        let frame = self.codec.encode(msg, id);
        if frame.len() > self.config.max_message_bytes {
            return Err(format!(
                "message to {} is {} bytes on the wire, more than max_message_bytes ({}) of session {}; nothing was sent",
                msg.subject,
                frame.len(),
                self.config.max_message_bytes,
                self.id
            ));
        }
        Ok(frame)
    }

    /// Waits for the next turn under `max_publish_rate`, failing at once when it would come
    /// after `deadline`.
    async fn turn(&self, deadline: Instant) -> Result<(), String> {
        use governor::clock::Clock as _;
        let Some(rate) = &self.rate else {
            return Ok(());
        };
        let mut waited = false;
        loop {
            let Err(not_until) = rate.check() else {
                return Ok(());
            };
            if !waited {
                stats::bump(&self.stats.publish_rate_waits);
                waited = true;
            }
            let wait = not_until.wait_time_from(rate.clock().now());
            if Instant::now() + wait > deadline {
                return Err(format!(
                    "no turn under max_publish_rate ({}/s) of session {} within {} ms (send_timeout_ms): too many messages are waiting to go out; nothing was sent",
                    self.config.max_publish_rate,
                    self.id,
                    self.config.send_timeout.as_millis()
                ));
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Waits for its turn (`max_publish_rate`), queues a frame and waits (until `deadline`)
    /// until it is written.
    async fn send(&self, frame: Frame, deadline: Instant, tracked: Tracked) -> Result<(), String> {
        let attempts = self.gave_up.load(Ordering::Relaxed);
        if attempts > 0 {
            return Err(format!(
                "session {} gave up after {attempts} attempts",
                self.id
            ));
        }
        self.turn(deadline).await?;
        let (done, written) = oneshot::channel();
        let outgoing = Outgoing {
            frame,
            deadline,
            done: Some(done),
            tracked,
        };
        if let Err(e) = self.queue.try_send(outgoing) {
            return Err(match e {
                mpsc::error::TrySendError::Full(_) => format!(
                    "send queue of session {} ({}) is full (max_pending = {}); the message was not sent",
                    self.id, self.config.uri, self.config.max_pending
                ),
                mpsc::error::TrySendError::Closed(_) => {
                    format!("session {} ({}) is closed", self.id, self.config.uri)
                }
            });
        }
        match tokio::time::timeout_at(deadline, written).await {
            Ok(Ok(result)) => result,
            // The connection broke while the frame was being written (it may or may not have
            // left), or the session closed with it still queued.
            Ok(Err(_)) => Err(format!(
                "session {} ({}) lost its connection or closed before the message was confirmed written; it may not have reached the server",
                self.id, self.config.uri
            )),
            Err(_) => {
                let ms = self.config.send_timeout.as_millis();
                Err(match self.state() {
                    SessionState::Open => format!(
                        "writing to {} did not complete within {ms} ms (send_timeout_ms) on session {}",
                        self.config.uri, self.id
                    ),
                    state => format!(
                        "session {} is not connected to {} (state {}); gave up after {ms} ms (send_timeout_ms)",
                        self.id,
                        self.config.uri,
                        state.as_str()
                    ),
                })
            }
        }
    }

    /// Starts closing: a Close frame is sent and every task of the session ends.
    pub fn close(&self) {
        self.cancel.cancel();
    }

    /// Waits (at most `limit`) for the session's tasks to end after [`Session::close`].
    pub async fn wait_closed(&self, limit: Duration) {
        let tasks: Vec<_> =
            std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        let all = futures::future::join_all(tasks);
        if tokio::time::timeout(limit, all).await.is_err() {
            debug!(session = %self.id, "session tasks still running at the close deadline");
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // A forgotten session never keeps its socket open.
        self.cancel.cancel();
    }
}

/// A session id: unique, `[A-Za-z0-9_-]` only (so it never contains a `.`).
fn new_session_id() -> String {
    format!("ws_{}", token(16))
}

/// The backoff before reconnect attempt `attempt` (1-based): d = min(initial x 2^(n-1), max),
/// drawn uniformly from [d/2, d] so that many sessions do not retry in step.
fn backoff(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    let d = initial.saturating_mul(1 << exp).min(max);
    let half = d / 2;
    half + rand::rng().random_range(Duration::ZERO..=d - half)
}

/// The bookkeeping of reconnects: the backoff's step and the consecutive failed attempts that
/// `reconnect_max_attempts` counts. A failed attempt is a connect that failed, or a connection
/// the server closed before it had been open [`HEALTHY_AFTER`] (a server that accepts the
/// upgrade and then refuses the credentials); a connection open that long resets both.
#[derive(Debug)]
struct Attempts {
    /// Retries since the last healthy connection: the backoff's n.
    retries: u32,
    /// Consecutive failed attempts.
    failed: u32,
    /// `reconnect_max_attempts`; 0 = forever.
    max: u32,
}

/// What to do after a failed attempt.
#[derive(Debug, PartialEq, Eq)]
enum AfterFailure {
    /// Retry; `first` is the first failure of a run (the one that is logged at warn).
    Retry { first: bool },
    /// `reconnect_max_attempts` reached after this many failed attempts.
    GiveUp(u32),
}

impl Attempts {
    fn new(max: u32) -> Self {
        Attempts {
            retries: 0,
            failed: 0,
            max,
        }
    }

    /// A connection attempt failed.
    fn failed(&mut self) -> AfterFailure {
        self.failed += 1;
        if self.max > 0 && self.failed >= self.max {
            AfterFailure::GiveUp(self.failed)
        } else {
            AfterFailure::Retry {
                first: self.failed == 1,
            }
        }
    }

    /// A connection that had been open for `lasted` was lost; `by_server` when the server closed
    /// it. Returns the verdict when the loss counts as a failed attempt.
    fn lost(&mut self, lasted: Duration, by_server: bool) -> Option<AfterFailure> {
        if lasted >= HEALTHY_AFTER {
            self.retries = 0;
            self.failed = 0;
            None
        } else if by_server {
            Some(self.failed())
        } else {
            None
        }
    }

    /// The wait before the next attempt.
    fn next_delay(&mut self, initial: Duration, max: Duration) -> Duration {
        self.retries = self.retries.saturating_add(1);
        backoff(self.retries, initial, max)
    }
}

/// How one connection attempt went.
enum Attempt {
    /// Boxed: an open socket is large, and moves once per connection.
    Opened(Box<socket::Opened>),
    Failed(String),
    Cancelled,
    /// This replica lost the session's lease meanwhile.
    Handover,
}

/// How the futures of one connection ended: with a Close frame to send first, or not.
enum Outcome {
    Goodbye(CloseCode, &'static str, End),
    /// The library refused what the server sent and queued a Close frame of its own.
    Flush(End),
    Done(End),
}

/// Why one connection ended.
enum End {
    /// The session was closed on purpose.
    Cancelled,
    /// This replica lost the session's lease: another one takes it over.
    Handover,
    /// The connection failed; reconnect. `by_server`: the server closed it (a Close frame or the
    /// end of the stream), rather than an error or the keepalive on our side.
    Lost { reason: String, by_server: bool },
}

impl End {
    fn lost(reason: impl Into<String>) -> Self {
        End::Lost {
            reason: reason.into(),
            by_server: false,
        }
    }
}

/// The task that owns the socket.
struct SocketTask {
    id: String,
    key: SessionKey,
    config: ConnectionConfig,
    codec: Codec,
    stats: Arc<SessionStats>,
    state: watch::Sender<SessionState>,
    connected_at: Arc<Mutex<Option<SystemTime>>>,
    down_since: Arc<Mutex<Option<Instant>>>,
    cancel: CancellationToken,
    budget: Budget,
    inbound: mpsc::Sender<Inbound>,
    pending: Pending,
    gave_up: Arc<AtomicU32>,
    acks: Acks,
    fence: Option<Fence>,
}

/// Resolves when `fence` stops holding; never without a fence (`replicas = all`).
async fn fence_lost(fence: &Option<Fence>) {
    match fence {
        Some(fence) => fence.lost().await,
        None => std::future::pending().await,
    }
}

impl SocketTask {
    /// The session's life: attempt, drive the connection while it lasts, wait the backoff, again;
    /// until the session is closed or gives up. Frames taken from the queue but not yet written
    /// (`outbox`) outlive a lost connection and go out on the next one.
    async fn run(self, mut queue: mpsc::Receiver<Outgoing>) {
        let mut attempts = Attempts::new(self.config.reconnect_max_attempts);
        let mut outbox = Vec::with_capacity(WRITE_BATCH);
        // Messages read ahead but not yet handed to delivery: they outlive a lost connection
        // (delivered as permits free up, while the session reconnects).
        let mut held = self.budget.held();
        let mut ever_connected = false;
        loop {
            if let Some(fence) = self.fence.as_ref().filter(|f| !f.holds()) {
                self.stand_by(&mut queue, &mut outbox, &mut held);
                tokio::select! {
                    () = self.cancel.cancelled() => break,
                    () = fence.owned() => {}
                }
                // Counted from now: the time as a standby is not time without a connection.
                *self.down_since.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                attempts = Attempts::new(self.config.reconnect_max_attempts);
            }
            self.state.send_replace(if ever_connected {
                SessionState::Reconnecting
            } else {
                SessionState::Connecting
            });
            let failure = match self.attempt(&mut held).await {
                Attempt::Cancelled => break,
                Attempt::Handover => continue,
                Attempt::Failed(error) => Some((attempts.failed(), error)),
                Attempt::Opened(opened) => {
                    self.opened(&opened, ever_connected);
                    ever_connected = true;
                    let since = Instant::now();
                    match self
                        .drive(opened.socket, &mut queue, &mut outbox, &mut held)
                        .await
                    {
                        End::Cancelled => break,
                        End::Handover => continue,
                        End::Lost { reason, by_server } => {
                            self.lost(&reason);
                            attempts
                                .lost(since.elapsed(), by_server)
                                .map(|verdict| (verdict, reason))
                        }
                    }
                }
            };
            match failure {
                Some((AfterFailure::GiveUp(n), error)) => {
                    self.gave_up.store(n, Ordering::Relaxed);
                    warn!(session = %self.id, component = %self.key.component, link_name = %self.key.link_name, uri = %self.config.uri, %error, attempts = n, "gave up connecting (reconnect_max_attempts); the session is closed");
                    break;
                }
                // Logged once per run of failures, not on every retry.
                Some((AfterFailure::Retry { first: true }, error)) => {
                    warn!(session = %self.id, component = %self.key.component, link_name = %self.key.link_name, uri = %self.config.uri, %error, "connection attempt failed; retrying with backoff")
                }
                Some((AfterFailure::Retry { first: false }, error)) => {
                    debug!(session = %self.id, attempt = attempts.failed, %error, "connection attempt failed")
                }
                None => {}
            }
            let delay = attempts.next_delay(
                self.config.reconnect_initial_delay,
                self.config.reconnect_max_delay,
            );
            tokio::select! {
                () = self.cancel.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
                () = self.drain_held(&mut held) => {}
                () = fence_lost(&self.fence) => {}
            }
        }
        delivery::dropped_on_close(&self.stats, &self.id, &self.key, held.len());
        let attempts = self.gave_up.load(Ordering::Relaxed);
        self.pending.fail_all(&if attempts > 0 {
            format!("session {} gave up after {attempts} attempts", self.id)
        } else {
            format!("session {} was closed", self.id)
        });
        self.state.send_replace(SessionState::Closed);
        debug!(session = %self.id, "session task ended");
    }

    /// This replica does not own the session (any more): what it holds for the connection is
    /// given up, with errors for the callers and a count of what was read but not delivered.
    fn stand_by(
        &self,
        queue: &mut mpsc::Receiver<Outgoing>,
        outbox: &mut Vec<Outgoing>,
        held: &mut Held,
    ) {
        self.state.send_replace(SessionState::Standby);
        *self.down_since.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let reason = "this replica does not hold the session's lease (another replica owns it)";
        while let Ok(outgoing) = queue.try_recv() {
            outbox.push(outgoing);
        }
        for outgoing in outbox.drain(..) {
            if let Some(done) = outgoing.done {
                let _ = done.send(Err(format!(
                    "session {}: {reason}; the message was not sent",
                    self.id
                )));
            }
        }
        self.pending
            .fail_all(&format!("session {}: {reason}", self.id));
        let mut dropped = 0;
        while held.pop_front().is_some() {
            dropped += 1;
        }
        if dropped > 0 {
            stats::add(&self.stats.dropped_on_close, dropped);
            warn!(session = %self.id, component = %self.key.component, link_name = %self.key.link_name, dropped, "this replica lost the session's lease with messages read but not yet delivered; they are dropped (counted as dropped_on_close)");
        }
    }

    /// Hands messages read ahead on a connection that is gone to delivery as permits free up,
    /// in order; never ends (it waits forever once none is left), so it runs beside an attempt
    /// or a backoff.
    async fn drain_held(&self, held: &mut Held) {
        loop {
            let Some(front) = held.front() else {
                std::future::pending::<()>().await;
                continue;
            };
            // The semaphores are never closed.
            if let Some(slot) = self.budget.take(front).await {
                if let Some(inbound) = held.pop_front() {
                    self.deliver(inbound, slot);
                }
            }
        }
    }

    /// One connection attempt, bounded by `connect_timeout_sec`, given up when the session is
    /// closed meanwhile; messages read ahead on an earlier connection keep being delivered.
    async fn attempt(&self, held: &mut Held) -> Attempt {
        let connect =
            tokio::time::timeout(self.config.connect_timeout, socket::connect(&self.config));
        tokio::pin!(connect);
        let result = tokio::select! {
            () = self.cancel.cancelled() => {
                // A handshake under way gets a moment to finish, so that the server, which
                // may already count the connection as open, still sees a Close frame.
                if let Ok(Ok(Ok(opened))) = tokio::time::timeout(CLOSE_GRACE, &mut connect).await {
                    let (mut sink, _) = opened.socket.split();
                    self.say_goodbye(&mut sink, CloseCode::Normal, GOODBYE).await;
                }
                return Attempt::Cancelled;
            }
            r = &mut connect => r,
            () = fence_lost(&self.fence) => return Attempt::Handover,
            // Never ends: it hands held messages over while the attempt runs.
            () = self.drain_held(held) => return Attempt::Failed("the read-ahead drain ended".into()),
        };
        match result {
            Ok(Ok(opened)) => Attempt::Opened(Box::new(opened)),
            Ok(Err(e)) => Attempt::Failed(e),
            Err(_) => Attempt::Failed(format!(
                "no handshake within {} s (connect_timeout_sec)",
                self.config.connect_timeout.as_secs()
            )),
        }
    }

    /// Bookkeeping and logs of a new connection.
    fn opened(&self, opened: &socket::Opened, reconnect: bool) {
        stats::bump(&self.stats.connects);
        if reconnect {
            stats::bump(&self.stats.reconnects);
        }
        *self.connected_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(SystemTime::now());
        *self.down_since.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.state.send_replace(SessionState::Open);
        info!(session = %self.id, component = %self.key.component, link_name = %self.key.link_name, uri = %self.config.uri, deflate = opened.deflate, "connected");
        if self.config.compression == Compression::Deflate && !opened.deflate {
            info!(session = %self.id, component = %self.key.component, link_name = %self.key.link_name, uri = %self.config.uri, "the server declined permessage-deflate; messages go uncompressed");
        }
    }

    /// Bookkeeping and logs of a lost connection: the requests whose frames left on it cannot
    /// get their replies any more; those still queued go out on the next connection.
    fn lost(&self, reason: &str) {
        *self.down_since.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        self.pending.fail_written(&format!(
            "the connection to {} was lost before the reply came ({reason})",
            self.config.uri
        ));
        warn!(session = %self.id, component = %self.key.component, link_name = %self.key.link_name, uri = %self.config.uri, %reason, "disconnected; reconnecting");
    }

    /// Runs one open connection until it ends. Reading, writing and the keepalive watchdog are
    /// three futures polled side by side, so a write stuck on a server that stopped reading
    /// neither stops frames from being read nor hides a dead connection. What each loop holds
    /// when another one ends the connection is kept outside it, in `run`: the frames not yet
    /// written (`outbox`, for the next connection) and the messages read ahead but not yet
    /// handed to delivery (`held`, delivered as permits free up, even after the connection is
    /// gone; dropped and counted only when the session closes).
    async fn drive(
        &self,
        socket: Socket,
        queue: &mut mpsc::Receiver<Outgoing>,
        outbox: &mut Vec<Outgoing>,
        held: &mut Held,
    ) -> End {
        let (mut sink, mut stream) = socket.split();
        let last_seen = Mutex::new(Instant::now());
        let paused = AtomicBool::new(false);
        let outcome = tokio::select! {
            () = self.cancel.cancelled() => Outcome::Goodbye(CloseCode::Normal, GOODBYE, End::Cancelled),
            () = fence_lost(&self.fence) => Outcome::Goodbye(CloseCode::Away, HANDOVER, End::Handover),
            outcome = self.read_loop(&mut stream, &last_seen, &paused, held) => outcome,
            outcome = self.write_loop(&mut sink, queue, outbox) => outcome,
            outcome = self.watchdog(&last_seen, &paused) => outcome,
        };
        match outcome {
            Outcome::Goodbye(code, reason, end) => {
                self.say_goodbye(&mut sink, code, reason).await;
                end
            }
            Outcome::Flush(end) => {
                // The library queued a Close frame with the reason's code; it leaves when the
                // socket is next made ready (the split sink skips that when it holds nothing).
                if let Ok(mut socket) = sink.reunite(stream) {
                    let leave = async {
                        futures::future::poll_fn(|cx| socket.poll_ready_unpin(cx)).await?;
                        socket.flush().await
                    };
                    if tokio::time::timeout(CLOSE_GRACE, leave).await.is_err() {
                        debug!(session = %self.id, "Close frame not sent in time");
                    }
                }
                end
            }
            Outcome::Done(end) => end,
        }
    }

    /// Reads frames until the connection ends. Replies are matched as they arrive; other messages
    /// go to delivery with an in-flight permit. With every permit taken the loop reads ahead,
    /// holding at most `max_in_flight + 1` undelivered messages (so that a handler that makes a
    /// request on its own session still gets its reply), and then stops reading until a permit
    /// frees up: TCP then pushes back on the server.
    async fn read_loop(
        &self,
        stream: &mut SplitStream<Socket>,
        last_seen: &Mutex<Instant>,
        paused: &AtomicBool,
        held: &mut Held,
    ) -> Outcome {
        // The server's Close frame, in words, once it came.
        let mut closed_by_server: Option<String> = None;
        // Polled by hand, not raced in a `select!`: the wait for a permit stays registered
        // across turns of the loop, and no `next()` future of the socket is ever dropped.
        let mut slots = self.budget.waiter();
        loop {
            // Full past one more than `max_in_flight` (or past `max_in_flight_bytes`): with every
            // slot taken, a reply that comes right behind `max_in_flight` ordinary messages is
            // still read (with `max_in_flight = 1`, one message in flight, one held, and the
            // reply to the handler's request).
            let full = held.is_full();
            if paused.swap(full, Ordering::Relaxed) && !full {
                // Nothing could be read while paused: the keepalive starts afresh.
                *last_seen.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
            }
            let step = futures::future::poll_fn(|cx| {
                if let Some(front) = held.front() {
                    if let Poll::Ready(slot) = slots.poll_take(cx, front) {
                        return Poll::Ready(Step::Slot(slot));
                    }
                }
                if !full {
                    if let Poll::Ready(frame) = stream.poll_next_unpin(cx) {
                        return Poll::Ready(Step::Frame(frame));
                    }
                }
                Poll::Pending
            })
            .await;
            let frame = match step {
                Step::Slot(Some(slot)) => {
                    if let Some(inbound) = held.pop_front() {
                        self.deliver(inbound, slot);
                    }
                    continue;
                }
                // Unreachable (the semaphores are never closed), but never a panic.
                Step::Slot(None) => {
                    return Outcome::Done(End::lost("the in-flight semaphore was closed"))
                }
                Step::Frame(frame) => frame,
            };
            *last_seen.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
            let ended = |what: &str| {
                let reason = closed_by_server.clone().unwrap_or_else(|| what.to_string());
                Outcome::Done(End::Lost {
                    reason,
                    by_server: true,
                })
            };
            match frame {
                None => return ended("the server ended the stream"),
                Some(Ok(frame)) => match frame.opcode() {
                    OpCode::Text | OpCode::Binary => {
                        if let Some(inbound) = self.incoming(frame.into_payload()) {
                            self.hand_over(inbound, held);
                        }
                    }
                    OpCode::Close => {
                        // The library answers the Close; the connection ends right after.
                        let said = close_words(&frame);
                        debug!(session = %self.id, close = %said, "server sent Close");
                        closed_by_server = Some(said);
                    }
                    _ => {} // ping, pong: the library answers pings itself
                },
                Some(Err(WebSocketError::FrameTooLarge)) => {
                    stats::bump(&self.stats.dropped_oversized);
                    let max_size = self.config.max_message_bytes;
                    warn!(session = %self.id, component = %self.key.component, link_name = %self.key.link_name, max_size, "refused an incoming message larger than max_message_bytes (after decompression); closing with 1009 and reconnecting");
                    return Outcome::Flush(End::lost(format!(
                        "an incoming message exceeds max_message_bytes ({max_size})"
                    )));
                }
                Some(Err(WebSocketError::ConnectionClosed)) => {
                    return ended("the connection was closed")
                }
                Some(Err(e)) => return Outcome::Flush(End::lost(describe(&e))),
            }
        }
    }

    /// Hands a message to delivery when a permit is free and nothing read earlier waits;
    /// otherwise it waits in `held`, in arrival order.
    fn hand_over(&self, inbound: Inbound, held: &mut Held) {
        if held.is_empty() {
            if let Some(slot) = self.budget.try_take(&inbound) {
                self.deliver(inbound, slot);
                return;
            }
        }
        held.push_back(inbound);
    }

    /// Writes queued frames in batches, and a keepalive ping every `ping_interval_sec`.
    async fn write_loop(
        &self,
        sink: &mut SplitSink<Socket, WsFrame>,
        queue: &mut mpsc::Receiver<Outgoing>,
        outbox: &mut Vec<Outgoing>,
    ) -> Outcome {
        let period = self.config.ping_interval;
        let mut ping = tokio::time::interval_at(Instant::now() + period, period);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if let Err(reason) = self.resend_unacknowledged(sink).await {
            return Outcome::Done(End::lost(reason));
        }
        loop {
            if !outbox.is_empty() {
                // Left over from a connection that broke mid-batch.
                if let Err(reason) = self.write_batch(sink, outbox).await {
                    return Outcome::Done(End::lost(reason));
                }
            }
            tokio::select! {
                n = queue.recv_many(outbox, WRITE_BATCH) => {
                    if n == 0 {
                        // Every handle is gone (the session was dropped as it was closed).
                        return Outcome::Goodbye(CloseCode::Normal, GOODBYE, End::Cancelled);
                    }
                }
                _ = ping.tick() => {
                    if let Err(e) = sink.send(WsFrame::ping(Bytes::new())).await {
                        return Outcome::Done(End::lost(format!("keepalive ping failed: {}", describe(&e))));
                    }
                }
            }
        }
    }

    /// Declares the connection dead when nothing arrived for `ping_interval + pong_timeout`
    /// (a ping went out in that time and got no pong), unless reading is paused on purpose.
    async fn watchdog(&self, last_seen: &Mutex<Instant>, paused: &AtomicBool) -> Outcome {
        let limit = self.config.ping_interval + self.config.pong_timeout;
        let check =
            (self.config.pong_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        loop {
            tokio::time::sleep(check).await;
            let silent = last_seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .elapsed();
            if !paused.load(Ordering::Relaxed) && silent > limit {
                return Outcome::Done(End::lost(format!(
                    "no pong or other frame for {} s (ping_interval_sec + pong_timeout_sec): the connection is dead",
                    limit.as_secs()
                )));
            }
        }
    }

    /// Sends a Close frame, waiting at most [`CLOSE_GRACE`] for it to leave.
    async fn say_goodbye(
        &self,
        sink: &mut SplitSink<Socket, WsFrame>,
        code: CloseCode,
        reason: &str,
    ) {
        let close = WsFrame::close(code, reason);
        match tokio::time::timeout(CLOSE_GRACE, sink.send(close)).await {
            Ok(Ok(())) => debug!(session = %self.id, ?code, "Close frame sent"),
            Ok(Err(e)) => debug!(session = %self.id, error = %describe(&e), "Close frame not sent"),
            Err(_) => debug!(session = %self.id, "Close frame not sent in time"),
        }
    }

    /// After a reconnect: sends again the envelopes handed to the lost connection and never
    /// acknowledged, whose publish still waits.
    async fn resend_unacknowledged(
        &self,
        sink: &mut SplitSink<Socket, WsFrame>,
    ) -> Result<(), String> {
        let frames = self.acks.unacknowledged();
        if frames.is_empty() {
            return Ok(());
        }
        info!(session = %self.id, frames = frames.len(), "sending unacknowledged messages again after the reconnect");
        for (_, frame) in &frames {
            sink.feed(to_ws(frame.clone()))
                .await
                .map_err(|e| format!("write failed: {}", describe(&e)))?;
        }
        sink.flush()
            .await
            .map_err(|e| format!("write failed: {}", describe(&e)))?;
        for (_, frame) in frames {
            stats::bump(&self.stats.frames_out);
            stats::add(&self.stats.bytes_out, frame.len());
        }
        Ok(())
    }

    /// Writes a batch with one flush, then tells each caller. Frames whose caller stopped waiting
    /// (timed out) are not sent: the caller already got an error. A frame is marked (acks,
    /// requests) as it is handed to the socket, before the write can break, so that whatever
    /// ends this future mid-write, an acknowledged envelope goes out again after the reconnect
    /// and a request fails with the connection; frames not yet handed over stay in `batch`.
    async fn write_batch(
        &self,
        sink: &mut SplitSink<Socket, WsFrame>,
        batch: &mut Vec<Outgoing>,
    ) -> Result<(), String> {
        let now = Instant::now();
        let mut written = Vec::with_capacity(batch.len());
        // Oldest first, taken out one at a time, so that the rest stay put, in order, if this
        // future is dropped mid-write (a batch is at most WRITE_BATCH frames).
        while !batch.is_empty() {
            let out = batch.remove(0);
            if out.done.as_ref().is_some_and(|d| d.is_closed()) || out.deadline <= now {
                debug!(session = %self.id, "dropping a queued frame whose publish already timed out");
                continue;
            }
            let len = out.frame.len();
            match &out.tracked {
                Tracked::Ack(id) => self.acks.written(id),
                Tracked::Request(inbox) => self.pending.written(inbox),
                Tracked::Nothing => {}
            }
            let fed = sink.feed(to_ws(out.frame)).await;
            written.push((out.done, len, out.tracked));
            if let Err(e) = fed {
                let reason = format!("write failed: {}", describe(&e));
                self.fail_all(written, &reason);
                return Err(reason);
            }
        }
        if written.is_empty() {
            return Ok(());
        }
        if let Err(e) = sink.flush().await {
            let reason = format!("write failed: {}", describe(&e));
            self.fail_all(written, &reason);
            return Err(reason);
        }
        for (done, len, _) in written {
            stats::bump(&self.stats.frames_out);
            stats::add(&self.stats.bytes_out, len);
            if let Some(done) = done {
                let _ = done.send(Ok(()));
            }
        }
        Ok(())
    }

    /// Tells the callers of a batch whose write failed. Acknowledged envelopes are not failed:
    /// they go out again after the reconnect while their publish waits.
    fn fail_all(&self, written: Vec<Written>, reason: &str) {
        for (done, _, tracked) in written {
            let result = match tracked {
                Tracked::Ack(_) => Ok(()),
                _ => Err(format!("{reason} on session {}", self.id)),
            };
            if let Some(done) = done {
                let _ = done.send(result);
            }
        }
    }

    /// Decodes one data frame; answers a waiting request with it, or returns the message to
    /// deliver.
    fn incoming(&self, payload: Bytes) -> Option<Inbound> {
        stats::bump(&self.stats.frames_in);
        stats::add(&self.stats.bytes_in, payload.len());
        // Not an envelope, or one whose subjects break the rules: dropped as malformed alike.
        let checked = match self.codec.decode(payload) {
            Ok(Incoming::Message { msg, id }) => {
                crate::subjects::check_incoming(&msg.subject, msg.reply_to.as_deref())
                    .map(|()| (msg, id.filter(|_| self.config.ack)))
            }
            Ok(Incoming::Ack(id)) => {
                if !self.acks.acked(&id) {
                    if let Some(count) = stats::bump_loss(&self.stats.dropped_unmatched) {
                        warn!(session = %self.id, component = %self.key.component, link_name = %self.key.link_name, id = %id, count, "dropped an acknowledgement nobody waits for (counted as dropped_unmatched; logged at the 1st, 10th, 100th, ...)");
                    }
                }
                return None;
            }
            Ok(Incoming::Subscribe(_) | Incoming::Unsubscribe(_)) => Err(
                "a subscribe or unsubscribe envelope, which only a listener's clients send"
                    .to_string(),
            ),
            Err(error) => Err(error.to_string()),
        };
        let (msg, ack_id) = match checked {
            Ok(message) => message,
            Err(error) => {
                if let Some(count) = stats::bump_loss(&self.stats.dropped_malformed) {
                    warn!(session = %self.id, component = %self.key.component, link_name = %self.key.link_name, %error, count, "dropped an incoming frame (counted as dropped_malformed; logged at the 1st, 10th, 100th, ...)");
                }
                return None;
            }
        };
        match self.pending.route(msg) {
            Routed::Deliver(msg) => Some(Inbound {
                msg: msg.into(),
                ack_id,
                slot: None,
            }),
            Routed::Reply => None,
            Routed::Late(subject) => {
                if let Some(count) = stats::bump_loss(&self.stats.dropped_unmatched) {
                    warn!(session = %self.id, component = %self.key.component, link_name = %self.key.link_name, %subject, count, "dropped a reply whose request no longer waits (counted as dropped_unmatched; logged at the 1st, 10th, 100th, ...)");
                }
                None
            }
        }
    }

    fn deliver(&self, mut inbound: Inbound, slot: Slot) {
        inbound.slot = Some(slot);
        // Cannot be full: the channel holds as many messages as there are permits.
        if self.inbound.try_send(inbound).is_err() {
            stats::bump(&self.stats.dropped_on_close);
            warn!(session = %self.id, "the delivery task is gone (the session is closing); a message is dropped (counted as dropped_on_close)");
        }
    }
}

/// What the read loop waited for.
enum Step {
    Slot(Option<Slot>),
    Frame(Option<Result<WsFrame, WebSocketError>>),
}

/// A Close frame in words: its code and reason (escaped, since the server chose it).
fn close_words(frame: &WsFrame) -> String {
    let code = frame.close_code().map(u16::from);
    let reason = frame.close_reason().ok().flatten().unwrap_or("");
    let reason: String = reason.chars().take(123).collect();
    match code {
        Some(code) => {
            format!("the server closed the connection (close code {code}, reason {reason:?})")
        }
        None => "the server closed the connection (no close code)".to_string(),
    }
}

/// A frame handed to the socket: its caller, its length and what else waits on it.
type Written = (Option<oneshot::Sender<Result<(), String>>>, usize, Tracked);

/// The WebSocket library's frame for a frame.
fn to_ws(frame: Frame) -> WsFrame {
    match frame {
        // Valid UTF-8: the envelope encoder makes it, and raw text came in as a String.
        Frame::Text(bytes) => WsFrame::text(bytes),
        Frame::Binary(bytes) => WsFrame::binary(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_unique_and_dot_free() {
        let a = new_session_id();
        let b = new_session_id();
        assert_ne!(a, b);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'));
    }

    #[test]
    fn attempts_count_failures_and_short_connections_the_server_closed() {
        let mut attempts = Attempts::new(3);
        assert_eq!(attempts.failed(), AfterFailure::Retry { first: true });
        // Open 1 s, closed by the server: a failed attempt.
        assert_eq!(
            attempts.lost(Duration::from_secs(1), true),
            Some(AfterFailure::Retry { first: false })
        );
        // Lost on our side (keepalive) within 5 s: not counted.
        assert_eq!(attempts.lost(Duration::from_secs(1), false), None);
        assert_eq!(
            attempts.lost(Duration::from_millis(10), true),
            Some(AfterFailure::GiveUp(3))
        );
        // A healthy connection resets the count and the backoff.
        let mut attempts = Attempts::new(2);
        attempts.failed();
        attempts.next_delay(Duration::from_millis(1), Duration::from_secs(1));
        assert_eq!(attempts.lost(HEALTHY_AFTER, true), None);
        assert_eq!((attempts.failed, attempts.retries), (0, 0));
        assert_eq!(
            Attempts::new(0).lost(Duration::ZERO, true),
            Some(AfterFailure::Retry { first: true }),
            "0 = forever"
        );
    }

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let (initial, max) = (Duration::from_millis(250), Duration::from_secs(30));
        for attempt in 1..=40 {
            let d = initial.saturating_mul(1 << (attempt - 1).min(30)).min(max);
            for _ in 0..20 {
                let b = backoff(attempt, initial, max);
                assert!(
                    b >= d / 2 && b <= d,
                    "attempt {attempt}: {b:?} not in [{:?}, {d:?}]",
                    d / 2
                );
            }
        }
    }
}
