//! Real WebSocket servers on 127.0.0.1: an echo server, and a recorder that records frames and
//! handshake headers and can push frames or drop the connection; each also over TLS (`wss://`,
//! tokio-rustls with a config from `certs`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderMap;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
pub use tokio_tungstenite::tungstenite::Message;

use super::wait::Counter;

/// What a server saw, in order.
#[derive(Debug, Clone)]
pub enum Event {
    /// A client completed the handshake with these headers.
    Connected { conn: usize, headers: HeaderMap },
    /// A data frame from the client.
    Frame { conn: usize, message: Message },
    /// The client sent a Close frame.
    Closed {
        conn: usize,
        frame: Option<CloseFrame>,
    },
    /// The client answered a ping.
    Pong { conn: usize },
    /// The connection is gone (after a Close, an error or a drop).
    Ended { conn: usize },
    /// The TLS handshake failed on the server's side.
    TlsFailed { conn: usize, error: String },
}

enum Command {
    Send(Message),
    /// Written one after another and flushed once.
    SendMany(Vec<Message>),
    Drop,
    Stall,
    /// Sends a Close frame with this code and reason, then drops the connection (works while
    /// stalled: the server still writes, it only stopped reading).
    Close(u16, String),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Echo,
    Record,
    Respond,
    Ack,
}

