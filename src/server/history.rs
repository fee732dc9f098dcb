//! A listener's history as its clients see it (`history_size`, `history_ttl_sec`): every
//! broadcast a subscriber gets carries its `offset` and `epoch`, and a subscribe with
//! `"since": {"offset", "epoch"}` first replays what the client missed, in order, then goes on
//! with the live broadcasts, with no gap and no duplicate.
//!
//! Where the broadcasts are kept is not this module's business: a [`Store`] (the lattice's
//! JetStream, given by the provider) stores them, hands each replica every stored broadcast in
//! the store's order ([`Listener::publish_stored`](super::Listener::publish_stored)), and replays
//! what a pattern matched after an offset.
//!
//! The hand-over from replay to live: the subscription is put in the index *recovering* before
//! the replay starts, so that the live broadcasts for it are held (in its [`Gate`]) instead of
//! sent; the replay reads everything stored after `since` until it has caught up with the store;
//! then, with the live path stopped for a moment, the held broadcasts it did not replay are
//! queued and the subscription is live, skipping the broadcasts the replay already sent.
//! Everything stored after the subscription was made is either held or replayed, so nothing
//! falls between the two.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tracing::{debug, warn};

use crate::bindings::wasmcloud::messaging::types::BrokerMessage;
use crate::envelope::{Frame, Offset, Since};
use crate::server::client::{lock, Client, Gate};
use crate::server::subscriptions::Pattern;
use crate::server::{read, write, Listener, Shared};

/// How long a subscribe with `since` waits for the listener's history to open.
const OPEN_WAIT: Duration = Duration::from_secs(5);
/// How many stored broadcasts one read of a replay asks for.
pub const REPLAY_BATCH: usize = 256;

/// Where a listener's broadcasts are kept.
pub trait Store: Send + Sync + 'static {
    /// What the offsets belong to: a client's `since` of another epoch recovers nothing.
    fn epoch(&self) -> &str;
    /// Messages kept per subject, when bounded: a replay that brings this many of one subject
    /// may have lost older ones.
    fn keep(&self) -> Option<u64>;
    /// Whether stored messages expire.
    fn expires(&self) -> bool;
    /// Stores a broadcast; its offset.
    fn store<'a>(&'a self, msg: &'a BrokerMessage) -> BoxFuture<'a, Result<u64, String>>;
    /// The lowest offset still stored.
    fn first_offset(&self) -> BoxFuture<'_, Result<u64, String>>;
    /// A read of what subjects matching `pattern` got after `after`, in order.
    fn replay<'a>(
        &'a self,
        pattern: &'a str,
        after: u64,
    ) -> BoxFuture<'a, Result<Box<dyn Replay>, String>>;
}

/// A replay under way.
pub trait Replay: Send {
    /// The next stored broadcasts, at most `max`, as many as are stored now: fewer than `max`
    /// means the replay has caught up for the moment.
    fn next_batch(
        &mut self,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<(BrokerMessage, u64)>, String>>;
}

/// What a listener knows of its history.
#[derive(Clone, Default)]
pub enum State {
    /// Being opened.
    #[default]
    Opening,
    Open(Arc<dyn Store>),
    /// Cannot be opened now (why); being tried again.
    Failed(String),
}

/// What the live path does with a stored broadcast for a client with gates.
#[derive(Debug, PartialEq, Eq)]
enum Take {
    /// Send it: a live subscription matches that has not had it.
    Send,
    /// Hold it for the subscriptions being recovered (by index into the gates).
    Hold(Vec<usize>),
    /// Nothing: the recoveries already sent it.
    Skip,
}

/// Decides [`Take`] for a broadcast on `subject` at `offset`, given the client's patterns and
/// gates; a gate the live broadcasts have passed is dropped.
fn take(
    patterns: &[Pattern],
    gates: &mut Vec<(Pattern, Gate)>,
    subject: &str,
    offset: u64,
) -> Take {
    let mut open = false;
    let mut holding = Vec::new();
    for pattern in patterns.iter().filter(|p| p.matches(subject)) {
        match gates.iter().position(|(p, _)| p == pattern) {
            None => open = true,
            Some(at) => match &gates[at].1 {
                Gate::After(last) if offset > *last => {
                    // Past what the replay sent: the gate is done with.
                    gates.swap_remove(at);
                    open = true;
                }
                Gate::After(_) => {}
                Gate::Holding(..) => holding.push(pattern.clone()),
            },
        }
    }
    if open {
        return Take::Send;
    }
    if holding.is_empty() {
        return Take::Skip;
    }
    Take::Hold(
        holding
            .iter()
            .filter_map(|h| gates.iter().position(|(p, _)| p == h))
            .collect(),
    )
}

impl Client {
    /// Whether a stored broadcast on `subject` at `offset` goes to this client now (it has a
    /// gate): through a subscription that is live and has not had it yet. One that only
    /// subscriptions being recovered match is held for them (past `limit` bytes held, the
    /// client is closed as a slow consumer).
    pub(super) fn take_stored(
        &self,
        subject: &str,
        offset: u64,
        frame: &mut dyn FnMut() -> Frame,
        limit: usize,
    ) -> bool {
        let patterns = lock(&self.subscriptions);
        let mut gates = lock(&self.gates);
        let decided = take(&patterns, &mut gates, subject, offset);
        if gates.is_empty() {
            self.gated.store(false, Ordering::Relaxed);
        }
        let Take::Hold(at) = decided else {
            return decided == Take::Send;
        };
        for at in at {
            if let (_, Gate::Holding(held, bytes)) = &mut gates[at] {
                let frame = frame();
                *bytes += frame.len();
                if *bytes > limit {
                    drop(gates);
                    drop(patterns);
                    warn!(client = %self.id, remote_addr = %self.remote_addr, client_queue_bytes = limit, "the broadcasts held for a client while it recovers its history outgrew client_queue_bytes; closing it (1008 slow consumer)");
                    self.close(1008, "slow consumer");
                    return false;
                }
                held.push((frame, offset));
            }
        }
        false
    }
}

impl Listener {
    /// Whether the listener keeps a history: then its broadcasts are stored first (in this
    /// store) and reach the clients through [`Listener::publish_stored`]. An error while the
    /// history is not open.
    pub fn history(&self) -> Result<Option<Arc<dyn Store>>, String> {
        if self.shared.listen().history.is_none() {
            return Ok(None);
        }
        match &*self.shared.history.borrow() {
            State::Open(store) => Ok(Some(Arc::clone(store))),
            State::Opening => Err("the listener's history is still being opened".into()),
            State::Failed(why) => Err(format!("the listener's history cannot be used: {why}")),
        }
    }

