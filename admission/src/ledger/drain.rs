//! What the gate measures for a rejection's `retry-after`: how fast work completes, all
//! workers together, and how long requests have been turned away without a break.

/// Completions are counted over windows of this length.
const WINDOW_MS: u64 = 1_000;

/// An overload ends after this long without a request turned away.
const CALM_MS: u64 = 1_000;

/// Completion rate and overload age, kept in the ledger (a few bytes, updated in the writes
/// that happen anyway).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainMeter {
    pub(super) window_start_ms: u64,
    pub(super) completed: u32,
    /// Completions per second × 1000, smoothed over the last windows; 0 = not measured yet.
    pub(super) rate_mrps: u32,
    /// Since when requests have been turned away; 0 = not now.
    pub(super) overloaded_since_ms: u64,
    pub(super) turned_away_ms: u64,
}

/// The pressure on the gate as a rejection sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pressure {
    /// Requests ahead of a newcomer: in flight, waiting, or handed a slot.
    pub backlog: u64,
    /// Completions per second, all workers; 0 when not measured yet.
    pub completed_per_s: f64,
    /// How long requests have been turned away without a calm second; 0 when they are not.
    pub overloaded_for_ms: u64,
}

impl DrainMeter {
    /// A request completed.
    pub fn completed(&mut self, now_ms: u64) {
        self.roll(now_ms);
        self.completed = self.completed.saturating_add(1);
    }

    /// A request was turned away (rejected, or made to wait) for want of a slot.
    pub fn turned_away(&mut self, now_ms: u64) {
        self.roll(now_ms);
        if self.overloaded_since_ms == 0 {
            self.overloaded_since_ms = now_ms.max(1);
        }
        self.turned_away_ms = now_ms;
    }

    /// The pressure now, given the backlog.
    pub fn pressure(&self, backlog: u64, now_ms: u64) -> Pressure {
        let calm = now_ms.saturating_sub(self.turned_away_ms) > CALM_MS;
        Pressure {
            backlog,
            completed_per_s: f64::from(self.rate_mrps) / 1e3,
            overloaded_for_ms: if self.overloaded_since_ms == 0 || calm {
                0
            } else {
                now_ms.saturating_sub(self.overloaded_since_ms)
            },
        }
    }

    fn roll(&mut self, now_ms: u64) {
        if self.window_start_ms == 0 {
            self.window_start_ms = now_ms;
        }
        let elapsed = now_ms.saturating_sub(self.window_start_ms);
        if elapsed >= WINDOW_MS {
            let rate = u64::from(self.completed) * 1_000_000 / elapsed;
            let rate = u32::try_from(rate).unwrap_or(u32::MAX);
            self.rate_mrps = if self.rate_mrps == 0 {
                rate
            } else {
                // Half the old estimate, half the new window: steady, still quick to follow.
                self.rate_mrps / 2 + rate / 2
            };
            self.completed = 0;
            self.window_start_ms = now_ms;
        }
        if self.overloaded_since_ms != 0 && now_ms.saturating_sub(self.turned_away_ms) > CALM_MS {
            self.overloaded_since_ms = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_the_completion_rate_and_how_long_overload_lasts() {
        let mut m = DrainMeter::default();
        for i in 0..100 {
            m.completed(1_000 + i * 10); // 100 per second
        }
        m.completed(2_000);
        assert_eq!(m.pressure(5, 2_000).completed_per_s, 100.0);
        m.turned_away(2_000);
        m.turned_away(2_900);
        m.turned_away(3_800);
        assert_eq!(m.pressure(5, 4_000).overloaded_for_ms, 2_000);
        assert_eq!(
            m.pressure(5, 4_900).overloaded_for_ms,
            0,
            "a calm second ends it"
        );
        m.turned_away(5_000);
        assert_eq!(
            m.pressure(5, 5_500).overloaded_for_ms,
            500,
            "a new overload starts afresh"
        );
    }
}
