//! WebSocket clients of a listener (server mode): tokio-tungstenite, another implementation than
//! the provider's yawc. Each reads in a task of its own into a channel, so a test can wait for a
//! frame with a deadline, or stop reading on purpose (a slow consumer).

use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
pub use tokio_tungstenite::tungstenite::Message;

/// What a client got from the provider.
#[derive(Debug)]
pub enum Got {
    Frame(Message),
    Closed(Option<CloseFrame>),
    Ended,
}

pub struct WsClient {
    out: mpsc::UnboundedSender<Message>,
    frames: mpsc::UnboundedReceiver<Got>,
    /// True: the reader stops reading (see [`WsClient::stop_reading`]).
    pause: tokio::sync::watch::Sender<bool>,
    _task: tokio::task::JoinHandle<()>,
}

/// Options of a connection attempt.
#[derive(Default, Clone)]
pub struct Connect<'a> {
    pub headers: Vec<(&'a str, String)>,
    /// SO_RCVBUF of the client's socket: a small one (and no autotuning) makes a client that
    /// stops reading push back after a few KiB, not megabytes.
    pub recv_buffer: Option<u32>,
    /// For `wss://`: the PEM CA that signed the listener's certificate.
    pub tls_ca: Option<String>,
}

impl WsClient {
    /// Connects to `url`, retrying while nothing listens there yet (a link's listener binds in
    /// the background of the put), within 10 s; an HTTP refusal comes back as its status code.
    pub async fn connect_when_listening(url: &str, options: Connect<'_>) -> Result<WsClient, u16> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match Self::connect_with(url, options.clone()).await {
                Err(0) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(0) => panic!("nothing listens on {url} after 10 s"),
                other => return other,
            }
        }
    }

    /// Connects to `url`; an HTTP refusal comes back as its status code, a failure to connect
    /// at all as 0.
    pub async fn connect(url: &str) -> Result<WsClient, u16> {
        Self::connect_with(url, Connect::default()).await
    }

    pub async fn connect_with(url: &str, options: Connect<'_>) -> Result<WsClient, u16> {
        Self::connect_or_refusal(url, options)
            .await
            .map_err(|(status, _)| status)
    }

    /// Connects, or gives the HTTP status and body of the refusal (status 0: no connection).
    pub async fn connect_or_refusal(
        url: &str,
        options: Connect<'_>,
    ) -> Result<WsClient, (u16, String)> {
        let mut request = url.into_client_request().expect("a valid ws URL");
        for (name, value) in &options.headers {
            request.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes())
                    .unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let connecting = async {
            if options.recv_buffer.is_none() && options.tls_ca.is_none() {
                let (socket, _) = tokio_tungstenite::connect_async(request).await?;
                return Ok(Self::start(socket));
            }
            let authority = request.uri().authority().unwrap().to_string();
            let addr: std::net::SocketAddr = authority.parse().expect("an ip:port URL");
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            if let Some(size) = options.recv_buffer {
                socket.set_recv_buffer_size(size).unwrap();
            }
            let stream = socket
                .connect(addr)
                .await
                .map_err(tokio_tungstenite::tungstenite::Error::Io)?;
            let Some(ca) = &options.tls_ca else {
                let (socket, _) = tokio_tungstenite::client_async(request, stream).await?;
                return Ok(Self::start(socket));
            };
            use rustls::pki_types::pem::PemObject as _;
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
                roots.add(cert.unwrap()).unwrap();
            }
            let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
                .connect(name, stream)
                .await
                .map_err(tokio_tungstenite::tungstenite::Error::Io)?;
            let (socket, _) = tokio_tungstenite::client_async(request, tls).await?;
            Ok(Self::start(socket))
        };
        match tokio::time::timeout(Duration::from_secs(10), connecting).await {
            Err(_) => panic!("connecting to {url} took more than 10 s"),
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
                let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default());
                Err((response.status().as_u16(), body.into_owned()))
            }
            Ok(Err(tokio_tungstenite::tungstenite::Error::Io(e))) => Err((0, e.to_string())),
            Ok(Err(e)) => panic!("connecting to {url} failed: {e}"),
            Ok(Ok(client)) => Ok(client),
        }
    }

    /// Runs the client's task on a connected socket.
    fn start<S>(socket: tokio_tungstenite::WebSocketStream<S>) -> WsClient
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sink, mut stream) = socket.split();
        let (out, mut to_send) = mpsc::unbounded_channel::<Message>();
        let (got, frames) = mpsc::unbounded_channel();
        let (pause, mut paused) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let stalled = *paused.borrow_and_update();
                tokio::select! {
                    next = to_send.recv() => match next {
                        Some(message) => {
                            if sink.send(message).await.is_err() {
                                let _ = got.send(Got::Ended);
                                return;
                            }
                        }
                        None => {
                            let _ = sink.close().await;
                            return;
                        }
                    },
                    Ok(()) = paused.changed() => {}
                    // Reads only while the test lets it (a slow consumer stops here).
                    next = stream.next(), if !stalled => match next {
                        Some(Ok(Message::Close(frame))) => {
                            let _ = got.send(Got::Closed(frame));
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                        Some(Ok(message)) => {
                            let _ = got.send(Got::Frame(message));
                        }
                        Some(Err(_)) | None => {
                            let _ = got.send(Got::Ended);
                            return;
                        }
                    },
                }
            }
        });
        WsClient {
            out,
            frames,
            pause,
            _task: task,
        }
    }

    pub fn send_text(&self, text: impl Into<String>) {
        let _ = self.out.send(Message::text(text.into()));
    }

    pub fn send(&self, message: Message) {
        let _ = self.out.send(message);
    }

    /// Sends `{"subscribe": pattern}` and waits for the provider's answer.
    pub async fn subscribe(&mut self, pattern: &str) -> serde_json::Value {
        self.send_text(serde_json::json!({ "subscribe": pattern }).to_string());
        self.json(Duration::from_secs(10)).await
    }

    /// Sends `{op: pattern}` (`subscribe` or `unsubscribe`) and waits for the answer.
    pub async fn subscribe_change(&mut self, op: &str, pattern: &str) -> serde_json::Value {
        self.send_text(serde_json::json!({ op: pattern }).to_string());
        self.json(Duration::from_secs(10)).await
    }

    /// The next data frame, within `limit`.
    pub async fn frame(&mut self, limit: Duration) -> Message {
        match tokio::time::timeout(limit, self.frames.recv()).await {
            Ok(Some(Got::Frame(message))) => message,
            Ok(other) => panic!("expected a frame, got {other:?}"),
            Err(_) => panic!("no frame within {limit:?}"),
        }
    }

    /// The next data frame as JSON, within `limit`.
    pub async fn json(&mut self, limit: Duration) -> serde_json::Value {
        let message = self.frame(limit).await;
        serde_json::from_slice(&message.into_data()).expect("a JSON frame")
    }

    /// Asserts that no data frame arrives within `window`.
    pub async fn no_frame(&mut self, window: Duration) {
        if let Ok(Some(got)) = tokio::time::timeout(window, self.frames.recv()).await {
            panic!("expected nothing, got {got:?}");
        }
    }

    /// Waits for the Close frame, skipping data frames; returns its code (None: the connection
    /// ended without one).
    pub async fn closed(&mut self, limit: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.frames.recv()).await {
                Ok(Some(Got::Closed(frame))) => return frame.map(|f| f.code.into()),
                Ok(Some(Got::Frame(_))) => continue,
                Ok(Some(Got::Ended) | None) => return None,
                Err(_) => panic!("not closed within {limit:?}"),
            }
        }
    }

    /// Stops reading from the socket (the provider's writes pile up in TCP, then in its queue).
    pub fn stop_reading(&mut self) {
        let _ = self.pause.send(true);
    }

    /// Reads again after [`WsClient::stop_reading`].
    pub fn resume_reading(&mut self) {
        let _ = self.pause.send(false);
    }

    /// Counts the data frames until the connection closes or ends (within `limit`), and gives
    /// the Close frame's code (None: it ended without one).
    pub async fn frames_until_closed(&mut self, limit: Duration) -> (usize, Option<u16>) {
        let deadline = tokio::time::Instant::now() + limit;
        let mut frames = 0;
        loop {
            match tokio::time::timeout_at(deadline, self.frames.recv()).await {
                Ok(Some(Got::Frame(_))) => frames += 1,
                Ok(Some(Got::Closed(frame))) => return (frames, frame.map(|f| f.code.into())),
                Ok(Some(Got::Ended) | None) => return (frames, None),
                Err(_) => panic!("not closed within {limit:?} ({frames} frames read)"),
            }
        }
    }

    /// Closes the connection (a Close frame, then the end).
    pub fn close(self) {
        drop(self.out);
    }
}
