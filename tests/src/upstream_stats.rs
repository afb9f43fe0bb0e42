//! Exact concurrency gauges of the test upstream, overall and per tenant: a request counts
//! from its arrival until its response is sent or its connection is gone, through a guard
//! whose `Drop` is the only way out. On demand, the same guard records each request's stay
//! (arrival, departure, connection), so a benchmark can see the upstream's idle gaps.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde_json::{json, Value};

/// Gauges of one tenant (the `x-tenant-id` request header; absent = "").
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TenantGauges {
    /// Requests of this tenant in flight now.
    pub inflight: usize,
    /// The most ever in flight at once since the last reset.
    pub max_inflight: usize,
    /// Requests received since the last reset.
    pub total: u64,
}

/// One request's stay at the upstream, recorded between [`UpstreamStats::record_spans`] and
/// [`UpstreamStats::take_spans`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// The connection it came on (numbered in accept order from 1; 0: not known).
    pub conn: u64,
    /// The number its client put in `x-tag` (0 without): which client sent it, through a
    /// proxy.
    pub tag: u64,
    /// When the upstream had its headers.
    pub start: Instant,
    /// When it stopped counting in flight: its response handed to hyper whole (or its
    /// connection gone).
    pub end: Instant,
}

/// The upstream's counters. Shared by every connection task and the test.
#[derive(Debug, Default)]
pub struct UpstreamStats {
    inflight: AtomicUsize,
    max_inflight: AtomicUsize,
    total: AtomicU64,
    resets: AtomicU64,
    tenants: Mutex<BTreeMap<String, TenantGauges>>,
    /// `Some` while recording: the spans of the requests that ended since.
    spans: Mutex<Option<Vec<Span>>>,
}

impl UpstreamStats {
    fn tenants(&self) -> MutexGuard<'_, BTreeMap<String, TenantGauges>> {
        // A panic while holding the lock leaves plain numbers behind: keep using them.
        self.tenants
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts a request in; it stays in flight until the guard is dropped.
    #[must_use]
    pub fn enter(self: &Arc<Self>, tenant: &str) -> InflightGuard {
        self.enter_on(tenant, 0, 0)
    }

    /// [`Self::enter`] for a request that came on connection `conn` with `x-tag: tag`.
    #[must_use]
    pub fn enter_on(self: &Arc<Self>, tenant: &str, conn: u64, tag: u64) -> InflightGuard {
        self.total.fetch_add(1, Ordering::SeqCst);
        let now = self.inflight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_inflight.fetch_max(now, Ordering::SeqCst);
        {
            let mut tenants = self.tenants();
            let t = tenants.entry(tenant.to_owned()).or_default();
            t.inflight += 1;
            t.max_inflight = t.max_inflight.max(t.inflight);
            t.total += 1;
        }
        InflightGuard {
            stats: Arc::clone(self),
            tenant: tenant.to_owned(),
            conn,
            tag,
            start: Instant::now(),
        }
    }

    fn spans(&self) -> MutexGuard<'_, Option<Vec<Span>>> {
        self.spans
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts recording every request that ends from now on (afresh if already recording).
    pub fn record_spans(&self) {
        *self.spans() = Some(Vec::new());
    }

    /// Stops recording: the spans recorded, in the order the requests ended.
    #[must_use]
    pub fn take_spans(&self) -> Vec<Span> {
        self.spans().take().unwrap_or_default()
    }

    /// Counts a deliberate reset (`x-reset: 1`).
    pub fn count_reset(&self) {
        self.resets.fetch_add(1, Ordering::SeqCst);
    }

