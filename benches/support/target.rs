//! The scale bench's system under test (the provider's listener or nats-server's WebSocket
//! listener, with the played component or a NATS publisher), its rows and the figures they
//! report.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::component::PlayedComponent;
use crate::common::provider::ProviderProcess;
use crate::support::{cpu_of, rss_of};
use crate::*;
use bytes::Bytes;
use futures::StreamExt as _;
use serde::Serialize;

pub(crate) struct Target<'a> {
    pub(crate) sys: Sys,
    pub(crate) port: u16,
    /// The provider (ours) or nats-server (the peer).
    pub(crate) server_pid: String,
    pub(crate) nats_pid: String,
    pub(crate) nats_url: String,
    pub(crate) component: &'a PlayedComponent,
    pub(crate) publisher: async_nats::Client,
    pub(crate) provider: &'a ProviderProcess,
    pub(crate) shared: Arc<Shared>,
}

#[derive(Clone, Copy)]
pub(crate) struct Cpu {
    pub(crate) at: Instant,
    pub(crate) server: f64,
    pub(crate) bench: f64,
    pub(crate) nats: f64,
}

#[derive(Serialize)]
pub(crate) struct Row {
    pub(crate) system: &'static str,
    pub(crate) phase: String,
    pub(crate) value: f64,
    pub(crate) unit: &'static str,
    pub(crate) notes: String,
    pub(crate) wall_s: f64,
    /// The provider (ours) or nats-server (the peer).
    pub(crate) server_cpu_s: f64,
    /// This process: the clients, the played component, the publisher.
    pub(crate) bench_cpu_s: f64,
    /// nats-server (for ours: the lattice; for the peer: the server itself again).
    pub(crate) nats_cpu_s: f64,
}

