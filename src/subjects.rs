//! The provider's own subjects, for components: everything that starts with `$ws.` is answered by
//! the provider and never leaves as a frame.
//!
//! - `request("$ws.sessions")`: the caller's sessions as a JSON array.
//! - `request("$ws.stats")`: counters, summed over the provider and per session of the caller.
//! - `publish("$ws.session.<id>.<subject>")`: sends `<subject>` on session `<id>` of the caller.
//!
//! [`check`] holds the rules for every subject a component gives (and for `reply_to`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::client::session::Session;
use crate::connection::ConnectionConfig;
use crate::stats::Totals;

pub const SESSIONS: &str = "$ws.sessions";
pub const STATS: &str = "$ws.stats";
pub const SESSION_PREFIX: &str = "$ws.session.";
pub const CLOSE_PREFIX: &str = "$ws.close.";

/// The longest subject (or `reply_to`) a component may give, in bytes.
pub const MAX_SUBJECT_BYTES: usize = 1024;

/// Checks a subject or `reply_to` (`what` says which) a component gave: not empty, at most
/// [`MAX_SUBJECT_BYTES`], no whitespace and no control characters. The error quotes the start of
/// the value, escaped, so a log line stays one short line.
pub fn check(what: &str, subject: &str) -> Result<(), String> {
    match broken_rule(subject) {
        None => Ok(()),
        Some(reason) => Err(format!(
            "invalid {what} {}: {reason}; nothing was sent",
            quoted(subject)
        )),
    }
}

/// Checks the `subject` and `reply_to` of an envelope a server sent: the rules of [`check`], and
/// not one of the provider's own `$ws.` subjects, so that a server can neither forge a log line
/// nor reach what only components may call.
pub fn check_incoming(subject: &str, reply_to: Option<&str>) -> Result<(), String> {
    for (what, value) in [("subject", Some(subject)), ("reply_to", reply_to)] {
        let Some(value) = value else { continue };
        let reason = broken_rule(value).or_else(|| {
            value
                .starts_with(crate::RESERVED_SUBJECT_PREFIX)
                .then(|| "`$ws.` subjects are the provider's own".to_string())
        });
        if let Some(reason) = reason {
            return Err(format!("invalid {what} {}: {reason}", quoted(value)));
        }
    }
    Ok(())
}

/// Which subject rule `subject` breaks, if any.
fn broken_rule(subject: &str) -> Option<String> {
    if subject.is_empty() {
        Some("it is empty".to_string())
    } else if subject.len() > MAX_SUBJECT_BYTES {
        Some(format!(
            "it is {} bytes long, more than {MAX_SUBJECT_BYTES}",
            subject.len()
        ))
    } else {
        subject
            .char_indices()
            .find(|(_, c)| c.is_whitespace() || c.is_control())
            .map(|(at, c)| {
                format!("it contains {c:?} at byte {at} (no whitespace or control characters)")
            })
    }
}

/// The start of a value, escaped and quoted: at most 64 characters, `...` when cut.
pub(crate) fn quoted(subject: &str) -> String {
    let shown: String = subject.chars().take(64).collect();
    let more = if shown.len() < subject.len() {
        "..."
    } else {
        ""
    };
    format!("{shown:?}{more}")
}

/// What a provider subject is.
#[derive(Debug, PartialEq, Eq)]
pub enum Subject<'a> {
    Sessions,
    Stats,
    /// `$ws.session.<id>.<subject>`
    Session {
        id: &'a str,
        subject: &'a str,
    },
    /// `$ws.close.<id>`: closes a listener's client.
    Close {
        id: &'a str,
    },
    Unknown,
}

pub fn parse(subject: &str) -> Subject<'_> {
    match subject {
        SESSIONS => Subject::Sessions,
        STATS => Subject::Stats,
        _ if subject.starts_with(CLOSE_PREFIX) => match &subject[CLOSE_PREFIX.len()..] {
            id if !id.is_empty() && !id.contains('.') => Subject::Close { id },
            _ => Subject::Unknown,
        },
        _ => match subject
            .strip_prefix(SESSION_PREFIX)
            .and_then(|rest| rest.split_once('.'))
        {
            Some((id, subject)) if !id.is_empty() && !subject.is_empty() => {
                Subject::Session { id, subject }
            }
            _ => Subject::Unknown,
        },
    }
}

/// The error for a `$ws.` subject that means nothing.
pub fn unknown(subject: &str, call: &str) -> String {
    format!(
        "unknown provider subject {subject}: `$ws.` subjects are the provider's own ({call} accepts {})",
        match call {
            "request" => "`$ws.sessions`, `$ws.stats` and `$ws.session.<id>.<subject>` of a listener's client",
            _ => "`$ws.session.<id>.<subject>` and `$ws.close.<id>`",
        }
    )
}

