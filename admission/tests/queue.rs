//! The bounded wait on the in-memory host: worker VMs sharing one FakeHost hand slots to each
//! other's waiters through their wake-up queues; deadlines, clients that leave, lost
//! wake-ups, fairness without per-tenant configuration, `max_waiting`, and exactly-once
//! slots under random interleavings.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use proptest::prelude::*;
use wipgate_admission::fake_host::FakeHost;
use wipgate_admission::ledger::{Ledger, LEDGER_KEY};
use wipgate_admission::{
    Admitter, Decision, GateConfig, RejectReason, Resolved, SharedData, Ticket,
};

/// One worker VM: its admitter, woken through queue `queue`.
fn worker(host: &FakeHost, json: &str, queue: u32) -> Admitter {
    let a = Admitter::new(GateConfig::parse(json.as_bytes()).unwrap(), host);
    a.set_wake_queue(queue);
    a
}

fn ledger(host: &FakeHost) -> Ledger {
    Ledger::decode(&host.get(LEDGER_KEY).unwrap().0.unwrap()).unwrap()
}

fn admitted(d: Decision) -> Ticket {
    match d {
        Decision::Admitted(t) => t,
        other => panic!("expected a slot, got {other:?}"),
    }
}

fn waits(d: &Decision) -> bool {
    matches!(d, Decision::Waiting)
}

/// Delivers the wake-ups the host collected to the workers whose queue they name.
fn deliver(host: &FakeHost, workers: &[&Admitter], now_us: u64) -> Vec<(usize, Resolved)> {
    let mut out = Vec::new();
    for queue in host.take_woken() {
        let i = usize::try_from(queue).unwrap() - 1;
        out.extend(workers[i].on_wake(host, now_us).into_iter().map(|r| (i, r)));
    }
    out
}

const LIMIT_2: &str = r#"{"max_inflight": 2, "queue": {"timeout_ms": 50}}"#;

#[test]
fn a_slot_released_on_one_worker_resumes_a_waiter_on_another() {
    let host = FakeHost::default();
    let (a, b) = (worker(&host, LIMIT_2, 1), worker(&host, LIMIT_2, 2));
    let t1 = admitted(a.admit_or_wait(&host, Some(b"t"), None, 10, 1_000_000));
    let _t2 = admitted(a.admit_or_wait(&host, Some(b"t"), None, 11, 1_000_000));
    assert!(waits(&b.admit_or_wait(
        &host,
        Some(b"t"),
        None,
        20,
        1_001_000
    )));
    assert_eq!((ledger(&host).total(), ledger(&host).waiting()), (2, 1));
    assert_eq!(host.stats().waiting, 1);

    a.release(&host, t1, Some(200), 1_003_000);
    let l = ledger(&host);
    assert_eq!(
        (l.total(), l.waiting(), l.grants().len()),
        (2, 0, 1),
        "handed over in the release's own write"
    );
    let resumed = deliver(&host, &[&a, &b], 1_003_400);
    let [(1, Resolved::Resume(20, ticket))] = resumed.as_slice() else {
        panic!("b's waiter 20 resumes: {resumed:?}");
    };
    assert_eq!(ledger(&host).grants().len(), 0, "picked up");
    assert_eq!(host.stats().waits["admitted"], vec![2_400]);
    let _ = ticket;
    assert!(
        b.on_deadlines(&host, 1_100_000).is_empty(),
        "nothing left to answer"
    );
}

#[test]
fn a_waiter_times_out_with_queue_timeout_when_nothing_is_released() {
    let host = FakeHost::default();
    let a = worker(&host, LIMIT_2, 1);
    let _held = [
        admitted(a.admit_or_wait(&host, None, None, 1, 0)),
        admitted(a.admit_or_wait(&host, None, None, 2, 0)),
    ];
    assert!(waits(&a.admit_or_wait(
        &host,
        Some(b"acme"),
        None,
        3,
        5_000
    )));
    assert_eq!(a.next_deadline_ms(), Some(55));
    assert!(a.on_deadlines(&host, 54_999).is_empty(), "not yet");
    let resolved = a.on_deadlines(&host, 55_000);
    let [Resolved::Reject(3, r)] = resolved.as_slice() else {
        panic!("{resolved:?}");
    };
    assert_eq!(
        (r.reason, r.status(), r.tenant.as_str()),
        (RejectReason::QueueTimeout, 503, "acme")
    );
    assert_eq!((ledger(&host).waiting(), a.waiting()), (0, 0));
    assert_eq!(host.stats().rejected["queue_timeout"], 1);
    assert_eq!(host.stats().waiting, 0);
}

