//! Echo: for every message it gets, publishes `echo: <body>` to the message's `reply_to`, or to
//! `<subject>.reply` when there is none. With the WebSocket provider, a consumer link and a handler
//! link of the same link name share one session, so the answer goes back on the very socket the
//! message came in on.

wit_bindgen::generate!({
    world: "echo",
    path: "wit",
    generate_all,
});

use exports::wasmcloud::messaging::handler::Guest;
use wasmcloud::messaging::consumer;
use wasmcloud::messaging::types::BrokerMessage;

struct Echo;

impl Guest for Echo {
    fn handle_message(msg: BrokerMessage) -> Result<(), String> {
        let subject = msg
            .reply_to
            .unwrap_or_else(|| format!("{}.reply", msg.subject));
        let mut body = b"echo: ".to_vec();
        body.extend_from_slice(&msg.body);
        consumer::publish(&BrokerMessage {
            subject,
            body,
            reply_to: None,
        })
    }
}

export!(Echo);
