//! wasmCloud capability provider for `wasmcloud:messaging@0.2.0` over WebSocket.
//!
//! Layout:
//! - `lib.rs` (this file): the provider, its link maps and session storage, the `Provider` trait
//!   (links, health, shutdown) and the `consumer` export (`publish`, `request`), and [`run`].
//! - [`connection`]: config keys, parsing, validation, merging provider defaults with link config.
//! - [`envelope`]: the wire format (JSON envelope or raw) between messages and frames.
//! - [`session`]: one WebSocket connection owned by one task: connect, reconnect, write, read.
//! - [`socket`]: dialling, TLS and the handshake (yawc), permessage-deflate, errors in words.
//! - [`requests`]: request-reply correlation (inboxes of waiting requests).
//! - [`delivery`]: incoming messages to the component's `handle-message`, bounded in flight.
//! - `exports`: serves the `consumer` export over wRPC (wrpc-transport-nats 0.31, not the SDK's 0.29).
//! - `invoke`: the wRPC client that calls `handle-message` (one per component).
//! - [`stats`]: per-session counters and the provider's totals.
//! - [`metrics`]: the counters as OpenTelemetry metrics.
//! - [`subjects`]: the provider's own `$ws.` subjects (session list, stats, send to a session),
//!   and the rules every subject a component gives must follow.
//! - [`tls`]: trust roots, client certificates and TLS failures in plain words for `wss://`.
//! - [`lattice`]: replicas (`replicas = one`): leases in JetStream key-value that make one replica
//!   own each session, and the forwarding of calls from standbys to the owner.
//!
//! Data flows one way per direction: component call -> lookup by (component, link name) ->
//! session queue -> socket writer; socket reader -> decode -> delivery -> component handler.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use bytes::Bytes;
use tokio::time::Instant;
use tracing::{debug, error, info};
use wasmcloud_provider_sdk::{
    initialize_observability, load_host_data, run_provider, Context, HealthCheckRequest,
    HealthCheckResponse, LinkConfig, LinkDeleteInfo, Provider, ProviderConfigUpdate,
};

pub mod client;
pub mod config;
pub mod control;
pub mod delivery;
pub mod envelope;
mod exports;
pub mod identity;
pub mod lattice;
pub mod metrics;
pub mod requests;
pub mod server;
pub mod stats;
pub mod subjects;
pub mod websocket;

use crate::client::session::{Session, SessionState};
use crate::config::{ConnectionConfig, ProviderDefaults, Replicas, MAX_REQUEST_TIMEOUT_MS};
use crate::delivery::HandlerClients;
use crate::identity::SessionKey;
use crate::lattice::forward::{Answer, Call, Unanswered};
use crate::lattice::lease::{Claim, Fence, Leave};
use crate::lattice::{Lattice, Replica};

/// wRPC bindings generated from `wit/` (world `interfaces`).
pub mod bindings {
    wit_bindgen_wrpc::generate!({
        world: "interfaces",
        with: {
            "wasmcloud:messaging/consumer@0.2.0": generate,
            "wasmcloud:messaging/handler@0.2.0": generate,
            "wasmcloud:messaging/types@0.2.0": generate,
        }
    });
}

use bindings::wasmcloud::messaging::types::BrokerMessage;

/// The name the provider reports to the host and in logs.
pub use crate::identity::PROVIDER_NAME;

pub use crate::subjects::RESERVED_SUBJECT_PREFIX;

/// How long a link's settings may take to read (`tls_ca_file` is a file) before the link is
/// refused: the SDK handles links, health and shutdown one at a time.
const SETTINGS_DEADLINE: Duration = Duration::from_millis(500);

const TLS_CA_FILE: &str = "tls_ca_file";

/// How long shutdown waits for sessions to send their Close frames (the host allows 300 ms).
const SHUTDOWN_GRACE: Duration = Duration::from_millis(150);

/// How much longer than the call itself a forwarded call may take (the trip to the owner and back).
pub(crate) const FORWARD_SLACK: Duration = Duration::from_millis(400);

/// How long `$ws.sessions` and `$ws.stats` wait for another replica's part.
const DESCRIBE_LIMIT: Duration = Duration::from_millis(1000);

/// A session and the links that hold it: a consumer link and a handler link with the same
/// (component, link name) share one session, which closes when the last of them goes.
#[derive(Clone)]
struct Linked {
    session: Arc<Session>,
    roles: Roles,
    /// With `replicas = one`: this replica's claim on the session's lease.
    claim: Option<Arc<Claim>>,
}

