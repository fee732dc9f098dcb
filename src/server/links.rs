//! The provider's side of listeners: links with `listen` put and deleted, and the component's
//! calls that reach a listener's clients (`publish` to subscribers, `$ws.session.<id>.<subject>`,
//! `$ws.close.<id>`, requests to a client).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tracing::{debug, info};

use crate::bindings::wasmcloud::messaging::types::BrokerMessage;
use crate::client::session::SessionKey;
use crate::connection::ConnectionConfig;
use crate::server::client::Client;
use crate::server::Listener;
use crate::{read, subjects, write, Role, Roles, WebSocketMessagingProvider};

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
        let listener = Listener::bind(
            key.clone(),
            cfg,
            self.handler_clients.clone(),
            role == Role::Handler,
            &self.totals,
            Arc::clone(&self.listener_counters),
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
        listeners.insert(
            key,
            LinkedListener {
                listener: Arc::new(listener),
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
        component: &str,
        listener: &Listener,
        msg: BrokerMessage,
    ) -> Result<(), String> {
        if !msg.subject.starts_with(crate::RESERVED_SUBJECT_PREFIX) {
            listener.publish(&msg);
            return Ok(());
        }
        subjects::check_enabled(listener.config(), &listener.key().link_name)?;
        match subjects::parse(&msg.subject) {
            subjects::Subject::Session { id, subject } => {
                let forwarded = BrokerMessage {
                    subject: subject.to_string(),
                    body: msg.body,
                    reply_to: msg.reply_to,
                };
                self.send_to_session(component, id, &forwarded).await
            }
            subjects::Subject::Close { id } => self.close_client(component, id),
            _ => Err(subjects::unknown(&msg.subject, "publish")),
        }
    }

    /// `$ws.close.<id>`: closes a client of one of the caller's listeners (Close 1000).
    pub(crate) fn close_client(&self, component: &str, id: &str) -> Result<(), String> {
        let (_, client) = self
            .find_client(component, id)
            .ok_or_else(|| format!("component {component} has no listener client {id}"))?;
        client.close(1000, "closed by the component");
        Ok(())
    }

    /// `request("$ws.session.<id>.<subject>")`: a request to one client, answered by its reply.
    pub(crate) async fn request_client(
        &self,
        component: &str,
        id: &str,
        subject: &str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<BrokerMessage, String> {
        let (listener, client) = self.find_client(component, id).ok_or_else(|| {
            format!("component {component} has no listener client {id} (requests through `$ws.session.<id>.<subject>` go to a listener's clients)")
        })?;
        subjects::check_incoming(subject, None)
            .map_err(|e| format!("`$ws.session.{id}.<subject>`: {e}; nothing was sent"))?;
        listener.request(&client, subject, body, timeout).await
    }
}
