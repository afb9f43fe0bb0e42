//! Samplers that run beside an open loop on threads of their own: the bottleneck's
//! in-flight count every 10 ms (an atomic read), and a moving limit every 100 ms from
//! Envoy's admin `/stats` (wipgate's `wipgate.adaptive.limit` gauge, or
//! adaptive_concurrency's). Threads, not tasks: the runtime is busy with the load, and a
//! sampler that lags would smear the series.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wipgate_e2e::blocking_http;
use wipgate_e2e::UpstreamStats;

/// How often the in-flight count is read.
const INFLIGHT_EVERY: Duration = Duration::from_millis(10);
/// How often the limit is read.
pub const LIMIT_EVERY: Duration = Duration::from_millis(100);
/// The longest one admin call may take before the sample is skipped.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest a sampler runs, whatever happens to the run it samples.
const MAX_TRACE: Duration = Duration::from_secs(120);

/// Samples as (seconds since the start, value).
pub type Samples = Vec<(f64, f64)>;

/// Running samplers; [`Tracer::finish`] stops them and returns what they read.
pub struct Tracer {
    stop: Arc<AtomicBool>,
    inflight: JoinHandle<Samples>,
    limit: Option<JoinHandle<Samples>>,
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

fn sample(
    start: Instant,
    stop: &AtomicBool,
    every: Duration,
    mut read: impl FnMut() -> Option<f64>,
) -> Samples {
    let mut out = Vec::new();
    let mut next = start;
    while !stop.load(Ordering::SeqCst) && start.elapsed() < MAX_TRACE {
        if let Some(v) = read() {
            out.push((start.elapsed().as_secs_f64(), v));
        }
        // A steady beat: the next sample is due `every` after the last one was due.
        next += every;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
    out
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
        let stop = Arc::new(AtomicBool::new(false));
        let inflight = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                #[allow(clippy::cast_precision_loss)]
                sample(start, &stop, INFLIGHT_EVERY, || {
                    Some(stats.inflight() as f64)
                })
            })
        };
        let limit = limit.map(|(admin, suffix)| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                sample(start, &stop, LIMIT_EVERY, || read_limit(admin, suffix))
            })
        });
        Self {
            stop,
            inflight,
            limit,
        }
    }

    /// Stops the samplers: (in-flight samples, limit samples).
    #[must_use]
    pub fn finish(self) -> (Samples, Samples) {
        self.stop.store(true, Ordering::SeqCst);
        let inflight = self.inflight.join().unwrap_or_default();
        let limit = self
            .limit
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        (inflight, limit)
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
