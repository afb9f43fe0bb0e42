//! Hysteresis of one probe's level, and the composite health of all probes. Samples and
//! `now` are arguments; nothing here reads a clock.

use serde::{Deserialize, Serialize};
use wipgate_admission::wire::ResourceHealth;

use crate::probes::policy::{ProbeLevel, ProbeSpec};

/// A probe's level with hysteresis.
///
/// The first sample sets the level as it is (a probe that cannot connect from the start is
/// `degraded` at once, never `ok` meanwhile). From then on the probe moves to a more
/// constrained level after `enter_after` consecutive samples more constrained than its
/// level (to the least constrained level among them: the one that held throughout), and to
/// a less constrained level after `leave_after` consecutive samples less constrained than
/// its level (to the most constrained among them). A sample at the current level breaks
/// both streaks, and so does a sample on the other side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hysteresis {
    enter_after: u32,
    leave_after: u32,
    /// `None` until the first sample.
    level: Option<ProbeLevel>,
    /// When `level` was entered, ms (the caller's clock).
    since_ms: u64,
    /// Consecutive samples above `level`, and the least constrained of them.
    worse: (u32, ProbeLevel),
    /// Consecutive samples below `level`, and the most constrained of them.
    better: (u32, ProbeLevel),
}

impl Hysteresis {
    /// A machine that has seen no sample; counts below 1 are taken as 1.
    pub fn new(enter_after: u32, leave_after: u32) -> Self {
        Self {
            enter_after: enter_after.max(1),
            leave_after: leave_after.max(1),
            level: None,
            since_ms: 0,
            worse: (0, ProbeLevel::Saturated),
            better: (0, ProbeLevel::Ok),
        }
    }

    /// The machine a probe spec asks for.
    pub fn for_spec(spec: &ProbeSpec) -> Self {
        Self::new(spec.enter_after, spec.leave_after)
    }

    /// The level now; `None` before the first sample.
    pub fn level(&self) -> Option<ProbeLevel> {
        self.level
    }

    /// When the current level was entered, ms.
    pub fn since_ms(&self) -> u64 {
        self.since_ms
    }

    /// Feeds one sample's level, taken at `now_ms`; returns the level after it.
    pub fn observe(&mut self, now_ms: u64, sample: ProbeLevel) -> ProbeLevel {
        let Some(current) = self.level else {
            return self.enter(now_ms, sample);
        };
        match sample.cmp(&current) {
            std::cmp::Ordering::Equal => self.reset_streaks(),
            std::cmp::Ordering::Greater => {
                self.better = (0, ProbeLevel::Ok);
                self.worse = (self.worse.0 + 1, self.worse.1.min(sample));
                if self.worse.0 >= self.enter_after {
                    return self.enter(now_ms, self.worse.1);
                }
            }
            std::cmp::Ordering::Less => {
                self.worse = (0, ProbeLevel::Saturated);
                self.better = (self.better.0 + 1, self.better.1.max(sample));
                if self.better.0 >= self.leave_after {
                    return self.enter(now_ms, self.better.1);
                }
            }
        }
        current
    }

    fn enter(&mut self, now_ms: u64, level: ProbeLevel) -> ProbeLevel {
        if self.level != Some(level) {
            self.since_ms = now_ms;
        }
        self.level = Some(level);
        self.reset_streaks();
        level
    }

    fn reset_streaks(&mut self) {
        self.worse = (0, ProbeLevel::Saturated);
        self.better = (0, ProbeLevel::Ok);
    }
}

/// The health the Envoys get: the most constrained probe wins; among `degraded` probes the
/// smallest `degraded_limit_percent` applies. Probes without a level yet (no sample so far)
/// are left out, so no probes at all is `ok`.
pub fn composite<I>(probes: I) -> ResourceHealth
where
    I: IntoIterator<Item = (Option<ProbeLevel>, u8)>,
{
    let mut health = ResourceHealth::Ok;
    for (level, percent) in probes {
        health = match (level, health) {
            (Some(ProbeLevel::Saturated), _) | (_, ResourceHealth::Saturated) => {
                ResourceHealth::Saturated
            }
            (Some(ProbeLevel::Degraded), ResourceHealth::Degraded { limit_percent }) => {
                ResourceHealth::Degraded {
                    limit_percent: limit_percent.min(percent.clamp(1, 99)),
                }
            }
            (Some(ProbeLevel::Degraded), ResourceHealth::Ok) => ResourceHealth::Degraded {
                limit_percent: percent.clamp(1, 99),
            },
            (Some(ProbeLevel::Ok) | None, h) => h,
        };
    }
    health
}

/// `0` ok, `1` degraded, `2` saturated: the gauge value of a level.
pub fn level_gauge(level: ProbeLevel) -> i64 {
    match level {
        ProbeLevel::Ok => 0,
        ProbeLevel::Degraded => 1,
        ProbeLevel::Saturated => 2,
    }
}

/// The level a [`ResourceHealth`] stands for.
pub fn health_level(health: ResourceHealth) -> ProbeLevel {
    match health {
        ResourceHealth::Ok => ProbeLevel::Ok,
        ResourceHealth::Degraded { .. } => ProbeLevel::Degraded,
        ResourceHealth::Saturated => ProbeLevel::Saturated,
    }
}

/// A probe's published state, for status pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProbeState {
    /// No sample yet.
    Pending,
    /// See [`ProbeLevel::Ok`].
    Ok,
    /// See [`ProbeLevel::Degraded`].
    Degraded,
    /// See [`ProbeLevel::Saturated`].
    Saturated,
}

impl ProbeState {
    /// The level, `None` while pending.
    pub fn level(self) -> Option<ProbeLevel> {
        match self {
            Self::Pending => None,
            Self::Ok => Some(ProbeLevel::Ok),
            Self::Degraded => Some(ProbeLevel::Degraded),
            Self::Saturated => Some(ProbeLevel::Saturated),
        }
    }
}

