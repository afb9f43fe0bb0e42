//! The book of live instances in one process: who is live, what each instance asked for
//! and what it holds. The memory store is this behind a mutex; the Redis store keeps the
//! same records in Redis and follows the same steps.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use wipgate_admission::wire::{SyncReply, SyncRequest};

use crate::fleet::allowance::{
    build_reply, clip, demands, fleet_limits, held, in_force, target_share, warm_up_cap,
};
use crate::fleet::{Dim, FleetPolicy, SplitParams};

/// One live instance as `GET /v1/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceView {
    /// The instance id.
    pub instance: String,
    /// The reporting process's nonce, when it sent one: two processes on one id are two
    /// entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
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
    /// What the instance may be enforcing, per dimension: the larger of its last grant and
    /// what it reported in force (allowance.rs, step 4). Invariant (over all instances):
    /// these add up to at most each dimension's fleet number, except right after a policy
    /// lowered that number (see [`InstanceBook::sync`]).
    grant: BTreeMap<Dim, u32>,
    reply: SyncReply,
}

/// The key of an instance's record: its id, and its process's nonce after a space (ids and
/// nonces are visible ASCII, so the key is unambiguous).
pub fn book_key(report: &SyncRequest) -> String {
    match &report.nonce {
        Some(nonce) => format!("{} {nonce}", report.instance),
        None => report.instance.clone(),
    }
}

/// The id and nonce of a key written by [`book_key`].
pub fn split_key(key: &str) -> (String, Option<String>) {
    match key.split_once(' ') {
        Some((id, nonce)) => (id.to_owned(), Some(nonce.to_owned())),
        None => (key.to_owned(), None),
    }
}

/// Why a sync was refused before anything was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// `max_instances` are live and this one is not among them.
    #[error("the fleet has its maximum number of live instances")]
    TooManyInstances,
    /// `max_joins_per_s` instances joined in this second already.
    #[error("too many instances joining at once; retry")]
    TooManyJoins,
}

/// All live instances of a fleet.
#[derive(Debug, Clone, Default)]
pub struct InstanceBook {
    instances: BTreeMap<String, Instance>,
    /// When the book started empty while Envoys may hold allowances it never recorded (a
    /// memory store's start): grants are capped for `warm_up_ms` from then ([`warm_up_cap`]).
    started_ms: Option<u64>,
    /// The second (ms / 1000) of the latest join and how many joined in it.
    joins: (u64, u32),
}

impl InstanceBook {
    /// A book that starts empty at `now_ms`, warming up ([`SplitParams::warm_up_ms`]).
    pub fn starting(now_ms: u64) -> Self {
        Self {
            started_ms: Some(now_ms),
            ..Self::default()
        }
    }

