//! Samplers that run beside an open loop on threads of their own: the bottleneck's
//! in-flight count every 10 ms (an atomic read), and a moving limit every 100 ms from
//! Envoy's admin `/stats` (wipgate's `wipgate.adaptive.limit` gauge, or
//! adaptive_concurrency's), each a harness [`Sampler`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wipgate_e2e::blocking_http;
use wipgate_e2e::sampler::Sampler;
use wipgate_e2e::UpstreamStats;

/// How often the in-flight count is read.
const INFLIGHT_EVERY: Duration = Duration::from_millis(10);
/// How often the limit is read.
pub const LIMIT_EVERY: Duration = Duration::from_millis(100);
/// The longest one admin call may take before the sample is skipped.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(1);
/// Samples as (seconds since the start, value).
pub type Samples = Vec<(f64, f64)>;

/// Running samplers; [`Tracer::finish`] stops them and returns what they read.
pub struct Tracer {
    inflight: Sampler<f64>,
    limit: Option<Sampler<f64>>,
}

/// A gauge ending in `suffix`, from `/stats?format=json&filter=limit` on `admin`.
fn read_limit(admin: SocketAddr, suffix: &str) -> Option<f64> {
    let resp = blocking_http::get(admin, "/stats?format=json&filter=limit", ADMIN_TIMEOUT).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&resp.body).ok()?;
    v["stats"].as_array()?.iter().find_map(|s| {
        let name = s["name"].as_str()?;
        #[allow(clippy::cast_precision_loss)]
        let value = s["value"].as_u64()? as f64;
        name.ends_with(suffix).then_some(value)
    })
}

impl Tracer {
    /// Starts sampling `stats`' in-flight count and, with `limit` (Envoy's admin address and
    /// the stat's suffix), the limit; times count from `start`.
    #[must_use]
    pub fn start(
        start: Instant,
        stats: Arc<UpstreamStats>,
        limit: Option<(SocketAddr, &'static str)>,
    ) -> Self {
        #[allow(clippy::cast_precision_loss)]
        let inflight = Sampler::start(start, INFLIGHT_EVERY, move || Some(stats.inflight() as f64));
        let limit = limit.map(|(admin, suffix)| {
            Sampler::start(start, LIMIT_EVERY, move || read_limit(admin, suffix))
        });
        Self { inflight, limit }
    }

    /// Stops the samplers: (in-flight samples, limit samples).
    #[must_use]
    pub fn finish(self) -> (Samples, Samples) {
        let limit = self.limit.map(Sampler::finish).unwrap_or_default();
        (self.inflight.finish(), limit)
    }
}

/// The mean of the samples falling in each of `n` buckets of `bucket` seconds; a bucket
/// without a sample takes its predecessor's mean.
#[must_use]
pub fn bucket_means(samples: &[(f64, f64)], bucket: f64, n: usize) -> Vec<f64> {
    let mut sum = vec![0.0; n];
    let mut count = vec![0usize; n];
    for &(t, v) in samples {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let b = (t / bucket).floor() as usize;
        if let (Some(s), Some(c)) = (sum.get_mut(b), count.get_mut(b)) {
            *s += v;
            *c += 1;
        }
    }
    let mut last = 0.0;
    sum.iter()
        .zip(&count)
        .map(|(&s, &c)| {
            if c > 0 {
                #[allow(clippy::cast_precision_loss)]
                let m = s / c as f64;
                last = m;
            }
            last
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_means_average_each_bucket_and_carry_over_gaps() {
        let samples = [(0.01, 2.0), (0.05, 4.0), (0.25, 10.0)];
        assert_eq!(bucket_means(&samples, 0.1, 4), vec![3.0, 3.0, 10.0, 10.0]);
    }
}