#[test]
fn a_client_that_leaves_while_waiting_leaves_no_waiter_and_no_slot() {
    let host = FakeHost::default();
    let (a, b) = (worker(&host, LIMIT_2, 1), worker(&host, LIMIT_2, 2));
    let t1 = admitted(a.admit_or_wait(&host, None, None, 1, 0));
    let t2 = admitted(a.admit_or_wait(&host, None, None, 2, 0));
    // One leaves before any slot frees; the other after a slot was handed to it but before
    // its VM picked the slot up.
    assert!(waits(&b.admit_or_wait(&host, None, None, 7, 1_000)));
    assert!(waits(&b.admit_or_wait(&host, None, None, 8, 2_000)));
    b.leave(&host, 7, 3_000);
    a.release(&host, t1, Some(200), 4_000);
    assert_eq!(ledger(&host).grants().len(), 1, "8 was handed the slot");
    b.leave(&host, 8, 5_000);
    let l = ledger(&host);
    assert_eq!(
        (l.total(), l.waiting(), l.grants().len()),
        (1, 0, 0),
        "the handed slot came back at once"
    );
    assert!(
        deliver(&host, &[&a, &b], 6_000).is_empty(),
        "a late wake-up finds nothing"
    );
    a.release(&host, t2, Some(200), 7_000);
    assert_eq!(ledger(&host).total(), 0);
    assert_eq!(host.stats().waits["left"].len(), 2);
}

#[test]
fn a_lost_wake_up_is_made_good_by_the_waiting_vm_s_timer() {
    let host = FakeHost::default();
    let (a, b) = (worker(&host, LIMIT_2, 1), worker(&host, LIMIT_2, 2));
    let t1 = admitted(a.admit_or_wait(&host, None, None, 1, 0));
    let _t2 = admitted(a.admit_or_wait(&host, None, None, 2, 0));
    assert!(waits(&b.admit_or_wait(&host, None, None, 9, 1_000)));
    a.release(&host, t1, Some(200), 2_000);
    assert_eq!(host.take_woken(), vec![2], "…and the message is lost");
    let resolved = b.on_deadlines(&host, 10_000);
    assert!(
        matches!(resolved.as_slice(), [Resolved::Resume(9, _)]),
        "{resolved:?}"
    );
}

#[test]
fn a_slot_handed_over_as_the_deadline_comes_is_taken_not_wasted() {
    let host = FakeHost::default();
    let (a, b) = (worker(&host, LIMIT_2, 1), worker(&host, LIMIT_2, 2));
    let t1 = admitted(a.admit_or_wait(&host, None, None, 1, 0));
    let _t2 = admitted(a.admit_or_wait(&host, None, None, 2, 0));
    assert!(waits(&b.admit_or_wait(&host, None, None, 9, 0)));
    a.release(&host, t1, Some(200), 49_000);
    host.take_woken();
    // The deadline tick runs before the wake-up: the claim in it finds the grant.
    let resolved = b.on_deadlines(&host, 50_000);
    assert!(
        matches!(resolved.as_slice(), [Resolved::Resume(9, _)]),
        "{resolved:?}"
    );
    assert_eq!(ledger(&host).total(), 2);
}