impl Target<'_> {
    pub(crate) fn cpu(&self) -> Cpu {
        Cpu {
            at: Instant::now(),
            server: cpu_of(&self.server_pid),
            bench: cpu_of("self"),
            nats: cpu_of(&self.nats_pid),
        }
    }

    pub(crate) fn rss(&self) -> u64 {
        rss_of(&self.server_pid)
    }

    pub(crate) fn row(
        &self,
        phase: impl Into<String>,
        value: f64,
        unit: &'static str,
        notes: String,
        from: Cpu,
        to: Cpu,
    ) -> Row {
        let row = Row {
            system: self.sys.name(),
            phase: phase.into(),
            value,
            unit,
            notes,
            wall_s: (to.at - from.at).as_secs_f64(),
            server_cpu_s: to.server - from.server,
            bench_cpu_s: to.bench - from.bench,
            nats_cpu_s: to.nats - from.nats,
        };
        println!(
            "{} | {} | {:.1} {} | {} | server CPU {:.2} s | bench CPU {:.2} s | nats CPU {:.2} s | wall {:.2} s",
            row.system,
            row.phase,
            row.value,
            row.unit,
            row.notes,
            row.server_cpu_s,
            row.bench_cpu_s,
            row.nats_cpu_s,
            row.wall_s
        );
        row
    }

    /// One publish of `body` to `bench.all`; ok or not.
    pub(crate) async fn publish(&self, body: Bytes) -> bool {
        match self.sys {
            Sys::Ours => matches!(
                self.component.publish("default", SUBJECT, body, None).await,
                Ok(Ok(()))
            ),
            Sys::Peer => self.publisher.publish(SUBJECT, body).await.is_ok(),
        }
    }

    /// `n` publishes back to back (ours: up to 64 calls in flight; the peer: then a flush), or
    /// one every `every`; each one's issue time into the burst. The failed publishes.
    pub(crate) async fn publishes(
        &self,
        burst: &Burst,
        body: &Bytes,
        n: usize,
        every: Option<Duration>,
    ) -> usize {
        let t0 = tokio::time::Instant::now();
        let one = |k: usize| {
            let body = body.clone();
            async move {
                if let Some(every) = every {
                    tokio::time::sleep_until(t0 + every * k as u32).await;
                }
                burst.issued[k].store(now_ns(), Ordering::Relaxed);
                let ok = self.publish(body).await;
                if every.is_some() && self.sys == Sys::Peer {
                    let _ = self.publisher.flush().await;
                }
                ok
            }
        };
        let failed = match (self.sys, every) {
            (_, Some(_)) => {
                futures::stream::iter(0..n)
                    .map(one)
                    .buffer_unordered(n.max(1))
                    .filter(|ok| futures::future::ready(!*ok))
                    .count()
                    .await
            }
            (Sys::Ours, None) => {
                futures::stream::iter(0..n)
                    .map(one)
                    .buffer_unordered(fanout_in_flight())
                    .filter(|ok| futures::future::ready(!*ok))
                    .count()
                    .await
            }
            (Sys::Peer, None) => {
                let mut failed = 0;
                for k in 0..n {
                    if !one(k).await {
                        failed += 1;
                    }
                }
                let _ = self.publisher.flush().await;
                failed
            }
        };
        failed
    }

    /// A burst (or tick) to `clients` recording clients: delivered msgs/s, p50 and p99 rows.
    pub(crate) async fn fanout(
        &self,
        rows: &mut Vec<Row>,
        clients: usize,
        size: usize,
        n: usize,
        every: Option<Duration>,
        label: &str,
    ) {
        let body = Bytes::from(vec![b'x'; size]);
        let burst = self.shared.begin(n);
        let from = self.cpu();
        let failed = self.publishes(&burst, &body, n, every).await;
        let target = (n * clients) as u64;
        let got = burst.wait_received(target).await;
        let to = self.cpu();
        let (rate, p50, p99, span) = burst_figures(&burst, got);
        let complete = if got >= target {
            "complete".to_string()
        } else {
            format!("INCOMPLETE after {} s", LIMIT.as_secs())
        };
        let notes = format!(
            "{got} of {target} messages, {complete}, {failed} publishes failed, first publish to last arrival {:.0} ms",
            span * 1000.0
        );
        let phase = format!("{label} {} x {n} to {clients}", size_name(size));
        rows.push(self.row(
            format!("{phase}: delivered"),
            rate,
            "msgs/s",
            notes,
            from,
            to,
        ));
        let lat = "publish to last client".to_string();
        rows.push(self.row(format!("{phase}: p50"), p50, "ms", lat.clone(), from, to));
        rows.push(self.row(format!("{phase}: p99"), p99, "ms", lat, from, to));
    }

    /// The slow phase's run: 900 recording, the first 100 `QUIET` (reading) or `PAUSED`.
    pub(crate) async fn slow_run(
        &self,
        fleet: &Fleet,
        n: usize,
        mode: u8,
    ) -> (f64, u64, u64, usize, Cpu, Cpu) {
        let slow = 100.min(fleet.clients.len());
        for client in &fleet.clients[..slow] {
            client.ctl.set(mode);
        }
        let readers = (fleet.clients.len() - slow) as u64;
        let body = Bytes::from(vec![b's'; 1024]);
        let burst = self.shared.begin(n);
        let from = self.cpu();
        let failed = self.publishes(&burst, &body, n, None).await;
        let target = n as u64 * readers;
        let got = burst.wait_received(target).await;
        let to = self.cpu();
        let (rate, _, _, _) = burst_figures(&burst, got);
        (rate, got, target, failed, from, to)
    }
}

pub(crate) fn size_name(size: usize) -> String {
    if size >= 1024 && size.is_multiple_of(1024) {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

/// Delivered msgs/s (first issue to last arrival), p50 and p99 of last arrival - issue (ms),
/// and that span (s).
pub(crate) fn burst_figures(burst: &Burst, got: u64) -> (f64, f64, f64, f64) {
    let first = burst
        .issued
        .iter()
        .map(|i| i.load(Ordering::Relaxed))
        .filter(|&i| i > 0)
        .min()
        .unwrap_or(0);
    let last = burst
        .arrivals
        .iter()
        .map(|a| a.load(Ordering::Relaxed))
        .max()
        .unwrap_or(0);
    let span = last.saturating_sub(first) as f64 / 1e9;
    let mut lat: Vec<f64> = burst
        .issued
        .iter()
        .zip(&burst.arrivals)
        .filter_map(|(i, a)| {
            let (i, a) = (i.load(Ordering::Relaxed), a.load(Ordering::Relaxed));
            (a > 0 && i > 0).then(|| a.saturating_sub(i) as f64 / 1e6)
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    let rate = if span > 0.0 { got as f64 / span } else { 0.0 };
    (rate, percentile(&lat, 0.5), percentile(&lat, 0.99), span)
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub(crate) async fn stats(component: &PlayedComponent) -> serde_json::Value {
    component.stats("default").await["provider"].clone()
}

pub(crate) async fn stat(component: &PlayedComponent, key: &str) -> u64 {
    stats(component).await[key].as_u64().unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// The phases, for one system.
