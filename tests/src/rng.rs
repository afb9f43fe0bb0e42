//! A small shared pseudo-random generator (xorshift64*) for the harness: heavy-tailed service
//! times in the upstream, Poisson arrivals in the load generators. Reproducible from its
//! seed, not cryptographic.

use std::sync::atomic::{AtomicU64, Ordering};

/// A uniform number in (0, 1] from `state` (which must not be 0), advancing it. Concurrent
/// callers may occasionally draw the same number: fine for load shapes.
pub fn unit(state: &AtomicU64) -> f64 {
    let mut x = state.load(Ordering::Relaxed);
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    state.store(x, Ordering::Relaxed);
    #[allow(clippy::cast_precision_loss)]
    let u = ((x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    u
}

/// An exponentially distributed wait of mean `1 / rate` seconds: the gap between two arrivals
/// of a Poisson process of `rate` per second.
pub fn exponential_s(state: &AtomicU64, rate: f64) -> f64 {
    -unit(state).ln() / rate
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_gaps_have_the_rate_asked_for() {
        let state = AtomicU64::new(0x9e37_79b9_7f4a_7c15);
        let n = 50_000;
        let sum: f64 = (0..n).map(|_| exponential_s(&state, 400.0)).sum();
        #[allow(clippy::cast_precision_loss)]
        let rate = f64::from(n) / sum;
        assert!((390.0..410.0).contains(&rate), "rate {rate}");
        let u: Vec<f64> = (0..1000).map(|_| unit(&state)).collect();
        assert!(u.iter().all(|&v| v > 0.0 && v <= 1.0));
    }
}
