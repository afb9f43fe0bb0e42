//! Knee: the limit at the bottleneck's knee, estimated from what it delivers, not told.
//!
//! By Little's law, the in-flight count a bottleneck needs to deliver its most is its
//! maximum delivery rate times its no-load latency (BBR's BtlBw x RTprop): beyond that,
//! requests only queue, or, where contention collapses the resource, deliver less. Each window
//! measures the delivery rate (finished requests per second) and the mean latency; `delivered`
//! keeps the most delivered lately, `no_load` the lowest mean latency lately (both drift
//! towards what is measured when `memory_windows` go by without confirming them), and the
//! knee is their product.
//!
//! - **Queue.** A window in which demand pressed on the limit (rejections) and slower than
//!   `no_load x (1 + queue_tolerance)` (two in a row, or one far slower) drops the limit to what the measured rate needs without a queue,
//!   `rate x no_load` (the Vegas rule), by a quarter to a half. The windows after it are
//!   judged by what the bottleneck delivers once the backlog admitted before the drop is
//!   gone: as much with less in flight means the extra was queued, so the limit halves again
//!   (drain); less in proportion means the limit went below the knee, so that window's latency
//!   is the no-load latency, the step above shows what the bottleneck delivers now, and the
//!   limit goes back to the knee and probes up from there. A drop that no longer binds goes
//!   back. If
//!   the very first step already delivers less in proportion, there was no queue but a slower
//!   resource (a database whose every query got slower): its latency becomes the no-load
//!   latency and the limit goes back where it was (`slower`).
//! - **Probe.** With demand above the limit, the limit rises by a tenth per window (`probe`)
//!   until more in flight stops delivering more while latency rises; then it settles at the
//!   knee (no higher than where the probe started) and the next probe waits
//!   `probe_every_windows`: probes are brief and rare. Every other due probe goes down by a
//!   tenth for one window (as BBR probes its round-trip time): as much delivered, sooner,
//!   means the limit sat above the knee by less than the tolerance shows, and it stays lower.
//! - **Drain ends at no load.** While draining after a drop, a window back at the no-load
//!   latency ends the drain, whatever it delivered: a collapsing resource delivers more at
//!   its knee than crowded above it, so the rate alone would drain on past the knee.
//! - **Headroom.** With demand below the limit, the limit keeps twice the peak in flight plus
//!   four, and a quarter above the knee: light load is never turned away.
//! - **Cold start** at `max_inflight`: nothing is turned away while nothing is known. If the
//!   very first window already needs more, or work piled up in it far beyond what completed
//!   (a flood into an unmeasured bottleneck), the limit restarts low and doubles per window
//!   while the delivered rate grows by a quarter (BBR's startup), then drains or probes.
//! - Errors still pull the limit down first (the loop every algorithm shares).
//!
//! Worked example: a database serves 10 at once in 25 ms (400 requests/s); past 10 in flight
//! lock contention slows everyone. A flood starts while the limit is 24: the window delivers
//! 250/s at 95 ms mean, far slower than 25 ms, so the limit drops to 250/s x 25 ms = 6 (at
//! most halved: 12). At 12 it delivers 340/s, as much as at 24: drain on, 6. At 6 it
//! delivers 240/s, less in proportion: below the knee, and 25 ms is the no-load latency. The
//! knee is 340/s x 25 ms = 8.5, so 9; probing 10 delivers 400/s at 25 ms (more), 11 delivers
//! 367/s at 30 ms (less, slower): the limit settles at 400/s x 25 ms = 10, and probes again in
//! 12 s.

use super::algorithm::{Assessment, Bounds, LimitAlgorithm};
use super::config::AdaptiveConfig;
use super::controller::ChangeReason;
use super::window::Sample;

/// Windows with fewer finished requests say too little about the bottleneck.
pub const MIN_SAMPLES: u64 = 8;
/// A probe raises the limit by this factor (at least by one): fine enough not to jump over a
/// knee, coarse enough to see what it changes.
const PROBE_GAIN: f64 = 1.1;
/// Headroom above the knee when demand is below the limit.
const HEADROOM: f64 = 1.25;
/// Startup doubles the limit while the delivered rate grows by this factor.
const STARTUP_GREW: f64 = 1.25;
/// An unconfirmed estimate moves by at most this factor per memory period.
const DRIFT: f64 = 1.25;
/// While draining, a window counts as queued only when slower than the no-load latency by
/// more than this share of `queue_tolerance`: a drain ends as soon as latency is back at
/// no load, not only when the delivered rate falls.
const DRAINED: f64 = 0.25;

