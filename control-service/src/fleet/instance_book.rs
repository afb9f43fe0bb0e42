//! The book of live instances in one process: who is live, what each instance asked for
//! and what it holds. The memory store is this behind a mutex; the Redis store keeps the
//! same records in Redis and follows the same steps.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use wipgate_admission::wire::{SyncReply, SyncRequest};

use crate::fleet::allowance::{build_reply, clip, demands, fleet_limits, target_share};
use crate::fleet::{Dim, FleetPolicy, SplitParams};

/// One live instance as `GET /v1/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceView {
    /// The instance id.
    pub instance: String,
    /// When it last synced (ms since the epoch, the store's clock).
    pub last_seen_ms: u64,
    /// Its last report.
    pub report: SyncRequest,
    /// The allowance it was given then.
    pub allowance: SyncReply,
}

#[derive(Debug, Clone)]
struct Instance {
    last_seen_ms: u64,
    report: SyncRequest,
    demand: BTreeMap<Dim, u64>,
    /// Invariant (over all instances): the grants of each dimension add up to at most its
    /// fleet number, except right after a policy lowered that number (see [`InstanceBook::sync`]).
    grant: BTreeMap<Dim, u32>,
    reply: SyncReply,
}

/// All live instances of a fleet.
#[derive(Debug, Clone, Default)]
pub struct InstanceBook {
    instances: BTreeMap<String, Instance>,
}

impl InstanceBook {
    /// Records `report` at `now_ms` and returns the instance's new allowance.
    ///
    /// Each grant is clipped to what the other live instances leave of the fleet number, so
    /// the sum of grants never rises above it. When a policy change lowers a number below
    /// what is already granted, the sum falls back under it as the instances sync again.
    pub fn sync(
        &mut self,
        now_ms: u64,
        report: &SyncRequest,
        policy: &FleetPolicy,
        policy_version: u64,
        params: SplitParams,
    ) -> SyncReply {
        self.prune(now_ms, params.stale_after_ms);
        let limits = fleet_limits(policy);
        let own = demands(report, policy);
        let id = report.instance.clone();
        let instances =
            u32::try_from(self.instances.len() + usize::from(!self.instances.contains_key(&id)))
                .unwrap_or(u32::MAX);
        let mut grant = BTreeMap::new();
        for (dim, limit) in &limits {
            let own_demand = own.get(dim).copied().unwrap_or(0);
            let (mut fleet_demand, mut others) = (own_demand, 0u64);
            for (other_id, other) in &self.instances {
                if *other_id != id {
                    fleet_demand =
                        fleet_demand.saturating_add(other.demand.get(dim).copied().unwrap_or(0));
                    others += u64::from(other.grant.get(dim).copied().unwrap_or(0));
                }
            }
            let target = target_share(*limit, instances, fleet_demand, own_demand, params);
            grant.insert(dim.clone(), clip(target, *limit, others));
        }
        let reply = build_reply(&id, policy, policy_version, &grant, params);
        self.instances.insert(
            id,
            Instance {
                last_seen_ms: now_ms,
                report: report.clone(),
                demand: own,
                grant,
                reply: reply.clone(),
            },
        );
        reply
    }

    /// Drops the instances not seen for more than `stale_after_ms`, freeing their grants.
    pub fn prune(&mut self, now_ms: u64, stale_after_ms: u64) {
        self.instances
            .retain(|_, i| now_ms.saturating_sub(i.last_seen_ms) <= stale_after_ms);
    }

    /// The live instances, by id.
    pub fn instances(&self) -> Vec<InstanceView> {
        self.instances
            .iter()
            .map(|(id, i)| InstanceView {
                instance: id.clone(),
                last_seen_ms: i.last_seen_ms,
                report: i.report.clone(),
                allowance: i.reply.clone(),
            })
            .collect()
    }

    /// What is granted in one dimension, all live instances together.
    pub fn granted(&self, dim: &Dim) -> u64 {
        self.instances
            .values()
            .map(|i| u64::from(i.grant.get(dim).copied().unwrap_or(0)))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use proptest::prelude::*;

    fn policy() -> FleetPolicy {
        FleetPolicy::parse(
            br#"{"global_max_inflight": 200,
                 "tenants": {"acme": {"reserved": 30, "max": 90}, "*": {"reserved": 10, "max": 40}},
                 "classes": {"interactive": {"reserved": 50}, "batch": {"max": 70}}}"#,
        )
        .unwrap()
    }

    fn report(id: usize, inflight: u32, acme: u32, other: u32, rejected: u64) -> SyncRequest {
        let usage = |n: u32| wipgate_admission::wire::UsageReport {
            inflight: n,
            admitted: 0,
            rejected,
        };
        SyncRequest {
            instance: format!("envoy-{id}"),
            inflight,
            tenants: [
                ("acme".to_owned(), usage(acme)),
                (format!("t{id}"), usage(other)),
            ]
            .into(),
            classes: [
                ("batch".to_owned(), usage(inflight / 2)),
                ("interactive".to_owned(), usage(inflight / 3)),
            ]
            .into(),
            policy_version: None,
        }
    }

