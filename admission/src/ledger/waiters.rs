//! The bounded wait in the ledger: requests waiting for a slot on any worker VM, and slots
//! handed to waiters that their VM has not picked up yet.
//!
//! A release hands its slot on in the same compare-and-swap that frees it: the waiter's slot
//! is counted under its own VM's entry at once and a [`Grant`] records it, so no newcomer can
//! take it in between and no slot is ever unaccounted. The waiter's VM is woken through the
//! host's shared queue and claims its grants; if the wake-up is lost (the releasing VM died
//! between its write and the wake-up), the waiting VM still finds them on its next tick.

use std::collections::BTreeSet;

use super::{Ledger, PartitionKey, WorkerId};
use crate::queue::{choose, QueueConfig, SeatRule};

/// Where a request is counted: its tenant and, when classes are configured, its class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Seat {
    /// The tenant's key.
    pub tenant: PartitionKey,
    /// The class's key, if any.
    pub class: Option<PartitionKey>,
}

/// A request waiting for a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiter {
    /// The VM that holds the paused stream.
    pub worker: WorkerId,
    /// The stream's token within that VM.
    pub token: u32,
    /// The host queue that wakes that VM.
    pub queue: u32,
    /// Where it is to be counted.
    pub seat: Seat,
    /// When it started waiting (ms since the epoch).
    pub since_ms: u64,
    /// When it stops waiting, slot or not.
    pub deadline_ms: u64,
}

/// A slot handed to a waiter: already counted under the waiter's VM, with these keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The waiter's VM.
    pub worker: WorkerId,
    /// The waiter's token.
    pub token: u32,
    /// The partitions the slot is counted in.
    pub keys: Vec<PartitionKey>,
}

impl Ledger {
    /// Requests waiting for a slot, all VMs together.
    pub fn waiting(&self) -> usize {
        self.waiters.len()
    }

    /// The waiters, oldest first.
    pub fn waiters(&self) -> &[Waiter] {
        &self.waiters
    }

    /// Slots handed to waiters and not yet picked up by their VM.
    pub fn grants(&self) -> &[Grant] {
        &self.grants
    }

    /// Adds a waiter (the caller checked `max_waiting`).
    pub fn push_waiter(&mut self, waiter: Waiter) {
        self.waiters.push(waiter);
    }

    /// Removes a waiter; false when it no longer waits (handed a slot, or its VM reclaimed).
    pub fn take_waiter(&mut self, worker: WorkerId, token: u32) -> bool {
        let before = self.waiters.len();
        self.waiters
            .retain(|w| !(w.worker == worker && w.token == token));
        self.waiters.len() != before
    }

    /// Removes the slot handed to `token` of `worker` and returns its keys.
    pub fn take_grant(&mut self, worker: WorkerId, token: u32) -> Option<Vec<PartitionKey>> {
        let i = self
            .grants
            .iter()
            .position(|g| g.worker == worker && g.token == token)?;
        Some(self.grants.swap_remove(i).keys)
    }

    /// Removes every slot handed to `worker`'s waiters.
    pub fn take_grants_of(&mut self, worker: WorkerId) -> Vec<Grant> {
        let (mine, others) = std::mem::take(&mut self.grants)
            .into_iter()
            .partition(|g| g.worker == worker);
        self.grants = others;
        mine
    }

    /// Whether any slot waits to be picked up by `worker`.
    pub fn has_grants_for(&self, worker: WorkerId) -> bool {
        self.grants.iter().any(|g| g.worker == worker)
    }

    /// Hands free slots to waiters, as many as `rule` admits, the fairest first (see
    /// [`choose`]). Returns the queues of the VMs to wake, each once.
    pub fn hand_off(&mut self, config: &QueueConfig, rule: &dyn SeatRule, now_ms: u64) -> Vec<u32> {
        let mut wake = Vec::new();
        while !self.waiters.is_empty() {
            let totals = self.partition_totals();
            let Some((i, keys)) = choose::next(self, &totals, config, rule, now_ms) else {
                break;
            };
            let waiter = self.waiters.remove(i);
            if !self.acquire(waiter.worker, &keys, now_ms) {
                continue; // its VM was reclaimed in this very change: the waiter is gone
            }
            self.grants.push(Grant {
                worker: waiter.worker,
                token: waiter.token,
                keys,
            });
            if !wake.contains(&waiter.queue) {
                wake.push(waiter.queue);
            }
        }
        wake
    }