#[test]
fn without_tenant_configuration_a_flooding_tenant_waits_behind_the_others() {
    let json = r#"{"max_inflight": 4, "queue": {"timeout_ms": 1000}}"#;
    let host = FakeHost::default();
    let a = worker(&host, json, 1);
    let mut held: Vec<Ticket> = (0..4)
        .map(|i| admitted(a.admit_or_wait(&host, Some(b"noisy"), None, i, 0)))
        .collect();
    for i in 10..15 {
        assert!(waits(&a.admit_or_wait(
            &host,
            Some(b"noisy"),
            None,
            i,
            1_000
        )));
    }
    assert!(waits(&a.admit_or_wait(
        &host,
        Some(b"quiet"),
        None,
        20,
        2_000
    )));
    assert!(waits(&a.admit_or_wait(
        &host,
        Some(b"other"),
        None,
        30,
        3_000
    )));
    // Two slots free, one after the other: the tenants with nothing in flight go first,
    // ahead of five older noisy waiters (noisy still holds 3, then 2).
    for t in held.drain(..2) {
        a.release(&host, t, Some(200), 4_000);
    }
    let order: Vec<u32> = deliver(&host, &[&a], 5_000)
        .into_iter()
        .map(|(_, r)| match r {
            Resolved::Resume(token, _) => token,
            Resolved::Reject(..) => panic!("no deadline yet"),
        })
        .collect();
    assert_eq!(order.len(), 2);
    assert!(order.contains(&30) && order.contains(&20), "{order:?}");
}

#[test]
fn max_waiting_bounds_the_queue_envoy_wide() {
    let json = r#"{"max_inflight": 1, "queue": {"max_waiting": 2}}"#;
    let host = FakeHost::default();
    let (a, b) = (worker(&host, json, 1), worker(&host, json, 2));
    let _t = admitted(a.admit_or_wait(&host, None, None, 1, 0));
    assert!(waits(&a.admit_or_wait(&host, None, None, 2, 0)));
    assert!(waits(&b.admit_or_wait(&host, None, None, 3, 0)));
    match b.admit_or_wait(&host, None, None, 4, 0) {
        Decision::Rejected(r) => assert_eq!(r.reason, RejectReason::WipLimit),
        other => panic!("the third waiter is one too many: {other:?}"),
    }
}

#[test]
fn tenant_and_class_maxima_answer_at_once_rather_than_wait() {
    let json = r#"{"max_inflight": 10, "tenants": {"capped": {"max": 1}}, "queue": {}}"#;
    let host = FakeHost::default();
    let a = worker(&host, json, 1);
    let _t = admitted(a.admit_or_wait(&host, Some(b"capped"), None, 1, 0));
    match a.admit_or_wait(&host, Some(b"capped"), None, 2, 0) {
        Decision::Rejected(r) => assert_eq!(r.reason, RejectReason::TenantLimit),
        other => panic!("{other:?}"),
    }
}

/// One step of a random schedule over three workers.
#[derive(Debug, Clone)]
enum Step {
    Arrive { worker: usize, tenant: u8 },
    Finish { worker: usize, pick: usize },
    Leave { worker: usize, pick: usize },
    Deliver,
    Tick { worker: usize },
    Wait { ms: u64 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..3usize, 0..3u8).prop_map(|(worker, tenant)| Step::Arrive { worker, tenant }),
        3 => (0..3usize, any::<usize>()).prop_map(|(worker, pick)| Step::Finish { worker, pick }),
        1 => (0..3usize, any::<usize>()).prop_map(|(worker, pick)| Step::Leave { worker, pick }),
        2 => Just(Step::Deliver),
        1 => (0..3usize).prop_map(|worker| Step::Tick { worker }),
        1 => (1..40u64).prop_map(|ms| Step::Wait { ms }),
    ]
}

