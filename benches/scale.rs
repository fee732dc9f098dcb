//! Server mode at scale: the provider's listener next to nats-server's own WebSocket listener,
//! the same workloads against both in one run, 10,000 clients on this machine.
//!
//! Real parts, as the tests run them: ONE nats-server (JetStream on, as the provider needs it)
//! that also has a `websocket { no_tls: true }` listener (the peer), the provider's release
//! binary started as the host starts it on that server (its lattice), with one listener on
//! `127.0.0.1:<port>` path `/` (both links of a played component, `max_clients` 20000, every other
//! setting at its default, keepalive pings every 20 s included), the played component over wRPC in
//! this process, and the clients, also in this process.
//!
//! The clients are one lean implementation for both systems: a raw `TcpStream`, a hand-written
//! HTTP/1.1 upgrade, a minimal frame reader (8 KiB read buffer, no extensions), masked writes,
//! pings answered. Ours subscribes with `{"subscribe":"bench.all"}` and counts one text frame per
//! message; the peer speaks NATS inside the frames (`CONNECT`, `SUB bench.all 1`, `PING` until
//! `PONG`) and counts `MSG`s from the byte stream (a frame may carry many, a message may span
//! frames). Publishing: ours through the played component's `publish` (up to 64 calls in flight),
//! the peer's through a core NATS client in this process (publishes, then a flush). Each client
//! records the arrival of its k-th message of a burst into a shared `fetch_max` slot k
//! (nanoseconds since the start), so a publish's latency is the arrival at the last client minus
//! the time it was issued; a phase ends when every client got every message or after 60 s
//! (reported as incomplete).
//!
//! Phases (`BENCH_PHASES`, default `idle,fanout,slow,inbound,churn`), each for ours then for
//! the peer:
//!
//! - idle: `BENCH_CLIENTS` (10000) clients connect, 64 at a time, each subscribed: clients/s over
//!   the whole fleet, the server's RSS before them, 3 s after the last connect and after 10 s more
//!   (KiB per client over the RSS before; nats-server's RSS before already holds the provider's
//!   connections), and the server's CPU over those 10 s;
//! - fanout: 200 publishes back to back of 16 B and of 1 KiB to all clients, then 100 publishes
//!   of 16 B one every 10 ms ("tick"); then all but 1000 clients leave and the same again with
//!   1000: messages/s delivered (publishes x clients / first publish to last arrival), p50 and p99
//!   of the publish-to-last-client latency over the publishes;
//! - slow: 1000 clients, `BENCH_SLOW_PUBLISHES` (6000) publishes of 1 KiB: the messages/s of 900 of
//!   them with all reading, then with the other 100 not reading (they keep their socket open). On
//!   loopback the kernel holds about 5 MB per unread socket (the receiver's 1.4 MB, the sender's up
//!   to 4 MB), so fewer publishes (2000: 2.8 MB of envelopes) never fill ours's 1 MiB queue. Ours
//!   closes a client whose outgoing queue is full with 1008: counted by `$ws.stats`
//!   (`slow_consumer_closes`), and by the 100 once they read again (a Close frame, or only the end
//!   of the connection when the Close could not be written);
//! - inbound: 1000 fresh clients each send 16 B messages at `BENCH_INBOUND_RATE` (40) per second (40,000/s offered, over the ceiling)
//!   for `BENCH_INBOUND_SECS` (5) s: messages/s reaching the component's handle-message (ours,
//!   which only counts) or a NATS subscriber in this process (the peer; its latency from a
//!   timestamp in the body). Next to it the lattice's ceiling: handle-message called directly
//!   over wRPC from this process, 64 in flight;
//! - churn: for `BENCH_CHURN_SECS` (10) s, 64 workers connect (and subscribe / CONNECT + PING),
//!   send a Close and wait for the server to close, over and over: connections/s, and the server's
//!   RSS after it and 5 s later.
//!
//! Each row has the server's CPU seconds (the provider for ours, nats-server for the peer), this
//! process's (the clients, the component, the publisher) and nats-server's (for ours, the
//! lattice's share). Rows go to stdout, then a side-by-side table (ours, peer, ours/peer), and all
//! of them to `target/bench/scale.json`; the provider's log to `target/bench/scale-provider.log`.
//! Run: `CARGO_TARGET_DIR=target cargo bench --bench scale`.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::component::{Behaviour, PlayedComponent};
use common::nats::{free_port, NatsServer};
use common::provider::ProviderProcess;
use futures::StreamExt as _;
use serde::Serialize;
use support::{cpu_of, env_usize, listener, rss_of};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// The bound of every wait: a phase that has not finished by then is reported as incomplete.
const LIMIT: Duration = Duration::from_secs(60);
const COMPONENT: &str = "bench-scale";
const SUBJECT: &str = "bench.all";
const INBOUND_SUBJECT: &str = "bench.in";
const READ_BUF: usize = 8 * 1024;
const CONNECT_AT_ONCE: usize = 64;
const IN_FLIGHT: usize = 64;

/// The provider's own `handler-client` world: bindings that invoke `handle-message` (the ceiling).
#[allow(dead_code)]
mod hc {
    delivery_bindgen::generate!({
        world: "handler-client",
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
            "wasmcloud:messaging/handler@0.2.0": generate,
            "wasmcloud:messaging/types@0.2.0": generate,
        }
    });
}

static START: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the bench started.
fn now_ns() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

// ---------------------------------------------------------------------------------------------
// /proc.

/// RLIMIT_NOFILE's soft limit raised to the hard one (the children inherit it); the limit then.
fn raise_nofile() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        }
    }
    limit.rlim_cur
}

// ---------------------------------------------------------------------------------------------
// The frames.

const TEXT: u8 = 1;
const BINARY: u8 = 2;
const CLOSE: u8 = 8;
const PING: u8 = 9;
const PONG: u8 = 10;

