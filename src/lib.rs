//! wasmCloud capability provider for `wasmcloud:messaging@0.2.0` over WebSocket.
//!
//! The layers, each importing only those below it (TECHNICAL.md, "Layout"):
//! - [`provider`]: links -> sessions and listeners, the components' calls, the SDK's `Provider`
//!   trait and the `consumer` export; [`run`] (this file) starts it the way the host does.
//! - [`client`] (dialling sessions: the connection's task, the socket, acks) and [`server`]
//!   (listeners: admission, clients, subscriptions, fan-out): the two modes, apart.
//! - [`lattice`]: replicas: leases that make one replica own a session, forwarding between them,
//!   listeners across replicas.
//! - [`delivery`]: incoming messages to a component's `handle-message`, bounded in flight, over
//!   a wRPC caller of our own ([`delivery::invoke`]).
//! - shared by both modes: [`config`] (keys, parsing, bounds, TLS, JWT keys), [`envelope`] (the
//!   wire formats), [`requests`] (request-reply matching), [`subjects`] (the rules of subjects),
//!   [`control`] (the `$ws.` answers), [`identity`], [`websocket`], [`stats`], [`metrics`].
//!
//! Data flows one way per direction: component call -> lookup by (component, link name) ->
//! session queue -> socket writer; socket reader -> decode -> delivery -> component handler.

use std::sync::Arc;

use anyhow::{anyhow, Context as _};
use tracing::{error, info};
use wasmcloud_provider_sdk::{initialize_observability, load_host_data, run_provider};

pub mod client;
pub mod config;
pub mod control;
pub mod delivery;
pub mod envelope;
pub mod identity;
pub mod lattice;
pub mod metrics;
pub mod provider;
pub mod requests;
pub mod server;
pub mod stats;
pub mod subjects;
pub mod websocket;

use crate::client::session::SessionState;
use crate::config::ProviderDefaults;
use crate::lattice::Lattice;
use crate::provider::{Replication, WebSocketMessagingProvider};

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

/// The name the provider reports to the host and in logs.
pub use crate::identity::PROVIDER_NAME;

pub use crate::subjects::RESERVED_SUBJECT_PREFIX;

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
                attributes: Arc::clone(&s.metric_attributes),
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
    provider::exports::serve(host_data, provider, shutdown)
        .await
        .context("failed to serve the provider's exports")?;
    info!("provider stopped");
    Ok(())
}
