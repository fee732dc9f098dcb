//! A listener's history on the lattice: the JetStream stream of [`crate::lattice::history`]
//! as the [`Store`] the listener replays from, opened in the background when the link comes
//! (the SDK's command loop never waits for JetStream) and followed by every replica.

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt as _;
use tracing::{info, warn};

use crate::bindings::wasmcloud::messaging::types::BrokerMessage;
use crate::config::HistoryConfig;
use crate::envelope::Offset;
use crate::lattice::history::{History, Replay as StreamReplay};
use crate::lattice::Lattice;
use crate::server::history::{Replay, State, Store};
use crate::server::Listener;

/// The longest pause between two tries to open a history.
const RETRY_MAX: Duration = Duration::from_secs(5);

struct Stream(Arc<History>);

impl Store for Stream {
    fn epoch(&self) -> &str {
        self.0.epoch()
    }

    fn keep(&self) -> Option<u64> {
        self.0.keep()
    }

    fn expires(&self) -> bool {
        self.0.expires()
    }

    fn store<'a>(&'a self, msg: &'a BrokerMessage) -> BoxFuture<'a, Result<u64, String>> {
        self.0.store(msg).boxed()
    }

    fn first_offset(&self) -> BoxFuture<'_, Result<u64, String>> {
        self.0.first_offset().boxed()
    }

    fn replay<'a>(
        &'a self,
        pattern: &'a str,
        after: u64,
    ) -> BoxFuture<'a, Result<Box<dyn Replay>, String>> {
        async move {
            let replay = self.0.replay(pattern, after).await?;
            Ok(Box::new(Reading(replay)) as Box<dyn Replay>)
        }
        .boxed()
    }
}

struct Reading(StreamReplay);

impl Replay for Reading {
    fn next_batch(
        &mut self,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<(BrokerMessage, u64)>, String>> {
        async move {
            let batch = self.0.next_batch(max).await?;
            Ok(batch.into_iter().map(|s| (s.msg, s.offset)).collect())
        }
        .boxed()
    }
}

/// Opens the history of `listener` (lease key `key`) in the background, trying again until it
/// opens or the listener closes; then every stored broadcast reaches its clients.
pub(crate) fn open(
    lattice: Arc<Lattice>,
    listener: &Arc<Listener>,
    key: String,
    config: HistoryConfig,
) {
    let weak: Weak<Listener> = Arc::downgrade(listener);
    let stop = listener.stopped();
    tokio::spawn(async move {
        let mut pause = Duration::from_millis(200);
        loop {
            match lattice.history(&key, config.size, config.ttl).await {
                Ok(history) => {
                    let history = Arc::new(history);
                    let Some(listener) = weak.upgrade() else {
                        return;
                    };
                    let epoch: Arc<str> = history.epoch().into();
                    let follower = Arc::downgrade(&listener);
                    history.follow(stop.clone(), move |stored| {
                        if let Some(listener) = follower.upgrade() {
                            listener.publish_stored(
                                &stored.msg,
                                Offset {
                                    offset: stored.offset,
                                    epoch: &epoch,
                                },
                            );
                        }
                    });
                    listener.set_history(State::Open(Arc::new(Stream(history))));
                    return;
                }
                Err(why) => {
                    let Some(listener) = weak.upgrade() else {
                        return;
                    };
                    warn!(%key, listen = %listener.local_addr(), error = %why, retry_in_ms = pause.as_millis(), "cannot open the listener's history; its broadcasts fail until it opens");
                    listener.set_history(State::Failed(why));
                    drop(listener);
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(RETRY_MAX);
                    info!(%key, "trying to open the listener's history again");
                }
            }
        }
    });
}
