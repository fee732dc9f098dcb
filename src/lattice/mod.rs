//! Replicas: several instances of the provider in one lattice behave as one (`replicas = one`).
//!
//! Each session (component, link name) has a lease: one key of a JetStream key-value bucket on the
//! lattice's own NATS, written only with a revision check. The replica whose value the key holds,
//! and which keeps renewing it, owns the session and holds its WebSocket connection; the others
//! stand by, watch the bucket, and take the lease over (again with a revision check) once the owner
//! stopped renewing for `failover_sec`. Calls that land on a standby are forwarded to the owner
//! over core NATS (its own subject per replica).
//!
//! - [`lease`]: the fence (may this replica deliver and write now?) and the claim task that wins,
//!   renews, loses and releases a session's lease.
//! - [`forward`]: calls between replicas: publish, request and the `$ws.` descriptions.
//!
//! TECHNICAL.md ("Replicas") gives the protocol, its timings and its failure cases.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::kv;
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};
use wasmcloud_provider_sdk::core::HostData;

pub mod forward;
pub mod history;
pub mod lease;
pub mod listeners;

/// How long start-up waits for the lattice's NATS and its JetStream before it says it cannot
/// use them (the host waits for the provider to start).
const PROBE_DEADLINE: Duration = Duration::from_secs(3);

/// Connects to the lattice's NATS the way the SDK does: HostData's URL and credentials, with the
/// client crate `$nats` (the deliveries and the leases use two versions of async-nats). `purpose`
/// names the connection in the server's view and in the provider's log.
macro_rules! connect_with {
    ($nats:ident, $host_data:expr, $purpose:expr) => {{
        let host_data: &HostData = $host_data;
        let purpose: &'static str = $purpose;
        let url = nats_url(host_data);
        let options = match (
            host_data.lattice_rpc_user_jwt.trim(),
            host_data.lattice_rpc_user_seed.trim(),
        ) {
            ("", "") => $nats::ConnectOptions::new(),
            (jwt, seed) => {
                let key_pair = Arc::new(
                    nkeys::KeyPair::from_seed(seed).context("invalid lattice_rpc_user_seed")?,
                );
                $nats::ConnectOptions::with_jwt(jwt.to_string(), move |nonce| {
                    let key_pair = Arc::clone(&key_pair);
                    async move { key_pair.sign(&nonce).map_err($nats::AuthError::new) }
                })
            }
        };
        options
            .name(format!("{}-{purpose}", crate::identity::PROVIDER_NAME))
            .event_callback(move |event| async move {
                match event {
                    $nats::Event::Connected => {
                        info!(connection = purpose, "the lattice's NATS connection is up")
                    }
                    other => warn!(connection = purpose, event = %other, "the lattice's NATS connection: {}", match purpose {
                        "delivery" => "a call under way may lose its invocation or result (it then ends at delivery_timeout_ms)",
                        "exports" => "components' publish and request calls fail while it is down (the host reports them to the component)",
                        _ => "leases cannot be renewed while it is down (an owner closes its connections after 3/4 of failover_sec)",
                    }),
                }
            })
            .connect(url)
            .await
            .with_context(|| format!("failed to connect to the lattice's NATS at {url} for {purpose}"))
    }};
}

/// The deliveries' connection (async-nats 0.49, which wrpc-transport-nats 0.31 needs).
pub async fn connect(
    host_data: &HostData,
    purpose: &'static str,
) -> anyhow::Result<delivery_nats::Client> {
    connect_with!(delivery_nats, host_data, purpose)
}

/// The replicas' connection (async-nats 0.39, for JetStream key-value).
async fn connect_lattice(host_data: &HostData) -> anyhow::Result<async_nats::Client> {
    connect_with!(async_nats, host_data, "replicas")
}

fn nats_url(host_data: &HostData) -> &str {
    if host_data.lattice_rpc_url.is_empty() {
        "nats://127.0.0.1:4222"
    } else {
        host_data.lattice_rpc_url.as_str()
    }
}

/// A name or subject token made of `[A-Za-z0-9_-]` only (bucket names and subject tokens allow
/// no more): every other character becomes `_`.
fn token(raw: &str) -> String {
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The names of a replica's own counters in `$ws.stats`'s provider object.
pub const COUNTERS: [&str; 3] = ["takeovers", "forwarded", "served"];

/// Who a replica is: its host (shown as a session's `owner`) and this run of the process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    /// The host's id: what users see as a session's `owner`.
    pub host: String,
    /// This run of the process (the host's instance id and a random part): a replica restarted
    /// on the same host is another instance.
    pub instance: String,
}

/// What a lease key holds while a replica owns the session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lease {
    pub owner: Replica,
    /// The owner's `failover_sec`, in ms: how long standbys wait after its last renewal.
    pub failover_ms: u64,
    pub component: String,
    pub link_name: String,
    /// The owner gave the session up on purpose (it stops): a standby takes it over at once.
    #[serde(default)]
    pub released: bool,
    /// How long the owner's session has been without a connection, in ms; `None` while open.
    #[serde(default)]
    pub down_ms: Option<u64>,
}

