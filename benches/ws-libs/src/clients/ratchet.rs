use super::{text, Deflate, Msg, Settings};
use anyhow::Result;
use bytes::BytesMut;
use ratchet_rs::deflate::{
    Deflate as DeflateExt, DeflateDecoder, DeflateEncoder, DeflateExtProvider,
    DeflateExtensionError,
};
use ratchet_rs::{
    CloseCode, CloseReason, ExtensionProvider, Message, PayloadType, SubprotocolRegistry,
    WebSocketConfig,
};
use std::cell::Cell;
use tokio::net::TcpStream;

pub struct Tx(ratchet_rs::Sender<TcpStream, DeflateEncoder>);
pub struct Rx(ratchet_rs::Receiver<TcpStream, DeflateDecoder>);

pub async fn connect(url: &str, settings: Settings) -> Result<(Tx, Rx, Deflate)> {
    let (host, port, _) = super::target(url)?;
    let tcp = TcpStream::connect((host.as_str(), port)).await?;
    tcp.set_nodelay(true)?;
    let config = WebSocketConfig {
        max_message_size: settings.max_message,
    };
    // With `None` the provider offers nothing, and the session has no extension.
    let provider = Observed {
        inner: settings.deflate.then(DeflateExtProvider::default),
        accepted: Cell::new(false),
    };
    let upgraded =
        ratchet_rs::subscribe_with(config, tcp, url, &provider, SubprotocolRegistry::default())
            .await?;
    let d = if settings.deflate {
        Deflate::from_accepted(provider.accepted.get())
    } else {
        Deflate::NotOffered
    };
    let (sender, receiver) = upgraded.websocket.split()?;
    Ok((Tx(sender), Rx(receiver), d))
}

/// ratchet does not say whether the extension was negotiated; this provider remembers it.
struct Observed {
    inner: Option<DeflateExtProvider>,
    accepted: Cell<bool>,
}

impl ExtensionProvider for Observed {
    type Extension = DeflateExt;
    type Error = DeflateExtensionError;

    fn apply_headers(&self, headers: &mut http::HeaderMap) {
        self.inner.apply_headers(headers)
    }

    fn negotiate_client(
        &self,
        headers: &http::HeaderMap,
    ) -> Result<Option<DeflateExt>, Self::Error> {
        let negotiated = self.inner.negotiate_client(headers)?;
        self.accepted.set(negotiated.is_some());
        Ok(negotiated)
    }

    fn negotiate_server(
        &self,
        headers: &http::HeaderMap,
    ) -> Result<Option<(DeflateExt, http::HeaderValue)>, Self::Error> {
        self.inner.negotiate_server(headers)
    }
}

impl super::Tx for Tx {
    async fn send(&mut self, msg: Msg) -> Result<()> {
        // ratchet flushes after every frame it writes.
        let (payload, kind) = match msg {
            Msg::Text(text) => (text, PayloadType::Text),
            Msg::Binary(data) => (data, PayloadType::Binary),
        };
        Ok(self.0.write(payload, kind).await?)
    }

    async fn close(&mut self) -> Result<()> {
        Ok(self
            .0
            .close(CloseReason::new(CloseCode::Normal, None))
            .await?)
    }
}

impl super::Rx for Rx {
    async fn recv(&mut self) -> Result<Option<Msg>> {
        // A ping or pong can arrive between the frames of a message; `read` then returns with
        // the frames so far in `payload`, and must be handed them again.
        let mut payload = BytesMut::new();
        loop {
            match self.0.read(&mut payload).await? {
                // ratchet leaves the UTF-8 check of text to its user.
                Message::Text => return text(payload.freeze()).map(Some),
                Message::Binary => return Ok(Some(Msg::Binary(payload.freeze()))),
                // Pings are answered and close frames acknowledged by ratchet.
                Message::Ping(_) | Message::Pong(_) => {}
                Message::Close(_) => return Ok(None),
            }
        }
    }
}
