//! The bounded wait: a request that finds no slot waits (its stream paused) for one to be
//! handed to it, up to `timeout_ms`. The waiters live in the shared ledger
//! ([`crate::ledger::Waiter`]), so a slot released on any worker goes to the fairest waiter
//! on any worker; [`WaitRoom`] is one VM's side of it: which paused stream is which waiter.

pub mod choose;
mod config;
mod room;

use std::collections::BTreeMap;

pub use config::{QueueConfig, QueueOrder, MAX_TIMEOUT_MS, MAX_WAITING_LIMIT};
pub use room::{WaitRoom, Waiting};

use crate::ledger::{Ledger, PartitionKey, Seat};
use crate::RejectReason;

/// The admission rule, asked for a seat: the partitions to count a request there in, or why
/// it cannot go now. The same rule decides newcomers and waiters, so a hand-off never breaks
/// a limit, a `max` or a reservation.
pub trait SeatRule {
    /// Pure: it runs inside the ledger's compare-and-swap loop.
    fn decide(&self, ledger: &Ledger, seat: &Seat) -> Result<Vec<PartitionKey>, RejectReason>;

    /// Whether the seat is still inside an unused reservation (its tenant's or its class's):
    /// such waiters go first.
    fn reserved(&self, _totals: &BTreeMap<PartitionKey, u64>, _seat: &Seat) -> bool {
        false
    }
}

impl<F> SeatRule for F
where
    F: Fn(&Ledger, &Seat) -> Result<Vec<PartitionKey>, RejectReason>,
{
    fn decide(&self, ledger: &Ledger, seat: &Seat) -> Result<Vec<PartitionKey>, RejectReason> {
        self(ledger, seat)
    }
}
