//! The provider's side of listeners: links with `listen` put and deleted, and the component's
//! calls that reach a listener's clients (`publish` to subscribers, `$ws.session.<id>.<subject>`,
//! `$ws.close.<id>`, requests to a client).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tracing::{debug, info};

use super::{read, write, Replication, Role, Roles, WebSocketMessagingProvider};
use crate::bindings::wasmcloud::messaging::types::BrokerMessage;
use crate::config::ConnectionConfig;
use crate::envelope::gateway::Member;
use crate::identity::SessionKey;
use crate::lattice::forward::{Answer, Call, Unanswered};
use crate::lattice::Lattice;
use crate::server::client::Client;
use crate::server::Listener;
use crate::{control, subjects};

/// A listener and the links that hold it: a consumer link and a handler link with the same
/// (component, link name) share one listener, which closes when the last of them goes.
pub(crate) struct LinkedListener {
    pub listener: Arc<Listener>,
    pub roles: Roles,
}

impl LinkedListener {
    fn has(&self, role: Role) -> bool {
        self.roles.has(role)
    }

    fn set(&mut self, role: Role, linked: bool) {
        self.roles.set(role, linked);
        if role == Role::Handler {
            self.listener.set_handler_linked(linked);
        }
    }
}

impl WebSocketMessagingProvider {
    /// Attaches a link with `listen` (or one whose key already has a listener) to its listener:
    /// the existing one when the settings are equal, else a new one, bound now.
    pub(crate) fn attach_listener(
        &self,
        role: Role,
        key: SessionKey,
        cfg: ConnectionConfig,
    ) -> Result<(), String> {
        let mut listeners = write(&self.listeners);
        if let Some(linked) = listeners.get_mut(&key) {
            if linked.has(role) {
                debug!(%role, %key, "repeated put of an existing link; nothing to do");
                return Ok(());
            }
            let differ = linked.listener.config().differing_keys(&cfg);
            if !differ.is_empty() {
                return Err(format!(
                    "it would share the listener on {} with the {} link of the same component and link name, but its settings differ in {}",
                    linked.listener.local_addr(),
                    role.other(),
                    differ.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
                ));
            }
            info!(%role, %key, listen = %linked.listener.local_addr(), "link joins the existing listener");
            linked.set(role, true);
            return Ok(());
        }
        if read(&self.links).contains_key(&key) {
            return Err(format!(
                "the {} link of the same component and link name dials a server (`uri`), and this one listens (`listen`): the two links of one link name share one session, so their settings must be equal",
                role.other()
            ));
        }
        let addr = cfg.listen.as_ref().map(|l| l.addr);
        // SO_REUSEPORT lets the replicas share a port; within one process two links must not.
        if let Some((other, _)) = addr.filter(|a| a.port() != 0).and_then(|addr| {
            listeners
                .iter()
                .find(|(_, l)| l.listener.config().listen.as_ref().map(|l| l.addr) == Some(addr))
        }) {
            let error = format!(
                "cannot listen on {}: the link {other} listens there already",
                addr.map_or_else(String::new, |a| a.to_string())
            );
            write(&self.unbound).insert(key, error.clone());
            return Err(error);
        }
        let lattice = match &self.replication {
            Replication::Lattice(lattice) => Some(Arc::clone(lattice)),
            _ => None,
        };
        let history = cfg.listen.as_ref().and_then(|l| l.history);
        if history.is_some() {
            match &self.replication {
                Replication::Lattice(_) => {}
                Replication::Unavailable(why) => return Err(format!(
                    "`history_size` / `history_ttl_sec` keep the broadcasts in the lattice's JetStream, which this provider cannot use: {why}"
                )),
                Replication::Alone => return Err(
                    "`history_size` / `history_ttl_sec` keep the broadcasts in the lattice's JetStream, and this provider runs without a host's lattice".to_string()
                ),
            }
        }
        let id_tag = lattice.as_ref().map_or_else(
            || crate::identity::token(crate::lattice::listeners::TAG_LEN),
            |l| l.tag.clone(),
        );
        let listener = Listener::bind(
            key.clone(),
            cfg,
            self.handler_clients.clone(),
            role == Role::Handler,
            &self.totals,
            Arc::clone(&self.listener_counters),
            id_tag,
            Arc::new(super::relay::Relay {
                provider: self.clone(),
                key: key.clone(),
            }),
        );
        let listener = match listener {
            Ok(listener) => {
                write(&self.unbound).remove(&key);
                listener
            }
            Err(error) => {
                let shown = addr.map_or_else(String::new, |a| a.to_string());
                write(&self.unbound).insert(key, format!("{shown}: {error}"));
                return Err(error);
            }
        };
        let listener = Arc::new(listener);
        if let (Some(lattice), Some(history)) = (&lattice, history) {
            super::history::open(
                Arc::clone(lattice),
                &listener,
                crate::lattice::lease_key(&key.component, &key.link_name),
                history,
            );
        }
        if let Some(lattice) = lattice {
            // What the component publishes on another replica reaches this one's clients.
            let weak = Arc::downgrade(&listener);
            lattice.follow_fanout(
                crate::lattice::lease_key(&key.component, &key.link_name),
                listener.stopped(),
                move |msg| {
                    if let Some(listener) = weak.upgrade() {
                        super::relay::arrived(&listener, &msg);
                    }
                },
            );
        }
        listeners.insert(
            key,
            LinkedListener {
                listener,
                roles: Roles::of(role),
            },
        );
        Ok(())
    }

