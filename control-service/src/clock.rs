//! The service's one clock, injected so that tests set the time instead of sleeping. The
//! memory store (stale window, policy versions), the last replies (what is left of their
//! validity) and the probes (when a level was entered, when a sample was taken) read it;
//! the Redis store keeps Redis's clock (`TIME`) so that replicas agree. Durations that are
//! only measured (request and sample latencies) use `Instant` directly.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, never going backwards.
pub trait Clock: Send + Sync + 'static {
    /// Now, ms since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The clock the state, the store and the probes share.
pub type SharedClock = Arc<dyn Clock>;

/// The real clock: the wall clock read once per process, plus a monotonic clock since. So
/// it never steps backwards or jumps when the wall clock is stepped (a stale window or a
/// reply's validity measured on it is a true duration), and it drifts from the wall clock
/// only by the steps taken while the process runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl SystemClock {
    /// The system clock, shared.
    pub fn shared() -> SharedClock {
        Arc::new(Self)
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        static ANCHOR: OnceLock<(u64, Instant)> = OnceLock::new();
        let (epoch_ms, at) = ANCHOR.get_or_init(|| {
            let since_epoch = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or(0);
            (since_epoch, Instant::now())
        });
        let elapsed = u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX);
        epoch_ms.saturating_add(elapsed)
    }
}

/// A clock that moves only when told to, for tests.
#[derive(Debug)]
pub struct ManualClock {
    now_ms: AtomicU64,
}

impl ManualClock {
    /// A clock standing at `now_ms`.
    pub fn new(now_ms: u64) -> Arc<Self> {
        Arc::new(Self {
            now_ms: AtomicU64::new(now_ms),
        })
    }

    /// Moves the clock forward by `ms`.
    pub fn advance(&self, ms: u64) {
        self.now_ms.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_clock_is_epoch_based_and_never_goes_backwards() {
        let clock = SystemClock;
        let first = clock.now_ms();
        // 2020-01-01 in ms: anything earlier is not an epoch-based reading.
        assert!(first > 1_577_836_800_000, "{first}");
        let mut last = first;
        for _ in 0..1000 {
            let now = clock.now_ms();
            assert!(now >= last);
            last = now;
        }
    }

    #[test]
    fn the_manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(1_000);
        assert_eq!(clock.now_ms(), 1_000);
        clock.advance(250);
        assert_eq!(clock.now_ms(), 1_250);
    }
}