    /// Says whether the history is open, or why not.
    pub fn set_history(&self, state: State) {
        self.shared.history.send_replace(state);
    }

    /// Sends a stored broadcast to every client subscribed to a pattern matching its subject,
    /// with its offset and epoch, in the order the store gives them; a subscription being
    /// recovered gets it through its recovery instead. Returns how many clients it was queued
    /// for.
    pub fn publish_stored(&self, msg: &BrokerMessage, at: crate::envelope::Offset<'_>) -> usize {
        let shared = &self.shared;
        let limit = shared.listen().client_queue_bytes;
        let mut frame = None;
        let mut sent = 0;
        read(&shared.subscriptions).for_each_matching(&msg.subject, |client| {
            let mut make = || {
                frame
                    .get_or_insert_with(|| shared.codec.encode_stored(msg, at))
                    .clone()
            };
            if client.gated.load(Ordering::Relaxed)
                && !client.take_stored(&msg.subject, at.offset, &mut make, limit)
            {
                return;
            }
            if client.send(make(), shared).is_ok() {
                sent += 1;
            }
        });
        crate::stats::add(&shared.counters.fanout_frames, sent);
        sent
    }
}

/// Waits (at most [`OPEN_WAIT`]) for the listener's history to open.
async fn opened(shared: &Shared) -> Result<Arc<dyn Store>, String> {
    let mut state = shared.history.subscribe();
    let waited = tokio::time::timeout(OPEN_WAIT, async {
        loop {
            match &*state.borrow_and_update() {
                State::Open(store) => return Ok(store.clone()),
                State::Failed(why) => return Err(why.clone()),
                State::Opening => {}
            }
            if state.changed().await.is_err() {
                return Err("the listener is closing".to_string());
            }
        }
    })
    .await;
    waited.unwrap_or_else(|_| {
        Err(format!(
            "the listener's history did not open within {} s",
            OPEN_WAIT.as_secs()
        ))
    })
}

/// Recovers a subscription that came with `since` (already in the index, with a holding
/// gate), then makes it live; answers `{"ok", "recovered"}` when done, or `{"error"}`.
pub(super) async fn recover(
    shared: Arc<Shared>,
    client: Arc<Client>,
    pattern: Pattern,
    since: Since,
) {
    let recovered = match replay(&shared, &client, &pattern, &since).await {
        Ok(recovered) => recovered,
        Err(why) => {
            if client.closed.load(Ordering::Relaxed) {
                return;
            }
            warn!(client = %client.id, pattern = %pattern.as_str(), %why, "a client's recovery failed; its subscription goes on with the live broadcasts and it is told recovered: false");
            go_live(&shared, &client, &pattern, since.offset);
            false
        }
    };
    stats_recovery(&shared, recovered);
    debug!(client = %client.id, pattern = %pattern.as_str(), recovered, "subscription recovered from the history; live from now on");
    let _ = client.send(
        shared.codec.encode_recovered(pattern.as_str(), recovered),
        &shared,
    );
}

fn stats_recovery(shared: &Shared, recovered: bool) {
    let counter = if recovered {
        &shared.counters.recoveries
    } else {
        &shared.counters.recoveries_incomplete
    };
    crate::stats::bump(counter);
}

/// Sends what was stored after `since`, then makes the subscription live; whether that was
/// everything the client missed.
async fn replay(
    shared: &Shared,
    client: &Arc<Client>,
    pattern: &Pattern,
    since: &Since,
) -> Result<bool, String> {
    let store = opened(shared).await?;
    // An empty epoch is this history's, whatever it is: `{"offset": 0}` asks for all it holds.
    if !since.epoch.is_empty() && since.epoch != store.epoch() {
        // Another stream's offsets (deleted and made again): nothing can be recovered.
        go_live(shared, client, pattern, 0);
        return Ok(false);
    }
    let mut replay = store.replay(pattern.as_str(), since.offset).await?;
    let limit = shared.listen().client_queue_bytes;
    let mut last = since.offset;
    let mut per_subject: HashMap<String, u64> = HashMap::new();
    loop {
        let batch = replay.next_batch(REPLAY_BATCH).await?;
        let caught_up = batch.len() < REPLAY_BATCH;
        for (msg, offset) in batch {
            client.room(limit / 2).await?;
            let frame = shared.codec.encode_stored(
                &msg,
                Offset {
                    offset,
                    epoch: store.epoch(),
                },
            );
            client
                .send(frame, shared)
                .map_err(|e| crate::server::client::send_words(&e).to_string())?;
            crate::stats::bump(&shared.counters.replayed);
            last = offset;
            *per_subject.entry(msg.subject).or_default() += 1;
        }
        if caught_up {
            break;
        }
    }
    go_live(shared, client, pattern, last);
    let mut complete = store
        .keep()
        .is_none_or(|keep| per_subject.values().all(|&n| n < keep));
    if complete && store.expires() {
        // Messages expire oldest first: once the oldest stored is past the one after `since`,
        // some that the client missed may have gone.
        complete = store.first_offset().await? <= since.offset.saturating_add(1);
    }
    Ok(complete)
}

/// Ends a recovery: with the live path stopped for a moment, the broadcasts held for the
/// subscription that the replay did not send (past `last`) are queued, and the subscription
/// takes live broadcasts past `last` from now on.
fn go_live(shared: &Shared, client: &Client, pattern: &Pattern, last: u64) {
    // The index's write lock holds the live path (every `publish_stored`) for the hand-over.
    let _live = write(&shared.subscriptions);
    let mut gates = lock(&client.gates);
    let Some(at) = gates.iter().position(|(p, _)| p == pattern) else {
        return;
    };
    let gate = std::mem::replace(&mut gates[at].1, Gate::After(last));
    let mut newest = last;
    if let Gate::Holding(held, _) = gate {
        for (frame, offset) in held.into_iter().filter(|(_, o)| *o > last) {
            newest = offset;
            let _ = client.send(frame, shared);
        }
    }
    gates[at].1 = Gate::After(newest);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Pattern {
        Pattern::parse(text).unwrap()
    }

    #[test]
    fn the_live_path_holds_for_recoveries_and_skips_what_they_sent() {
        let patterns = [p("news.>"), p("chat.*")];
        let mut gates = vec![(p("news.>"), Gate::Holding(Vec::new(), 0))];
        // Only a recovering subscription matches: held for it.
        assert_eq!(
            take(&patterns, &mut gates, "news.a", 7),
            Take::Hold(vec![0])
        );
        // A live one matches: sent.
        assert_eq!(take(&patterns, &mut gates, "chat.x", 8), Take::Send);
        // Nothing matches: nothing to do.
        assert_eq!(take(&patterns, &mut gates, "other", 9), Take::Skip);
        // Recovered up to 10: up to it the recovery sent them; past it they go, and the gate
        // goes with the first one past it.
        gates[0].1 = Gate::After(10);
        assert_eq!(take(&patterns, &mut gates, "news.a", 10), Take::Skip);
        assert_eq!(gates.len(), 1);
        assert_eq!(take(&patterns, &mut gates, "news.a", 11), Take::Send);
        assert!(gates.is_empty());
        assert_eq!(take(&patterns, &mut gates, "news.a", 12), Take::Send);
    }

    #[test]
    fn an_overlapping_live_subscription_sends_what_a_recovering_one_holds() {
        let patterns = [p("news.>"), p("news.a")];
        let mut gates = vec![(p("news.>"), Gate::After(5))];
        assert_eq!(take(&patterns, &mut gates, "news.a", 3), Take::Send);
        assert_eq!(take(&patterns, &mut gates, "news.b", 4), Take::Skip);
    }
}
