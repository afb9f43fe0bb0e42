//! Who calls the control service next and when: one lease per Envoy, in shared data, claimed
//! by compare-and-swap so that one worker makes the call.

use serde::{Deserialize, Serialize};

use super::report::Reported;
use crate::config::ControlConfig;

/// Extra time a caller holds the lease beyond the call's own timeout, so a slow host does
/// not let a second call start; a VM that dies mid-call blocks the next one this long.
pub(crate) const LEASE_GRACE_MS: u64 = 1_000;

/// Who calls next and when; one per Envoy, in shared data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncLease {
    /// When the next call is due (ms since the epoch).
    pub next_due_ms: u64,
    /// A call is under way until then (ms since the epoch); 0 when none.
    pub busy_until_ms: u64,
    /// The counters as of the last delivered report, so each report carries what happened
    /// since the previous one, whichever worker sent it.
    #[serde(default)]
    pub reported: Reported,
}

impl SyncLease {
    /// If a call is due at `now` and none is under way, the lease as the caller writes it
    /// to claim the call; `None` when this worker should not call.
    pub fn claim(&self, now_ms: u64, control: &ControlConfig) -> Option<SyncLease> {
        // A due time more than an interval ahead was set before the clock went back: the
        // call is due now, not once the clock has caught up. (A call under way still ends
        // with its response, which the host delivers by the call's timeout.)
        let due_later = now_ms < self.next_due_ms
            && self.next_due_ms <= now_ms.saturating_add(control.interval_ms);
        if due_later || now_ms < self.busy_until_ms {
            return None;
        }
        Some(SyncLease {
            next_due_ms: now_ms.saturating_add(control.interval_ms),
            busy_until_ms: now_ms
                .saturating_add(control.timeout_ms)
                .saturating_add(LEASE_GRACE_MS),
            reported: self.reported.clone(),
        })
    }

    /// The lease after the call ended (either way): the next caller may go when due.
    pub fn done(&self, reported: Reported) -> SyncLease {
        SyncLease {
            next_due_ms: self.next_due_ms,
            busy_until_ms: 0,
            reported,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GateConfig;

    fn control() -> ControlConfig {
        GateConfig::parse(br#"{"max_inflight": 1, "control": {"cluster": "c"}}"#)
            .unwrap()
            .control
            .unwrap()
    }

    #[test]
    fn one_call_per_interval_and_none_while_one_is_under_way() {
        let lease = SyncLease::default();
        let claimed = lease.claim(1_000, &control()).unwrap();
        assert_eq!(claimed.next_due_ms, 2_000);
        assert!(claimed.claim(1_100, &control()).is_none(), "call under way");
        let done = claimed.done(Reported::default());
        assert!(done.claim(1_900, &control()).is_none(), "not due yet");
        assert!(done.claim(2_000, &control()).is_some());
        // A caller that died mid-call blocks the next one only until its lease runs out.
        assert!(claimed.claim(2_000, &control()).is_none());
        assert!(claimed
            .claim(1_000 + 250 + LEASE_GRACE_MS, &control())
            .is_some());
    }
}