impl From<Option<ProbeLevel>> for ProbeState {
    fn from(level: Option<ProbeLevel>) -> Self {
        match level {
            None => Self::Pending,
            Some(ProbeLevel::Ok) => Self::Ok,
            Some(ProbeLevel::Degraded) => Self::Degraded,
            Some(ProbeLevel::Saturated) => Self::Saturated,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use proptest::prelude::*;

    use super::*;
    use ProbeLevel::{Degraded as D, Ok as O, Saturated as S};

    fn run(m: &mut Hysteresis, samples: &[ProbeLevel]) -> Vec<ProbeLevel> {
        samples
            .iter()
            .enumerate()
            .map(|(i, s)| m.observe(i as u64 * 1000, *s))
            .collect()
    }

    #[test]
    fn enters_after_n_and_leaves_after_m() {
        let mut m = Hysteresis::new(2, 3);
        assert_eq!(m.level(), None);
        assert_eq!(run(&mut m, &[O, D, O, D, D]), [O, O, O, O, D]);
        assert_eq!(m.since_ms(), 4000);
        let mut m = Hysteresis::new(2, 3);
        // Into saturated through a degraded sample: the level that held throughout.
        assert_eq!(run(&mut m, &[O, D, S, S]), [O, O, D, D]);
        assert_eq!(run(&mut m, &[S]), [S]);
        // Back: three better samples, to the most constrained among them.
        assert_eq!(run(&mut m, &[O, D, O]), [S, S, D]);
        assert_eq!(run(&mut m, &[O, O, D, O, O, O]), [D, D, D, D, D, O]);
    }

    #[test]
    fn the_first_sample_counts_at_once() {
        let mut m = Hysteresis::new(5, 5);
        assert_eq!(m.observe(7, D), D);
        assert_eq!(m.since_ms(), 7);
        assert_eq!(m.observe(8, O), D);
    }

    #[test]
    fn composite_is_the_most_constrained() {
        assert_eq!(composite([]), ResourceHealth::Ok);
        assert_eq!(composite([(None, 50), (Some(O), 50)]), ResourceHealth::Ok);
        assert_eq!(
            composite([(Some(D), 60), (Some(O), 10), (Some(D), 40)]),
            ResourceHealth::Degraded { limit_percent: 40 }
        );
        assert_eq!(
            composite([(Some(D), 60), (Some(S), 10), (Some(D), 40)]),
            ResourceHealth::Saturated
        );
        assert_eq!(health_level(ResourceHealth::Saturated), S);
        assert_eq!(level_gauge(D), 1);
        assert_eq!(ProbeState::from(None), ProbeState::Pending);
        for l in [None, Some(O), Some(D), Some(S)] {
            assert_eq!(ProbeState::from(l).level(), l);
        }
    }

    fn level() -> impl Strategy<Value = ProbeLevel> {
        prop_oneof![Just(O), Just(D), Just(S)]
    }

    proptest! {
        /// After enough equal samples the machine is at that level, whatever came before.
        #[test]
        fn settles(enter in 1u32..6, leave in 1u32..6, before in prop::collection::vec(level(), 0..30), last in level()) {
            let mut m = Hysteresis::new(enter, leave);
            run(&mut m, &before);
            // A streak begun in `before` may carry the machine to an intermediate level
            // first; from there `last` alone takes at most another round.
            let mut now = m.observe(100_000, last);
            for _ in 0..2 * enter.max(leave) {
                now = m.observe(100_000, last);
            }
            prop_assert_eq!(now, last);
        }

        /// The level only changes after a streak: never to a level that was not seen in the
        /// last `enter_after` (or `leave_after`) samples, and never on one contrary sample.
        #[test]
        fn changes_only_after_a_streak(enter in 2u32..6, leave in 2u32..6, samples in prop::collection::vec(level(), 1..60)) {
            let mut m = Hysteresis::new(enter, leave);
            let out = run(&mut m, &samples);
            for i in 1..out.len() {
                if out[i] != out[i - 1] {
                    let n = if out[i] > out[i - 1] { enter } else { leave } as usize;
                    prop_assert!(i + 1 >= n);
                    let streak = &samples[i + 1 - n..=i];
                    prop_assert!(streak.contains(&out[i]));
                    if out[i] > out[i - 1] {
                        prop_assert!(streak.iter().all(|s| *s > out[i - 1] && *s >= out[i]));
                    } else {
                        prop_assert!(streak.iter().all(|s| *s < out[i - 1] && *s <= out[i]));
                    }
                }
            }
        }

        /// A probe whose samples are never ok is never ok.
        #[test]
        fn never_ok_without_an_ok_sample(enter in 1u32..6, leave in 1u32..6, samples in prop::collection::vec(prop_oneof![Just(D), Just(S)], 1..40)) {
            let mut m = Hysteresis::new(enter, leave);
            prop_assert!(run(&mut m, &samples).iter().all(|l| *l != O));
        }

        /// The composite is at least as constrained as every probe, and equals the most
        /// constrained one.
        #[test]
        fn composite_is_the_max(probes in prop::collection::vec((prop::option::of(level()), 1u8..100), 0..8)) {
            let h = composite(probes.iter().copied());
            let max = probes.iter().filter_map(|(l, _)| *l).max().unwrap_or(O);
            prop_assert_eq!(health_level(h), max);
            if let ResourceHealth::Degraded { limit_percent } = h {
                let min = probes.iter().filter(|(l, _)| *l == Some(D)).map(|(_, p)| *p).min().unwrap();
                prop_assert_eq!(limit_percent, min.clamp(1, 99));
            }
        }
    }
}
