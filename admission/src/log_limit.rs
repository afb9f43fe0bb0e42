//! Repeated errors are logged at most once per interval: a failing sync or a broken ledger
//! must not flood Envoy's log at the request rate.

use std::cell::Cell;

/// At most one log line per this many ms for repeated errors of one kind.
pub const ERROR_LOG_INTERVAL_MS: u64 = 10_000;

/// Says when the next line of one kind may go out.
#[derive(Debug, Default)]
pub struct LogLimit {
    last_ms: Cell<Option<u64>>,
}

impl LogLimit {
    /// True the first time, then at most once per [`ERROR_LOG_INTERVAL_MS`].
    pub fn allow(&self, now_ms: u64) -> bool {
        let due = match self.last_ms.get() {
            None => true,
            Some(last) => now_ms.saturating_sub(last) >= ERROR_LOG_INTERVAL_MS,
        };
        if due {
            self.last_ms.set(Some(now_ms));
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_interval() {
        let limit = LogLimit::default();
        assert!(limit.allow(0));
        assert!(!limit.allow(9_999));
        assert!(limit.allow(10_000));
        assert!(!limit.allow(10_001));
    }
}
