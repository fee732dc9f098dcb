//! The throughput bench's other parts: the peer provider's and the ceiling's child processes,
//! NATS sinks and responders that count what arrives, callgrind control, the trivial server.

use crate::common::provider::ProviderProcess;
use crate::common::wait::Counter;
use crate::common::ws::WsServer;
use crate::*;
use futures::StreamExt as _;
use std::sync::Arc;
use std::time::Duration;
use trivial::wasmcloud::messaging::types::BrokerMessage as TrivialMessage;

/// `callgrind_control <action> <pid>` when `BENCH_CALLGRIND` is set: `-z` zeroes the counters,
/// `-d` dumps them, so a dump holds exactly the measured part of a phase.
pub(crate) fn callgrind_control(provider: &ProviderProcess, action: &str) {
    if std::env::var_os("BENCH_CALLGRIND").is_some() {
        let status = std::process::Command::new("callgrind_control")
            .args([action, &provider.pid().to_string()])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("callgrind_control runs");
        assert!(status.success(), "callgrind_control {action} failed");
    }
}

/// Where a publish phase's messages arrive.
pub(crate) enum Sink {
    /// Our WebSocket server, which also got the warm-up frame.
    Server(WsServer),
    /// A NATS subscription to the published subject only.
    Subscriber(Counted),
}

impl Sink {
    /// Waits until `n` published messages (the warm-up not counted) arrived, or [`WAIT`]
    /// passed; returns how many did.
    pub(crate) async fn received(&self, n: usize) -> usize {
        match self {
            Sink::Server(server) => server.wait_frames(n + 1, WAIT).await - 1,
            Sink::Subscriber(counted) => counted.wait(n, WAIT).await,
        }
    }
}

/// A NATS subscription counted in the background.
pub(crate) struct Counted {
    pub(crate) count: Arc<Counter>,
    pub(crate) task: tokio::task::JoinHandle<()>,
}

pub(crate) fn counting(mut sub: async_nats::Subscriber) -> Counted {
    let count = Arc::new(Counter::default());
    let task = tokio::spawn({
        let count = Arc::clone(&count);
        async move {
            while sub.next().await.is_some() {
                count.bump();
            }
        }
    });
    Counted { count, task }
}

impl Counted {
    pub(crate) async fn wait(&self, n: usize, limit: Duration) -> usize {
        self.count.wait_for(n, limit).await
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A NATS responder: every request on `subject` is answered with its own body.
pub(crate) async fn respond(
    client: &async_nats::Client,
    subject: &str,
) -> tokio::task::JoinHandle<()> {
    let mut sub = client.subscribe(subject.to_string()).await.unwrap();
    client.flush().await.unwrap();
    let client = client.clone();
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            if let Some(reply) = msg.reply {
                let _ = client.publish(reply, msg.payload).await;
            }
        }
    })
}

/// The ceiling's other process: this benchmark run again with `BENCH_CHILD` set.
pub(crate) struct Child {
    pub(crate) process: tokio::process::Child,
    pub(crate) lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Child {
    pub(crate) async fn start(vars: &[(&str, String)]) -> Self {
        use tokio::io::AsyncBufReadExt as _;
        let mut command = tokio::process::Command::new(std::env::current_exe().unwrap());
        command
            .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut process = command.spawn().expect("the benchmark starts itself");
        let stdout = process.stdout.take().unwrap();
        let lines = tokio::io::BufReader::new(stdout).lines();
        Child { process, lines }
    }

    /// The child's next line on stdout.
    pub(crate) async fn line(&mut self) -> String {
        tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .expect("the child answers")
            .unwrap()
            .expect("the child is alive")
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.process.start_kill();
    }
}

/// What a child process does: serve the trivial `consumer` (printing `ready`), or call
/// `handle-message` `BENCH_CHILD_N` times (printing seconds and latencies as JSON).
pub(crate) async fn child(mode: &str) {
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is set"));
    let (url, lattice, target) = (
        var("BENCH_CHILD_NATS"),
        var("BENCH_CHILD_LATTICE"),
        var("BENCH_CHILD_TARGET"),
    );
    match mode {
        "serve" => {
            let serving = serve_trivial(&url, &lattice, &target).await;
            println!("ready");
            let _ = serving.await;
        }
        "deliver" => {
            let nats = Arc::new(delivery_nats::connect(url.as_str()).await.unwrap());
            let client = delivery_wrpc::Client::new(nats, format!("{lattice}.{target}"), None)
                .await
                .unwrap();
            let n: usize = var("BENCH_CHILD_N").parse().unwrap();
            let in_flight: usize = var("BENCH_CHILD_IN_FLIGHT").parse().unwrap();
            let msg = TrivialMessage {
                subject: "bench.delivery".into(),
                body: body(var("BENCH_CHILD_SIZE").parse().unwrap()),
                reply_to: None,
            };
            let (took, seconds, failed) = drive(n, in_flight, |_| {
                let call =
                    trivial::wasmcloud::messaging::handler::handle_message(&client, None, &msg);
                // The provider's delivery_timeout_ms: a result lost on the lattice (it happens
                // here, with no provider involved) fails the call instead of hanging the run.
                async move {
                    match tokio::time::timeout(Duration::from_secs(10), call).await {
                        Ok(result) => flatten(result),
                        Err(_) => Err("no result within 10 s".to_string()),
                    }
                }
            })
            .await;
            let mut row = Row::new(System::Ceiling, Phase::Delivery, 0, in_flight, n);
            row.latencies(took);
            println!(
                "{}",
                serde_json::json!({"seconds": seconds, "p50_us": row.p50_us, "p99_us": row.p99_us, "failed": failed})
            );
        }
        other => panic!("unknown BENCH_CHILD {other}"),
    }
}

/// Serves the trivial `consumer` as `target` on `lattice`.
pub(crate) async fn serve_trivial(
    nats_url: &str,
    lattice: &str,
    target: &str,
) -> tokio::task::JoinHandle<()> {
    let nats = Arc::new(delivery_nats::connect(nats_url).await.unwrap());
    let client = delivery_wrpc::Client::new(Arc::clone(&nats), format!("{lattice}.{target}"), None)
        .await
        .unwrap();
    let invocations = trivial::serve(&client, Trivial).await.unwrap();
    nats.flush().await.unwrap();
    tokio::spawn(async move {
        let _client = client;
        let mut all = futures::stream::select_all(invocations.into_iter().map(|(_, _, s)| s));
        while let Some(invocation) = all.next().await {
            if let Ok(fut) = invocation {
                tokio::spawn(async move {
                    let _ = fut.await;
                });
            }
        }
    })
}
