//! Which waiter a freed slot goes to. Fair by default, with no per-tenant configuration:
//! 1. waiters inside an unused reservation (their tenant's or their class's) first;
//! 2. then the tenant with the fewest requests in flight: max-min fairness over the tenants
//!    that wait, so a tenant flooding the queue waits behind everyone else's first request;
//! 3. then by age: oldest first, or newest first once the queue is overloaded
//!    (`lifo_when_overloaded`).
//!
//! Waiters past their deadline are left for their own VM to answer; waiters the rule does
//! not admit now (their tenant at its `max`, say) are passed over, not dropped.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use super::{QueueConfig, QueueOrder, SeatRule};
use crate::ledger::{Ledger, PartitionKey};

/// The index of the waiter to hand the next slot to and the keys to count it in, or `None`
/// when no live waiter can go now.
pub fn next(
    ledger: &Ledger,
    totals: &BTreeMap<PartitionKey, u64>,
    config: &QueueConfig,
    rule: &dyn SeatRule,
    now_ms: u64,
) -> Option<(usize, Vec<PartitionKey>)> {
    let live: Vec<usize> = (0..ledger.waiters().len())
        .filter(|i| ledger.waiters()[*i].deadline_ms > now_ms)
        .collect();
    let oldest = live.iter().map(|i| ledger.waiters()[*i].since_ms).min()?;
    let newest_first = config.order == QueueOrder::LifoWhenOverloaded
        && now_ms.saturating_sub(oldest) >= config.timeout_ms / 2;
    let mut ranked: Vec<(bool, u64, Reverse<u64>, u64, usize)> = live
        .into_iter()
        .map(|i| {
            let w = &ledger.waiters()[i];
            let in_flight = totals.get(&w.seat.tenant).copied().unwrap_or(0);
            let age = if newest_first {
                (Reverse(w.since_ms), 0)
            } else {
                (Reverse(0), w.since_ms)
            };
            (!rule.reserved(totals, &w.seat), in_flight, age.0, age.1, i)
        })
        .collect();
    ranked.sort_unstable();
    ranked.into_iter().find_map(|(.., i)| {
        rule.decide(ledger, &ledger.waiters()[i].seat)
            .ok()
            .map(|keys| (i, keys))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Seat, Waiter};
    use crate::RejectReason;

    fn seat(tenant: &str) -> Seat {
        Seat {
            tenant: PartitionKey::tenant(tenant),
            class: None,
        }
    }

    fn ledger_with(waiting: &[(&str, u64)], in_flight: &[&str]) -> Ledger {
        let mut l = Ledger::default();
        let w = l.register(0).unwrap();
        for t in in_flight {
            assert!(l.acquire(w, &[PartitionKey::tenant(t)], 0));
        }
        for (token, (t, since)) in waiting.iter().enumerate() {
            l.push_waiter(Waiter {
                worker: w,
                token: u32::try_from(token).unwrap(),
                queue: 1,
                seat: seat(t),
                since_ms: *since,
                deadline_ms: since + 100,
            });
        }
        l
    }

    fn any(l: &Ledger, s: &Seat) -> Result<Vec<PartitionKey>, RejectReason> {
        let _ = l;
        Ok(vec![s.tenant])
    }

    fn config(order: QueueOrder) -> QueueConfig {
        QueueConfig {
            timeout_ms: 100,
            max_waiting: 100,
            order,
        }
    }

    fn pick(l: &Ledger, order: QueueOrder, now: u64) -> u32 {
        let (i, _) = next(l, &l.partition_totals(), &config(order), &any, now).unwrap();
        l.waiters()[i].token
    }

    #[test]
    fn the_tenant_with_least_in_flight_goes_first_then_the_oldest() {
        // noisy holds 3 slots, quiet 1: quiet's waiter goes first although it came last.
        let l = ledger_with(
            &[("noisy", 1), ("noisy", 2), ("quiet", 3)],
            &["noisy", "noisy", "noisy", "quiet"],
        );
        assert_eq!(pick(&l, QueueOrder::Fifo, 4), 2);
        let l = ledger_with(&[("a", 5), ("b", 1), ("c", 3)], &[]);
        assert_eq!(
            pick(&l, QueueOrder::Fifo, 6),
            1,
            "equal standing: oldest first"
        );
    }

    #[test]
    fn lifo_only_once_the_queue_is_overloaded() {
        let l = ledger_with(&[("a", 0), ("a", 10), ("a", 20)], &[]);
        assert_eq!(
            pick(&l, QueueOrder::LifoWhenOverloaded, 30),
            0,
            "oldest waited 30 < 50"
        );
        assert_eq!(
            pick(&l, QueueOrder::LifoWhenOverloaded, 60),
            2,
            "oldest waited 60: newest first"
        );
        assert_eq!(pick(&l, QueueOrder::Fifo, 60), 0);
    }

    #[test]
    fn waiters_the_rule_refuses_are_passed_over_and_the_dead_skipped() {
        let l = ledger_with(&[("capped", 10), ("free", 5), ("late", 0)], &[]);
        let rule = |_: &Ledger, s: &Seat| {
            if s.tenant == PartitionKey::tenant("capped") {
                Err(RejectReason::TenantLimit)
            } else {
                Ok(vec![s.tenant])
            }
        };
        let (i, _) = next(
            &l,
            &l.partition_totals(),
            &config(QueueOrder::Fifo),
            &rule,
            101,
        )
        .unwrap();
        assert_eq!(
            l.waiters()[i].token,
            1,
            "capped refused, late is past its deadline (100)"
        );
        assert!(next(
            &l,
            &l.partition_totals(),
            &config(QueueOrder::Fifo),
            &rule,
            200
        )
        .is_none());
    }
}