    /// Drops the waiters and grants of VMs that are no longer in the ledger (a grant's slot
    /// went with its VM's entry).
    pub(super) fn forget_waiters_of_the_dead(&mut self) {
        let alive: BTreeSet<u32> = self.entries.iter().map(|e| e.id.0).collect();
        self.waiters.retain(|w| alive.contains(&w.worker.0));
        self.grants.retain(|g| alive.contains(&g.worker.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::QueueOrder;
    use crate::RejectReason;

    /// Admits while the total stays under `limit`, counting the tenant.
    fn under(limit: u64) -> impl Fn(&Ledger, &Seat) -> Result<Vec<PartitionKey>, RejectReason> {
        move |l, seat| {
            if l.total() < limit {
                Ok(vec![seat.tenant])
            } else {
                Err(RejectReason::WipLimit)
            }
        }
    }

    fn waiter(worker: WorkerId, token: u32, tenant: &str, since_ms: u64) -> Waiter {
        Waiter {
            worker,
            token,
            queue: 100 + worker.0,
            seat: Seat {
                tenant: PartitionKey::tenant(tenant),
                class: None,
            },
            since_ms,
            deadline_ms: since_ms + 50,
        }
    }

    const FIFO: QueueConfig = QueueConfig {
        timeout_ms: 50,
        max_waiting: 10,
        order: QueueOrder::Fifo,
    };

    #[test]
    fn a_freed_slot_goes_to_a_waiter_of_another_worker_and_is_counted_there() {
        let mut l = Ledger::default();
        let a = l.register(0).unwrap();
        let b = l.register(0).unwrap();
        assert!(l.acquire(a, &[PartitionKey::tenant("t")], 0));
        l.push_waiter(waiter(b, 7, "t", 1));
        assert!(l.hand_off(&FIFO, &under(1), 2).is_empty(), "no slot free");
        assert!(l.release(a, &[PartitionKey::tenant("t")], 3));
        assert_eq!(l.hand_off(&FIFO, &under(1), 3), vec![101]);
        assert_eq!(l.total(), 1);
        assert_eq!(l.entries()[1].inflight, 1, "counted under the waiter's VM");
        assert_eq!(l.waiting(), 0);
        assert!(l.has_grants_for(b));
        assert_eq!(l.take_grant(b, 7), Some(vec![PartitionKey::tenant("t")]));
        assert_eq!(l.take_grant(b, 7), None, "picked up once");
    }

    #[test]
    fn expired_waiters_are_skipped_and_dead_vms_waiters_forgotten() {
        let mut l = Ledger::default();
        let a = l.register(0).unwrap();
        let b = l.register(0).unwrap();
        l.push_waiter(waiter(a, 1, "t", 0));
        l.push_waiter(waiter(b, 2, "t", 100));
        assert_eq!(
            l.hand_off(&FIFO, &under(5), 60),
            vec![101],
            "a's waiter is past its deadline"
        );
        assert_eq!(l.waiting(), 1);
        l.touch(b, 10_000);
        l.expire(10_000, 10_000);
        assert_eq!(l.waiting(), 0, "a's VM is dead: its waiter goes with it");
        assert!(l.grants().iter().all(|g| g.worker == b));
    }

    #[test]
    fn the_ledger_with_waiters_and_grants_round_trips() {
        let mut l = Ledger::default();
        let a = l.register(5).unwrap();
        l.push_waiter(waiter(a, 1, "t", 5));
        l.push_waiter(waiter(a, 2, "u", 6));
        l.hand_off(&FIFO, &under(1), 7);
        assert_eq!(Ledger::decode(&l.encode()), Ok(l));
    }
}
