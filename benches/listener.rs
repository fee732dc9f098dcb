//! Server mode (issue 16): what a listener costs and carries with 1000 clients on this machine.
//!
//! Real parts, as the tests run them: one nats-server, the provider's release binary started as
//! the host starts it, a played component over wRPC in this process, and `BENCH_CLIENTS` (1000)
//! tokio-tungstenite clients on 127.0.0.1, also in this process. One provider serves every phase;
//! the clients stay connected from the first phase to the last.
//!
//! - idle: the clients connect, 32 at a time (each subscribes to `bench.all`), until `$ws.stats`
//!   counts them; the provider's resident memory before them, 2 s after, and after 10 s more of
//!   idling (KiB per idle client), and its CPU time over those 10 s (no keepalive round falls in
//!   them: `ping_interval_sec` is 20);
//! - broadcast: the component publishes to `bench.all`, one call in flight, `BENCH_BROADCASTS`
//!   (2000) times with 16 B bodies and a quarter as many with 1 KiB; frames/s = publishes x
//!   clients / the time until the last client got the last frame;
//! - burst: 200 publishes back to back, 64 in flight, until every client got all of them;
//! - round trip: a client's envelope, answered by the component through the client's reply-to:
//!   one client alone (500 in a row), then every client at once (10 in a row each);
//! - inbound: every client sends 10, then `BENCH_INBOUND` (100), envelopes of 16 B at once;
//!   messages/s until the last reached the component's `handle-message` (it only counts).
//!
//! `BENCH_PHASES` (`idle,broadcast,burst,roundtrip,inbound`) picks phases; `BENCH_CLIENTS`
//! (1000) the clients. The provider logs at info (at debug, its per-client lines would be much
//! of its work while clients connect); its log goes to `target/bench/listener-provider.log`.
//!
//! Each phase reports its wall time and the CPU seconds of the provider, of this process (the
//! clients and the component) and of nats-server, so that what bounds a number shows. Numbers
//! go to stdout and `target/bench/listener.json`.
//!
//! `cargo bench --bench listener -- --autobahn-echo <port>` instead
//! runs an echo setup for `scripts/autobahn.sh --provider`: a listener on 127.0.0.1:<port> (path
//! `/`, `format = raw`, `compression = deflate`, `max_message_bytes` 16 MiB, `max_in_flight` 1 so
//! that echoes keep their order) whose component publishes every message's body back to its
//! reply-to, on a nats-server at its default `max_payload` (1 MiB: larger calls are streamed); it prints
//! `autobahn-echo: ready` and runs until SIGINT or SIGTERM. In format `raw` the body is all that
//! travels, so a binary message whose bytes are valid UTF-8 comes back as a text message.

#[path = "support/clients.rs"]
mod clients;
#[path = "../tests/common/mod.rs"]
mod common;
mod support;
use clients::*;

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::component::{Behaviour, PlayedComponent};
use common::nats::{free_port, NatsServer};
use common::played::wasmcloud::messaging::types::BrokerMessage;
use common::provider::ProviderProcess;
use futures::StreamExt as _;
use serde::Serialize;
use support::{cpu_of, env_usize, listener, rss_of};

/// The bound of every wait: a phase that has not finished by then is reported as incomplete.
const LIMIT: Duration = Duration::from_secs(60);
const COMPONENT: &str = "bench-listener";
const BROADCAST: &str = "bench.all";

// ---------------------------------------------------------------------------------------------
// CPU time of the three processes.

/// System seconds of a process (the kernel's share: socket writes and reads, epoll).
fn sys_of(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    fields[12].parse::<u64>().unwrap() as f64 / 100.0
}

/// The pid of this process's child named `name` (nats-server: `NatsServer` keeps its own).
fn child_named(name: &str) -> Option<String> {
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    for task in tasks.flatten() {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for pid in children.split_whitespace() {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == name {
                return Some(pid.to_string());
            }
        }
    }
    None
}

