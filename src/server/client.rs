//! One client of a listener: who it is, what it subscribed to, its bounded outgoing queue, and
//! the task that reads its frames (with `task.rs`: to the component, or
//! answering its requests) and writes what is queued for it.
//!
//! Bounds, per client: the outgoing queue holds at most `client_queue_bytes` (past it the client
//! is closed with 1008, so a client that does not read never holds up a broadcast); at most
//! `max_in_flight` deliveries and `max_in_flight_bytes` of their bodies run at once (then this
//! client's socket is not read: TCP pushes back on that client alone), and all the listener's
//! clients together have `max_in_flight` (at least 64) delivery slots, taken in arrival order; `client_rate_limit`
//! messages per second; `max_message_bytes` per message; [`MAX_PER_CLIENT`](crate::server::subscriptions::MAX_PER_CLIENT) subscriptions.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::SinkExt as _;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::bindings::wasmcloud::messaging::types::BrokerMessage;
use crate::envelope::Frame;
use crate::requests::Pending;
use crate::server::socket::{self, ClientSocket, Out};
use crate::server::subscriptions::Pattern;
use crate::server::Shared;
use crate::stats::{self, SessionStats};

/// How a subscription being recovered, or just recovered, takes the live broadcasts.
pub enum Gate {
    /// Being replayed: the live broadcasts are held here (with their offsets and bytes).
    Holding(Vec<(Frame, u64)>, usize),
    /// Replayed up to this offset: live broadcasts up to it are duplicates.
    After(u64),
}

/// How long a client may keep sending over `client_rate_limit` before it is closed.
pub const RATE_GRACE: Duration = Duration::from_secs(2);
/// How long a closing client's Close frame may take to go out.
pub(super) const CLOSE_GRACE: Duration = Duration::from_millis(200);
/// The queue capacity (frames) a client keeps after a burst.
const BATCH_KEPT: usize = 16;

/// Why sending to a client failed.
#[derive(Debug)]
pub enum SendError {
    /// Its queue is full: it was closed as a slow consumer.
    Slow,
    /// It is gone.
    Gone,
}

/// A connected client.
pub struct Client {
    pub id: Arc<str>,
    pub remote_addr: SocketAddr,
    /// The JWT's `sub`.
    pub user: Option<String>,
    pub connected_at: SystemTime,
    /// The JWT's `subjects`: what it may subscribe to and publish on (none = anything).
    pub(super) allowed: Option<Vec<Pattern>>,
    pub(super) subscriptions: Mutex<Vec<Pattern>>,
    pub stats: Arc<SessionStats>,
    /// Frames waiting to be written, with their lengths: a deque allocates nothing until the
    /// first frame, and the writer takes all of it at once (one flush for the lot).
    out: Mutex<VecDeque<(Out, usize)>>,
    /// Wakes the writer when `out` gets a frame.
    queued_one: Notify,
    /// Bytes queued and not yet written.
    queued: AtomicUsize,
    queue_limit: usize,
    pub pending: Pending,
    pub(super) stop: CancellationToken,
    /// The Close code and reason it is being closed with, once it is.
    pub(super) closing: Mutex<Option<(u16, &'static str)>>,
    /// Whether it was closed as a slow consumer (counted once).
    slow: AtomicBool,
    /// Set once it is being closed or has left: nothing more is queued.
    pub(super) closed: AtomicBool,
    /// Subscriptions being recovered from the listener's history, or just recovered
    /// ([`Gate`]), and whether there are any (the live path looks only then).
    pub(super) gates: Mutex<Vec<(Pattern, Gate)>>,
    pub(super) gated: AtomicBool,
    /// Wakes a replay waiting for room in the queue, after each write.
    drained: Notify,
}

impl Client {
    /// The patterns subscribed to (each once), for taking them out of the listener's index.
    pub fn patterns(&self) -> Vec<Pattern> {
        lock(&self.subscriptions).clone()
    }

    /// The subscriptions as text, for `$ws.sessions`.
    pub fn subscriptions(&self) -> Vec<String> {
        lock(&self.subscriptions)
            .iter()
            .map(|p| p.as_str().to_string())
            .collect()
    }

    /// Queues a frame. Past `client_queue_bytes` the client is closed (1008, slow consumer),
    /// except that one message bigger than the bound alone may go to an idle queue.
    pub fn send(&self, frame: Frame, shared: &Shared) -> Result<(), SendError> {
        // A flag, not `stop.is_cancelled()`: a child token's check takes a lock, and a fan-out
        // makes it once per client.
        if self.closed.load(Ordering::Relaxed) {
            return Err(SendError::Gone);
        }
        let len = frame.len();
        let before = self.queued.fetch_add(len, Ordering::Relaxed);
        if before > 0 && before + len > self.queue_limit {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            if !self.slow.swap(true, Ordering::Relaxed) {
                stats::bump(&shared.counters.slow_consumer_closes);
                warn!(client = %self.id, remote_addr = %self.remote_addr, component = %shared.key.component, link_name = %shared.key.link_name, queued = before, client_queue_bytes = self.queue_limit, "client does not keep up: its outgoing queue is full; closing it (1008 slow consumer)");
                self.close(1008, "slow consumer");
            }
            return Err(SendError::Slow);
        }
        lock(&self.out).push_back((Out::from(frame), len));
        self.queued_one.notify_one();
        Ok(())
    }

