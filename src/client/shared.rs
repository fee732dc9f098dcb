//! What a dialling session's handle and its task share: the session's state, and the frames in
//! its send queue with what waits on them.

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::envelope::Frame;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// Another replica holds the connection (`replicas = one`); this one stands by.
    Standby,
    Connecting,
    Open,
    Reconnecting,
    Closed,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Standby => "standby",
            SessionState::Connecting => "connecting",
            SessionState::Open => "open",
            SessionState::Reconnecting => "reconnecting",
            SessionState::Closed => "closed",
        }
    }
}

/// A frame waiting in the send queue, with the caller waiting for it to be written.
pub(super) struct Outgoing {
    pub(super) frame: Frame,
    pub(super) deadline: Instant,
    /// The caller waiting for the write; `None` when nobody waits (an acknowledgement).
    pub(super) done: Option<oneshot::Sender<Result<(), String>>>,
    /// What else waits on this frame once it is handed to the socket.
    pub(super) tracked: Tracked,
}

/// What waits on an outgoing frame besides its caller: marked when the frame is handed to the
/// socket, so that a connection lost mid-write neither forgets an acknowledged envelope nor
/// fails a request whose frame never left.
#[derive(Debug, Clone)]
pub(super) enum Tracked {
    Nothing,
    /// An envelope of `ack = true` with this id: sent again after a reconnect until acked.
    Ack(String),
    /// A request waiting on this inbox: failed when its connection is lost, not before.
    Request(String),
}