/// A lease key as this replica last saw it.
#[derive(Debug, Clone)]
pub struct Observed {
    /// `None`: the key was deleted (the link went).
    pub lease: Option<Lease>,
    pub revision: u64,
    /// When this replica first saw this revision: standbys time the owner's silence from it,
    /// on their own clock, so that no two clocks need to agree.
    pub seen: Instant,
}

/// This replica's view of the lattice: the lease bucket, the forwarding subjects, and what every
/// lease key holds.
pub struct Lattice {
    pub nats: async_nats::Client,
    pub kv: kv::Store,
    pub me: Replica,
    /// A short random tag of this run of the process: every id of its listeners' clients starts
    /// with it, so that any replica can tell where a client is connected.
    pub tag: String,
    pub bucket: String,
    /// `wsprov.<lattice>.<provider>`: each replica serves forwarded calls on `<prefix>.<instance>`.
    subject_prefix: String,
    observed: Mutex<HashMap<String, Observed>>,
    /// Bumped on every change seen in the bucket: claims and forwarders wait on it.
    changed: watch::Sender<u64>,
    /// Sessions this replica took over from an owner that stopped renewing its lease.
    pub takeovers: std::sync::atomic::AtomicU64,
    /// Calls this replica forwarded to an owner, and calls it served for other replicas.
    pub forwarded: std::sync::atomic::AtomicU64,
    pub served: std::sync::atomic::AtomicU64,
    /// Other replicas with listeners, by tag.
    peers: Mutex<HashMap<String, listeners::Peer>>,
    /// The lease keys of the links this replica listens for.
    listening: Mutex<std::collections::BTreeSet<String>>,
    /// Wakes the presence task when `listening` changed.
    announce: Arc<tokio::sync::Notify>,
}

impl Lattice {
    /// Connects to the lattice's NATS, creates (or opens) the lease bucket of this provider in
    /// this lattice and starts watching it. Fails with the reason when the NATS server has no
    /// JetStream, within [`PROBE_DEADLINE`].
    pub async fn start(host_data: &HostData) -> anyhow::Result<Arc<Lattice>> {
        tokio::time::timeout(PROBE_DEADLINE, Self::open(host_data))
            .await
            .unwrap_or_else(|_| {
                Err(anyhow::anyhow!(
                    "no answer from the lattice's NATS at {} or its JetStream within {} s",
                    nats_url(host_data),
                    PROBE_DEADLINE.as_secs()
                ))
            })
    }

    async fn open(host_data: &HostData) -> anyhow::Result<Arc<Lattice>> {
        let nats = connect_lattice(host_data).await?;
        let jetstream = async_nats::jetstream::new(nats.clone());
        let bucket = format!(
            "WSPROV_{}_{}",
            token(&host_data.lattice_rpc_prefix),
            token(&host_data.provider_key)
        );
        let kv = jetstream
            .create_key_value(kv::Config {
                bucket: bucket.clone(),
                description: "leases of the WebSocket messaging provider's sessions: which replica holds each connection".into(),
                history: 1,
                // Leases live as long as their owner renews them: nothing is worth a disk write.
                storage: async_nats::jetstream::stream::StorageType::Memory,
                ..Default::default()
            })
            .await
            .with_context(|| {
                format!(
                    "JetStream on the lattice's NATS at {} could not make the lease bucket {bucket}",
                    nats_url(host_data)
                )
            })?;
        let tag = crate::identity::token(listeners::TAG_LEN);
        let me = Replica {
            host: host_data.host_id.clone(),
            instance: format!("{}-{tag}", token(&host_data.instance_id)),
        };
        let subject_prefix = format!(
            "wsprov.{}.{}",
            token(&host_data.lattice_rpc_prefix),
            token(&host_data.provider_key)
        );
        // New changes only: a watch "with history" of async-nats 0.39 ends at once on an empty
        // bucket. What a key held before is read by its claim (`entry`) when it needs it.
        let watch = kv
            .watch_all()
            .await
            .with_context(|| format!("could not watch the lease bucket {bucket}"))?;
        let (changed, _) = watch::channel(0);
        let lattice = Arc::new(Lattice {
            nats,
            kv,
            me,
            tag,
            bucket,
            subject_prefix,
            observed: Mutex::new(HashMap::new()),
            changed,
            takeovers: Default::default(),
            forwarded: Default::default(),
            served: Default::default(),
            peers: Mutex::default(),
            listening: Mutex::default(),
            announce: Arc::default(),
        });
        tokio::spawn(watch_bucket(Arc::downgrade(&lattice), watch));
        tokio::spawn(listeners::presence(Arc::downgrade(&lattice)));
        info!(bucket = %lattice.bucket, replica = %lattice.me.host, instance = %lattice.me.instance, "replicas coordinate through JetStream key-value");
        Ok(lattice)
    }

