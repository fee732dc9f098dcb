//! The benchmark: our provider and wasmCloud's NATS messaging provider through the same phases,
//! on one nats-server, next to the lattice's own ceiling.
//!
//! Everything is driven exactly as the tests drive it: the real provider binaries (ours, and
//! `benches/nats-peer`, the crates.io NATS provider run by its own `run()`), HostData on stdin, a
//! played component over wRPC, a Rust WebSocket server on 127.0.0.1 (ours) or NATS clients (the
//! peer's). Each phase gets a fresh provider process, so its CPU time and peak memory are its own.
//!
//! Phases, for bodies of 16 B, 1 KiB and 64 KiB:
//! - publish: component calls, 1 and 64 in flight, until the sink has every message;
//! - delivery: messages pushed by the server (ours) or published on NATS (peer) until the handler
//!   got them, `max_in_flight` 1 and 64 and the defaults (512 and 4 MiB; the peer has no such
//!   bound: one row);
//! - request: round trips, sequential and 64 in flight, against a responder;
//! - ceiling: what one wRPC call costs on this lattice, with the same process layout as the
//!   provider phases: the played component calling a trivial `consumer` (publish returns Ok,
//!   request echoes) served by a child process (this benchmark re-executed), and a child process
//!   calling the played component's `handle-message` (the delivery shape).
//!
//! Ours in format `json` and, for publish and request at 64 in flight and delivery at the
//! defaults, `msgpack` (`BENCH_FORMATS`; `protobuf` too when listed, without request). Then a burst: `BENCH_BURST` (100000, 0 = none) messages
//! of 1 KiB delivered at the defaults, with the peak resident memory of both providers. Then a
//! soak: publish 1 KiB with 64 in flight for `BENCH_SOAK_SECS` (60), resident memory read
//! at 10 s and at the end.
//!
//! `./scripts/bench.sh` builds the peer and runs this (`cargo bench --bench throughput`).
//! Environment: `BENCH_MESSAGES` (20000: messages of a 64-in-flight phase at 16 B and 1 KiB; a
//! quarter for one-at-a-time phases and for 64 KiB), `BENCH_SIZES` (`16,1024,65536`),
//! `BENCH_SOAK_SECS` (60, 0 = none), `BENCH_PHASES` (`publish,request,delivery`; `ceiling` is
//! measured for the phases chosen), `BENCH_IN_FLIGHT` (`1,64`), `BENCH_NATS_PEER` (the peer binary; without it the peer
//! rows are skipped), `BENCH_WEBSOCKET_BINARY` (ours, e.g. wrapped in valgrind), `BENCH_JSON` (`target/bench/throughput.json`).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/rows.rs"]
mod rows;
use rows::*;
#[path = "support/report.rs"]
mod report;
use report::*;
#[path = "support/peers.rs"]
mod peers;
use peers::*;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use common::component::{Behaviour, PlayedComponent};
use common::nats::NatsServer;
use common::provider::{ProviderOptions, ProviderProcess};
use common::ws::{Message, WsServer};
use futures::StreamExt as _;

const WAIT: Duration = Duration::from_secs(120);

/// The trivial `consumer` of the ceiling: the provider's own world, served on the test transport.
#[allow(dead_code)]
mod trivial {
    delivery_bindgen::generate!({
        world: "interfaces",
        path: "wit",
        anyhow_path: "::delivery_bindgen::anyhow",
        bitflags_path: "::delivery_bindgen::bitflags",
        bytes_path: "::delivery_bindgen::bytes",
        futures_path: "::delivery_bindgen::futures",
        tokio_path: "::delivery_bindgen::tokio",
        tokio_util_path: "::delivery_bindgen::tokio_util",
        tracing_path: "::delivery_bindgen::tracing",
        wasm_tokio_path: "::delivery_bindgen::wasm_tokio",
        wrpc_transport_path: "::delivery_bindgen::wrpc_transport",
        with: {
            "wasmcloud:messaging/consumer@0.2.0": generate,
            "wasmcloud:messaging/handler@0.2.0": generate,
            "wasmcloud:messaging/types@0.2.0": generate,
        }
    });
}

use trivial::wasmcloud::messaging::types::BrokerMessage as TrivialMessage;

#[derive(Clone)]
struct Trivial;

