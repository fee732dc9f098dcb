//! Evaluation tool for Rust WebSocket client libraries: runs the Autobahn|Testsuite client
//! cases with each of them, and compares their echo throughput against a separate server
//! process. See RESULTS.md for what it found and how to run it.

// A build with only some of the libraries leaves parts of the shared code unused.
#![cfg_attr(
    not(all(feature = "yawc", feature = "soketto", feature = "ratchet_rs")),
    allow(dead_code, unused_imports)
)]

mod clients;
mod serve;

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use clients::{Deflate, Lib, Msg, Rx, Session, Settings, Tx, MAX_MESSAGE};
use futures::StreamExt;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

const USAGE: &str = "usage:
  ws-libs autobahn <lib> <base-url> [agent]
  ws-libs serve <addr> [deflate]
  ws-libs serve-lib <lib> <addr>   (an echo server of that library alone, for Autobahn's fuzzingclient)
  ws-libs throughput <lib> <url> <size> <count> <window> [deflate]
  ws-libs inflate-limit <lib> <url>
<lib> is one of tokio-tungstenite, yawc, soketto, ratchet_rs";

/// Long enough for the slowest 12.x/13.x case (1000 messages of 128 KiB through the Python
/// fuzzingserver), short enough that a stuck case does not stall the run.
const CASE_TIMEOUT: Duration = Duration::from_secs(120);

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match args.as_slice() {
        ["autobahn", lib, base] => runtime.block_on(autobahn(lib.parse()?, base, lib)),
        ["autobahn", lib, base, agent] => runtime.block_on(autobahn(lib.parse()?, base, agent)),
        ["serve", addr, flag @ ..] => runtime.block_on(serve::run(addr, deflate_flag(flag)?)),
        ["serve-lib", lib, addr] => runtime.block_on(serve::run_lib(lib.parse()?, addr)),
        ["throughput", lib, url, size, count, window, flag @ ..] => {
            let run = Throughput {
                size: size.parse().context("size")?,
                count: count.parse().context("count")?,
                window: window.parse().context("window")?,
            };
            let lib: Lib = lib.parse()?;
            let deflate = deflate_flag(flag)?;
            let settings = Settings {
                deflate,
                max_message: MAX_MESSAGE,
            };
            let report = runtime.block_on(clients::run(lib, url, settings, run))?;
            ensure!(
                !deflate || !matches!(report.deflate, Deflate::Declined),
                "{lib}: the server declined permessage-deflate"
            );
            println!(
                "lib={lib} size={} count={} window={} deflate={deflate} wall_s={:.3} msgs_per_s={:.0} cpu_s={:.3}",
                run.size,
                run.count,
                run.window,
                report.wall.as_secs_f64(),
                run.count as f64 / report.wall.as_secs_f64(),
                report.cpu_seconds,
            );
            Ok(())
        }
        ["inflate-limit", lib, url] => {
            let settings = Settings {
                deflate: true,
                max_message: InflateLimit::LIMIT,
            };
            let verdict =
                runtime.block_on(clients::run(lib.parse()?, url, settings, InflateLimit))?;
            println!("{lib}: {verdict}");
            Ok(())
        }
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2)
        }
    }
}

fn deflate_flag(rest: &[&str]) -> Result<bool> {
    match rest {
        [] => Ok(false),
        ["deflate"] => Ok(true),
        _ => bail!("unexpected arguments {rest:?}\n{USAGE}"),
    }
}

/// Runs every case of the fuzzingserver at `base` with `lib`, then has it write the reports,
/// where the results are filed under `agent`.
async fn autobahn(lib: Lib, base: &str, agent: &str) -> Result<()> {
    let count = case_count(base).await?;
    println!(
        "{agent}: {count} cases, permessage-deflate offered: {}",
        lib.has_deflate()
    );
    for case in 1..=count {
        let url = format!("{base}/runCase?case={case}&agent={agent}");
        let started = Instant::now();
        let settings = Settings {
            deflate: lib.has_deflate(),
            max_message: MAX_MESSAGE,
        };
        let outcome =
            tokio::time::timeout(CASE_TIMEOUT, clients::run(lib, &url, settings, Echo)).await;
        let elapsed = started.elapsed().as_secs_f64();
        match outcome {
            Ok(Ok(deflate)) => println!("case {case}: closed, deflate {deflate:?}, {elapsed:.1}s"),
            // Dropping the connection is what a client does on a protocol error.
            Ok(Err(e)) => println!("case {case}: dropped: {e:#}, {elapsed:.1}s"),
            Err(_) => println!(
                "case {case}: TIMED OUT after {}s, dropped",
                CASE_TIMEOUT.as_secs()
            ),
        }
    }
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("{base}/updateReports?agent={agent}")).await?;
    // The server closes the connection once the reports are written.
    while ws.next().await.transpose()?.is_some() {}
    println!("{agent}: reports updated");
    Ok(())
}

