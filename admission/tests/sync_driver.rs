//! The sync driver on the in-memory host: one call per Envoy per interval, replies turned into
//! the allowance every worker enforces, failures that keep the last good limits, and a
//! property test over arbitrary interleavings of ticks, replies, refusals and clock values.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use serde_json::json;
use wipgate_admission::fake_host::FakeHost;
use wipgate_admission::sync::{load_allowance, SyncLease, ALLOWANCE_KEY, LEASE_KEY};
use wipgate_admission::wire::SyncRequest;
use wipgate_admission::{Admitter, Decision, GateConfig, SharedData, SyncDriver};

const CONFIG: &str = r#"{"max_inflight": 50, "control": {"cluster": "wipgate_control",
    "interval_ms": 1000, "timeout_ms": 250, "stale_after_ms": 5000}}"#;

/// One worker VM: its admitter and its sync driver.
struct Worker {
    admitter: Admitter,
    sync: SyncDriver,
}

fn worker(host: &FakeHost) -> Worker {
    let config = GateConfig::parse(CONFIG.as_bytes()).unwrap();
    let control = config.control.clone().unwrap();
    Worker {
        admitter: Admitter::new(config, host),
        sync: SyncDriver::new(control, "envoy-1".to_owned()),
    }
}

fn reply(max_inflight: u32) -> Vec<u8> {
    json!({"instance": "envoy-1", "policy_version": 2, "max_inflight": max_inflight,
           "tenants": {}, "classes": {}, "degraded": false, "stale_after_ms": 4000})
    .to_string()
    .into_bytes()
}

impl Worker {
    fn tick(&mut self, host: &FakeHost, now_ms: u64) {
        self.sync.on_tick(host, &self.admitter, now_ms);
    }

    /// Answers the newest call (the tests that use it have one call under way at a time).
    fn answer(&mut self, host: &FakeHost, status: Option<u16>, body: &[u8], now_ms: u64) {
        let token = host.calls().last().unwrap().token;
        self.answer_call(host, token, status, body, now_ms);
    }

    fn answer_call(
        &mut self,
        host: &FakeHost,
        token: u32,
        status: Option<u16>,
        body: &[u8],
        now_ms: u64,
    ) {
        self.sync
            .on_response(host, &self.admitter, token, status, body, now_ms);
    }

    fn limit(&self, host: &FakeHost, now_ms: u64) -> u32 {
        self.admitter.limits(host, now_ms).config.max_inflight
    }
}

#[test]
fn one_call_per_interval_and_the_reply_becomes_every_workers_limit() {
    let host = FakeHost::default();
    let (mut a, mut b) = (worker(&host), worker(&host));
    a.tick(&host, 1_000);
    b.tick(&host, 1_000);
    assert_eq!(host.calls().len(), 1, "one call per Envoy");
    assert!(a.sync.is_pending() && !b.sync.is_pending());
    let report: SyncRequest = serde_json::from_slice(&host.calls()[0].body).unwrap();
    assert_eq!((report.instance.as_str(), report.inflight), ("envoy-1", 0));
    assert_eq!(report.in_force, None, "nothing from the fleet in force yet");
    a.answer(&host, Some(200), &reply(7), 1_050);
    assert_eq!(host.stats().syncs, 1);
    assert_eq!(load_allowance(&host).unwrap().seq, 1);
    // B learns of the allowance through the ledger at its next change.
    b.admitter.heartbeat(&host, 1_060);
    assert_eq!(b.limit(&host, 1_060), 7);
    b.tick(&host, 1_500);
    assert_eq!(host.calls().len(), 1, "not due before the interval");
    b.tick(&host, 2_000);
    assert_eq!(host.calls().len(), 2);
    // The next report says what is in force (the service keeps counting it until a report
    // shows less), with the protocol version and this Envoy's own maximum.
    let report: SyncRequest = serde_json::from_slice(&host.calls()[1].body).unwrap();
    assert_eq!(report.in_force.as_ref().map(|f| f.max_inflight), Some(7));
    assert_eq!((report.version, report.max_inflight), (Some(2), Some(50)));
    // Past the reply's 4 s with no newer one: the last allowance holds, never the static
    // 50 (a fleet cut off from its control service must not admit N x static), and the
    // next report says so.
    assert_eq!(a.limit(&host, 5_100), 7);
    a.sync
        .on_response(&host, &a.admitter, host.calls()[1].token, None, b"", 2_300);
    a.tick(&host, 5_100);
    let report: SyncRequest = serde_json::from_slice(&host.calls()[2].body).unwrap();
    assert_eq!(report.in_force.map(|f| f.max_inflight), Some(7));
}

