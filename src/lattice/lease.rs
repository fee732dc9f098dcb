//! One session's lease: the fence that says whether this replica may use the session's
//! connection now, and the claim task that wins, renews, loses and gives up the lease.
//!
//! Timings, with F = the owner's `failover_sec`:
//! - the owner renews every F/4, each renewal a revision-checked update;
//! - a renewal sent at t lets the owner use the connection until t + 3F/4 (its fence). A renewal
//!   that does not come back in time (paused process, NATS cut) leaves the fence at its last
//!   deadline, and past it the owner closes its connection and delivers nothing more;
//! - a standby takes over once it has seen no new revision for F on its own clock. It saw the
//!   last renewal after it was sent, so it takes over at t + F at the earliest: F/4 after the old
//!   owner stopped. That F/4 is the takeover margin; the two never deliver at the same time as
//!   long as the two machines' clocks run at rates within 25 % of each other.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream::kv;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Lattice, Lease};
use crate::identity::SessionKey;

/// Whether this replica may use a session's connection now: it holds the lease and its last
/// renewal is recent enough. Checked by the socket task (connect, keep open) and right before
/// every delivery, so a replica that was paused past its deadline delivers nothing it reads
/// after it wakes.
#[derive(Clone)]
pub struct Fence {
    inner: Arc<FenceInner>,
}

struct FenceInner {
    /// Until when the lease holds, in ns since [`epoch`]; 0 while this replica does not own it.
    until: AtomicU64,
    /// Flips to true when the lease is won or renewed, to false when it is lost.
    owner: watch::Sender<bool>,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn nanos(at: Instant) -> u64 {
    // At least 1: 0 means "not the owner". u64 nanoseconds last 584 years.
    (at.saturating_duration_since(epoch()).as_nanos() as u64).max(1)
}

impl Default for Fence {
    fn default() -> Self {
        Fence {
            inner: Arc::new(FenceInner {
                until: AtomicU64::new(0),
                owner: watch::channel(false).0,
            }),
        }
    }
}

impl Fence {
    /// True while this replica owns the lease and its deadline has not passed.
    pub fn holds(&self) -> bool {
        let until = self.inner.until.load(Ordering::Acquire);
        until != 0 && nanos(Instant::now()) < until
    }

    fn extend(&self, until: Instant) {
        self.inner.until.store(nanos(until), Ordering::Release);
        self.inner.owner.send_replace(true);
    }

    fn revoke(&self) {
        self.inner.until.store(0, Ordering::Release);
        self.inner.owner.send_replace(false);
    }

