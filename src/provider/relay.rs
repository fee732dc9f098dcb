//! What a listener reaches the provider's other replicas through ([`server::gateway::Relay`]):
//! a client's broadcast goes the way a component's `publish` goes, presence lists every
//! replica's clients, and joins and leaves travel on the link's fan-out subject, marked by a
//! subject of the provider's own that no `publish` fans out.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt as _;
use tracing::debug;

use super::{Replication, WebSocketMessagingProvider};
use crate::bindings::wasmcloud::messaging::types::BrokerMessage;
use crate::envelope::gateway::Member;
use crate::identity::SessionKey;
use crate::server::gateway::{self, MemberChange};
use crate::server::Listener;

/// The fan-out subject of a join or leave (a component's `$ws.` publishes are never fanned
/// out, so it cannot be a broadcast's).
const MEMBER_CHANGE: &str = "$ws.member";

/// The relay of the listener of link `key`, which it finds in the provider's listeners (so it
/// exists before the listener does, and holds no reference to it).
pub(crate) struct Relay {
    pub(crate) provider: WebSocketMessagingProvider,
    pub(crate) key: SessionKey,
}

impl Relay {
    fn listener(&self) -> Result<Arc<Listener>, String> {
        self.provider
            .listener_of(&self.key)
            .ok_or_else(|| format!("the listener of link {} is not open", self.key))
    }
}

impl gateway::Relay for Relay {
    fn broadcast(&self, msg: BrokerMessage) -> BoxFuture<'static, Result<(), String>> {
        let (provider, listener) = (self.provider.clone(), self.listener());
        async move { provider.publish_to_listener(&*listener?, msg).await }.boxed()
    }

    fn presence(&self, subject: String) -> BoxFuture<'static, Result<Vec<Member>, String>> {
        let (provider, listener) = (self.provider.clone(), self.listener());
        async move { Ok(provider.members(&*listener?, &subject).await) }.boxed()
    }

    fn changed(&self, change: MemberChange) -> BoxFuture<'static, ()> {
        let (provider, key) = (self.provider.clone(), self.key.clone());
        async move {
            let Replication::Lattice(lattice) = &provider.replication else {
                return;
            };
            let msg = BrokerMessage {
                subject: MEMBER_CHANGE.to_string(),
                body: Bytes::from(serde_json::to_vec(&change).expect("a change serializes")),
                reply_to: None,
            };
            let lease_key = crate::lattice::lease_key(&key.component, &key.link_name);
            if let Err(error) = lattice.fan_out(&lease_key, &msg).await {
                debug!(%key, %error, "the other replicas were not told of a join or leave");
            }
        }
        .boxed()
    }
}

/// What another replica fanned out for `listener`: a component's broadcast, or a join or leave.
pub(crate) fn arrived(listener: &Listener, msg: &BrokerMessage) {
    if msg.subject != MEMBER_CHANGE {
        listener.publish(msg);
        return;
    }
    match serde_json::from_slice::<MemberChange>(&msg.body) {
        Ok(change) => listener.member_changed(&change),
        Err(error) => debug!(%error, "a join or leave from another replica that does not parse"),
    }
}
