//! Misbehaving servers below WebSocket: a listener that drops every connection at once, and one
//! that accepts and never answers the handshake. Both record when connections arrive.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::net::TcpListener;

pub struct TcpServer {
    pub port: u16,
    accepted: Arc<Mutex<Vec<Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpServer {
    /// Accepts and closes every connection at once: each handshake fails.
    pub async fn dropping() -> Self {
        Self::start(false).await
    }

    /// Accepts and keeps every connection open without a word: each handshake hangs.
    pub async fn silent() -> Self {
        Self::start(true).await
    }

    async fn start(hold: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let accepted = Arc::clone(&accepted);
            async move {
                let mut held = Vec::new();
                while let Ok((stream, _)) = listener.accept().await {
                    accepted.lock().unwrap().push(Instant::now());
                    if hold {
                        held.push(stream);
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