impl Linked {
    fn has(&self, role: Role) -> bool {
        self.roles.has(role)
    }

    fn set(&mut self, role: Role, linked: bool) {
        self.roles.set(role, linked);
        if role == Role::Handler {
            self.session.set_handler_linked(linked);
        }
    }
}

/// Which of the two links of one (component, link name) are put.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Roles {
    pub consumer: bool,
    pub handler: bool,
}

impl Roles {
    /// Just `role`.
    pub(crate) fn of(role: Role) -> Roles {
        let mut roles = Roles::default();
        roles.set(role, true);
        roles
    }

    pub(crate) fn has(&self, role: Role) -> bool {
        match role {
            Role::Consumer => self.consumer,
            Role::Handler => self.handler,
        }
    }

    pub(crate) fn set(&mut self, role: Role, linked: bool) {
        match role {
            Role::Consumer => self.consumer = linked,
            Role::Handler => self.handler = linked,
        }
    }
}

/// Which side of the provider a link is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// component -> provider: `publish` and `request`.
    Consumer,
    /// provider -> component: delivery to `handle-message`.
    Handler,
}

impl Role {
    pub(crate) fn other(self) -> Role {
        match self {
            Role::Consumer => Role::Handler,
            Role::Handler => Role::Consumer,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Consumer => "consumer",
            Role::Handler => "handler",
        })
    }
}

/// The provider: its links, keyed by (component, link name), and their sessions.
#[derive(Clone, Default)]
pub struct WebSocketMessagingProvider {
    /// Every session with the links that hold it, by (component, link name): the one map of
    /// links and sessions.
    links: Arc<RwLock<HashMap<SessionKey, Linked>>>,
    /// Provider-level config and secrets: the defaults of every link.
    default_config: Arc<RwLock<ProviderDefaults>>,
    /// One wRPC client per component that receives deliveries.
    handler_clients: HandlerClients,
    /// The counters of sessions that are gone, for the provider's totals.
    totals: stats::Totals,
    /// How this replica coordinates with the provider's other replicas.
    replication: Replication,
    /// Listeners (server mode), by (component, link name), with the links that hold them.
    listeners: Arc<RwLock<HashMap<SessionKey, server::links::LinkedListener>>>,
    /// The counters of every listener.
    listener_counters: Arc<server::ListenerCounters>,
    /// Links with `listen` whose address could not be bound (the error), for health, until the
    /// link is put again or deleted.
    unbound: Arc<RwLock<HashMap<SessionKey, String>>>,
}

/// Whether sessions with `replicas = one` can be coordinated between replicas.
#[derive(Clone, Default)]
pub enum Replication {
    /// Not started by a host (the library used on its own): one instance, no leases.
    #[default]
    Alone,
    /// Leases and forwarding through the lattice's NATS.
    Lattice(Arc<Lattice>),
    /// The lattice's NATS has no JetStream (the reason): `replicas = one` links are refused.
    Unavailable(String),
}

/// Where a call on a session runs.
enum Route {
    /// Here: this replica holds the connection (or the session is not shared between replicas).
    Local,
    /// At the replica that owns the session.
    Owner(Arc<Lattice>, Replica),
}

pub(crate) fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

impl WebSocketMessagingProvider {
    /// A provider whose links start from `defaults`.
    pub fn new(defaults: ProviderDefaults) -> Self {
        WebSocketMessagingProvider {
            default_config: Arc::new(RwLock::new(defaults)),
            ..Default::default()
        }
    }

    /// The same provider, coordinating with its other replicas as `replication` says.
    pub fn with_replication(mut self, replication: Replication) -> Self {
        self.replication = replication;
        self
    }

    /// The session of (component, link name), whichever links hold it.
    fn session_of(&self, key: &SessionKey) -> Option<Arc<Session>> {
        read(&self.links).get(key).map(|l| Arc::clone(&l.session))
    }

    /// The session a component's call goes through: its consumer link with that link name.
    pub fn consumer_session(&self, component: &str, link_name: &str) -> Option<Arc<Session>> {
        let key = SessionKey {
            component: component.to_string(),
            link_name: link_name.to_string(),
        };
        read(&self.links)
            .get(&key)
            .filter(|l| l.roles.consumer)
            .map(|l| Arc::clone(&l.session))
    }

    /// Every live session.
    pub fn sessions(&self) -> Vec<Arc<Session>> {
        read(&self.links)
            .values()
            .map(|l| Arc::clone(&l.session))
            .collect()
    }

