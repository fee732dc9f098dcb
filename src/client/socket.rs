//! One WebSocket connection as the session task uses it: dialled (TCP, then TLS with the
//! session's own rustls config for `wss://`), the handshake made by yawc with the session's
//! headers and limits, permessage-deflate offered when the link asks for it, and every failure in
//! words a user can act on.
//!
//! yawc's own `Stream` ends on an error without saying which; [`Socket`] yields the errors, so
//! an oversized message is told apart from a dropped connection.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;
use yawc::{Frame, HttpRequest, Options, WebSocket, WebSocketError};

use crate::config::{Compression, ConnectionConfig};

/// The largest handshake response head accepted.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// The most header lines accepted in the handshake response (the HTTP library's own bound).
pub const MAX_RESPONSE_HEADERS: usize = 100;

/// How many bytes of frames may wait in the write buffer before they are written out.
const WRITE_BOUNDARY: usize = 128 * 1024;

type Transport = Either<TcpStream, TlsStream<TcpStream>>;

/// An open connection: frames in (with the errors), frames out.
pub struct Socket(WebSocket<Handshaking<Transport>>);

/// What the handshake settled.
pub struct Opened {
    pub socket: Socket,
    /// Whether permessage-deflate is on (offered and accepted by the server).
    pub deflate: bool,
}

/// Connects to the session's server and makes the WebSocket handshake.
pub async fn connect(config: &ConnectionConfig) -> Result<Opened, String> {
    let url =
        url::Url::parse(config.uri.full()).map_err(|e| format!("bad uri {}: {e}", config.uri))?;
    let host = match url.host() {
        Some(url::Host::Ipv6(address)) => address.to_string(),
        Some(host) => host.to_string(),
        None => return Err(format!("uri {} has no host", config.uri)),
    };
    let port = url.port_or_known_default().unwrap_or(80);
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    // Frames are written in batches and flushed once: no reason to wait for more.
    let _ = tcp.set_nodelay(true);
    let transport = if url.scheme() == "wss" {
        let name = rustls_pki_types::ServerName::try_from(host.clone())
            .map_err(|_| format!("TLS: {host} is not a valid server name for a certificate"))?;
        let connector = tokio_rustls::TlsConnector::from(config.tls.client_config());
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| explain(&e, &host, config))?;
        Either::Right(tls)
    } else {
        Either::Left(tcp)
    };

    let mut request = HttpRequest::builder();
    for (name, value) in config.handshake_headers() {
        // Both were validated when the link was put.
        request = request.header(name, value);
    }
    // yawc's bounds are exclusive.
    let limit = config.max_message_bytes.saturating_add(1);
    // The session writes up to 64 frames and then flushes once; yawc (through tokio-util's
    // framing) writes out early whenever 8 KiB are buffered. With 128 KiB, as tungstenite's
    // write buffer was, a batch of 1 KiB publishes is one write, not eight.
    let mut options = Options::default()
        .with_limits(limit, limit)
        .with_utf8()
        .with_backpressure_boundary(WRITE_BOUNDARY);
    if config.compression == Compression::Deflate {
        // Level 1 (fast), context takeover both ways; the server may ask for a smaller window.
        options = options
            .with_low_latency_compression()
            .with_client_max_window_bits(15);
    }
    let head = Arc::new(Mutex::new(Vec::new()));
    let io = Handshaking {
        io: transport,
        head: Some(Arc::clone(&head)),
    };
    let socket = WebSocket::handshake_with_request(url, io, options, request)
        .await
        .map_err(|e| explain(&e, &host, config))?;
    let head = head.lock().unwrap_or_else(|e| e.into_inner());
    let deflate = config.compression == Compression::Deflate && accepts_deflate(&head);
    Ok(Opened {
        socket: Socket(socket),
        deflate,
    })
}

/// Whether a handshake response head has `Sec-WebSocket-Extensions: permessage-deflate...`.
fn accepts_deflate(head: &[u8]) -> bool {
    String::from_utf8_lossy(head).lines().any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("sec-websocket-extensions")
                && value.to_ascii_lowercase().contains("permessage-deflate")
        })
    })
}

/// A failure of a connection attempt, with TLS failures in the words of [`crate::config::tls`].
fn explain(
    error: &(dyn std::error::Error + 'static),
    host: &str,
    config: &ConnectionConfig,
) -> String {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return crate::config::tls::explain(tls, host, config.tls.has_client_cert());
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
                    return crate::config::tls::explain(tls, host, config.tls.has_client_cert());
                }
                if let Some(refused) = inner.downcast_ref::<HeadRefused>() {
                    return refused.0.clone();
                }
            }
        }
        cause = e.source();
    }
    match error.downcast_ref::<WebSocketError>() {
        Some(e) => crate::websocket::describe(e),
        None => error.to_string(),
    }
}

/// Why a handshake response was refused before the HTTP library saw all of it.
#[derive(Debug)]
struct HeadRefused(String);

impl std::fmt::Display for HeadRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HeadRefused {}

/// The transport during the handshake: keeps a copy of the response head (to see which
/// extension the server accepted) and refuses a head over [`MAX_RESPONSE_HEAD`] bytes or
/// [`MAX_RESPONSE_HEADERS`] header lines. After the head, reads pass straight through.
struct Handshaking<S> {
    io: S,
    /// The head so far; `None` once it is complete.
    head: Option<Arc<Mutex<Vec<u8>>>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Handshaking<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.io).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some(shared)) = (&result, &self.head) {
            let mut head = shared.lock().unwrap_or_else(|e| e.into_inner());
            head.extend_from_slice(&buf.filled()[before..]);
            let end = head.windows(4).position(|w| w == b"\r\n\r\n");
            let checked = &head[..end.unwrap_or(head.len())];
            let refused = if checked.len() > MAX_RESPONSE_HEAD {
                Some(format!(
                    "the server's handshake response is larger than {} KiB; refused",
                    MAX_RESPONSE_HEAD / 1024
                ))
            } else if checked.windows(2).filter(|w| w == b"\r\n").count() > MAX_RESPONSE_HEADERS {
                Some(format!("the server's handshake response has more than {MAX_RESPONSE_HEADERS} headers; refused"))
            } else {
                None
            };
            if let Some(reason) = refused {
                return Poll::Ready(Err(std::io::Error::other(HeadRefused(reason))));
            }
            if let Some(end) = end {
                head.truncate(end + 4);
                drop(head);
                self.head = None;
            }
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Handshaking<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Stream for Socket {
    type Item = Result<Frame, WebSocketError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().0.poll_next_frame(cx).map(Some)
    }
}

impl Sink<Frame> for Socket {
    type Error = WebSocketError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.get_mut().0).poll_ready(cx)
    }

    fn start_send(self: Pin<&mut Self>, frame: Frame) -> Result<(), Self::Error> {
        Pin::new(&mut self.get_mut().0).start_send(frame)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.get_mut().0).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_the_accepted_extension() {
        let head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nsec-websocket-extensions: permessage-deflate; client_max_window_bits=15\r\n\r\n";
        assert!(accepts_deflate(head));
        assert!(!accepts_deflate(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"
        ));
    }
}