#[derive(Clone, Copy)]
struct Cpu {
    at: Instant,
    provider: f64,
    provider_sys: f64,
    bench: f64,
    nats: f64,
}

struct Meter<'a> {
    provider: &'a ProviderProcess,
    nats_pid: Option<String>,
}

impl Meter<'_> {
    fn now(&self) -> Cpu {
        Cpu {
            at: Instant::now(),
            provider: self.provider.cpu_seconds(),
            provider_sys: sys_of(&self.provider.pid().to_string()),
            bench: cpu_of("self"),
            nats: self.nats_pid.as_deref().map_or(0.0, cpu_of),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The clients.

#[derive(Serialize)]
struct Row {
    phase: String,
    /// What `value` counts.
    unit: &'static str,
    value: f64,
    /// Extra figures of the row, in words.
    note: String,
    wall_s: f64,
    provider_cpu_s: f64,
    /// The kernel's share of the provider's CPU time.
    provider_sys_share: f64,
    bench_cpu_s: f64,
    nats_cpu_s: f64,
}

fn row(
    phase: impl Into<String>,
    unit: &'static str,
    value: f64,
    note: String,
    from: Cpu,
    to: Cpu,
) -> Row {
    Row {
        phase: phase.into(),
        unit,
        value,
        note,
        wall_s: (to.at - from.at).as_secs_f64(),
        provider_cpu_s: to.provider - from.provider,
        provider_sys_share: if to.provider > from.provider {
            (to.provider_sys - from.provider_sys) / (to.provider - from.provider)
        } else {
            0.0
        },
        bench_cpu_s: to.bench - from.bench,
        nats_cpu_s: to.nats - from.nats,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------------------------------------
// The setup.

async fn stats(component: &PlayedComponent) -> serde_json::Value {
    component.stats("default").await["provider"].clone()
}

async fn publish_ok(component: &PlayedComponent, body: Bytes) -> bool {
    matches!(
        component.publish("default", BROADCAST, body, None).await,
        Ok(Ok(()))
    )
}

/// What the phases share.
struct Ctx<'a> {
    clients: usize,
    component: &'a PlayedComponent,
    provider: &'a ProviderProcess,
    meter: Meter<'a>,
    fleet: Fleet,
    rows: Vec<Row>,
}

impl Ctx<'_> {
    fn push(&mut self, row: Row) {
        println!(
            "  {}: {:.1} {} ({:.2} s; CPU s provider {:.2} ({:.0} % sys), bench {:.2}, nats {:.2}) {}",
            row.phase,
            row.value,
            row.unit,
            row.wall_s,
            row.provider_cpu_s,
            row.provider_sys_share * 100.0,
            row.bench_cpu_s,
            row.nats_cpu_s,
            row.note
        );
        self.rows.push(row);
    }

    /// Broadcasts of `size` bytes, one publish in flight, `n` times.
    async fn broadcast(&mut self, size: usize, n: usize) {
        let clients = self.clients;
        let body = Bytes::from(vec![b'x'; size]);
        // Warm-up: one publish, every client gets it.
        let target = self.fleet.tally.expect(clients);
        assert!(
            publish_ok(self.component, body.clone()).await,
            "the warm-up publish"
        );
        self.fleet.tally.wait(target, LIMIT).await;
        let target = self.fleet.tally.expect(n * clients);
        let start = self.fleet.tally.frames.load(Ordering::SeqCst);
        let from = self.meter.now();
        let mut failed = 0;
        let mut calls = Vec::with_capacity(n);
        for _ in 0..n {
            let call = Instant::now();
            if !publish_ok(self.component, body.clone()).await {
                failed += 1;
            }
            calls.push(call.elapsed());
        }
        let published = from.at.elapsed();
        let got = self.fleet.tally.wait(target, LIMIT).await - start;
        let to = self.meter.now();
        calls.sort();
        self.push(row(
            format!("broadcast {size} B x {n}, 1 in flight"),
            "frames/s",
            got as f64 / (to.at - from.at).as_secs_f64(),
            format!(
                "{:.0} publish calls/s (p50 {:.2} ms, p99 {:.2} ms), {got} of {} frames, {failed} publishes failed",
                n as f64 / published.as_secs_f64(),
                percentile(&calls, 0.5),
                percentile(&calls, 0.99),
                n * clients
            ),
            from,
            to,
        ));
    }

    /// `n` publishes of `size` bytes, up to 64 in flight, until every client got all of them.
    async fn burst(&mut self, size: usize, n: usize) {
        let clients = self.clients;
        let body = Bytes::from(vec![b'y'; size]);
        let target = self.fleet.tally.expect(n * clients);
        let start = self.fleet.tally.frames.load(Ordering::SeqCst);
        let from = self.meter.now();
        let component = self.component;
        let failed = futures::stream::iter(0..n)
            .map(|_| publish_ok(component, body.clone()))
            .buffer_unordered(64)
            .filter(|ok| futures::future::ready(!*ok))
            .count()
            .await;
        let published = from.at.elapsed();
        let got = self.fleet.tally.wait(target, LIMIT).await - start;
        let to = self.meter.now();
        self.push(row(
            format!("burst {size} B x {n}, 64 in flight"),
            "ms until all got all",
            (to.at - from.at).as_secs_f64() * 1000.0,
            format!(
                "{:.0} frames/s, publishes done in {:.0} ms, {got} of {} frames, {failed} publishes failed",
                got as f64 / (to.at - from.at).as_secs_f64(),
                published.as_secs_f64() * 1000.0,
                n * clients
            ),
            from,
            to,
        ));
    }

    /// Every client sends `each` envelopes of 16 B at once; the component only counts them.
    async fn inbound(&mut self, each: usize) {
        self.component.set_behaviour(Behaviour {
            count_only: true,
            ..Default::default()
        });
        let text = common::envelope("bench.in", &[b'z'; 16], None);
        let before = self.component.count();
        let total = each * self.clients;
        let before_stats = stats(self.component).await;
        let from = self.meter.now();
        self.fleet.send_all(&text, each);
        // Until all arrived, or nothing more arrived for 12 s: a delivery lost on the lattice is
        // not retried, and 12 s is past `delivery_timeout_ms` (10 s), so every timeout of the
        // phase is counted by then. The count each second shows a steady rate from a stall.
        let mut progress = Vec::new();
        let (mut got, mut last_arrival) = (0, Duration::ZERO);
        let mut next_second = Duration::from_secs(1);
        while from.at.elapsed() < LIMIT {
            let now = self
                .component
                .wait_count(before + total, Duration::from_millis(20))
                .await
                - before;
            if now > got {
                got = now;
                last_arrival = from.at.elapsed();
            }
            if from.at.elapsed() >= next_second {
                progress.push(got);
                next_second += Duration::from_secs(1);
            }
            if got >= total || from.at.elapsed() - last_arrival > Duration::from_secs(12) {
                break;
            }
        }
        let to = self.meter.now();
        let after = stats(self.component).await;
        let delta = |key: &str| {
            after[key].as_u64().unwrap_or(0) as i64 - before_stats[key].as_u64().unwrap_or(0) as i64
        };
        self.push(row(
            format!("inbound 16 B, {each} per client at once"),
            "msgs/s",
            got as f64 / last_arrival.as_secs_f64(),
            format!(
                "{got} of {total} reached handle-message, the last after {:.2} s; delivery_timeouts +{}; handled after each second: {progress:?}",
                last_arrival.as_secs_f64(),
                delta("delivery_timeouts")
            ),
            from,
            to,
        ));
    }

    /// Round trips through the component (it answers through the client's reply-to).
    async fn round_trips(&mut self, clients: usize, each: usize) {
        self.component.set_behaviour(Behaviour {
            answer_through: Some("default".into()),
            count_only: true,
            ..Default::default()
        });
        let text = common::envelope("bench.rt", &[b'r'; 16], Some("rt"));
        let from = self.meter.now();
        let times = self.fleet.round_trips(clients, each, &text).await;
        let to = self.meter.now();
        self.push(row(
            format!("round trip 16 B, {clients} client(s) x {each} in a row"),
            "p50 ms",
            percentile(&times, 0.5),
            format!(
                "p99 {:.2} ms, {:.0} round trips/s, {} of {} answered",
                percentile(&times, 0.99),
                times.len() as f64 / (to.at - from.at).as_secs_f64(),
                times.len(),
                clients * each
            ),
            from,
            to,
        ));
    }
}

fn open_files_limit() -> String {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .map(|l| l.split_whitespace().nth(3).unwrap_or("?").to_string())
        })
        .unwrap_or_default()
}

