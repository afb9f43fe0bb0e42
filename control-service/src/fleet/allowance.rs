//! How one fleet number is split among the live instances. Pure arithmetic: no clock, no
//! store; the memory store ([`crate::fleet::InstanceBook`]) and the Redis store both call it.
//!
//! Every fleet number is a *dimension*: the global limit, each tenant's `max` and
//! `reserved`, each class's `max` and `reserved`. For one dimension with limit `L` and `n`
//! live instances:
//!
//! 1. **Target.** `n + 1` slots (one held back so that a joining instance finds room) each
//!    get a floor `f = min(max(1, L·p/100/(n+1)), L/(n+1))` where `p` is the floor percent;
//!    the rest `R = L − (n+1)·f` goes to the instances in proportion to their demand
//!    (`in-flight + rejected since the last sync`): `target_i = f + ⌊R·d_i/D⌋`, where `D` is
//!    the fleet's demand (all instances alike when `D = 0`). So `Σ target ≤ L − f`, and a
//!    busier instance never gets less than an idler one.
//! 2. **Clip.** Targets are computed from snapshots that other syncs may change at the same
//!    time, so what an instance is *granted* is `min(target_i, L − Σ_{j≠i} grant_j)`, read
//!    and written atomically. Therefore `Σ grant ≤ L` holds after every step, whatever the
//!    targets were; an instance whose target grew gets the room that others give back at
//!    their next sync (the fleet converges within two sync intervals).
//! 3. **Reply.** Per instance, `reserved ≤ max ≤ max_inflight` and the reservations fit in
//!    `max_inflight` (scaled down if not). This only lowers numbers, so the sums still hold.
//! 4. **Held.** A reply can be lost or late, so what the service counts against an
//!    instance is what it may be enforcing: `held_i = max(min(in_force_i, held_i'), grant_i)`,
//!    where `in_force_i` is what the report says is in force (never believed above what was
//!    held before, `held_i'`) and `grant_i` the new grant. The clip of step 2 is against the
//!    others' *held* numbers, so `Σ held ≤ L`, and every allowance in force is at most its
//!    instance's `held`: the sum in force never exceeds `L`, replies lost or not. A lowered
//!    grant frees its room once a report shows it in force (one interval later).
//!
//! Demand is bounded: an instance counts no more demand in a dimension than the dimension's
//! fleet number, nor more than its own static `max_inflight` when it reports one.

use std::collections::BTreeMap;
use std::fmt;

use wipgate_admission::config::WILDCARD_TENANT;
use wipgate_admission::wire::{ResourceHealth, SyncReply, SyncRequest, UsageReport};
use wipgate_admission::Bulkhead;

use crate::fleet::FleetPolicy;

/// The knobs of the split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitParams {
    /// Each instance's floor, in percent of an even share (0..=100).
    pub floor_percent: u32,
    /// An instance that has not synced for this long drops out and its grant is freed.
    pub stale_after_ms: u64,
    /// For this long after the fleet's records start empty (a memory store's start, Redis
    /// that lost its keys), grants are capped ([`warm_up_cap`]).
    pub warm_up_ms: u64,
    /// Most live instances; a sync from one more is refused (429).
    pub max_instances: u32,
    /// Most instances that may join in one second; beyond, a joining one is refused (429).
    pub max_joins_per_s: u32,
}

impl Default for SplitParams {
    fn default() -> Self {
        Self {
            floor_percent: 10,
            stale_after_ms: 15_000,
            warm_up_ms: 0,
            max_instances: 10_000,
            max_joins_per_s: 1_000,
        }
    }
}

impl SplitParams {
    /// How long an Envoy may use an allowance: the stale window less a 10% margin for
    /// network delay, so that an Envoy stops using a grant before the service frees it.
    pub fn reply_validity_ms(&self) -> u64 {
        self.stale_after_ms - self.stale_after_ms / 10
    }
}

/// One fleet number that is split among instances.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dim {
    /// `global_max_inflight`.
    Global,
    /// A tenant's `max`.
    TenantMax(String),
    /// A tenant's `reserved`.
    TenantReserved(String),
    /// A class's `max`.
    ClassMax(String),
    /// A class's `reserved`.
    ClassReserved(String),
}

