//! The seam between the limit loop and the algorithms: each algorithm judges a closed window
//! and says it was healthy, proposes a lower limit, or sets the limit itself (the knee); the
//! loop ([`super::controller`]) owns what they share (errors pull the limit down first; for
//! AIMD and gradient, increases wait for stability and the cold start ramps up).

use super::aimd::Aimd;
use super::config::{AdaptiveConfig, Algorithm};
use super::gradient::Gradient;
use super::knee::Knee;
use super::window::Sample;

/// The bounds the limit moves within (`min_inflight ..= max_inflight`). Invariant:
/// `1 <= min <= max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// The floor.
    pub min: u32,
    /// The ceiling.
    pub max: u32,
}

impl Bounds {
    /// Bounds from possibly inconsistent numbers: the floor at least 1, the ceiling at least
    /// the floor.
    pub fn new(min: u32, max: u32) -> Self {
        let min = min.max(1);
        Self {
            min,
            max: max.max(min),
        }
    }
}

/// What an algorithm makes of one closed window with requests in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assessment {
    /// Healthy: counts towards stability, so the limit may rise.
    Healthy,
    /// The limit should fall to this value (already within the bounds).
    Lower(u32, super::ChangeReason),
    /// The algorithm sets the limit itself, up or down (clamped to the bounds).
    Set(u32, super::ChangeReason),
    /// Too little to go on: no change, and not a healthy window either.
    Hold,
}

/// One limit algorithm. Pure: `now` is never read, the sample and the limit are arguments,
/// and whatever the algorithm remembers between windows is `self`, which the ledger stores.
pub trait LimitAlgorithm {
    /// Judges a closed window (`sample.count > 0`) taken under `limit`.
    fn assess(
        &mut self,
        sample: &Sample,
        limit: u32,
        config: &AdaptiveConfig,
        bounds: Bounds,
    ) -> Assessment;
}

/// The state of whichever algorithm is configured, as stored in the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlgorithmState {
    /// Additive increase, multiplicative decrease on latency over a target.
    Aimd(Aimd),
    /// Latency gradient against the no-load latency.
    Gradient(Gradient),
    /// The knee by Little's law.
    Knee(Knee),
}

impl AlgorithmState {
    /// A fresh state for `algorithm`.
    pub fn fresh(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Aimd => Self::Aimd(Aimd),
            Algorithm::Gradient => Self::Gradient(Gradient::default()),
            Algorithm::Knee => Self::Knee(Knee::default()),
        }
    }

    /// Which algorithm this state belongs to.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Self::Aimd(_) => Algorithm::Aimd,
            Self::Gradient(_) => Algorithm::Gradient,
            Self::Knee(_) => Algorithm::Knee,
        }
    }

    /// The algorithm itself.
    pub fn as_algorithm(&mut self) -> &mut dyn LimitAlgorithm {
        match self {
            Self::Aimd(a) => a,
            Self::Gradient(g) => g,
            Self::Knee(k) => k,
        }
    }
}
