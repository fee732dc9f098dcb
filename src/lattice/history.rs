//! A listener's history: the broadcasts its component publishes, kept in a JetStream stream of
//! the lattice (one per listener, shared by every replica), so that a client that reconnects gets
//! what it missed.
//!
//! - Stream `WSHIST_<lattice>_<provider>_<lease key>` on subjects
//!   `wsprov.<lattice>.<provider>.h.<lease key>.<subject>`, file storage, `history_size + 1`
//!   messages per subject (the one more tells a complete recovery from one that lost something,
//!   see [`Replay`]) and `history_ttl_sec` as its age limit.
//! - A broadcast is stored first ([`History::store`], answered by the stream with its sequence:
//!   the broadcast's offset); every replica then gets it, in the stream's order, from its own
//!   ordered consumer ([`History::follow`]) and sends it to its subscribed clients.
//! - The epoch is the stream's creation time: it survives provider restarts, and changes only
//!   when the stream is deleted and made again (then old offsets mean nothing).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_nats::HeaderMap;
use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Lattice;
use crate::bindings::wasmcloud::messaging::types::BrokerMessage;

/// How long a JetStream call of the history may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a replay's consumer outlives a client that went away mid-replay.
const REPLAY_INACTIVE: Duration = Duration::from_secs(30);

/// A stored broadcast: the message and its offset (the stream's sequence).
#[derive(Debug, Clone)]
pub struct Stored {
    pub msg: BrokerMessage,
    pub offset: u64,
}

/// One listener's history.
pub struct History {
    js: jetstream::Context,
    nats: async_nats::Client,
    stream: stream::Stream,
    name: String,
    /// `<prefix>.h.<lease key>.`: what a stored subject starts with.
    prefix: String,
    epoch: String,
    /// Messages kept per subject (`history_size + 1`), if bounded.
    keep: Option<u64>,
    ttl: Duration,
    /// The stream's last offset when it was opened: following starts after it.
    opened_at: u64,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History")
            .field("stream", &self.name)
            .field("epoch", &self.epoch)
            .finish()
    }
}

impl Lattice {
    /// Opens (or makes) the history stream of the listener with lease key `key`; a stream made
    /// by another replica with other limits gets this replica's (the link's settings win).
    pub async fn history(
        self: &Arc<Self>,
        key: &str,
        size: u64,
        ttl: Duration,
    ) -> Result<History, String> {
        let js = jetstream::new(self.nats.clone());
        // The lease bucket's name is `WSPROV_<lattice>_<provider>`, both as name tokens.
        let scope = self.bucket.strip_prefix("WSPROV_").unwrap_or(&self.bucket);
        let name = format!("WSHIST_{scope}_{key}");
        let prefix = format!("{}.h.{key}.", self.subject_prefix);
        let keep = (size > 0).then_some(size + 1);
        let config = stream::Config {
            name: name.clone(),
            description: Some(format!(
                "history of a WebSocket listener's broadcasts (link {key}): what reconnecting clients recover"
            )),
            subjects: vec![format!("{prefix}>")],
            max_messages_per_subject: keep.map_or(-1, |k| i64::try_from(k).unwrap_or(i64::MAX)),
            max_age: ttl,
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::Old,
            allow_direct: true,
            ..Default::default()
        };
        let opened = async {
            let mut stream = js.get_or_create_stream(config.clone()).await.map_err(|e| {
                format!(
                    "JetStream on the lattice's NATS could not make the history stream {name}: {e}"
                )
            })?;
            let info = stream
                .info()
                .await
                .map_err(|e| format!("cannot read the history stream {name}: {e}"))?;
            let existing = &info.config;
            if existing.max_messages_per_subject != config.max_messages_per_subject
                || existing.max_age != config.max_age
                || existing.subjects != config.subjects
            {
                info!(stream = %name, "the history stream had other limits; it takes this link's history_size / history_ttl_sec");
                js.update_stream(config.clone()).await.map_err(|e| {
                    format!("cannot give the history stream {name} this link's limits: {e}")
                })?;
            }
            let epoch = format!("{:x}", info.created.unix_timestamp_nanos());
            let last = info.state.last_sequence;
            Ok::<_, String>((stream, epoch, last))
        };
        let (stream, epoch, opened_at) = tokio::time::timeout(CALL_TIMEOUT, opened)
            .await
            .map_err(|_| {
                format!(
                    "JetStream on the lattice's NATS did not answer within {} s for the history stream {name}",
                    CALL_TIMEOUT.as_secs()
                )
            })??;
        info!(stream = %name, %epoch, history_size = size, history_ttl_sec = ttl.as_secs(), "a listener keeps its broadcasts for reconnecting clients");
        Ok(History {
            js,
            nats: self.nats.clone(),
            stream,
            name,
            prefix,
            epoch,
            keep,
            ttl,
            opened_at,
        })
    }
}

