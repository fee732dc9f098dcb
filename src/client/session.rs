//! A session: one WebSocket connection, owned by one task. This file is the handle
//! ([`Session`]: send queue, state, counters, close) shared by its links and the provider; the
//! task is in `task.rs` (its life) and `io.rs` (reading and writing).
//!
//! The task's life is explicit in `SocketTask::run`: an attempt (in the background, so putting
//! a link never waits for the network), then `drive` while the connection lasts, then `lost`,
//! the backoff of `Attempts` (`backoff.rs`), and the next attempt; until the session is closed or gives up.
//! While a connection is open, frames queued by `publish` are written in batches (fed, then
//! flushed once), and incoming data frames are decoded, matched against waiting requests, and
//! handed to the delivery task with a slot of the session's `Budget` (`max_in_flight`
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
//! The client modules (`io.rs`, `task.rs`, [`crate::client::socket`]) and [`crate::websocket`] are
//! the only ones of client mode that touch the WebSocket library's types.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use wasmcloud_provider_sdk::wasmcloud_tracing::KeyValue;

use crate::bindings::wasmcloud::messaging::types::BrokerMessage;
use crate::client::acks::Acks;
pub use crate::client::shared::SessionState;
use crate::client::shared::{Outgoing, Tracked};
use crate::client::task::SocketTask;

use crate::config::{ConnectionConfig, Format};
use crate::delivery::budget::Budget;
use crate::delivery::{self, pool};
use crate::envelope::{Codec, Frame};
use crate::identity::{random_session_id, SessionKey};
use crate::lattice::lease::Fence;
use crate::requests::Pending;
use crate::stats::{self, SessionStats, Totals};
use crate::subjects::Pattern;

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
    pub metric_attributes: Arc<[KeyValue]>,
    handler_linked: Arc<AtomicBool>,
    /// The handler link's `subscriptions`.
    routes: delivery::Routes,
    /// A pool's member handler links (`pool` set), none for a session of one link pair.
    members: Option<Arc<pool::Members>>,
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
            None => (random_session_id(), None),
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

        // The handler link's `subscriptions`, when the session starts with it.
        let routes = delivery::Routes::default();
        if handler_linked.load(Ordering::Relaxed) {
            routes.set(config.subscriptions.clone());
        }
        // A pool's messages go to its member handler links, each with a delivery of its own.
        let members = config.pool.as_ref().map(|_| {
            Arc::new(pool::Members::new(pool::Common {
                session_id: id.clone(),
                stats: Arc::clone(&stats),
                clients: clients.clone(),
                fence: fence.clone(),
            }))
        });
        let delivery = match &members {
            Some(members) => tokio::spawn(pool::dispatch(
                Arc::clone(members),
                key.clone(),
                acker,
                inbound_rx,
                cancel.clone(),
            )),
            None => tokio::spawn(delivery::run(
                delivery::Target {
                    session_id: id.clone(),
                    key: key.clone(),
                    handler_linked: Arc::clone(&handler_linked),
                    routes: routes.clone(),
                    acker,
                    stats: Arc::clone(&stats),
                    clients,
                    timeout: config.delivery_timeout,
                    fence: fence.clone(),
                },
                inbound_rx,
                cancel.clone(),
            )),
        };

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
            routes,
            members,
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

    /// The subjects the handler link receives (its `subscriptions`; `None` = all).
    pub fn set_subscriptions(&self, patterns: Option<Vec<Pattern>>) {
        self.routes.set(patterns);
    }

    /// A pool: handler link `key` receives what its `subscriptions` match, within its own
    /// `max_in_flight`, `max_in_flight_bytes` and `delivery_timeout_ms` (from `config`, its
    /// link's settings).
    pub fn add_member(&self, key: SessionKey, config: &ConnectionConfig) {
        if let Some(members) = &self.members {
            members.add(
                key,
                pool::Own {
                    subscriptions: config.subscriptions.clone(),
                    max_in_flight: config.max_in_flight,
                    max_in_flight_bytes: config.max_in_flight_bytes,
                    timeout: config.delivery_timeout,
                },
            );
        }
    }

    /// A pool: handler link `key` is gone; the other members are not disturbed.
    pub fn remove_member(&self, key: &SessionKey) {
        if let Some(members) = &self.members {
            members.remove(key);
        }
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
