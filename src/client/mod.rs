//! Client mode: sessions that dial a WebSocket server (a link with `uri`), one connection each,
//! reconnecting by themselves.
//!
//! - [`session`]: the handle to a session, shared by its links and the provider.
//! - [`task`]: the session's task: attempts, the connection's life, reconnecting; [`io`]: its
//!   reading and writing while a connection lasts.
//! - [`shared`]: what the handle and the task share (state, the send queue's frames);
//!   [`backoff`]: the reconnect backoff and attempt count.
//! - [`socket`]: dialling, TLS and the handshake (yawc), permessage-deflate, errors in words.
//! - [`acks`]: acknowledged delivery (`ack = true`): frames waiting for the server's ack.

pub mod acks;
pub mod backoff;
pub mod io;
pub mod session;
pub mod shared;
pub mod socket;
pub mod task;
