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
//! - `invoke`: the wRPC client that calls `handle-message` (one per component).
//! - [`stats`]: per-session counters and the provider's totals.
//! - [`metrics`]: the counters as OpenTelemetry metrics.
//! - [`subjects`]: the provider's own `$ws.` subjects (session list, stats, send to a session),
//!   and the rules every subject a component gives must follow.
//! - [`tls`]: trust roots, client certificates and TLS failures in plain words for `wss://`.
//!
//! Data flows one way per direction: component call -> lookup by (component, link name) ->
//! session queue -> socket writer; socket reader -> decode -> delivery -> component handler.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use bytes::Bytes;
use tracing::{debug, error, info, warn};
use wasmcloud_provider_sdk::provider::WrpcClient;
use wasmcloud_provider_sdk::{
    get_connection, initialize_observability, load_host_data, run_provider, Context,
    HealthCheckRequest, HealthCheckResponse, LinkConfig, LinkDeleteInfo, Provider,
    ProviderConfigUpdate,
};

pub mod acks;
pub mod budget;
pub mod connection;
pub mod delivery;
pub mod envelope;
mod invoke;
pub mod metrics;
pub mod requests;
pub mod session;
pub mod socket;
pub mod stats;
pub mod subjects;
pub mod tls;

use crate::connection::{ConnectionConfig, ProviderDefaults, MAX_REQUEST_TIMEOUT_MS};
use crate::delivery::HandlerClients;
use crate::session::{Session, SessionKey};

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
pub const PROVIDER_NAME: &str = "messaging-websocket-provider";

/// Subjects starting with this prefix belong to the provider and never leave as frames.
pub const RESERVED_SUBJECT_PREFIX: &str = "$ws.";

/// How long a link's settings may take to read (`tls_ca_file` is a file) before the link is
/// refused: the SDK handles links, health and shutdown one at a time.
const SETTINGS_DEADLINE: Duration = Duration::from_millis(500);

const TLS_CA_FILE: &str = "tls_ca_file";

/// How long shutdown waits for sessions to send their Close frames (the host allows 300 ms).
const SHUTDOWN_GRACE: Duration = Duration::from_millis(150);

/// A session and the links that hold it: a consumer link and a handler link with the same
/// (component, link name) share one session, which closes when the last of them goes.
#[derive(Clone)]
struct Linked {
    session: Arc<Session>,
    consumer: bool,
    handler: bool,
}

impl Linked {
    fn has(&self, role: Role) -> bool {
        match role {
            Role::Consumer => self.consumer,
            Role::Handler => self.handler,
        }
    }

    fn set(&mut self, role: Role, linked: bool) {
        match role {
            Role::Consumer => self.consumer = linked,
            Role::Handler => {
                self.handler = linked;
                self.session.set_handler_linked(linked);
            }
        }
    }
}

/// Which side of the provider a link is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// component -> provider: `publish` and `request`.
    Consumer,
    /// provider -> component: delivery to `handle-message`.
    Handler,
}