    /// Deletes a link of a listener; returns false when `key` has no listener (a dialling
    /// session's link, or an unknown one).
    pub(crate) fn delete_listener_link(&self, role: Role, key: &SessionKey) -> bool {
        write(&self.unbound).remove(key);
        let mut listeners = write(&self.listeners);
        let Some(linked) = listeners.get_mut(key).filter(|l| l.has(role)) else {
            return false;
        };
        linked.set(role, false);
        if linked.has(role.other()) {
            info!(%role, %key, "link deleted; the listener stays for the other link");
        } else if let Some(linked) = listeners.remove(key) {
            info!(%role, %key, listen = %linked.listener.local_addr(), clients = linked.listener.client_count(), "link deleted; closing its listener and its clients (1001)");
            linked.listener.close();
        }
        drop(listeners);
        if role == Role::Handler {
            self.forget_handler_client_if_unused(&key.component);
        }
        true
    }

    /// The listener a component's call goes through: its consumer link with that link name.
    pub(crate) fn consumer_listener(
        &self,
        component: &str,
        link_name: &str,
    ) -> Option<Arc<Listener>> {
        read(&self.listeners)
            .iter()
            .find(|(k, l)| l.roles.consumer && k.component == component && k.link_name == link_name)
            .map(|(_, l)| Arc::clone(&l.listener))
    }

    /// The listener of link `key`.
    pub(crate) fn listener_of(&self, key: &SessionKey) -> Option<Arc<Listener>> {
        read(&self.listeners)
            .get(key)
            .map(|l| Arc::clone(&l.listener))
    }

    /// Every listener of `component`, ordered by link name.
    pub(crate) fn listeners_of(&self, component: &str) -> Vec<Arc<Listener>> {
        let mut mine: Vec<_> = read(&self.listeners)
            .iter()
            .filter(|(k, _)| k.component == component)
            .map(|(_, l)| Arc::clone(&l.listener))
            .collect();
        mine.sort_by(|a, b| a.key().cmp(b.key()));
        mine
    }

    /// Every listener.
    pub(crate) fn all_listeners(&self) -> Vec<Arc<Listener>> {
        read(&self.listeners)
            .values()
            .map(|l| Arc::clone(&l.listener))
            .collect()
    }

    /// The client `id` of one of `component`'s listeners.
    pub(crate) fn find_client(
        &self,
        component: &str,
        id: &str,
    ) -> Option<(Arc<Listener>, Arc<Client>)> {
        self.listeners_of(component)
            .into_iter()
            .find_map(|l| l.client(id).map(|c| (l, c)))
    }

