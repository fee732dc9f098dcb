//! Echo servers: the one of the throughput comparison (tokio-tungstenite without compression,
//! ratchet_rs with permessage-deflate: tokio-tungstenite has none), and one per library for the
//! Autobahn server cases (`serve-lib`), where the fuzzing client is the peer.

use crate::clients::MAX_MESSAGE;
use anyhow::Result;
use futures::{FutureExt, SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

pub async fn run(addr: &str, deflate: bool) -> Result<()> {
    #[cfg(not(feature = "ratchet_rs"))]
    anyhow::ensure!(!deflate, "the deflate server needs the ratchet_rs feature");
    let listener = TcpListener::bind(addr).await?;
    println!(
        "echo server on {} (permessage-deflate: {deflate})",
        listener.local_addr()?
    );
    loop {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        tokio::spawn(async move {
            let served = match deflate {
                #[cfg(feature = "ratchet_rs")]
                true => echo_ratchet(tcp).await,
                _ => echo_tungstenite(tcp).await,
            };
            if let Err(e) = served {
                eprintln!("connection: {e:#}");
            }
        });
    }
}

async fn echo_tungstenite(tcp: TcpStream) -> Result<()> {
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let mut ws = tokio_tungstenite::accept_async_with_config(tcp, Some(config)).await?;
    while let Some(msg) = ws.next().await {
        let mut msg = msg?;
        // Echo what has already arrived before flushing, so that a window of messages
        // costs few writes. Control frames are tungstenite's business.
        loop {
            if msg.is_text() || msg.is_binary() {
                ws.feed(msg).await?;
            }
            match ws.next().now_or_never() {
                Some(Some(next)) => msg = next?,
                _ => break,
            }
        }
        ws.flush().await?;
    }
    Ok(())
}

#[cfg(feature = "ratchet_rs")]
async fn echo_ratchet(tcp: TcpStream) -> Result<()> {
    use bytes::BytesMut;
    use ratchet_rs::deflate::DeflateExtProvider;
    use ratchet_rs::{Message, PayloadType, SubprotocolRegistry, WebSocketConfig};

    let config = WebSocketConfig {
        max_message_size: MAX_MESSAGE,
    };
    let upgrader = ratchet_rs::accept_with(
        tcp,
        config,
        DeflateExtProvider::default(),
        SubprotocolRegistry::default(),
    )
    .await?;
    let mut ws = upgrader.upgrade().await?.websocket;
    let mut buf = BytesMut::new();
    loop {
        match ws.read(&mut buf).await? {
            Message::Text => ws.write(&buf, PayloadType::Text).await?,
            Message::Binary => ws.write(&buf, PayloadType::Binary).await?,
            Message::Ping(_) | Message::Pong(_) => {}
            Message::Close(_) => return Ok(()),
        }
        buf.clear();
    }
}

/// An echo server made with `lib` alone, with permessage-deflate where the library has it: what
/// Autobahn's fuzzing client tests (the server cases).
pub async fn run_lib(lib: crate::clients::Lib, addr: &str) -> Result<()> {
    let listener = TcpListener::bind(addr).await?;
    println!("{lib} echo server on {}", listener.local_addr()?);
    loop {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        tokio::spawn(async move {
            let served = match lib {
                crate::clients::Lib::Tungstenite => echo_tungstenite(tcp).await,
                #[cfg(feature = "ratchet_rs")]
                crate::clients::Lib::Ratchet => echo_ratchet(tcp).await,
                #[cfg(feature = "yawc")]
                crate::clients::Lib::Yawc => echo_yawc(tcp).await,
                #[allow(unreachable_patterns)]
                other => Err(anyhow::anyhow!("no server for {other} in this build")),
            };
            if let Err(e) = served {
                eprintln!("connection: {e:#}");
            }
        });
    }
}

/// yawc's server: hyper serves the HTTP/1.1 upgrade, yawc takes the connection over.
#[cfg(feature = "yawc")]
async fn echo_yawc(tcp: TcpStream) -> Result<()> {
    use hyper::service::service_fn;
    use yawc::{Frame, OpCode, Options, WebSocket};

    let service = service_fn(
        |mut request: hyper::Request<hyper::body::Incoming>| async move {
            // The same settings as the provider's client: limits, UTF-8 checks, deflate at level 1.
            let options = Options::default()
                .with_limits(MAX_MESSAGE + 1, MAX_MESSAGE + 1)
                .with_utf8()
                .with_low_latency_compression();
            let (response, upgrade) = WebSocket::upgrade_with_options(&mut request, options)?;
            tokio::spawn(async move {
                let Ok(mut ws) = upgrade.await else { return };
                while let Some(frame) = ws.next().await {
                    let echo = match frame.opcode() {
                        OpCode::Text => Frame::text(frame.into_payload()),
                        OpCode::Binary => Frame::binary(frame.into_payload()),
                        // Pings are answered and close frames acknowledged by yawc.
                        _ => continue,
                    };
                    if ws.send(echo).await.is_err() {
                        return;
                    }
                }
            });
            Ok::<_, yawc::WebSocketError>(response)
        },
    );
    hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
        .with_upgrades()
        .await?;
    Ok(())
}
