//! The real provider binary, started the way the wasmCloud host starts it: one base64 HostData
//! line on stdin, the environment cleared but for `RUST_LOG`, links and control messages over the
//! lattice's control subjects.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use nkeys::XKey;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;
use wasmcloud_provider_sdk::core::logging::Level;
use wasmcloud_provider_sdk::core::secrets::SecretValue;
use wasmcloud_provider_sdk::core::{HostData, InterfaceLinkDefinition, OtelConfig};

use super::nats::NatsServer;
use super::{unique, wait_until};

/// Provider-level settings of a test provider.
#[derive(Default)]
pub struct ProviderOptions {
    pub config: HashMap<String, String>,
    pub secrets: HashMap<String, SecretValue>,
    pub links: Vec<InterfaceLinkDefinition>,
    /// The provider's id; a unique one when unset.
    pub provider_key: Option<String>,
    /// The lattice; a unique one when unset (replicas share one).
    pub lattice: Option<String>,
    /// The log level the host asks for; debug (or `TEST_PROVIDER_LOG_LEVEL`) when unset.
    pub log_level: Option<Level>,
    /// Another provider binary to start the same way (the benchmark's peer); ours when unset.
    pub binary: Option<std::path::PathBuf>,
    /// The host's OpenTelemetry settings.
    pub otel: Option<OtelConfig>,
    /// `OTEL_*` variables of the provider's environment (the host passes its own on).
    pub otel_env: Vec<(String, String)>,
}

/// Every line the provider wrote to stdout or stderr, and a way to wait for one.
#[derive(Clone, Default)]
pub struct Logs {
    lines: Arc<Mutex<Vec<String>>>,
    changed: Arc<Notify>,
}

impl Logs {
    pub fn all(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    fn push(&self, line: String) {
        if std::env::var_os("TEST_PROVIDER_OUTPUT").is_some() {
            eprintln!("[provider] {line}");
        }
        self.lines.lock().unwrap().push(line);
        self.changed.notify_waiters();
    }

    /// Waits until `n` lines contain every one of `parts`.
    pub async fn wait_count(&self, parts: &[&str], n: usize, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let count = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .filter(|l| parts.iter().all(|p| l.contains(p)))
                .count();
            if count >= n {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("{count} of {n} provider log lines with {parts:?} within {limit:?}; the log:\n{}", self.all());
            }
        }
    }

    /// Waits for a line containing every one of `parts`, and returns it.
    pub async fn wait_for(&self, parts: &[&str], limit: Duration) -> String {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(line) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| parts.iter().all(|p| l.contains(p)))
            {
                return line.clone();
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "no provider log line with {parts:?} within {limit:?}; the log:\n{}",
                    self.all()
                );
            }
        }
    }
}

pub struct ProviderProcess {
    pub lattice: String,
    pub provider_key: String,
    pub host_id: String,
    pub logs: Logs,
    nats: async_nats::Client,
    host_xkey: XKey,
    provider_xkey_public: XKey,
    link_put_id: String,
    child: Child,
}

pub const BINARY: &str = env!("CARGO_BIN_EXE_messaging-websocket-provider");

impl ProviderProcess {
    /// Starts the provider and waits until it answers health checks.
    pub async fn start(nats: &NatsServer, options: ProviderOptions) -> Self {
        let provider = Self::spawn(nats, options).await;
        wait_until(
            "the provider answers health checks",
            Duration::from_secs(30),
            || provider.health_ok(),
        )
        .await;
        provider
    }