impl trivial::exports::wasmcloud::messaging::consumer::Handler<delivery_wrpc::NatsContext>
    for Trivial
{
    async fn publish(
        &self,
        _: delivery_wrpc::NatsContext,
        _msg: TrivialMessage,
    ) -> anyhow::Result<Result<(), String>> {
        Ok(Ok(()))
    }

    async fn request(
        &self,
        _: delivery_wrpc::NatsContext,
        subject: String,
        body: Bytes,
        _timeout_ms: u32,
    ) -> anyhow::Result<Result<TrivialMessage, String>> {
        Ok(Ok(TrivialMessage {
            subject,
            body,
            reply_to: None,
        }))
    }
}

struct Bench {
    nats: NatsServer,
    client: async_nats::Client,
    peer: Option<PathBuf>,
    messages: usize,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn body(size: usize) -> Bytes {
    Bytes::from(vec![b'x'; size])
}

/// Runs `n` calls of `call` with `in_flight` at once; returns each call's time, the wall time and
/// how many calls failed (the first failure is printed: a benchmark reports losses, it does not
/// stop at them).
async fn drive<F, Fut>(n: usize, in_flight: usize, call: F) -> (Vec<Duration>, f64, usize)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let started = Instant::now();
    let failures = AtomicUsize::new(0);
    let first_failure = std::sync::Mutex::new(None);
    let took: Vec<Duration> = futures::stream::iter(0..n)
        .map(|i| {
            let call = &call;
            let failures = &failures;
            let first_failure = &first_failure;
            async move {
                let t = Instant::now();
                if let Err(e) = call(i).await {
                    failures.fetch_add(1, Ordering::Relaxed);
                    first_failure.lock().unwrap().get_or_insert(e);
                }
                t.elapsed()
            }
        })
        .buffer_unordered(in_flight)
        .collect()
        .await;
    let seconds = started.elapsed().as_secs_f64();
    let failed = failures.load(Ordering::Relaxed);
    if failed > 0 {
        eprintln!(
            "{failed} of {n} calls failed, first: {:?}",
            first_failure.lock().unwrap()
        );
    }
    (took, seconds, failed)
}

fn flatten<T>(r: anyhow::Result<Result<T, String>>) -> Result<(), String> {
    match r {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(format!("{e:#}")),
    }
}

impl Bench {
    fn count(&self, size: usize, in_flight: usize) -> usize {
        let n = if in_flight == 1 || size > 4096 {
            self.messages / 4
        } else {
            self.messages
        };
        n.max(100)
    }

    async fn provider(&self, system: System) -> ProviderProcess {
        let binary = match system {
            System::Nats => self.peer.clone(),
            // E.g. a script that runs our binary under callgrind, for instruction counts.
            _ => std::env::var_os("BENCH_WEBSOCKET_BINARY").map(PathBuf::from),
        };
        ProviderProcess::start(
            &self.nats,
            ProviderOptions {
                binary,
                log_level: Some(wasmcloud_provider_sdk::core::logging::Level::Warn),
                ..Default::default()
            },
        )
        .await
    }