async fn case_count(base: &str) -> Result<u32> {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{base}/getCaseCount")).await?;
    while let Some(msg) = ws.next().await.transpose()? {
        if let Message::Text(text) = msg {
            let _ = ws.close(None).await;
            return text.trim().parse().context("case count");
        }
    }
    bail!("getCaseCount closed without a count")
}

/// Echoes every data message until the connection closes.
struct Echo;

impl Session for Echo {
    type Output = Deflate;

    async fn run(self, mut tx: impl Tx, mut rx: impl Rx, deflate: Deflate) -> Result<Deflate> {
        while let Some(msg) = rx.recv().await? {
            tx.send(msg).await?;
        }
        Ok(deflate)
    }
}

/// Sends `count` binary messages of `size` bytes, at most `window` of them unanswered.
#[derive(Clone, Copy)]
struct Throughput {
    size: usize,
    count: usize,
    window: usize,
}

struct Report {
    wall: Duration,
    cpu_seconds: f64,
    deflate: Deflate,
}

impl Session for Throughput {
    type Output = Report;

    async fn run(self, mut tx: impl Tx, mut rx: impl Rx, deflate: Deflate) -> Result<Report> {
        let payloads = payloads(self.size, 64);
        let window = Semaphore::new(self.window);
        let (cpu, started) = (cpu_seconds(), Instant::now());
        let send = async {
            for payload in payloads.iter().cycle().take(self.count) {
                window.acquire().await?.forget();
                tx.send(Msg::Binary(payload.clone())).await?;
            }
            anyhow::Ok(())
        };
        let receive = async {
            for n in 0..self.count {
                match rx.recv().await? {
                    Some(Msg::Binary(echo)) if echo.len() == self.size => window.add_permits(1),
                    Some(_) => bail!("unexpected echo"),
                    None => bail!("closed after {n} echoes"),
                }
            }
            Ok(())
        };
        tokio::try_join!(send, receive)?;
        let report = Report {
            wall: started.elapsed(),
            cpu_seconds: cpu_seconds() - cpu,
            deflate,
        };
        // A polite goodbye, not measured.
        if tx.close().await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await;
        }
        Ok(report)
    }
}

/// Whether a client's message size limit holds for what a compressed frame inflates to: sends
/// a message of zeros 8 times the limit (some KiB once compressed) to a deflate echo server, and
/// sees whether the compressed echo is refused.
struct InflateLimit;

impl InflateLimit {
    const LIMIT: usize = 1 << 20;
}

impl Session for InflateLimit {
    type Output = String;

    async fn run(self, mut tx: impl Tx, mut rx: impl Rx, deflate: Deflate) -> Result<String> {
        ensure!(
            !matches!(deflate, Deflate::Declined),
            "the server declined permessage-deflate"
        );
        tx.send(Msg::Binary(vec![0; 8 * Self::LIMIT].into()))
            .await?;
        let echo = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await;
        Ok(match echo {
            Ok(Ok(Some(Msg::Binary(echo)))) => format!(
                "ACCEPTED a message of {} bytes with the limit at {} (deflate {deflate:?})",
                echo.len(),
                Self::LIMIT
            ),
            Ok(Ok(Some(Msg::Text(_)))) => bail!("text echo"),
            Ok(Ok(None)) => "refused: the connection was closed".into(),
            Ok(Err(e)) => format!("refused: {e:#}"),
            Err(_) => "no echo within 30 s".into(),
        })
    }
}

/// `n` different payloads of `size` bytes: text-like, so that deflate has something to do
/// (about 4 bits of entropy per byte), and different from one message to the next.
fn payloads(size: usize, n: usize) -> Vec<Bytes> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    (0..n)
        .map(|_| {
            (0..size)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    b"etaoinshrdlu cmf"[(state >> 60) as usize]
                })
                .collect()
        })
        .collect()
}

/// User plus system CPU time of this process so far.
fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}
