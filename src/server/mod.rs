//! Server mode: a listener on a link with `listen`. Browsers and devices connect to it; each
//! client connection is a session of that link, which the component reaches by the client's id
//! (`$ws.session.<id>.<subject>`, `$ws.close.<id>`) or by the patterns clients subscribed to
//! (`publish("<subject>")`).
//!
//! - this file: the [`Listener`]: binding, the accept loop, admission before the upgrade, the
//!   clients by id and the subscription index, fan-out, close.
//! - [`auth`]: admission rules (path, `Origin`, `auth_token`, JWTs).
//! - [`client`]: one client: its queue, its reading and writing task.
//! - [`gateway`]: presence, presence events and client publish.
//! - [`history`]: offsets on broadcasts, and the recovery of a subscription with `since`.
//! - [`runtime`]: the threads the clients run on, apart from the lattice's.
//! - [`socket`]: the upgrade and the frames (the WebSocket library stays there).
//! - [`subscriptions`]: patterns with NATS wildcards and the index of who subscribed to what.

pub mod auth;
pub mod client;
pub mod gateway;
pub mod history;
pub mod runtime;
pub mod socket;
pub mod subscriptions;
mod task;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming as Body;
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Map, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::bindings::wasmcloud::messaging::types::BrokerMessage;
use crate::config::{ConnectionConfig, ListenConfig};
use crate::delivery::HandlerClients;
use crate::envelope::Codec;
use crate::identity::SessionKey;
use crate::server::auth::Refused;
use crate::server::client::Client;
use crate::server::subscriptions::{Pattern, Subscriptions};
use crate::stats::{self, Totals};

/// The fewest delivery slots a listener's clients share, whatever `max_in_flight` (the bound of
/// each client) is: with `max_in_flight = 1`, one client's slow message must not hold up the
/// others.
const MIN_DELIVERY_SLOTS: usize = 64;

/// The listen backlog.
const BACKLOG: u32 = 1024;

