//! The SDK's `Provider` trait: links put and deleted, provider config updates, health and
//! shutdown (the SDK runs them one at a time: nothing here waits on the network for long).

use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use tracing::{debug, error, info};
use wasmcloud_provider_sdk::{
    HealthCheckRequest, HealthCheckResponse, LinkConfig, LinkDeleteInfo, Provider,
    ProviderConfigUpdate,
};

use super::{read, write, Role, WebSocketMessagingProvider, SHUTDOWN_GRACE};
use crate::client::session::Session;
use crate::identity::SessionKey;
use crate::lattice::lease::Leave;

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
        let unbound: Vec<String> = read(&self.unbound)
            .iter()
            .map(|(key, error)| format!("listener of {key} could not bind {error}"))
            .collect();
        if !unbound.is_empty() {
            let message = unbound.join("; ");
            debug!(%message, "health check: unhealthy");
            return Ok(HealthCheckResponse {
                healthy: false,
                message: Some(message),
            });
        }
        let sessions = self.sessions();
        let total = sessions.len();
        let mut down: Vec<(Arc<Session>, Duration, String)> = sessions
            .into_iter()
            .filter_map(|s| {
                let (down_for, state) = self.down_for(&s)?;
                (down_for > s.config.reconnect_max_delay).then_some((s, down_for, state))
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
            .map(|(s, down_for, state)| {
                format!(
                    "{}/{} to {} ({} for {} s, longer than reconnect_max_delay_ms = {})",
                    s.key.component,
                    s.key.link_name,
                    s.config.uri,
                    state,
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
        let listeners: Vec<_> = write(&self.listeners)
            .drain()
            .map(|(_, l)| l.listener)
            .collect();
        for listener in &listeners {
            listener.close();
        }
        let mut linked: Vec<_> = write(&self.links).drain().map(|(_, l)| l).collect();
        // A pool's session (and its lease) is held by several links: once each.
        let mut sessions: Vec<Arc<Session>> = Vec::new();
        linked.retain(|l| {
            let first = !sessions.iter().any(|s| Arc::ptr_eq(s, &l.session));
            if first {
                sessions.push(Arc::clone(&l.session));
            }
            first
        });
        for session in &sessions {
            session.close();
        }
        // Close frames go out and leases are released (a standby takes over at once), all in
        // parallel; the host kills the process 300 ms after asking.
        let closing =
            futures::future::join_all(sessions.iter().map(|s| s.wait_closed(SHUTDOWN_GRACE)));
        let leaving = futures::future::join_all(
            linked
                .iter()
                .filter_map(|l| l.claim.as_ref())
                .map(|c| c.leave(Leave::Release, SHUTDOWN_GRACE)),
        );
        let stopping =
            futures::future::join_all(listeners.iter().map(|l| l.wait_closed(SHUTDOWN_GRACE)));
        futures::future::join3(closing, leaving, stopping).await;
        info!(sessions = sessions.len(), "provider shut down");
        Ok(())
    }
}