impl Dim {
    /// The key a store files this dimension under: `g`, `tm:NAME`, `tr:NAME`, `cm:NAME`,
    /// `cr:NAME` (names never contain `:`).
    pub fn key(&self) -> String {
        self.to_string()
    }

    /// The dimension of a key written by [`Dim::key`].
    pub fn parse(key: &str) -> Option<Self> {
        if key == "g" {
            return Some(Self::Global);
        }
        let (kind, name) = key.split_once(':')?;
        let name = name.to_owned();
        match kind {
            "tm" => Some(Self::TenantMax(name)),
            "tr" => Some(Self::TenantReserved(name)),
            "cm" => Some(Self::ClassMax(name)),
            "cr" => Some(Self::ClassReserved(name)),
            _ => None,
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Global => f.write_str("g"),
            Self::TenantMax(n) => write!(f, "tm:{n}"),
            Self::TenantReserved(n) => write!(f, "tr:{n}"),
            Self::ClassMax(n) => write!(f, "cm:{n}"),
            Self::ClassReserved(n) => write!(f, "cr:{n}"),
        }
    }
}

/// The target share of one instance in one dimension (step 1 above).
///
/// `instances` counts the live instances including this one; `own_demand` is clamped to
/// `fleet_demand`, which should be the sum over the same instances.
pub fn target_share(
    limit: u32,
    instances: u32,
    fleet_demand: u64,
    own_demand: u64,
    params: SplitParams,
) -> u32 {
    let limit = u64::from(limit);
    let n = u64::from(instances.max(1));
    let slots = n + 1;
    let even = limit / slots;
    let floor = (limit * u64::from(params.floor_percent.min(100)) / 100 / slots)
        .max(1)
        .min(even);
    let rest = limit - slots * floor;
    let extra = if fleet_demand == 0 {
        rest / n
    } else {
        let own = own_demand.min(fleet_demand);
        // rest < 2^32 and own <= fleet_demand, so the quotient fits in u64.
        u64::try_from(u128::from(rest) * u128::from(own) / u128::from(fleet_demand)).unwrap_or(rest)
    };
    u32::try_from(floor + extra).unwrap_or(u32::MAX)
}

/// What may be granted (step 2 above): the target, within what the others do not hold.
pub fn clip(target: u32, limit: u32, granted_to_others: u64) -> u32 {
    let room = u64::from(limit).saturating_sub(granted_to_others);
    target.min(u32::try_from(room).unwrap_or(u32::MAX))
}

/// What the service counts against an instance after granting it `grant` (step 4 above).
/// `in_force` is what its report says it enforces (0 without a report of it); `previous`
/// what was held for it before, `None` when the service cannot know (warm-up after the
/// fleet's records were lost): then the report is believed.
pub fn held(grant: u32, in_force: u32, previous: Option<u32>) -> u32 {
    previous.map_or(in_force, |p| in_force.min(p)).max(grant)
}

/// A target during warm-up, while the census is unknown (the fleet's records were just
/// lost or created: Envoys that have not reported yet may enforce allowances given before).
/// An instance that reports an allowance in force gets no more than it: nobody's share
/// grows until every holder has been counted, so the sum in force stays where it was. One
/// that reports none (it enforces its static configuration, which a grant only tightens)
/// gets no more than an even share among the instances known so far and one more, so the
/// first Envoy of a cold fleet no longer takes nearly all of it.
pub fn warm_up_cap(target: u32, limit: u32, instances: u32, in_force: Option<u32>) -> u32 {
    match in_force {
        Some(f) => target.min(f),
        None => target.min(limit / instances.saturating_add(1).max(2)),
    }
}