    /// Starts the provider without waiting for it.
    pub async fn spawn(nats: &NatsServer, options: ProviderOptions) -> Self {
        let lattice = options.lattice.unwrap_or_else(|| unique("lattice"));
        let provider_key = options
            .provider_key
            .unwrap_or_else(|| unique("ws-provider"));
        let host_id = unique("host");
        let host_xkey = XKey::new();
        let provider_xkey = XKey::new();
        let provider_xkey_public = XKey::from_public_key(&provider_xkey.public_key()).unwrap();
        let level = options.log_level.unwrap_or_else(|| {
            match std::env::var("TEST_PROVIDER_LOG_LEVEL").as_deref() {
                Ok("trace") => Level::Trace,
                Ok("info") => Level::Info,
                Ok("warn") => Level::Warn,
                _ => Level::Debug,
            }
        });
        let host_data = HostData {
            host_id: host_id.clone(),
            lattice_rpc_prefix: lattice.clone(),
            link_name: "default".into(),
            lattice_rpc_url: nats.url.clone(),
            provider_key: provider_key.clone(),
            instance_id: unique("instance"),
            link_definitions: options.links,
            config: options.config,
            secrets: options.secrets,
            host_xkey_public_key: host_xkey.public_key(),
            provider_xkey_private_key: provider_xkey.seed().unwrap(),
            default_rpc_timeout_ms: Some(2000),
            log_level: Some(level),
            otel_config: options.otel.unwrap_or_default(),
            ..Default::default()
        };
        let line = base64::engine::general_purpose::STANDARD
            .encode(serde_json::to_vec(&host_data).unwrap());

        // TEST_PROVIDER_BINARY runs the tests against another build (an older one, to see that a
        // test fails without its fix).
        let binary = options.binary.unwrap_or_else(|| {
            std::env::var_os("TEST_PROVIDER_BINARY")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| std::path::PathBuf::from(BINARY))
        });
        let mut command = Command::new(binary);
        command
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Ok(filter) = std::env::var("RUST_LOG") {
            command.env("RUST_LOG", filter);
        }
        for (name, value) in &options.otel_env {
            assert!(name.starts_with("OTEL_"), "the host passes only OTEL_* on");
            command.env(name, value);
        }
        let mut child = command.spawn().expect("the provider binary starts");
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
        drop(stdin);