pub struct WsServer {
    pub addr: SocketAddr,
    tls: bool,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    sent: Arc<std::sync::atomic::AtomicUsize>,
    frames: Arc<Counter>,
    /// When each data frame arrived, in order.
    arrivals: Arc<Mutex<Vec<std::time::Instant>>>,
    events: tokio::sync::Mutex<mpsc::UnboundedReceiver<Event>>,
    conns: Arc<Mutex<BTreeMap<usize, mpsc::UnboundedSender<Command>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl WsServer {
    /// Echoes every data frame back on the same connection.
    pub async fn echo() -> Self {
        Self::start(Mode::Echo).await
    }

    /// Answers every envelope that has a `reply_to` with `{subject: reply_to, body}` (the same
    /// body), like a service behind the socket would.
    pub async fn responder() -> Self {
        Self::start(Mode::Respond).await
    }

    /// Acknowledges every envelope that carries a string `id` with `{"ack": "<id>"}`.
    pub async fn acking() -> Self {
        Self::start(Mode::Ack).await
    }

    /// An acknowledging server on a given port (to restart one).
    pub async fn acking_on(port: u16) -> Self {
        Self::start_on(Mode::Ack, port).await
    }

    /// Records frames and answers nothing; frames are pushed with [`WsServer::push`].
    pub async fn recorder() -> Self {
        Self::start(Mode::Record).await
    }

    /// A recorder on a given port: a server that comes back after a restart.
    pub async fn recorder_on(port: u16) -> Self {
        Self::start_on(Mode::Record, port).await
    }

    /// A recorder behind TLS with `config` (see `certs::server_config`).
    pub async fn recorder_tls(config: Arc<rustls::ServerConfig>) -> Self {
        Self::listen(Mode::Record, 0, Some(config), false).await
    }

    /// An echo server behind TLS with `config`.
    pub async fn echo_tls(config: Arc<rustls::ServerConfig>) -> Self {
        Self::listen(Mode::Echo, 0, Some(config), false).await
    }

    /// A recorder that only counts the data frames it gets (no events for them): a sink for
    /// benchmarks. See [`WsServer::frames`].
    pub async fn counter() -> Self {
        Self::listen(Mode::Record, 0, None, true).await
    }

    /// A responder that only counts the frames it answers (no events for them).
    pub async fn quiet_responder() -> Self {
        Self::listen(Mode::Respond, 0, None, true).await
    }

    /// Accepts every upgrade, then closes the connection at once with `code` and `reason`.
    pub async fn closing(code: u16, reason: &str) -> Self {
        Self::listen_with(
            Mode::Record,
            0,
            None,
            false,
            Some((code, reason.to_string())),
        )
        .await
    }

    async fn start(mode: Mode) -> Self {
        Self::start_on(mode, 0).await
    }

    async fn start_on(mode: Mode, port: u16) -> Self {
        Self::listen(mode, port, None, false).await
    }

    async fn listen(
        mode: Mode,
        port: u16,
        tls: Option<Arc<rustls::ServerConfig>>,
        quiet: bool,
    ) -> Self {
        Self::listen_with(mode, port, tls, quiet, None).await
    }

    async fn listen_with(
        mode: Mode,
        port: u16,
        tls: Option<Arc<rustls::ServerConfig>>,
        quiet: bool,
        close_on_open: Option<(u16, String)>,
    ) -> Self {
        // A server restarted on its port may find the old listener not yet closed (its task is
        // aborted, which takes effect at its next poll): retry for a while.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", port)).await {
                Ok(listener) => break listener,
                Err(e) if port != 0 && tokio::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("cannot listen on 127.0.0.1:{port}: {e}"),
            }
        };
        let addr = listener.local_addr().unwrap();
        let (events_tx, events) = mpsc::unbounded_channel();
        let conns = Arc::new(Mutex::new(BTreeMap::new()));
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let is_tls = tls.is_some();
        let frames = Arc::new(Counter::default());
        let conf = Conf {
            mode,
            close_on_open,
            quiet,
            frames: Arc::clone(&frames),
            arrivals: Arc::default(),
        };
        let arrivals = Arc::clone(&conf.arrivals);
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let accept = tokio::spawn({
            let conns = Arc::clone(&conns);
            let accepted = Arc::clone(&accepted);
            let sent = Arc::clone(&sent);
            let conf = conf.clone();
            async move {
                let mut next = 0;
                while let Ok((tcp, _)) = listener.accept().await {
                    next += 1;
                    accepted.store(next, std::sync::atomic::Ordering::SeqCst);
                    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
                    conns.lock().unwrap().insert(next, cmd_tx);
                    let (events, sent) = (events_tx.clone(), Arc::clone(&sent));
                    let conf = conf.clone();
                    match acceptor.clone() {
                        None => {
                            tokio::spawn(serve(next, tcp, conf, events, cmd_rx, sent));
                        }
                        Some(acceptor) => {
                            tokio::spawn(async move {
                                match acceptor.accept(tcp).await {
                                    Ok(tls) => serve(next, tls, conf, events, cmd_rx, sent).await,
                                    Err(e) => {
                                        let error = e.to_string();
                                        let _ = events.send(Event::TlsFailed { conn: next, error });
                                    }
                                }
                            });
                        }
                    }
                }
            }
        });
        WsServer {
            addr,
            tls: is_tls,
            frames,
            arrivals,
            accepted,
            sent,
            events: tokio::sync::Mutex::new(events),
            conns,
            accept,
        }
    }

    pub fn uri(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}/socket", self.addr)
    }

    /// Waits for the first event `pick` accepts, skipping others; panics after `limit`.
    pub async fn expect<T>(
        &self,
        what: &str,
        limit: Duration,
        mut pick: impl FnMut(&Event) -> Option<T>,
    ) -> T {
        let mut events = self.events.lock().await;
        let deadline = tokio::time::Instant::now() + limit;
        let mut skipped = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(event)) => {
                    if let Some(found) = pick(&event) {
                        return found;
                    }
                    skipped.push(event);
                }
                Ok(None) => panic!("server stopped while waiting for {what}"),
                Err(_) => panic!("server saw no {what} within {limit:?}; it saw {skipped:?}"),
            }
        }
    }

    /// How many pushed frames the server has written to its sockets so far.
    pub fn sent(&self) -> usize {
        self.sent.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many TCP connections the server has accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits for a client to connect and returns its connection number and handshake headers.
    pub async fn connected(&self, limit: Duration) -> (usize, HeaderMap) {
        self.expect("connection", limit, |e| match e {
            Event::Connected { conn, headers } => Some((*conn, headers.clone())),
            _ => None,
        })
        .await
    }

    /// Waits for a failed TLS handshake and returns the server's error.
    pub async fn tls_failed(&self, limit: Duration) -> String {
        self.expect("failed TLS handshake", limit, |e| match e {
            Event::TlsFailed { error, .. } => Some(error.clone()),
            Event::Connected { .. } => panic!("a client connected where TLS should have failed"),
            _ => None,
        })
        .await
    }

    /// Waits for the next data frame from a client.
    pub async fn frame(&self, limit: Duration) -> Message {
        self.expect("data frame", limit, |e| match e {
            Event::Frame { message, .. } => Some(message.clone()),
            _ => None,
        })
        .await
    }

    /// The subjects of the envelopes that arrive until none has come for `quiet`.
    pub async fn subjects_until_quiet(&self, quiet: Duration) -> Vec<String> {
        let mut subjects = Vec::new();
        // The outer timeout ends the wait; the inner limit is only never reached first.
        let limit = quiet + Duration::from_secs(1);
        while let Ok(frame) = tokio::time::timeout(quiet, self.frame(limit)).await {
            let value: serde_json::Value = serde_json::from_slice(&frame.into_data()).unwrap();
            let subject = value["subject"]
                .as_str()
                .expect("an envelope with a subject");
            subjects.push(subject.to_string());
        }
        subjects
    }

    /// Asserts that no data frame arrives within `window`.
    pub async fn no_frame(&self, window: Duration) {
        let mut events = self.events.lock().await;
        let deadline = tokio::time::Instant::now() + window;
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, events.recv()).await {
            if let Event::Frame { message, .. } = event {
                panic!("unexpected frame {message:?}");
            }
        }
    }

    /// How many data frames the server got so far, on every connection.
    /// When each data frame arrived (stamped by the server as it read the frame), in order.
    pub fn arrivals(&self) -> Vec<std::time::Instant> {
        self.arrivals.lock().unwrap().clone()
    }

    pub fn frames(&self) -> usize {
        self.frames.get()
    }

    /// Waits until the server got `n` data frames in all, or `limit` passed; returns the count.
    pub async fn wait_frames(&self, n: usize, limit: Duration) -> usize {
        self.frames.wait_for(n, limit).await
    }

    /// Sends frames on the newest connection, written one after another with one flush.
    pub fn push_many(&self, messages: Vec<Message>) {
        let conns = self.conns.lock().unwrap();
        let (_, conn) = conns.iter().next_back().expect("a client is connected");
        conn.send(Command::SendMany(messages))
            .expect("connection alive");
    }

    /// Sends frames on every open connection, as a broadcasting server does; returns on how
    /// many.
    pub fn broadcast(&self, messages: Vec<Message>) -> usize {
        let conns = self.conns.lock().unwrap();
        conns
            .values()
            .filter(|conn| conn.send(Command::SendMany(messages.clone())).is_ok())
            .count()
    }

    /// How many connections are open now.
    pub fn open(&self) -> usize {
        self.conns
            .lock()
            .unwrap()
            .values()
            .filter(|conn| !conn.is_closed())
            .count()
    }

    /// Sends a frame on the newest connection.
    pub fn push(&self, message: Message) {
        let conns = self.conns.lock().unwrap();
        let (_, conn) = conns.iter().next_back().expect("a client is connected");
        conn.send(Command::Send(message)).expect("connection alive");
    }

    /// Makes every connection go silent: nothing is read (no pong, no frame) or written any more,
    /// but the sockets stay open, like a hung peer.
    pub fn stall(&self) {
        for conn in self.conns.lock().unwrap().values() {
            let _ = conn.send(Command::Stall);
        }
    }

    /// Sends a Close frame with `code` and `reason` on every connection (stalled or not), then
    /// drops them.
    pub fn close_connections(&self, code: u16, reason: &str) {
        for (_, conn) in std::mem::take(&mut *self.conns.lock().unwrap()) {
            let _ = conn.send(Command::Close(code, reason.to_string()));
        }
    }

    /// Drops every connection without a Close frame.
    pub fn drop_connections(&self) {
        for (_, conn) in std::mem::take(&mut *self.conns.lock().unwrap()) {
            let _ = conn.send(Command::Drop);
        }
    }
}

