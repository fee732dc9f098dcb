//! The task of a dialling session: its life in [`SocketTask::run`] (an attempt in the
//! background, `drive` while the connection lasts, `lost`, the backoff, the next attempt) until
//! the session is closed or gives up. Its reading and writing are in `io.rs`.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::stream::SplitSink;
use futures::{SinkExt as _, StreamExt as _};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use yawc::close::CloseCode;
use yawc::Frame as WsFrame;

use crate::client::acks::Acks;
use crate::client::backoff::{AfterFailure, Attempts};
use crate::client::shared::{Outgoing, SessionState};
use crate::client::socket::{self, Socket};
use crate::config::{Compression, ConnectionConfig};
use crate::delivery::budget::{Budget, Held};
use crate::delivery::{self, Inbound};
use crate::envelope::Codec;
use crate::identity::SessionKey;
use crate::lattice::lease::Fence;
use crate::requests::Pending;
use crate::stats::{self, SessionStats};
use crate::websocket::describe;

/// Most frames written before one flush.
pub(super) const WRITE_BATCH: usize = 64;
/// How long a Close frame may take to leave when a session ends.
pub(super) const CLOSE_GRACE: Duration = Duration::from_millis(100);
/// The reason of the Close frame sent when a link goes or the provider stops.
pub(super) const GOODBYE: &str = "link deleted or provider stopped";
/// The reason of the Close frame sent when another replica takes the session over.
pub(super) const HANDOVER: &str = "another replica of the provider takes this session over";

/// How one connection attempt went.
pub(super) enum Attempt {
    /// Boxed: an open socket is large, and moves once per connection.
    Opened(Box<socket::Opened>),
    Failed(String),
    Cancelled,
    /// This replica lost the session's lease meanwhile.
    Handover,
}

/// How the futures of one connection ended: with a Close frame to send first, or not.
pub(super) enum Outcome {
    Goodbye(CloseCode, &'static str, End),
    /// The library refused what the server sent and queued a Close frame of its own.
    Flush(End),
    Done(End),
}

/// Why one connection ended.
pub(super) enum End {
    /// The session was closed on purpose.
    Cancelled,
    /// This replica lost the session's lease: another one takes it over.
    Handover,
    /// The connection failed; reconnect. `by_server`: the server closed it (a Close frame or the
    /// end of the stream), rather than an error or the keepalive on our side.
    Lost { reason: String, by_server: bool },
}

impl End {
    pub(super) fn lost(reason: impl Into<String>) -> Self {
        End::Lost {
            reason: reason.into(),
            by_server: false,
        }
    }
}

/// The task that owns the socket.
pub(super) struct SocketTask {
    pub(super) id: String,
    pub(super) key: SessionKey,
    pub(super) config: ConnectionConfig,
    pub(super) codec: Codec,
    pub(super) stats: Arc<SessionStats>,
    pub(super) state: watch::Sender<SessionState>,
    pub(super) connected_at: Arc<Mutex<Option<SystemTime>>>,
    pub(super) down_since: Arc<Mutex<Option<Instant>>>,
    pub(super) cancel: CancellationToken,
    pub(super) budget: Budget,
    pub(super) inbound: mpsc::Sender<Inbound>,
    pub(super) pending: Pending,
    pub(super) gave_up: Arc<AtomicU32>,
    pub(super) acks: Acks,
    pub(super) fence: Option<Fence>,
}

/// Resolves when `fence` stops holding; never without a fence (`replicas = all`).
pub(super) async fn fence_lost(fence: &Option<Fence>) {
    match fence {
        Some(fence) => fence.lost().await,
        None => std::future::pending().await,
    }
}

impl SocketTask {
    /// The session's life: attempt, drive the connection while it lasts, wait the backoff, again;
    /// until the session is closed or gives up. Frames taken from the queue but not yet written
    /// (`outbox`) outlive a lost connection and go out on the next one.
    pub(super) async fn run(self, mut queue: mpsc::Receiver<Outgoing>) {
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
    pub(super) fn stand_by(
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
    pub(super) async fn drain_held(&self, held: &mut Held) {
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
    pub(super) async fn attempt(&self, held: &mut Held) -> Attempt {
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
    pub(super) fn opened(&self, opened: &socket::Opened, reconnect: bool) {
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
    pub(super) fn lost(&self, reason: &str) {
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
    pub(super) async fn drive(
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

    /// Declares the connection dead when nothing arrived for `ping_interval + pong_timeout`
    /// (a ping went out in that time and got no pong), unless reading is paused on purpose.
    pub(super) async fn watchdog(
        &self,
        last_seen: &Mutex<Instant>,
        paused: &AtomicBool,
    ) -> Outcome {
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
    pub(super) async fn say_goodbye(
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
}
