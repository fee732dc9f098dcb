//! Reconnecting: the backoff before each attempt, and the count of failed attempts that
//! `reconnect_max_attempts` bounds.

use std::time::Duration;

use rand::Rng as _;

/// The backoff before reconnect attempt `attempt` (1-based): d = min(initial x 2^(n-1), max),
/// drawn uniformly from [d/2, d] so that many sessions do not retry in step.
pub(super) fn backoff(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    let d = initial.saturating_mul(1 << exp).min(max);
    let half = d / 2;
    half + rand::rng().random_range(Duration::ZERO..=d - half)
}

/// The bookkeeping of reconnects: the backoff's step and the consecutive failed attempts that
/// `reconnect_max_attempts` counts. A failed attempt is a connect that failed, or a connection
/// the server closed before it had been open [`HEALTHY_AFTER`] (a server that accepts the
/// upgrade and then refuses the credentials); a connection open that long resets both.
#[derive(Debug)]
pub(super) struct Attempts {
    /// Retries since the last healthy connection: the backoff's n.
    pub(super) retries: u32,
    /// Consecutive failed attempts.
    pub(super) failed: u32,
    /// `reconnect_max_attempts`; 0 = forever.
    pub(super) max: u32,
}

/// What to do after a failed attempt.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum AfterFailure {
    /// Retry; `first` is the first failure of a run (the one that is logged at warn).
    Retry { first: bool },
    /// `reconnect_max_attempts` reached after this many failed attempts.
    GiveUp(u32),
}

impl Attempts {
    pub(super) fn new(max: u32) -> Self {
        Attempts {
            retries: 0,
            failed: 0,
            max,
        }
    }

    /// A connection attempt failed.
    pub(super) fn failed(&mut self) -> AfterFailure {
        self.failed += 1;
        if self.max > 0 && self.failed >= self.max {
            AfterFailure::GiveUp(self.failed)
        } else {
            AfterFailure::Retry {
                first: self.failed == 1,
            }
        }
    }

    /// A connection that had been open for `lasted` was lost; `by_server` when the server closed
    /// it. Returns the verdict when the loss counts as a failed attempt.
    pub(super) fn lost(&mut self, lasted: Duration, by_server: bool) -> Option<AfterFailure> {
        if lasted >= HEALTHY_AFTER {
            self.retries = 0;
            self.failed = 0;
            None
        } else if by_server {
            Some(self.failed())
        } else {
            None
        }
    }

    /// The wait before the next attempt.
    pub(super) fn next_delay(&mut self, initial: Duration, max: Duration) -> Duration {
        self.retries = self.retries.saturating_add(1);
        backoff(self.retries, initial, max)
    }
}

/// A connection that stayed open this long resets the backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_count_failures_and_short_connections_the_server_closed() {
        let mut attempts = Attempts::new(3);
        assert_eq!(attempts.failed(), AfterFailure::Retry { first: true });
        // Open 1 s, closed by the server: a failed attempt.
        assert_eq!(
            attempts.lost(Duration::from_secs(1), true),
            Some(AfterFailure::Retry { first: false })
        );
        // Lost on our side (keepalive) within 5 s: not counted.
        assert_eq!(attempts.lost(Duration::from_secs(1), false), None);
        assert_eq!(
            attempts.lost(Duration::from_millis(10), true),
            Some(AfterFailure::GiveUp(3))
        );
        // A healthy connection resets the count and the backoff.
        let mut attempts = Attempts::new(2);
        attempts.failed();
        attempts.next_delay(Duration::from_millis(1), Duration::from_secs(1));
        assert_eq!(attempts.lost(HEALTHY_AFTER, true), None);
        assert_eq!((attempts.failed, attempts.retries), (0, 0));
        assert_eq!(
            Attempts::new(0).lost(Duration::ZERO, true),
            Some(AfterFailure::Retry { first: true }),
            "0 = forever"
        );
    }

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let (initial, max) = (Duration::from_millis(250), Duration::from_secs(30));
        for attempt in 1..=40 {
            let d = initial.saturating_mul(1 << (attempt - 1).min(30)).min(max);
            for _ in 0..20 {
                let b = backoff(attempt, initial, max);
                assert!(
                    b >= d / 2 && b <= d,
                    "attempt {attempt}: {b:?} not in [{:?}, {d:?}]",
                    d / 2
                );
            }
        }
    }
}