    /// Waits until at most `bytes` are queued (a replay's pace: it never fills the queue to
    /// `client_queue_bytes`, which would close the client); fails once the client is gone.
    pub(super) async fn room(&self, bytes: usize) -> Result<(), String> {
        loop {
            if self.closed.load(Ordering::Relaxed) {
                return Err("the client left".into());
            }
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.queued.load(Ordering::Relaxed) <= bytes {
                return Ok(());
            }
            tokio::select! {
                () = drained => {}
                () = self.stop.cancelled() => return Err("the client left".into()),
            }
        }
    }

    /// Closes the client with `code` (the first reason given wins).
    pub fn close(&self, code: u16, reason: &'static str) {
        lock(&self.closing).get_or_insert((code, reason));
        self.closed.store(true, Ordering::Relaxed);
        self.stop.cancel();
    }

    /// Sends a request to the client and waits for its reply (an envelope whose subject is the
    /// request's inbox), at most `timeout`.
    pub async fn request(
        &self,
        shared: &Shared,
        subject: &str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<BrokerMessage, String> {
        stats::bump(&self.stats.requests);
        let mut ticket = self.pending.register();
        let msg = BrokerMessage {
            subject: subject.to_string(),
            body,
            reply_to: Some(ticket.inbox.clone()),
        };
        self.send(shared.codec.encode(&msg, None), shared)
            .map_err(|e| format!("request to client {}: {}", self.id, send_words(&e)))?;
        self.pending.written(&ticket.inbox);
        match tokio::time::timeout(timeout, &mut ticket.reply).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(format!("request to {subject}: client {} left", self.id)),
            Err(_) => {
                stats::bump(&self.stats.request_timeouts);
                Err(format!(
                    "request to {subject} timed out after {} ms",
                    timeout.as_millis()
                ))
            }
        }
    }
}

/// A send error in words.
pub fn send_words(e: &SendError) -> &'static str {
    match e {
        SendError::Slow => {
            "its outgoing queue is full (client_queue_bytes); it was closed as a slow consumer"
        }
        SendError::Gone => "it is disconnected",
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A new client.
pub fn new(
    shared: &Shared,
    remote_addr: SocketAddr,
    user: Option<String>,
    allowed: Option<Vec<Pattern>>,
) -> Arc<Client> {
    let id: Arc<str> = crate::identity::client_id(&shared.id_tag).into();
    Arc::new(Client {
        pending: Pending::new(&shared.config.inbox_prefix, &id),
        id,
        remote_addr,
        user,
        connected_at: SystemTime::now(),
        allowed,
        subscriptions: Mutex::default(),
        stats: Arc::new(SessionStats::for_session(&shared.totals)),
        out: Mutex::default(),
        queued_one: Notify::new(),
        queued: AtomicUsize::new(0),
        queue_limit: shared.listen().client_queue_bytes,
        stop: shared.stop.child_token(),
        closing: Mutex::default(),
        slow: AtomicBool::new(false),
        closed: AtomicBool::new(false),
        gates: Mutex::default(),
        gated: AtomicBool::new(false),
        drained: Notify::new(),
    })
}

/// How a client's connection ended.
pub(super) enum End {
    /// The client closed, or the connection failed (in words).
    Left(String),
    /// The provider closes it (`Client::close`).
    Closed,
    /// Nothing arrived for `ping_interval + pong_timeout`.
    Dead,
    /// The client is refused with this Close code and reason: 1009 for a message over
    /// `max_message_bytes`, 1002 or 1007 for a protocol error.
    Refused(u16, String),
}

/// Writes what is queued: everything queued since the last write, fed to the socket (which
/// writes out every 64 KiB) and flushed once; and a keepalive ping every `ping_interval_sec`.
pub(super) async fn write(
    shared: &Shared,
    client: &Client,
    sink: &mut futures::stream::SplitSink<ClientSocket, Out>,
) -> End {
    let period = shared.config.ping_interval;
    let mut ping = tokio::time::interval_at(Instant::now() + period, period);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The frames being written; swapped with the queue, so both keep their capacity.
    let mut batch = VecDeque::new();
    loop {
        tokio::select! {
            () = client.queued_one.notified() => {
                // Let the frames of a burst being fanned out gather (the publisher runs on the
                // other worker, or next on this one): one write for them, not one each.
                tokio::task::yield_now().await;
            }
            _ = ping.tick() => {
                if let Err(e) = sink.send(socket::ping()).await {
                    return End::Left(e);
                }
                continue;
            }
        }
        std::mem::swap(&mut *lock(&client.out), &mut batch);
        if batch.is_empty() {
            continue;
        }
        let (frames, mut bytes) = (batch.len(), 0);
        for (frame, len) in batch.drain(..) {
            bytes += len;
            if let Err(e) = sink.feed(frame).await {
                return End::Left(e);
            }
        }
        if let Err(e) = sink.flush().await {
            return End::Left(e);
        }
        if batch.capacity() > BATCH_KEPT {
            // A burst is over: an idle client keeps a small queue.
            batch.shrink_to(BATCH_KEPT);
        }
        client.queued.fetch_sub(bytes, Ordering::Relaxed);
        client.drained.notify_waiters();
        stats::add(&client.stats.frames_out, frames);
        stats::add(&client.stats.bytes_out, bytes);
    }
}