        let logs = Logs::default();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        for stream in [
            Box::new(stdout) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
            Box::new(stderr),
        ] {
            let logs = logs.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    logs.push(line);
                }
            });
        }

        ProviderProcess {
            lattice,
            provider_key,
            host_id,
            logs,
            nats: nats.client().await,
            link_put_id: provider_xkey.public_key(),
            host_xkey,
            provider_xkey_public,
            child,
        }
    }

    /// Waits for the process to exit by itself.
    pub async fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .expect("the provider exits")
            .unwrap()
    }

    async fn health_ok(&self) -> bool {
        matches!(
            tokio::time::timeout(Duration::from_secs(1), self.health()).await,
            Ok(Some(_))
        )
    }

    /// The provider's answer to the host's health check, raw JSON.
    pub async fn health(&self) -> Option<serde_json::Value> {
        let subject = format!("wasmbus.rpc.{}.{}.health", self.lattice, self.provider_key);
        let reply = self.nats.request(subject, "{}".into()).await.ok()?;
        serde_json::from_slice(&reply.payload).ok()
    }

    /// A consumer link: `component` -> this provider, config in the target config.
    pub fn consumer_link(
        &self,
        component: &str,
        link_name: &str,
        config: &[(&str, &str)],
    ) -> InterfaceLinkDefinition {
        consumer_link(&self.provider_key, component, link_name, config)
    }

    /// A handler link: this provider -> `component`, config in the source config.
    pub fn handler_link(
        &self,
        component: &str,
        link_name: &str,
        config: &[(&str, &str)],
    ) -> InterfaceLinkDefinition {
        handler_link(&self.provider_key, component, link_name, config)
    }

    /// Seals secrets the way the host does: JSON, xkey-sealed from the host to the provider.
    pub fn seal(&self, secrets: &[(&str, &str)]) -> Vec<u8> {
        let map: HashMap<String, SecretValue> = secrets
            .iter()
            .map(|(k, v)| (k.to_string(), SecretValue::String(v.to_string())))
            .collect();
        self.host_xkey
            .seal(
                &serde_json::to_vec(&map).unwrap(),
                &self.provider_xkey_public,
            )
            .unwrap()
    }

    pub async fn put_link(&self, link: &InterfaceLinkDefinition) {
        let subject = format!(
            "wasmbus.rpc.{}.{}.linkdefs.put",
            self.lattice, self.link_put_id
        );
        self.nats
            .publish(subject, serde_json::to_vec(link).unwrap().into())
            .await
            .unwrap();
        self.nats.flush().await.unwrap();
    }

    pub async fn delete_link(&self, link: &InterfaceLinkDefinition) {
        let subject = format!(
            "wasmbus.rpc.{}.{}.linkdefs.del",
            self.lattice, self.provider_key
        );
        self.nats
            .publish(subject, serde_json::to_vec(link).unwrap().into())
            .await
            .unwrap();
        self.nats.flush().await.unwrap();
    }

    /// Asks the provider to shut down as the host does and returns how long it took the process
    /// to exit, counted from the request.
    pub async fn shutdown(&mut self) -> Duration {
        let subject = format!(
            "wasmbus.rpc.{}.{}.default.shutdown",
            self.lattice, self.provider_key
        );
        let payload = serde_json::json!({ "host_id": self.host_id }).to_string();
        let started = Instant::now();
        let request = self.nats.request(subject, payload.into());
        let (reply, status) = tokio::join!(
            tokio::time::timeout(Duration::from_secs(5), request),
            tokio::time::timeout(Duration::from_secs(5), self.child.wait())
        );
        let status = status
            .expect("the provider exits after a shutdown request")
            .unwrap();
        let took = started.elapsed();
        assert!(reply.is_ok(), "the shutdown request got no reply");
        assert!(status.success(), "the provider exited with {status}");
        took
    }

    /// The provider's resident memory, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let pid = self.child.id().expect("the provider runs");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }

    /// The provider's process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the provider runs")
    }

    /// The CPU time the provider has used so far (user + system), from /proc.
    pub fn cpu_seconds(&self) -> f64 {
        let pid = self.child.id().expect("the provider runs");
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // The fields after the command name, which is in parentheses and may contain spaces.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // USER_HZ is 100 on Linux.
        ticks as f64 / 100.0
    }

    /// The provider's peak resident memory so far (VmHWM), from /proc.
    pub fn peak_rss_kib(&self) -> u64 {
        let pid = self.child.id().expect("the provider runs");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/<pid>/status")
    }

    /// How many file descriptors (sockets included) and threads the provider has open.
    pub fn fds_and_threads(&self) -> (usize, usize) {
        let pid = self.child.id().expect("the provider runs");
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count();
        let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .count();
        (fds, threads)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

fn to_map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A consumer link: `component` -> provider, config in the target config.
pub fn consumer_link(
    provider_key: &str,
    component: &str,
    link_name: &str,
    config: &[(&str, &str)],
) -> InterfaceLinkDefinition {
    InterfaceLinkDefinition {
        source_id: component.into(),
        target: provider_key.into(),
        name: link_name.into(),
        wit_namespace: "wasmcloud".into(),
        wit_package: "messaging".into(),
        interfaces: vec!["consumer".into()],
        target_config: to_map(config),
        ..Default::default()
    }
}

/// A handler link: provider -> `component`, config in the source config.
pub fn handler_link(
    provider_key: &str,
    component: &str,
    link_name: &str,
    config: &[(&str, &str)],
) -> InterfaceLinkDefinition {
    InterfaceLinkDefinition {
        source_id: provider_key.into(),
        target: component.into(),
        name: link_name.into(),
        wit_namespace: "wasmcloud".into(),
        wit_package: "messaging".into(),
        interfaces: vec!["handler".into()],
        source_config: to_map(config),
        ..Default::default()
    }
}