    /// Validates a link and attaches it to a session: the session of the other link with the
    /// same key when there is one, else a new one that connects in the background.
    async fn put_link(
        &self,
        role: Role,
        key: SessionKey,
        config: &HashMap<String, String>,
        secrets: &HashMap<String, wasmcloud_provider_sdk::core::secrets::SecretValue>,
    ) -> anyhow::Result<()> {
        let refuse = |reason: String| {
            let message = format!("{role} link {key} refused: {reason}");
            error!(component = %key.component, link_name = %key.link_name, "{message}");
            anyhow!(message)
        };
        let defaults = read(&self.default_config).clone();
        let cfg = if !config.contains_key(TLS_CA_FILE) && !defaults.sets(TLS_CA_FILE) {
            ConnectionConfig::from_link(&defaults, &key.component, &key.link_name, config, secrets)
                .map_err(|e| refuse(e.to_string()))?
        } else {
            // Parsing reads `tls_ca_file`: on a blocking thread, with a deadline, so that a file
            // on a hung file system (or a FIFO nobody writes) never holds up the SDK's command
            // loop.
            let (component, link_name) = (key.component.clone(), key.link_name.clone());
            let (config, secrets) = (config.clone(), secrets.clone());
            let parse = tokio::task::spawn_blocking(move || {
                ConnectionConfig::from_link(&defaults, &component, &link_name, &config, &secrets)
            });
            match tokio::time::timeout(SETTINGS_DEADLINE, parse).await {
                Ok(Ok(parsed)) => parsed.map_err(|e| refuse(e.to_string()))?,
                Ok(Err(failed)) => {
                    return Err(refuse(format!("reading the settings failed ({failed})")))
                }
                Err(_) => {
                    return Err(refuse(format!(
                        "invalid `{TLS_CA_FILE}`: the file could not be read within {} ms (a file system that does not answer, or a pipe nobody writes?)",
                        SETTINGS_DEADLINE.as_millis()
                    )))
                }
            }
        };
        self.attach(role, key.clone(), cfg).map_err(refuse)
    }

    /// Attaches a link with valid settings to its session (the SDK's command loop calls this:
    /// it never waits): the session of the other link with the same key when there is one and
    /// the settings are equal, else a new one that connects in the background.
    fn attach(&self, role: Role, key: SessionKey, cfg: ConnectionConfig) -> Result<(), String> {
        if cfg.listen.is_some() || read(&self.listeners).contains_key(&key) {
            return self.attach_listener(role, key, cfg);
        }
        let mut links = write(&self.links);
        if let Some(linked) = links.get_mut(&key) {
            if linked.has(role) {
                // The SDK does not pass a second put of a linked link on; should one come, it
                // changes nothing (new settings take a delete and a put).
                debug!(%role, %key, "repeated put of an existing link; nothing to do");
                return Ok(());
            }
            let differ = linked.session.config.differing_keys(&cfg);
            if !differ.is_empty() {
                return Err(format!(
                    "it would share session {} with the {} link of the same component and link name, but its settings differ in {}",
                    linked.session.id,
                    role.other(),
                    differ.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
                ));
            }
            info!(%role, %key, session = %linked.session.id, "link joins the existing session");
            linked.set(role, true);
            return Ok(());
        }
        let lattice = match (&cfg.replicas, &self.replication) {
            (Replicas::One, Replication::Lattice(lattice)) => Some(Arc::clone(lattice)),
            (Replicas::One, Replication::Unavailable(reason)) => {
                return Err(format!(
                    "`replicas` is `one`, which needs JetStream on the lattice's NATS to choose the one replica that holds the connection ({reason}); enable JetStream (wadm needs it too), or set `replicas` to `all` for a provider that runs as a single instance"
                ))
            }
            _ => None,
        };
        let failover = cfg.failover;
        let replicated = lattice.as_ref().map(|_| {
            (
                lattice::lease_key(&key.component, &key.link_name),
                Fence::default(),
            )
        });
        let session = Session::start(
            key.clone(),
            cfg,
            self.handler_clients.clone(),
            role == Role::Handler,
            &self.totals,
            replicated.clone(),
        );
        let claim = lattice.zip(replicated).map(|(lattice, (id, fence))| {
            let weak = Arc::downgrade(&session);
            Arc::new(Claim::start(
                lattice,
                id,
                key.clone(),
                failover,
                fence,
                Box::new(move || {
                    weak.upgrade()
                        .and_then(|s| s.down_for())
                        .map(|d| d.as_millis() as u64)
                }),
            ))
        });
        // The session already knows whether a handler link holds it (a frame may come at once).
        links.insert(
            key,
            Linked {
                session,
                roles: Roles::of(role),
                claim,
            },
        );
        Ok(())
    }