impl History {
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    pub fn stream_name(&self) -> &str {
        &self.name
    }

    /// Messages kept per subject (`history_size + 1`), if bounded: a recovery that replays this
    /// many of one subject may have lost older ones.
    pub fn keep(&self) -> Option<u64> {
        self.keep
    }

    /// Whether messages expire (`history_ttl_sec`).
    pub fn expires(&self) -> bool {
        !self.ttl.is_zero()
    }

    /// Stores a broadcast; its offset once the stream has it.
    pub async fn store(&self, msg: &BrokerMessage) -> Result<u64, String> {
        let mut headers = HeaderMap::new();
        if let Some(reply_to) = &msg.reply_to {
            headers.insert("ws-reply-to", reply_to.as_str());
        }
        let subject = format!("{}{}", self.prefix, msg.subject);
        let stored = async {
            self.js
                .publish_with_headers(subject, headers, msg.body.clone())
                .await
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(CALL_TIMEOUT, stored).await {
            Ok(Ok(ack)) => Ok(ack.sequence),
            Ok(Err(e)) => Err(format!(
                "the history stream {} did not store it ({e})",
                self.name
            )),
            Err(_) => Err(format!(
                "the history stream {} did not confirm it within {} s",
                self.name,
                CALL_TIMEOUT.as_secs()
            )),
        }
    }

    /// `call`'s result, or that the stream did not answer within [`CALL_TIMEOUT`].
    async fn answered<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, String>>,
    ) -> Result<T, String> {
        tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "the history stream {} did not answer within {} s",
                    self.name,
                    CALL_TIMEOUT.as_secs()
                ))
            })
    }

    /// The lowest offset the stream still holds (past the last one when it is empty).
    pub async fn first_offset(&self) -> Result<u64, String> {
        let mut stream = self.stream.clone();
        self.answered(async {
            stream
                .info()
                .await
                .map(|info| info.state.first_sequence)
                .map_err(|e| format!("cannot read the history stream {}: {e}", self.name))
        })
        .await
    }

    /// A message of the stream as a broadcast.
    fn stored(&self, message: &async_nats::Message, offset: u64) -> Option<Stored> {
        let Some(subject) = message.subject.as_str().strip_prefix(&self.prefix) else {
            debug!(subject = %message.subject, "a history message outside the listener's subjects; ignored");
            return None;
        };
        let reply_to = message
            .headers
            .as_ref()
            .and_then(|h| h.get("ws-reply-to"))
            .map(|v| v.to_string());
        Some(Stored {
            msg: BrokerMessage {
                subject: subject.to_string(),
                body: message.payload.clone(),
                reply_to,
            },
            offset,
        })
    }

    /// Follows the stream from where it was when opened, until `stop`: every broadcast stored
    /// from then on goes to `deliver`, in the stream's order, once each. A broken consumer is
    /// made again from the offset after the last one delivered, so nothing is skipped.
    pub fn follow(
        self: &Arc<Self>,
        stop: CancellationToken,
        deliver: impl Fn(Stored) + Send + 'static,
    ) {
        let history = Arc::clone(self);
        tokio::spawn(async move {
            let mut next = history.opened_at + 1;
            let mut failures = 0u32;
            while !stop.is_cancelled() {
                let deliver_policy = consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: next,
                };
                let config = consumer::push::OrderedConfig {
                    deliver_subject: history.nats.new_inbox(),
                    filter_subject: format!("{}>", history.prefix),
                    deliver_policy,
                    ..Default::default()
                };
                let messages = match history.stream.create_consumer(config).await {
                    Ok(consumer) => consumer.messages().await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                let mut messages = match messages {
                    Ok(messages) => messages,
                    Err(error) => {
                        failures += 1;
                        warn!(stream = %history.name, %error, failures, "cannot follow the listener's history stream; its clients get no broadcasts until it works again (retrying)");
                        tokio::select! {
                            () = stop.cancelled() => break,
                            () = tokio::time::sleep(Duration::from_millis(200 * u64::from(failures.min(10)))) => continue,
                        }
                    }
                };
                if failures > 0 {
                    info!(stream = %history.name, "following the listener's history stream again; nothing stored meanwhile is skipped");
                    failures = 0;
                }
                loop {
                    let message = tokio::select! {
                        () = stop.cancelled() => return,
                        message = messages.next() => message,
                    };
                    match message {
                        Some(Ok(message)) => {
                            let Ok(offset) = message.info().map(|i| i.stream_sequence) else {
                                continue;
                            };
                            next = offset + 1;
                            if let Some(stored) = history.stored(&message.message, offset) {
                                deliver(stored);
                            }
                        }
                        Some(Err(error)) => {
                            warn!(stream = %history.name, %error, "following the listener's history stream broke; following it again from the next offset");
                            break;
                        }
                        None => break,
                    }
                }
            }
        });
    }

    /// The stored broadcasts on subjects matching `pattern` after `after`, in order, fetched in
    /// batches as the caller asks for them.
    pub async fn replay(self: &Arc<Self>, pattern: &str, after: u64) -> Result<Replay, String> {
        let config = consumer::pull::Config {
            filter_subject: format!("{}{pattern}", self.prefix),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: after + 1,
            },
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: REPLAY_INACTIVE,
            memory_storage: true,
            ..Default::default()
        };
        let consumer = self
            .answered(async {
                self.stream
                    .create_consumer(config)
                    .await
                    .map_err(|e| format!("cannot read the history stream {}: {e}", self.name))
            })
            .await?;
        Ok(Replay {
            history: Arc::clone(self),
            consumer,
        })
    }
}