/// What an instance enforces in every dimension of `policy`, by its report's `in_force`;
/// empty when it reported none. An entry its allowance lacks is counted at most
/// (`max_inflight` for a `max`, 0 for a reservation): [`held`] never believes more than was
/// held before, so a high count only keeps the previous number.
pub fn in_force(report: &SyncRequest, policy: &FleetPolicy) -> BTreeMap<Dim, u32> {
    let Some(f) = &report.in_force else {
        return BTreeMap::new();
    };
    let mut out = BTreeMap::from([(Dim::Global, f.max_inflight)]);
    let mut add = |entries: &BTreeMap<String, Bulkhead>,
                   given: &BTreeMap<String, Bulkhead>,
                   max_dim: fn(String) -> Dim,
                   res_dim: fn(String) -> Dim| {
        for (name, b) in entries {
            let entry = given.get(name);
            if b.max.is_some() {
                let max = entry.map_or(f.max_inflight, |e| e.max.unwrap_or(f.max_inflight));
                out.insert(max_dim(name.clone()), max.min(f.max_inflight));
            }
            if b.reserved > 0 {
                out.insert(res_dim(name.clone()), entry.map_or(0, |e| e.reserved));
            }
        }
    };
    add(
        &policy.tenants,
        &f.tenants,
        Dim::TenantMax,
        Dim::TenantReserved,
    );
    add(
        &policy.classes,
        &f.classes,
        Dim::ClassMax,
        Dim::ClassReserved,
    );
    // An Envoy enforces no more than its own limit (the filter caps every share by it).
    if let Some(own) = report.max_inflight {
        out.values_mut().for_each(|v| *v = (*v).min(own));
    }
    out
}

/// Targets for a whole fleet at once; `demands[i]` is instance `i`'s demand.
pub fn split(limit: u32, demands: &[u64], params: SplitParams) -> Vec<u32> {
    let n = u32::try_from(demands.len()).unwrap_or(u32::MAX);
    let total = demands.iter().fold(0u64, |a, d| a.saturating_add(*d));
    demands
        .iter()
        .map(|d| target_share(limit, n, total, *d, params))
        .collect()
}

/// Every dimension of a policy with its fleet number. Tenants and classes without `max`
/// have no max dimension; those with `reserved = 0` have no reserved dimension.
pub fn fleet_limits(policy: &FleetPolicy) -> BTreeMap<Dim, u32> {
    let mut limits = BTreeMap::from([(Dim::Global, policy.global_max_inflight)]);
    for (name, b) in &policy.tenants {
        if let Some(max) = b.max {
            limits.insert(Dim::TenantMax(name.clone()), max);
        }
        if b.reserved > 0 {
            limits.insert(Dim::TenantReserved(name.clone()), b.reserved);
        }
    }
    for (name, b) in &policy.classes {
        if let Some(max) = b.max {
            limits.insert(Dim::ClassMax(name.clone()), max);
        }
        if b.reserved > 0 {
            limits.insert(Dim::ClassReserved(name.clone()), b.reserved);
        }
    }
    limits
}

/// One instance's demand in every dimension of `policy`: in flight now plus rejected since
/// the last report. Tenants not named in the policy count toward `*` when there is one.
pub fn demands(report: &SyncRequest, policy: &FleetPolicy) -> BTreeMap<Dim, u64> {
    let limits = fleet_limits(policy);
    let mut out: BTreeMap<Dim, u64> = limits.keys().map(|d| (d.clone(), 0)).collect();
    let mut add = |dim: Dim, value: u64| {
        if let Some(slot) = out.get_mut(&dim) {
            *slot = slot.saturating_add(value);
        }
    };
    let rejected = |m: &BTreeMap<String, UsageReport>| {
        m.values().fold(0u64, |a, u| a.saturating_add(u.rejected))
    };
    let global_rejected = rejected(&report.tenants).max(rejected(&report.classes));
    add(
        Dim::Global,
        u64::from(report.inflight).saturating_add(global_rejected),
    );
    for (name, usage) in &report.tenants {
        let entry = if policy.tenants.contains_key(name) {
            name.as_str()
        } else if policy.tenants.contains_key(WILDCARD_TENANT) {
            WILDCARD_TENANT
        } else {
            continue;
        };
        let d = u64::from(usage.inflight).saturating_add(usage.rejected);
        add(Dim::TenantMax(entry.to_owned()), d);
        add(Dim::TenantReserved(entry.to_owned()), d);
    }
    for (name, usage) in &report.classes {
        let d = u64::from(usage.inflight).saturating_add(usage.rejected);
        add(Dim::ClassMax(name.clone()), d);
        add(Dim::ClassReserved(name.clone()), d);
    }
    // No instance needs more than the whole fleet number, nor more than it could ever
    // have in flight: a report cannot buy a larger share with inflated numbers.
    let own_max = report.max_inflight.map_or(u64::MAX, u64::from);
    for (dim, demand) in &mut out {
        let limit = limits.get(dim).copied().map_or(0, u64::from);
        *demand = (*demand).min(limit).min(own_max);
    }
    out
}