    /// Records `report` at `now_ms` and returns the instance's new allowance; refuses a
    /// joining instance beyond `max_instances` or `max_joins_per_s`.
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
    ) -> Result<SyncReply, Refusal> {
        self.prune(now_ms, params.stale_after_ms);
        let key = book_key(report);
        if !self.instances.contains_key(&key) {
            self.admit_join(now_ms, params)?;
        }
        let limits = fleet_limits(policy);
        let own = demands(report, policy);
        let enforced = in_force(report, policy);
        let warming = self
            .started_ms
            .is_some_and(|s| now_ms < s.saturating_add(params.warm_up_ms));
        let instances =
            u32::try_from(self.instances.len() + usize::from(!self.instances.contains_key(&key)))
                .unwrap_or(u32::MAX);
        let previous = self.instances.get(&key).map(|i| &i.grant);
        let mut grants = BTreeMap::new();
        let mut holds = BTreeMap::new();
        for (dim, limit) in &limits {
            let own_demand = own.get(dim).copied().unwrap_or(0);
            let (mut fleet_demand, mut others) = (own_demand, 0u64);
            for (other_key, other) in &self.instances {
                if *other_key != key {
                    fleet_demand =
                        fleet_demand.saturating_add(other.demand.get(dim).copied().unwrap_or(0));
                    others += u64::from(other.grant.get(dim).copied().unwrap_or(0));
                }
            }
            let mut target = target_share(*limit, instances, fleet_demand, own_demand, params);
            let in_force = enforced.get(dim).copied();
            if warming {
                target = warm_up_cap(target, *limit, instances, in_force);
            }
            let grant = clip(target, *limit, others);
            let before = match previous {
                Some(p) => Some(p.get(dim).copied().unwrap_or(0)),
                // Unknown during warm-up: what it says it holds is counted (within the limit).
                None if warming => None,
                None => Some(0),
            };
            let held = held(grant, in_force.unwrap_or(0).min(*limit), before);
            grants.insert(dim.clone(), grant);
            holds.insert(dim.clone(), held);
        }
        let reply = build_reply(&report.instance, policy, policy_version, &grants, params);
        self.instances.insert(
            key,
            Instance {
                last_seen_ms: now_ms,
                report: report.clone(),
                demand: own,
                grant: holds,
                reply: reply.clone(),
            },
        );
        Ok(reply)
    }

    /// Counts a joining instance, or refuses it when the fleet is full or too many joined
    /// in this second.
    fn admit_join(&mut self, now_ms: u64, params: SplitParams) -> Result<(), Refusal> {
        let live = u32::try_from(self.instances.len()).unwrap_or(u32::MAX);
        if live >= params.max_instances {
            return Err(Refusal::TooManyInstances);
        }
        let second = now_ms / 1000;
        let joined = if self.joins.0 == second {
            self.joins.1
        } else {
            0
        };
        if joined >= params.max_joins_per_s {
            return Err(Refusal::TooManyJoins);
        }
        self.joins = (second, joined + 1);
        Ok(())
    }

    /// Drops the instances not seen for more than `stale_after_ms`, freeing their grants.
    pub fn prune(&mut self, now_ms: u64, stale_after_ms: u64) {
        self.instances
            .retain(|_, i| now_ms.saturating_sub(i.last_seen_ms) <= stale_after_ms);
    }

    /// The live instances, by id (and nonce).
    pub fn instances(&self) -> Vec<InstanceView> {
        self.instances
            .values()
            .map(|i| InstanceView {
                instance: i.report.instance.clone(),
                nonce: i.report.nonce.clone(),
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
    use wipgate_admission::wire::InForce;

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
            ..SyncRequest::default()
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
            book.sync(now, &report(0, 150, 100, 10, 40), &p, 1, params)
                .unwrap();
            book.sync(now, &report(1, 2, 1, 1, 0), &p, 1, params)
                .unwrap();
        }
        let views = book.instances();
        assert!(
            views[0].allowance.max_inflight > 4 * views[1].allowance.max_inflight,
            "{views:?}"
        );
        assert!(views[1].allowance.max_inflight >= 1);
        // envoy-1 keeps syncing; envoy-0 goes quiet past the stale window.
        let later = 2000 + params.stale_after_ms + 1;
        let reply = book
            .sync(later, &report(1, 2, 1, 1, 0), &p, 1, params)
            .unwrap();
        assert_eq!(book.instances().len(), 1);
        // Alone now: the stale grant is freed, so envoy-1 gets all but the held-back floor.
        assert_eq!(reply.max_inflight, 200 - 10);
    }

    #[test]
    fn a_newcomer_finds_room_at_once() {
        let (p, params) = (policy(), SplitParams::default());
        let mut book = InstanceBook::default();
        for i in 0..5 {
            book.sync(0, &report(i, 100, 50, 5, 10), &p, 1, params)
                .unwrap();
        }
        for i in 0..5 {
            book.sync(1, &report(i, 100, 50, 5, 10), &p, 1, params)
                .unwrap();
        }
        let reply = book.sync(2, &report(9, 0, 0, 0, 0), &p, 1, params).unwrap();
        assert!(reply.max_inflight >= 1, "{reply:?}");
    }

    /// One simulated Envoy process: what it enforces and until when.
    #[derive(Default, Clone)]
    struct Envoy {
        enforced: Option<(InForce, u64)>,
    }

    impl Envoy {
        fn in_force(&self, now: u64) -> Option<InForce> {
            self.enforced
                .as_ref()
                .filter(|(_, until)| now < *until)
                .map(|(f, _)| f.clone())
        }
    }

    fn enforced_sum(envoys: &[Envoy], now: u64, pick: impl Fn(&InForce) -> u32) -> u64 {
        envoys
            .iter()
            .filter_map(|e| e.in_force(now))
            .map(|f| u64::from(pick(&f)))
            .sum()
    }

    #[test]
    fn a_lost_reply_never_lets_the_sum_in_force_exceed_the_limit() {
        // A holds 150 of 200; its demand drops and the reply that lowers it is lost. B's
        // demand grows: it must not get the room A still enforces.
        let (p, params) = (policy(), SplitParams::default());
        let mut book = InstanceBook::default();
        let v2 = |id: usize, inflight: u32, in_force: Option<&SyncReply>| SyncRequest {
            version: Some(2),
            in_force: Some(in_force.map_or_else(InForce::default, |r| InForce {
                max_inflight: r.max_inflight,
                tenants: r.tenants.clone(),
                classes: r.classes.clone(),
            })),
            ..report(id, inflight, 0, 0, 0)
        };
        let a1 = book.sync(0, &v2(0, 190, None), &p, 1, params).unwrap();
        let b1 = book.sync(0, &v2(1, 100, None), &p, 1, params).unwrap();
        assert!(a1.max_inflight > 150, "{a1:?}");
        let lost = book.sync(100, &v2(0, 0, Some(&a1)), &p, 1, params).unwrap();
        assert!(lost.max_inflight < 50, "A's share falls: {lost:?}");
        let b2 = book
            .sync(200, &v2(1, 190, Some(&b1)), &p, 1, params)
            .unwrap();
        assert!(
            a1.max_inflight + b2.max_inflight <= 200,
            "A enforces {} (its reply lost), B got {}",
            a1.max_inflight,
            b2.max_inflight
        );
        // Once A shows the lower allowance in force, B gets the room.
        book.sync(300, &v2(0, 0, Some(&lost)), &p, 1, params)
            .unwrap();
        let b3 = book
            .sync(400, &v2(1, 190, Some(&b2)), &p, 1, params)
            .unwrap();
        assert!(b3.max_inflight > 150, "{b3:?}");
    }

    #[test]
    fn two_processes_on_one_id_share_rather_than_each_taking_it_all() {
        let (p, params) = (policy(), SplitParams::default());
        let mut book = InstanceBook::default();
        let with_nonce = |nonce: &str| SyncRequest {
            instance: "node".into(),
            nonce: Some(nonce.into()),
            ..report(0, 150, 0, 0, 0)
        };
        let mut sum = 0;
        for round in 0..3 {
            sum = 0;
            for nonce in ["aaaa", "bbbb"] {
                sum += book
                    .sync(round, &with_nonce(nonce), &p, 1, params)
                    .unwrap()
                    .max_inflight;
            }
        }
        assert!(sum <= 200, "{sum}");
        let views = book.instances();
        assert_eq!(views.len(), 2);
        assert_eq!(
            (views[0].instance.as_str(), views[0].nonce.as_deref()),
            ("node", Some("aaaa"))
        );
    }

    #[test]
    fn caps_on_live_instances_and_joins_per_second() {
        let p = policy();
        let params = SplitParams {
            max_instances: 3,
            max_joins_per_s: 2,
            ..SplitParams::default()
        };
        let mut book = InstanceBook::default();
        assert!(book
            .sync(1_000, &report(0, 1, 0, 0, 0), &p, 1, params)
            .is_ok());
        assert!(book
            .sync(1_500, &report(1, 1, 0, 0, 0), &p, 1, params)
            .is_ok());
        assert_eq!(
            book.sync(1_900, &report(2, 1, 0, 0, 0), &p, 1, params),
            Err(Refusal::TooManyJoins)
        );
        // Known instances always sync.
        assert!(book
            .sync(1_900, &report(0, 1, 0, 0, 0), &p, 1, params)
            .is_ok());
        assert!(book
            .sync(2_000, &report(2, 1, 0, 0, 0), &p, 1, params)
            .is_ok());
        assert_eq!(
            book.sync(3_000, &report(3, 1, 0, 0, 0), &p, 1, params),
            Err(Refusal::TooManyInstances)
        );
        assert_eq!(book.instances().len(), 3, "refused syncs record nothing");
    }

    #[test]
    fn inflated_demand_buys_no_more_than_the_envoys_own_maximum() {
        let (p, params) = (policy(), SplitParams::default());
        let mut book = InstanceBook::default();
        let real = report(0, 20, 0, 0, 0);
        let liar = SyncRequest {
            max_inflight: Some(20),
            ..report(1, u32::MAX, 0, 0, u64::MAX)
        };
        for now in 0..3 {
            book.sync(now, &liar, &p, 1, params).unwrap();
            book.sync(now, &real, &p, 1, params).unwrap();
        }
        let views = book.instances();
        assert_eq!(
            views[0].allowance.max_inflight,
            views[1].allowance.max_inflight
        );
    }

    #[test]
    fn a_cold_fleet_does_not_give_the_first_envoy_nearly_everything() {
        let p = policy();
        let params = SplitParams {
            warm_up_ms: 2_000,
            ..SplitParams::default()
        };
        let mut book = InstanceBook::starting(0);
        let first = book
            .sync(10, &report(0, 300, 0, 0, 0), &p, 1, params)
            .unwrap();
        assert!(first.max_inflight <= 100, "{first:?}");
        let second = book
            .sync(20, &report(1, 300, 0, 0, 0), &p, 1, params)
            .unwrap();
        assert!(second.max_inflight >= 60, "{second:?}");
        // After the warm-up the split follows demand again.
        let later = book
            .sync(3_000, &report(0, 300, 0, 0, 0), &p, 1, params)
            .unwrap();
        assert!(
            later.max_inflight > first.max_inflight.min(second.max_inflight),
            "{later:?}"
        );
    }

    proptest! {
        /// Envoys (some two processes on one id) sync in any order, every reply may be lost,
        /// allowances expire when not renewed: the allowances in force never add up to
        /// more than the fleet numbers.
        #[test]
        fn the_sum_in_force_never_exceeds_the_limit_whatever_replies_are_lost(
            steps in proptest::collection::vec((0usize..6, 0u32..400, 0u32..120, any::<bool>(), 0u64..2_500), 1..150),
        ) {
            let (p, params) = (policy(), SplitParams { stale_after_ms: 5_000, ..SplitParams::default() });
            let mut book = InstanceBook::default();
            let mut envoys = vec![Envoy::default(); 6];
            let mut now = 0;
            for (e, inflight, acme, delivered, dt) in steps {
                now += dt;
                let request = SyncRequest {
                    version: Some(2),
                    instance: format!("envoy-{}", e / 2 * 2 + usize::from(e == 5)),
                    nonce: Some(format!("p{e}")),
                    in_force: envoys[e].in_force(now),
                    ..report(e, inflight, acme, 0, 0)
                };
                let reply = book.sync(now, &request, &p, 1, params).unwrap();
                if delivered {
                    let f = InForce { max_inflight: reply.max_inflight, tenants: reply.tenants, classes: reply.classes };
                    envoys[e].enforced = Some((f, now + reply.stale_after_ms));
                }
                prop_assert!(enforced_sum(&envoys, now, |f| f.max_inflight) <= 200);
                prop_assert!(enforced_sum(&envoys, now, |f| f.tenants["acme"].max.unwrap_or(0)) <= 90);
                prop_assert!(enforced_sum(&envoys, now, |f| f.tenants["acme"].reserved) <= 30);
                prop_assert!(enforced_sum(&envoys, now, |f| f.classes["batch"].max.unwrap_or(0)) <= 70);
                sums_fit(&book, &p)?;
            }
        }

        #[test]
        fn allowances_never_sum_above_the_fleet_numbers(
            steps in proptest::collection::vec((0usize..12, 0u32..400, 0u32..200, 0u32..50, 0u64..100, 0u64..3000), 1..120),
        ) {
            let (p, params) = (policy(), SplitParams { floor_percent: 10, stale_after_ms: 5000, ..SplitParams::default() });
            let mut book = InstanceBook::default();
            let mut now = 0;
            for (id, inflight, acme, other, rejected, dt) in steps {
                now += dt;
                book.sync(now, &report(id, inflight, acme, other, rejected), &p, 1, params).unwrap();
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
                    book.sync(round, &report(i, *load, 0, 0, 0), &p, 1, params).unwrap();
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
