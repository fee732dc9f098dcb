//! Test helpers, each playing one real part: `nats` (a nats-server child process), `provider`
//! (the provider binary started as the host starts it), `component` (a component played over
//! wRPC), `ws` (WebSocket servers on 127.0.0.1, plain or TLS), `certs` (test certificates), `tcp`
//! (servers that misbehave below WebSocket), `otlp` (an OpenTelemetry metrics collector), `pyws`
//! (a WebSocket server of another implementation, Python `websockets`).

#![allow(dead_code)]

pub mod certs;
pub mod clients;
pub mod component;
pub mod docs;
pub mod loss;
pub mod nats;
pub mod otlp;
pub mod proto;
pub mod provider;
pub mod pyws;
pub mod replicas;
pub mod tcp;
pub mod wait;
pub mod ws;

pub use wait::wait_until;

use std::sync::atomic::{AtomicUsize, Ordering};

/// wRPC bindings of the played component's world (imports `consumer`, exports `handler`).
///
/// Built on the same fixed wRPC stack the provider delivers with (wrpc-transport-nats 0.31): the
/// SDK's 0.29 client loses a reply now and then, which would make a test call hang.
pub mod played {
    delivery_bindgen::generate!({
        world: "test:played/component",
        path: ["wit/deps/messaging", "tests/wit"],
        anyhow_path: "::delivery_bindgen::anyhow",
        bitflags_path: "::delivery_bindgen::bitflags",
        bytes_path: "::delivery_bindgen::bytes",
        futures_path: "::delivery_bindgen::futures",
        tokio_path: "::delivery_bindgen::tokio",
        tokio_util_path: "::delivery_bindgen::tokio_util",
        tracing_path: "::delivery_bindgen::tracing",
        wasm_tokio_path: "::delivery_bindgen::wasm_tokio",
        wrpc_transport_path: "::delivery_bindgen::wrpc_transport",
        with: {
            "wasmcloud:messaging/consumer@0.2.0": generate,
            "wasmcloud:messaging/handler@0.2.0": generate,
            "wasmcloud:messaging/types@0.2.0": generate,
        }
    });
}

/// A JSON envelope as a server sends it: `{subject, body (base64), reply_to?}`.
/// Standard base64 with padding, as the envelope's `body`.
/// `len` bytes that differ from position to position (and from `seed` to `seed`), so a chunk
/// lost, repeated or reordered on the way shows.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// A client JWT signed HS256 with `secret`: `sub` `user`, the `subjects` claim, and an `exp` 10
/// minutes ahead.
pub fn hs256_jwt(secret: &str, user: &str, subjects: &[&str]) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({ "sub": user, "exp": exp, "subjects": subjects }),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn envelope(subject: &str, body: &[u8], reply_to: Option<&str>) -> String {
    use base64::Engine as _;
    let mut value = serde_json::json!({
        "subject": subject,
        "body": base64::engine::general_purpose::STANDARD.encode(body),
    });
    if let Some(reply_to) = reply_to {
        value["reply_to"] = serde_json::json!(reply_to);
    }
    value.to_string()
}

/// A MessagePack envelope as a server sends it: the map `{subject, body (bin), reply_to?, id?}`,
/// written with rmpv (not the provider's encoder).
pub fn msgpack_envelope(
    subject: &str,
    body: &[u8],
    reply_to: Option<&str>,
    id: Option<&str>,
) -> Vec<u8> {
    use rmpv::Value;
    let mut pairs = vec![
        (Value::from("subject"), Value::from(subject)),
        (Value::from("body"), Value::Binary(body.to_vec())),
    ];
    if let Some(reply_to) = reply_to {
        pairs.push((Value::from("reply_to"), Value::from(reply_to)));
    }
    if let Some(id) = id {
        pairs.push((Value::from("id"), Value::from(id)));
    }
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &Value::Map(pairs)).expect("writing to a Vec");
    out
}

/// A MessagePack frame read with rmpv: its map's keys (as strings) and values.
pub fn msgpack_map(bytes: &[u8]) -> std::collections::BTreeMap<String, rmpv::Value> {
    let value = rmpv::decode::read_value(&mut &bytes[..]).expect("a MessagePack value");
    let rmpv::Value::Map(pairs) = value else {
        panic!("a MessagePack map, got {value}");
    };
    pairs
        .into_iter()
        .map(|(k, v)| (k.as_str().expect("string keys").to_string(), v))
        .collect()
}

/// A name unique within this test process.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A nats-server, the provider on it, and a played component: what most tests start from.
pub struct Rig {
    pub nats: nats::NatsServer,
    pub client: async_nats::Client,
    pub provider: provider::ProviderProcess,
}

impl Rig {
    pub async fn start() -> Self {
        Self::with_options(provider::ProviderOptions::default()).await
    }

    pub async fn with_options(options: provider::ProviderOptions) -> Self {
        let nats = nats::NatsServer::start().await;
        let client = nats.client().await;
        let provider = provider::ProviderProcess::start(&nats, options).await;
        Rig {
            nats,
            client,
            provider,
        }
    }

    pub async fn component(&self, id: &str) -> component::PlayedComponent {
        component::PlayedComponent::start(&self.provider, &self.nats.url, id).await
    }

    /// Puts `component`'s handler and consumer links named `default` (one session) to `uri`,
    /// with `extra` settings, and plays the component.
    pub async fn linked_both_ways(
        &self,
        component: &str,
        uri: &str,
        extra: &[(&str, &str)],
    ) -> component::PlayedComponent {
        let mut config = vec![("uri", uri)];
        config.extend_from_slice(extra);
        let provider = &self.provider;
        // The handler link first: the session it makes delivers from its first frame on (made
        // by the consumer link, it would drop frames until the handler link's put is handled).
        provider
            .put_link(&provider.handler_link(component, "default", &config))
            .await;
        provider
            .put_link(&provider.consumer_link(component, "default", &config))
            .await;
        self.component(component).await
    }
}