#[test]
fn the_sync_call_carries_the_configured_token_and_only_then() {
    let host = FakeHost::default();
    let mut plain = worker(&host);
    plain.tick(&host, 1_000);
    assert_eq!(host.calls()[0].bearer, None);

    let host = FakeHost::default();
    let config = CONFIG.replace(
        r#""cluster": "wipgate_control","#,
        r#""cluster": "wipgate_control", "token": "fleet-secret","#,
    );
    let config = GateConfig::parse(config.as_bytes()).unwrap();
    let mut sync = SyncDriver::new(config.control.clone().unwrap(), "envoy-1".to_owned());
    let admitter = Admitter::new(config, &host);
    sync.on_tick(&host, &admitter, 1_000);
    assert_eq!(host.calls()[0].bearer.as_deref(), Some("fleet-secret"));
    // The token is a header, never part of the report.
    assert!(!String::from_utf8_lossy(&host.calls()[0].body).contains("fleet-secret"));
    // Refused (401): counted as a status failure, the static limits stay.
    let token = host.calls()[0].token;
    sync.on_response(&host, &admitter, token, Some(401), b"{}", 1_050);
    assert_eq!(host.stats().sync_failures["status"], 1);
    assert_eq!(admitter.limits(&host, 1_060).config.max_inflight, 50);

    for bad in [r#""""#, r#""a b""#, "\"é\""] {
        let config = CONFIG.replace(
            r#""cluster": "wipgate_control","#,
            &format!(r#""cluster": "wipgate_control", "token": {bad},"#),
        );
        let err = GateConfig::parse(config.as_bytes()).unwrap_err();
        assert_eq!(err.field, "control.token", "{bad}");
    }
}

#[test]
fn a_workers_first_request_after_a_new_allowance_is_decided_under_it() {
    let host = FakeHost::default();
    let (mut a, b) = (worker(&host), worker(&host));
    let admit = |w: &Worker| match w.admitter.admit(&host, Some(b"t"), None, 1_100_000) {
        Decision::Admitted(t) => Some(t),
        Decision::Rejected(_) | Decision::Waiting => None,
    };
    let held = admit(&b).expect("static limit of 50");
    a.tick(&host, 1_000);
    a.answer(&host, Some(200), &reply(1), 1_050);
    // B has not seen the ledger since: its cached limits are the static ones, but one is
    // already in flight under the allowance of 1.
    assert!(
        admit(&b).is_none(),
        "the allowance of 1 holds from B's first request on"
    );
    b.admitter.release(&host, held, None, 1_200_000);
}

#[test]
fn fleet_rejections_are_not_read_as_demand_on_the_adaptive_limit() {
    let host = FakeHost::default();
    let config = r#"{"max_inflight": 50, "adaptive": {}, "control": {"cluster": "wipgate_control",
        "interval_ms": 1000, "timeout_ms": 250, "stale_after_ms": 5000}}"#;
    let config = GateConfig::parse(config.as_bytes()).unwrap();
    let mut sync = SyncDriver::new(config.control.clone().unwrap(), "envoy-1".to_owned());
    let admitter = Admitter::new(config, &host);
    sync.on_tick(&host, &admitter, 0);
    let token = host.calls()[0].token;
    sync.on_response(&host, &admitter, token, Some(200), &reply(2), 10);
    // Flood at the fleet share of 2 while the knee sits at its ceiling of 50.
    let mut held = Vec::new();
    for i in 0..40u64 {
        if let Decision::Admitted(t) = admitter.admit(&host, Some(b"t"), None, 20_000 + i * 1_000) {
            held.push(t);
        }
    }
    assert_eq!(held.len(), 2);
    for t in held {
        admitter.release(&host, t, Some(200), 100_000);
    }
    // Two finished are too few to judge: the window closes when stretched to its end.
    admitter.heartbeat(&host, 5_000);
    let windows = host.windows();
    assert!(!windows.is_empty());
    assert!(
        windows.iter().all(|w| w.sample.rejected == 0),
        "the fleet share turned them away, not the adaptive limit"
    );
}