proptest! {
    /// Whatever the interleaving: the limit holds, every waiter ends exactly once (resumed,
    /// rejected or left), and once everything has finished no slot, waiter or grant is left.
    #[test]
    fn every_slot_and_every_wait_ends_exactly_once(steps in prop::collection::vec(step(), 1..120)) {
        let json = r#"{"max_inflight": 3, "queue": {"timeout_ms": 30, "max_waiting": 4}}"#;
        let host = FakeHost::default();
        let workers: Vec<Admitter> = (1..=3).map(|q| worker(&host, json, q)).collect();
        let refs: Vec<&Admitter> = workers.iter().collect();
        let mut now_us = 1_000_000u64;
        let mut next_token = 0u32;
        let mut tickets: Vec<Vec<Ticket>> = vec![Vec::new(), Vec::new(), Vec::new()];
        let mut waiting: Vec<Vec<u32>> = vec![Vec::new(), Vec::new(), Vec::new()];
        let mut ended: BTreeMap<u32, &str> = BTreeMap::new();
        let end = |w: usize, r: Resolved, tickets: &mut Vec<Vec<Ticket>>, waiting: &mut Vec<Vec<u32>>, ended: &mut BTreeMap<u32, &str>| {
            let (token, how) = match r {
                Resolved::Resume(token, t) => { tickets[w].push(t); (token, "resumed") }
                Resolved::Reject(token, r) => { assert_eq!(r.reason, RejectReason::QueueTimeout); (token, "rejected") }
            };
            assert!(waiting[w].contains(&token), "token {token} resolved on its own worker, while waiting");
            waiting[w].retain(|t| *t != token);
            assert!(ended.insert(token, how).is_none(), "token {token} resolved twice");
        };
        for s in steps {
            now_us += 100;
            match s {
                Step::Arrive { worker, tenant } => {
                    next_token += 1;
                    let name = [b"a".as_slice(), b"b", b"c"][usize::from(tenant)];
                    match workers[worker].admit_or_wait(&host, Some(name), None, next_token, now_us) {
                        Decision::Admitted(t) => tickets[worker].push(t),
                        Decision::Waiting => waiting[worker].push(next_token),
                        Decision::Rejected(_) => {}
                    }
                }
                Step::Finish { worker, pick } => {
                    if !tickets[worker].is_empty() {
                        let i = pick % tickets[worker].len();
                        let t = tickets[worker].swap_remove(i);
                        workers[worker].release(&host, t, Some(200), now_us);
                    }
                }
                Step::Leave { worker, pick } => {
                    if !waiting[worker].is_empty() {
                        let i = pick % waiting[worker].len();
                        let token = waiting[worker].swap_remove(i);
                        workers[worker].leave(&host, token, now_us);
                        ended.insert(token, "left");
                    }
                }
                Step::Deliver => {
                    for (w, r) in deliver(&host, &refs, now_us) {
                        end(w, r, &mut tickets, &mut waiting, &mut ended);
                    }
                }
                Step::Tick { worker } => {
                    for r in workers[worker].on_deadlines(&host, now_us) {
                        end(worker, r, &mut tickets, &mut waiting, &mut ended);
                    }
                }
                Step::Wait { ms } => now_us += ms * 1_000,
            }
            let l = ledger(&host);
            let held: usize = tickets.iter().map(Vec::len).sum();
            prop_assert!(l.total() <= 3, "limit held");
            prop_assert_eq!(l.total() as usize, held + l.grants().len(), "every counted slot is a ticket or a grant");
            prop_assert!(l.waiting() + l.grants().len() <= 4);
        }
        // Drain: deliver, time everything out, finish every ticket.
        now_us += 1_000_000;
        for (w, r) in deliver(&host, &refs, now_us) {
            end(w, r, &mut tickets, &mut waiting, &mut ended);
        }
        for (w, a) in workers.iter().enumerate() {
            for r in a.on_deadlines(&host, now_us) {
                end(w, r, &mut tickets, &mut waiting, &mut ended);
            }
        }
        for (w, ts) in tickets.iter_mut().enumerate() {
            for t in ts.drain(..) {
                workers[w].release(&host, t, Some(200), now_us);
            }
        }
        for (w, r) in deliver(&host, &refs, now_us) {
            prop_assert!(false, "nothing waits any more, yet worker {} resolved {:?}", w, r);
        }
        let l = ledger(&host);
        prop_assert_eq!((l.total(), l.waiting(), l.grants().len()), (0, 0, 0));
        prop_assert!(waiting.iter().all(Vec::is_empty));
        prop_assert_eq!(host.stats().waiting, 0);
    }
}