/// Where the algorithm is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Phase {
    /// Nothing measured yet: at the ceiling.
    #[default]
    Fresh,
    /// Demand exceeded the ceiling at once: doubling from low to find the knee.
    Startup,
    /// At, below or probing above the knee.
    Steady,
}

impl Phase {
    /// Wire code in the ledger.
    pub fn code(self) -> u8 {
        match self {
            Self::Fresh => 0,
            Self::Startup => 1,
            Self::Steady => 2,
        }
    }

    /// From the wire code.
    pub fn from_code(code: u8) -> Option<Self> {
        [Self::Fresh, Self::Startup, Self::Steady]
            .into_iter()
            .find(|p| p.code() == code)
    }
}

/// What the knee algorithm remembers between windows (stored in the ledger).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Knee {
    /// The no-load latency estimate, µs: the lowest window mean latency lately (0: none).
    pub no_load_us: u32,
    /// Windows since `no_load_us` was last confirmed.
    pub no_load_age: u16,
    /// The most delivered lately, in thousandths of a request per second (0: none).
    pub delivered_mrps: u32,
    /// Windows since `delivered_mrps` was last confirmed.
    pub delivered_age: u16,
    /// Where in its life the algorithm is.
    pub phase: Phase,
    /// Windows at the knee left before the next probe.
    pub until_probe: u16,
    /// The delivered rate (mrps) before the probe or startup step under way; 0 when none is.
    pub probe_base_mrps: u32,
    /// The mean latency (µs) before the probe under way.
    pub probe_base_us: u32,
    /// The limit before the probe under way.
    pub probe_base_limit: u32,
    /// The limit before a drop for a queue, until the next window confirms it (0: none).
    pub dropped_from: u32,
    /// The delivered rate (mrps) before the last drop.
    pub dropped_rate_mrps: u32,
    /// Drain steps taken since the drop.
    pub drain_steps: u8,
    /// The last window was slower than the no-load latency allows.
    pub was_slow: bool,
    /// The next due probe goes down rather than up.
    pub probe_down_next: bool,
}

/// Whether a window measured the backlog admitted under a higher limit rather than this one
/// (Little's law: its mean in flight is well above the limit). Such a window says nothing
/// about the limit in force.
/// Judged on the median latency, so a few long requests (a long poll) finishing in a window
/// do not make it look like a backlog; the margin covers the histogram's bucket width (19%).
fn backlog(rate: f64, p50_us: f64, limit: u32) -> bool {
    rate * p50_us / 1e6 > f64::from(limit) * 1.25
}

/// Whether the window's in-flight peak is far above what its completions account for
/// (Little's law: mean in flight = rate x latency): work arrived far faster than it
/// completed, as when a flood meets a bottleneck that has not been measured yet.
fn piling_up(sample: &Sample, rate: f64, mean_us: f64) -> bool {
    f64::from(sample.peak_inflight) > 4.0 * rate * mean_us / 1e6 + 4.0
}

/// What the knee algorithm believes, for gauges.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KneeEstimates {
    /// The no-load latency, µs.
    pub no_load_us: u32,
    /// The most delivered lately, requests per second.
    pub delivered_per_s: f64,
    /// Their product: the knee, in requests in flight.
    pub knee: f64,
}

fn mrps(rate: f64) -> u32 {
    (rate * 1_000.0).clamp(0.0, f64::from(u32::MAX)) as u32
}

fn micros(us: f64) -> u32 {
    us.clamp(1.0, f64::from(u32::MAX)) as u32
}

impl Knee {
    /// The same state with its two flags (`was_slow`, `probe_down_next`) read from one byte,
    /// as the ledger stores them.
    #[must_use]
    pub fn with_flags(mut self, flags: u8) -> Self {
        self.was_slow = flags & 1 != 0;
        self.probe_down_next = flags & 2 != 0;
        self
    }

    /// The estimates, for gauges.
    pub fn estimates(&self) -> KneeEstimates {
        KneeEstimates {
            no_load_us: self.no_load_us,
            delivered_per_s: f64::from(self.delivered_mrps) / 1_000.0,
            knee: self.knee(),
        }
    }

    /// The estimated knee, in requests in flight (0 before anything is measured).
    pub fn knee(&self) -> f64 {
        f64::from(self.delivered_mrps) / 1_000.0 * f64::from(self.no_load_us) / 1e6
    }