    /// A component's `publish` through a listener: `$ws.` subjects reach one client, any other
    /// subject the clients subscribed to it (none subscribed: nothing is sent, as with NATS).
    pub(crate) async fn publish_to_listener(
        &self,
        listener: &Listener,
        msg: BrokerMessage,
    ) -> Result<(), String> {
        if !msg
            .subject
            .starts_with(crate::subjects::RESERVED_SUBJECT_PREFIX)
        {
            let failed = |e: String| {
                format!(
                    "publish to {}: {e}; no client got it",
                    subjects::quoted(&msg.subject)
                )
            };
            if let Some(history) = listener.history().map_err(failed)? {
                // Stored first; every replica (this one too) sends it on from the store.
                crate::lattice::history::storable(&msg.subject)?;
                return history.store(&msg).await.map(|_| ()).map_err(failed);
            }
            listener.publish(&msg);
            if let Replication::Lattice(lattice) = &self.replication {
                let key = listener.key();
                let lease_key = crate::lattice::lease_key(&key.component, &key.link_name);
                if let Err(error) = lattice.fan_out(&lease_key, &msg).await {
                    return Err(format!(
                        "publish to {}: it reached this replica's clients, but not those of the provider's other replicas: {error}",
                        subjects::quoted(&msg.subject)
                    ));
                }
            }
            return Ok(());
        }
        subjects::check_enabled(
            listener.config().enable_session_tracking,
            &listener.key().link_name,
        )?;
        match subjects::parse(&msg.subject) {
            subjects::Subject::Session { id, subject } => {
                let forwarded = BrokerMessage {
                    subject: subject.to_string(),
                    body: msg.body,
                    reply_to: msg.reply_to,
                };
                self.send_to_session(listener.key(), id, &forwarded).await
            }
            subjects::Subject::Close { id } => self.close_client(listener.key(), id).await,
            _ => Err(subjects::unknown(&msg.subject, "publish")),
        }
    }

    /// The replica (tag, host) where client `id` is connected, when it is another one: its id
    /// carries that replica's tag.
    pub(crate) fn replica_of_client(&self, id: &str) -> Option<(Arc<Lattice>, String, String)> {
        let Replication::Lattice(lattice) = &self.replication else {
            return None;
        };
        let tag = crate::lattice::listeners::tag_of(id).filter(|t| *t != lattice.tag)?;
        let host = lattice
            .listening_peers()
            .into_iter()
            .find(|(t, _)| t == tag)
            .map_or_else(|| format!("with tag {tag}"), |(_, host)| host);
        Some((Arc::clone(lattice), tag.to_string(), host))
    }

    /// Runs `call` (for client `id` of another replica) there; its answer, or why there is none.
    pub(crate) async fn call_client_elsewhere(
        &self,
        id: &str,
        call: Call,
        limit: Duration,
    ) -> Option<Result<Answer, String>> {
        let (lattice, tag, host) = self.replica_of_client(id)?;
        Some(
            match lattice.call_clients_of(&tag, &host, &call, limit).await {
                Ok(Ok(answer)) => Ok(answer),
                Ok(Err(Unanswered::NoResponders)) => Err(format!(
                    "client {id} was connected to replica {host}, which is gone; nothing was sent"
                )),
                Ok(Err(Unanswered::TimedOut)) => Err(format!(
                    "replica {host}, where client {id} is connected, did not answer within {} ms; the call may or may not have run there",
                    limit.as_millis()
                )),
                Ok(Err(Unanswered::Other(error))) | Err(error) => Err(format!(
                    "the call could not be passed to replica {host}, where client {id} is connected: {error}"
                )),
            },
        )
    }

