//! Serving the `consumer` export (components' `publish` and `request`) over wRPC.
//!
//! Not through the SDK: its transport, wrpc-transport-nats 0.29, has a demultiplexing task whose
//! `select!` is not biased, so on the serving side a chunk of a call's streamed parameters (any
//! call larger than nats-server's `max_payload`, 1 MiB by default) that arrives before the
//! subscription to the parameter stream is registered is dropped, and the call fails with
//! "bytes remaining on stream". wrpc-transport-nats 0.31 fixes the race and speaks the same wire
//! protocol, so the export is generated with wit-bindgen-wrpc 0.11 and served on a NATS
//! connection of the provider's own (from the HostData credentials), under the prefix and queue
//! group the SDK would use (`<lattice>.<provider id>`), so replicas still share the calls. The SDK
//! keeps links, health, config updates and shutdown (plain NATS subscriptions, not wRPC).
//!
//! Each invocation is a task of a `TaskTracker`, which forgets a task when it ends (the SDK's
//! `serve_provider_exports` keeps every served call in a `JoinSet` it never joins, so its memory
//! grows with the number of calls).

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use tracing::warn;
use wasmcloud_provider_sdk::{Context, HostData};

use super::WebSocketMessagingProvider;
use crate::bindings::wasmcloud::messaging::types::BrokerMessage;

mod bindings {
    delivery_bindgen::generate!({
        world: "interfaces",
        with: {
            "wasmcloud:messaging/consumer@0.2.0": generate,
            "wasmcloud:messaging/handler@0.2.0": generate,
            "wasmcloud:messaging/types@0.2.0": generate,
        },
        anyhow_path: "::delivery_bindgen::anyhow",
        bitflags_path: "::delivery_bindgen::bitflags",
        bytes_path: "::delivery_bindgen::bytes",
        futures_path: "::delivery_bindgen::futures",
        tokio_path: "::delivery_bindgen::tokio",
        tokio_util_path: "::delivery_bindgen::tokio_util",
        tracing_path: "::delivery_bindgen::tracing",
        wasm_tokio_path: "::delivery_bindgen::wasm_tokio",
        wrpc_transport_path: "::delivery_bindgen::wrpc_transport",
    });
}

type Message = bindings::wasmcloud::messaging::types::BrokerMessage;

/// The provider as the 0.31 bindings serve it: the call's NATS headers become the SDK's
/// [`Context`] (the calling component, the link name, the trace context), as the SDK's own
/// serving would make it.
#[derive(Clone)]
struct Served(WebSocketMessagingProvider);

/// The SDK's context of a call, from its headers (async-nats 0.49's, turned into the 0.39
/// headers the SDK reads).
fn context(headers: Option<delivery_nats::HeaderMap>) -> Option<Context> {
    let headers = headers?;
    let mut sdk = async_nats::HeaderMap::new();
    for (name, values) in headers.iter() {
        for value in values {
            sdk.append(name.as_ref(), value.as_str());
        }
    }
    Some(wasmcloud_provider_sdk::provider::invocation_context(&sdk))
}

impl bindings::exports::wasmcloud::messaging::consumer::Handler<delivery_wrpc::NatsContext>
    for Served
{
    async fn publish(
        &self,
        cx: delivery_wrpc::NatsContext,
        msg: Message,
    ) -> anyhow::Result<Result<(), String>> {
        let msg = BrokerMessage {
            subject: msg.subject,
            body: msg.body,
            reply_to: msg.reply_to,
        };
        Ok(self.0.publish_message(context(cx.headers), msg).await)
    }

    async fn request(
        &self,
        cx: delivery_wrpc::NatsContext,
        subject: String,
        body: Bytes,
        timeout_ms: u32,
    ) -> anyhow::Result<Result<Message, String>> {
        let reply = self
            .0
            .request_message(context(cx.headers), subject, body, timeout_ms)
            .await;
        Ok(reply.map(|msg| Message {
            subject: msg.subject,
            body: msg.body,
            reply_to: msg.reply_to,
        }))
    }
}

/// Serves the `consumer` export until `shutdown`. Invocations still running at shutdown end with
/// the runtime.
pub async fn serve(
    host_data: &HostData,
    provider: WebSocketMessagingProvider,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    use futures::StreamExt as _;
    let nats = crate::lattice::connect(host_data, "exports").await?;
    let prefix = format!(
        "{}.{}",
        host_data.lattice_rpc_prefix, host_data.provider_key
    );
    let wrpc = delivery_wrpc::Client::new(Arc::new(nats), prefix.clone(), Some(prefix.into()))
        .await
        .context("failed to create the wRPC server of the exports")?;
    let invocations = bindings::serve(&wrpc, Served(provider))
        .await
        .context("failed to serve the consumer export")?;
    let mut invocations = futures::stream::select_all(
        invocations
            .into_iter()
            .map(|(instance, name, calls)| calls.map(move |call| (instance, name, call))),
    );
    let mut shutdown = std::pin::pin!(shutdown);
    let tasks = tokio_util::task::TaskTracker::new();
    loop {
        tokio::select! {
            Some((instance, name, call)) = invocations.next() => match call {
                Ok(call) => {
                    tasks.spawn(async move {
                        if let Err(err) = call.await {
                            crate::stats::bump(&crate::stats::CALL_ERRORS);
                            warn!(?err, instance, name, "failed to serve a call of a component (counted as call_errors)");
                        }
                    });
                }
                Err(err) => {
                    crate::stats::bump(&crate::stats::CALL_ERRORS);
                    warn!(?err, instance, name, "failed to accept a call of a component (counted as call_errors)");
                }
            },
            () = &mut shutdown => {
                tasks.close();
                return Ok(());
            }
        }
    }
}