impl Drop for WsServer {
    fn drop(&mut self) {
        self.accept.abort();
        self.drop_connections();
    }
}

// The handshake callback's error type is the library's, large as it is.
#[allow(clippy::result_large_err)]
async fn serve<S>(
    conn: usize,
    tcp: S,
    conf: Conf,
    events: mpsc::UnboundedSender<Event>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    sent: Arc<std::sync::atomic::AtomicUsize>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let seen = Arc::new(Mutex::new(HeaderMap::new()));
    let callback = {
        let seen = Arc::clone(&seen);
        move |request: &Request, response: Response| {
            *seen.lock().unwrap() = request.headers().clone();
            Ok(response)
        }
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
        return;
    };
    let headers = seen.lock().unwrap().clone();
    let _ = events.send(Event::Connected { conn, headers });
    if let Some((code, reason)) = &conf.close_on_open {
        let _ = ws.send(close_message(*code, reason)).await;
        let _ = events.send(Event::Ended { conn });
        return;
    }
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                Some(Command::Send(message)) => {
                    if ws.send(message).await.is_err() {
                        break;
                    }
                    sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                Some(Command::SendMany(messages)) => {
                    let n = messages.len();
                    let mut all = futures::stream::iter(messages.into_iter().map(Ok));
                    if ws.send_all(&mut all).await.is_err() {
                        break;
                    }
                    sent.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
                }
                Some(Command::Drop) | None => break,
                Some(Command::Close(code, reason)) => {
                    let _ = ws.send(close_message(code, &reason)).await;
                    break;
                }
                Some(Command::Stall) => {
                    // Hold the socket without reading until told to close or drop it.
                    while let Some(command) = commands.recv().await {
                        match command {
                            Command::Drop => break,
                            Command::Close(code, reason) => {
                                let _ = ws.send(close_message(code, &reason)).await;
                                break;
                            }
                            _ => {}
                        }
                    }
                    break;
                }
            },
            incoming = ws.next() => match incoming {
                Some(Ok(Message::Close(frame))) => {
                    let _ = events.send(Event::Closed { conn, frame });
                }
                Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
                    conf.arrivals.lock().unwrap().push(std::time::Instant::now());
                    conf.frames.bump();
                    if !conf.quiet {
                        let _ = events.send(Event::Frame { conn, message: message.clone() });
                    }
                    let answer = match conf.mode {
                        Mode::Echo => Some(message),
                        Mode::Respond => respond(&message),
                        Mode::Ack => acknowledge(&message),
                        Mode::Record => None,
                    };
                    if let Some(answer) = answer {
                        if ws.send(answer).await.is_err() {
                            break;
                        }
                    }
                }
                Some(Ok(Message::Pong(_))) => {
                    let _ = events.send(Event::Pong { conn });
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
        }
    }
    let _ = events.send(Event::Ended { conn });
}

