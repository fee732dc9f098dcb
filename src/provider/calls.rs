//! The components' `publish` and `request` through a session: here, or forwarded to the replica
//! that owns it; the provider's `$ws.` subjects; and the calls other replicas forward here.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tracing::debug;
use wasmcloud_provider_sdk::{load_host_data, Context};

use super::{read, Replication, Route, WebSocketMessagingProvider, DESCRIBE_LIMIT, FORWARD_SLACK};
use crate::bindings::wasmcloud::messaging::types::BrokerMessage;
use crate::client::session::Session;
use crate::config::MAX_REQUEST_TIMEOUT_MS;
use crate::identity::SessionKey;
use crate::lattice::forward::{Answer, Call, Unanswered};
use crate::lattice::Replica;
use crate::subjects::RESERVED_SUBJECT_PREFIX;
use crate::{control, subjects};

impl WebSocketMessagingProvider {
    /// Sends `msg` on session `id`, which must belong to `component` and have session tracking
    /// on; `msg.subject` follows the rules of incoming subjects (so `$ws.` never leaves).
    pub async fn send_to_session(
        &self,
        key: &SessionKey,
        id: &str,
        msg: &BrokerMessage,
    ) -> Result<(), String> {
        let component = key.component.as_str();
        if let Some((listener, client)) = self.find_client(component, id) {
            subjects::check_enabled(
                listener.config().enable_session_tracking,
                &listener.key().link_name,
            )?;
            subjects::check_incoming(&msg.subject, msg.reply_to.as_deref())
                .map_err(|e| format!("`$ws.session.{id}.<subject>`: {e}; nothing was sent"))?;
            return listener.send_to(&client, msg);
        }
        if self.replica_of_client(id).is_some() {
            subjects::check_incoming(&msg.subject, msg.reply_to.as_deref())
                .map_err(|e| format!("`$ws.session.{id}.<subject>`: {e}; nothing was sent"))?;
            let call = Call::Publish {
                key: key.clone(),
                msg: BrokerMessage {
                    subject: format!("{}{id}.{}", subjects::SESSION_PREFIX, msg.subject),
                    body: msg.body.clone(),
                    reply_to: msg.reply_to.clone(),
                },
            };
            if let Some(answer) = self
                .call_client_elsewhere(id, call, super::listeners::FORWARD_LIMIT)
                .await
            {
                return super::listeners::done(answer);
            }
        }
        // The component's own sessions only (a pool's session is each member's).
        let session = read(&self.links)
            .iter()
            .find(|(k, l)| l.session.id == id && k.component == component)
            .map(|(_, l)| Arc::clone(&l.session));
        let Some(session) = session else {
            return Err(format!("component {component} has no session {id}"));
        };
        if !session.config.enable_session_tracking {
            return Err(format!(
                "session {id} (link {}) has session tracking off (enable_session_tracking = false): it cannot be addressed with `$ws.session.{id}.<subject>`",
                session.key.link_name
            ));
        }
        subjects::check_incoming(&msg.subject, msg.reply_to.as_deref())
            .map_err(|e| format!("`$ws.session.{id}.<subject>`: {e}; nothing was sent"))?;
        self.send_on(&session, msg).await
    }

