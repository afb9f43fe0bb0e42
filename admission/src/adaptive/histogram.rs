//! A latency histogram small enough to live in the shared ledger: log-scale buckets, four
//! per power of two (about 19% wide), stored sparse, so a window of similar latencies costs
//! a few bytes whatever the request count.

/// Bucket index of a latency in microseconds (0 for 0-1 µs; at most 4 × 32 + 3).
pub fn bucket_of(us: u64) -> u8 {
    let us = us.clamp(1, u64::from(u32::MAX));
    let octave = 63 - us.leading_zeros() as u64; // floor(log2)
    let base = 1u64 << octave;
    let sub = ((us - base) * 4) / base; // 0..=3
    u8::try_from(octave * 4 + sub).unwrap_or(u8::MAX)
}

/// A representative latency of a bucket (its midpoint), in microseconds.
pub fn bucket_value(index: u8) -> u64 {
    let octave = u64::from(index / 4);
    let sub = u64::from(index % 4);
    let base = 1u64 << octave.min(40);
    base + base * (2 * sub + 1) / 8
}

/// Sparse counts per bucket, sorted by bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram {
    buckets: Vec<(u8, u32)>,
}

impl Histogram {
    /// Counts one latency.
    pub fn record(&mut self, us: u64) {
        let b = bucket_of(us);
        match self.buckets.binary_search_by_key(&b, |(i, _)| *i) {
            Ok(i) => self.buckets[i].1 = self.buckets[i].1.saturating_add(1),
            Err(i) => self.buckets.insert(i, (b, 1)),
        }
    }

    /// Number of latencies counted.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|(_, n)| u64::from(*n)).sum()
    }

    /// The `p`-th percentile (0-100), in microseconds; 0 when empty.
    pub fn percentile(&self, p: f64) -> u64 {
        let total = self.count();
        if total == 0 {
            return 0;
        }
        let rank = ((p / 100.0) * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (b, n) in &self.buckets {
            seen += u64::from(*n);
            if seen >= rank {
                return bucket_value(*b);
            }
        }
        self.buckets.last().map_or(0, |(b, _)| bucket_value(*b))
    }

    /// The buckets, for encoding.
    pub fn buckets(&self) -> &[(u8, u32)] {
        &self.buckets
    }

    /// Rebuilds from encoded buckets; refuses unsorted or duplicate indices.
    pub fn from_buckets(buckets: Vec<(u8, u32)>) -> Option<Self> {
        buckets
            .windows(2)
            .all(|w| w[0].0 < w[1].0)
            .then_some(Self { buckets })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = Histogram::default();
        for ms in 1..=100u64 {
            h.record(ms * 1000);
        }
        let p50 = h.percentile(50.0) as f64;
        let p99 = h.percentile(99.0) as f64;
        assert!((p50 / 50_000.0 - 1.0).abs() < 0.2, "{p50}");
        assert!((p99 / 99_000.0 - 1.0).abs() < 0.2, "{p99}");
        assert_eq!(Histogram::default().percentile(50.0), 0);
    }

    proptest! {
        #[test]
        fn a_bucket_holds_its_values_within_a_quarter_octave(us in 1u64..4_000_000_000) {
            let v = bucket_value(bucket_of(us)) as f64;
            prop_assert!((v / us as f64) < 1.25 && (v / us as f64) > 0.8, "{us} -> {v}");
        }
    }
}
