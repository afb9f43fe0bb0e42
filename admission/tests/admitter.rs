//! The admitter on the in-memory host: the decisions, the rejections the contract names, the
//! stats every decision leaves, several workers sharing one Envoy-wide limit, failing closed,
//! and the ledger of another build's format left untouched.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use proptest::prelude::*;
use wipgate_admission::fake_host::FakeHost;
use wipgate_admission::labels::{Label, TenantLabel, Usage};
use wipgate_admission::ledger::{Ledger, LEDGER_KEY};
use wipgate_admission::shared_data::MemoryStore;
use wipgate_admission::{Admitter, Decision, GateConfig, RejectReason, SharedData, Ticket};

fn admitter(host: &FakeHost, json: &str) -> Admitter {
    Admitter::new(GateConfig::parse(json.as_bytes()).unwrap(), host)
}

fn admit(a: &Admitter, host: &FakeHost, tenant: &str, now_us: u64) -> Result<Ticket, RejectReason> {
    match a.admit(host, Some(tenant.as_bytes()), None, now_us) {
        Decision::Admitted(t) => Ok(t),
        Decision::Rejected(r) => Err(r.reason),
        Decision::Waiting => panic!("admit() never queues"),
    }
}

fn tenant(name: &str) -> Label {
    Label::Tenant(TenantLabel::Listed(Arc::from(name)))
}

#[test]
fn admits_up_to_the_limit_and_counts_every_decision_under_its_label() {
    let host = FakeHost::default();
    let a = admitter(
        &host,
        r#"{"max_inflight": 3, "tenants": {"acme": {"max": 2}}}"#,
    );
    let first = admit(&a, &host, "acme", 1_000).unwrap();
    let _second = admit(&a, &host, "acme", 1_000).unwrap();
    assert_eq!(
        admit(&a, &host, "acme", 1_000).unwrap_err(),
        RejectReason::TenantLimit
    );
    let _third = admit(&a, &host, "zed", 1_000).unwrap();
    match a.admit(&host, Some(b"zed"), None, 1_000) {
        Decision::Rejected(r) => {
            assert_eq!(
                (r.reason, r.status(), r.tenant.as_str()),
                (RejectReason::WipLimit, 503, "zed")
            );
            assert_eq!(r.retry_after_s, 1);
        }
        Decision::Admitted(_) | Decision::Waiting => panic!("over the limit of 3, no queue"),
    }
    let stats = host.stats();
    assert_eq!(
        stats.usage[&tenant("acme")],
        Usage {
            inflight: 2,
            admitted: 2,
            rejected: 1
        }
    );
    assert_eq!(
        stats.usage[&Label::Tenant(TenantLabel::Unlisted)],
        Usage {
            inflight: 1,
            admitted: 1,
            rejected: 1
        }
    );
    assert_eq!(stats.limit, Some((3, true)));
    a.release(&host, first, Some(200), 2_000);
    assert_eq!(a.inflight(&host), 2);
    assert_eq!(host.stats().usage[&tenant("acme")].inflight, 1);
    let again = admit(&a, &host, "acme", 3_000).unwrap();
    a.release(&host, again, None, 4_000);
}

#[test]
fn workers_of_one_envoy_share_the_limit() {
    let host = FakeHost::default();
    let config = r#"{"max_inflight": 4}"#;
    let workers: Vec<Admitter> = (0..3).map(|_| admitter(&host, config)).collect();
    let mut held = Vec::new();
    for round in 0..4u64 {
        for w in &workers {
            if let Ok(t) = admit(w, &host, "t", round * 1_000) {
                held.push(t);
            }
        }
    }
    assert_eq!(held.len(), 4);
    assert_eq!(workers[2].inflight(&host), 4);
    for (i, t) in held.into_iter().enumerate() {
        workers[i % 3].release(&host, t, None, 9_000);
    }
    assert_eq!(workers[0].inflight(&host), 0);
}