    /// Resolves once the fence holds.
    pub async fn owned(&self) {
        let mut owner = self.inner.owner.subscribe();
        loop {
            if self.holds() {
                return;
            }
            if owner.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Resolves once the fence no longer holds: revoked, or its deadline passed unrenewed.
    pub async fn lost(&self) {
        let mut owner = self.inner.owner.subscribe();
        loop {
            let until = self.inner.until.load(Ordering::Acquire);
            if until == 0 || nanos(Instant::now()) >= until {
                return;
            }
            let at = epoch() + Duration::from_nanos(until);
            tokio::select! {
                () = tokio::time::sleep_until(at) => {}
                _ = owner.changed() => {}
            }
        }
    }
}

/// What this replica's session looks like, for the lease's value.
pub type Status = Box<dyn Fn() -> Option<u64> + Send + Sync>;

/// How a replica leaves a lease it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leave {
    /// The provider stops: the lease is marked released, and a standby takes over at once.
    Release,
    /// The link is gone: the lease key is deleted.
    Delete,
}

/// The claim task of one session on this replica.
pub struct Claim {
    cancel: CancellationToken,
    leave: Arc<OnceLock<Leave>>,
    task: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Claim {
    /// Starts competing for the lease `id` of `session`; `fence` tells the session when it owns
    /// it. `status` says how long the session has been down (for the lease's value, which
    /// standbys use for health).
    pub fn start(
        lattice: Arc<Lattice>,
        id: String,
        session: SessionKey,
        failover: Duration,
        fence: Fence,
        status: Status,
    ) -> Claim {
        let cancel = CancellationToken::new();
        let leave = Arc::new(OnceLock::new());
        let task = tokio::spawn(
            Claimer {
                lattice,
                key: id,
                session,
                failover,
                fence,
                status,
                cancel: cancel.clone(),
                leave: Arc::clone(&leave),
            }
            .run(),
        );
        Claim {
            cancel,
            leave,
            task: tokio::sync::Mutex::new(Some(task)),
        }
    }

    /// Stops competing: a lease held is released or deleted (`how`), with a revision check, within
    /// `limit`.
    pub async fn leave(&self, how: Leave, limit: Duration) {
        let _ = self.leave.set(how);
        self.cancel.cancel();
        if let Some(task) = self.task.lock().await.take() {
            if tokio::time::timeout(limit, task).await.is_err() {
                debug!("a lease was not given up within its deadline; it expires by itself");
            }
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

struct Claimer {
    lattice: Arc<Lattice>,
    /// The lease key: the session's id.
    key: String,
    session: SessionKey,
    failover: Duration,
    fence: Fence,
    status: Status,
    cancel: CancellationToken,
    leave: Arc<OnceLock<Leave>>,
}

/// How often an owner looks whether its connection went up or down since its last renewal.
const STATUS_LOOK: Duration = Duration::from_millis(100);

/// What a standby does next about a lease it saw.
enum Next {
    /// Nobody holds it: create it (nothing there) or take it at this revision.
    Take(Option<u64>, &'static str),
    /// An owner holds it: look again at this instant, or at the next change.
    WaitUntil(Instant),
}

/// How long a standby lets a deleted lease lie before it claims it: a deletion means the link is
/// going, most likely on every host, and this replica's own delete is probably on its way.
const AFTER_DELETE: Duration = Duration::from_millis(500);

impl Claimer {
    /// This replica's lease, and its bytes as the key holds them.
    fn value(&self, released: bool) -> (Lease, bytes::Bytes) {
        let lease = Lease {
            owner: self.lattice.me.clone(),
            failover_ms: self.failover.as_millis() as u64,
            component: self.session.component.clone(),
            link_name: self.session.link_name.clone(),
            released,
            down_ms: (self.status)(),
        };
        let bytes = serde_json::to_vec(&lease)
            .expect("a lease serializes")
            .into();
        (lease, bytes)
    }

    async fn run(self) {
        let mut state = Turn::Standby;
        let held = loop {
            state = match state {
                Turn::Owner(revision) => self.renew(revision).await,
                Turn::Standby => self.stand_by().await,
                Turn::Stop(held) => break held,
            };
        };
        self.fence.revoke();
        let how = self.leave.get().copied().unwrap_or(Leave::Release);
        if let Some(revision) = held {
            let result = match how {
                Leave::Release => self
                    .lattice
                    .kv
                    .update(&self.key, self.value(true).1, revision)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                Leave::Delete => self
                    .lattice
                    .kv
                    .delete_expect_revision(&self.key, Some(revision))
                    .await
                    .map_err(|e| e.to_string()),
            };
            match result {
                Ok(()) => debug!(session = %self.key, ?how, "lease given up"),
                Err(error) => {
                    debug!(session = %self.key, ?how, %error, "could not give the lease up; it expires by itself")
                }
            }
        }
        if how == Leave::Delete {
            self.lattice.forget(&self.key);
        }
    }

    /// Renews the lease every F/4 while it holds. A renewal that fails for want of an answer is
    /// tried again soon: one that still lands with this revision keeps the lease (the fence may
    /// have closed meanwhile, and then opens again).
    async fn renew(&self, revision: u64) -> Turn {
        let period = self.failover / 4;
        let mut revision = revision;
        let mut next = Instant::now() + period;
        // Whether the lease last written says the connection is down: when that changes, the
        // lease is renewed at once, so that the standbys' health follows within a look, not a
        // period (they read how long the owner has been down from the lease).
        let mut said_down = (self.status)().is_some();
        let mut look = tokio::time::interval(STATUS_LOOK);
        look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => return Turn::Stop(Some(revision)),
                () = tokio::time::sleep_until(next) => {}
                _ = look.tick() => {
                    if (self.status)().is_some() == said_down {
                        continue;
                    }
                }
            }
            let sent = Instant::now();
            let (lease, value) = self.value(false);
            let update = self.lattice.kv.update(&self.key, value, revision);
            match tokio::time::timeout(period, update).await {
                Ok(Ok(renewed)) => {
                    let was_lost = !self.fence.holds();
                    revision = renewed;
                    next = sent + period;
                    self.fence.extend(sent + self.failover * 3 / 4);
                    said_down = lease.down_ms.is_some();
                    self.lattice.record(&self.key, renewed, Some(lease));
                    if was_lost {
                        info!(session = %self.key, component = %self.session.component, link_name = %self.session.link_name, "the lease is renewed again; this replica reconnects the session");
                    }
                }
                Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    self.fence.revoke();
                    warn!(session = %self.key, component = %self.session.component, link_name = %self.session.link_name, "another replica holds this session's lease now; this replica closed its connection and stands by");
                    return Turn::Standby;
                }
                failed => {
                    let error = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("no answer within {} ms", period.as_millis()),
                    };
                    if self.fence.holds() {
                        debug!(session = %self.key, %error, "a lease renewal failed; trying again");
                    } else {
                        warn!(session = %self.key, component = %self.session.component, link_name = %self.session.link_name, %error, "the lease could not be renewed in time (is the lattice's NATS reachable?); this replica closed its connection so that a standby can take over");
                    }
                    next = Instant::now() + period / 4;
                }
            }
        }
    }

    /// Watches the lease while another replica holds it, and claims it when it is free: never
    /// taken, deleted, released, held by this host's previous run, or not renewed for the
    /// owner's failover time.
    async fn stand_by(&self) -> Turn {
        let mut changes = self.lattice.changes();
        // The owner this standby last said it waits on, so that it says so once per owner.
        let mut waits_on: Option<String> = None;
        loop {
            let next = match self.lattice.observed(&self.key) {
                None => Next::Take(None, "free"),
                Some(seen) => match &seen.lease {
                    None if seen.seen.elapsed() < AFTER_DELETE => {
                        Next::WaitUntil(seen.seen + AFTER_DELETE)
                    }
                    None => Next::Take(None, "free"),
                    Some(lease) if lease.released => Next::Take(Some(seen.revision), "released"),
                    Some(lease) if lease.owner.instance == self.lattice.me.instance => {
                        Next::Take(Some(seen.revision), "its own")
                    }
                    Some(lease) if lease.owner.host == self.lattice.me.host => {
                        Next::Take(Some(seen.revision), "held by this host's previous run")
                    }
                    Some(lease) => {
                        let due = seen.seen + Duration::from_millis(lease.failover_ms);
                        if Instant::now() >= due {
                            Next::Take(Some(seen.revision), "silent")
                        } else {
                            if waits_on.as_deref() != Some(lease.owner.instance.as_str()) {
                                debug!(session = %self.key, owner = %lease.owner.host, "standing by: another replica holds the session");
                                waits_on = Some(lease.owner.instance.clone());
                            }
                            Next::WaitUntil(due)
                        }
                    }
                },
            };
            match next {
                Next::WaitUntil(at) => {
                    tokio::select! {
                        () = self.cancel.cancelled() => return Turn::Stop(None),
                        () = tokio::time::sleep_until(at) => {}
                        _ = changes.changed() => {}
                    }
                }
                Next::Take(revision, why) => {
                    if self.cancel.is_cancelled() {
                        return Turn::Stop(None);
                    }
                    if let Some(won) = self.take(revision, why).await {
                        return Turn::Owner(won);
                    }
                    // Someone else was faster (or NATS did not answer): look at what the key
                    // holds now before trying again.
                    tokio::select! {
                        () = self.cancel.cancelled() => return Turn::Stop(None),
                        () = tokio::time::sleep(RETRY) => {}
                    }
                    self.refresh().await;
                }
            }
        }
    }

    /// Creates the lease (`revision` = `None`) or replaces the value at `revision`; the revision
    /// check makes one replica win when several try at once.
    async fn take(&self, revision: Option<u64>, why: &str) -> Option<u64> {
        let sent = Instant::now();
        let (lease, value) = self.value(false);
        let attempt = async {
            match revision {
                None => self
                    .lattice
                    .kv
                    .create(&self.key, value)
                    .await
                    .map_err(|e| e.to_string()),
                Some(revision) => self
                    .lattice
                    .kv
                    .update(&self.key, value, revision)
                    .await
                    .map_err(|e| e.to_string()),
            }
        };
        let won = match tokio::time::timeout(self.failover / 4, attempt).await {
            Ok(Ok(won)) => won,
            Ok(Err(error)) => {
                debug!(session = %self.key, %error, "did not win the lease");
                return None;
            }
            Err(_) => {
                debug!(session = %self.key, "no answer to a lease claim in time");
                return None;
            }
        };
        let previous = self.lattice.observed(&self.key).and_then(|o| o.lease);
        self.fence.extend(sent + self.failover * 3 / 4);
        self.lattice.record(&self.key, won, Some(lease));
        match (why, previous) {
            ("silent", Some(old)) => {
                warn!(session = %self.key, component = %self.session.component, link_name = %self.session.link_name, from = %old.owner.host, silent_ms = old.failover_ms, "took the session over from a replica that stopped renewing its lease (failover_sec); what it had read but not delivered is lost unless the server sends it again (ack = true)");
                crate::stats::bump(&self.lattice.takeovers);
            }
            (_, previous) => {
                info!(session = %self.key, component = %self.session.component, link_name = %self.session.link_name, lease = why, from = ?previous.map(|p| p.owner.host), "this replica owns the session; connecting")
            }
        }
        Some(won)
    }

    /// Reads the lease key once, for a standby whose claim failed.
    async fn refresh(&self) {
        self.lattice.refresh(&self.key, self.failover / 4).await;
    }
}

/// Where the claim task goes next.
enum Turn {
    Owner(u64),
    Standby,
    /// The claim ends; `Some` = the revision of a lease still held, to give up.
    Stop(Option<u64>),
}

/// How long a standby waits after a lost race before it looks again.
const RETRY: Duration = Duration::from_millis(50);
