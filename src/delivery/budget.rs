//! The bounds of a session's deliveries: at most `max_in_flight` messages and at most
//! `max_in_flight_bytes` of their bodies in flight, and a bounded read-ahead behind them.
//!
//! A message going to delivery holds a [`Slot`]: one permit of the count semaphore and as many
//! permits of the bytes semaphore as its body has bytes (a body larger than the whole byte bound
//! takes all of it, so it runs alone rather than never). The slot is released when the call
//! ends. The socket task reads ahead while every slot is taken, into [`Held`], which is full
//! past either bound; then it stops reading, and TCP pushes back on the server. So memory is
//! bounded by the byte bound, not by `max_in_flight` x `max_message_bytes`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::PollSemaphore;

use crate::delivery::Inbound;

/// A delivery's share of the bounds; released when dropped.
#[derive(Debug)]
pub struct Slot {
    _count: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
}

/// The two semaphores of one session.
#[derive(Clone)]
pub struct Budget {
    count: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    max_count: usize,
    max_bytes: usize,
}

impl Budget {
    pub fn new(max_count: usize, max_bytes: usize) -> Self {
        Budget {
            count: Arc::new(Semaphore::new(max_count)),
            bytes: Arc::new(Semaphore::new(max_bytes)),
            max_count,
            max_bytes,
        }
    }

    /// The byte permits a message takes: its body's length, at most the whole bound. The bound
    /// is at most 1 GiB, so this always fits.
    fn weight(&self, inbound: &Inbound) -> u32 {
        u32::try_from(inbound.msg.body.len().min(self.max_bytes)).unwrap_or(u32::MAX)
    }

    /// A slot for `inbound` if one is free now.
    pub fn try_take(&self, inbound: &Inbound) -> Option<Slot> {
        let count = Arc::clone(&self.count).try_acquire_owned().ok()?;
        let bytes = Arc::clone(&self.bytes)
            .try_acquire_many_owned(self.weight(inbound))
            .ok()?;
        Some(Slot {
            _count: count,
            _bytes: bytes,
        })
    }

    /// Waits for a slot for `inbound`. `None` only if a semaphore were closed (never).
    pub async fn take(&self, inbound: &Inbound) -> Option<Slot> {
        let mut waiter = self.waiter();
        std::future::poll_fn(|cx| waiter.poll_take(cx, inbound)).await
    }

    /// A waiter for slots that can be polled by hand (in the read loop, beside the socket).
    pub fn waiter(&self) -> SlotWaiter {
        SlotWaiter {
            budget: self.clone(),
            count: PollSemaphore::new(Arc::clone(&self.count)),
            bytes: PollSemaphore::new(Arc::clone(&self.bytes)),
            got_count: None,
        }
    }

    /// An empty read-ahead for this budget.
    pub fn held(&self) -> Held {
        Held {
            queue: VecDeque::new(),
            bytes: 0,
            max_count: self.max_count,
            max_bytes: self.max_bytes,
        }
    }
}

/// Waits for a slot across polls: once it has the count permit it keeps it while it waits for
/// the bytes, so the message at the front of the read-ahead is the next one to go.
pub struct SlotWaiter {
    budget: Budget,
    count: PollSemaphore,
    bytes: PollSemaphore,
    got_count: Option<OwnedSemaphorePermit>,
}

impl SlotWaiter {
    /// `Ready(None)` only if a semaphore were closed (never).
    pub fn poll_take(&mut self, cx: &mut Context<'_>, inbound: &Inbound) -> Poll<Option<Slot>> {
        let count = match self.got_count.take() {
            Some(count) => count,
            None => match ready!(self.count.poll_acquire(cx)) {
                Some(count) => count,
                None => return Poll::Ready(None),
            },
        };
        match self
            .bytes
            .poll_acquire_many(cx, self.budget.weight(inbound))
        {
            Poll::Ready(Some(bytes)) => Poll::Ready(Some(Slot {
                _count: count,
                _bytes: bytes,
            })),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                self.got_count = Some(count);
                Poll::Pending
            }
        }
    }
}

/// Messages read ahead but not yet handed to delivery, in arrival order. Full past either bound:
/// more than `max_in_flight` messages (one more than the bound, so that a reply right behind
/// `max_in_flight` ordinary messages is still read) or more than `max_in_flight_bytes` of bodies.
pub struct Held {
    queue: VecDeque<Inbound>,
    bytes: usize,
    max_count: usize,
    max_bytes: usize,
}

impl Held {
    pub fn is_full(&self) -> bool {
        self.queue.len() > self.max_count || self.bytes > self.max_bytes
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn front(&self) -> Option<&Inbound> {
        self.queue.front()
    }

    pub fn push_back(&mut self, inbound: Inbound) {
        self.bytes += inbound.msg.body.len();
        self.queue.push_back(inbound);
    }

    pub fn pop_front(&mut self) -> Option<Inbound> {
        let inbound = self.queue.pop_front()?;
        self.bytes -= inbound.msg.body.len();
        Some(inbound)
    }
}