    fn delete_link(&self, role: Role, key: SessionKey) {
        if self.delete_listener_link(role, &key) {
            return;
        }
        let mut links = write(&self.links);
        let Some(linked) = links.get_mut(&key).filter(|l| l.has(role)) else {
            debug!(%role, %key, "delete of an unknown link; nothing to do");
            return;
        };
        linked.set(role, false);
        let session = Arc::clone(&linked.session);
        if linked.has(role.other()) {
            info!(%role, %key, session = %session.id, "link deleted; the session stays for the other link");
        } else {
            info!(%role, %key, session = %session.id, "link deleted; closing its session");
            let claim = links.remove(&key).and_then(|l| l.claim);
            session.close();
            if let Some(claim) = claim {
                // Not waited for here (the SDK's command loop): the Close frame goes out, then
                // the lease key is deleted.
                tokio::spawn(async move {
                    session.wait_closed(SHUTDOWN_GRACE).await;
                    claim.leave(Leave::Delete, Duration::from_secs(2)).await;
                });
            }
        }
        drop(links);
        if role == Role::Handler {
            self.forget_handler_client_if_unused(&key.component);
        }
    }

    /// Forgets `component`'s wRPC client once no handler link (of a session or a listener)
    /// delivers to it. Takes one lock at a time.
    fn forget_handler_client_if_unused(&self, component: &str) {
        let in_links = read(&self.links)
            .iter()
            .any(|(k, l)| l.roles.handler && k.component == component);
        let in_listeners = read(&self.listeners)
            .iter()
            .any(|(k, l)| l.roles.handler && k.component == component);
        if !in_links && !in_listeners {
            self.handler_clients.forget(component);
        }
    }

    /// How long `session` has been without a connection, and in which state, for health. On a
    /// standby that is the owner's word (its lease says how long it has been down), or, when no
    /// replica holds the session, the time since the last owner's lease lapsed.
    fn down_for(&self, session: &Session) -> Option<(Duration, String)> {
        if session.state() != SessionState::Standby {
            return session
                .down_for()
                .map(|d| (d, session.state().as_str().to_string()));
        }
        let Replication::Lattice(lattice) = &self.replication else {
            return None;
        };
        let observed = lattice.observed(&session.id)?;
        match (&observed.lease, lattice.owner_of(&session.id)) {
            (Some(lease), Some(owner)) => lease.down_ms.map(|ms| {
                (
                    Duration::from_millis(ms) + observed.seen.elapsed(),
                    format!("without a connection at replica {}", owner.host),
                )
            }),
            (lease, _) => {
                let failover = lease.as_ref().map_or(session.config.failover, |l| {
                    Duration::from_millis(l.failover_ms)
                });
                let orphaned = observed.seen.elapsed().checked_sub(failover)?;
                Some((orphaned, "held by no replica".to_string()))
            }
        }
    }

