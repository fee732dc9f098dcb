//! The listener bench's WebSocket clients (tokio-tungstenite): one task each, told what to do
//! by commands, and a tally of what they got.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::*;
use futures::{SinkExt as _, StreamExt as _};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Frames all clients got, and a wake-up when they reach the expected count.
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) frames: AtomicUsize,
    pub(crate) target: AtomicUsize,
    pub(crate) reached: Notify,
    /// Clients whose connection ended.
    pub(crate) ended: AtomicUsize,
}

impl Tally {
    pub(crate) fn frame(&self) {
        let n = self.frames.fetch_add(1, Ordering::Relaxed) + 1;
        if n == self.target.load(Ordering::Relaxed) {
            self.reached.notify_one();
        }
    }

    /// Expects `more` frames from now on; returns the total to wait for.
    pub(crate) fn expect(&self, more: usize) -> usize {
        let target = self.frames.load(Ordering::SeqCst) + more;
        self.target.store(target, Ordering::SeqCst);
        target
    }

    /// Waits until `target` frames arrived, within `limit`; the count then.
    pub(crate) async fn wait(&self, target: usize, limit: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let got = self.frames.load(Ordering::SeqCst);
            if got >= target || tokio::time::Instant::now() >= deadline {
                return got;
            }
            // The notification may come from an earlier phase: the count decides; the short
            // slice bounds the cost of a lost one.
            let slice = (deadline - tokio::time::Instant::now()).min(Duration::from_millis(50));
            let _ = tokio::time::timeout(slice, self.reached.notified()).await;
        }
    }
}

pub(crate) enum Cmd {
    /// Send this text `count` times, back to back (one flush).
    Send { text: Utf8Bytes, count: usize },
    /// Send it and wait for the answer, `count` times in a row; the round trips' durations.
    RoundTrips {
        text: Utf8Bytes,
        count: usize,
        done: oneshot::Sender<Vec<Duration>>,
    },
}

pub(crate) struct Fleet {
    pub(crate) clients: Vec<mpsc::UnboundedSender<Cmd>>,
    pub(crate) tally: Arc<Tally>,
}

pub(crate) type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl Fleet {
    /// Connects `n` clients, 32 at a time, each subscribed to `bench.all`.
    pub(crate) async fn connect(url: &str, n: usize) -> Fleet {
        let tally = Arc::new(Tally::default());
        let clients = futures::stream::iter(0..n)
            .map(|_| {
                let tally = Arc::clone(&tally);
                async move { Self::one(url, tally).await }
            })
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await;
        Fleet { clients, tally }
    }

    pub(crate) async fn one(url: &str, tally: Arc<Tally>) -> mpsc::UnboundedSender<Cmd> {
        // Small buffers (tungstenite's default is 128 KiB each way): 1000 clients in one process.
        let config = WebSocketConfig::default()
            .read_buffer_size(16 * 1024)
            .write_buffer_size(16 * 1024);
        let (mut ws, _) = tokio::time::timeout(
            Duration::from_secs(20),
            tokio_tungstenite::connect_async_with_config(url, Some(config), true),
        )
        .await
        .expect("a client connects within 20 s")
        .expect("a client is admitted");
        ws.send(Message::text(
            serde_json::json!({ "subscribe": BROADCAST }).to_string(),
        ))
        .await
        .expect("the subscription goes out");
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    assert!(text.contains("\"ok\""), "subscribing answered {text}");
                    break;
                }
                Some(Ok(_)) => continue,
                other => panic!("no answer to the subscription: {other:?}"),
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run_client(ws, rx, tally));
        tx
    }

    pub(crate) fn send_all(&self, text: &str, count: usize) {
        let text = Utf8Bytes::from(text.to_string());
        for client in &self.clients {
            let _ = client.send(Cmd::Send {
                text: text.clone(),
                count,
            });
        }
    }

    /// Round trips on the first `clients` clients at once, `count` in a row each.
    pub(crate) async fn round_trips(
        &self,
        clients: usize,
        count: usize,
        text: &str,
    ) -> Vec<Duration> {
        let text = Utf8Bytes::from(text.to_string());
        let mut waits = Vec::new();
        for client in self.clients.iter().take(clients) {
            let (done, wait) = oneshot::channel();
            let _ = client.send(Cmd::RoundTrips {
                text: text.clone(),
                count,
                done,
            });
            waits.push(wait);
        }
        let mut all = Vec::new();
        for wait in waits {
            if let Ok(Ok(times)) = tokio::time::timeout(LIMIT, wait).await {
                all.extend(times);
            }
        }
        all.sort();
        all
    }
}

/// One client: counts the data frames it gets, and does what it is told.
pub(crate) async fn run_client(
    ws: Socket,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    tally: Arc<Tally>,
) {
    let (mut sink, mut stream) = ws.split();
    loop {
        tokio::select! {
            cmd = cmds.recv() => match cmd {
                None => {
                    let _ = sink.close().await;
                    return;
                }
                Some(Cmd::Send { text, count }) => {
                    for _ in 0..count {
                        if sink.feed(Message::Text(text.clone())).await.is_err() {
                            break;
                        }
                    }
                    let _ = sink.flush().await;
                }
                Some(Cmd::RoundTrips { text, count, done }) => {
                    let mut times = Vec::with_capacity(count);
                    'trips: for _ in 0..count {
                        let started = Instant::now();
                        if sink.send(Message::Text(text.clone())).await.is_err() {
                            break;
                        }
                        loop {
                            match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
                                Ok(Some(Ok(Message::Text(_) | Message::Binary(_)))) => {
                                    tally.frame();
                                    break;
                                }
                                Ok(Some(Ok(_))) => continue,
                                _ => break 'trips,
                            }
                        }
                        times.push(started.elapsed());
                    }
                    let _ = done.send(times);
                }
            },
            next = stream.next() => match next {
                Some(Ok(Message::Text(_) | Message::Binary(_))) => tally.frame(),
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    tally.ended.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Some(Ok(_)) => {}
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The rows.
