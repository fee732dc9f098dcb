//! A dialling session's connection while it lasts: frames queued by `publish` written in
//! batches, incoming frames decoded, matched against waiting requests and handed to delivery
//! with a slot of the session's budget.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::task::Poll;

use bytes::Bytes;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt as _, StreamExt as _};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info, warn};
use yawc::close::CloseCode;
use yawc::{Frame as WsFrame, OpCode, WebSocketError};

use crate::client::shared::{Outgoing, Tracked};
use crate::client::socket::Socket;
use crate::client::task::{End, Outcome, SocketTask, GOODBYE, WRITE_BATCH};

use crate::delivery::budget::{Held, Slot};
use crate::delivery::Inbound;
use crate::envelope::{Frame, Incoming};
use crate::requests::Routed;
use crate::stats;
use crate::websocket::describe;

impl SocketTask {
    /// Reads frames until the connection ends. Replies are matched as they arrive; other messages
    /// go to delivery with an in-flight permit. With every permit taken the loop reads ahead,
    /// holding at most `max_in_flight + 1` undelivered messages (so that a handler that makes a
    /// request on its own session still gets its reply), and then stops reading until a permit
    /// frees up: TCP then pushes back on the server.
    pub(super) async fn read_loop(
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
    pub(super) fn hand_over(&self, inbound: Inbound, held: &mut Held) {
        if held.is_empty() {
            if let Some(slot) = self.budget.try_take(&inbound) {
                self.deliver(inbound, slot);
                return;
            }
        }
        held.push_back(inbound);
    }

    /// Writes queued frames in batches, and a keepalive ping every `ping_interval_sec`.
    pub(super) async fn write_loop(
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

    /// After a reconnect: sends again the envelopes handed to the lost connection and never
    /// acknowledged, whose publish still waits.
    pub(super) async fn resend_unacknowledged(
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
    pub(super) async fn write_batch(
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
    pub(super) fn fail_all(&self, written: Vec<Written>, reason: &str) {
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
    pub(super) fn incoming(&self, payload: Bytes) -> Option<Inbound> {
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
            Ok(Incoming::Subscribe { .. } | Incoming::Unsubscribe(_) | Incoming::Presence(_)) => Err(
                "a subscribe, unsubscribe or presence envelope, which only a listener's clients send"
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
                joint: None,
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

    pub(super) fn deliver(&self, mut inbound: Inbound, slot: Slot) {
        inbound.slot = Some(slot);
        // Cannot be full: the channel holds as many messages as there are permits.
        if self.inbound.try_send(inbound).is_err() {
            stats::bump(&self.stats.dropped_on_close);
            warn!(session = %self.id, "the delivery task is gone (the session is closing); a message is dropped (counted as dropped_on_close)");
        }
    }
}

/// What the read loop waited for.
pub(super) enum Step {
    Slot(Option<Slot>),
    Frame(Option<Result<WsFrame, WebSocketError>>),
}

/// A Close frame in words: its code and reason (escaped, since the server chose it).
pub(super) fn close_words(frame: &WsFrame) -> String {
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
pub(super) type Written = (Option<oneshot::Sender<Result<(), String>>>, usize, Tracked);

/// The WebSocket library's frame for a frame.
pub(super) fn to_ws(frame: Frame) -> WsFrame {
    match frame {
        // Valid UTF-8: the envelope encoder makes it, and raw text came in as a String.
        Frame::Text(bytes) => WsFrame::text(bytes),
        Frame::Binary(bytes) => WsFrame::binary(bytes),
    }
}