#[test]
fn a_corrupt_allowance_at_the_end_of_its_sequence_stores_nothing_and_does_not_panic() {
    let host = FakeHost::default();
    let mut a = worker(&host);
    let corrupt = serde_json::json!({"seq": u64::MAX, "policy_version": 1, "max_inflight": 5,
        "tenants": {}, "classes": {}, "valid_until_ms": 0, "degraded": false});
    host.set(ALLOWANCE_KEY, corrupt.to_string().as_bytes(), None)
        .unwrap();
    a.tick(&host, 0);
    a.answer(&host, Some(200), &reply(7), 10);
    assert_eq!(host.stats().sync_failures["invalid"], 1);
    assert_eq!(load_allowance(&host).unwrap().seq, u64::MAX);
}

#[test]
fn failures_keep_the_last_good_limits_and_resend_the_counts() {
    let host = FakeHost::default();
    let mut a = worker(&host);
    a.tick(&host, 0);
    a.answer(&host, Some(200), &reply(9), 10);
    let Decision::Admitted(ticket) = a.admitter.admit(&host, Some(b"t"), None, 20_000) else {
        panic!("room for one");
    };
    for (t, status, body) in [
        (1_000, None, b"".as_slice()),
        (2_000, Some(500), b"oops".as_slice()),
        (3_000, Some(200), b"<html>".as_slice()),
    ] {
        a.tick(&host, t);
        a.answer(&host, status, body, t + 10);
        assert_eq!(
            a.limit(&host, t + 20),
            9,
            "a failed call never clears good limits"
        );
    }
    let failures = host.stats().sync_failures;
    assert_eq!(
        (failures["timeout"], failures["status"], failures["parse"]),
        (1, 1, 1)
    );
    // The undelivered counts go out with the next report.
    a.tick(&host, 4_000);
    let report: SyncRequest = serde_json::from_slice(&host.calls()[4].body).unwrap();
    assert_eq!(report.tenants["*"].admitted, 1);
    a.admitter.release(&host, ticket, None, 4_100_000);
}

#[test]
fn a_refused_dispatch_frees_the_lease_for_the_next_interval() {
    let host = FakeHost::default();
    let mut a = worker(&host);
    host.refuse_calls(true);
    a.tick(&host, 0);
    assert!(!a.sync.is_pending());
    assert_eq!(host.stats().sync_failures["dispatch"], 1);
    host.refuse_calls(false);
    a.tick(&host, 500);
    assert!(host.calls().is_empty(), "next call at the next interval");
    a.tick(&host, 1_000);
    assert_eq!(host.calls().len(), 1);
}

#[test]
fn answers_to_calls_nobody_waits_for_are_ignored() {
    let host = FakeHost::default();
    let mut a = worker(&host);
    a.sync
        .on_response(&host, &a.admitter, 42, Some(200), &reply(3), 0);
    assert_eq!(host.stats().syncs, 0);
    assert!(load_allowance(&host).is_none());
}

