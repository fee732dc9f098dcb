//! What both modes share of the WebSocket library (yawc).

use yawc::WebSocketError;

/// A WebSocket error in words a user can act on.
pub fn describe(e: &WebSocketError) -> String {
    match e {
        WebSocketError::InvalidStatusCode(status) => {
            format!("the server refused the WebSocket handshake with HTTP {status}")
        }
        WebSocketError::Redirected {
            status_code,
            location,
        } => format!(
            "the server refused the WebSocket handshake with HTTP {status_code}, a redirect to {location} (redirects are not followed; put the final uri in the link)"
        ),
        WebSocketError::IoError(io) => format!("I/O error: {io}"),
        WebSocketError::ConnectionClosed => "the connection was closed".into(),
        WebSocketError::FrameTooLarge => {
            "a message larger than max_message_bytes (after decompression)".into()
        }
        WebSocketError::HTTPError(e) => format!("HTTP error in the handshake: {e}"),
        other => other.to_string(),
    }
}