    /// `cluster_uris` on every link of the peer: without it, it connects to 0.0.0.0:4222.
    fn link_config<'a>(
        &'a self,
        system: System,
        extra: &[(&'a str, &'a str)],
    ) -> Vec<(&'a str, &'a str)> {
        let mut config = extra.to_vec();
        if system == System::Nats {
            config.push(("cluster_uris", &self.nats.url));
        }
        config
    }

    /// The provider's CPU seconds so far; under callgrind (`BENCH_CALLGRIND=1`, with
    /// `BENCH_WEBSOCKET_BINARY` running it under valgrind), its counters are zeroed too.
    fn start_measuring(provider: &ProviderProcess) -> f64 {
        callgrind_control(provider, "-z");
        provider.cpu_seconds()
    }

    fn measured(row: &mut Row, provider: &ProviderProcess, cpu_before: f64) {
        row.cpu_seconds = Some(provider.cpu_seconds() - cpu_before);
        row.peak_rss_kib = Some(provider.peak_rss_kib());
        callgrind_control(provider, "-d");
    }

    async fn publish(
        &self,
        system: System,
        size: usize,
        in_flight: usize,
        format: &'static str,
    ) -> Row {
        let n = self.count(size, in_flight);
        let mut row = Row::new(system, Phase::Publish, size, in_flight, n);
        row.format = format;
        let provider = self.provider(system).await;
        let component = PlayedComponent::start(&provider, &self.nats.url, "bench").await;
        let body = body(size);
        let max_pending = (in_flight * 2).max(1024).to_string();
        // Where the published messages arrive; the warm-up publish is not counted.
        let sink = match system {
            System::Websocket => {
                let server = WsServer::counter().await;
                let uri = server.uri();
                let config = [
                    ("uri", uri.as_str()),
                    ("max_pending", &max_pending),
                    ("format", format),
                ];
                provider
                    .put_link(&provider.consumer_link("bench", "default", &config))
                    .await;
                Sink::Server(server)
            }
            System::Nats => {
                let sink = self.client.subscribe("bench.publish").await.unwrap();
                self.client.flush().await.unwrap();
                let config = self.link_config(system, &[]);
                provider
                    .put_link(&provider.consumer_link("bench", "default", &config))
                    .await;
                Sink::Subscriber(counting(sink))
            }
            System::Ceiling => unreachable!(),
        };
        component
            .publish_when_ready("default", "bench.warm", &b""[..], WAIT)
            .await;
        sink.received(0).await;
        let cpu = Self::start_measuring(&provider);
        let started = Instant::now();
        let (took, seconds, failed) = drive(n, in_flight, |_| {
            let call = component.publish("default", "bench.publish", body.clone(), None);
            async move { flatten(call.await) }
        })
        .await;
        row.failed = failed;
        let received = sink.received(n).await;
        let sink_seconds = started.elapsed().as_secs_f64();
        Self::measured(&mut row, &provider, cpu);
        row.rate = n as f64 / seconds;
        row.sink_rate = Some(received as f64 / sink_seconds);
        row.lost = n - received.min(n);
        row.latencies(took);
        row
    }

    /// `max_in_flight` `None`: the defaults (nothing set). `burst`: that many messages, as
    /// [`Phase::Burst`].
    async fn delivery(
        &self,
        system: System,
        size: usize,
        max_in_flight: Option<usize>,
        format: &'static str,
        burst: Option<usize>,
    ) -> Row {
        let in_flight = max_in_flight.unwrap_or(if system == System::Nats {
            0
        } else {
            DEFAULT_IN_FLIGHT
        });
        let n = burst.unwrap_or_else(|| self.count(size, in_flight.max(64)));
        let phase = if burst.is_some() {
            Phase::Burst
        } else {
            Phase::Delivery
        };
        let mut row = Row::new(system, phase, size, in_flight, n);
        row.defaults = max_in_flight.is_none() && system == System::Websocket;
        row.format = format;
        let provider = self.provider(system).await;
        let component = PlayedComponent::start(&provider, &self.nats.url, "bench").await;
        component.set_behaviour(Behaviour {
            count_only: true,
            ..Default::default()
        });
        let payload = body(size);
        // Handler invocations before the measured part (the warm-up frame, the peer's probes).
        let before;
        let started;
        let cpu;
        // Our server lives until every message arrived: one that closed its connection with
        // frames still unread by the provider (its pings) would reset it, and TCP would throw
        // away what the provider had not read yet.
        let _server;
        match system {
            System::Websocket => {
                let server = WsServer::recorder().await;
                let limit = max_in_flight.map(|n| n.to_string());
                let uri = server.uri();
                let mut config = vec![("uri", uri.as_str()), ("format", format)];
                if let Some(limit) = &limit {
                    config.push(("max_in_flight", limit));
                }
                provider
                    .put_link(&provider.handler_link("bench", "default", &config))
                    .await;
                server.connected(WAIT).await;
                // The handler link's put has been handled once a first frame arrives.
                let frame = match format {
                    "msgpack" => Message::binary(common::msgpack_envelope(
                        "bench.delivery",
                        &payload,
                        None,
                        None,
                    )),
                    "protobuf" => Message::binary(prost::Message::encode_to_vec(
                        &wasmcloud_provider_messaging_websocket::envelope::protobuf::Envelope {
                            subject: "bench.delivery".into(),
                            body: payload.clone(),
                            ..Default::default()
                        },
                    )),
                    _ => Message::text(
                        serde_json::json!({
                            "subject": "bench.delivery",
                            "body": base64::engine::general_purpose::STANDARD.encode(&payload),
                        })
                        .to_string(),
                    ),
                };
                server.push(frame.clone());
                assert_eq!(component.wait_count(1, WAIT).await, 1, "warm-up delivered");
                before = 1;
                cpu = Self::start_measuring(&provider);
                started = Instant::now();
                server.push_many(vec![frame; n]);
                _server = server;
            }
            System::Nats => {
                let config = self.link_config(system, &[("subscriptions", "bench.delivery")]);
                provider
                    .put_link(&provider.handler_link("bench", "default", &config))
                    .await;
                // Probe until the subscription exists.
                let deadline = Instant::now() + WAIT;
                while component.count() == 0 {
                    assert!(Instant::now() < deadline, "the peer never subscribed");
                    self.client
                        .publish("bench.delivery", payload.clone())
                        .await
                        .unwrap();
                    self.client.flush().await.unwrap();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                // Late probes still on their way are delivered, then the count starts afresh.
                tokio::time::sleep(Duration::from_millis(500)).await;
                before = component.count();
                cpu = Self::start_measuring(&provider);
                started = Instant::now();
                for _ in 0..n {
                    self.client
                        .publish("bench.delivery", payload.clone())
                        .await
                        .unwrap();
                }
                self.client.flush().await.unwrap();
            }
            System::Ceiling => unreachable!(),
        }
        let got = component.wait_count(before + n, WAIT).await - before;
        let seconds = started.elapsed().as_secs_f64();
        Self::measured(&mut row, &provider, cpu);
        if got < n {
            eprintln!(
                "{} of {n} not delivered within {WAIT:?}; the provider's warnings:\n{}",
                n - got,
                provider
                    .logs
                    .all()
                    .lines()
                    .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                    .take(20)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        row.rate = got as f64 / seconds;
        row.lost = n - got.min(n);
        row
    }

    async fn request(
        &self,
        system: System,
        size: usize,
        in_flight: usize,
        format: &'static str,
    ) -> Row {
        let n = self.count(size, in_flight);
        let mut row = Row::new(system, Phase::Request, size, in_flight, n);
        row.format = format;
        let provider = self.provider(system).await;
        let component = PlayedComponent::start(&provider, &self.nats.url, "bench").await;
        let _responder;
        let _server;
        match system {
            System::Websocket => {
                let server = WsServer::quiet_responder().await;
                let uri = server.uri();
                provider
                    .put_link(&provider.consumer_link(
                        "bench",
                        "default",
                        &[("uri", &uri), ("format", format)],
                    ))
                    .await;
                _server = server;
            }
            System::Nats => {
                _responder = respond(&self.client, "bench.request").await;
                let config = self.link_config(system, &[]);
                provider
                    .put_link(&provider.consumer_link("bench", "default", &config))
                    .await;
            }
            System::Ceiling => unreachable!(),
        }
        component
            .publish_when_ready("default", "bench.warm", &b""[..], WAIT)
            .await;
        let body = body(size);
        let cpu = Self::start_measuring(&provider);
        let (took, seconds, failed) = drive(n, in_flight, |_| {
            let call = component.request("default", "bench.request", body.clone(), 5000);
            async move { flatten(call.await) }
        })
        .await;
        row.failed = failed;
        Self::measured(&mut row, &provider, cpu);
        row.rate = n as f64 / seconds;
        row.latencies(took);
        row
    }

    /// The ceiling: the played component calling the trivial `consumer` in a child process
    /// (publish- and request-shaped calls), or a child process calling the played component's
    /// `handle-message` (delivery-shaped).
    async fn ceiling(&self, phase: Phase, size: usize, in_flight: usize) -> Row {
        let n = if phase == Phase::Delivery {
            self.count(size, 64)
        } else {
            self.count(size, in_flight)
        };
        let mut row = Row::new(System::Ceiling, phase, size, in_flight, n);
        let lattice = common::unique("ceiling-lattice");
        let target = "trivial";
        let vars = |mode: &str, target: &str| {
            vec![
                ("BENCH_CHILD", mode.to_string()),
                ("BENCH_CHILD_NATS", self.nats.url.clone()),
                ("BENCH_CHILD_LATTICE", lattice.clone()),
                ("BENCH_CHILD_TARGET", target.to_string()),
                ("BENCH_CHILD_N", n.to_string()),
                ("BENCH_CHILD_IN_FLIGHT", in_flight.to_string()),
                ("BENCH_CHILD_SIZE", size.to_string()),
            ]
        };
        if phase == Phase::Delivery {
            let component =
                PlayedComponent::start_for(&lattice, target, &self.nats.url, "bench").await;
            component.set_behaviour(Behaviour {
                count_only: true,
                ..Default::default()
            });
            let mut child = Child::start(&vars("deliver", "bench")).await;
            let answer: serde_json::Value = serde_json::from_str(&child.line().await).unwrap();
            row.rate = n as f64 / answer["seconds"].as_f64().unwrap();
            row.p50_us = answer["p50_us"].as_f64();
            row.p99_us = answer["p99_us"].as_f64();
            row.failed = answer["failed"].as_u64().unwrap_or_default() as usize;
            row.lost = n - component.count().min(n);
            return row;
        }
        let mut serving = Child::start(&vars("serve", target)).await;
        assert_eq!(serving.line().await, "ready");
        let component = PlayedComponent::start_for(&lattice, target, &self.nats.url, "bench").await;
        let body = body(size);
        let (took, seconds, failed) = drive(n, in_flight, |_| {
            let component = &component;
            let body = body.clone();
            async move {
                match phase {
                    Phase::Request => flatten(
                        component
                            .request("default", "bench.request", body, 5000)
                            .await,
                    ),
                    _ => flatten(
                        component
                            .publish("default", "bench.publish", body, None)
                            .await,
                    ),
                }
            }
        })
        .await;
        row.failed = failed;
        drop(serving);
        row.rate = n as f64 / seconds;
        row.latencies(took);
        row
    }

    /// Publishes 1 KiB with 64 in flight for `seconds`; our provider's resident memory at 10 s
    /// and at the end.
    async fn soak(&self, seconds: u64) -> Soak {
        let provider = self.provider(System::Websocket).await;
        let component = PlayedComponent::start(&provider, &self.nats.url, "bench").await;
        let server = WsServer::counter().await;
        let uri = server.uri();
        provider
            .put_link(&provider.consumer_link("bench", "default", &[("uri", &uri)]))
            .await;
        component
            .publish_when_ready("default", "bench.warm", &b""[..], WAIT)
            .await;
        let body = body(1024);
        let started = Instant::now();
        let end = started + Duration::from_secs(seconds);
        let mut at_10 = None;
        let mut publishes = 0;
        let mut failed_calls = 0;
        while Instant::now() < end {
            let (took, _, failed) = drive(6400, 64, |_| {
                let call = component.publish("default", "bench.soak", body.clone(), None);
                async move { flatten(call.await) }
            })
            .await;
            failed_calls += failed;
            publishes += took.len();
            if at_10.is_none() && started.elapsed() >= Duration::from_secs(10) {
                at_10 = Some(provider.rss_kib());
            }
        }
        Soak {
            seconds,
            rss_kib_at_10_s: at_10.unwrap_or_else(|| provider.rss_kib()),
            rss_kib_at_end: provider.rss_kib(),
            publishes,
            failed_calls,
        }
    }
}

#[tokio::main]
async fn main() {
    if let Ok(mode) = std::env::var("BENCH_CHILD") {
        return child(&mode).await;
    }
    let messages = env_or("BENCH_MESSAGES", 20_000usize);
    let sizes: Vec<usize> = std::env::var("BENCH_SIZES")
        .unwrap_or_else(|_| "16,1024,65536".into())
        .split(',')
        .map(|s| s.trim().parse().expect("BENCH_SIZES: byte counts"))
        .collect();
    let soak_seconds = env_or("BENCH_SOAK_SECS", 60u64);
    let list = |name: &str, default: &str| -> Vec<String> {
        std::env::var(name)
            .unwrap_or_else(|_| default.into())
            .split(',')
            .map(|s| s.trim().to_string())
            .collect()
    };
    let phases: Vec<Phase> = list("BENCH_PHASES", "publish,request,delivery")
        .iter()
        .map(|p| match p.as_str() {
            "publish" => Phase::Publish,
            "request" => Phase::Request,
            "delivery" => Phase::Delivery,
            other => panic!("BENCH_PHASES: unknown phase {other}"),
        })
        .collect();
    let in_flights: Vec<usize> = list("BENCH_IN_FLIGHT", "1,64")
        .iter()
        .map(|n| n.parse().expect("BENCH_IN_FLIGHT: numbers"))
        .collect();
    let peer = std::env::var_os("BENCH_NATS_PEER")
        .map(PathBuf::from)
        .filter(|p| p.is_file());
    if peer.is_none() {
        eprintln!("BENCH_NATS_PEER not set or not a file: the NATS provider's rows are skipped (./scripts/bench.sh builds it)");
    }
    let nats = NatsServer::start().await;
    let client = nats.client().await;
    let bench = Bench {
        nats,
        client,
        peer,
        messages,
    };
    let mut systems = vec![System::Websocket];
    if bench.peer.is_some() {
        systems.push(System::Nats);
    }
    let formats: Vec<&'static str> = list("BENCH_FORMATS", "json,msgpack")
        .iter()
        .map(|f| match f.as_str() {
            "json" => "json",
            "msgpack" => "msgpack",
            "protobuf" => "protobuf",
            other => panic!("BENCH_FORMATS: unknown format {other}"),
        })
        .collect();
    let burst = env_or("BENCH_BURST", 100_000usize);
    let mut rows = Vec::new();
    for &size in &sizes {
        // The delivery ceiling also at the defaults' calls in flight.
        let mut ceilings: Vec<(Phase, usize)> = Vec::new();
        for &in_flight in &in_flights {
            ceilings.extend(phases.iter().map(|&phase| (phase, in_flight)));
        }
        if phases.contains(&Phase::Delivery) {
            ceilings.push((Phase::Delivery, DEFAULT_IN_FLIGHT));
        }
        for (phase, in_flight) in ceilings {
            {
                let row = bench.ceiling(phase, size, in_flight).await;
                eprintln!(
                    "ceiling {} {size} B x{in_flight}: {:.0}/s",
                    phase.name(),
                    row.rate
                );
                rows.push(row);
            }
        }
        // (system, format): ours in each format, the peer once.
        let mut runs: Vec<(System, &'static str)> = Vec::new();
        for &system in &systems {
            if system == System::Websocket {
                runs.extend(formats.iter().map(|&f| (system, f)));
            } else {
                runs.push((system, "-"));
            }
        }
        for (system, format) in runs {
            // msgpack and protobuf: publish and request at 64 in flight, delivery at the
            // defaults; protobuf without request (the bench's responder answers json and
            // msgpack).
            let second_format = format == "msgpack" || format == "protobuf";
            for &in_flight in &in_flights {
                if second_format && in_flight == 1 {
                    continue;
                }
                for phase in [Phase::Publish, Phase::Request] {
                    if !phases.contains(&phase) || (phase == Phase::Request && format == "protobuf")
                    {
                        continue;
                    }
                    let row = match phase {
                        Phase::Publish => bench.publish(system, size, in_flight, format).await,
                        _ => bench.request(system, size, in_flight, format).await,
                    };
                    eprintln!(
                        "{} {format} {} {size} B x{in_flight}: {:.0}/s",
                        system.name(),
                        phase.name(),
                        row.rate
                    );
                    rows.push(row);
                }
            }
            if !phases.contains(&Phase::Delivery) {
                continue;
            }
            // The peer has no bound on deliveries in flight: one row. None = the defaults.
            let limits: Vec<Option<usize>> = if system == System::Nats || second_format {
                vec![None]
            } else {
                in_flights.iter().map(|&n| Some(n)).chain([None]).collect()
            };
            for limit in limits {
                let row = bench.delivery(system, size, limit, format, None).await;
                eprintln!(
                    "{} {format} delivery {size} B x{}: {:.0}/s",
                    system.name(),
                    limit.map_or("default".to_string(), |n| n.to_string()),
                    row.rate
                );
                rows.push(row);
            }
        }
    }
    if burst > 0 {
        for &system in &systems {
            let format = if system == System::Websocket {
                "json"
            } else {
                "-"
            };
            let row = bench
                .delivery(system, 1024, None, format, Some(burst))
                .await;
            eprintln!(
                "{} burst of {burst} x 1 KiB: {:.0}/s, peak RSS {:.1} MiB, lost {}",
                system.name(),
                row.rate,
                row.peak_rss_kib.unwrap_or_default() as f64 / 1024.0,
                row.lost
            );
            rows.push(row);
        }
    }
    ratios(&mut rows);
    print(&rows);
    let soak = if soak_seconds > 0 {
        let soak = bench.soak(soak_seconds).await;
        println!(
            "\nsoak: {} publishes of 1 KiB in {} s ({} failed), resident memory {} KiB at 10 s, {} KiB at the end ({:+.1} %)",
            soak.publishes,
            soak.seconds,
            soak.failed_calls,
            soak.rss_kib_at_10_s,
            soak.rss_kib_at_end,
            (soak.rss_kib_at_end as f64 / soak.rss_kib_at_10_s as f64 - 1.0) * 100.0
        );
        Some(soak)
    } else {
        None
    };
    let path = std::env::var_os("BENCH_JSON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench/throughput.json")
        });
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    let report = Report {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        messages,
        rows,
        soak,
    };
    std::fs::write(&path, serde_json::to_vec_pretty(&report).unwrap()).unwrap();
    println!("\nJSON: {}", path.display());
}