/// How a server's connections behave.
#[derive(Clone)]
struct Conf {
    mode: Mode,
    /// Close every connection right after the upgrade with this code and reason (a server that
    /// accepts the upgrade and then refuses the credentials).
    close_on_open: Option<(u16, String)>,
    /// No `Event::Frame` for data frames (they are only counted).
    quiet: bool,
    frames: Arc<Counter>,
    arrivals: Arc<Mutex<Vec<std::time::Instant>>>,
}

fn close_message(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code: code.into(),
        reason: reason.to_string().into(),
    }))
}

/// A binary frame holding a MessagePack map (a JSON object starts with `{`, never a map marker).
fn msgpack_map(message: &Message) -> Option<Vec<(rmpv::Value, rmpv::Value)>> {
    let Message::Binary(bytes) = message else {
        return None;
    };
    if !matches!(bytes.first(), Some(0x80..=0x8f | 0xde | 0xdf)) {
        return None;
    }
    match rmpv::decode::read_value(&mut &bytes[..]).ok()? {
        rmpv::Value::Map(pairs) => Some(pairs),
        _ => None,
    }
}

fn msgpack_get<'a>(pairs: &'a [(rmpv::Value, rmpv::Value)], key: &str) -> Option<&'a rmpv::Value> {
    pairs
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

fn msgpack_message(value: rmpv::Value) -> Message {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &value).unwrap();
    Message::binary(out)
}

/// The responder's answer to an envelope with a `reply_to` (JSON, or MessagePack in kind).
fn respond(message: &Message) -> Option<Message> {
    if let Some(pairs) = msgpack_map(message) {
        let reply_to = msgpack_get(&pairs, "reply_to")?.as_str()?;
        let body = msgpack_get(&pairs, "body")?.clone();
        return Some(msgpack_message(rmpv::Value::Map(vec![
            ("subject".into(), reply_to.into()),
            ("body".into(), body),
        ])));
    }
    let request: serde_json::Value = serde_json::from_slice(&message.clone().into_data()).ok()?;
    let reply_to = request.get("reply_to")?.as_str()?;
    let answer = serde_json::json!({ "subject": reply_to, "body": request.get("body")? });
    Some(Message::text(answer.to_string()))
}

/// The acknowledging server's answer to an envelope with a string `id` (JSON, or MessagePack in
/// kind).
fn acknowledge(message: &Message) -> Option<Message> {
    if let Some(pairs) = msgpack_map(message) {
        let id = msgpack_get(&pairs, "id")?.as_str()?;
        return Some(msgpack_message(rmpv::Value::Map(vec![(
            "ack".into(),
            id.into(),
        )])));
    }
    let envelope: serde_json::Value = serde_json::from_slice(&message.clone().into_data()).ok()?;
    let id = envelope.get("id")?.as_str()?;
    Some(Message::text(serde_json::json!({ "ack": id }).to_string()))
}
