//! Bulkheads: the per-tenant and per-class partitions of the Envoy-wide limit, and the one
//! rule that admits a request against them.
//!
//! A request is admitted when (1) total in-flight stays within the limit, (2) its tenant and
//! its class stay within their `max`, and (3) what is left after it still covers the unused
//! reservations of the other tenants, and (separately) those of the other classes.
//!
//! Tenant reservations fit in the limit, and so do class reservations (validated). Rule (3)
//! keeps "free capacity ≥ unused tenant reservations" and "free capacity ≥ unused class
//! reservations" true at all times (a release frees one slot and restores at most one unit
//! of each). Hence a tenant inside its own reservation is admitted whenever the limit has
//! room, however busy the other tenants are, as long as its class may go too: a tenant's
//! reservation does not let its batch work take the interactive classes' slice.
//!
//! Unlisted tenants follow the `*` template: each has `*`'s `max`; `*`'s `reserved` is held
//! for all unlisted tenants together. At most `max_tenants` unlisted tenants are counted
//! apart at once; newcomers beyond that share one overflow count (under `*`'s `max`), so the
//! ledger stays bounded whatever names clients send. A tenant is forgotten as soon as it has
//! nothing in flight.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::WILDCARD_TENANT;
use crate::labels::{Label, Labels, TenantLabel};
use crate::ledger::{GaugeDeltas, Ledger, PartitionKey, Seat};
use crate::queue::SeatRule;
use crate::{Bulkhead, GateConfig, RejectReason, TenantName};

/// A configured tenant or class.
#[derive(Debug, Clone)]
struct Named {
    name: Arc<str>,
    key: PartitionKey,
    bulkhead: Bulkhead,
}

/// The partitions of one configuration, ready for per-request use.
#[derive(Debug, Clone)]
pub struct Partitions {
    tenants: Vec<Named>,
    wildcard: Bulkhead,
    classes: Vec<Named>,
    default_class: Option<usize>,
    max_tenants: usize,
    /// The limit the reservations were sized for; below it they shrink in proportion.
    base_limit: u32,
    /// The protected resource is saturated: only reserved classes, within their slice.
    saturated: bool,
    /// Count every request under its tenant even without bulkheads: the queue's fair
    /// hand-off needs to know who holds how much.
    count_tenants: bool,
}

/// Where a request belongs, before the ledger is consulted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The request's tenant (for the rejection body).
    pub tenant: TenantName,
    /// Its tenant's and class's keys.
    pub seat: Seat,
}

/// The count shared by unlisted tenants beyond `max_tenants`. `*` is not a valid tenant name,
/// so no real tenant has this key.
fn overflow_key() -> PartitionKey {
    PartitionKey::tenant(WILDCARD_TENANT)
}

impl Partitions {
    /// The partitions of a validated configuration.
    pub fn new(config: &GateConfig) -> Self {
        let named = |map: &BTreeMap<String, Bulkhead>, key: fn(&str) -> PartitionKey| {
            map.iter()
                .filter(|(name, _)| name.as_str() != WILDCARD_TENANT)
                .map(|(name, b)| Named {
                    name: Arc::from(name.as_str()),
                    key: key(name),
                    bulkhead: *b,
                })
                .collect::<Vec<_>>()
        };
        let classes = named(&config.classes, PartitionKey::class);
        let default_class = config
            .default_class
            .as_ref()
            .and_then(|d| classes.iter().position(|c| *c.name == **d));
        Self {
            tenants: named(&config.tenants, PartitionKey::tenant),
            wildcard: config
                .tenants
                .get(WILDCARD_TENANT)
                .copied()
                .unwrap_or_default(),
            classes,
            default_class,
            max_tenants: usize::try_from(config.max_tenants).unwrap_or(usize::MAX),
            base_limit: config.max_inflight,
            saturated: false,
            count_tenants: config.queue.is_some(),
        }
    }

    /// The same partitions while the protected resource is (or is not) saturated.
    #[must_use]
    pub fn saturated(mut self, saturated: bool) -> Self {
        self.saturated = saturated;
        self
    }