#[test]
fn a_ledger_that_cannot_be_written_fails_closed() {
    let host = FakeHost::with_store(MemoryStore::failing_every(1));
    let a = admitter(&host, r#"{"max_inflight": 10}"#);
    assert_eq!(
        admit(&a, &host, "t", 0).unwrap_err(),
        RejectReason::WipLimit
    );
    assert_eq!(host.stats().gate_errors, 1);
}

#[test]
fn another_builds_ledger_is_left_alone() {
    let host = FakeHost::default();
    let foreign = [4u8, 0, 0, 0, 0, 1, 2, 3];
    host.set(LEDGER_KEY, &foreign, None).unwrap();
    let a = admitter(&host, r#"{"max_inflight": 1}"#);
    let t = admit(&a, &host, "t", 0).unwrap();
    assert_eq!(
        admit(&a, &host, "t", 0).unwrap_err(),
        RejectReason::WipLimit
    );
    a.release(&host, t, None, 1_000);
    assert_eq!(host.get(LEDGER_KEY).unwrap().0.unwrap(), foreign);
    assert_eq!(a.inflight(&host), 0);
}

#[test]
fn a_permit_from_before_a_move_to_the_own_key_releases_nothing_there() {
    let host = FakeHost::default();
    let (a, b) = (
        admitter(&host, r#"{"max_inflight": 5}"#),
        admitter(&host, r#"{"max_inflight": 5}"#),
    );
    let old = admit(&a, &host, "t", 0).unwrap();
    // Another build takes the key over with a record of its own format.
    host.set(LEDGER_KEY, &[4u8, 0, 0, 0, 0], None).unwrap();
    let held = admit(&b, &host, "t", 1_000).unwrap();
    assert_eq!(b.inflight(&host), 1, "B registered in the own-key ledger");
    // A moves too (its heartbeat meets the foreign record), then its old permit ends: it
    // belongs to the record A can no longer read, so nothing of B's is given back.
    a.heartbeat(&host, 1_500);
    a.release(&host, old, None, 2_000);
    assert_eq!(b.inflight(&host), 1);
    b.release(&host, held, None, 3_000);
    assert_eq!(b.inflight(&host), 0);
}

#[test]
fn adaptive_limits_learn_from_released_requests() {
    let host = FakeHost::default();
    let a = admitter(
        &host,
        r#"{"max_inflight": 100, "min_inflight": 2,
            "adaptive": {"algorithm": "aimd", "window_ms": 100, "stable_windows": 1}}"#,
    );
    assert!(a.wants_status());
    // One window: fill the limit, finish with `status`; the next change closes the window.
    let window = |start_us: u64, status: u16| {
        let tickets: Vec<Ticket> = std::iter::from_fn(|| admit(&a, &host, "t", start_us).ok())
            .take(100)
            .collect();
        let n = tickets.len();
        for t in tickets {
            a.release(&host, t, Some(status), start_us + 10_000);
        }
        a.heartbeat(&host, start_us / 1_000 + 100);
        n
    };
    assert_eq!(window(0, 200), 2, "cold start at min_inflight");
    assert_eq!(
        host.stats().adaptive_limit,
        Some(4),
        "held back and healthy: doubles"
    );
    assert_eq!(window(200_000, 503), 4);
    assert_eq!(
        host.stats().adaptive_limit,
        Some(3),
        "errors: backs off by 0.9"
    );
}

proptest! {
    /// Any mix of admissions and releases by three workers sharing one Envoy: the limit holds,
    /// every ticket is released once, and the stats' in-flight equals the ledger's.
    #[test]
    fn tickets_and_stats_stay_exact(ops in proptest::collection::vec((0usize..3, any::<bool>(), 0u8..3), 1..200)) {
        let host = FakeHost::default();
        let config = r#"{"max_inflight": 5, "tenants": {"a": {"reserved": 1, "max": 3}}}"#;
        let workers: Vec<Admitter> = (0..3).map(|_| admitter(&host, config)).collect();
        let mut held: Vec<(usize, Ticket)> = Vec::new();
        for (i, (w, admit_one, t)) in ops.into_iter().enumerate() {
            let now = i as u64 * 1_000;
            if admit_one {
                if let Ok(ticket) = admit(&workers[w], &host, ["a", "b", "c"][usize::from(t)], now) {
                    held.push((w, ticket));
                }
            } else if let Some((w, ticket)) = held.pop() {
                workers[w].release(&host, ticket, Some(200), now);
            }
            prop_assert!(held.len() <= 5);
            prop_assert_eq!(workers[0].inflight(&host), held.len() as u64);
            let stats_inflight: u64 = host.stats().usage.values().map(|u| u.inflight).sum();
            prop_assert_eq!(stats_inflight, held.len() as u64);
        }
    }
}

#[test]
fn retry_after_grows_with_a_sustained_overload_and_is_jittered() {
    let host = FakeHost::default();
    let a = admitter(&host, r#"{"max_inflight": 2}"#);
    let mut held: Vec<(u64, Ticket)> = Vec::new();
    let mut retry_after: Vec<(u64, u32)> = Vec::new();
    // 3x what 2 slots of 50 ms serve (40/s), for 20 s.
    for step in 0..20_000u64 / 8 {
        let now_us = step * 8_000;
        while held.first().is_some_and(|(at, _)| now_us - at >= 50_000) {
            let (_, t) = held.remove(0);
            a.release(&host, t, Some(200), now_us);
        }
        match a.admit(&host, Some(b"t"), None, now_us) {
            Decision::Admitted(t) => held.push((now_us, t)),
            Decision::Rejected(r) => retry_after.push((now_us / 1_000, r.retry_after_s)),
            Decision::Waiting => panic!("no queue"),
        }
    }
    let at = |from_ms: u64, to_ms: u64| -> Vec<u32> {
        retry_after
            .iter()
            .filter(|(t, _)| (from_ms..to_ms).contains(t))
            .map(|(_, s)| *s)
            .collect()
    };
    assert!(
        at(0, 2_000).iter().all(|s| *s == 1),
        "a young overload asks for the floor"
    );
    let late = at(19_000, 20_000);
    // 19-20 s of overload: a quarter of it is about 5 s, stretched by up to half.
    assert!(late.iter().all(|s| (5..=8).contains(s)), "{late:?}");
    let distinct: std::collections::BTreeSet<u32> = late.iter().copied().collect();
    assert!(distinct.len() >= 2, "jittered: {distinct:?}");
}

#[test]
fn rejections_write_nothing_until_they_are_told_with_a_later_write() {
    let host = FakeHost::default();
    let a = admitter(
        &host,
        r#"{"max_inflight": 1, "adaptive": {"window_ms": 1000}}"#,
    );
    let held = admit(&a, &host, "t", 1_000_000).unwrap();
    let (_, version) = host.get(LEDGER_KEY).unwrap();
    for i in 0..100 {
        // Within 50 ms of the first: read only.
        assert_eq!(
            admit(&a, &host, "t", 1_000_000 + i * 100).unwrap_err(),
            RejectReason::WipLimit
        );
    }
    assert_eq!(
        host.get(LEDGER_KEY).unwrap().1,
        version,
        "100 rejections wrote nothing"
    );
    // The release writes, and tells the ledger about them: the window sees the demand.
    a.release(&host, held, Some(200), 1_020_000);
    let ledger = || Ledger::decode(&host.get(LEDGER_KEY).unwrap().0.unwrap()).unwrap();
    assert!(
        ledger().pressure(1_020).overloaded_for_ms > 0,
        "the overload is known"
    );
    assert_eq!(
        ledger().window_rejected(),
        Some(100),
        "the window counts the demand"
    );
    let held = admit(&a, &host, "t", 1_030_000).unwrap();
    // A VM that only rejects still tells within 50 ms.
    let (_, version) = host.get(LEDGER_KEY).unwrap();
    let _ = admit(&a, &host, "t", 1_031_000);
    let _ = admit(&a, &host, "t", 1_082_000);
    assert_ne!(host.get(LEDGER_KEY).unwrap().1, version, "told after 50 ms");
    // The write at 82 ms told the one at 31 ms; its own is told with the next write.
    assert_eq!(ledger().window_rejected(), Some(101));
    a.release(&host, held, Some(200), 1_100_000);
}