    /// Where a call on `session` runs: here when this replica holds its connection (or the
    /// session is not shared between replicas), else at its owner. While no replica holds it
    /// (a takeover under way), waits for one until `deadline`.
    pub(crate) async fn route(
        &self,
        session: &Session,
        deadline: Instant,
    ) -> Result<Route, String> {
        let (Some(fence), Replication::Lattice(lattice)) = (&session.fence, &self.replication)
        else {
            return Ok(Route::Local);
        };
        // The owner's own calls (most of them) go no further than this check.
        if fence.holds() {
            return Ok(Route::Local);
        }
        let mut changes = lattice.changes();
        loop {
            if fence.holds() {
                return Ok(Route::Local);
            }
            if let Some(owner) = lattice.owner_of(&session.id) {
                if owner != lattice.me {
                    return Ok(Route::Owner(Arc::clone(lattice), owner));
                }
            }
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return Err(format!(
                    "no replica of the provider holds session {} ({}) yet (a takeover is under way?); gave up after {} ms (send_timeout_ms); nothing was sent",
                    session.id,
                    session.config.uri,
                    session.config.send_timeout.as_millis()
                )),
                () = fence.owned() => {}
                _ = changes.changed() => {}
                // The owner's lease may lapse without a change in the bucket.
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    /// Runs the call `make` builds at the owner of `session` until it answers, following the
    /// lease to a new owner while the old one is gone (no responders, "not the owner": the call
    /// never ran there). `Ok(None)`: this replica holds the session, run it here. The call is
    /// built only when it is forwarded: a call on the owner copies nothing.
    pub(crate) async fn forward(
        &self,
        session: &Session,
        make: impl Fn() -> Call,
        deadline: Instant,
    ) -> Result<Option<Answer>, String> {
        let mut built = None;
        loop {
            let (lattice, owner) = match self.route(session, deadline).await? {
                Route::Local => return Ok(None),
                Route::Owner(lattice, owner) => (lattice, owner),
            };
            let call = built.get_or_insert_with(&make);
            let limit = deadline.saturating_duration_since(Instant::now()) + FORWARD_SLACK;
            match lattice.call(&owner, call, limit).await? {
                Ok(Answer::NotOwner) | Err(Unanswered::NoResponders) => {
                    debug!(session = %session.id, owner = %owner.host, "the session's owner is gone; following the lease");
                    if Instant::now() >= deadline {
                        return Err(format!(
                            "replica {} of session {} is gone and no other replica took over within {} ms; nothing was sent",
                            owner.host,
                            session.id,
                            session.config.send_timeout.as_millis()
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(answer) => return Ok(Some(answer)),
                Err(Unanswered::TimedOut) => {
                    return Err(format!(
                        "replica {} that holds session {} did not answer within {} ms; the call may or may not have run there",
                        owner.host,
                        session.id,
                        limit.as_millis()
                    ))
                }
                Err(Unanswered::Other(error)) => {
                    return Err(format!(
                        "the call could not be forwarded to replica {} that holds session {}: {error}",
                        owner.host, session.id
                    ))
                }
            }
        }
    }

    /// Sends `msg` on `session`, here or at the replica that holds its connection.
    pub(crate) async fn send_on(
        &self,
        session: &Arc<Session>,
        msg: &BrokerMessage,
    ) -> Result<(), String> {
        let deadline = Instant::now() + session.config.send_timeout;
        let call = || Call::Publish {
            key: session.key.clone(),
            msg: msg.clone(),
        };
        match self.forward(session, call, deadline).await? {
            None => session.publish(msg).await,
            Some(Answer::Done) => Ok(()),
            Some(Answer::Failed(error)) => Err(error),
            Some(other) => Err(format!(
                "unexpected answer to a forwarded publish: {other:?}"
            )),
        }
    }

    pub(crate) async fn publish_message(
        &self,
        ctx: Option<Context>,
        msg: BrokerMessage,
    ) -> Result<(), String> {
        let (component, link_name) = caller(&ctx);
        subjects::check("subject", &msg.subject)?;
        if let Some(reply_to) = &msg.reply_to {
            subjects::check("reply_to", reply_to)?;
        }
        if let Some(listener) = self.consumer_listener(component, link_name) {
            return self.publish_to_listener(&listener, msg).await;
        }
        let session = self
            .consumer_session(component, link_name)
            .ok_or_else(|| no_link(component, link_name))?;
        if !msg.subject.starts_with(RESERVED_SUBJECT_PREFIX) {
            return self.send_on(&session, &msg).await;
        }
        subjects::check_enabled(
            session.config.enable_session_tracking,
            &session.key.link_name,
        )?;
        match subjects::parse(&msg.subject) {
            subjects::Subject::Session { id, subject } => {
                let forwarded = BrokerMessage {
                    subject: subject.to_string(),
                    body: msg.body.clone(),
                    reply_to: msg.reply_to.clone(),
                };
                self.send_to_session(&session.key, id, &forwarded).await
            }
            subjects::Subject::Close { id } => self.close_client(&session.key, id).await,
            _ => Err(subjects::unknown(&msg.subject, "publish")),
        }
    }

    pub(crate) async fn request_message(
        &self,
        ctx: Option<Context>,
        subject: String,
        body: Bytes,
        timeout_ms: u32,
    ) -> Result<BrokerMessage, String> {
        let (component, link_name) = caller(&ctx);
        subjects::check("subject", &subject)?;
        let listener = self.consumer_listener(component, link_name);
        let session = match &listener {
            Some(_) => None,
            None => Some(
                self.consumer_session(component, link_name)
                    .ok_or_else(|| no_link(component, link_name))?,
            ),
        };
        let config = match (&listener, &session) {
            (Some(listener), _) => listener.config(),
            (None, Some(session)) => &session.config,
            (None, None) => return Err(no_link(component, link_name)),
        };
        let timeout = match timeout_ms {
            0 => config.request_timeout,
            ms if u64::from(ms) > MAX_REQUEST_TIMEOUT_MS => {
                return Err(format!(
                    "request to {subject}: timeout-ms {ms} is more than the {MAX_REQUEST_TIMEOUT_MS} ms a request can wait (the wasmCloud host cuts a component's call to a provider at 10 s)"
                ))
            }
            ms => Duration::from_millis(u64::from(ms)),
        };
        if subject.starts_with(RESERVED_SUBJECT_PREFIX) {
            subjects::check_enabled(config.enable_session_tracking, link_name)?;
            let answer = match subjects::parse(&subject) {
                subjects::Subject::Sessions => {
                    let entries = self.describe(component).await;
                    control::sessions(entries.into_iter().map(|(info, _)| info).collect())
                }
                subjects::Subject::Stats => {
                    let entries = self.describe(component).await;
                    control::stats(
                        self.lattice_totals().await,
                        entries.into_iter().map(|(_, stats)| stats).collect(),
                    )
                }
                subjects::Subject::Presence { subject: of } => {
                    let listener = listener.ok_or_else(|| {
                        format!("request to {}: `$ws.presence.<subject>` asks a listener, and link {link_name} dials a server", subjects::quoted(&subject))
                    })?;
                    self.presence(&listener, of).await?
                }
                subjects::Subject::Session { id, subject } => {
                    let key = SessionKey {
                        component: component.to_string(),
                        link_name: link_name.to_string(),
                    };
                    return self.request_client(&key, id, subject, body, timeout).await;
                }
                _ => return Err(subjects::unknown(&subject, "request")),
            };
            return Ok(BrokerMessage {
                subject,
                body: answer,
                reply_to: None,
            });
        }
        let Some(session) = session else {
            return Err(format!(
                "request to {subject}: link {link_name} is a listener, whose requests go to one client: `$ws.session.<id>.<subject>`"
            ));
        };
        let call = || Call::Request {
            key: session.key.clone(),
            subject: subject.clone(),
            body: body.clone(),
            timeout_ms: timeout.as_millis() as u64,
        };
        let deadline = Instant::now() + session.config.send_timeout.min(timeout);
        match self.forward(&session, call, deadline).await? {
            None => session.request(&subject, body, timeout).await,
            Some(Answer::Reply(reply)) => Ok(reply),
            Some(Answer::Failed(error)) => Err(error),
            Some(other) => Err(format!(
                "unexpected answer to a forwarded request: {other:?}"
            )),
        }
    }

    /// The host id of the replica that holds `session`'s connection, as far as this one knows.
    pub(crate) fn owner_of(&self, session: &Session) -> Option<String> {
        match (&session.fence, &self.replication) {
            (Some(fence), Replication::Lattice(lattice)) => {
                if fence.holds() {
                    Some(lattice.me.host.clone())
                } else {
                    lattice.owner_of(&session.id).map(|o| o.host)
                }
            }
            _ => self.host_id(),
        }
    }

    pub(crate) fn host_id(&self) -> Option<String> {
        match &self.replication {
            Replication::Lattice(lattice) => Some(lattice.me.host.clone()),
            _ => load_host_data().ok().map(|h| h.host_id.clone()),
        }
    }

    /// This replica's entries (`$ws.sessions`, `$ws.stats`) of a session.
    pub(crate) fn describe_here(
        &self,
        session: &Session,
    ) -> (serde_json::Value, serde_json::Value) {
        let owner = self.owner_of(session);
        (
            control::session_info(session, owner.as_deref(), &self.members_of(session)),
            control::session_stats(session),
        )
    }

    /// The `$ws.sessions` and `$ws.stats` entries of `component`'s sessions, each from the
    /// replica that holds its connection (this one's own view when the owner does not answer).
    pub(crate) async fn describe(
        &self,
        component: &str,
    ) -> Vec<(serde_json::Value, serde_json::Value)> {
        let mut entries = self.describe_sessions(component).await;
        for listener in self.listeners_of(component) {
            entries.extend(self.all_client_entries(&listener, DESCRIBE_LIMIT).await);
        }
        entries
    }

    /// [`Self::describe`] of the dialling sessions.
    pub(crate) async fn describe_sessions(
        &self,
        component: &str,
    ) -> Vec<(serde_json::Value, serde_json::Value)> {
        let mine = self.list_sessions(component);
        futures::future::join_all(mine.iter().map(|session| async move {
            let here = || self.describe_here(session);
            let (Some(fence), Replication::Lattice(lattice)) = (&session.fence, &self.replication)
            else {
                return here();
            };
            let owner = match lattice.owner_of(&session.id) {
                Some(owner) if !fence.holds() && owner != lattice.me => owner,
                _ => return here(),
            };
            let call = Call::Describe {
                key: session.key.clone(),
            };
            match lattice.call(&owner, &call, DESCRIBE_LIMIT).await {
                Ok(Ok(Answer::Json(json))) => {
                    match serde_json::from_slice::<serde_json::Value>(&json) {
                        Ok(serde_json::Value::Array(mut pair)) if pair.len() == 2 => {
                            let stats = pair.pop().unwrap_or_default();
                            let info = pair.pop().unwrap_or_default();
                            (info, stats)
                        }
                        _ => here(),
                    }
                }
                _ => here(),
            }
        }))
        .await
    }

    /// `$ws.stats`'s provider object: this replica's counters plus those of every other replica
    /// that holds one of this replica's sessions.
    pub(crate) async fn lattice_totals(&self) -> serde_json::Map<String, serde_json::Value> {
        let sessions = self.sessions();
        let mut provider = self.local_totals(&sessions);
        let Replication::Lattice(lattice) = &self.replication else {
            return provider;
        };
        let mut owners: Vec<Replica> = sessions
            .iter()
            .filter_map(|s| lattice.owner_of(&s.id))
            .filter(|o| *o != lattice.me)
            .collect();
        owners.sort_by(|a, b| a.instance.cmp(&b.instance));
        owners.dedup();
        // And the other replicas with listeners (their clients' counters), each once.
        let mut peers = lattice.listening_peers();
        peers.retain(|(tag, _)| !owners.iter().any(|o| o.instance.ends_with(tag.as_str())));
        let answers = futures::future::join_all(
            owners
                .iter()
                .map(|owner| lattice.call(owner, &Call::Totals, DESCRIBE_LIMIT))
                .map(futures::FutureExt::boxed)
                .chain(peers.iter().map(|(tag, host)| {
                    futures::FutureExt::boxed(lattice.call_clients_of(
                        tag,
                        host,
                        &Call::Totals,
                        DESCRIBE_LIMIT,
                    ))
                })),
        )
        .await;
        for answer in answers {
            if let Ok(Ok(Answer::Json(json))) = answer {
                if let Ok(serde_json::Value::Object(other)) = serde_json::from_slice(&json) {
                    control::add_totals(&mut provider, &other);
                }
            }
        }
        provider
    }

    pub(crate) fn local_totals(
        &self,
        sessions: &[Arc<Session>],
    ) -> serde_json::Map<String, serde_json::Value> {
        let listeners = self.all_listeners();
        let clients: Vec<_> = listeners.iter().flat_map(|l| l.clients()).collect();
        let mut provider =
            control::provider_totals(&self.totals, sessions, clients.iter().map(|c| &*c.stats));
        provider.insert("listeners".into(), serde_json::json!(listeners.len()));
        provider.insert("clients".into(), serde_json::json!(clients.len()));
        self.listener_counters.add_json(&mut provider);
        if let Replication::Lattice(lattice) = &self.replication {
            for (name, count) in lattice.counters() {
                provider.insert(name.into(), serde_json::json!(count));
            }
            // Which replica's own figures (`tasks_alive`, `sessions`) these are.
            provider.insert("replica".into(), serde_json::json!(lattice.me.host));
        }
        provider
    }

    /// Runs a call another replica forwarded to this one, if this one holds the session.
    pub(crate) async fn serve_forwarded(&self, call: Call) -> Answer {
        let for_a_client = match &call {
            Call::Publish { msg, .. } => msg.subject.starts_with(RESERVED_SUBJECT_PREFIX),
            Call::Request { subject, .. } => subject.starts_with(RESERVED_SUBJECT_PREFIX),
            Call::Clients { .. } => true,
            Call::Describe { .. } | Call::Totals => false,
        };
        if for_a_client {
            return self.serve_client_call(call).await;
        }
        let key = match &call {
            Call::Publish { key, .. } | Call::Request { key, .. } | Call::Describe { key } => key,
            Call::Clients { .. } => return Answer::NotOwner,
            Call::Totals => {
                let totals = self.local_totals(&self.sessions());
                return Answer::Json(Bytes::from(
                    serde_json::to_vec(&totals).expect("totals serialize"),
                ));
            }
        };
        let Some(session) = self.session_of(key) else {
            return Answer::NotOwner;
        };
        if session.fence.as_ref().is_some_and(|f| !f.holds()) {
            return Answer::NotOwner;
        }
        match call {
            Call::Publish { msg, .. } => match session.publish(&msg).await {
                Ok(()) => Answer::Done,
                Err(error) => Answer::Failed(error),
            },
            Call::Request {
                subject,
                body,
                timeout_ms,
                ..
            } => match session
                .request(&subject, body, Duration::from_millis(timeout_ms))
                .await
            {
                Ok(reply) => Answer::Reply(reply),
                Err(error) => Answer::Failed(error),
            },
            Call::Describe { .. } => {
                let (info, stats) = self.describe_here(&session);
                Answer::Json(Bytes::from(
                    serde_json::to_vec(&serde_json::json!([info, stats]))
                        .expect("descriptions serialize"),
                ))
            }
            Call::Totals | Call::Clients { .. } => Answer::NotOwner,
        }
    }
}

/// The calling component and the link name its call came through.
pub(crate) fn caller(ctx: &Option<Context>) -> (&str, &str) {
    match ctx {
        Some(ctx) => (
            ctx.component.as_deref().unwrap_or("<unknown>"),
            ctx.link_name(),
        ),
        None => ("<unknown>", "default"),
    }
}

pub(crate) fn no_link(component: &str, link_name: &str) -> String {
    format!("no WebSocket link for component {component} with link name {link_name}")
}
