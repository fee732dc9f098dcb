//! The scale bench's WebSocket clients: a hand-written, minimal client (masked frames, no
//! extensions) so that 10,000 of them cost little, each reading its socket and counting what
//! arrives, and the fleet that connects, pauses and stops them; also the NATS protocol parser of
//! the ceiling's subscribers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::*;
use futures::StreamExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

pub(crate) static START: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the bench started.
pub(crate) fn now_ns() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

// ---------------------------------------------------------------------------------------------
// /proc.

/// RLIMIT_NOFILE's soft limit raised to the hard one (the children inherit it); the limit then.
pub(crate) fn raise_nofile() -> u64 {
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

pub(crate) const TEXT: u8 = 1;
pub(crate) const BINARY: u8 = 2;
pub(crate) const CLOSE: u8 = 8;
pub(crate) const PING: u8 = 9;
pub(crate) const PONG: u8 = 10;

/// A masking key: unpredictable enough for a bench (servers do not check).
pub(crate) fn mask() -> [u8; 4] {
    static NEXT: AtomicU64 = AtomicU64::new(0x2545_f491_4f6c_dd1d);
    let x = NEXT.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
    let x = (x ^ (x >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let b = x.to_le_bytes();
    [b[0], b[1], b[2], b[3]]
}

/// A client's frame: FIN, masked.
pub(crate) fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
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

pub(crate) fn close_frame() -> Vec<u8> {
    frame(CLOSE, &1000u16.to_be_bytes())
}

/// What the reader saw besides data messages (those it only counts).
pub(crate) enum Ev {
    /// A whole text or binary message, while collecting (ours, until subscribed).
    Text(Vec<u8>),
    Ping(Vec<u8>),
    Close(u16),
    NatsPing,
    NatsPong,
    NatsErr(String),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Sys {
    Ours,
    Peer,
}

impl Sys {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Sys::Ours => "ours",
            Sys::Peer => "peer",
        }
    }
}

/// NATS's protocol in the WebSocket payload: counts `MSG`s, skipping their payloads.
#[derive(Default)]
pub(crate) struct NatsParser {
    /// Payload bytes (and its CRLF) still to skip of the current MSG.
    pub(crate) skip: usize,
    pub(crate) line: Vec<u8>,
}

impl NatsParser {
    pub(crate) fn feed(&mut self, mut chunk: &[u8], evs: &mut Vec<Ev>) -> usize {
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

    pub(crate) fn line_done(&mut self, evs: &mut Vec<Ev>) {
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
pub(crate) struct FrameState {
    pub(crate) opcode: u8,
    pub(crate) fin: bool,
    pub(crate) remaining: usize,
}

/// The frame reader: one reused buffer; data payloads are consumed as they come (counted, or fed
/// to the NATS parser), control payloads kept.
pub(crate) struct Reader {
    pub(crate) buf: Box<[u8]>,
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) frame: Option<FrameState>,
    pub(crate) ctrl: Vec<u8>,
    pub(crate) collect: Option<Vec<u8>>,
    pub(crate) nats: Option<NatsParser>,
}

impl Reader {
    pub(crate) fn new(sys: Sys) -> Self {
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

    pub(crate) async fn fill(&mut self, rd: &mut OwnedReadHalf) -> std::io::Result<usize> {
        let n = rd.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n)
    }

    /// Parses what the buffer holds: the data messages completed (frames for ours, MSGs for the
    /// peer); other events into `evs`.
    pub(crate) fn process(&mut self, evs: &mut Vec<Ev>) -> Result<usize, String> {
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
pub(crate) struct Conn {
    pub(crate) rd: OwnedReadHalf,
    pub(crate) wr: OwnedWriteHalf,
    pub(crate) reader: Reader,
    pub(crate) evs: Vec<Ev>,
}

pub(crate) const PEER_CONNECT: &[u8] =
    b"CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1,\"headers\":false,\"no_responders\":false}\r\n";

impl Conn {
    /// TCP connect and the HTTP/1.1 upgrade on `/`.
    pub(crate) async fn open(sys: Sys, port: u16) -> Result<Conn, String> {
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
    pub(crate) async fn until(
        &mut self,
        done: impl Fn(&Ev) -> Result<bool, String>,
    ) -> Result<(), String> {
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
    pub(crate) async fn subscribe(&mut self, sys: Sys, sub: bool) -> Result<(), String> {
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
pub(crate) struct Burst {
    pub(crate) issued: Vec<AtomicU64>,
    pub(crate) arrivals: Vec<AtomicU64>,
    pub(crate) received: AtomicU64,
}

impl Burst {
    pub(crate) fn new(n: usize) -> Self {
        Burst {
            issued: (0..n).map(|_| AtomicU64::new(0)).collect(),
            arrivals: (0..n).map(|_| AtomicU64::new(0)).collect(),
            received: AtomicU64::new(0),
        }
    }

    /// Waits until `target` messages arrived, at most [`LIMIT`]; how many did.
    pub(crate) async fn wait_received(&self, target: u64) -> u64 {
        let deadline = Instant::now() + LIMIT;
        while self.received.load(Ordering::Relaxed) < target && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.received.load(Ordering::Relaxed)
    }
}

/// What all clients of all fleets share.
pub(crate) struct Shared {
    /// Bumped when a burst begins: a client that sees a new one starts counting from 0.
    pub(crate) epoch: AtomicU64,
    pub(crate) burst: Mutex<Arc<Burst>>,
    /// Data messages received in all.
    pub(crate) total: AtomicU64,
    /// Connections that ended other than by our own close.
    pub(crate) ended: AtomicUsize,
    /// Close codes the server sent.
    pub(crate) close_codes: Mutex<BTreeMap<u16, usize>>,
    pub(crate) errors: Mutex<Vec<String>>,
}

impl Shared {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Shared {
            epoch: AtomicU64::new(0),
            burst: Mutex::new(Arc::new(Burst::new(0))),
            total: AtomicU64::new(0),
            ended: AtomicUsize::new(0),
            close_codes: Mutex::default(),
            errors: Mutex::default(),
        })
    }

    pub(crate) fn begin(&self, n: usize) -> Arc<Burst> {
        let burst = Arc::new(Burst::new(n));
        *self.burst.lock().unwrap() = Arc::clone(&burst);
        self.epoch.fetch_add(1, Ordering::SeqCst);
        burst
    }

    pub(crate) fn error(&self, e: String) {
        let mut errors = self.errors.lock().unwrap();
        if errors.len() < 20 {
            errors.push(e);
        }
    }

    pub(crate) fn closes(&self, code: u16) -> usize {
        self.close_codes
            .lock()
            .unwrap()
            .get(&code)
            .copied()
            .unwrap_or(0)
    }
}

/// A client reads and records.
pub(crate) const RUN: u8 = 0;
/// Reads, answers pings, but records nothing (the slow phase's baseline of the 100).
pub(crate) const QUIET: u8 = 1;
/// Does not read at all (its socket stays open).
pub(crate) const PAUSED: u8 = 2;
pub(crate) const STOP: u8 = 3;

pub(crate) struct Ctl {
    pub(crate) mode: AtomicU8,
    pub(crate) wake: Notify,
}

impl Ctl {
    pub(crate) fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
        self.wake.notify_one();
    }
}

pub(crate) struct Client {
    pub(crate) ctl: Arc<Ctl>,
    pub(crate) wr: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    pub(crate) task: tokio::task::JoinHandle<()>,
}

impl Client {
    /// Stops reading, sends a Close and shuts the socket down (without waiting for the server).
    pub(crate) async fn close(self) {
        self.ctl.set(STOP);
        let _ = self.task.await;
        let mut wr = self.wr.lock().await;
        let _ = wr.write_all(&close_frame()).await;
        let _ = wr.shutdown().await;
    }
}

pub(crate) async fn run_client(
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

pub(crate) struct Fleet {
    pub(crate) clients: Vec<Client>,
    pub(crate) failed: usize,
}

impl Fleet {
    /// Connects `n` clients, `CONNECT_AT_ONCE` at a time, each subscribed to `bench.all`.
    pub(crate) async fn connect(sys: Sys, port: u16, n: usize, shared: &Arc<Shared>) -> Fleet {
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
    pub(crate) async fn shrink(&mut self, keep: usize) {
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