    /// The replica's own counters, named as in [`COUNTERS`].
    pub fn counters(&self) -> [(&'static str, u64); 3] {
        use std::sync::atomic::Ordering::Relaxed;
        let [takeovers, forwarded, served] = COUNTERS;
        [
            (takeovers, self.takeovers.load(Relaxed)),
            (forwarded, self.forwarded.load(Relaxed)),
            (served, self.served.load(Relaxed)),
        ]
    }

    /// Reads what `key` holds now, for a replica that has not seen it change yet.
    pub async fn refresh(&self, key: &str, limit: Duration) {
        if let Ok(Ok(Some(entry))) = tokio::time::timeout(limit, self.kv.entry(key)).await {
            let value = match entry.operation {
                kv::Operation::Put => Some(entry.value),
                kv::Operation::Delete | kv::Operation::Purge => None,
            };
            self.saw(key, entry.revision, value);
        }
    }

    /// Records what a key holds at `revision` (`None`: deleted), read from the bucket. A
    /// revision already known (this replica's own writes come back through the watch) is not
    /// parsed again.
    pub fn saw(&self, key: &str, revision: u64, value: Option<bytes::Bytes>) {
        let known = self
            .observed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .is_some_and(|known| known.revision >= revision);
        if known {
            return;
        }
        let lease = match value.map(|v| serde_json::from_slice::<Lease>(&v)) {
            None => None,
            Some(Ok(lease)) => Some(lease),
            Some(Err(e)) => {
                warn!(key, error = %e, "a lease key holds something that is not a lease; treated as free");
                None
            }
        };
        self.record(key, revision, lease);
    }

    /// Records that `key` holds `lease` at `revision` (`None`: deleted). An older revision than
    /// the one known changes nothing, and the same one keeps the time it was first seen.
    pub fn record(&self, key: &str, revision: u64, lease: Option<Lease>) {
        {
            let mut observed = self.observed.lock().unwrap_or_else(|e| e.into_inner());
            if observed
                .get(key)
                .is_some_and(|known| known.revision >= revision)
            {
                return;
            }
            observed.insert(
                key.to_string(),
                Observed {
                    lease,
                    revision,
                    seen: Instant::now(),
                },
            );
        }
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// What `key` holds as far as this replica knows.
    pub fn observed(&self, key: &str) -> Option<Observed> {
        self.observed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    /// The replica that holds `key`'s lease now (not released, renewed within its failover), if
    /// any, and whether it is this one.
    pub fn owner_of(&self, key: &str) -> Option<Replica> {
        let observed = self.observed(key)?;
        let lease = observed.lease?;
        let live = observed.seen.elapsed() < Duration::from_millis(lease.failover_ms);
        (!lease.released && live).then_some(lease.owner)
    }

    /// Resolves at the next change seen in the bucket.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The subject on which `replica` serves forwarded calls.
    pub fn subject_of(&self, replica: &Replica) -> String {
        format!("{}.{}", self.subject_prefix, replica.instance)
    }

    /// Forgets a key this replica holds no link for any more.
    pub fn forget(&self, key: &str) {
        self.observed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

/// Follows every change of the lease bucket while the lattice lives; a watch that ends (the
/// connection was lost for long) is made again.
async fn watch_bucket(lattice: std::sync::Weak<Lattice>, mut watch: kv::Watch) {
    loop {
        while let Some(entry) = watch.next().await {
            let Some(lattice) = lattice.upgrade() else {
                return;
            };
            match entry {
                Ok(entry) => lattice.saw(
                    &entry.key,
                    entry.revision,
                    match entry.operation {
                        kv::Operation::Put => Some(entry.value),
                        kv::Operation::Delete | kv::Operation::Purge => None,
                    },
                ),
                Err(e) => warn!(error = %e, "watching the lease bucket failed"),
            }
        }
        let Some(alive) = lattice.upgrade() else {
            return;
        };
        debug!("the lease bucket's watch ended; watching it again");
        tokio::time::sleep(Duration::from_millis(250)).await;
        match alive.kv.watch_all().await {
            Ok(again) => watch = again,
            Err(e) => warn!(error = %e, "could not watch the lease bucket again; retrying"),
        }
    }
}

/// The lease key (and, in `replicas = one`, the session id) of a session: the same on every
/// replica, so that any of them can name and address it, and stable across failovers.
pub fn lease_key(component: &str, link_name: &str) -> String {
    crate::identity::stable_session_id(component, link_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_keys_are_stable_distinct_and_dot_free() {
        let a = lease_key("echo", "default");
        assert_eq!(a, lease_key("echo", "default"));
        assert_ne!(a, lease_key("echo", "other"));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(lease_key("ab", "c"), lease_key("a", "bc"));
        assert!(a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'));
        assert_eq!(a.len(), 19);
    }

    #[test]
    fn tokens_keep_only_safe_characters() {
        assert_eq!(token("default"), "default");
        assert_eq!(token("a.b c>*"), "a_b_c__");
    }
}