/// Turns an instance's grants into its reply (step 3 above). Dimensions missing from
/// `grants` count as 0. Never returns more than granted in any dimension.
pub fn build_reply(
    instance: &str,
    policy: &FleetPolicy,
    policy_version: u64,
    grants: &BTreeMap<Dim, u32>,
    params: SplitParams,
) -> SyncReply {
    let granted = |d: Dim| grants.get(&d).copied().unwrap_or(0);
    let max_inflight = granted(Dim::Global);
    let shares = |entries: &BTreeMap<String, Bulkhead>,
                  max_dim: fn(String) -> Dim,
                  res_dim: fn(String) -> Dim| {
        let mut out: BTreeMap<String, Bulkhead> = entries
            .iter()
            .map(|(name, b)| {
                let max = b
                    .max
                    .map(|_| granted(max_dim(name.clone())).min(max_inflight));
                let reserved = if b.reserved == 0 {
                    0
                } else {
                    granted(res_dim(name.clone()))
                };
                let reserved = reserved.min(max.unwrap_or(max_inflight));
                (name.clone(), Bulkhead { reserved, max })
            })
            .collect();
        let total: u64 = out.values().map(|b| u64::from(b.reserved)).sum();
        if total > u64::from(max_inflight) {
            for b in out.values_mut() {
                let scaled = u64::from(b.reserved) * u64::from(max_inflight) / total;
                b.reserved = u32::try_from(scaled).unwrap_or(0);
            }
        }
        out
    };
    SyncReply {
        instance: instance.to_owned(),
        policy_version,
        max_inflight,
        tenants: shares(&policy.tenants, Dim::TenantMax, Dim::TenantReserved),
        classes: shares(&policy.classes, Dim::ClassMax, Dim::ClassReserved),
        degraded: false,
        stale_after_ms: params.reply_validity_ms(),
        health: ResourceHealth::Ok,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use proptest::prelude::*;

    const P: SplitParams = SplitParams {
        floor_percent: 10,
        stale_after_ms: 15_000,
        warm_up_ms: 0,
        max_instances: 10_000,
        max_joins_per_s: 1_000,
    };

    #[test]
    fn documented_example() {
        // docs/control-service.md: L = 100, three instances with demands 60, 20, 0.
        // slots = 4, floor = max(1, 100*10/100/4) = 2, rest = 100 - 4*2 = 92.
        assert_eq!(split(100, &[60, 20, 0], P), vec![2 + 69, 2 + 23, 2]);
        // Nobody busy: even shares, one floor held back for a joiner.
        assert_eq!(split(100, &[0, 0, 0], P), vec![2 + 30, 2 + 30, 2 + 30]);
        // A single instance gets all but the held-back floor.
        assert_eq!(split(100, &[5], P), vec![95]);
    }

    #[test]
    fn small_limits_still_fit() {
        assert_eq!(split(3, &[1, 1, 1, 1, 1], P), vec![0, 0, 0, 0, 0]);
        assert_eq!(split(6, &[1, 1, 1, 1, 1], P), vec![1, 1, 1, 1, 1]);
        assert_eq!(split(1, &[7], P), vec![1]);
        assert_eq!(split(2, &[7], P), vec![1]);
    }

    #[test]
    fn clip_keeps_the_sum() {
        assert_eq!(clip(50, 100, 70), 30);
        assert_eq!(clip(50, 100, 20), 50);
        assert_eq!(clip(50, 100, 130), 0);
    }

    #[test]
    fn dim_keys_round_trip() {
        for d in [
            Dim::Global,
            Dim::TenantMax("*".into()),
            Dim::TenantReserved("a.b".into()),
            Dim::ClassMax("batch".into()),
            Dim::ClassReserved("i".into()),
        ] {
            assert_eq!(Dim::parse(&d.key()), Some(d));
        }
        assert_eq!(Dim::parse("zz:a"), None);
        assert_eq!(Dim::parse("a"), None);
    }

    #[test]
    fn demand_maps_unknown_tenants_to_the_wildcard() {
        let policy = FleetPolicy::parse(
            br#"{"global_max_inflight": 100, "tenants": {"acme": {"reserved": 10, "max": 50}, "*": {"max": 20}},
                "classes": {"batch": {"max": 30}}}"#,
        )
        .unwrap();
        let report = SyncRequest::parse(
            br#"{"instance": "e", "inflight": 9, "tenants": {"acme": {"inflight": 4, "rejected": 3},
                "x": {"inflight": 2}, "y": {"inflight": 3, "rejected": 1}},
                "classes": {"batch": {"inflight": 5, "rejected": 2}, "other": {"inflight": 4}}}"#,
        )
        .unwrap();
        let d = demands(&report, &policy);
        assert_eq!(d[&Dim::Global], 9 + 4);
        assert_eq!(d[&Dim::TenantMax("acme".into())], 7);
        assert_eq!(d[&Dim::TenantReserved("acme".into())], 7);
        assert_eq!(d[&Dim::TenantMax("*".into())], 6);
        assert_eq!(d[&Dim::ClassMax("batch".into())], 7);
        assert_eq!(d.len(), 5);
    }

    #[test]
    fn reply_is_consistent_per_instance() {
        let policy = FleetPolicy::parse(
            br#"{"global_max_inflight": 100, "tenants": {"a": {"reserved": 40, "max": 60}, "b": {"reserved": 40}}}"#,
        )
        .unwrap();
        let grants = BTreeMap::from([
            (Dim::Global, 10),
            (Dim::TenantMax("a".into()), 4),
            (Dim::TenantReserved("a".into()), 8),
            (Dim::TenantReserved("b".into()), 9),
        ]);
        let r = build_reply("e", &policy, 3, &grants, P);
        assert_eq!(r.max_inflight, 10);
        assert_eq!(
            r.tenants["a"],
            Bulkhead {
                reserved: 3,
                max: Some(4)
            }
        );
        assert_eq!(
            r.tenants["b"],
            Bulkhead {
                reserved: 6,
                max: None
            }
        );
        assert_eq!(r.stale_after_ms, 13_500);
    }

    proptest! {
        #[test]
        fn targets_fit_respect_the_floor_and_follow_demand(
            limit in 0u32..1_000_000,
            demands in proptest::collection::vec(0u64..1_000_000, 1..200),
            floor_percent in 0u32..=100,
        ) {
            let params = SplitParams { floor_percent, stale_after_ms: 1000, ..SplitParams::default() };
            let shares = split(limit, &demands, params);
            let sum: u64 = shares.iter().map(|s| u64::from(*s)).sum();
            prop_assert!(sum <= u64::from(limit));
            let slots = demands.len() as u64 + 1;
            let floor = (u64::from(limit) * u64::from(floor_percent) / 100 / slots)
                .max(1)
                .min(u64::from(limit) / slots);
            for (i, s) in shares.iter().enumerate() {
                prop_assert!(u64::from(*s) >= floor, "share {} below floor {}", s, floor);
                for (j, t) in shares.iter().enumerate() {
                    if demands[i] >= demands[j] {
                        prop_assert!(s >= t, "busier {} got {} < {} of {}", i, s, t, j);
                    }
                }
            }
        }

        #[test]
        fn clipped_grants_never_exceed_the_limit(
            limit in 0u32..10_000,
            steps in proptest::collection::vec((0usize..8, 0u32..20_000), 1..100),
        ) {
            let mut grants = [0u32; 8];
            for (who, target) in steps {
                let others: u64 = grants.iter().enumerate()
                    .filter(|(i, _)| *i != who).map(|(_, g)| u64::from(*g)).sum();
                grants[who] = clip(target, limit, others);
                prop_assert!(grants.iter().map(|g| u64::from(*g)).sum::<u64>() <= u64::from(limit));
            }
        }
    }
}
