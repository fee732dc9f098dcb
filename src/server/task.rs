//! The task of a listener's client: [`run`] reads its frames (to the component, bounded in
//! flight, in bytes and by `client_rate_limit`; its subscriptions and requests; its pings) and
//! writes what is queued for it, until it leaves or is closed.

use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::{SinkExt as _, StreamExt as _};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::bindings::wasmcloud::messaging::types::BrokerMessage;
use crate::delivery::{self, HandlerClient, Target};
use crate::envelope::{Incoming, Since};
use crate::requests::Routed;
use crate::server::client::{lock, write, Client, End, Gate, CLOSE_GRACE, RATE_GRACE};
use crate::server::history;
use crate::server::socket::{self, ClientSocket, In};
use crate::server::subscriptions::{self, Pattern, MAX_PER_CLIENT};
use crate::server::Shared;
use crate::stats;

/// Serves one client until it leaves or is closed; then forgets it.
pub async fn run(shared: Arc<Shared>, client: Arc<Client>, socket: ClientSocket) {
    let (mut sink, mut stream) = socket.split();
    let target = Target {
        session_id: client.id.to_string(),
        key: shared.key.clone(),
        handler_linked: Arc::clone(&shared.handler_linked),
        // A listener's clients choose what they send; `subscriptions` is a dialling link's.
        routes: delivery::Routes::default(),
        acker: None,
        stats: Arc::clone(&client.stats),
        clients: shared.handler_clients.clone(),
        timeout: shared.config.delivery_timeout,
        fence: None,
    };
    let mut reader = Reader {
        shared: &shared,
        client: &client,
        target: &target,
        handler: None,
        in_flight: FuturesUnordered::new(),
        bytes_in_flight: 0,
        limiter: NonZeroU32::new(shared.listen().client_rate_limit)
            .map(|n| RateLimiter::direct(Quota::per_second(n).allow_burst(n))),
        flooding: None,
        warned_malformed: false,
        asking: Arc::default(),
    };
    if shared.listen().client_events {
        Box::pin(reader.event("$ws.connected")).await;
    }
    let end = tokio::select! {
        end = reader.read(&mut stream) => end,
        end = write(&shared, &client, &mut sink) => end,
        () = client.stop.cancelled() => End::Closed,
    };
    let closing = *lock(&client.closing);
    match (&end, closing) {
        // Written here: yawc queues a Close of its own for these, but writes it only when its
        // stream is read again, and closing the sink would write a Close 1000 before it.
        (End::Refused(code, reason), _) => {
            let reason: String = reason.chars().take(120).collect();
            let closing = sink.send(socket::close_frame(*code, &reason));
            let _ = Box::pin(tokio::time::timeout(CLOSE_GRACE, closing)).await;
        }
        (End::Closed, Some((code, reason))) => {
            let closing = sink.send(socket::close_frame(code, reason));
            let _ = Box::pin(tokio::time::timeout(CLOSE_GRACE, closing)).await;
        }
        (End::Dead, _) => {
            stats::bump(&shared.counters.dead_clients);
            info!(client = %client.id, remote_addr = %client.remote_addr, "no pong or other frame for ping_interval_sec + pong_timeout_sec: the client is gone; closing");
        }
        _ => {
            // The library's answer to the client's Close goes out before the connection ends.
            let _ = Box::pin(tokio::time::timeout(CLOSE_GRACE, sink.close())).await;
        }
    }
    drop(sink);
    drop(stream);
    client.closed.store(true, Ordering::Relaxed);
    client.stop.cancel();
    shared.forget(&client);
    for pattern in client.patterns() {
        shared.member_changed(&client, &pattern, false);
    }
    let reason = match &end {
        End::Left(reason) => reason.as_str(),
        End::Closed => closing.map_or("closed", |(_, reason)| reason),
        End::Dead => "dead (no pong)",
        End::Refused(_, reason) => reason.as_str(),
    };
    client
        .pending
        .fail_all(&format!("client {} left ({reason})", client.id));
    debug!(client = %client.id, remote_addr = %client.remote_addr, reason, "client disconnected");
    if shared.stop.is_cancelled() {
        // The listener closes (link deleted, shutdown): deliveries under way are abandoned.
        return;
    }
    if shared.listen().client_events {
        Box::pin(reader.event("$ws.disconnected")).await;
    }
    while reader.in_flight.next().await.is_some() {}
}