    /// Folds one window into the estimates: a new low latency or a new high rate is taken
    /// at once; an estimate that went `memory_windows` unconfirmed drifts towards now.
    fn observe(&mut self, rate: f64, mean_us: f64, config: &AdaptiveConfig) {
        let memory = config.memory_windows;
        let no_load = f64::from(self.no_load_us);
        if self.no_load_us == 0 || mean_us <= no_load {
            (self.no_load_us, self.no_load_age) = (micros(mean_us), 0);
        } else if self.no_load_age.saturating_add(1) >= memory {
            (self.no_load_us, self.no_load_age) = (micros(mean_us.min(no_load * DRIFT)), 0);
        } else {
            self.no_load_age += 1;
        }
        let delivered = f64::from(self.delivered_mrps) / 1_000.0;
        if rate >= delivered {
            (self.delivered_mrps, self.delivered_age) = (mrps(rate), 0);
        } else if self.delivered_age.saturating_add(1) >= memory {
            (self.delivered_mrps, self.delivered_age) = (mrps(rate.max(delivered / DRIFT)), 0);
        } else {
            self.delivered_age += 1;
        }
    }

    /// A queue: down to what the measured rate needs without one; the next window says
    /// whether it was a queue.
    fn drop_for_queue(&mut self, rate: f64, limit: u32) -> Assessment {
        let needed = rate * f64::from(self.no_load_us) / 1e6;
        let limit_f = f64::from(limit);
        // Halved at most, by a quarter at least: the no-load latency may be off, and the next
        // window must tell a queue from a slower resource by what the drop changes.
        let next = needed.clamp(limit_f / 2.0, limit_f * 0.75).floor() as u32;
        self.dropped_from = limit;
        self.dropped_rate_mrps = mrps(rate);
        self.drain_steps = 0;
        self.probe_base_mrps = 0;
        self.phase = Phase::Steady;
        Assessment::Set(next, ChangeReason::Queue)
    }

    /// After a drop for a queue: judge the window at the lower limit by what the bottleneck
    /// delivered. Delivering about as much with less in flight means the extra was queued:
    /// drain on (halving). Delivering less in proportion means the limit went below the knee:
    /// on the first step there was no queue but a slower resource (the limit goes back);
    /// later, this window measured the no-load latency, and the limit settles at the knee.
    fn drain(
        &mut self,
        sample: &Sample,
        rate: f64,
        mean_us: f64,
        limit: u32,
        config: &AdaptiveConfig,
        bounds: Bounds,
    ) -> Assessment {
        let from = self.dropped_from;
        if !sample.pressed() {
            // The lower limit did not bind: demand is below it, so the slow windows were no
            // queue of ours. Back to where it was.
            self.dropped_from = 0;
            self.drain_steps = 0;
            self.was_slow = false;
            self.until_probe = config.probe_every_windows;
            return Assessment::Set(from, ChangeReason::Knee);
        }
        let base_rate = f64::from(self.dropped_rate_mrps) / 1_000.0;
        let shrink = f64::from(limit) / f64::from(from.max(1));
        let fell = rate < base_rate * (1.0 - (1.0 - shrink) / 2.0);
        self.was_slow = false;
        if fell && self.drain_steps == 0 {
            // Less in flight delivers less, at the same latency: no queue, a slower resource.
            // Its no-load latency is this one, its knee in flight is where it was.
            self.dropped_from = 0;
            (self.no_load_us, self.no_load_age) = (micros(mean_us), 0);
            (self.delivered_mrps, self.delivered_age) = (mrps(rate / shrink), 0);
            self.until_probe = config.probe_every_windows;
            return Assessment::Set(from, ChangeReason::Slower);
        }
        // A window at about the no-load latency has no standing queue, whatever it delivered:
        // the limit is at or below the knee (a collapsing resource delivers more at its
        // knee than it did crowded above it, so the rate alone would drain on past the knee).
        let tolerance = config.queue_tolerance * DRAINED;
        let queued = mean_us > f64::from(self.no_load_us) * (1.0 + tolerance);
        if !fell && queued && limit > bounds.min {
            // As much delivered with less in flight, and still slower than no load: still
            // above the knee. Drain on.
            self.observe(rate, mean_us, config);
            self.dropped_from = limit;
            self.dropped_rate_mrps = mrps(rate);
            self.drain_steps = self.drain_steps.saturating_add(1);
            return Assessment::Set((limit / 2).max(bounds.min), ChangeReason::Queue);
        }
        // Below the knee (or at the floor): no queue here, so this is the no-load latency,
        // and the last step above delivered what the bottleneck delivers now (the most
        // delivered before may be from before it got slower). The knee lies between here
        // and that step: back to the estimate, and probe on from there at once, finer.
        self.dropped_from = 0;
        self.drain_steps = 0;
        (self.no_load_us, self.no_load_age) = (micros(mean_us), 0);
        (self.delivered_mrps, self.delivered_age) = (mrps(rate.max(base_rate)), 0);
        let settled = self.settle(limit, config);
        self.until_probe = 0;
        settled
    }

