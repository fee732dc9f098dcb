//! The answers to a component's `$ws.sessions` and `$ws.stats` requests (the rules of `$ws.`
//! subjects are in [`crate::subjects`]): what a session, a listener's client and the provider
//! report, as JSON.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::client::session::Session;
use crate::identity::{rfc3339, SessionInfo, SessionKey, CLIENT_KIND};
use crate::stats::Totals;

/// What a dialling session adds to its [`SessionInfo`].
#[derive(Serialize)]
struct Dialling<'a> {
    uri: &'a str,
    /// The replica (host id) that holds the connection.
    owner: Option<&'a str>,
    /// A pool's: its name and the links that share it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pool: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    members: Option<Vec<Value>>,
}

/// What a listener's client adds to its [`SessionInfo`].
#[derive(Serialize)]
struct Listening<'a> {
    listen: String,
    remote_addr: String,
    user: &'a Option<String>,
    subscriptions: Vec<String>,
}

/// A session's entry of `$ws.sessions`, as this replica sees it; `owner` is the host holding the
/// connection.
pub fn session_info(s: &Session, owner: Option<&str>, links: &[SessionKey]) -> Value {
    let members = s.config.pool.as_ref().map(|_| {
        links
            .iter()
            .map(|k| json!({ "component": k.component, "link_name": k.link_name }))
            .collect()
    });
    serde_json::to_value(SessionInfo {
        id: &s.id,
        kind: None,
        link_name: &s.key.link_name,
        state: s.state().as_str(),
        connected_at: s.connected_at().map(rfc3339),
        frames_in: s.stats.frames_in.load(Ordering::Relaxed),
        frames_out: s.stats.frames_out.load(Ordering::Relaxed),
        mode: Dialling {
            uri: s.config.uri.shown(),
            owner,
            pool: s.config.pool.as_deref(),
            members,
        },
    })
    .expect("session info serializes")
}

/// A listener client's entry of `$ws.sessions`.
pub fn client_info(
    listener: &crate::server::Listener,
    client: &crate::server::client::Client,
) -> Value {
    serde_json::to_value(SessionInfo {
        id: &client.id,
        kind: Some(CLIENT_KIND),
        link_name: &listener.key().link_name,
        state: "open",
        connected_at: Some(rfc3339(client.connected_at)),
        frames_in: client.stats.frames_in.load(Ordering::Relaxed),
        frames_out: client.stats.frames_out.load(Ordering::Relaxed),
        mode: Listening {
            listen: listener.local_addr().to_string(),
            remote_addr: client.remote_addr.to_string(),
            user: &client.user,
            subscriptions: client.subscriptions(),
        },
    })
    .expect("client info serializes")
}

/// A listener client's entry of `$ws.stats`.
pub fn client_stats(
    listener: &crate::server::Listener,
    client: &crate::server::client::Client,
) -> Value {
    let mut object = Map::new();
    object.insert("id".into(), json!(&*client.id));
    object.insert("kind".into(), json!(CLIENT_KIND));
    object.insert("link_name".into(), json!(listener.key().link_name));
    object.insert("state".into(), json!("open"));
    object.insert("pending_requests".into(), json!(client.pending.len()));
    client.stats.add_json(&mut object);
    Value::Object(object)
}

/// The answer to `$ws.sessions`: the caller's sessions, ordered by link name.
pub fn sessions(infos: Vec<Value>) -> Bytes {
    Bytes::from(serde_json::to_vec(&infos).expect("session info serializes"))
}

/// A session's entry of `$ws.stats`.
pub fn session_stats(s: &Session) -> Value {
    let mut object = Map::new();
    object.insert("id".into(), json!(s.id));
    object.insert("link_name".into(), json!(s.key.link_name));
    object.insert("state".into(), json!(s.state().as_str()));
    object.insert("pending_requests".into(), json!(s.pending_requests()));
    s.stats.add_json(&mut object);
    Value::Object(object)
}

/// This replica's counters: summed over every session it has (a standby's are the times it held
/// them), and over the sessions that are gone.
pub fn provider_totals<'a>(
    totals: &Totals,
    all: &'a [Arc<Session>],
    clients: impl IntoIterator<Item = &'a crate::stats::SessionStats>,
) -> Map<String, Value> {
    let mut provider = Map::new();
    provider.insert("sessions_open".into(), json!(Session::count_open(all)));
    provider.insert("sessions".into(), json!(all.len()));
    // Every task of the process (sessions, deliveries, the SDK's, and the listeners' clients on
    // their own runtime): a leak shows up here.
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        provider.insert(
            "tasks_alive".into(),
            json!(runtime.metrics().num_alive_tasks() + crate::server::runtime::alive_tasks()),
        );
    }
    totals
        .sum(all.iter().map(|s| &*s.stats).chain(clients))
        .add_json(&mut provider);
    provider.insert(
        "call_errors".into(),
        json!(crate::stats::CALL_ERRORS.load(std::sync::atomic::Ordering::Relaxed)),
    );
    provider
}

/// Adds another replica's counters (`sessions_open` and the session counters) to `into`; the
/// other keys (`sessions`, `tasks_alive`, latencies) stay this replica's.
pub fn add_totals(into: &mut Map<String, Value>, other: &Map<String, Value>) {
    let summed = crate::stats::SessionStats::NAMES
        .iter()
        .chain(&["sessions_open", "listeners", "clients", "call_errors"])
        .chain(crate::server::ListenerCounters::NAMES)
        .chain(&crate::lattice::COUNTERS)
        .copied();
    for name in summed {
        if let Some(n) = other.get(name).and_then(Value::as_u64) {
            let mine = into.get(name).and_then(Value::as_u64).unwrap_or(0);
            into.insert(name.into(), json!(mine + n));
        }
    }
}

/// The answer to `$ws.stats`: the provider's counters, and the caller's sessions one by one.
pub fn stats(provider: Map<String, Value>, sessions: Vec<Value>) -> Bytes {
    let answer = json!({ "provider": provider, "sessions": sessions });
    Bytes::from(serde_json::to_vec(&answer).expect("stats serialize"))
}