impl Role {
    fn other(self) -> Role {
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
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
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

    /// The session a component's call goes through: its consumer link with that link name.
    pub fn consumer_session(&self, component: &str, link_name: &str) -> Option<Arc<Session>> {
        let key = SessionKey {
            component: component.to_string(),
            link_name: link_name.to_string(),
        };
        read(&self.links)
            .get(&key)
            .filter(|l| l.consumer)
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
        let session = Session::start(
            key.clone(),
            cfg,
            self.handler_clients.clone(),
            role == Role::Handler,
            &self.totals,
        );
        // The session already knows whether a handler link holds it (a frame may come at once).
        links.insert(
            key,
            Linked {
                session,
                consumer: role == Role::Consumer,
                handler: role == Role::Handler,
            },
        );
        Ok(())
    }

    fn delete_link(&self, role: Role, key: SessionKey) {
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
            links.remove(&key);
            session.close();
        }
        if role == Role::Handler
            && !links
                .iter()
                .any(|(k, l)| l.handler && k.component == key.component)
        {
            self.handler_clients.forget(&key.component);
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
        component: &str,
        id: &str,
        msg: &BrokerMessage,
    ) -> Result<(), String> {
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
        session.publish(msg).await
    }

    async fn publish_message(
        &self,
        ctx: Option<Context>,
        msg: BrokerMessage,
    ) -> Result<(), String> {
        let (component, link_name) = caller(&ctx);
        let session = self
            .consumer_session(component, link_name)
            .ok_or_else(|| no_link(component, link_name))?;
        subjects::check("subject", &msg.subject)?;
        if let Some(reply_to) = &msg.reply_to {
            subjects::check("reply_to", reply_to)?;
        }
        if !msg.subject.starts_with(RESERVED_SUBJECT_PREFIX) {
            return session.publish(&msg).await;
        }
        subjects::check_enabled(&session)?;
        match subjects::parse(&msg.subject) {
            subjects::Subject::Session { id, subject } => {
                let forwarded = BrokerMessage {
                    subject: subject.to_string(),
                    body: msg.body.clone(),
                    reply_to: msg.reply_to.clone(),
                };
                self.send_to_session(component, id, &forwarded).await
            }
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
        let session = self
            .consumer_session(component, link_name)
            .ok_or_else(|| no_link(component, link_name))?;
        subjects::check("subject", &subject)?;
        if subject.starts_with(RESERVED_SUBJECT_PREFIX) {
            subjects::check_enabled(&session)?;
            let answer = match subjects::parse(&subject) {
                subjects::Subject::Sessions => subjects::sessions(&self.list_sessions(component)),
                subjects::Subject::Stats => subjects::stats(
                    &self.totals,
                    &self.sessions(),
                    &self.list_sessions(component),
                ),
                _ => return Err(subjects::unknown(&subject, "request")),
            };
            return Ok(BrokerMessage {
                subject,
                body: answer,
                reply_to: None,
            });
        }
        let timeout = match timeout_ms {
            0 => session.config.request_timeout,
            ms if u64::from(ms) > MAX_REQUEST_TIMEOUT_MS => {
                return Err(format!(
                    "request to {subject}: timeout-ms {ms} is more than the {MAX_REQUEST_TIMEOUT_MS} ms a request can wait (the wasmCloud host cuts a component's call to a provider at 10 s)"
                ))
            }
            ms => Duration::from_millis(u64::from(ms)),
        };
        session.request(&subject, body, timeout).await
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
        let sessions = self.sessions();
        let total = sessions.len();
        let mut down: Vec<(Arc<Session>, Duration)> = sessions
            .into_iter()
            .filter_map(|s| {
                let down_for = s.down_for()?;
                (down_for > s.config.reconnect_max_delay).then_some((s, down_for))
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
            .map(|(s, down_for)| {
                format!(
                    "{}/{} to {} ({} for {} s, longer than reconnect_max_delay_ms = {})",
                    s.key.component,
                    s.key.link_name,
                    s.config.uri,
                    s.state().as_str(),
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
        let sessions: Vec<_> = write(&self.links).drain().map(|(_, l)| l.session).collect();
        for session in &sessions {
            session.close();
        }
        // Close frames go out in parallel; the host kills the process 300 ms after asking.
        futures::future::join_all(sessions.iter().map(|s| s.wait_closed(SHUTDOWN_GRACE))).await;
        info!(sessions = sessions.len(), "provider shut down");
        Ok(())
    }
}

impl bindings::exports::wasmcloud::messaging::consumer::Handler<Option<Context>>
    for WebSocketMessagingProvider
{
    async fn publish(
        &self,
        ctx: Option<Context>,
        msg: BrokerMessage,
    ) -> anyhow::Result<Result<(), String>> {
        Ok(self.publish_message(ctx, msg).await)
    }

    async fn request(
        &self,
        ctx: Option<Context>,
        subject: String,
        body: Bytes,
        timeout_ms: u32,
    ) -> anyhow::Result<Result<BrokerMessage, String>> {
        Ok(self.request_message(ctx, subject, body, timeout_ms).await)
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
    let provider = WebSocketMessagingProvider::new(defaults);
    let observed = provider.clone();
    metrics::register(move || observed.sessions());
    let shutdown = run_provider(provider.clone(), PROVIDER_NAME)
        .await
        .context("failed to start the provider")?;
    let connection = get_connection();
    let wrpc = connection
        .get_wrpc_client(connection.provider_key())
        .await
        .context("failed to create the wRPC client")?;
    serve_exports(&wrpc, provider, shutdown)
        .await
        .context("failed to serve the provider's exports")?;
    info!("provider stopped");
    Ok(())
}

/// Serves the `consumer` export until `shutdown`. The SDK's `serve_provider_exports` spawns each
/// invocation into a `JoinSet` it never joins, so every call it ever served stays in the set and
/// memory grows with the number of calls (the benchmark's soak measured it: see BENCHMARKS.md).
/// Here each invocation is a task of a `TaskTracker`, which forgets a task when it ends. The loop
/// is otherwise the SDK's: the same two branches, so the invocation stream is only ever polled
/// the way the SDK polls it. Invocations still running at shutdown end with the runtime.
async fn serve_exports(
    wrpc: &WrpcClient,
    provider: WebSocketMessagingProvider,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    use futures::StreamExt as _;
    let invocations = bindings::serve(wrpc, provider)
        .await
        .context("failed to serve exports")?;
    let mut invocations = futures::stream::select_all(
        invocations
            .into_iter()
            .map(|(instance, name, calls)| calls.map(move |call| (instance, name, call))),
    );
    let mut shutdown = std::pin::pin!(shutdown);
    let tasks = tokio_util::task::TaskTracker::new();
    loop {
        tokio::select! {
            Some((instance, name, call)) = invocations.next() => match call {
                Ok(call) => {
                    tasks.spawn(async move {
                        if let Err(err) = call.await {
                            warn!(?err, instance, name, "failed to serve invocation");
                        }
                    });
                }
                Err(err) => warn!(?err, instance, name, "failed to accept invocation"),
            },
            () = &mut shutdown => {
                tasks.close();
                return Ok(());
            }
        }
    }
}