async fn bench() {
    let clients = env_usize("BENCH_CLIENTS", 1000);
    let broadcasts = env_usize("BENCH_BROADCASTS", 2000);
    let phases = std::env::var("BENCH_PHASES")
        .unwrap_or_else(|_| "idle,broadcast,burst,roundtrip,inbound".into());
    let phase = |name: &str| phases.split(',').any(|p| p.trim() == name);

    // Each client is one socket here and one in the provider (which inherits this limit, as it
    // inherits the host's). `ulimit -n` is 20000 on this machine, soft and hard, so there is
    // nothing to raise; a lower one stops the bench here rather than in a failed connect.
    let nofile = open_files_limit();
    if let Ok(soft) = nofile.parse::<usize>() {
        assert!(
            soft > clients + 256,
            "RLIMIT_NOFILE is {soft}: too low for {clients} clients; raise it (ulimit -n)"
        );
    }

    let nats = NatsServer::start().await;
    let listen = format!("127.0.0.1:{}", free_port());
    let url = format!("ws://{listen}/bench");
    let provider = listener(&nats, COMPONENT, &[("path", "/bench")], listen).await;
    let component = PlayedComponent::start(&provider, &nats.url, COMPONENT).await;
    let meter = Meter {
        provider: &provider,
        nats_pid: child_named("nats-server"),
    };
    println!(
        "server mode: {clients} clients, provider pid {}, nats-server pid {}, RLIMIT_NOFILE {nofile}, phases {phases}",
        provider.pid(),
        meter.nats_pid.as_deref().unwrap_or("?")
    );

    // Idle: the provider's memory before and with the clients.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = provider.rss_kib();
    let bench_rss_before = rss_of("self");
    let from = meter.now();
    let fleet = Fleet::connect(&url, clients).await;
    let mut counted = 0;
    let deadline = Instant::now() + LIMIT;
    while Instant::now() < deadline {
        counted = stats(&component).await["clients"].as_u64().unwrap_or(0) as usize;
        if counted >= clients {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let to = meter.now();
    let mut ctx = Ctx {
        clients,
        component: &component,
        provider: &provider,
        meter,
        fleet,
        rows: Vec::new(),
    };
    ctx.push(row(
        "connect (32 at a time)",
        "clients/s",
        clients as f64 / (to.at - from.at).as_secs_f64(),
        format!("{counted} counted by $ws.stats"),
        from,
        to,
    ));
    if phase("idle") {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss_with = ctx.provider.rss_kib();
        let from = ctx.meter.now();
        ctx.push(row(
            "idle memory, 2 s after connecting",
            "KiB/client",
            rss_with.saturating_sub(rss_before) as f64 / clients as f64,
            format!(
                "provider RSS {rss_before} -> {rss_with} KiB; this process (clients, component) {bench_rss_before} -> {} KiB",
                rss_of("self")
            ),
            from,
            from,
        ));
        tokio::time::sleep(Duration::from_secs(10)).await;
        let to = ctx.meter.now();
        let rss_after = ctx.provider.rss_kib();
        ctx.push(row(
            "idle 10 s",
            "provider CPU s",
            to.provider - from.provider,
            format!(
                "RSS then {rss_after} KiB = {:.1} KiB/client over the RSS before the clients",
                rss_after.saturating_sub(rss_before) as f64 / clients as f64
            ),
            from,
            to,
        ));
    }
    if phase("broadcast") {
        ctx.broadcast(16, broadcasts).await;
        ctx.broadcast(1024, broadcasts / 4).await;
    }
    if phase("burst") {
        ctx.burst(16, 200).await;
        ctx.burst(1024, 200).await;
    }
    if phase("roundtrip") {
        ctx.round_trips(1, 500).await;
        ctx.round_trips(clients, 10).await;
    }
    if phase("inbound") {
        // 10 per client first (10 k deliveries in flight at once), then `BENCH_INBOUND` (100 k).
        ctx.inbound(10).await;
        ctx.inbound(env_usize("BENCH_INBOUND", 100)).await;
    }

    let end = stats(&component).await;
    let health = format!(
        "clients {} (ended here {}), slow_consumer_closes {}, dead_clients {}, fanout_frames {}, delivered {}, delivery_errors {}, delivery_timeouts {}",
        end["clients"],
        ctx.fleet.tally.ended.load(Ordering::Relaxed),
        end["slow_consumer_closes"],
        end["dead_clients"],
        end["fanout_frames"],
        end["delivered"],
        end["delivery_errors"],
        end["delivery_timeouts"],
    );

    println!();
    println!(
        "| phase | result | wall s | provider CPU s (sys %) | bench CPU s | nats CPU s | notes |"
    );
    println!("|---|--:|--:|--:|--:|--:|---|");
    for r in &ctx.rows {
        println!(
            "| {} | {:.1} {} | {:.2} | {:.2} ({:.0} %) | {:.2} | {:.2} | {} |",
            r.phase,
            r.value,
            r.unit,
            r.wall_s,
            r.provider_cpu_s,
            r.provider_sys_share * 100.0,
            r.bench_cpu_s,
            r.nats_cpu_s,
            r.note
        );
    }
    println!();
    println!("at the end: {health}");
    let logs = provider.logs.all();
    let mut warned: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    println!("provider log: {} warn/error lines", warned.len());
    warned.truncate(5);
    for line in warned {
        println!("  {}", &line[..line.len().min(400)]);
    }

    let json = serde_json::json!({ "clients": clients, "rows": ctx.rows, "end": end });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(
        dir.join("listener.json"),
        serde_json::to_vec_pretty(&json).unwrap(),
    );
    let _ = std::fs::write(dir.join("listener-provider.log"), logs);
}

// ---------------------------------------------------------------------------------------------
// The Autobahn echo.

/// A component whose handler publishes every message's body, unchanged, to its reply-to.
#[derive(Clone, Default)]
struct Echo {
    /// The provider's client and the component's id, set once both exist.
    caller: Arc<OnceLock<(Arc<delivery_wrpc::Client>, String)>>,
}

impl common::played::exports::wasmcloud::messaging::handler::Handler<delivery_wrpc::NatsContext>
    for Echo
{
    async fn handle_message(
        &self,
        _cx: delivery_wrpc::NatsContext,
        msg: BrokerMessage,
    ) -> anyhow::Result<Result<(), String>> {
        let (Some(reply_to), Some((provider, id))) = (msg.reply_to, self.caller.get()) else {
            return Ok(Ok(()));
        };
        let mut headers = delivery_nats::HeaderMap::new();
        headers.insert("source-id", id.as_str());
        headers.insert("link-name", "default");
        let len = msg.body.len();
        let echo = BrokerMessage {
            subject: reply_to,
            body: msg.body,
            reply_to: None,
        };
        // Large messages are logged: a lost one shows on which side of the echo it was lost.
        let started = Instant::now();
        if len >= 1 << 20 {
            eprintln!("echo: got {len} bytes");
        }
        let publish = common::played::wasmcloud::messaging::consumer::publish(
            &**provider,
            Some(headers),
            &echo,
        );
        let Ok(published) = tokio::time::timeout(Duration::from_secs(30), publish).await else {
            eprintln!("echo: the publish of {len} bytes got no answer within 30 s");
            return Ok(Err("echo publish: no answer within 30 s".into()));
        };
        if len >= 1 << 20 {
            eprintln!(
                "echo: published {len} bytes in {:?}: {published:?}",
                started.elapsed()
            );
        }
        match published {
            Ok(Ok(())) => Ok(Ok(())),
            Ok(Err(e)) => {
                eprintln!("echo: the publish of {len} bytes was refused: {e}");
                Ok(Err(format!("echo publish refused: {e}")))
            }
            Err(e) => {
                eprintln!("echo: the publish of {len} bytes failed: {e:#}");
                Ok(Err(format!("echo publish failed: {e:#}")))
            }
        }
    }
}

/// Serves the echo handler for component `id` on the provider's lattice.
async fn serve_echo(
    provider: &ProviderProcess,
    nats_url: &str,
    id: &str,
) -> tokio::task::JoinHandle<()> {
    let nats = delivery_nats::ConnectOptions::new()
        .event_callback(|event| async move { eprintln!("echo: NATS event: {event}") })
        .connect(nats_url)
        .await
        .unwrap();
    let nats = Arc::new(nats);
    let own = delivery_wrpc::Client::new(
        Arc::clone(&nats),
        format!("{}.{id}", provider.lattice),
        None,
    )
    .await
    .unwrap();
    let echo = Echo::default();
    let invocations = common::played::serve(&own, echo.clone()).await.unwrap();
    nats.flush().await.unwrap();
    let client = delivery_wrpc::Client::new(
        nats,
        format!("{}.{}", provider.lattice, provider.provider_key),
        None,
    )
    .await
    .unwrap();
    let _ = echo.caller.set((Arc::new(client), id.to_string()));
    tokio::spawn(async move {
        let _own = own;
        let mut all = futures::stream::select_all(invocations.into_iter().map(|(_, _, s)| s));
        while let Some(invocation) = all.next().await {
            match invocation {
                Ok(fut) => {
                    tokio::spawn(async move {
                        if let Err(e) = fut.await {
                            eprintln!("echo: serving an invocation failed: {e:#}");
                        }
                    });
                }
                Err(e) => eprintln!("echo: accepting an invocation failed: {e:#}"),
            }
        }
    })
}

async fn autobahn_echo(port: u16) {
    let nats = NatsServer::start().await;
    let listen = format!("127.0.0.1:{port}");
    let id = "autobahn-echo";
    // One message at a time per client (`max_in_flight` 1), so that echoes keep their order; a
    // 16 MiB echo may follow another that is still being written (`client_queue_bytes` 64 MiB);
    // a 16 MiB message takes longer than the default 10 s delivery bound on a busy machine.
    let provider = listener(
        &nats,
        id,
        &[
            ("path", "/"),
            ("format", "raw"),
            ("compression", "deflate"),
            ("max_message_bytes", "16777216"),
            ("max_in_flight", "1"),
            ("max_in_flight_bytes", "16777216"),
            ("client_queue_bytes", "67108864"),
            ("delivery_timeout_ms", "60000"),
        ],
        listen.clone(),
    )
    .await;
    let serving = serve_echo(&provider, &nats.url, id).await;
    println!(
        "autobahn-echo: ready on ws://{listen}/ (provider pid {}, nats-server at its default max_payload, 1 MiB)",
        provider.pid(),
    );
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).unwrap();
    let mut int = signal(SignalKind::interrupt()).unwrap();
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    // Dropping the children's handles kills them (kill_on_drop): nothing outlives this process.
    serving.abort();
    let warns = provider
        .logs
        .all()
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .count();
    println!("autobahn-echo: stopping; {warns} warn/error lines in the provider's log");
    drop(provider);
    drop(nats);
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--autobahn-echo") {
        let port = args
            .get(at + 1)
            .and_then(|p| p.parse().ok())
            .expect("--autobahn-echo <port>");
        return autobahn_echo(port).await;
    }
    bench().await;
}