/// A masking key: unpredictable enough for a bench (servers do not check).
fn mask() -> [u8; 4] {
    static NEXT: AtomicU64 = AtomicU64::new(0x2545_f491_4f6c_dd1d);
    let x = NEXT.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
    let x = (x ^ (x >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let b = x.to_le_bytes();
    [b[0], b[1], b[2], b[3]]
}

/// A client's frame: FIN, masked.
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = mask();
    let n = payload.len();
    let mut out = Vec::with_capacity(n + 14);
    out.push(0x80 | opcode);
    if n < 126 {
        out.push(0x80 | n as u8);
    } else if n < 65536 {
        out.push(0x80 | 126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    out
}

fn close_frame() -> Vec<u8> {
    frame(CLOSE, &1000u16.to_be_bytes())
}

/// What the reader saw besides data messages (those it only counts).
enum Ev {
    /// A whole text or binary message, while collecting (ours, until subscribed).
    Text(Vec<u8>),
    Ping(Vec<u8>),
    Close(u16),
    NatsPing,
    NatsPong,
    NatsErr(String),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Sys {
    Ours,
    Peer,
}

impl Sys {
    fn name(self) -> &'static str {
        match self {
            Sys::Ours => "ours",
            Sys::Peer => "peer",
        }
    }
}

/// NATS's protocol in the WebSocket payload: counts `MSG`s, skipping their payloads.
#[derive(Default)]
struct NatsParser {
    /// Payload bytes (and its CRLF) still to skip of the current MSG.
    skip: usize,
    line: Vec<u8>,
}

impl NatsParser {
    fn feed(&mut self, mut chunk: &[u8], evs: &mut Vec<Ev>) -> usize {
        let mut msgs = 0;
        while !chunk.is_empty() {
            if self.skip > 0 {
                let take = self.skip.min(chunk.len());
                self.skip -= take;
                chunk = &chunk[take..];
                if self.skip == 0 {
                    msgs += 1;
                }
                continue;
            }
            match chunk.iter().position(|&b| b == b'\n') {
                Some(at) => {
                    self.line.extend_from_slice(&chunk[..at]);
                    chunk = &chunk[at + 1..];
                    self.line_done(evs);
                }
                None => {
                    self.line.extend_from_slice(chunk);
                    break;
                }
            }
        }
        msgs
    }

    fn line_done(&mut self, evs: &mut Vec<Ev>) {
        let line = self.line.strip_suffix(b"\r").unwrap_or(&self.line);
        if line.starts_with(b"MSG ") {
            let len = line
                .rsplit(|&b| b == b' ')
                .next()
                .and_then(|n| std::str::from_utf8(n).ok())
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(0);
            self.skip = len + 2;
        } else if line == b"PING" {
            evs.push(Ev::NatsPing);
        } else if line == b"PONG" {
            evs.push(Ev::NatsPong);
        } else if line.starts_with(b"-ERR") {
            evs.push(Ev::NatsErr(String::from_utf8_lossy(line).into_owned()));
        }
        self.line.clear();
    }
}

#[derive(Clone, Copy)]
struct FrameState {
    opcode: u8,
    fin: bool,
    remaining: usize,
}

/// The frame reader: one reused buffer; data payloads are consumed as they come (counted, or fed
/// to the NATS parser), control payloads kept.
struct Reader {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    frame: Option<FrameState>,
    ctrl: Vec<u8>,
    collect: Option<Vec<u8>>,
    nats: Option<NatsParser>,
}

impl Reader {
    fn new(sys: Sys) -> Self {
        Reader {
            buf: vec![0; READ_BUF].into_boxed_slice(),
            start: 0,
            end: 0,
            frame: None,
            ctrl: Vec::new(),
            collect: None,
            nats: (sys == Sys::Peer).then(NatsParser::default),
        }
    }

    async fn fill(&mut self, rd: &mut OwnedReadHalf) -> std::io::Result<usize> {
        let n = rd.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n)
    }

    /// Parses what the buffer holds: the data messages completed (frames for ours, MSGs for the
    /// peer); other events into `evs`.
    fn process(&mut self, evs: &mut Vec<Ev>) -> Result<usize, String> {
        let mut msgs = 0;
        loop {
            match self.frame {
                None => {
                    let avail = &self.buf[self.start..self.end];
                    if avail.len() < 2 {
                        break;
                    }
                    let (b0, b1) = (avail[0], avail[1]);
                    if b1 & 0x80 != 0 {
                        return Err("a masked frame from the server".into());
                    }
                    if b0 & 0x70 != 0 {
                        return Err("a frame with RSV bits (an extension)".into());
                    }
                    let (header, len) = match b1 & 0x7f {
                        126 => {
                            if avail.len() < 4 {
                                break;
                            }
                            (4, u16::from_be_bytes([avail[2], avail[3]]) as usize)
                        }
                        127 => {
                            if avail.len() < 10 {
                                break;
                            }
                            (
                                10,
                                u64::from_be_bytes(avail[2..10].try_into().unwrap()) as usize,
                            )
                        }
                        n => (2, n as usize),
                    };
                    self.start += header;
                    let opcode = b0 & 0x0f;
                    if opcode >= 8 {
                        self.ctrl.clear();
                    }
                    self.frame = Some(FrameState {
                        opcode,
                        fin: b0 & 0x80 != 0,
                        remaining: len,
                    });
                }
                Some(mut f) => {
                    let take = f.remaining.min(self.end - self.start);
                    let chunk = &self.buf[self.start..self.start + take];
                    if f.opcode >= 8 {
                        self.ctrl.extend_from_slice(chunk);
                    } else {
                        if let Some(nats) = &mut self.nats {
                            msgs += nats.feed(chunk, evs);
                        }
                        if let Some(collect) = &mut self.collect {
                            collect.extend_from_slice(chunk);
                        }
                    }
                    self.start += take;
                    f.remaining -= take;
                    if f.remaining > 0 {
                        self.frame = Some(f);
                        break;
                    }
                    self.frame = None;
                    match f.opcode {
                        CLOSE => {
                            let code = if self.ctrl.len() >= 2 {
                                u16::from_be_bytes([self.ctrl[0], self.ctrl[1]])
                            } else {
                                1005
                            };
                            evs.push(Ev::Close(code));
                        }
                        PING => evs.push(Ev::Ping(std::mem::take(&mut self.ctrl))),
                        PONG => {}
                        _ if f.fin => {
                            if self.nats.is_none() {
                                msgs += 1;
                            }
                            if let Some(collect) = &mut self.collect {
                                evs.push(Ev::Text(std::mem::take(collect)));
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        Ok(msgs)
    }
}

/// A connection being set up (or churned): both halves and the reader.
struct Conn {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    reader: Reader,
    evs: Vec<Ev>,
}

const PEER_CONNECT: &[u8] =
    b"CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1,\"headers\":false,\"no_responders\":false}\r\n";

impl Conn {
    /// TCP connect and the HTTP/1.1 upgrade on `/`.
    async fn open(sys: Sys, port: u16) -> Result<Conn, String> {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (mut rd, mut wr) = stream.into_split();
        let request = format!(
            "GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        wr.write_all(request.as_bytes())
            .await
            .map_err(|e| format!("upgrade request: {e}"))?;
        let mut reader = Reader::new(sys);
        loop {
            let n = reader
                .fill(&mut rd)
                .await
                .map_err(|e| format!("upgrade response: {e}"))?;
            if n == 0 {
                return Err("closed during the upgrade".into());
            }
            let got = &reader.buf[..reader.end];
            if let Some(at) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                if !got.starts_with(b"HTTP/1.1 101") {
                    let status = String::from_utf8_lossy(&got[..at]);
                    return Err(format!(
                        "upgrade refused: {}",
                        status.lines().next().unwrap_or("")
                    ));
                }
                reader.start = at + 4;
                break;
            }
            if reader.end == reader.buf.len() {
                return Err("upgrade response too long".into());
            }
        }
        Ok(Conn {
            rd,
            wr,
            reader,
            evs: Vec::new(),
        })
    }

    /// Reads until `done` says so about an event; answers pings meanwhile.
    async fn until(&mut self, done: impl Fn(&Ev) -> Result<bool, String>) -> Result<(), String> {
        loop {
            self.reader.process(&mut self.evs)?;
            let mut finished = false;
            for ev in std::mem::take(&mut self.evs) {
                match &ev {
                    Ev::Ping(p) => {
                        let _ = self.wr.write_all(&frame(PONG, p)).await;
                    }
                    Ev::NatsPing => {
                        let _ = self.wr.write_all(&frame(BINARY, b"PONG\r\n")).await;
                    }
                    Ev::Close(code) => return Err(format!("closed by the server ({code})")),
                    Ev::NatsErr(e) => return Err(e.clone()),
                    _ => {}
                }
                finished |= done(&ev)?;
            }
            if finished {
                return Ok(());
            }
            let n = self
                .reader
                .fill(&mut self.rd)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("closed by the server".into());
            }
        }
    }

    /// Ours: subscribe to `bench.all`. The peer: CONNECT (and SUB when `sub`), then PING until PONG.
    async fn subscribe(&mut self, sys: Sys, sub: bool) -> Result<(), String> {
        match sys {
            Sys::Ours => {
                self.reader.collect = Some(Vec::new());
                self.wr
                    .write_all(&frame(TEXT, br#"{"subscribe":"bench.all"}"#))
                    .await
                    .map_err(|e| format!("subscribe: {e}"))?;
                self.until(|ev| match ev {
                    Ev::Text(t) if t.windows(4).any(|w| w == b"\"ok\"") => Ok(true),
                    Ev::Text(t) => Err(format!(
                        "subscribing answered {}",
                        String::from_utf8_lossy(t)
                    )),
                    _ => Ok(false),
                })
                .await?;
                self.reader.collect = None;
            }
            Sys::Peer => {
                let mut hello = PEER_CONNECT.to_vec();
                if sub {
                    hello.extend_from_slice(format!("SUB {SUBJECT} 1\r\n").as_bytes());
                }
                hello.extend_from_slice(b"PING\r\n");
                self.wr
                    .write_all(&frame(BINARY, &hello))
                    .await
                    .map_err(|e| format!("CONNECT: {e}"))?;
                self.until(|ev| Ok(matches!(ev, Ev::NatsPong))).await?;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The fleet.

/// Arrivals of one burst: slot k holds the latest arrival (ns) of any client's k-th message.
struct Burst {
    issued: Vec<AtomicU64>,
    arrivals: Vec<AtomicU64>,
    received: AtomicU64,
}

impl Burst {
    fn new(n: usize) -> Self {
        Burst {
            issued: (0..n).map(|_| AtomicU64::new(0)).collect(),
            arrivals: (0..n).map(|_| AtomicU64::new(0)).collect(),
            received: AtomicU64::new(0),
        }
    }

    /// Waits until `target` messages arrived, at most [`LIMIT`]; how many did.
    async fn wait_received(&self, target: u64) -> u64 {
        let deadline = Instant::now() + LIMIT;
        while self.received.load(Ordering::Relaxed) < target && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.received.load(Ordering::Relaxed)
    }
}

/// What all clients of all fleets share.
struct Shared {
    /// Bumped when a burst begins: a client that sees a new one starts counting from 0.
    epoch: AtomicU64,
    burst: Mutex<Arc<Burst>>,
    /// Data messages received in all.
    total: AtomicU64,
    /// Connections that ended other than by our own close.
    ended: AtomicUsize,
    /// Close codes the server sent.
    close_codes: Mutex<BTreeMap<u16, usize>>,
    errors: Mutex<Vec<String>>,
}

impl Shared {
    fn new() -> Arc<Self> {
        Arc::new(Shared {
            epoch: AtomicU64::new(0),
            burst: Mutex::new(Arc::new(Burst::new(0))),
            total: AtomicU64::new(0),
            ended: AtomicUsize::new(0),
            close_codes: Mutex::default(),
            errors: Mutex::default(),
        })
    }

    fn begin(&self, n: usize) -> Arc<Burst> {
        let burst = Arc::new(Burst::new(n));
        *self.burst.lock().unwrap() = Arc::clone(&burst);
        self.epoch.fetch_add(1, Ordering::SeqCst);
        burst
    }

    fn error(&self, e: String) {
        let mut errors = self.errors.lock().unwrap();
        if errors.len() < 20 {
            errors.push(e);
        }
    }

    fn closes(&self, code: u16) -> usize {
        self.close_codes
            .lock()
            .unwrap()
            .get(&code)
            .copied()
            .unwrap_or(0)
    }
}

/// A client reads and records.
const RUN: u8 = 0;
/// Reads, answers pings, but records nothing (the slow phase's baseline of the 100).
const QUIET: u8 = 1;
/// Does not read at all (its socket stays open).
const PAUSED: u8 = 2;
const STOP: u8 = 3;

struct Ctl {
    mode: AtomicU8,
    wake: Notify,
}

impl Ctl {
    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
        self.wake.notify_one();
    }
}

struct Client {
    ctl: Arc<Ctl>,
    wr: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    task: tokio::task::JoinHandle<()>,
}

impl Client {
    /// Stops reading, sends a Close and shuts the socket down (without waiting for the server).
    async fn close(self) {
        self.ctl.set(STOP);
        let _ = self.task.await;
        let mut wr = self.wr.lock().await;
        let _ = wr.write_all(&close_frame()).await;
        let _ = wr.shutdown().await;
    }
}

async fn run_client(
    mut rd: OwnedReadHalf,
    mut reader: Reader,
    wr: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    ctl: Arc<Ctl>,
    shared: Arc<Shared>,
) {
    let mut epoch = u64::MAX;
    let mut burst = Arc::new(Burst::new(0));
    let mut k = 0usize;
    let mut evs = Vec::new();
    loop {
        let woken = ctl.wake.notified();
        match ctl.mode.load(Ordering::SeqCst) {
            STOP => return,
            PAUSED => {
                woken.await;
                continue;
            }
            _ => {}
        }
        let read = tokio::select! {
            biased;
            _ = woken => continue,
            read = reader.fill(&mut rd) => read,
        };
        match read {
            Ok(0) | Err(_) => {
                shared.ended.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(_) => {}
        }
        let msgs = match reader.process(&mut evs) {
            Ok(msgs) => msgs,
            Err(e) => {
                shared.error(e);
                shared.ended.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        if msgs > 0 && ctl.mode.load(Ordering::Relaxed) == RUN {
            let now = now_ns();
            let e = shared.epoch.load(Ordering::SeqCst);
            if e != epoch {
                burst = Arc::clone(&shared.burst.lock().unwrap());
                epoch = e;
                k = 0;
            }
            let slots = &burst.arrivals;
            for slot in slots.iter().skip(k).take(msgs) {
                slot.fetch_max(now, Ordering::Relaxed);
            }
            k += msgs;
            burst.received.fetch_add(msgs as u64, Ordering::Relaxed);
            shared.total.fetch_add(msgs as u64, Ordering::Relaxed);
        }
        for ev in evs.drain(..) {
            match ev {
                Ev::Ping(p) => {
                    let _ = wr.lock().await.write_all(&frame(PONG, &p)).await;
                }
                Ev::NatsPing => {
                    let _ = wr.lock().await.write_all(&frame(BINARY, b"PONG\r\n")).await;
                }
                Ev::Close(code) => {
                    *shared.close_codes.lock().unwrap().entry(code).or_default() += 1;
                    shared.ended.fetch_add(1, Ordering::Relaxed);
                    let _ = wr.lock().await.write_all(&close_frame()).await;
                    return;
                }
                Ev::NatsErr(e) => shared.error(e),
                Ev::NatsPong | Ev::Text(_) => {}
            }
        }
    }
}

struct Fleet {
    clients: Vec<Client>,
    failed: usize,
}

impl Fleet {
    /// Connects `n` clients, `CONNECT_AT_ONCE` at a time, each subscribed to `bench.all`.
    async fn connect(sys: Sys, port: u16, n: usize, shared: &Arc<Shared>) -> Fleet {
        let results = futures::stream::iter(0..n)
            .map(|_| async move {
                let mut last = String::new();
                for _ in 0..3 {
                    let attempt = tokio::time::timeout(Duration::from_secs(20), async {
                        let mut conn = Conn::open(sys, port).await?;
                        conn.subscribe(sys, true).await?;
                        Ok::<_, String>(conn)
                    })
                    .await
                    .unwrap_or_else(|_| Err("no subscription within 20 s".into()));
                    match attempt {
                        Ok(conn) => return Ok(conn),
                        Err(e) => last = e,
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(last)
            })
            .buffer_unordered(CONNECT_AT_ONCE)
            .collect::<Vec<_>>()
            .await;
        let mut fleet = Fleet {
            clients: Vec::with_capacity(n),
            failed: 0,
        };
        for result in results {
            match result {
                Ok(conn) => {
                    let ctl = Arc::new(Ctl {
                        mode: AtomicU8::new(RUN),
                        wake: Notify::new(),
                    });
                    let wr = Arc::new(tokio::sync::Mutex::new(conn.wr));
                    let task = tokio::spawn(run_client(
                        conn.rd,
                        conn.reader,
                        Arc::clone(&wr),
                        Arc::clone(&ctl),
                        Arc::clone(shared),
                    ));
                    fleet.clients.push(Client { ctl, wr, task });
                }
                Err(e) => {
                    fleet.failed += 1;
                    shared.error(format!("connect: {e}"));
                }
            }
        }
        fleet
    }

    /// Closes all clients but the first `keep`.
    async fn shrink(&mut self, keep: usize) {
        let leaving: Vec<Client> = self.clients.drain(keep.min(self.clients.len())..).collect();
        futures::stream::iter(leaving)
            .map(Client::close)
            .buffer_unordered(256)
            .collect::<Vec<_>>()
            .await;
    }
}

// ---------------------------------------------------------------------------------------------
// The two systems.

struct Target<'a> {
    sys: Sys,
    port: u16,
    /// The provider (ours) or nats-server (the peer).
    server_pid: String,
    nats_pid: String,
    nats_url: String,
    component: &'a PlayedComponent,
    publisher: async_nats::Client,
    provider: &'a ProviderProcess,
    shared: Arc<Shared>,
}

#[derive(Clone, Copy)]
struct Cpu {
    at: Instant,
    server: f64,
    bench: f64,
    nats: f64,
}

#[derive(Serialize)]
struct Row {
    system: &'static str,
    phase: String,
    value: f64,
    unit: &'static str,
    notes: String,
    wall_s: f64,
    /// The provider (ours) or nats-server (the peer).
    server_cpu_s: f64,
    /// This process: the clients, the played component, the publisher.
    bench_cpu_s: f64,
    /// nats-server (for ours: the lattice; for the peer: the server itself again).
    nats_cpu_s: f64,
}

impl Target<'_> {
    fn cpu(&self) -> Cpu {
        Cpu {
            at: Instant::now(),
            server: cpu_of(&self.server_pid),
            bench: cpu_of("self"),
            nats: cpu_of(&self.nats_pid),
        }
    }

    fn rss(&self) -> u64 {
        rss_of(&self.server_pid)
    }

    fn row(
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
    async fn publish(&self, body: Bytes) -> bool {
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
    async fn publishes(
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
                    .buffer_unordered(IN_FLIGHT)
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
    async fn fanout(
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
    async fn slow_run(
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

fn size_name(size: usize) -> String {
    if size >= 1024 && size.is_multiple_of(1024) {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

/// Delivered msgs/s (first issue to last arrival), p50 and p99 of last arrival - issue (ms),
/// and that span (s).
fn burst_figures(burst: &Burst, got: u64) -> (f64, f64, f64, f64) {
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

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn stats(component: &PlayedComponent) -> serde_json::Value {
    component.stats("default").await["provider"].clone()
}

async fn stat(component: &PlayedComponent, key: &str) -> u64 {
    stats(component).await[key].as_u64().unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// The phases, for one system.

async fn idle(t: &Target<'_>, rows: &mut Vec<Row>, clients: usize) -> Fleet {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = t.rss();
    let from = t.cpu();
    let fleet = Fleet::connect(t.sys, t.port, clients, &t.shared).await;
    let to = t.cpu();
    let connected = fleet.clients.len();
    let counted = match t.sys {
        Sys::Ours => stat(t.component, "clients").await.to_string(),
        Sys::Peer => "-".into(),
    };
    rows.push(t.row(
        format!("connect {clients} clients, {CONNECT_AT_ONCE} at a time"),
        connected as f64 / (to.at - from.at).as_secs_f64(),
        "clients/s",
        format!(
            "{connected} connected and subscribed, {} failed; $ws.stats clients {counted}",
            fleet.failed
        ),
        from,
        to,
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_3 = t.rss();
    let from = t.cpu();
    let per = |rss: u64| rss.saturating_sub(rss_before) as f64 / connected.max(1) as f64;
    rows.push(t.row(
        "idle RSS, 3 s after the last connect",
        per(rss_3),
        "KiB/client",
        format!("server RSS {rss_before} -> {rss_3} KiB"),
        from,
        from,
    ));
    tokio::time::sleep(Duration::from_secs(10)).await;
    let to = t.cpu();
    let rss_13 = t.rss();
    rows.push(t.row(
        "idle RSS, 10 s later",
        per(rss_13),
        "KiB/client",
        format!("server RSS {rss_before} -> {rss_13} KiB"),
        to,
        to,
    ));
    rows.push(t.row(
        format!("idle CPU over 10 s, {connected} clients"),
        (to.server - from.server) / (to.at - from.at).as_secs_f64() * 100.0,
        "% of a core",
        format!(
            "{} messages, {} connections ended meanwhile",
            t.shared.total.load(Ordering::Relaxed),
            t.shared.ended.load(Ordering::Relaxed)
        ),
        from,
        to,
    ));
    fleet
}

async fn fanout(t: &Target<'_>, rows: &mut Vec<Row>, fleet: &mut Fleet) {
    for clients in [fleet.clients.len(), 1000.min(fleet.clients.len())] {
        if clients < fleet.clients.len() {
            fleet.shrink(clients).await;
            if t.sys == Sys::Ours {
                let deadline = Instant::now() + Duration::from_secs(20);
                while stat(t.component, "clients").await as usize > clients
                    && Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let clients = fleet.clients.len();
        t.fanout(rows, clients, 16, 200, None, "burst").await;
        t.fanout(rows, clients, 1024, 200, None, "burst").await;
        t.fanout(
            rows,
            clients,
            16,
            100,
            Some(Duration::from_millis(10)),
            "tick 10 ms",
        )
        .await;
    }
}

async fn slow(t: &Target<'_>, rows: &mut Vec<Row>, fleet: &mut Fleet, n: usize) {
    let clients = fleet.clients.len();
    let readers = clients.saturating_sub(100);
    let (all_rate, got, target, failed, from, to) = t.slow_run(fleet, n, QUIET).await;
    rows.push(t.row(
        format!("slow: 1 KiB x {n} to {clients}, all reading: {readers}'s rate"),
        all_rate,
        "msgs/s",
        format!("{got} of {target} messages, {failed} publishes failed"),
        from,
        to,
    ));
    let closes_before = t.shared.closes(1008);
    let ended_before = t.shared.ended.load(Ordering::Relaxed);
    let stat_before = match t.sys {
        Sys::Ours => stat(t.component, "slow_consumer_closes").await,
        Sys::Peer => 0,
    };
    let (slow_rate, got, target, failed, from, to) = t.slow_run(fleet, n, PAUSED).await;
    let server_rss = t.rss();
    // The 100 read again (what is left): a close the server sent them shows now.
    for client in &fleet.clients[..100.min(clients)] {
        client.ctl.set(QUIET);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let closed = t.shared.closes(1008) - closes_before;
    let ended = t.shared.ended.load(Ordering::Relaxed) - ended_before;
    let stat_closes = match t.sys {
        Sys::Ours => (stat(t.component, "slow_consumer_closes").await - stat_before).to_string(),
        Sys::Peer => "-".into(),
    };
    rows.push(t.row(
        format!("slow: 1 KiB x {n} to {clients}, 100 not reading: {readers}'s rate"),
        slow_rate,
        "msgs/s",
        format!(
            "{got} of {target} messages, {failed} publishes failed; of the 100, once reading again: {closed} got a 1008 Close, {ended} connections ended (slow_consumer_closes +{stat_closes}); server RSS then {server_rss} KiB"
        ),
        from,
        to,
    ));
    rows.push(t.row(
        "slow: rate with 100 not reading / all reading",
        slow_rate / all_rate,
        "ratio",
        String::new(),
        from,
        to,
    ));
}

async fn inbound(t: &Target<'_>, rows: &mut Vec<Row>, fleet: &Fleet, rate: usize, secs: usize) {
    let clients = fleet.clients.len();
    let each = rate * secs;
    let total = clients * each;
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    // The peer's arrivals: a NATS subscriber here, latency from the body's timestamp.
    let counted = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let mut subscriber = None;
    if t.sys == Sys::Peer {
        let mut sub = t.publisher.subscribe(INBOUND_SUBJECT).await.unwrap();
        t.publisher.flush().await.unwrap();
        let (counted, latencies) = (Arc::clone(&counted), Arc::clone(&latencies));
        subscriber = Some(tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let now = now_ns();
                if let Some(sent) = std::str::from_utf8(&msg.payload)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                {
                    latencies
                        .lock()
                        .unwrap()
                        .push(now.saturating_sub(sent) as f64 / 1e6);
                }
                counted.fetch_add(1, Ordering::Relaxed);
            }
        }));
    } else {
        t.component.set_behaviour(Behaviour {
            count_only: true,
            ..Default::default()
        });
    }
    let before = t.component.count();
    let arrived = || match t.sys {
        Sys::Ours => t.component.count() - before,
        Sys::Peer => counted.load(Ordering::Relaxed),
    };
    let from = t.cpu();
    let t0 = tokio::time::Instant::now() + Duration::from_millis(20);
    let sys = t.sys;
    let senders: Vec<_> = fleet
        .clients
        .iter()
        .enumerate()
        .map(|(i, client)| {
            let wr = Arc::clone(&client.wr);
            let mut next = t0 + period.mul_f64(i as f64 / clients as f64);
            tokio::spawn(async move {
                let mut sent = 0;
                for _ in 0..each {
                    tokio::time::sleep_until(next).await;
                    next += period;
                    let stamp = format!("{:016}", now_ns());
                    let payload = match sys {
                        Sys::Ours => {
                            common::envelope(INBOUND_SUBJECT, stamp.as_bytes(), None).into_bytes()
                        }
                        Sys::Peer => {
                            format!("PUB {INBOUND_SUBJECT} 16\r\n{stamp}\r\n").into_bytes()
                        }
                    };
                    let opcode = if sys == Sys::Ours { TEXT } else { BINARY };
                    if wr
                        .lock()
                        .await
                        .write_all(&frame(opcode, &payload))
                        .await
                        .is_err()
                    {
                        break;
                    }
                    sent += 1;
                }
                sent
            })
        })
        .collect();
    let start = Instant::now();
    let (mut got, mut last_arrival) = (0, Duration::ZERO);
    let mut sent = None;
    let mut senders = Some(senders);
    while start.elapsed() < LIMIT {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = arrived();
        if now > got {
            got = now;
            last_arrival = start.elapsed();
        }
        if sent.is_none() && senders.as_ref().unwrap().iter().all(|s| s.is_finished()) {
            let mut n = 0;
            for s in senders.take().unwrap() {
                n += s.await.unwrap_or(0);
            }
            sent = Some(n);
        }
        if got >= total
            || (sent.is_some() && start.elapsed() - last_arrival > Duration::from_secs(12))
        {
            break;
        }
    }
    let to = t.cpu();
    if let Some(s) = subscriber {
        s.abort();
    }
    let sent = sent.map_or("?".to_string(), |n| n.to_string());
    let mut lat = std::mem::take(&mut *latencies.lock().unwrap());
    lat.sort_by(f64::total_cmp);
    let phase = format!("inbound 16 B, {clients} clients x {rate}/s for {secs} s");
    let offered = (clients * rate) as f64;
    rows.push(t.row(
        format!("{phase}: arrived"),
        got as f64 / last_arrival.saturating_sub(Duration::from_millis(20)).as_secs_f64(),
        "msgs/s",
        format!(
            "{got} of {total} arrived ({sent} sent), the last after {:.2} s; offered {offered:.0}/s; {}",
            last_arrival.as_secs_f64(),
            match t.sys {
                Sys::Ours => "latency not measured (the played component keeps no arrival times)",
                Sys::Peer => "at a NATS subscriber in the bench",
            }
        ),
        from,
        to,
    ));
    if t.sys == Sys::Ours {
        for p in ["p50", "p99"] {
            rows.push(t.row(
                format!("{phase}: {p}"),
                f64::NAN,
                "ms",
                "not measured".into(),
                from,
                to,
            ));
        }
    } else {
        rows.push(t.row(
            format!("{phase}: p50"),
            percentile(&lat, 0.5),
            "ms",
            "send to arrival".into(),
            from,
            to,
        ));
        rows.push(t.row(
            format!("{phase}: p99"),
            percentile(&lat, 0.99),
            "ms",
            "send to arrival".into(),
            from,
            to,
        ));
    }
}

/// The lattice's ceiling for ours: handle-message called directly, 64 in flight; msgs/s.
async fn ceiling(t: &Target<'_>, rows: &mut Vec<Row>, n: usize) -> f64 {
    t.component.set_behaviour(Behaviour {
        count_only: true,
        ..Default::default()
    });
    let nats = Arc::new(delivery_nats::connect(t.nats_url.as_str()).await.unwrap());
    let client =
        delivery_wrpc::Client::new(nats, format!("{}.{COMPONENT}", t.provider.lattice), None)
            .await
            .unwrap();
    let msg = hc::wasmcloud::messaging::types::BrokerMessage {
        subject: INBOUND_SUBJECT.into(),
        body: Bytes::from_static(b"0000000000000000"),
        reply_to: None,
    };
    let before = t.component.count();
    let from = t.cpu();
    let failed = futures::stream::iter(0..n)
        .map(|_| {
            let call = hc::wasmcloud::messaging::handler::handle_message(&client, None, &msg);
            async move {
                matches!(
                    tokio::time::timeout(Duration::from_secs(10), call).await,
                    Ok(Ok(Ok(())))
                )
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .filter(|ok| futures::future::ready(!*ok))
        .count()
        .await;
    let to = t.cpu();
    let rate = (n - failed) as f64 / (to.at - from.at).as_secs_f64();
    rows.push(t.row(
        format!("lattice ceiling: handle-message x {n} direct, {IN_FLIGHT} in flight"),
        rate,
        "msgs/s",
        format!(
            "{failed} failed, {} counted by the component (server CPU = the idle provider)",
            t.component.count() - before
        ),
        from,
        to,
    ));
    rate
}

async fn churn(t: &Target<'_>, rows: &mut Vec<Row>, secs: u64) {
    let rss_before = t.rss();
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let from = t.cpu();
    let end = Instant::now() + Duration::from_secs(secs);
    let (sys, port) = (t.sys, t.port);
    let workers: Vec<_> = (0..CONNECT_AT_ONCE)
        .map(|_| {
            let (ok, failed, errors) = (Arc::clone(&ok), Arc::clone(&failed), Arc::clone(&errors));
            tokio::spawn(async move {
                while Instant::now() < end {
                    let one = tokio::time::timeout(Duration::from_secs(10), async {
                        let mut conn = Conn::open(sys, port).await?;
                        conn.subscribe(sys, false).await?;
                        conn.wr
                            .write_all(&close_frame())
                            .await
                            .map_err(|e| format!("close: {e}"))?;
                        // Until the server closes: its Close, then its end of the TCP connection.
                        let _ = tokio::time::timeout(Duration::from_secs(2), async {
                            loop {
                                match conn.reader.fill(&mut conn.rd).await {
                                    Ok(0) | Err(_) => break,
                                    Ok(_) => {
                                        let _ = conn.reader.process(&mut conn.evs);
                                        conn.evs.clear();
                                    }
                                }
                            }
                        })
                        .await;
                        Ok::<_, String>(())
                    })
                    .await
                    .unwrap_or_else(|_| Err("no answer within 10 s".into()));
                    match one {
                        Ok(()) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            let e: String = e.chars().take(80).collect();
                            *errors.lock().unwrap().entry(e).or_default() += 1;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
    let to = t.cpu();
    let rss_after = t.rss();
    let ok = ok.load(Ordering::Relaxed);
    let errors = errors.lock().unwrap().clone();
    rows.push(t.row(
        format!("churn: {CONNECT_AT_ONCE} workers connect, subscribe, close for {secs} s"),
        ok as f64 / (to.at - from.at).as_secs_f64(),
        "conns/s",
        format!(
            "{ok} connections, {} failed {errors:?}",
            failed.load(Ordering::Relaxed)
        ),
        from,
        to,
    ));
    rows.push(t.row(
        "churn: server RSS right after",
        rss_after as f64,
        "KiB",
        format!("{rss_before} KiB before the churn"),
        to,
        to,
    ));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let later = t.cpu();
    rows.push(t.row(
        "churn: server RSS 5 s later",
        t.rss() as f64,
        "KiB",
        String::new(),
        to,
        later,
    ));
}

async fn run_system(
    t: &Target<'_>,
    rows: &mut Vec<Row>,
    phase: &dyn Fn(&str) -> bool,
    clients: usize,
) {
    println!("--- {} ---", t.sys.name());
    let mut fleet = None;
    if phase("idle") || phase("fanout") {
        let mut f = idle(t, rows, clients).await;
        if phase("fanout") {
            fanout(t, rows, &mut f).await;
        }
        fleet = Some(f);
    }
    if phase("slow") {
        let mut f = match fleet.take() {
            Some(mut f) if f.clients.len() >= 1000 => {
                f.shrink(1000).await;
                f
            }
            other => {
                if let Some(mut f) = other {
                    f.shrink(0).await;
                }
                Fleet::connect(t.sys, t.port, 1000, &t.shared).await
            }
        };
        slow(t, rows, &mut f, env_usize("BENCH_SLOW_PUBLISHES", 6000)).await;
        f.shrink(0).await;
    }
    if let Some(mut f) = fleet.take() {
        f.shrink(0).await;
    }
    if phase("inbound") {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let f = Fleet::connect(t.sys, t.port, 1000, &t.shared).await;
        inbound(
            t,
            rows,
            &f,
            env_usize("BENCH_INBOUND_RATE", 40),
            env_usize("BENCH_INBOUND_SECS", 5),
        )
        .await;
        let mut f = f;
        f.shrink(0).await;
        if t.sys == Sys::Ours {
            let ceiling_rate = ceiling(t, rows, env_usize("BENCH_CEILING_CALLS", 20000)).await;
            let inbound_rate = rows
                .iter()
                .rev()
                .find(|r| {
                    r.system == "ours" && r.phase.starts_with("inbound") && r.unit == "msgs/s"
                })
                .map_or(f64::NAN, |r| r.value);
            let now = t.cpu();
            rows.push(t.row(
                "inbound / lattice ceiling",
                inbound_rate / ceiling_rate,
                "ratio",
                String::new(),
                now,
                now,
            ));
        }
    }
    if phase("churn") {
        tokio::time::sleep(Duration::from_secs(1)).await;
        churn(t, rows, env_usize("BENCH_CHURN_SECS", 10) as u64).await;
    }
}

fn fmt_value(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_nan() => "-".into(),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
        None => "-".into(),
    }
}

#[tokio::main]
async fn main() {
    START.get_or_init(Instant::now);
    let nofile = raise_nofile();
    let clients = env_usize("BENCH_CLIENTS", 10_000);
    let phases =
        std::env::var("BENCH_PHASES").unwrap_or_else(|_| "idle,fanout,slow,inbound,churn".into());
    let phase = |name: &str| phases.split(',').any(|p| p.trim() == name);
    if (nofile as usize) < clients + 512 {
        eprintln!("RLIMIT_NOFILE is {nofile}: too low for {clients} clients");
    }

    let ws_port = free_port();
    let nats = NatsServer::start_with_config(&format!(
        "websocket {{\n  listen: \"127.0.0.1:{ws_port}\"\n  no_tls: true\n}}\n"
    ))
    .await;
    let nats_pid = nats.pid().expect("nats-server runs").to_string();
    let port = free_port();
    let provider = listener(
        &nats,
        COMPONENT,
        &[("path", "/"), ("max_clients", "20000")],
        format!("127.0.0.1:{port}"),
    )
    .await;
    let component = PlayedComponent::start(&provider, &nats.url, COMPONENT).await;
    // The listener answers once the session runs: a publish that succeeds says so.
    component
        .publish_when_ready("default", "bench.warm", &b""[..], LIMIT)
        .await;
    println!(
        "scale: {clients} clients, provider pid {} on 127.0.0.1:{port}, nats-server pid {nats_pid} (websocket 127.0.0.1:{ws_port}), RLIMIT_NOFILE {nofile}, phases {phases}",
        provider.pid()
    );

    let mut rows = Vec::new();
    let mut ends = serde_json::Map::new();
    for sys in [Sys::Ours, Sys::Peer] {
        let t = Target {
            sys,
            port: if sys == Sys::Ours { port } else { ws_port },
            server_pid: match sys {
                Sys::Ours => provider.pid().to_string(),
                Sys::Peer => nats_pid.clone(),
            },
            nats_pid: nats_pid.clone(),
            nats_url: nats.url.clone(),
            component: &component,
            publisher: nats.client().await,
            provider: &provider,
            shared: Shared::new(),
        };
        run_system(&t, &mut rows, &phase, clients).await;
        let errors = t.shared.errors.lock().unwrap().clone();
        let codes = t.shared.close_codes.lock().unwrap().clone();
        let mut end = serde_json::json!({
            "connections_ended_by_server": t.shared.ended.load(Ordering::Relaxed),
            "close_codes": codes,
            "first_errors": errors,
        });
        if sys == Sys::Ours {
            end["stats"] = stats(&component).await;
        }
        println!("{} at the end: {end}", sys.name());
        ends.insert(sys.name().into(), end);
    }

    println!();
    println!("| phase | ours | peer (nats-server) | ours / peer | unit |");
    println!("|---|--:|--:|--:|---|");
    let mut phases_seen: Vec<(&str, &str)> = Vec::new();
    for r in &rows {
        if !phases_seen.iter().any(|(p, _)| *p == r.phase) {
            phases_seen.push((&r.phase, r.unit));
        }
    }
    for (p, unit) in phases_seen {
        let value = |sys: &str| {
            rows.iter()
                .find(|r| r.phase == p && r.system == sys)
                .map(|r| r.value)
        };
        let (ours, peer) = (value("ours"), value("peer"));
        let ratio = match (ours, peer) {
            (Some(o), Some(p)) if p != 0.0 => Some(o / p),
            _ => None,
        };
        println!(
            "| {p} | {} | {} | {} | {unit} |",
            fmt_value(ours),
            fmt_value(peer),
            fmt_value(ratio)
        );
    }

    let logs = provider.logs.all();
    let warned: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    println!();
    println!("provider log: {} warn/error lines", warned.len());
    for line in warned.iter().take(5) {
        println!("  {}", &line[..line.len().min(300)]);
    }

    let json = serde_json::json!({
        "clients": clients,
        "rlimit_nofile": nofile,
        "rows": rows,
        "end": ends,
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(
        dir.join("scale.json"),
        serde_json::to_vec_pretty(&json).unwrap(),
    );
    let _ = std::fs::write(dir.join("scale-provider.log"), logs);
}
