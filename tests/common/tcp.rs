//! Misbehaving servers below WebSocket: a listener that drops every connection at once, one that
//! accepts and never answers the handshake, and one that answers every handshake with bytes of
//! the test's choosing. All record when connections arrive.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

enum Behaviour {
    Drop,
    Hold,
    Answer(Arc<Vec<u8>>),
}

pub struct TcpServer {
    pub port: u16,
    accepted: Arc<Mutex<Vec<Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpServer {
    /// Accepts and closes every connection at once: each handshake fails.
    pub async fn dropping() -> Self {
        Self::start(Behaviour::Drop).await
    }

    /// Accepts and keeps every connection open without a word: each handshake hangs.
    pub async fn silent() -> Self {
        Self::start(Behaviour::Hold).await
    }

    /// Reads each handshake request and answers it with `response`, then keeps the connection
    /// open.
    pub async fn answering(response: Vec<u8>) -> Self {
        Self::start(Behaviour::Answer(Arc::new(response))).await
    }

    async fn start(behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let accepted = Arc::clone(&accepted);
            async move {
                let mut held = Vec::new();
                // Aborted with the accept task, when the server is dropped.
                let mut answering = tokio::task::JoinSet::new();
                while let Ok((mut stream, _)) = listener.accept().await {
                    accepted.lock().unwrap().push(Instant::now());
                    match &behaviour {
                        Behaviour::Drop => {}
                        Behaviour::Hold => held.push(stream),
                        Behaviour::Answer(response) => {
                            let response = Arc::clone(response);
                            answering.spawn(async move {
                                let mut request = Vec::new();
                                let mut buf = [0u8; 1024];
                                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                                    match stream.read(&mut buf).await {
                                        Ok(0) | Err(_) => return,
                                        Ok(n) => request.extend_from_slice(&buf[..n]),
                                    }
                                }
                                let _ = stream.write_all(&response).await;
                                // Held until the client goes.
                                let _ = stream.read(&mut buf).await;
                            });
                        }
                    }
                }
            }
        });
        TcpServer {
            port,
            accepted,
            task,
        }
    }

    pub fn uri(&self) -> String {
        format!("ws://127.0.0.1:{}/", self.port)
    }

    /// When each connection arrived.
    pub fn accepted(&self) -> Vec<Instant> {
        self.accepted.lock().unwrap().clone()
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
