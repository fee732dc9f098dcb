//! One small adapter per library, all behind the same pair of traits: a sending half and a
//! receiving half of one client connection.

#[cfg(feature = "ratchet_rs")]
mod ratchet;
#[cfg(feature = "soketto")]
mod soketto;
mod tungstenite;
#[cfg(feature = "yawc")]
mod yawc;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use std::fmt;
use std::str::FromStr;

/// Largest message any client accepts by default, the same for all: tokio-tungstenite's default.
pub const MAX_MESSAGE: usize = 64 << 20;

/// How a client connects.
#[derive(Clone, Copy)]
pub struct Settings {
    /// Offer permessage-deflate.
    pub deflate: bool,
    /// Largest message accepted, after decompression where the library can tell.
    pub max_message: usize,
}

/// A data message. `Text` always holds valid UTF-8: a library that does not check it leaves
/// the check to its adapter, as our session module would have to.
pub enum Msg {
    Text(Bytes),
    Binary(Bytes),
}

pub trait Tx {
    /// Sends one message and flushes it.
    async fn send(&mut self, msg: Msg) -> Result<()>;
    /// Starts the closing handshake with 1000 (normal).
    async fn close(&mut self) -> Result<()>;
}

pub trait Rx {
    /// The next data message; `None` once the connection has been closed by the peer (the
    /// library answers the close frame itself). Control frames are handled by the library.
    async fn recv(&mut self) -> Result<Option<Msg>>;
}

/// Whether the server accepted permessage-deflate, when the library lets one find out.
#[derive(Clone, Copy, Debug)]
pub enum Deflate {
    NotOffered,
    Accepted,
    Declined,
    Unknown,
}

impl Deflate {
    fn from_accepted(accepted: bool) -> Self {
        if accepted {
            Deflate::Accepted
        } else {
            Deflate::Declined
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lib {
    Tungstenite,
    Yawc,
    Soketto,
    Ratchet,
}

impl Lib {
    pub fn has_deflate(self) -> bool {
        self != Lib::Tungstenite
    }
}

impl fmt::Display for Lib {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Lib::Tungstenite => "tokio-tungstenite",
            Lib::Yawc => "yawc",
            Lib::Soketto => "soketto",
            Lib::Ratchet => "ratchet_rs",
        })
    }
}

impl FromStr for Lib {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "tokio-tungstenite" => Lib::Tungstenite,
            "yawc" => Lib::Yawc,
            "soketto" => Lib::Soketto,
            "ratchet_rs" => Lib::Ratchet,
            _ => bail!("unknown library {s:?}: tokio-tungstenite, yawc, soketto or ratchet_rs"),
        })
    }
}

/// What to do with a connection once it is open.
pub trait Session {
    type Output;
    async fn run(self, tx: impl Tx, rx: impl Rx, deflate: Deflate) -> Result<Self::Output>;
}

/// Connects with `lib` to `url` and runs `session`.
pub async fn run<S: Session>(
    lib: Lib,
    url: &str,
    settings: Settings,
    session: S,
) -> Result<S::Output> {
    macro_rules! with {
        ($module:ident, $feature:literal) => {{
            #[cfg(feature = $feature)]
            {
                let (tx, rx, d) = $module::connect(url, settings).await?;
                session.run(tx, rx, d).await
            }
            #[cfg(not(feature = $feature))]
            {
                let _ = (url, settings, session);
                bail!(concat!(
                    "this ws-libs was built without the ",
                    $feature,
                    " feature"
                ))
            }
        }};
    }
    match lib {
        Lib::Tungstenite => {
            let (tx, rx, d) = tungstenite::connect(url, settings).await?;
            session.run(tx, rx, d).await
        }
        Lib::Yawc => with!(yawc, "yawc"),
        Lib::Soketto => with!(soketto, "soketto"),
        Lib::Ratchet => with!(ratchet, "ratchet_rs"),
    }
}

/// Host, port and request target of a `ws://` URL, for the libraries that are handed a socket.
#[cfg(any(feature = "soketto", feature = "ratchet_rs"))]
fn target(url: &str) -> Result<(String, u16, String)> {
    let uri: http::Uri = url.parse().with_context(|| format!("bad URL {url:?}"))?;
    if uri.scheme_str() != Some("ws") {
        bail!("only ws:// URLs are supported here: {url}");
    }
    let host = uri.host().context("URL without host")?.to_string();
    let port = uri.port_u16().unwrap_or(80);
    let resource = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    Ok((host, port, resource))
}

#[cfg(any(feature = "soketto", feature = "ratchet_rs"))]
fn text(payload: Bytes) -> Result<Msg> {
    std::str::from_utf8(&payload).context("text message is not valid UTF-8")?;
    Ok(Msg::Text(payload))
}
