//! What a listener reaches the provider's other replicas through ([`server::gateway::Relay`]):
//! a client's broadcast goes the way a component's `publish` goes, presence lists every
//! replica's clients, and joins and leaves travel on the link's fan-out subject, marked by a
//! subject of the provider's own that no `publish` fans out.

use std::sync::{Arc, Weak};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt as _;
use tracing::debug;

use super::{Replication, WebSocketMessagingProvider};
use crate::bindings::wasmcloud::messaging::types::BrokerMessage;
use crate::envelope::gateway::Member;
use crate::server::gateway::{self, MemberChange};
use crate::server::Listener;

/// The fan-out subject of a join or leave (a component's `$ws.` publishes are never fanned
/// out, so it cannot be a broadcast's).
const MEMBER_CHANGE: &str = "$ws.member";

pub(crate) struct Relay {
    provider: WebSocketMessagingProvider,
    listener: Weak<Listener>,
}

impl Relay {
    pub(crate) fn new(provider: WebSocketMessagingProvider, listener: &Arc<Listener>) -> Self {
        Relay {
            provider,
            listener: Arc::downgrade(listener),
        }
    }

    fn listener(&self) -> Result<Arc<Listener>, String> {
        self.listener
            .upgrade()
            .ok_or_else(|| "the listener is closing".to_string())
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
        let (provider, listener) = (self.provider.clone(), self.listener());
        async move {
            let (Replication::Lattice(lattice), Ok(listener)) = (&provider.replication, listener)
            else {
                return;
            };
            let key = listener.key();
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
