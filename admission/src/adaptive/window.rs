//! One measurement window, accumulated Envoy-wide in the ledger: what the admitted requests
//! that finished in it took and how they ended, and how hard the limit was pressed.

use super::histogram::Histogram;

/// How an admitted request ended, as the limit algorithms see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response below 500 (a 4xx is the caller's problem, not the resource's).
    Success,
    /// A 5xx, an upstream reset or a timeout: the resource may be in trouble.
    Error,
}

/// The window being filled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Window {
    /// When it started (ms since the epoch).
    pub start_ms: u64,
    /// Finished requests that ended in an error.
    pub errors: u32,
    /// Requests rejected because the limit was full (demand above the limit).
    pub rejected: u32,
    /// The most requests in flight at once.
    pub peak_inflight: u32,
    /// Latencies of finished requests, admission to end of stream.
    pub latency: Histogram,
    /// Their sum, µs: with the window's length, Little's law gives the mean in flight.
    pub latency_sum_us: u64,
}

/// A closed window, summarised for the algorithms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Finished requests.
    pub count: u64,
    /// Share of them that ended in an error (0-1).
    pub error_rate: f64,
    /// Latency percentiles, in microseconds.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Whether the limit held work back: rejections, or in flight at the limit.
    pub limited: bool,
    /// Mean latency, µs.
    pub mean_us: u64,
    /// How long the window lasted, ms (at least its configured length).
    pub duration_ms: u64,
    /// The most requests in flight at once.
    pub peak_inflight: u32,
    /// Requests turned away because the limit was full.
    pub rejected: u32,
}

impl Sample {
    /// Demand pressed on the limit: a share of requests was turned away (not a lone peak
    /// touching the limit, which light Poisson traffic does now and then).
    pub fn pressed(&self) -> bool {
        u64::from(self.rejected) >= (self.count / 50).max(2)
    }

    /// Requests finished per second: what the bottleneck delivered.
    pub fn delivery_rate(&self) -> f64 {
        self.count as f64 * 1_000.0 / self.duration_ms.max(1) as f64
    }
}

impl Window {
    /// Counts one finished request.
    pub fn record(&mut self, latency_us: u64, outcome: Outcome) {
        self.latency.record(latency_us);
        self.latency_sum_us = self.latency_sum_us.saturating_add(latency_us);
        if outcome == Outcome::Error {
            self.errors = self.errors.saturating_add(1);
        }
    }

    /// The summary of this window under `limit`, closed at `now_ms`.
    pub fn sample(&self, limit: u32, now_ms: u64) -> Sample {
        let count = self.latency.count();
        Sample {
            count,
            error_rate: if count == 0 {
                0.0
            } else {
                f64::from(self.errors) / count as f64
            },
            p50_us: self.latency.percentile(50.0),
            p90_us: self.latency.percentile(90.0),
            p99_us: self.latency.percentile(99.0),
            limited: self.rejected > 0 || self.peak_inflight >= limit,
            mean_us: self.latency_sum_us.checked_div(count).unwrap_or(0),
            duration_ms: now_ms.saturating_sub(self.start_ms).max(1),
            peak_inflight: self.peak_inflight,
            rejected: self.rejected,
        }
    }
}
