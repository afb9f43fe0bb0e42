//! When a VM's one timer fires: the periodic work (heartbeat, sync) and the earliest wait
//! deadline, whichever comes first. The host arms the timer with a period; this says which,
//! as a function of `now`, and never arms it for longer than one period, so a clock that
//! jumps back cannot leave the heartbeat (and with it the ledger and the sync) silent until
//! it has caught up.

use std::cell::Cell;

/// A VM's timer plan.
#[derive(Debug)]
pub struct TickSchedule {
    period_ms: u64,
    /// When the periodic work is next due.
    periodic_due_ms: Cell<u64>,
    /// When the timer fires next, as last armed (`u64::MAX`: not armed).
    fires_at_ms: Cell<u64>,
}

impl TickSchedule {
    /// Periodic work every `period_ms`, due first at `now_ms`.
    pub fn new(period_ms: u64, now_ms: u64) -> Self {
        Self {
            period_ms: period_ms.max(1),
            periodic_due_ms: Cell::new(now_ms),
            fires_at_ms: Cell::new(u64::MAX),
        }
    }

    /// The period to arm the timer with so that it fires at `at_ms`: at least 1 ms, at
    /// most one period.
    pub fn period_until(&self, at_ms: u64, now_ms: u64) -> u64 {
        at_ms.saturating_sub(now_ms).clamp(1, self.period_ms)
    }

    /// The host armed the timer with `period_ms` at `now_ms`.
    pub fn armed(&self, period_ms: u64, now_ms: u64) {
        self.fires_at_ms.set(now_ms.saturating_add(period_ms));
    }

    /// A deadline at `deadline_ms` must be met: the period to arm the timer with now, if it
    /// fires later than that (or its plan is from before a jump back).
    pub fn expect(&self, deadline_ms: u64, now_ms: u64) -> Option<u64> {
        let fires_at = self.fires_at_ms.get();
        let stale = fires_at != u64::MAX && fires_at > now_ms.saturating_add(self.period_ms);
        (deadline_ms < fires_at || stale).then(|| self.period_until(deadline_ms, now_ms))
    }

    /// Whether the periodic work is due now (and, if so, when it is due next). A due time
    /// more than a period away can only be left by a clock that went back: due now.
    pub fn periodic_due(&self, now_ms: u64) -> bool {
        let due_at = self.periodic_due_ms.get();
        let due = now_ms >= due_at || due_at > now_ms.saturating_add(self.period_ms);
        if due {
            self.periodic_due_ms
                .set(now_ms.saturating_add(self.period_ms));
        }
        due
    }

    /// The period to arm the timer with after it fired: until the periodic work or
    /// `deadline_ms`, whichever comes first.
    pub fn next(&self, deadline_ms: Option<u64>, now_ms: u64) -> u64 {
        let periodic = self.periodic_due_ms.get();
        let at = deadline_ms.map_or(periodic, |d| d.min(periodic));
        self.period_until(at, now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timer_keeps_its_period_through_a_clock_that_jumps_back() {
        let t = TickSchedule::new(1_000, 50_000);
        assert!(t.periodic_due(50_000));
        assert!(!t.periodic_due(50_500));
        assert_eq!(t.next(None, 50_500), 500);
        assert_eq!(t.next(Some(50_520), 50_500), 20);
        t.armed(500, 50_500);
        assert_eq!(t.expect(50_600, 50_500), Some(100));
        assert_eq!(t.expect(52_000, 50_500), None);
        // The clock goes back 40 s: the work is due at once, not in 40 s.
        let back = 10_000;
        assert!(t.periodic_due(back));
        assert_eq!(t.next(None, back), 1_000);
        assert_eq!(
            t.expect(back + 50, back),
            Some(50),
            "a plan from before the jump is stale"
        );
        assert!(!t.periodic_due(back + 10));
        assert!(t.periodic_due(back + 1_000));
        // Forward: due at once, and the timer never armed for more than one period.
        assert!(t.periodic_due(10_000_000));
        assert_eq!(t.next(Some(u64::MAX), 10_000_000), 1_000);
    }
}
