use super::{Deflate, Msg, Settings};
use anyhow::Result;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use yawc::close::CloseCode;
use yawc::{Frame, OpCode, Options, TcpWebSocket, WebSocket};

pub struct Tx(SplitSink<TcpWebSocket, Frame>);
pub struct Rx(SplitStream<TcpWebSocket>);

pub async fn connect(url: &str, settings: Settings) -> Result<(Tx, Rx, Deflate)> {
    // yawc's limits are exclusive bounds; UTF-8 checking of text is off unless asked for.
    let mut options = Options::default()
        .with_limits(settings.max_message + 1, settings.max_message + 1)
        .with_utf8()
        .with_no_delay();
    if settings.deflate {
        // Level 1, as soketto and ratchet_rs use. The client_max_window_bits parameter tells the server we can use a smaller window,
        // which the Autobahn 13.3-13.6 cases need to run at all.
        options = options
            .with_low_latency_compression()
            .with_client_max_window_bits(15);
    }
    let ws = WebSocket::connect(url.parse()?)
        .with_options(options)
        .await?;
    let (sink, stream) = ws.split();
    // yawc keeps the negotiated extensions to itself.
    let d = if settings.deflate {
        Deflate::Unknown
    } else {
        Deflate::NotOffered
    };
    Ok((Tx(sink), Rx(stream), d))
}

impl super::Tx for Tx {
    async fn send(&mut self, msg: Msg) -> Result<()> {
        let frame = match msg {
            Msg::Text(text) => Frame::text(text),
            Msg::Binary(data) => Frame::binary(data),
        };
        Ok(self.0.send(frame).await?)
    }

    async fn close(&mut self) -> Result<()> {
        Ok(self.0.send(Frame::close(CloseCode::Normal, "")).await?)
    }
}

impl super::Rx for Rx {
    async fn recv(&mut self) -> Result<Option<Msg>> {
        // yawc's Stream ends on errors as well as on close; `next_frame` would tell them apart,
        // but only on an unsplit WebSocket.
        while let Some(frame) = self.0.next().await {
            match frame.opcode() {
                OpCode::Text => return Ok(Some(Msg::Text(frame.into_payload()))),
                OpCode::Binary => return Ok(Some(Msg::Binary(frame.into_payload()))),
                // Pings are answered and close frames acknowledged by yawc.
                _ => {}
            }
        }
        Ok(None)
    }
}