    /// Places a request by its tenant and its priority header value (a configured class
    /// name; anything else means the default class).
    pub fn place(&self, tenant: TenantName, priority: Option<&[u8]>) -> Placement {
        let class = priority
            .and_then(|p| self.classes.iter().position(|c| c.name.as_bytes() == p))
            .or(self.default_class);
        Placement {
            seat: Seat {
                tenant: PartitionKey::tenant(tenant.as_str()),
                class: class.map(|j| self.classes[j].key),
            },
            tenant,
        }
    }

    /// The listed tenant of a seat, if it is one.
    fn listed(&self, seat: &Seat) -> Option<usize> {
        self.tenants.iter().position(|t| t.key == seat.tenant)
    }

    /// The configured class of a seat, if it has one.
    fn class(&self, seat: &Seat) -> Option<usize> {
        seat.class
            .and_then(|key| self.classes.iter().position(|c| c.key == key))
    }

    /// Stat labels of tenants: every listed name, then the unlisted, so stat cardinality
    /// follows the configuration, never what clients send.
    pub fn tenant_labels(&self) -> impl Iterator<Item = TenantLabel> + '_ {
        self.tenants
            .iter()
            .map(|t| TenantLabel::Listed(Arc::clone(&t.name)))
            .chain([TenantLabel::Unlisted])
    }

    /// Stat labels of classes, in configuration order.
    pub fn class_labels(&self) -> impl Iterator<Item = Arc<str>> + '_ {
        self.classes.iter().map(|c| Arc::clone(&c.name))
    }

    /// The ledger's gauge deltas by label: a listed tenant's key is its label, any other
    /// tenant's key the unlisted's, a configured class's key its class (other classes are
    /// not this configuration's). Without bulkheads nothing is counted per partition, so
    /// every request is the unlisted's.
    pub fn gauge_deltas(&self, deltas: &GaugeDeltas) -> Vec<(Label, i64)> {
        let mut out: Vec<(Label, i64)> = Vec::new();
        let mut add = |label: Label, d: i64| match out.iter_mut().find(|(l, _)| *l == label) {
            Some((_, n)) => *n += d,
            None => out.push((label, d)),
        };
        if self.is_plain() {
            add(Label::Tenant(TenantLabel::Unlisted), deltas.total);
            return out;
        }
        for (key, d) in &deltas.parts {
            if key.is_class() {
                if let Some(c) = self.classes.iter().find(|c| c.key == *key) {
                    add(Label::Class(Arc::clone(&c.name)), *d);
                }
            } else {
                let label = self
                    .tenants
                    .iter()
                    .find(|t| t.key == *key)
                    .map_or(TenantLabel::Unlisted, |t| {
                        TenantLabel::Listed(Arc::clone(&t.name))
                    });
                add(Label::Tenant(label), *d);
            }
        }
        out
    }

    /// Every label of these partitions: the stats and the sync report follow them.
    pub fn labels_in_force(&self) -> impl Iterator<Item = Label> + '_ {
        self.tenant_labels()
            .map(Label::Tenant)
            .chain(self.class_labels().map(Label::Class))
    }

    /// Where a placed request is counted in the stats.
    pub fn labels(&self, placement: &Placement) -> Labels {
        Labels {
            tenant: self
                .listed(&placement.seat)
                .map_or(TenantLabel::Unlisted, |i| {
                    TenantLabel::Listed(Arc::clone(&self.tenants[i].name))
                }),
            class: self
                .class(&placement.seat)
                .map(|j| Arc::clone(&self.classes[j].name)),
        }
    }

    /// No tenant or class has a reservation or a cap, and the resource is not saturated.
    fn is_plain(&self) -> bool {
        self.tenants.is_empty()
            && self.classes.is_empty()
            && self.wildcard == Bulkhead::default()
            && !self.saturated
            && !self.count_tenants
    }

    /// Whether `seat` is inside an unused reservation of its tenant or its class.
    pub fn reserved(&self, totals: &BTreeMap<PartitionKey, u64>, seat: &Seat) -> bool {
        let count = |key: PartitionKey| totals.get(&key).copied().unwrap_or(0);
        let tenant = self
            .listed(seat)
            .is_some_and(|i| u64::from(self.tenants[i].bulkhead.reserved) > count(seat.tenant));
        let class = self.class(seat).is_some_and(|j| {
            let c = &self.classes[j];
            u64::from(c.bulkhead.reserved) > count(c.key)
        });
        tenant || class
    }

    /// `reserved` sized for the base limit, shrunk in proportion to `limit`.
    fn scaled(&self, reserved: u32, limit: u32) -> u32 {
        if limit >= self.base_limit || self.base_limit == 0 {
            return reserved;
        }
        let scaled = u64::from(reserved) * u64::from(limit) / u64::from(self.base_limit);
        u32::try_from(scaled).unwrap_or(reserved)
    }

    /// Decides on `seat` against the ledger: the partition keys to count the request
    /// in, or why not. Pure: called inside the ledger's compare-and-swap loop. `limit` may be
    /// below the configured `max_inflight` (adaptive limits): reservations then shrink in
    /// proportion, so they still fit and their guarantees hold.
    pub fn decide(
        &self,
        ledger: &Ledger,
        limit: u32,
        seat: &Seat,
    ) -> Result<Vec<PartitionKey>, RejectReason> {
        let listed = self.listed(seat);
        let class_index = self.class(seat);
        let total = ledger.total();
        if total >= u64::from(limit) {
            return Err(RejectReason::WipLimit);
        }
        if self.is_plain() {
            // No bulkheads: nothing to count per tenant or class, the total is the rule.
            return Ok(Vec::new());
        }
        let totals = ledger.partition_totals();
        let count = |key: PartitionKey| totals.get(&key).copied().unwrap_or(0);
        let is_listed = |key: &PartitionKey| self.tenants.iter().any(|t| t.key == *key);
        let unlisted = || {
            totals
                .iter()
                .filter(|(k, _)| !k.is_class() && !is_listed(k))
        };

        let (tenant_key, tenant) = match listed {
            Some(i) => (self.tenants[i].key, self.tenants[i].bulkhead),
            None => {
                let tracked = count(seat.tenant) > 0;
                let counted_apart = unlisted().filter(|(k, _)| **k != overflow_key()).count();
                if tracked || counted_apart < self.max_tenants {
                    (seat.tenant, self.wildcard)
                } else {
                    (overflow_key(), self.wildcard)
                }
            }
        };
        if count(tenant_key) >= tenant.max.map_or(u64::MAX, u64::from) {
            return Err(RejectReason::TenantLimit);
        }
        let unused = |b: &Bulkhead, used: u64| {
            u64::from(self.scaled(b.reserved, limit)).saturating_sub(used)
        };
        let class = class_index.map(|j| &self.classes[j]);
        if self.saturated && !class.is_some_and(|c| unused(&c.bulkhead, count(c.key)) > 0) {
            return Err(RejectReason::BottleneckSaturated);
        }
        if let Some(class) = class {
            if count(class.key) >= class.bulkhead.max.map_or(u64::MAX, u64::from) {
                return Err(RejectReason::ClassLimit);
            }
        }

        let mut other_tenants: u64 = self
            .tenants
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != listed)
            .map(|(_, t)| unused(&t.bulkhead, count(t.key)))
            .sum();
        if listed.is_some() {
            other_tenants += unused(&self.wildcard, unlisted().map(|(_, n)| *n).sum());
        }
        let other_classes: u64 = self
            .classes
            .iter()
            .enumerate()
            .filter(|(j, _)| Some(*j) != class_index)
            .map(|(_, c)| unused(&c.bulkhead, count(c.key)))
            .sum();
        let free_after = u64::from(limit) - total - 1;
        if free_after < other_tenants || free_after < other_classes {
            return Err(RejectReason::WipLimit);
        }
        Ok(std::iter::once(tenant_key)
            .chain(class.map(|c| c.key))
            .collect())
    }
}

