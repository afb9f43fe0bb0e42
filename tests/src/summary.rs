//! Latency percentiles and a one-line summary of a run's outcomes, for assertions and for
//! the demo's printout.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::client::Outcome;

/// The `p`-th percentile (0..=100, nearest rank) of `latencies`; zero for none.
#[must_use]
pub fn percentile(latencies: &[Duration], p: f64) -> Duration {
    if latencies.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = latencies.to_vec();
    sorted.sort_unstable();
    sorted_percentile(&sorted, p)
}

/// [`percentile`] of values already sorted ascending (no copy, for large samples).
#[must_use]
pub fn sorted_percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let p = p.clamp(0.0, 100.0);
    // Nearest rank: the smallest value with at least p% of the values at or below it.
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Counts and latencies of a set of outcomes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Outcomes counted.
    pub count: usize,
    /// Outcomes by status; `None` = no response (connection error or timeout).
    pub by_status: BTreeMap<Option<u16>, usize>,
    /// Outcomes by `x-wipgate-reason` (rejections only).
    pub by_reason: BTreeMap<String, usize>,
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
    /// Largest latency.
    pub max: Duration,
}

impl Summary {
    /// Summarises `outcomes`.
    #[must_use]
    pub fn of(outcomes: &[Outcome]) -> Self {
        let latencies: Vec<Duration> = outcomes.iter().map(|o| o.latency).collect();
        let mut by_status = BTreeMap::new();
        let mut by_reason = BTreeMap::new();
        for o in outcomes {
            *by_status.entry(o.status).or_insert(0) += 1;
            if let Some(reason) = o.reason() {
                *by_reason.entry(reason.to_owned()).or_insert(0) += 1;
            }
        }
        Self {
            count: outcomes.len(),
            by_status,
            by_reason,
            p50: percentile(&latencies, 50.0),
            p99: percentile(&latencies, 99.0),
            max: latencies.iter().max().copied().unwrap_or_default(),
        }
    }

    /// Outcomes with this status.
    #[must_use]
    pub fn status(&self, status: u16) -> usize {
        self.by_status.get(&Some(status)).copied().unwrap_or(0)
    }

    /// Outcomes with no response.
    #[must_use]
    pub fn errors(&self) -> usize {
        self.by_status.get(&None).copied().unwrap_or(0)
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} requests:", self.count)?;
        for (status, n) in &self.by_status {
            match status {
                Some(s) => write!(f, " {s}={n}")?,
                None => write!(f, " error={n}")?,
            }
        }
        if !self.by_reason.is_empty() {
            let reasons: Vec<String> = self
                .by_reason
                .iter()
                .map(|(r, n)| format!("{r}={n}"))
                .collect();
            write!(f, " (reasons: {})", reasons.join(" "))?;
        }
        write!(
            f,
            "; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            ms(self.p50),
            ms(self.p99),
            ms(self.max)
        )
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let l: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&l, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&l, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&l, 100.0), Duration::from_millis(100));
        assert_eq!(percentile(&l, 0.0), Duration::from_millis(1));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }

    #[test]
    fn summary_counts_statuses_and_reasons() {
        let mut rejected = Outcome {
            status: Some(503),
            headers: http::HeaderMap::new(),
            body: bytes::Bytes::new(),
            latency: Duration::from_millis(2),
            tenant: None,
            error: None,
        };
        rejected.headers.insert(
            "x-wipgate-reason",
            http::HeaderValue::from_static("wip_limit"),
        );
        let mut ok = rejected.clone();
        ok.status = Some(200);
        ok.headers.clear();
        ok.latency = Duration::from_millis(10);
        let s = Summary::of(&[rejected, ok]);
        assert_eq!(
            (s.count, s.status(200), s.status(503), s.errors()),
            (2, 1, 1, 0)
        );
        assert_eq!(s.by_reason.get("wip_limit"), Some(&1));
        assert_eq!(s.max, Duration::from_millis(10));
        let text = s.to_string();
        assert!(
            text.starts_with("2 requests: 200=1 503=1 (reasons: wip_limit=1)"),
            "{text}"
        );
    }
}