macro_rules! listener_counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// What the provider's listeners have done (one set for all of them).
        #[derive(Debug, Default)]
        pub struct ListenerCounters {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        impl ListenerCounters {
            pub const NAMES: &'static [&'static str] = &[$(stringify!($name)),*];

            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

listener_counters! {
    /// Clients admitted (upgraded).
    clients_admitted,
    /// Upgrade requests on another path (404).
    refused_path,
    /// Upgrade requests from an `Origin` not in `allowed_origins` (403).
    refused_origin,
    /// Upgrade requests while `max_clients` were connected (503).
    refused_full,
    /// Upgrade requests without a valid token or JWT (401).
    refused_auth,
    /// Requests that were not WebSocket upgrades, or failed ones.
    refused_upgrade,
    /// Clients closed because their outgoing queue was full (1008).
    slow_consumer_closes,
    /// Client frames dropped for exceeding `client_rate_limit`.
    rate_limited,
    /// Clients closed for exceeding `client_rate_limit` too long (1008).
    rate_limit_closes,
    /// Clients that stopped answering pings.
    dead_clients,
    /// Publishes and subscriptions a client's JWT does not allow.
    not_allowed,
    /// Frames fanned out to subscribed clients.
    fanout_frames,
    /// Subscriptions with `since` that recovered everything the client missed.
    recoveries,
    /// Subscriptions with `since` told `"recovered": false` (the history no longer held it
    /// all, another epoch, or reading it failed).
    recoveries_incomplete,
    /// Stored broadcasts sent again to recovering clients.
    replayed,
    /// `joined` / `left` frames sent to subscribers (`presence_events`).
    presence_events,
    /// Clients' envelopes fanned out to subscribers (`client_publish`).
    client_publishes,
    /// Clients' envelopes that could not be fanned out (`client_publish`; the client is told).
    client_publish_errors,
}

impl ListenerCounters {
    fn refused(&self, why: Refused) -> &AtomicU64 {
        match why {
            Refused::Path => &self.refused_path,
            Refused::Origin => &self.refused_origin,
            Refused::Full => &self.refused_full,
            Refused::Auth => &self.refused_auth,
            Refused::Upgrade => &self.refused_upgrade,
        }
    }

    /// Adds the counters to a JSON object, by name.
    pub fn add_json(&self, object: &mut Map<String, Value>) {
        for (name, value) in self.snapshot() {
            object.insert(name.into(), json!(value));
        }
    }
}

/// What a listener's tasks share.
pub struct Shared {
    pub key: SessionKey,
    pub config: ConnectionConfig,
    pub local_addr: SocketAddr,
    pub codec: Codec,
    pub handler_linked: Arc<AtomicBool>,
    pub handler_clients: HandlerClients,
    pub counters: Arc<ListenerCounters>,
    pub totals: Totals,
    /// Cancelled when the listener closes; every client's token is a child of it.
    pub stop: CancellationToken,
    /// What every client id starts with (after `c`): the replica's tag, which tells the other
    /// replicas where the client is connected.
    pub id_tag: String,
    clients: RwLock<HashMap<Arc<str>, Arc<Client>>>,
    subscriptions: RwLock<Subscriptions<Arc<Client>>>,
    /// Clients connected or being upgraded: what `max_clients` bounds.
    admitted: AtomicUsize,
    /// The listener's delivery slots, `max_in_flight` (at least [`MIN_DELIVERY_SLOTS`]) for all
    /// its clients together: thousands
    /// of clients with `max_in_flight` each would otherwise put far more calls in flight than a
    /// component answers, and they would end at their deadline instead of being delivered.
    pub deliveries: Arc<tokio::sync::Semaphore>,
    tasks: TaskTracker,
    /// The listener's history, when it keeps one (`history_size` / `history_ttl_sec`).
    history: tokio::sync::watch::Sender<history::State>,
    /// What reaches the provider's other replicas (presence, client publish).
    relay: Arc<dyn gateway::Relay>,
}

impl Shared {
    pub fn listen(&self) -> &ListenConfig {
        self.config
            .listen
            .as_ref()
            .expect("a listener's settings have `listen`")
    }

    pub fn subscribe(&self, pattern: &Pattern, client: &Arc<Client>) {
        write(&self.subscriptions).add(pattern, &client.id, Arc::clone(client));
    }

    pub fn unsubscribe(&self, pattern: &Pattern, client: &str) {
        write(&self.subscriptions).remove(pattern, client);
    }

    /// Forgets a client that left: its subscriptions and its slot.
    pub fn forget(&self, client: &Client) {
        {
            let mut subscriptions = write(&self.subscriptions);
            for pattern in client.patterns() {
                subscriptions.remove(&pattern, &client.id);
            }
        }
        if write(&self.clients).remove(&client.id).is_some() {
            self.admitted.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

/// A listener: the socket it accepts on and its clients.
pub struct Listener {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("key", &self.shared.key)
            .field("local_addr", &self.shared.local_addr)
            .finish()
    }
}

impl Listener {
    /// Binds `listen` (at once: a port in use or a missing permission refuses the link with the
    /// OS error) and starts accepting clients, who reach the provider's other replicas through
    /// `relay`.
    #[allow(clippy::too_many_arguments)]
    pub fn bind(
        key: SessionKey,
        config: ConnectionConfig,
        handler_clients: HandlerClients,
        handler_linked: bool,
        totals: &Totals,
        counters: Arc<ListenerCounters>,
        id_tag: String,
        relay: Arc<dyn gateway::Relay>,
    ) -> Result<Listener, String> {
        let listen = config.listen.clone().ok_or("no `listen` address")?;
        // The socket and every task of its clients belong to the clients' runtime: the socket
        // registers with the reactor of the runtime it is made in.
        let clients_runtime = runtime::handle();
        let bound = {
            let _entered = clients_runtime.enter();
            bind(listen.addr)
        };
        let tcp = bound.map_err(|e| {
            format!(
                "cannot listen on {} ({e}){}",
                listen.addr,
                match e.kind() {
                    std::io::ErrorKind::AddrInUse => ": another process (or link) uses this port",
                    std::io::ErrorKind::PermissionDenied =>
                        ": ports below 1024 need privileges; use a higher port",
                    std::io::ErrorKind::AddrNotAvailable =>
                        ": the address is not one of this host's",
                    _ => "",
                }
            )
        })?;
        let local_addr = tcp.local_addr().map_err(|e| e.to_string())?;
        let in_flight = config.max_in_flight;
        let shared = Arc::new(Shared {
            codec: Codec::new(config.format, config.raw_subject.clone()),
            key,
            config,
            local_addr,
            handler_linked: Arc::new(AtomicBool::new(handler_linked)),
            handler_clients,
            counters,
            totals: totals.clone(),
            stop: CancellationToken::new(),
            id_tag,
            clients: RwLock::default(),
            subscriptions: RwLock::default(),
            admitted: AtomicUsize::new(0),
            deliveries: Arc::new(tokio::sync::Semaphore::new(
                in_flight.max(MIN_DELIVERY_SLOTS),
            )),
            tasks: TaskTracker::new(),
            history: tokio::sync::watch::Sender::new(history::State::Opening),
            relay,
        });
        let scheme = if shared.listen().tls.is_some() {
            "wss"
        } else {
            "ws"
        };
        info!(component = %shared.key.component, link_name = %shared.key.link_name, url = %format!("{scheme}://{local_addr}{}", shared.listen().path), "listening for WebSocket clients");
        shared
            .tasks
            .spawn_on(accept(Arc::clone(&shared), tcp), &clients_runtime);
        Ok(Listener { shared })
    }

    pub fn key(&self) -> &SessionKey {
        &self.shared.key
    }

    pub fn config(&self) -> &ConnectionConfig {
        &self.shared.config
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    pub fn counters(&self) -> &ListenerCounters {
        &self.shared.counters
    }

    /// Cancelled when the listener closes.
    pub fn stopped(&self) -> CancellationToken {
        self.shared.stop.clone()
    }

    pub fn set_handler_linked(&self, linked: bool) {
        self.shared.handler_linked.store(linked, Ordering::Relaxed);
    }

    /// The connected clients, oldest first.
    pub fn clients(&self) -> Vec<Arc<Client>> {
        let mut clients: Vec<_> = read(&self.shared.clients).values().cloned().collect();
        clients.sort_by_key(|c| c.connected_at);
        clients
    }

    pub fn client(&self, id: &str) -> Option<Arc<Client>> {
        read(&self.shared.clients).get(id).cloned()
    }

    pub fn client_count(&self) -> usize {
        read(&self.shared.clients).len()
    }

    /// Distinct subscription patterns (for leak checks).
    pub fn patterns(&self) -> usize {
        read(&self.shared.subscriptions).patterns()
    }

    /// Sends `msg` to every client subscribed to a pattern matching its subject, encoded once.
    /// Returns how many clients it was queued for; a client that does not keep up is closed,
    /// not waited for.
    pub fn publish(&self, msg: &BrokerMessage) -> usize {
        let mut frame = None;
        let mut sent = 0;
        read(&self.shared.subscriptions).for_each_matching(&msg.subject, |client| {
            let frame = frame.get_or_insert_with(|| self.shared.codec.encode(msg, None));
            if client.send(frame.clone(), &self.shared).is_ok() {
                sent += 1;
            }
        });
        if frame.is_none() {
            debug!(component = %self.shared.key.component, link_name = %self.shared.key.link_name, subject = %msg.subject, "publish to a subject no client subscribed to");
        }
        stats::add(&self.shared.counters.fanout_frames, sent);
        sent
    }

    /// Sends `msg` to one client.
    pub fn send_to(&self, client: &Client, msg: &BrokerMessage) -> Result<(), String> {
        client
            .send(self.shared.codec.encode(msg, None), &self.shared)
            .map_err(|e| {
                format!(
                    "client {} of listener {}: {}; nothing was sent",
                    client.id,
                    self.shared.local_addr,
                    client::send_words(&e)
                )
            })
    }

    /// A request to one client, answered by the client's reply.
    pub async fn request(
        &self,
        client: &Client,
        subject: &str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<BrokerMessage, String> {
        client.request(&self.shared, subject, body, timeout).await
    }

    /// Closes every client with 1001 and stops listening (the port is free once this returns:
    /// the listening socket belongs to the accept task, which ends at once).
    pub fn close(&self) {
        for client in read(&self.shared.clients).values() {
            client.close(1001, "going away");
        }
        self.shared.stop.cancel();
        self.shared.tasks.close();
    }

    /// Waits, at most `limit`, until every client's task and the accept loop have ended.
    pub async fn wait_closed(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.shared.tasks.wait()).await;
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.close();
    }
}

/// The send buffer of every client's socket. Fixed, so that what a client that stops reading
/// holds is `client_queue_bytes` plus this (Linux doubles the value for its own accounting), not
/// whatever the kernel's autotuning grows it to (up to `net.ipv4.tcp_wmem`'s maximum, 4 MiB on
/// many machines), and a client that stops reading is closed at its bound. 64 KiB keeps a
/// fast client's writes as large as the provider makes them.
const CLIENT_SEND_BUFFER: u32 = 64 * 1024;

/// A listening socket with SO_REUSEADDR, so that a port released by a closed listener can be
/// bound again at once (its old connections may still be in TIME_WAIT), and SO_REUSEPORT, so
/// that the provider's replicas on one host share the port (the kernel spreads the clients over
/// them; a process of another user, or one without SO_REUSEPORT, still cannot take it).
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    #[cfg(unix)]
    socket.set_reuseport(true)?;
    // Accepted sockets inherit it, with the kernel's autotuning of it off.
    socket.set_send_buffer_size(CLIENT_SEND_BUFFER)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Accepts connections until the listener closes; each one gets a task that makes (or refuses)
/// the upgrade.
async fn accept(shared: Arc<Shared>, tcp: TcpListener) {
    loop {
        let accepted = tokio::select! {
            () = shared.stop.cancelled() => return,
            accepted = tcp.accept() => accepted,
        };
        match accepted {
            Ok((stream, remote)) => {
                let _ = stream.set_nodelay(true);
                shared
                    .tasks
                    .spawn(handshake(Arc::clone(&shared), stream, remote));
            }
            Err(e) => {
                // Out of file descriptors, most likely: say so, and give the process a moment
                // rather than spinning on the error.
                warn!(listen = %shared.local_addr, error = %e, "accepting a client connection failed");
                tokio::select! {
                    () = shared.stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
}

/// TLS (for `wss`) and the HTTP/1.1 exchange of the upgrade, within `connect_timeout_sec`.
async fn handshake(shared: Arc<Shared>, stream: TcpStream, remote: SocketAddr) {
    let deadline = shared.config.connect_timeout;
    let stop = shared.stop.clone();
    let exchange = async {
        let io = match &shared.listen().tls {
            Some(tls) => {
                match tokio_rustls::TlsAcceptor::from(tls.config())
                    .accept(stream)
                    .await
                {
                    Ok(tls) => tokio_util::either::Either::Right(tls),
                    Err(e) => {
                        debug!(%remote, error = %e, "TLS handshake with a client failed");
                        return;
                    }
                }
            }
            None => tokio_util::either::Either::Left(stream),
        };
        let serving = Arc::clone(&shared);
        let service = hyper::service::service_fn(move |request| {
            let shared = Arc::clone(&serving);
            async move { Ok::<_, std::convert::Infallible>(upgrade(shared, request, remote)) }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .max_buf_size(64 * 1024)
            .serve_connection(hyper_util::rt::TokioIo::new(io), service)
            .with_upgrades()
            .await;
    };
    tokio::select! {
        () = stop.cancelled() => {}
        done = tokio::time::timeout(deadline, exchange) => {
            if done.is_err() {
                debug!(%remote, "a client connection did not complete the upgrade within connect_timeout_sec; closed");
            }
        }
    }
}

/// Admits or refuses one upgrade request; an admitted client's task starts once the `101` is
/// out.
fn upgrade(
    shared: Arc<Shared>,
    mut request: Request<Body>,
    remote: SocketAddr,
) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_string();
    let refuse = |status: StatusCode, why: Refused, reason: &str| {
        stats::bump(shared.counters.refused(why));
        // The path without its query: a `?token=` never reaches the log.
        warn!(component = %shared.key.component, link_name = %shared.key.link_name, listen = %shared.local_addr, %remote, %path, status = status.as_u16(), reason, "refused a client");
        Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from(format!("{reason}\n"))))
            .expect("a refusal is a valid response")
    };
    let listen = shared.listen();
    if let Err(refusal) = auth::check_place(listen, request.uri().path(), request.headers()) {
        return refuse(refusal.status, refusal.why, &refusal.reason);
    }
    if !is_upgrade(&request) {
        return refuse(
            StatusCode::UPGRADE_REQUIRED,
            Refused::Upgrade,
            "this is a WebSocket endpoint: connect with a WebSocket client",
        );
    }
    // Capacity before credentials: a full listener says so to everyone.
    if shared.admitted.load(Ordering::Relaxed) >= listen.max_clients {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            Refused::Full,
            "the listener has max_clients clients connected",
        );
    }
    let admitted = match auth::authenticate(
        listen,
        shared.config.auth_token.as_deref(),
        request.uri().query(),
        request.headers(),
    ) {
        Ok(admitted) => admitted,
        Err(refusal) => return refuse(refusal.status, refusal.why, &refusal.reason),
    };
    if shared.admitted.fetch_add(1, Ordering::Relaxed) >= listen.max_clients {
        shared.admitted.fetch_sub(1, Ordering::Relaxed);
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            Refused::Full,
            "the listener has max_clients clients connected",
        );
    }
    let bearer = auth::subprotocol_token(request.headers()).is_some();
    let (mut response, upgrading) = match socket::upgrade(&mut request, &shared.config) {
        Ok(upgraded) => upgraded,
        Err(reason) => {
            shared.admitted.fetch_sub(1, Ordering::Relaxed);
            return refuse(StatusCode::BAD_REQUEST, Refused::Upgrade, &reason);
        }
    };
    if bearer {
        // A browser drops a connection whose answer names none of the subprotocols it offered.
        response.headers_mut().insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            http::HeaderValue::from_static(auth::BEARER_PROTOCOL),
        );
    }
    let client = client::new(&shared, remote, admitted.user, admitted.allowed);
    write(&shared.clients).insert(Arc::clone(&client.id), Arc::clone(&client));
    stats::bump(&shared.counters.clients_admitted);
    stats::bump(&client.stats.connects);
    debug!(client = %client.id, %remote, "client admitted");
    let tasks = shared.tasks.clone();
    tasks.spawn(async move {
        match upgrading.socket().await {
            Ok(socket) => task::run(shared, client, socket).await,
            Err(reason) => {
                debug!(client = %client.id, %remote, %reason, "client upgrade failed");
                shared.forget(&client);
            }
        }
    });
    response.map(|_| Full::new(Bytes::new()))
}

/// Whether the request asks for a WebSocket upgrade.
fn is_upgrade<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}