/// The admission rule of one set of limits: these partitions under `ceiling` (the
/// configured or fleet limit), lowered by the adaptive limit when that is on.
#[derive(Debug, Clone, Copy)]
pub struct Rule<'a> {
    /// The partitions.
    pub partitions: &'a Partitions,
    /// The limit before the adaptive one.
    pub ceiling: u32,
    /// This configuration has adaptive limits: only then does the ledger's adaptive limit
    /// bind (a configuration without them, sharing a `scope` with one that has them, keeps
    /// its own limit).
    pub adaptive: bool,
}

impl SeatRule for Rule<'_> {
    fn decide(&self, ledger: &Ledger, seat: &Seat) -> Result<Vec<PartitionKey>, RejectReason> {
        let adaptive = ledger.adaptive_limit().filter(|_| self.adaptive);
        let limit = self.ceiling.min(adaptive.unwrap_or(u32::MAX));
        self.partitions.decide(ledger, limit, seat)
    }

    fn reserved(&self, totals: &BTreeMap<PartitionKey, u64>, seat: &Seat) -> bool {
        self.partitions.reserved(totals, seat)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::WorkerId;
    use proptest::prelude::*;

    fn config(json: &str) -> GateConfig {
        GateConfig::parse(json.as_bytes()).unwrap()
    }

    fn name(s: &str) -> TenantName {
        TenantName::parse(s).unwrap()
    }

    /// Admits into a one-worker ledger; returns the keys taken.
    fn admit(
        p: &Partitions,
        l: &mut Ledger,
        w: WorkerId,
        limit: u32,
        tenant: &str,
        class: Option<&str>,
    ) -> Result<Vec<PartitionKey>, RejectReason> {
        let placement = p.place(name(tenant), class.map(str::as_bytes));
        let keys = p.decide(l, limit, &placement.seat)?;
        assert!(l.acquire(w, &keys, 0));
        Ok(keys)
    }

    #[test]
    fn tenant_max_gives_429_and_reservations_hold_against_a_noisy_neighbour() {
        let c = config(
            r#"{"max_inflight": 10, "tenants": {"a": {"reserved": 0, "max": 6}, "b": {"reserved": 3, "max": 10}}}"#,
        );
        let p = Partitions::new(&c);
        let mut l = Ledger::default();
        let w = l.register(0).unwrap();
        for _ in 0..6 {
            admit(&p, &mut l, w, 10, "a", None).unwrap();
        }
        assert_eq!(
            admit(&p, &mut l, w, 10, "a", None),
            Err(RejectReason::TenantLimit)
        );
        // Unlisted tenants may use what is left but not b's reservation: 10 - 6 - 3 = 1.
        admit(&p, &mut l, w, 10, "zed", None).unwrap();
        assert_eq!(
            admit(&p, &mut l, w, 10, "zed", None),
            Err(RejectReason::WipLimit)
        );
        for _ in 0..3 {
            admit(&p, &mut l, w, 10, "b", None).unwrap();
        }
        assert_eq!(
            admit(&p, &mut l, w, 10, "b", None),
            Err(RejectReason::WipLimit)
        );
    }

    #[test]
    fn a_batch_flood_cannot_take_the_interactive_reservation() {
        let c = config(
            r#"{"max_inflight": 10, "default_class": "interactive",
                "classes": {"interactive": {"reserved": 4}, "batch": {"max": 8}}}"#,
        );
        let p = Partitions::new(&c);
        let mut l = Ledger::default();
        let w = l.register(0).unwrap();
        let batch = (0..20)
            .filter(|_| admit(&p, &mut l, w, 10, "t", Some("batch")).is_ok())
            .count();
        assert_eq!(
            batch, 6,
            "batch stops where the interactive reservation starts"
        );
        assert_eq!(
            admit(&p, &mut l, w, 10, "t", Some("batch")),
            Err(RejectReason::WipLimit)
        );
        for _ in 0..4 {
            admit(&p, &mut l, w, 10, "t", None).unwrap();
        }
        assert_eq!(
            admit(&p, &mut l, w, 10, "t", None),
            Err(RejectReason::WipLimit)
        );
    }

    #[test]
    fn saturation_admits_only_reserved_classes_within_their_slice() {
        let c = config(
            r#"{"max_inflight": 10, "default_class": "interactive",
                "classes": {"interactive": {"reserved": 3}, "batch": {}}}"#,
        );
        let p = Partitions::new(&c).saturated(true);
        let mut l = Ledger::default();
        let w = l.register(0).unwrap();
        assert_eq!(
            admit(&p, &mut l, w, 10, "t", Some("batch")),
            Err(RejectReason::BottleneckSaturated)
        );
        for _ in 0..3 {
            admit(&p, &mut l, w, 10, "t", None).unwrap();
        }
        assert_eq!(
            admit(&p, &mut l, w, 10, "t", None),
            Err(RejectReason::BottleneckSaturated)
        );
    }

    #[test]
    fn reservations_shrink_with_a_lower_limit() {
        let c = config(r#"{"max_inflight": 20, "tenants": {"b": {"reserved": 10}}}"#);
        let p = Partitions::new(&c);
        let mut l = Ledger::default();
        let w = l.register(0).unwrap();
        // At an adaptive limit of 10, b's reservation is 5: others may use the other 5.
        let others = (0..10)
            .filter(|_| admit(&p, &mut l, w, 10, "x", None).is_ok())
            .count();
        assert_eq!(others, 5);
        for _ in 0..5 {
            admit(&p, &mut l, w, 10, "b", None).unwrap();
        }
    }

    #[test]
    fn class_max_gives_class_limit() {
        let c = config(
            r#"{"max_inflight": 10, "default_class": "i", "classes": {"i": {}, "b": {"max": 2}}}"#,
        );
        let p = Partitions::new(&c);
        let mut l = Ledger::default();
        let w = l.register(0).unwrap();
        admit(&p, &mut l, w, 10, "t", Some("b")).unwrap();
        admit(&p, &mut l, w, 10, "t", Some("b")).unwrap();
        assert_eq!(
            admit(&p, &mut l, w, 10, "t", Some("b")),
            Err(RejectReason::ClassLimit)
        );
        assert!(admit(&p, &mut l, w, 10, "t", Some("unknown-goes-to-default")).is_ok());
    }

    #[test]
    fn tenants_beyond_max_tenants_share_the_overflow_count() {
        let c = config(r#"{"max_inflight": 100, "max_tenants": 2, "tenants": {"*": {"max": 3}}}"#);
        let p = Partitions::new(&c);
        let mut l = Ledger::default();
        let w = l.register(0).unwrap();
        admit(&p, &mut l, w, 100, "t1", None).unwrap();
        admit(&p, &mut l, w, 100, "t2", None).unwrap();
        let overflow: Vec<_> = (3..10)
            .map(|i| admit(&p, &mut l, w, 100, &format!("t{i}"), None))
            .collect();
        assert_eq!(
            overflow.iter().filter(|r| r.is_ok()).count(),
            3,
            "{overflow:?}"
        );
        assert!(overflow
            .iter()
            .all(|r| r.is_ok() || *r == Err(RejectReason::TenantLimit)));
        assert!(l.partition_totals().len() <= 3);
    }

    /// A random configuration whose reservations fit, as validation requires; classes
    /// (interactive with a reservation, batch with a max) are there or not.
    fn arb_config() -> impl Strategy<Value = (u32, String)> {
        let r = proptest::collection::vec((0u32..6, 1u32..12), 4);
        (1u32..30, r, 1u32..4, any::<bool>()).prop_map(|(limit, r, max_tenants, classes)| {
            let fit = |x: u32, used: u32| x.min(limit.saturating_sub(used));
            let (ra, rb) = (fit(r[0].0, 0), fit(r[1].0, r[0].0));
            let rw = fit(r[2].0, ra + rb);
            let ri = fit(r[3].0, 0);
            let classes = if classes {
                format!(
                    r#", "default_class": "interactive",
                       "classes": {{"interactive": {{"reserved": {ri}}}, "batch": {{"max": {}}}}}"#,
                    r[3].1
                )
            } else {
                String::new()
            };
            let json = format!(
                r#"{{"max_inflight": {limit}, "max_tenants": {max_tenants},
                    "tenants": {{"a": {{"reserved": {ra}, "max": {}}}, "b": {{"reserved": {rb}, "max": {}}},
                                 "*": {{"reserved": {rw}, "max": {}}}}}{classes}}}"#,
                r[0].1.max(ra),
                r[1].1.max(rb),
                r[2].1.max(rw)
            );
            (limit, json)
        })
    }

    proptest! {
        /// Random admit/release interleavings never break an invariant: no max exceeded,
        /// total within the limit, a tenant inside its unused reservation never refused while
        /// the total has room (unless its class may not go: over the class max, or into
        /// another class's reservation — see the module doc), counts back to zero at the end.
        #[test]
        fn invariants_hold((limit, json) in arb_config(),
                           ops in proptest::collection::vec((0usize..6, any::<bool>(), any::<bool>()), 1..300)) {
            let c = config(&json);
            let p = Partitions::new(&c);
            let mut l = Ledger::default();
            let w = l.register(0).unwrap();
            let tenants = ["a", "b", "c", "d", "e", "f"];
            let mut held: Vec<Vec<PartitionKey>> = Vec::new();
            let get = |l: &Ledger, k: PartitionKey| l.partition_totals().get(&k).copied().unwrap_or(0);
            let cap = |b: &Bulkhead| u64::from(b.max.unwrap_or(u32::MAX));
            for (t, batch, release) in ops {
                if release && !held.is_empty() {
                    let keys = held.swap_remove(t % held.len());
                    prop_assert!(l.release(w, &keys, 0));
                    continue;
                }
                let class = if batch { "batch" } else { "interactive" };
                let placement = p.place(name(tenants[t]), Some(class.as_bytes()));
                let before = l.clone();
                let result = p.decide(&l, limit, &placement.seat);
                if let Ok(keys) = &result {
                    l.acquire(w, keys, 0);
                    held.push(keys.clone());
                }
                prop_assert!(l.total() <= u64::from(limit));
                for (name, b) in c.tenants.iter().filter(|(n, _)| *n != "*") {
                    prop_assert!(get(&l, PartitionKey::tenant(name)) <= cap(b));
                }
                for (name, b) in &c.classes {
                    prop_assert!(get(&l, PartitionKey::class(name)) <= cap(b));
                }
                // The tenant guarantee, where the class side cannot refuse: no classes, or an
                // interactive request inside the interactive reservation.
                let room = before.total() < u64::from(limit);
                let class_clear = c.classes.is_empty()
                    || (!batch && get(&before, PartitionKey::class("interactive")) < u64::from(c.classes["interactive"].reserved));
                let tenant_in_reservation = c.tenants.get(tenants[t]).is_some_and(|b| {
                    get(&before, PartitionKey::tenant(tenants[t])) < u64::from(b.reserved)
                });
                if tenant_in_reservation && room && class_clear {
                    prop_assert!(result.is_ok(), "tenant {} inside its reservation refused: {:?}", tenants[t], result);
                }
                // The class guarantee, where the tenant side cannot refuse.
                let interactive_in_reservation = !batch && !c.classes.is_empty()
                    && get(&before, PartitionKey::class("interactive")) < u64::from(c.classes["interactive"].reserved);
                if interactive_in_reservation && room && tenant_in_reservation {
                    prop_assert!(result.is_ok(), "interactive inside its reservation refused: {:?}", result);
                }
            }
            for keys in held.drain(..) {
                l.release(w, &keys, 0);
            }
            prop_assert_eq!(l.total(), 0);
            prop_assert!(l.partition_totals().is_empty());
        }
    }
}
