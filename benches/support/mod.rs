//! What the server-mode benches (`listener`, `scale`) share: their settings from the
//! environment, the CPU time and memory of a process from /proc, and the provider with one
//! listener.

use std::time::Duration;

use wasmcloud_provider_sdk::core::logging::Level;

use crate::common::nats::NatsServer;
use crate::common::provider::{ProviderOptions, ProviderProcess};

/// How long the provider may take to put both links of the listener.
const SETUP_LIMIT: Duration = Duration::from_secs(60);

pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// User + system seconds of a process, from /proc/<pid>/stat.
pub fn cpu_of(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// Resident KiB of a process, from /proc/<pid>/status.
pub fn rss_of(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// A provider with a listener on `listen`, both links of `component` (named `default`) on it,
/// with `extra` settings.
pub async fn listener(
    nats: &NatsServer,
    component: &str,
    extra: &[(&str, &str)],
    listen: String,
) -> ProviderProcess {
    let provider = ProviderProcess::start(
        nats,
        ProviderOptions {
            // Info: the per-client debug lines would be most of the provider's work at connect.
            log_level: Some(Level::Info),
            ..Default::default()
        },
    )
    .await;
    let mut config = vec![("listen", listen.as_str())];
    config.extend_from_slice(extra);
    provider
        .put_link(&provider.consumer_link(component, "default", &config))
        .await;
    provider
        .put_link(&provider.handler_link(component, "default", &config))
        .await;
    provider
        .logs
        .wait_for(
            &[
                "link joins the existing listener",
                &format!("key={component}/default"),
            ],
            SETUP_LIMIT,
        )
        .await;
    provider
}