    /// Starts (or goes on) probing above the limit.
    fn probe(&mut self, rate: f64, mean_us: f64, limit: u32) -> Assessment {
        self.probe_base_mrps = mrps(rate).max(1);
        self.probe_base_us = micros(mean_us);
        self.probe_base_limit = limit;
        let up = (f64::from(limit) * PROBE_GAIN).floor() as u32;
        Assessment::Set(up.max(limit.saturating_add(1)), ChangeReason::Probe)
    }

    /// Probes below the limit for one window: in a queue or past a collapse, less in flight
    /// delivers as much, sooner; at the knee it delivers less. This is what finds a limit
    /// that crept above the knee by less than `queue_tolerance` shows.
    fn probe_down(&mut self, rate: f64, mean_us: f64, limit: u32, bounds: Bounds) -> Assessment {
        self.probe_base_mrps = mrps(rate).max(1);
        self.probe_base_us = micros(mean_us);
        self.probe_base_limit = limit;
        let down = (f64::from(limit) / PROBE_GAIN).ceil() as u32;
        Assessment::Set(
            down.min(limit.saturating_sub(1)).max(bounds.min),
            ChangeReason::Probe,
        )
    }

    /// After a probe down: keep the lower limit when it delivered about as much (not less in
    /// proportion) and sooner; else go back up.
    fn judge_probe_down(
        &mut self,
        rate: f64,
        mean_us: f64,
        limit: u32,
        config: &AdaptiveConfig,
    ) -> Assessment {
        let base_limit = self.probe_base_limit;
        let shrink = f64::from(limit) / f64::from(base_limit.max(1));
        let half_step = (1.0 - shrink) / 2.0;
        let base_rate = f64::from(self.probe_base_mrps) / 1_000.0;
        let base_us = f64::from(self.probe_base_us);
        self.probe_base_mrps = 0;
        self.until_probe = config.probe_every_windows;
        if rate >= base_rate * (1.0 - half_step) && mean_us < base_us * (1.0 - half_step) {
            (self.no_load_us, self.no_load_age) =
                (micros(mean_us.min(f64::from(self.no_load_us))), 0);
            Assessment::Hold
        } else {
            Assessment::Set(base_limit, ChangeReason::Knee)
        }
    }

    /// Whether the probe under way found the knee: more in flight stopped delivering more
    /// while latency rose (each judged against half of what the extra in flight would give
    /// below the knee).
    fn probe_found_knee(&self, rate: f64, mean_us: f64, limit: u32) -> bool {
        let grown = f64::from(limit) / f64::from(self.probe_base_limit.max(1));
        let expected = (grown - 1.0) / 2.0;
        let base_rate = f64::from(self.probe_base_mrps) / 1_000.0;
        let base_us = f64::from(self.probe_base_us);
        rate < base_rate * (1.0 + expected) && mean_us > base_us * (1.0 + expected)
    }

    /// Settles at the knee until the next probe.
    fn settle(&mut self, limit: u32, config: &AdaptiveConfig) -> Assessment {
        self.probe_base_mrps = 0;
        self.until_probe = config.probe_every_windows;
        let knee = self.knee().ceil() as u32;
        if knee == 0 || knee == limit {
            Assessment::Hold
        } else {
            Assessment::Set(knee, ChangeReason::Knee)
        }
    }

    /// Demand below the limit: keep headroom above what is in flight and above the knee;
    /// lower a far higher limit (so a sudden flood meets a limit near the knee), never
    /// below twice the peak.
    fn headroom(&self, sample: &Sample, limit: u32) -> Assessment {
        let peaks = sample.peak_inflight.saturating_mul(2).saturating_add(4);
        let want = ((self.knee() * HEADROOM).ceil() as u32).max(peaks);
        if want > limit || limit / 2 > want {
            Assessment::Set(want, ChangeReason::Knee)
        } else {
            Assessment::Hold
        }
    }
}