    /// The sessions of `component`, whatever their link names, ordered by link name.
    pub fn list_sessions(&self, component: &str) -> Vec<Arc<Session>> {
        let mut mine: Vec<_> = read(&self.links)
            .values()
            .filter(|l| l.session.key.component == component)
            .map(|l| Arc::clone(&l.session))
            .collect();
        mine.sort_by(|a, b| a.key.cmp(&b.key));
        mine
    }

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
            subjects::check_enabled(listener.config(), &listener.key().link_name)?;
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
                .call_client_elsewhere(id, call, server::links::FORWARD_LIMIT)
                .await
            {
                return server::links::done(answer);
            }
        }
        let session = read(&self.links)
            .values()
            .find(|l| l.session.id == id)
            .map(|l| Arc::clone(&l.session));
        let session = match session {
            Some(session) if session.key.component == component => session,
            _ => return Err(format!("component {component} has no session {id}")),
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
    async fn route(&self, session: &Session, deadline: Instant) -> Result<Route, String> {
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
    async fn forward(
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
    async fn send_on(&self, session: &Arc<Session>, msg: &BrokerMessage) -> Result<(), String> {
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

    async fn publish_message(
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
        subjects::check_enabled(&session.config, &session.key.link_name)?;
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

    async fn request_message(
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
            subjects::check_enabled(config, link_name)?;
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
    fn owner_of(&self, session: &Session) -> Option<String> {
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
    fn describe_here(&self, session: &Session) -> (serde_json::Value, serde_json::Value) {
        let owner = self.owner_of(session);
        (
            control::session_info(session, owner.as_deref()),
            control::session_stats(session),
        )
    }

    /// The `$ws.sessions` and `$ws.stats` entries of `component`'s sessions, each from the
    /// replica that holds its connection (this one's own view when the owner does not answer).
    async fn describe(&self, component: &str) -> Vec<(serde_json::Value, serde_json::Value)> {
        let mut entries = self.describe_sessions(component).await;
        for listener in self.listeners_of(component) {
            entries.extend(self.all_client_entries(&listener, DESCRIBE_LIMIT).await);
        }
        entries
    }

    /// [`Self::describe`] of the dialling sessions.
    async fn describe_sessions(
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
    async fn lattice_totals(&self) -> serde_json::Map<String, serde_json::Value> {
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

    fn local_totals(
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
    async fn serve_forwarded(&self, call: Call) -> Answer {
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
fn caller(ctx: &Option<Context>) -> (&str, &str) {
    match ctx {
        Some(ctx) => (
            ctx.component.as_deref().unwrap_or("<unknown>"),
            ctx.link_name(),
        ),
        None => ("<unknown>", "default"),
    }
}

fn no_link(component: &str, link_name: &str) -> String {
    format!("no WebSocket link for component {component} with link name {link_name}")
}

impl Provider for WebSocketMessagingProvider {
    async fn receive_link_config_as_target(
        &self,
        LinkConfig {
            source_id,
            link_name,
            config,
            secrets,
            ..
        }: LinkConfig<'_>,
    ) -> anyhow::Result<()> {
        let key = SessionKey {
            component: source_id.to_string(),
            link_name: link_name.to_string(),
        };
        self.put_link(Role::Consumer, key, config, secrets).await
    }

    async fn receive_link_config_as_source(
        &self,
        LinkConfig {
            target_id,
            link_name,
            config,
            secrets,
            ..
        }: LinkConfig<'_>,
    ) -> anyhow::Result<()> {
        let key = SessionKey {
            component: target_id.to_string(),
            link_name: link_name.to_string(),
        };
        self.put_link(Role::Handler, key, config, secrets).await
    }

    async fn delete_link_as_target(&self, info: impl LinkDeleteInfo) -> anyhow::Result<()> {
        let key = SessionKey {
            component: info.get_source_id().to_string(),
            link_name: info.get_link_name().to_string(),
        };
        self.delete_link(Role::Consumer, key);
        Ok(())
    }

    async fn delete_link_as_source(&self, info: impl LinkDeleteInfo) -> anyhow::Result<()> {
        let key = SessionKey {
            component: info.get_target_id().to_string(),
            link_name: info.get_link_name().to_string(),
        };
        self.delete_link(Role::Handler, key);
        Ok(())
    }

    async fn on_config_update(&self, update: impl ProviderConfigUpdate) -> anyhow::Result<()> {
        let current = read(&self.default_config).clone();
        match current.with_config(update.get_values()) {
            Ok(updated) => {
                *write(&self.default_config) = updated;
                info!("provider config updated; links put from now on use it");
                Ok(())
            }
            Err(e) => {
                error!("provider config update refused: {e}");
                Err(anyhow!("provider config update refused: {e}"))
            }
        }
    }

    /// Unhealthy, naming them, while sessions have been without a connection for longer than
    /// their `reconnect_max_delay_ms` (the longest a working server can keep one waiting);
    /// healthy with no message otherwise.
    async fn health_request(&self, _: &HealthCheckRequest) -> anyhow::Result<HealthCheckResponse> {
        let unbound: Vec<String> = read(&self.unbound)
            .iter()
            .map(|(key, error)| format!("listener of {key} could not bind {error}"))
            .collect();
        if !unbound.is_empty() {
            let message = unbound.join("; ");
            debug!(%message, "health check: unhealthy");
            return Ok(HealthCheckResponse {
                healthy: false,
                message: Some(message),
            });
        }
        let sessions = self.sessions();
        let total = sessions.len();
        let mut down: Vec<(Arc<Session>, Duration, String)> = sessions
            .into_iter()
            .filter_map(|s| {
                let (down_for, state) = self.down_for(&s)?;
                (down_for > s.config.reconnect_max_delay).then_some((s, down_for, state))
            })
            .collect();
        if down.is_empty() {
            return Ok(HealthCheckResponse {
                healthy: true,
                message: None,
            });
        }
        down.sort_by(|a, b| a.0.key.cmp(&b.0.key));
        let names: Vec<String> = down
            .iter()
            .map(|(s, down_for, state)| {
                format!(
                    "{}/{} to {} ({} for {} s, longer than reconnect_max_delay_ms = {})",
                    s.key.component,
                    s.key.link_name,
                    s.config.uri,
                    state,
                    down_for.as_secs(),
                    s.config.reconnect_max_delay.as_millis()
                )
            })
            .collect();
        let message = format!(
            "{} of {} sessions without a connection: {}",
            down.len(),
            total,
            names.join("; ")
        );
        debug!(%message, "health check: unhealthy");
        Ok(HealthCheckResponse {
            healthy: false,
            message: Some(message),
        })
    }

    async fn shutdown(&self) -> anyhow::Result<()> {
        let listeners: Vec<_> = write(&self.listeners)
            .drain()
            .map(|(_, l)| l.listener)
            .collect();
        for listener in &listeners {
            listener.close();
        }
        let linked: Vec<_> = write(&self.links).drain().map(|(_, l)| l).collect();
        let sessions: Vec<_> = linked.iter().map(|l| Arc::clone(&l.session)).collect();
        for session in &sessions {
            session.close();
        }
        // Close frames go out and leases are released (a standby takes over at once), all in
        // parallel; the host kills the process 300 ms after asking.
        let closing =
            futures::future::join_all(sessions.iter().map(|s| s.wait_closed(SHUTDOWN_GRACE)));
        let leaving = futures::future::join_all(
            linked
                .iter()
                .filter_map(|l| l.claim.as_ref())
                .map(|c| c.leave(Leave::Release, SHUTDOWN_GRACE)),
        );
        let stopping =
            futures::future::join_all(listeners.iter().map(|l| l.wait_closed(SHUTDOWN_GRACE)));
        futures::future::join3(closing, leaving, stopping).await;
        info!(sessions = sessions.len(), "provider shut down");
        Ok(())
    }
}

/// Runs the provider the way the host starts it: HostData on stdin, logging set up the host's
/// way, links and control messages through the SDK, the `consumer` export served over wRPC.
pub async fn run() -> anyhow::Result<()> {
    initialize_observability!(
        PROVIDER_NAME,
        std::env::var_os("PROVIDER_MESSAGING_WEBSOCKET_FLAMEGRAPH_PATH")
    );
    let host_data = load_host_data().context("failed to load host data")?;
    let defaults = ProviderDefaults::new(&host_data.config, &host_data.secrets)
        .map_err(|e| anyhow!("provider config: {e}"))?;
    let replication = match Lattice::start(host_data).await {
        Ok(lattice) => Replication::Lattice(lattice),
        Err(error) => {
            let reason = format!("{error:#}");
            error!(%reason, "the lattice's NATS has no usable JetStream: links with `replicas = one` (the default) are refused; only `replicas = all` links work");
            Replication::Unavailable(reason)
        }
    };
    let provider = WebSocketMessagingProvider::new(defaults).with_replication(replication.clone());
    if let Replication::Lattice(lattice) = &replication {
        let serving = provider.clone();
        lattice
            .serve(Arc::new(move |call| {
                let provider = serving.clone();
                Box::pin(async move { provider.serve_forwarded(call).await })
            }))
            .await
            .context("failed to serve calls forwarded by other replicas")?;
    }
    let observed = provider.clone();
    metrics::register(move || {
        observed
            .sessions()
            .iter()
            .map(|s| metrics::SessionView {
                stats: Arc::clone(&s.stats),
                attributes: s.metric_attributes.clone(),
                open: s.state() == SessionState::Open,
            })
            .collect()
    });
    let observed = provider.clone();
    let counters = Arc::clone(&provider.listener_counters);
    metrics::register_listeners(
        server::ListenerCounters::NAMES,
        move || counters.snapshot(),
        move || {
            observed
                .all_listeners()
                .iter()
                .map(|l| metrics::ListenerView {
                    key: l.key().clone(),
                    listen: l.local_addr().to_string(),
                    clients: l.client_count(),
                })
                .collect()
        },
    );
    let shutdown = run_provider(provider.clone(), PROVIDER_NAME)
        .await
        .context("failed to start the provider")?;
    exports::serve(host_data, provider, shutdown)
        .await
        .context("failed to serve the provider's exports")?;
    info!("provider stopped");
    Ok(())
}