    fn sums_fit(book: &InstanceBook, policy: &FleetPolicy) -> Result<(), TestCaseError> {
        for (dim, limit) in fleet_limits(policy) {
            prop_assert!(
                book.granted(&dim) <= u64::from(limit),
                "{} over {}",
                dim,
                limit
            );
        }
        let views = book.instances();
        let replies: u64 = views
            .iter()
            .map(|v| u64::from(v.allowance.max_inflight))
            .sum();
        prop_assert!(replies <= u64::from(policy.global_max_inflight));
        for (name, b) in &policy.tenants {
            let max: u64 = views
                .iter()
                .filter_map(|v| v.allowance.tenants[name].max)
                .map(u64::from)
                .sum();
            let reserved: u64 = views
                .iter()
                .map(|v| u64::from(v.allowance.tenants[name].reserved))
                .sum();
            prop_assert!(max <= u64::from(b.max.unwrap_or(u32::MAX)));
            prop_assert!(reserved <= u64::from(b.reserved));
        }
        for v in &views {
            let r = &v.allowance;
            for b in r.tenants.values().chain(r.classes.values()) {
                prop_assert!(b.reserved <= b.max.unwrap_or(r.max_inflight));
            }
            prop_assert!(
                r.tenants
                    .values()
                    .map(|b| u64::from(b.reserved))
                    .sum::<u64>()
                    <= u64::from(r.max_inflight)
            );
        }
        Ok(())
    }

    #[test]
    fn busy_instance_gets_more_and_stale_ones_drop_out() {
        let (p, params) = (policy(), SplitParams::default());
        let mut book = InstanceBook::default();
        for round in 0..3 {
            let now = 1000 * round;
            book.sync(now, &report(0, 150, 100, 10, 40), &p, 1, params);
            book.sync(now, &report(1, 2, 1, 1, 0), &p, 1, params);
        }
        let views = book.instances();
        assert!(
            views[0].allowance.max_inflight > 4 * views[1].allowance.max_inflight,
            "{views:?}"
        );
        assert!(views[1].allowance.max_inflight >= 1);
        // envoy-1 keeps syncing; envoy-0 goes quiet past the stale window.
        let later = 2000 + params.stale_after_ms + 1;
        let reply = book.sync(later, &report(1, 2, 1, 1, 0), &p, 1, params);
        assert_eq!(book.instances().len(), 1);
        // Alone now: the stale grant is freed, so envoy-1 gets all but the held-back floor.
        assert_eq!(reply.max_inflight, 200 - 10);
    }

    #[test]
    fn a_newcomer_finds_room_at_once() {
        let (p, params) = (policy(), SplitParams::default());
        let mut book = InstanceBook::default();
        for i in 0..5 {
            book.sync(0, &report(i, 100, 50, 5, 10), &p, 1, params);
        }
        for i in 0..5 {
            book.sync(1, &report(i, 100, 50, 5, 10), &p, 1, params);
        }
        let reply = book.sync(2, &report(9, 0, 0, 0, 0), &p, 1, params);
        assert!(reply.max_inflight >= 1, "{reply:?}");
    }

    proptest! {
        #[test]
        fn allowances_never_sum_above_the_fleet_numbers(
            steps in proptest::collection::vec((0usize..12, 0u32..400, 0u32..200, 0u32..50, 0u64..100, 0u64..3000), 1..120),
        ) {
            let (p, params) = (policy(), SplitParams { floor_percent: 10, stale_after_ms: 5000 });
            let mut book = InstanceBook::default();
            let mut now = 0;
            for (id, inflight, acme, other, rejected, dt) in steps {
                now += dt;
                book.sync(now, &report(id, inflight, acme, other, rejected), &p, 1, params);
                sums_fit(&book, &p)?;
            }
        }

        #[test]
        fn in_steady_state_floors_hold_and_busier_gets_more(
            loads in proptest::collection::vec(0u32..300, 1..30),
        ) {
            let (p, params) = (policy(), SplitParams::default());
            let mut book = InstanceBook::default();
            for round in 0..3 {
                for (i, load) in loads.iter().enumerate() {
                    book.sync(round, &report(i, *load, 0, 0, 0), &p, 1, params);
                }
            }
            sums_fit(&book, &p)?;
            let views = book.instances();
            let by_id: BTreeMap<usize, u32> = views.iter()
                .map(|v| (v.instance["envoy-".len()..].parse().unwrap(), v.allowance.max_inflight))
                .collect();
            let slots = loads.len() as u32 + 1;
            let floor = (200 / 10 / slots).max(1).min(200 / slots);
            for (i, a) in &by_id {
                prop_assert!(*a >= floor, "instance {} got {} below floor {}", i, a, floor);
                for (j, b) in &by_id {
                    if loads[*i] >= loads[*j] {
                        prop_assert!(a >= b, "busier {} got {} < {}", i, a, b);
                    }
                }
            }
        }
    }
}
