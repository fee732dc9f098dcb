//! The throughput bench's rows: which system and phase, what was measured, and the report
//! written to JSON.

use serde::Serialize;
use std::time::Duration;

/// Which system a row measures.
#[derive(Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum System {
    Websocket,
    Nats,
    Ceiling,
}

impl System {
    pub(crate) fn name(self) -> &'static str {
        match self {
            System::Websocket => "websocket",
            System::Nats => "nats",
            System::Ceiling => "ceiling",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Phase {
    Publish,
    Delivery,
    Request,
    /// Delivery of `BENCH_BURST` messages at once, at the defaults.
    Burst,
}

/// The provider's `max_in_flight` default: the in-flight figure of the rows at the defaults.
pub(crate) const DEFAULT_IN_FLIGHT: usize = 512;

impl Phase {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Phase::Publish => "publish",
            Phase::Delivery => "delivery",
            Phase::Request => "request",
            Phase::Burst => "burst",
        }
    }
}

#[derive(Clone, Serialize)]
pub(crate) struct Row {
    pub(crate) system: System,
    pub(crate) phase: Phase,
    pub(crate) size: usize,
    /// Calls in flight, or `max_in_flight` for delivery; 0 = unbounded (the peer's delivery).
    pub(crate) in_flight: usize,
    /// Delivery with no `max_in_flight` / `max_in_flight_bytes` set (their defaults).
    pub(crate) defaults: bool,
    /// Our wire format (`json`, `msgpack`); `-` for the peer and the ceiling.
    pub(crate) format: &'static str,
    pub(crate) messages: usize,
    /// Calls (publish, request) or handler invocations (delivery) per second.
    pub(crate) rate: f64,
    /// Messages per second arriving at the sink (the WebSocket server or the NATS subscriber).
    pub(crate) sink_rate: Option<f64>,
    pub(crate) p50_us: Option<f64>,
    pub(crate) p99_us: Option<f64>,
    /// Messages that never arrived.
    pub(crate) lost: usize,
    /// Calls that returned an error or got no answer within 20 s.
    pub(crate) failed: usize,
    /// The provider's CPU seconds in the phase, and its peak resident memory.
    pub(crate) cpu_seconds: Option<f64>,
    pub(crate) peak_rss_kib: Option<u64>,
    /// `rate` over the ceiling's (same size and calls in flight) and over the peer's.
    pub(crate) vs_ceiling: Option<f64>,
    pub(crate) vs_nats: Option<f64>,
}

impl Row {
    pub(crate) fn new(
        system: System,
        phase: Phase,
        size: usize,
        in_flight: usize,
        messages: usize,
    ) -> Self {
        Row {
            system,
            phase,
            size,
            in_flight,
            defaults: false,
            format: if system == System::Websocket {
                "json"
            } else {
                "-"
            },
            messages,
            rate: 0.0,
            sink_rate: None,
            p50_us: None,
            p99_us: None,
            lost: 0,
            failed: 0,
            cpu_seconds: None,
            peak_rss_kib: None,
            vs_ceiling: None,
            vs_nats: None,
        }
    }

    pub(crate) fn latencies(&mut self, mut took: Vec<Duration>) {
        if took.is_empty() {
            return;
        }
        took.sort_unstable();
        let pct = |p: f64| {
            took[((took.len() as f64 * p) as usize).min(took.len() - 1)].as_secs_f64() * 1e6
        };
        self.p50_us = Some(pct(0.50));
        self.p99_us = Some(pct(0.99));
    }
}

#[derive(Serialize)]
pub(crate) struct Soak {
    pub(crate) seconds: u64,
    pub(crate) rss_kib_at_10_s: u64,
    pub(crate) rss_kib_at_end: u64,
    pub(crate) publishes: usize,
    pub(crate) failed_calls: usize,
}

#[derive(Serialize)]
pub(crate) struct Report {
    pub(crate) command: String,
    pub(crate) messages: usize,
    pub(crate) rows: Vec<Row>,
    pub(crate) soak: Option<Soak>,
}