    /// `$ws.close.<id>`: closes a client of one of the caller's listeners (Close 1000), on
    /// whichever replica it is connected.
    pub(crate) async fn close_client(&self, key: &SessionKey, id: &str) -> Result<(), String> {
        if let Some((_, client)) = self.find_client(&key.component, id) {
            client.close(1000, "closed by the component");
            return Ok(());
        }
        let call = Call::Publish {
            key: key.clone(),
            msg: BrokerMessage {
                subject: format!("{}{id}", subjects::CLOSE_PREFIX),
                body: Bytes::new(),
                reply_to: None,
            },
        };
        match self.call_client_elsewhere(id, call, FORWARD_LIMIT).await {
            Some(answer) => done(answer),
            None => Err(format!(
                "component {} has no listener client {id}",
                key.component
            )),
        }
    }

    /// A `$ws.` publish or request for one client, forwarded here by another replica: the same
    /// calls as the component's own. The client's id carries this replica's tag, so nothing is
    /// forwarded again: a client that left gets the answer it gets on one replica.
    pub(crate) async fn serve_client_call(&self, call: Call) -> Answer {
        match call {
            Call::Publish { key, msg } => {
                let sent = match subjects::parse(&msg.subject) {
                    subjects::Subject::Session { id, subject } => {
                        let forwarded = BrokerMessage {
                            subject: subject.to_string(),
                            body: msg.body,
                            reply_to: msg.reply_to,
                        };
                        self.send_to_session(&key, id, &forwarded).await
                    }
                    subjects::Subject::Close { id } => self.close_client(&key, id).await,
                    _ => Err(subjects::unknown(&msg.subject, "publish")),
                };
                match sent {
                    Ok(()) => Answer::Done,
                    Err(error) => Answer::Failed(error),
                }
            }
            Call::Request {
                key,
                subject,
                body,
                timeout_ms,
            } => {
                let subjects::Subject::Session { id, subject } = subjects::parse(&subject) else {
                    return Answer::Failed(subjects::unknown(&subject, "request"));
                };
                match self
                    .request_client(&key, id, subject, body, Duration::from_millis(timeout_ms))
                    .await
                {
                    Ok(reply) => Answer::Reply(reply),
                    Err(error) => Answer::Failed(error),
                }
            }
            Call::Clients { key } => {
                let entries: Vec<_> = read(&self.listeners)
                    .get(&key)
                    .map(|l| Arc::clone(&l.listener))
                    .map(|listener| self.client_entries(&listener))
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(info, stats)| serde_json::json!([info, stats]))
                    .collect();
                Answer::Json(Bytes::from(
                    serde_json::to_vec(&entries).expect("entries serialize"),
                ))
            }
            other => Answer::Failed(format!("not a call for a listener's client: {other:?}")),
        }
    }

    /// The `$ws.sessions` and `$ws.stats` entries of a listener's clients on this replica.
    pub(crate) fn client_entries(
        &self,
        listener: &Listener,
    ) -> Vec<(serde_json::Value, serde_json::Value)> {
        let host = self.host_id();
        listener
            .clients()
            .iter()
            .map(|client| {
                let mut info = control::client_info(listener, client);
                info["owner"] = serde_json::json!(host);
                (info, control::client_stats(listener, client))
            })
            .collect()
    }

    /// The entries of a listener's clients on every replica: this one's, and those the other
    /// replicas listening for the same link answer within `limit`.
    pub(crate) async fn all_client_entries(
        &self,
        listener: &Listener,
        limit: Duration,
    ) -> Vec<(serde_json::Value, serde_json::Value)> {
        let mut entries = self.client_entries(listener);
        let Replication::Lattice(lattice) = &self.replication else {
            return entries;
        };
        let key = listener.key();
        let peers =
            lattice.peers_listening(&crate::lattice::lease_key(&key.component, &key.link_name));
        let call = Call::Clients { key: key.clone() };
        let answers = futures::future::join_all(
            peers
                .iter()
                .map(|(tag, host)| lattice.call_clients_of(tag, host, &call, limit)),
        )
        .await;
        for ((_, host), answer) in peers.iter().zip(answers) {
            match answer {
                Ok(Ok(Answer::Json(json))) => {
                    let pairs: Vec<(serde_json::Value, serde_json::Value)> =
                        serde_json::from_slice(&json).unwrap_or_default();
                    entries.extend(pairs);
                }
                other => {
                    debug!(replica = %host, answer = ?other, "another replica did not list its clients");
                }
            }
        }
        entries
    }

    /// `request("$ws.presence.<subject>")` (with `presence = true`): the clients of every
    /// replica subscribed to a pattern that matches `subject`, as `{"clients": [{"id", "user",
    /// "connected_at"}]}`, oldest first.
    pub(crate) async fn presence(
        &self,
        listener: &Listener,
        subject: &str,
    ) -> Result<Bytes, String> {
        if !listener
            .config()
            .listen
            .as_ref()
            .is_some_and(|l| l.presence)
        {
            return Err(format!(
                "request to {}: presence is off on the listener of link {} (set `presence = true`)",
                subjects::quoted(&format!("{}{subject}", subjects::PRESENCE_PREFIX)),
                listener.key().link_name
            ));
        }
        let clients = self.members(listener, subject).await;
        Ok(Bytes::from(
            serde_json::json!({ "clients": clients }).to_string(),
        ))
    }

    /// The clients of every replica's listener for the link subscribed to a pattern that
    /// matches `subject`, oldest first.
    pub(crate) async fn members(&self, listener: &Listener, subject: &str) -> Vec<Member> {
        let mut clients: Vec<Member> = self
            .all_client_entries(listener, Duration::from_secs(1))
            .await
            .into_iter()
            .map(|(info, _)| info)
            .filter(|info| {
                info["subscriptions"].as_array().is_some_and(|patterns| {
                    patterns.iter().filter_map(|p| p.as_str()).any(|p| {
                        crate::subjects::Pattern::parse(p).is_ok_and(|p| p.matches(subject))
                    })
                })
            })
            .map(|info| {
                let text = |key: &str| info[key].as_str().map(str::to_string);
                Member {
                    id: text("id").unwrap_or_default(),
                    user: text("user"),
                    connected_at: text("connected_at"),
                }
            })
            .collect();
        clients.sort_by(|a, b| (&a.connected_at, &a.id).cmp(&(&b.connected_at, &b.id)));
        clients
    }

    /// `request("$ws.session.<id>.<subject>")`: a request to one client, on whichever replica
    /// it is connected, answered by its reply.
    pub(crate) async fn request_client(
        &self,
        key: &SessionKey,
        id: &str,
        subject: &str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<BrokerMessage, String> {
        subjects::check_incoming(subject, None)
            .map_err(|e| format!("`$ws.session.{id}.<subject>`: {e}; nothing was sent"))?;
        if let Some((listener, client)) = self.find_client(&key.component, id) {
            return listener.request(&client, subject, body, timeout).await;
        }
        let call = Call::Request {
            key: key.clone(),
            subject: format!("{}{id}.{subject}", subjects::SESSION_PREFIX),
            body,
            timeout_ms: timeout.as_millis() as u64,
        };
        match self
            .call_client_elsewhere(id, call, timeout + super::FORWARD_SLACK)
            .await
        {
            Some(Ok(Answer::Reply(reply))) => Ok(reply),
            Some(Ok(Answer::Failed(error)) | Err(error)) => Err(error),
            Some(Ok(other)) => Err(format!(
                "unexpected answer to a forwarded request: {other:?}"
            )),
            None => Err(format!("component {} has no listener client {id} (requests through `$ws.session.<id>.<subject>` go to a listener's clients)", key.component)),
        }
    }
}

/// How long a call for a client on another replica may take (it only queues a frame there).
pub(crate) const FORWARD_LIMIT: Duration = Duration::from_millis(2000);

/// A forwarded publish's answer as a result.
pub(crate) fn done(answer: Result<Answer, String>) -> Result<(), String> {
    match answer {
        Ok(Answer::Done) => Ok(()),
        Ok(Answer::Failed(error)) | Err(error) => Err(error),
        Ok(other) => Err(format!(
            "unexpected answer to a forwarded publish: {other:?}"
        )),
    }
}
