//! Several replicas of one provider, the way wadm runs them: one provider process per host, all
//! with the same provider id in one lattice, each with its own host id and xkeys, each given
//! every link by its own host (on its own xkey's subject).

use std::time::Duration;

use wasmcloud_provider_sdk::core::InterfaceLinkDefinition;

use super::component::PlayedComponent;
use super::nats::NatsServer;
use super::provider::{ProviderOptions, ProviderProcess};
use super::unique;

pub struct Replicas {
    pub nats: NatsServer,
    pub lattice: String,
    pub provider_key: String,
    pub all: Vec<ProviderProcess>,
    /// Replicas killed with [`Replicas::signal`] `KILL`.
    dead: Vec<bool>,
    /// The links put so far, given to every replica started later too.
    links: Vec<InterfaceLinkDefinition>,
}

impl Replicas {
    /// `n` replicas on one nats-server with JetStream, with `config` as provider config.
    pub async fn start(n: usize, config: &[(&str, &str)]) -> Self {
        let nats = NatsServer::start().await;
        let mut replicas = Replicas {
            nats,
            lattice: unique("lattice"),
            provider_key: unique("ws-provider"),
            all: Vec::new(),
            dead: Vec::new(),
            links: Vec::new(),
        };
        for _ in 0..n {
            replicas.add(config).await;
        }
        replicas
    }

    /// Starts one more replica (a host that joins), given the links put so far; returns its
    /// index.
    pub async fn add(&mut self, config: &[(&str, &str)]) -> usize {
        let options = ProviderOptions {
            config: config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            provider_key: Some(self.provider_key.clone()),
            lattice: Some(self.lattice.clone()),
            links: self.links.clone(),
            ..Default::default()
        };
        let replica = ProviderProcess::start(&self.nats, options).await;
        // Health is one subject for all replicas: another one may have answered. This one is
        // ready for links once the SDK says so.
        replica
            .logs
            .wait_for(
                &["provider finished initialization"],
                Duration::from_secs(30),
            )
            .await;
        self.all.push(replica);
        self.dead.push(false);
        self.all.len() - 1
    }

    /// Puts a link on every replica, as every host does.
    pub async fn put_link(&mut self, link: &InterfaceLinkDefinition) {
        const TAKEN: &str = "Linking component with provider";
        for replica in &self.all {
            // A replica that has only just started may not have subscribed yet (health, which
            // said it runs, may have been another replica's answer): put again until it takes
            // the link (the SDK ignores a repeated put of a link it has).
            let before = replica.logs.all().matches(TAKEN).count();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                replica.put_link(link).await;
                let taken = tokio::time::timeout(
                    Duration::from_millis(500),
                    replica
                        .logs
                        .wait_count(&[TAKEN], before + 1, Duration::from_secs(600)),
                )
                .await;
                if taken.is_ok() {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "replica {} never took the link",
                    replica.host_id
                );
            }
        }
        self.links.push(link.clone());
    }

    /// Deletes a link on every replica.
    pub async fn delete_link(&mut self, link: &InterfaceLinkDefinition) {
        if let Some(replica) = self.all.first() {
            // One message on the provider id's subject reaches every replica.
            replica.delete_link(link).await;
        }
        self.links.retain(|l| {
            !(l.source_id == link.source_id
                && l.target == link.target
                && l.name == link.name
                && l.interfaces == link.interfaces)
        });
    }

    /// Both links of `component` named `default` to `uri`, with `extra` settings.
    pub async fn link_both_ways(&mut self, component: &str, uri: &str, extra: &[(&str, &str)]) {
        let mut config = vec![("uri", uri)];
        config.extend_from_slice(extra);
        let first = &self.all[0];
        let consumer = first.consumer_link(component, "default", &config);
        let handler = first.handler_link(component, "default", &config);
        self.put_link(&consumer).await;
        self.put_link(&handler).await;
    }

    /// Puts both links of `component` (named `default`) with listener settings `config` on every
    /// replica; with more than one, waits until each knows that another listens too.
    pub async fn listen_both_ways(&mut self, component: &str, config: &[(&str, &str)]) {
        let consumer = self.all[0].consumer_link(component, "default", config);
        let handler = self.all[0].handler_link(component, "default", config);
        self.put_link(&consumer).await;
        self.put_link(&handler).await;
        if self.all.len() > 1 {
            for replica in &self.all {
                replica
                    .logs
                    .wait_for(
                        &["another replica listens too"],
                        std::time::Duration::from_secs(20),
                    )
                    .await;
            }
        }
    }

    /// The played component `id`, calling whichever replica NATS picks.
    pub async fn component(&self, id: &str) -> PlayedComponent {
        PlayedComponent::start_for(&self.lattice, &self.provider_key, &self.nats.url, id).await
    }

    /// Waits until every live replica but `owner` has seen the owner's lease (it says so at debug
    /// level), so that a second connection, if any were coming, would be under way.
    pub async fn settled(&self, owner: usize, limit: Duration) {
        for (i, replica) in self.all.iter().enumerate() {
            if i != owner && !self.dead[i] {
                replica
                    .logs
                    .wait_for(&["standing by", "holds the session"], limit)
                    .await;
            }
        }
    }

    /// Every live replica's answer to the host's health check (one subject for all of them: the
    /// request is published once and every answer collected).
    pub async fn health_of_all(&self, limit: Duration) -> Vec<serde_json::Value> {
        use futures::StreamExt as _;
        let live = self.dead.iter().filter(|dead| !**dead).count();
        let client = self.nats.client().await;
        let inbox = client.new_inbox();
        let mut answers = client.subscribe(inbox.clone()).await.unwrap();
        let subject = format!("wasmbus.rpc.{}.{}.health", self.lattice, self.provider_key);
        client
            .publish_with_reply(subject, inbox, "{}".into())
            .await
            .unwrap();
        let mut all = Vec::new();
        while all.len() < live {
            let answer = tokio::time::timeout(limit, answers.next())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "{} of {live} replicas answered health within {limit:?}",
                        all.len()
                    )
                })
                .expect("the subscription lives");
            all.push(serde_json::from_slice(&answer.payload).expect("health is JSON"));
        }
        all
    }

    /// The index of the replica whose host id is `host`.
    pub fn by_host(&self, host: &str) -> usize {
        self.all
            .iter()
            .position(|r| r.host_id == host)
            .unwrap_or_else(|| panic!("no replica runs on host {host}"))
    }

    /// The index of the replica that logged that it owns the session (the last one to say so).
    pub async fn owner(&self, limit: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let owners: Vec<usize> = (0..self.all.len())
                .filter(|&i| {
                    !self.dead[i]
                        && self.all[i]
                            .logs
                            .all()
                            .lines()
                            .rev()
                            .find(|l| {
                                l.contains("owns the session")
                                    || l.contains("took the session over")
                                    || l.contains("stands by")
                            })
                            .is_some_and(|l| !l.contains("stands by"))
                })
                .collect();
            if owners.len() == 1 {
                return owners[0];
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not exactly one replica owns the session within {limit:?}: {owners:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `signal` (`KILL`, `STOP`, `CONT`) to replica `i`.
    pub fn signal(&mut self, i: usize, signal: &str) {
        if signal == "KILL" {
            self.dead[i] = true;
        }
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), self.all[i].pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} failed");
    }
}
