use super::{text, Deflate, Msg, Settings};
use anyhow::{bail, Result};
use soketto::connection::{Builder, Error, Mode};
use soketto::extension::deflate;
use soketto::handshake::{Client, ServerResponse};
use soketto::{Data, Incoming};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};

type Io = Compat<TcpStream>;

pub struct Tx(soketto::Sender<Io>);
pub struct Rx(soketto::Receiver<Io>);

pub async fn connect(url: &str, settings: Settings) -> Result<(Tx, Rx, Deflate)> {
    let (host, port, resource) = super::target(url)?;
    let tcp = TcpStream::connect((host.as_str(), port)).await?;
    tcp.set_nodelay(true)?;
    let host_header = format!("{host}:{port}");
    let mut client = Client::new(tcp.compat(), &host_header, &resource);
    if settings.deflate {
        client.add_extension(Box::new(deflate::Deflate::new(Mode::Client)));
    }
    match client.handshake().await? {
        ServerResponse::Accepted { .. } => {}
        ServerResponse::Redirect {
            status_code,
            location,
        } => {
            bail!("handshake redirected: {status_code} to {location}")
        }
        ServerResponse::Rejected { status_code } => bail!("handshake rejected: {status_code}"),
    }
    // `into_builder` would do the same; taking the extensions out shows which were accepted.
    let extensions: Vec<_> = client.drain_extensions().collect();
    let d = if settings.deflate {
        Deflate::from_accepted(extensions.iter().any(|e| e.is_enabled()))
    } else {
        Deflate::NotOffered
    };
    let buffer = client.take_buffer();
    let mut builder = Builder::new(client.into_inner(), Mode::Client);
    builder.set_buffer(buffer);
    builder.add_extensions(extensions);
    builder.set_max_message_size(settings.max_message);
    builder.set_max_frame_size(settings.max_message);
    let (sender, receiver) = builder.finish();
    Ok((Tx(sender), Rx(receiver), d))
}

impl super::Tx for Tx {
    async fn send(&mut self, msg: Msg) -> Result<()> {
        match msg {
            Msg::Text(text) => self.0.send_text(std::str::from_utf8(&text)?).await?,
            Msg::Binary(data) => self.0.send_binary(&data).await?,
        }
        Ok(self.0.flush().await?)
    }

    async fn close(&mut self) -> Result<()> {
        Ok(self.0.close().await?)
    }
}

impl super::Rx for Rx {
    async fn recv(&mut self) -> Result<Option<Msg>> {
        let mut payload = Vec::new();
        loop {
            match self.0.receive(&mut payload).await {
                // soketto does not check that text is UTF-8.
                Ok(Incoming::Data(Data::Text(_))) => return text(payload.into()).map(Some),
                Ok(Incoming::Data(Data::Binary(_))) => {
                    return Ok(Some(Msg::Binary(payload.into())))
                }
                // Pings are answered inside `receive`. A pong between the frames of a message
                // ends it early, and soketto 0.8.1 then forgets the message's first frame.
                Ok(Incoming::Pong(_)) => {}
                // soketto answered the close frame and shut down its writing side.
                Ok(Incoming::Closed(_)) | Err(Error::Closed) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
    }
}