impl LimitAlgorithm for Knee {
    fn assess(
        &mut self,
        sample: &Sample,
        limit: u32,
        config: &AdaptiveConfig,
        bounds: Bounds,
    ) -> Assessment {
        if sample.count < MIN_SAMPLES {
            return Assessment::Hold;
        }
        let rate = sample.delivery_rate();
        let mean_us = sample.mean_us.max(1) as f64;
        // Few samples are noisy: widen the tolerance as 1/sqrt(n) below 64 samples.
        let tolerance = config.queue_tolerance * (64.0 / sample.count as f64).sqrt().max(1.0);
        if backlog(rate, sample.p50_us as f64, limit) {
            return Assessment::Hold;
        }
        if self.dropped_from > 0 {
            return self.drain(sample, rate, mean_us, limit, config, bounds);
        }
        if self.phase == Phase::Fresh && (sample.pressed() || piling_up(sample, rate, mean_us)) {
            // Demand beyond the ceiling before anything was known, or work piling up far
            // beyond what completes: this window was measured in a crowd, and its latency is
            // no no-load latency. Start low and measure.
            *self = Knee {
                phase: Phase::Startup,
                ..Knee::default()
            };
            return Assessment::Set(bounds.min.max(2), ChangeReason::ColdStart);
        }
        self.observe(rate, mean_us, config);
        let no_load = f64::from(self.no_load_us);
        let slow = mean_us > no_load * (1.0 + tolerance);
        // A queue of ours only where the limit binds: with demand below it, latency moves for
        // reasons a lower limit would not change (and the rate would only show demand).
        let queueing = sample.pressed()
            && slow
            && (self.was_slow || mean_us > no_load * (1.0 + 3.0 * tolerance));
        self.was_slow = slow;
        if self.phase == Phase::Fresh {
            self.phase = Phase::Steady;
            self.until_probe = config.probe_every_windows;
        }
        match self.phase {
            _ if queueing => self.drop_for_queue(rate, limit),
            Phase::Startup => {
                let base = f64::from(self.probe_base_mrps) / 1_000.0;
                if sample.pressed() && (base == 0.0 || rate >= base * STARTUP_GREW) {
                    self.probe_base_mrps = mrps(rate).max(1);
                    Assessment::Set(limit.saturating_mul(2), ChangeReason::Probe)
                } else {
                    // Startup overshot the knee or demand ran out: back to the knee, and
                    // probe finer from there at once (it lies below the last doubling).
                    self.phase = Phase::Steady;
                    let settled = self.settle(limit, config);
                    self.until_probe = 0;
                    settled
                }
            }
            Phase::Fresh | Phase::Steady if !sample.pressed() => {
                self.probe_base_mrps = 0;
                if sample.peak_inflight < limit {
                    self.headroom(sample, limit)
                } else {
                    // At the limit now and then, with hardly any turned away: neither room
                    // to spare nor pressure to act on.
                    Assessment::Hold
                }
            }
            Phase::Steady if self.probe_base_mrps > 0 && limit < self.probe_base_limit => {
                self.judge_probe_down(rate, mean_us, limit, config)
            }
            Phase::Steady if self.probe_base_mrps > 0 => {
                if self.probe_found_knee(rate, mean_us, limit) {
                    // More in flight delivered less, slower: the knee is no higher than where
                    // the probe started, whatever the estimate rounds to.
                    let base = self.probe_base_limit;
                    match self.settle(limit, config) {
                        Assessment::Set(knee, reason) if knee > base => {
                            Assessment::Set(base, reason)
                        }
                        Assessment::Hold if limit > base => {
                            Assessment::Set(base, ChangeReason::Knee)
                        }
                        settled => settled,
                    }
                } else {
                    self.probe(rate, mean_us, limit)
                }
            }
            Phase::Fresh | Phase::Steady => {
                if self.until_probe == 0 && self.probe_down_next && limit > bounds.min {
                    // Every other due probe looks below the limit.
                    self.probe_down_next = false;
                    return self.probe_down(rate, mean_us, limit, bounds);
                }
                if self.until_probe == 0 || f64::from(limit) < self.knee() * 0.9 {
                    // A probe is due, or the limit is below a knee that was measured: see
                    // what more delivers.
                    self.probe_down_next = self.until_probe == 0;
                    return self.probe(rate, mean_us, limit);
                }
                self.until_probe -= 1;
                Assessment::Hold
            }
        }
    }
}
