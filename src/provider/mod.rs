//! The provider: its links, each a session (a link with `uri`, client mode) or a listener (a link
//! with `listen`, server mode), kept in one map per kind by (component, link name).
//!
//! - this file: the maps, putting and deleting links, the sessions' lookups;
//! - [`calls`]: the components' `publish` and `request` (and the provider's `$ws.` subjects), to a
//!   session here or forwarded to the replica that owns it, and the calls other replicas forward;
//! - [`listeners`]: the same for listeners (server mode);
//! - [`sdk`]: the SDK's `Provider` trait (links, config updates, health, shutdown);
//! - [`exports`]: the `consumer` export served over wRPC.

pub mod calls;
pub mod exports;
pub mod history;
pub mod listeners;
pub mod relay;
pub mod sdk;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::anyhow;
use tracing::{debug, error, info};

use crate::client::session::{Session, SessionState};
use crate::config::{ConnectionConfig, Format, ProviderDefaults, Replicas};
use crate::delivery::HandlerClients;
use crate::identity::SessionKey;
use crate::lattice::lease::{Claim, Fence, Leave};
use crate::lattice::{Lattice, Replica};
use crate::{lattice, server, stats};

/// How long a link's settings may take to read (`tls_ca_file` is a file) before the link is
/// refused: the SDK handles links, health and shutdown one at a time.
const SETTINGS_DEADLINE: Duration = Duration::from_millis(500);

const TLS_CA_FILE: &str = "tls_ca_file";

/// The settings a link of a pool may have of its own (the rest are the connection's and must
/// be equal): what and how its handler receives.
const MEMBER_KEYS: &[&str] = &[
    "max_in_flight",
    "max_in_flight_bytes",
    "delivery_timeout_ms",
];

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
    listeners: Arc<RwLock<HashMap<SessionKey, listeners::LinkedListener>>>,
    /// The counters of every listener.
    pub(crate) listener_counters: Arc<server::ListenerCounters>,
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
pub(crate) enum Route {
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
        let links = read(&self.links);
        if key.component.is_empty() {
            // A pool's session, by its name.
            return links
                .values()
                .find(|l| l.session.config.pool.as_deref() == Some(key.link_name.as_str()))
                .map(|l| Arc::clone(&l.session));
        }
        links.get(key).map(|l| Arc::clone(&l.session))
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

    /// Every live session, once (a pool's is held by several links).
    pub fn sessions(&self) -> Vec<Arc<Session>> {
        let mut sessions: Vec<Arc<Session>> = Vec::new();
        for linked in read(&self.links).values() {
            if !sessions.iter().any(|s| Arc::ptr_eq(s, &linked.session)) {
                sessions.push(Arc::clone(&linked.session));
            }
        }
        sessions
    }

    /// The links (component, link name) that hold `session`: one for a session of one link
    /// pair, every member for a pool's.
    pub fn members_of(&self, session: &Session) -> Vec<SessionKey> {
        let mut keys: Vec<SessionKey> = read(&self.links)
            .iter()
            .filter(|(_, l)| std::ptr::eq(&*l.session, session))
            .map(|(k, _)| k.clone())
            .collect();
        keys.sort();
        keys
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
            if role == Role::Handler {
                linked.session.set_subscriptions(cfg.subscriptions.clone());
                linked.session.add_member(key.clone(), &cfg);
            }
            linked.set(role, true);
            // Said once the link is in (tests wait for this line before sending).
            info!(%role, %key, session = %linked.session.id, "link joins the existing session");
            return Ok(());
        }
        if let Some(name) = &cfg.pool {
            let pooled = links
                .values()
                .find(|l| l.session.config.pool.as_ref() == Some(name))
                .cloned();
            if let Some(pooled) = pooled {
                let session = &pooled.session;
                let differ: Vec<String> = session
                    .config
                    .differing_keys(&cfg)
                    .into_iter()
                    // Each member's own: its deliveries' bounds and deadline, and its raw frames'
                    // subject (which matters in format `raw` only).
                    .filter(|k| !MEMBER_KEYS.contains(&k.as_str()))
                    .filter(|k| k != "raw_subject" || cfg.format == Format::Raw)
                    .collect();
                if !differ.is_empty() {
                    return Err(format!(
                        "it would join pool `{name}` (session {}), but its settings differ from the pool's in {}: every link of a pool shares one connection, so their settings must be equal",
                        session.id,
                        differ.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
                    ));
                }
                if role == Role::Handler {
                    session.add_member(key.clone(), &cfg);
                }
                // Said once the link is in (tests wait for this line before sending).
                info!(%role, %key, pool = %name, session = %session.id, "link joins the pool's session");
                let mut member = Linked {
                    session: Arc::clone(session),
                    roles: Roles::default(),
                    claim: pooled.claim.clone(),
                };
                member.roles.set(role, true);
                links.insert(key, member);
                return Ok(());
            }
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
        // A pool's lease is the pool's, whichever member made the session (no component has an
        // empty id).
        let replicated = lattice.as_ref().map(|_| {
            let lease = match &cfg.pool {
                Some(name) => lattice::lease_key("", name),
                None => lattice::lease_key(&key.component, &key.link_name),
            };
            (lease, Fence::default())
        });
        // A pool's session is named by the pool (no component has an empty id), not by the
        // member that happened to come first: it outlives that member, and calls forwarded to
        // the replica holding it name it so.
        let pooled = cfg.pool.clone().map(|name| {
            (
                SessionKey {
                    component: String::new(),
                    link_name: name,
                },
                cfg.clone(),
            )
        });
        let session = Session::start(
            pooled
                .as_ref()
                .map_or_else(|| key.clone(), |(k, _)| k.clone()),
            cfg,
            self.handler_clients.clone(),
            role == Role::Handler && pooled.is_none(),
            &self.totals,
            replicated.clone(),
        );
        if let (Some((_, member)), Role::Handler) = (pooled, role) {
            session.add_member(key.clone(), &member);
        }
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
        if role == Role::Handler {
            session.set_subscriptions(None);
            session.remove_member(&key);
        }
        if linked.has(role.other()) {
            info!(%role, %key, session = %session.id, "link deleted; the session stays for the other link");
        } else if links
            .iter()
            .any(|(k, l)| *k != key && Arc::ptr_eq(&l.session, &session))
        {
            links.remove(&key);
            info!(%role, %key, session = %session.id, "link deleted; the pool's session stays for its other links");
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
        let mut mine: Vec<Arc<Session>> = Vec::new();
        for (key, linked) in read(&self.links).iter() {
            if key.component == component && !mine.iter().any(|s| Arc::ptr_eq(s, &linked.session)) {
                mine.push(Arc::clone(&linked.session));
            }
        }
        mine.sort_by(|a, b| a.key.cmp(&b.key));
        mine
    }
}
