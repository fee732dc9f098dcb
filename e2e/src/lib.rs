//! The provider on a real wasmCloud host, next to a real component: shared by the end-to-end test
//! (`tests/e2e.rs`) and the demo (`src/main.rs`).
//!
//! - [`artifacts`]: builds the provider binary and the example components, packs the provider
//!   archive.
//! - [`deploy`]: reads a wadm manifest (`examples/wadm.yaml`, `examples/chat/wadm.yaml`) with
//!   wadm's own types and applies it to a host through the control interface, as wadm would.
//! - [`Lattice`]: a nats-server with JetStream and an in-process wasmCloud host on it.
//! - [`chat`]: the chat example's manifest, listener and page; [`static_files`]: the HTTP server
//!   its page is loaded from.
//! - `nats`, `ws`, `clients`: the same nats-server launcher, WebSocket servers and listener
//!   clients the provider's own tests use.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

pub mod artifacts;
pub mod chat;
pub mod deploy;
pub mod static_files;

#[path = "../../tests/common/clients.rs"]
pub mod clients;
#[path = "../../tests/common/docs.rs"]
pub mod docs;

#[path = "../../tests/common/nats.rs"]
pub mod nats;
#[path = "../../tests/common/wait.rs"]
pub mod wait;
#[path = "../../tests/common/ws.rs"]
pub mod ws;

pub use wait::wait_until;
pub use wasmcloud_test_util::control_interface;

/// Shows the host's own log on stderr, filtered by `RUST_LOG` (default: warnings).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The repository's root directory (this project lives in `e2e/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ has a parent")
        .to_path_buf()
}

/// `path` as the demo prints it: relative to the repository root when it is inside it (never a
/// path of the machine it runs on), else as it is.
pub fn shown(path: &Path) -> String {
    let root = repo_root();
    match path.strip_prefix(&root) {
        Ok(relative) if relative.as_os_str().is_empty() => ".".into(),
        Ok(relative) => relative.display().to_string(),
        Err(_) => path.display().to_string(),
    }
}

/// What `wash up` lets a user set on a host, as far as the tests need it.
#[derive(Clone, Debug)]
pub struct HostSettings {
    /// `--max-execution-time-ms` (`WASMCLOUD_MAX_EXECUTION_TIME_MS`): how long the host lets one
    /// invocation of a component run before it drops it and frees the instance.
    pub max_execution_time: std::time::Duration,
}

impl Default for HostSettings {
    /// The host's defaults (10 minutes).
    fn default() -> Self {
        HostSettings {
            max_execution_time: wasmcloud_host::wasmbus::HostConfig::default().max_execution_time,
        }
    }
}

/// A wasmCloud host in this process, configured as `WasmCloudTestHost::start` of
/// wasmcloud-test-util configures it, and with [`HostSettings`].
struct Host {
    id: String,
    shutdown: std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>>>>,
    _host: std::sync::Arc<wasmcloud_host::wasmbus::Host>,
}

impl Host {
    async fn start(nats_url: &str, lattice: &str, settings: &HostSettings) -> anyhow::Result<Self> {
        use wasmcloud_host::wasmbus::{Features, HostConfig};
        let nats_url = url::Url::parse(nats_url).context("failed to parse the NATS URL")?;
        let key = std::sync::Arc::new(nkeys::KeyPair::new_server());
        let config = HostConfig {
            ctl_nats_url: nats_url.clone(),
            rpc_nats_url: nats_url,
            lattice: lattice.into(),
            host_key: Some(std::sync::Arc::clone(&key)),
            provider_shutdown_delay: Some(std::time::Duration::from_millis(300)),
            allow_file_load: true,
            experimental_features: Features::new()
                .enable_builtin_http_client()
                .enable_builtin_http_server()
                .enable_builtin_messaging_nats()
                .enable_wasmcloud_messaging_v3(),
            max_execution_time: settings.max_execution_time,
            ..Default::default()
        };
        let (host, shutdown) = wasmcloud_host::wasmbus::Host::new(config)
            .await
            .context("failed to initialize the host")?;
        Ok(Host {
            id: key.public_key(),
            shutdown: Box::pin(shutdown),
            _host: host,
        })
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.await.context("failed to shut the host down")
    }
}

/// A nats-server with JetStream and wasmCloud hosts (the library the `wasmcloud` binary is built
/// from) running in this process, all in one lattice.
pub struct Lattice {
    pub nats: nats::NatsServer,
    hosts: Vec<Host>,
    pub ctl: control_interface::Client,
    /// The first host's id: where components run.
    pub host_id: String,
    /// Every host's id, in the order they started.
    pub host_ids: Vec<String>,
}

impl Lattice {
    /// One host.
    pub async fn start(lattice: &str) -> anyhow::Result<Self> {
        Self::start_hosts(lattice, 1).await
    }

    /// `n` hosts on one nats-server, as a lattice of `n` machines.
    pub async fn start_hosts(lattice: &str, n: usize) -> anyhow::Result<Self> {
        Self::start_hosts_with(lattice, n, HostSettings::default()).await
    }

    /// `n` hosts with `settings`.
    pub async fn start_hosts_with(
        lattice: &str,
        n: usize,
        settings: HostSettings,
    ) -> anyhow::Result<Self> {
        let nats = nats::NatsServer::start_with_jetstream().await;
        let mut hosts = Vec::with_capacity(n);
        for i in 0..n {
            let host = Host::start(&nats.url, lattice, &settings)
                .await
                .with_context(|| format!("failed to start wasmCloud host {}", i + 1))?;
            hosts.push(host);
        }
        // A short request timeout: a health request racing a provider's exit must not stall 10 s.
        let client = async_nats::ConnectOptions::new()
            .request_timeout(Some(std::time::Duration::from_secs(2)))
            .connect(&nats.url)
            .await
            .context("failed to connect the control client")?;
        let ctl = control_interface::ClientBuilder::new(client)
            .lattice(lattice)
            .build();
        let host_ids: Vec<String> = hosts.iter().map(|h| h.id.clone()).collect();
        Ok(Lattice {
            nats,
            hosts,
            ctl,
            host_id: host_ids[0].clone(),
            host_ids,
        })
    }

    /// The directory the first host copies provider binaries into; it never cleans it itself.
    pub fn provider_cache(&self) -> PathBuf {
        Self::cache_of(&self.host_id)
    }

    /// The provider cache of host `host_id`.
    pub fn cache_of(host_id: &str) -> PathBuf {
        std::env::temp_dir().join("wasmcloudcache").join(host_id)
    }

    /// Stops the hosts and removes their provider caches.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        for host in self.hosts.drain(..) {
            host.stop().await?;
        }
        for host_id in &self.host_ids {
            let _ = std::fs::remove_dir_all(Self::cache_of(host_id));
        }
        Ok(())
    }
}

/// The processes whose command line mentions `needle` (used to see that the provider is gone).
pub fn processes_running(needle: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let needle = needle.to_string_lossy();
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle.as_ref()))
                .unwrap_or(false)
        })
        .collect()
}
