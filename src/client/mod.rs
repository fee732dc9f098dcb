//! Client mode: sessions that dial a WebSocket server (a link with `uri`), one connection each,
//! reconnecting by themselves.
//!
//! - [`session`]: one connection owned by one task: connect, reconnect, write, read.
//! - [`socket`]: dialling, TLS and the handshake (yawc), permessage-deflate, errors in words.
//! - [`acks`]: acknowledged delivery (`ack = true`): frames waiting for the server's ack.

pub mod acks;
pub mod session;
pub mod socket;