/// Refuses the subjects when the calling link turned session tracking off.
pub fn check_enabled(config: &ConnectionConfig, link_name: &str) -> Result<(), String> {
    if config.enable_session_tracking {
        Ok(())
    } else {
        Err(format!(
            "the provider's `$ws.` subjects are turned off on link {link_name} (enable_session_tracking = false)"
        ))
    }
}

#[derive(Serialize)]
struct SessionInfo<'a> {
    id: &'a str,
    link_name: &'a str,
    uri: &'a str,
    state: &'static str,
    connected_at: Option<String>,
    frames_in: u64,
    frames_out: u64,
    /// The replica (host id) that holds the connection.
    owner: Option<&'a str>,
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// A session's entry of `$ws.sessions`, as this replica sees it; `owner` is the host holding the
/// connection.
pub fn session_info(s: &Session, owner: Option<&str>) -> Value {
    serde_json::to_value(SessionInfo {
        id: &s.id,
        link_name: &s.key.link_name,
        uri: s.config.uri.shown(),
        state: s.state().as_str(),
        connected_at: s.connected_at().map(rfc3339),
        frames_in: s.stats.frames_in.load(Ordering::Relaxed),
        frames_out: s.stats.frames_out.load(Ordering::Relaxed),
        owner,
    })
    .expect("session info serializes")
}

/// A listener client's entry of `$ws.sessions`.
pub fn client_info(
    listener: &crate::server::Listener,
    client: &crate::server::client::Client,
) -> Value {
    json!({
        "id": &*client.id,
        "kind": "client",
        "link_name": listener.key().link_name,
        "listen": listener.local_addr().to_string(),
        "remote_addr": client.remote_addr.to_string(),
        "user": client.user,
        "state": "open",
        "connected_at": rfc3339(client.connected_at),
        "subscriptions": client.subscriptions(),
        "frames_in": client.stats.frames_in.load(Ordering::Relaxed),
        "frames_out": client.stats.frames_out.load(Ordering::Relaxed),
    })
}

/// A listener client's entry of `$ws.stats`.
pub fn client_stats(
    listener: &crate::server::Listener,
    client: &crate::server::client::Client,
) -> Value {
    let mut object = Map::new();
    object.insert("id".into(), json!(&*client.id));
    object.insert("kind".into(), json!("client"));
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
    // Every task of the process (sessions, deliveries, the SDK's): a leak shows up here.
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        provider.insert(
            "tasks_alive".into(),
            json!(runtime.metrics().num_alive_tasks()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_follow_the_rules() {
        for ok in [
            "a",
            "orders.created",
            "_INBOX.x.y",
            "$ws.stats",
            "ü.日本",
            &"s".repeat(1024),
        ] {
            assert_eq!(check("subject", ok), Ok(()), "{ok}");
        }
        let cases = [
            ("", "invalid subject \"\": it is empty; nothing was sent"),
            ("a b", "invalid subject \"a b\": it contains ' ' at byte 1 (no whitespace or control characters); nothing was sent"),
            ("a\tb", "it contains '\\t' at byte 1"),
            ("x\u{7f}", "it contains '\\u{7f}' at byte 1"),
            ("new\nline", "it contains '\\n' at byte 3"),
            ("nb\u{a0}sp", "it contains '\\u{a0}' at byte 2"),
        ];
        for (subject, expected) in cases {
            let err = check("subject", subject).unwrap_err();
            assert!(err.contains(expected), "{subject:?}: {err}");
        }
        let long = "s".repeat(1025);
        let err = check("reply_to", &long).unwrap_err();
        assert_eq!(
            err,
            format!(
                "invalid reply_to \"{}\"...: it is 1025 bytes long, more than 1024; nothing was sent",
                "s".repeat(64)
            )
        );
    }

    #[test]
    fn parses_provider_subjects() {
        assert_eq!(parse("$ws.sessions"), Subject::Sessions);
        assert_eq!(parse("$ws.stats"), Subject::Stats);
        assert_eq!(
            parse("$ws.session.ws_a1.orders.new"),
            Subject::Session {
                id: "ws_a1",
                subject: "orders.new"
            }
        );
        for unknown in [
            "$ws.session.ws_a1",
            "$ws.session.ws_a1.",
            "$ws.session..x",
            "$ws.sessionsx",
            "$ws.other",
        ] {
            assert_eq!(parse(unknown), Subject::Unknown, "{unknown}");
        }
    }
}