#[derive(Debug, Clone)]
enum Op {
    Tick,
    Good(u32),
    Bad(Option<u16>),
    Refuse(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Tick),
        2 => (1u32..100).prop_map(Op::Good),
        1 => prop_oneof![Just(None), Just(Some(500)), Just(Some(200))].prop_map(Op::Bad),
        1 => any::<bool>().prop_map(Op::Refuse),
    ]
}

proptest! {
    /// Three workers, any order of ticks and replies, any clock values (jumps back included):
    /// a call starts only when the previous one is answered or its lease ran out, calls are at
    /// least one interval apart (both unless the clock went back: then the next is due), each stored allowance is the previous seq + 1 and is what
    /// every worker enforces, failures change nothing, and limits never exceed the static ones.
    #[test]
    fn lease_and_allowance_sequence_hold_under_any_interleaving(
        steps in proptest::collection::vec((0usize..3, op(), 0u64..20_000), 1..120),
    ) {
        let host = FakeHost::default();
        let mut workers: Vec<Worker> = (0..3).map(|_| worker(&host)).collect();
        // When each call was claimed (dispatched, or refused by the host).
        let mut dispatched_at: Vec<u64> = Vec::new();
        let mut pending_since: [Option<u64>; 3] = [None; 3];
        let mut tokens = [0u32; 3];
        let mut seq = 0;
        // The latest clock value so far: once the clock went back, elapsed time is unknown
        // and the sync does not wait for the clock to catch up (the next call is due).
        let mut latest = 0;
        for (w, op, now) in steps {
            let went_back = now < latest;
            latest = latest.max(now);
            let calls_before = host.calls().len();
            let refused = || host.stats().sync_failures.get("dispatch").copied().unwrap_or(0);
            let refused_before = refused();
            match op {
                Op::Tick => workers[w].tick(&host, now),
                Op::Refuse(refuse) => host.refuse_calls(refuse),
                Op::Good(max) if workers[w].sync.is_pending() => {
                    workers[w].answer_call(&host, tokens[w], Some(200), &reply(max), now);
                    pending_since[w] = None;
                    seq += 1;
                    prop_assert_eq!(load_allowance(&host).unwrap().seq, seq);
                    let expected = max.min(50);
                    for other in &workers {
                        // Every worker learns of it at its next ledger change.
                        other.admitter.heartbeat(&host, now);
                        prop_assert_eq!(other.limit(&host, now), expected);
                    }
                }
                Op::Bad(status) if workers[w].sync.is_pending() => {
                    let before = load_allowance(&host);
                    workers[w].answer_call(&host, tokens[w], status, b"{}", now);
                    pending_since[w] = None;
                    prop_assert_eq!(load_allowance(&host), before);
                }
                Op::Good(_) | Op::Bad(_) => {}
            }
            let dispatched = host.calls().len() > calls_before;
            if dispatched || refused() > refused_before {
                for (i, since) in pending_since.iter().enumerate() {
                    if let Some(since) = since.filter(|_| i != w && !went_back) {
                        prop_assert!(now >= since + 250 + 1_000, "call at {now} while one from {since} is under way");
                    }
                }
                if let Some(last) = dispatched_at.last() {
                    prop_assert!(went_back || now >= last + 1_000, "calls at {last} and {now}");
                }
                dispatched_at.push(now);
                if dispatched {
                    pending_since[w] = Some(now);
                    tokens[w] = host.calls().last().unwrap().token;
                }
            }
            for worker in &workers {
                prop_assert!(worker.limit(&host, now) <= 50);
            }
            let lease: SyncLease = serde_json::from_slice(&host.get(LEASE_KEY).unwrap().0.unwrap_or_default()).unwrap_or_default();
            prop_assert!(dispatched_at.last().is_none_or(|last| lease.next_due_ms == last + 1_000));
        }
    }
}
