//! A listener's side of one WebSocket connection: the upgrade of an HTTP/1.1 request (yawc on
//! hyper's upgraded connection), permessage-deflate when the link has `compression = deflate`
//! and the client offers it, and the frames in and out. The WebSocket library stays in this
//! module.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::{Sink, Stream};
use http_body_util::Empty;
use hyper::{Request, Response};
use yawc::close::CloseCode;
use yawc::frame::OpCode;
use yawc::{Frame as WsFrame, HttpStream, Options, WebSocket, WebSocketError};

use crate::config::{Compression, ConnectionConfig};
use crate::envelope::Frame;

/// The read buffer starts this small, and the write buffer smaller: most clients are idle most
/// of the time (with 10,000 of them every KiB per client is 10 MiB); the buffers grow with the
/// messages and bursts that need it, and shrink back after them.
const READ_BUFFER: usize = 1024;
const WRITE_BUFFER: usize = 512;
/// How many bytes of frames may wait in the write buffer before they are written out.
const WRITE_BOUNDARY: usize = 16 * 1024;

/// What a client sent.
pub enum In {
    /// A text or binary message.
    Data(Bytes),
    /// The client closes (the library answers the Close).
    Close(Option<u16>),
    /// A ping or a pong: the client is alive (the library answers pings).
    Control,
    /// A message over `max_message_bytes` (after decompression): the library closes with 1009.
    TooLarge,
    /// The connection failed or was closed, in words.
    Failed(String),
    /// The client broke the protocol (the close code it gets: 1002, or 1007 for text that is
    /// not UTF-8), in words.
    Broken(u16, String),
}

/// An upgraded client connection.
pub struct ClientSocket(WebSocket<HttpStream>);

/// The connection being upgraded: resolves once the `101` is out.
pub struct Upgrading(yawc::UpgradeFut);

impl Upgrading {
    pub async fn socket(self) -> Result<ClientSocket, String> {
        self.0
            .await
            .map(ClientSocket)
            .map_err(|e| format!("the upgrade failed ({e})"))
    }
}

/// Answers a WebSocket upgrade request: the `101` response to send, and the connection to come.
/// A request that is not a valid WebSocket upgrade gets the reason.
pub fn upgrade<B>(
    request: &mut Request<B>,
    config: &ConnectionConfig,
) -> Result<(Response<Empty<Bytes>>, Upgrading), String> {
    // One byte over the limit: yawc refuses a payload that exceeds its limit, and ours is
    // inclusive.
    let limit = config.max_message_bytes.saturating_add(1);
    let mut options = Options::default()
        .with_limits(limit, limit)
        .with_utf8()
        .with_read_buffer_capacity(READ_BUFFER)
        .with_write_buffer_capacity(WRITE_BUFFER)
        .with_backpressure_boundary(WRITE_BOUNDARY)
        .with_no_delay();
    options = match config.compression {
        Compression::Deflate => options.with_low_latency_compression(),
        Compression::None => options.without_compression(),
    };
    WebSocket::upgrade_with_options(request, options)
        .map(|(response, upgrading)| (response, Upgrading(upgrading)))
        .map_err(|e| format!("not a valid WebSocket upgrade ({e})"))
}

/// The library's frame for a frame.
fn to_ws(frame: Frame) -> WsFrame {
    match frame {
        Frame::Text(bytes) => WsFrame::text(bytes),
        Frame::Binary(bytes) => WsFrame::binary(bytes),
    }
}

/// A Close frame with `code` and `reason`.
pub fn close_frame(code: u16, reason: &str) -> Out {
    Out(WsFrame::close(CloseCode::from(code), reason))
}

/// A keepalive ping.
pub fn ping() -> Out {
    Out(WsFrame::ping(Bytes::new()))
}

/// A frame on its way out.
pub struct Out(WsFrame);

impl From<Frame> for Out {
    fn from(frame: Frame) -> Self {
        Out(to_ws(frame))
    }
}

impl Stream for ClientSocket {
    type Item = In;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<In>> {
        self.get_mut().0.poll_next_frame(cx).map(|frame| {
            Some(match frame {
                Ok(frame) => match frame.opcode() {
                    OpCode::Text | OpCode::Binary => In::Data(frame.into_payload()),
                    OpCode::Close => In::Close(frame.close_code().map(u16::from)),
                    _ => In::Control,
                },
                Err(WebSocketError::FrameTooLarge) => In::TooLarge,
                Err(WebSocketError::ConnectionClosed) => {
                    In::Failed("the connection was closed".into())
                }
                Err(e @ WebSocketError::InvalidUTF8) => {
                    In::Broken(1007, crate::websocket::describe(&e))
                }
                Err(
                    e @ (WebSocketError::ReservedBitsNotZero
                    | WebSocketError::ControlFrameFragmented
                    | WebSocketError::PingFrameTooLarge
                    | WebSocketError::InvalidFragment
                    | WebSocketError::InvalidCloseFrame
                    | WebSocketError::InvalidCloseCode
                    | WebSocketError::InvalidOpCode(_)
                    | WebSocketError::InvalidContinuationFrame
                    | WebSocketError::CompressionNotSupported),
                ) => In::Broken(1002, crate::websocket::describe(&e)),
                Err(e) => In::Failed(crate::websocket::describe(&e)),
            })
        })
    }
}

impl Sink<Out> for ClientSocket {
    type Error = String;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        Pin::new(&mut self.get_mut().0)
            .poll_ready(cx)
            .map_err(|e| crate::websocket::describe(&e))
    }

    fn start_send(self: Pin<&mut Self>, frame: Out) -> Result<(), String> {
        Pin::new(&mut self.get_mut().0)
            .start_send(frame.0)
            .map_err(|e| crate::websocket::describe(&e))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        Pin::new(&mut self.get_mut().0)
            .poll_flush(cx)
            .map_err(|e| crate::websocket::describe(&e))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        Pin::new(&mut self.get_mut().0)
            .poll_close(cx)
            .map_err(|e| crate::websocket::describe(&e))
    }
}