type Delivering<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = usize> + Send + 'a>>;

/// The reading side of a client: its frames, its deliveries in flight, its rate limit.
struct Reader<'a> {
    shared: &'a Arc<Shared>,
    client: &'a Arc<Client>,
    target: &'a Target,
    handler: Option<Arc<HandlerClient>>,
    in_flight: FuturesUnordered<Delivering<'a>>,
    bytes_in_flight: usize,
    limiter: Option<DefaultDirectRateLimiter>,
    /// Since when the client has been sending over its rate, and when it last did.
    flooding: Option<(Instant, Instant)>,
    warned_malformed: bool,
    /// A presence question of this client is being answered (one at a time).
    asking: Arc<std::sync::atomic::AtomicBool>,
}

impl<'a> Reader<'a> {
    async fn read(&mut self, stream: &mut futures::stream::SplitStream<ClientSocket>) -> End {
        let config = &self.shared.config;
        let dead_after = config.ping_interval + config.pong_timeout;
        let mut last_seen = Instant::now();
        loop {
            let full = self.in_flight.len() >= config.max_in_flight
                || self.bytes_in_flight >= config.max_in_flight_bytes;
            let next = tokio::select! {
                Some(len) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    self.bytes_in_flight -= len;
                    // Reading was paused: the client is not to blame for the silence.
                    last_seen = Instant::now();
                    continue;
                }
                next = stream.next(), if !full => next,
                () = tokio::time::sleep_until(last_seen + dead_after), if !full => return End::Dead,
            };
            last_seen = Instant::now();
            match next {
                None => return End::Left("the connection ended".into()),
                Some(In::Data(payload)) => self.data(payload).await,
                Some(In::Control) => {}
                Some(In::Close(code)) => {
                    return End::Left(match code {
                        Some(code) => format!("the client closed (close code {code})"),
                        None => "the client closed".into(),
                    })
                }
                Some(In::TooLarge) => {
                    stats::bump(&self.client.stats.dropped_oversized);
                    warn!(client = %self.client.id, remote_addr = %self.client.remote_addr, component = %self.shared.key.component, link_name = %self.shared.key.link_name, max_message_bytes = config.max_message_bytes, "a client sent a message larger than max_message_bytes (after decompression); closing it with 1009");
                    return End::Refused(1009, "message too big".into());
                }
                Some(In::Failed(reason)) => return End::Left(reason),
                Some(In::Broken(code, reason)) => {
                    debug!(client = %self.client.id, remote_addr = %self.client.remote_addr, code, %reason, "a client broke the WebSocket protocol; closing it");
                    return End::Refused(code, reason);
                }
            }
        }
    }

    /// One data frame: over the rate, a subscription change, a reply to a request, or a
    /// message for the component.
    async fn data(&mut self, payload: Bytes) {
        let stats = &self.client.stats;
        stats::bump(&stats.frames_in);
        stats::add(&stats.bytes_in, payload.len());
        if !self.within_rate() {
            return;
        }
        let incoming = match self.shared.codec.decode(payload) {
            Ok(incoming) => incoming,
            Err(error) => return self.malformed(&error.to_string()),
        };
        match incoming {
            Incoming::Subscribe { pattern, since } => self.subscribe(&pattern, since),
            Incoming::Unsubscribe(pattern) => self.unsubscribe(&pattern),
            Incoming::Presence(subject) => self.presence(subject),
            Incoming::Ack(_) => {
                self.malformed("an ack; a listener does not send acknowledged envelopes")
            }
            Incoming::Message { msg, .. } => {
                if let Err(error) =
                    crate::subjects::check_incoming(&msg.subject, msg.reply_to.as_deref())
                {
                    return self.malformed(&error);
                }
                if !subscriptions::allows(self.client.allowed.as_deref(), &msg.subject) {
                    stats::bump(&self.shared.counters.not_allowed);
                    debug!(client = %self.client.id, subject = %msg.subject, "the client's JWT does not allow this subject; message dropped");
                    self.answer_error(&format!(
                        "not allowed to publish on {} (the token's `subjects`)",
                        crate::subjects::quoted(&msg.subject)
                    ));
                    return;
                }
                match self.client.pending.route(msg) {
                    Routed::Reply => {}
                    Routed::Late(subject) => {
                        if let Some(count) = stats::bump_loss(&stats.dropped_unmatched) {
                            warn!(client = %self.client.id, component = %self.shared.key.component, link_name = %self.shared.key.link_name, %subject, count, "dropped a client's reply whose request no longer waits (counted as dropped_unmatched; logged at the 1st, 10th, 100th, ... of this client)");
                        }
                    }
                    // Boxed: a delivery's future is large and lives only while it is handed
                    // over; in place it would make every idle client's task that much bigger.
                    Routed::Deliver(msg) => {
                        if self.shared.listen().client_publish {
                            Box::pin(self.broadcast(&msg)).await;
                        }
                        Box::pin(self.deliver(msg)).await;
                    }
                }
            }
        }
    }

    /// Whether a message fits the client's rate; past it the message is dropped and counted,
    /// and a client that keeps on for [`RATE_GRACE`] is closed.
    fn within_rate(&mut self) -> bool {
        let Some(limiter) = &self.limiter else {
            return true;
        };
        let now = Instant::now();
        if limiter.check().is_ok() {
            if self
                .flooding
                .is_some_and(|(_, last)| now.duration_since(last) > Duration::from_secs(1))
            {
                self.flooding = None;
            }
            return true;
        }
        stats::bump(&self.shared.counters.rate_limited);
        let since = match self.flooding {
            Some((since, _)) => since,
            None => {
                debug!(client = %self.client.id, remote_addr = %self.client.remote_addr, "client sends over client_rate_limit; dropping what exceeds it");
                now
            }
        };
        self.flooding = Some((since, now));
        if now.duration_since(since) >= RATE_GRACE {
            stats::bump(&self.shared.counters.rate_limit_closes);
            warn!(client = %self.client.id, remote_addr = %self.client.remote_addr, client_rate_limit = self.shared.listen().client_rate_limit, grace_s = RATE_GRACE.as_secs(), "client kept sending over client_rate_limit; closing it (1008)");
            self.client.close(1008, "rate limit exceeded");
        }
        false
    }

    fn malformed(&mut self, error: &str) {
        stats::bump(&self.client.stats.dropped_malformed);
        // Warned once per client: a hostile client must not be able to flood the log.
        if !self.warned_malformed {
            warn!(client = %self.client.id, remote_addr = %self.client.remote_addr, component = %self.shared.key.component, link_name = %self.shared.key.link_name, %error, "dropped a frame from a client (further ones from this client are logged at debug)");
            self.warned_malformed = true;
        } else {
            debug!(client = %self.client.id, %error, "dropped a frame from a client");
        }
    }

    fn answer(&self, key: &str, value: &str) {
        let _ = self
            .client
            .send(self.shared.codec.encode_answer(key, value), self.shared);
    }

    fn answer_error(&self, why: &str) {
        self.answer("error", why);
    }

    /// A subscribe: the pattern goes into the index (at once, or recovering first with
    /// `since`) unless the client's JWT does not allow it or it holds too many.
    fn subscribe(&mut self, text: &str, since: Option<Since>) {
        let pattern = match Pattern::parse(text) {
            Ok(pattern) => pattern,
            Err(error) => return self.answer_error(&error),
        };
        if !subscriptions::allows_pattern(self.client.allowed.as_deref(), &pattern) {
            stats::bump(&self.shared.counters.not_allowed);
            return self.answer_error(&format!(
                "not allowed to subscribe to {} (the token's `subjects`)",
                crate::subjects::quoted(text)
            ));
        }
        if since.is_some() && self.shared.listen().history.is_none() {
            return self.answer_error(
                "this listener keeps no history (history_size / history_ttl_sec): subscribe without `since`",
            );
        }
        let added = {
            let mut mine = lock(&self.client.subscriptions);
            if mine.contains(&pattern) {
                false
            } else if mine.len() >= MAX_PER_CLIENT {
                drop(mine);
                return self.answer_error(&format!(
                    "too many subscriptions (at most {MAX_PER_CLIENT} per client)"
                ));
            } else {
                if since.is_some() {
                    // Gated before it is in the index: no live broadcast passes the recovery.
                    lock(&self.client.gates).push((pattern.clone(), Gate::Holding(Vec::new(), 0)));
                    self.client.gated.store(true, Ordering::Relaxed);
                }
                mine.push(pattern.clone());
                if since.is_none() {
                    // Under the lock another client's join or leave checks: no event for the
                    // pattern reaches this client before the `ok` of its subscribe.
                    self.answer("ok", text);
                }
                true
            }
        };
        // Not under the client's lock: the live path takes the index's, then the client's.
        if added {
            self.shared.subscribe(&pattern, self.client);
            self.shared.member_changed(self.client, &pattern, true);
        }
        match since {
            Some(since) if added => {
                let (shared, client) = (Arc::clone(self.shared), Arc::clone(self.client));
                self.shared
                    .tasks
                    .spawn(history::recover(shared, client, pattern, since));
            }
            // Subscribed and live on this connection already: it missed nothing.
            Some(_) => {
                let _ = self
                    .client
                    .send(self.shared.codec.encode_recovered(text, true), self.shared);
            }
            None if !added => self.answer("ok", text),
            None => {}
        }
    }

    fn unsubscribe(&mut self, text: &str) {
        let removed = {
            let mut mine = lock(&self.client.subscriptions);
            let at = mine.iter().position(|p| p.as_str() == text);
            at.map(|at| mine.remove(at))
        };
        if let Some(pattern) = removed {
            self.shared.unsubscribe(&pattern, &self.client.id);
            lock(&self.client.gates).retain(|(p, _)| *p != pattern);
            self.shared.member_changed(self.client, &pattern, false);
            self.answer("ok", text);
        } else {
            self.answer_error(&format!(
                "not subscribed to {}",
                crate::subjects::quoted(text)
            ));
        }
    }

    /// `{"presence": "<subject>"}` (with `presence = true`): answered, once the replicas have
    /// been asked, with the clients subscribed to a pattern matching the subject, if the
    /// client's JWT allows it to subscribe to the subject.
    fn presence(&mut self, subject: String) {
        if !self.shared.listen().presence {
            return self.answer_error("presence is off on this listener (`presence = true`)");
        }
        let pattern = match Pattern::parse(&subject) {
            Ok(pattern) if pattern.is_wild() => {
                return self.answer_error(&format!(
                    "presence of {}: ask for a subject, not a pattern",
                    crate::subjects::quoted(&subject)
                ))
            }
            Ok(pattern) => pattern,
            Err(error) => return self.answer_error(&error),
        };
        if !subscriptions::allows_pattern(self.client.allowed.as_deref(), &pattern) {
            stats::bump(&self.shared.counters.not_allowed);
            return self.answer_error(&format!(
                "not allowed to see who is in {} (the token's `subjects` do not allow subscribing to it)",
                crate::subjects::quoted(&subject)
            ));
        }
        if self.asking.swap(true, Ordering::Relaxed) {
            return self.answer_error("one presence question at a time: wait for the answer");
        }
        let (shared, client, asking) = (
            Arc::clone(self.shared),
            Arc::clone(self.client),
            Arc::clone(&self.asking),
        );
        self.shared.tasks.spawn(async move {
            let frame = match shared.relay.presence(subject.clone()).await {
                Ok(members) => shared.codec.encode_presence(&subject, &members),
                Err(why) => shared.codec.encode_answer("error", &why),
            };
            asking.store(false, Ordering::Relaxed);
            let _ = client.send(frame, &shared);
        });
    }

    /// A client's envelope to its subject's subscribers (`client_publish`), as a component's
    /// `publish` would send it; when that fails, the client is told why (its message still
    /// goes to the component).
    async fn broadcast(&mut self, msg: &BrokerMessage) {
        let refused = if msg.subject.split('.').any(|t| t == "*" || t == ">") {
            Some("a broadcast goes to a subject, not a pattern".to_string())
        } else {
            let out = BrokerMessage {
                subject: msg.subject.clone(),
                body: msg.body.clone(),
                reply_to: None,
            };
            self.shared.relay.broadcast(out).await.err()
        };
        match refused {
            None => stats::bump(&self.shared.counters.client_publishes),
            Some(why) => {
                stats::bump(&self.shared.counters.client_publish_errors);
                debug!(client = %self.client.id, subject = %msg.subject, %why, "a client's broadcast was not fanned out");
                self.answer_error(&format!(
                    "broadcast to {} not sent to the subscribers: {why}",
                    crate::subjects::quoted(&msg.subject)
                ));
            }
        }
    }

    /// Delivers a client's message to the component, with the reply-to that reaches this
    /// client: `$ws.session.<id>.<its reply_to, or its subject>`.
    async fn deliver(&mut self, msg: BrokerMessage) {
        let answer_on = msg.reply_to.as_deref().unwrap_or(&msg.subject);
        let reply_to = format!(
            "{}{}.{answer_on}",
            crate::subjects::SESSION_PREFIX,
            self.client.id
        );
        self.hand_over(BrokerMessage {
            subject: msg.subject,
            body: msg.body,
            reply_to: Some(reply_to),
        })
        .await;
    }

    /// `$ws.connected` / `$ws.disconnected` with the client's id, address and user.
    async fn event(&mut self, subject: &str) {
        let body = serde_json::json!({
            "id": &*self.client.id,
            "remote_addr": self.client.remote_addr.to_string(),
            "user": self.client.user,
        });
        self.hand_over(BrokerMessage {
            subject: subject.to_string(),
            body: Bytes::from(serde_json::to_vec(&body).expect("events serialize")),
            reply_to: Some(format!(
                "{}{}.events",
                crate::subjects::SESSION_PREFIX,
                self.client.id
            )),
        })
        .await;
    }

    async fn hand_over(&mut self, msg: BrokerMessage) {
        if !self.shared.handler_linked.load(Ordering::Relaxed) {
            if let Some(count) = stats::bump_loss(&self.client.stats.dropped_no_handler) {
                warn!(client = %self.client.id, component = %self.shared.key.component, link_name = %self.shared.key.link_name, subject = %msg.subject, count, "a client's message came while the listener has no handler link; dropped (counted as dropped_no_handler; logged at the 1st, 10th, 100th, ... of this client)");
            }
            return;
        }
        let handler = match &self.handler {
            Some(handler) => Arc::clone(handler),
            None => match self
                .shared
                .handler_clients
                .get(&self.shared.key.component)
                .await
            {
                Ok(handler) => {
                    self.handler = Some(Arc::clone(&handler));
                    handler
                }
                Err(error) => {
                    stats::bump(&self.client.stats.delivery_errors);
                    warn!(client = %self.client.id, component = %self.shared.key.component, error = %format!("{error:#}"), subject = %msg.subject, "cannot reach the component over wRPC; message dropped");
                    return;
                }
            },
        };
        // One of the listener's delivery slots, shared by all its clients in arrival order
        // (the semaphore is fair): this client's socket is not read meanwhile, and its own
        // deliveries go on (they hold slots too, so waiting without them could never end).
        let acquire = Arc::clone(&self.shared.deliveries).acquire_owned();
        tokio::pin!(acquire);
        let slot = loop {
            tokio::select! {
                slot = &mut acquire => break slot,
                Some(len) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    self.bytes_in_flight -= len;
                }
            }
        };
        let Ok(slot) = slot else {
            return; // Never closed; but never a panic.
        };
        let len = msg.body.len();
        self.bytes_in_flight += len;
        let target = self.target;
        self.in_flight.push(Box::pin(async move {
            delivery::deliver(target, handler, msg.into(), None, None, None).await;
            drop(slot);
            len
        }));
    }
}
