//! The echo server of the throughput comparison: tokio-tungstenite without compression, and
//! ratchet_rs with permessage-deflate (tokio-tungstenite has none).

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