/// A recovery's read of the stream: an ephemeral consumer, deleted when the replay is done.
pub struct Replay {
    history: Arc<History>,
    consumer: consumer::Consumer<consumer::pull::Config>,
}

impl Replay {
    /// The next stored broadcasts (at most `max`), as many as the stream holds now: fewer than
    /// `max` means the replay has caught up with the stream for the moment.
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<Stored>, String> {
        let name = &self.history.name;
        let fetched = async {
            let mut batch = self
                .consumer
                .fetch()
                .max_messages(max)
                .messages()
                .await
                .map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            while let Some(message) = batch.next().await {
                let message = message.map_err(|e| e.to_string())?;
                let Ok(offset) = message.info().map(|i| i.stream_sequence) else {
                    continue;
                };
                if let Some(stored) = self.history.stored(&message.message, offset) {
                    out.push(stored);
                }
            }
            Ok::<_, String>(out)
        };
        self.history
            .answered(async {
                fetched
                    .await
                    .map_err(|e| format!("reading the history stream {name} failed: {e}"))
            })
            .await
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        let stream = self.history.stream.clone();
        let name = self.consumer.cached_info().name.clone();
        // Not waited for: the consumer also goes by itself after REPLAY_INACTIVE.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = stream.delete_consumer(&name).await;
            });
        }
    }
}

/// Whether `subject` may be stored: a subject of the stream needs non-empty tokens and no
/// wildcard.
pub fn storable(subject: &str) -> Result<(), String> {
    if subject
        .split('.')
        .any(|t| t.is_empty() || t == "*" || t == ">")
    {
        return Err(format!(
            "{} cannot be kept in a listener's history: a broadcast's subject needs non-empty tokens between the dots and no wildcard",
            crate::subjects::quoted(subject)
        ));
    }
    Ok(())
}
