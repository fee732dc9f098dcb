use super::{Deflate, Msg, Settings};
use anyhow::{bail, Result};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct Tx(SplitSink<Ws, Message>);
pub struct Rx(SplitStream<Ws>);

pub async fn connect(url: &str, settings: Settings) -> Result<(Tx, Rx, Deflate)> {
    if settings.deflate {
        bail!("tokio-tungstenite 0.30 has no permessage-deflate");
    }
    let config = WebSocketConfig::default()
        .max_message_size(Some(settings.max_message))
        .max_frame_size(Some(settings.max_message));
    let (ws, _response) =
        tokio_tungstenite::connect_async_with_config(url, Some(config), true).await?;
    let (sink, stream) = ws.split();
    Ok((Tx(sink), Rx(stream), Deflate::NotOffered))
}

impl super::Tx for Tx {
    async fn send(&mut self, msg: Msg) -> Result<()> {
        let msg = match msg {
            Msg::Text(text) => Message::Text(Utf8Bytes::try_from(text)?),
            Msg::Binary(data) => Message::Binary(data),
        };
        Ok(self.0.send(msg).await?)
    }

    async fn close(&mut self) -> Result<()> {
        Ok(self.0.close().await?)
    }
}

impl super::Rx for Rx {
    async fn recv(&mut self) -> Result<Option<Msg>> {
        while let Some(msg) = self.0.next().await {
            match msg? {
                Message::Text(text) => return Ok(Some(Msg::Text(text.into()))),
                Message::Binary(data) => return Ok(Some(Msg::Binary(data))),
                // Pings are answered by tungstenite; after a close frame the stream ends.
                _ => {}
            }
        }
        Ok(None)
    }
}