    /// Requests in flight now.
    #[must_use]
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::SeqCst)
    }

    /// The most requests ever in flight at once since the last reset.
    #[must_use]
    pub fn max_inflight(&self) -> usize {
        self.max_inflight.load(Ordering::SeqCst)
    }

    /// Requests received since the last reset.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::SeqCst)
    }

    /// Deliberate resets since the last reset of the stats.
    #[must_use]
    pub fn resets(&self) -> u64 {
        self.resets.load(Ordering::SeqCst)
    }

    /// One tenant's gauges (all zero for a tenant never seen).
    #[must_use]
    pub fn tenant(&self, tenant: &str) -> TenantGauges {
        self.tenants().get(tenant).copied().unwrap_or_default()
    }

    /// Every tenant seen since the last reset, with its gauges.
    #[must_use]
    pub fn tenants_snapshot(&self) -> BTreeMap<String, TenantGauges> {
        self.tenants().clone()
    }

    /// Zeroes totals and lowers every maximum to what is in flight now (requests in flight
    /// keep counting, so the gauges stay exact).
    pub fn reset(&self) {
        let mut tenants = self.tenants();
        self.total.store(0, Ordering::SeqCst);
        self.resets.store(0, Ordering::SeqCst);
        self.max_inflight.store(self.inflight(), Ordering::SeqCst);
        tenants.retain(|_, t| t.inflight > 0);
        for t in tenants.values_mut() {
            t.max_inflight = t.inflight;
            t.total = 0;
        }
    }

    /// Everything as JSON (served on `GET /__stats`).
    #[must_use]
    pub fn to_json(&self) -> Value {
        let tenants: serde_json::Map<String, Value> = self
            .tenants_snapshot()
            .into_iter()
            .map(|(name, t)| {
                let v = json!({"inflight": t.inflight, "max_inflight": t.max_inflight, "total": t.total});
                (name, v)
            })
            .collect();
        json!({
            "inflight": self.inflight(),
            "max_inflight": self.max_inflight(),
            "total": self.total(),
            "resets": self.resets(),
            "tenants": tenants,
        })
    }
}

/// One request in flight; dropping it counts the request out.
#[derive(Debug)]
pub struct InflightGuard {
    stats: Arc<UpstreamStats>,
    tenant: String,
    conn: u64,
    tag: u64,
    start: Instant,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if let Some(spans) = self.stats.spans().as_mut() {
            spans.push(Span {
                conn: self.conn,
                tag: self.tag,
                start: self.start,
                end: Instant::now(),
            });
        }
        {
            let mut tenants = self.stats.tenants();
            if let Some(t) = tenants.get_mut(&self.tenant) {
                t.inflight = t.inflight.saturating_sub(1);
            }
        }
        self.stats.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_count_in_and_out_and_reset_keeps_live_requests() {
        let s = Arc::new(UpstreamStats::default());
        let a = s.enter("acme");
        let b = s.enter("acme");
        let c = s.enter("");
        assert_eq!((s.inflight(), s.max_inflight(), s.total()), (3, 3, 3));
        assert_eq!(s.tenant("acme").max_inflight, 2);
        drop(a);
        drop(c);
        s.reset();
        assert_eq!((s.inflight(), s.max_inflight(), s.total()), (1, 1, 0));
        assert_eq!(
            s.tenant("acme"),
            TenantGauges {
                inflight: 1,
                max_inflight: 1,
                total: 0
            }
        );
        assert_eq!(s.tenant(""), TenantGauges::default());
        drop(b);
        assert_eq!((s.inflight(), s.tenant("acme").inflight), (0, 0));
        assert_eq!(s.to_json()["max_inflight"], 1);
    }

    #[test]
    fn spans_are_recorded_only_between_record_and_take() {
        let s = Arc::new(UpstreamStats::default());
        drop(s.enter_on("", 1, 0));
        s.record_spans();
        let a = s.enter_on("", 2, 7);
        let b = s.enter_on("", 3, 0);
        drop(b);
        drop(a);
        let spans = s.take_spans();
        assert_eq!(spans.iter().map(|x| x.conn).collect::<Vec<_>>(), [3, 2]);
        assert_eq!(spans[1].tag, 7);
        assert!(spans.iter().all(|x| x.start <= x.end));
        drop(s.enter(""));
        assert!(s.take_spans().is_empty(), "recording stopped at take");
    }
}
