//! A host clock that jumps, either way and by more than the lease, neither reclaims a live
//! VM's slots nor freezes the reclaim of a dead one, the adaptive window, a wait's deadline
//! or the sync (issue 15, item 6). Every clock value is chosen by the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::json;
use wipgate_admission::fake_host::FakeHost;
use wipgate_admission::{Admitter, Decision, GateConfig, Resolved, SyncDriver, Ticket};

const HOUR_MS: i64 = 3_600_000;
/// Far enough from 0 that an hour back is still a valid time.
const T0_MS: u64 = 100_000_000;

fn admitter(host: &FakeHost, json: &str) -> Admitter {
    Admitter::new(GateConfig::parse(json.as_bytes()).unwrap(), host)
}

fn admit(a: &Admitter, host: &FakeHost, now_ms: u64) -> Ticket {
    match a.admit(host, Some(b"t"), None, now_ms * 1_000) {
        Decision::Admitted(t) => t,
        other => panic!("expected a slot, got {other:?}"),
    }
}

fn jumped(t: u64, by: i64) -> u64 {
    t.checked_add_signed(by).unwrap()
}

#[test]
fn a_jump_either_way_reclaims_no_live_vm_and_a_dead_one_within_the_lease() {
    for by in [HOUR_MS, -HOUR_MS, 30_000, -30_000] {
        let host = FakeHost::default();
        let config = r#"{"max_inflight": 10}"#;
        let (a, b) = (admitter(&host, config), admitter(&host, config));
        let _held = [admit(&b, &host, T0_MS), admit(&b, &host, T0_MS)];
        for s in 1..=3 {
            a.heartbeat(&host, T0_MS + s * 1_000);
            b.heartbeat(&host, T0_MS + s * 1_000 + 500);
        }
        // The clock jumps between two heartbeats of each VM.
        let t1 = jumped(T0_MS + 4_000, by);
        a.heartbeat(&host, t1);
        b.heartbeat(&host, t1 + 500);
        a.heartbeat(&host, t1 + 1_000);
        assert_eq!(host.stats().reclaimed, 0, "jump {by}: B is alive");
        assert_eq!(a.inflight(&host), 2, "jump {by}");
        // Now B dies: its slots come back one lease after its last heartbeat, not an hour
        // late (nor at once).
        let mut reclaimed_at = None;
        for s in 2..=15 {
            let now = t1 + s * 1_000;
            a.heartbeat(&host, now);
            if reclaimed_at.is_none() && host.stats().reclaimed == 2 {
                reclaimed_at = Some(now - t1);
            }
        }
        let at = reclaimed_at.unwrap_or_else(|| panic!("jump {by}: B's slots never came back"));
        assert!(
            (10_000..=12_000).contains(&at),
            "jump {by}: reclaimed {at} ms after"
        );
        assert_eq!(a.inflight(&host), 0);
    }
}

#[test]
fn the_adaptive_window_keeps_closing_and_no_latency_spans_a_jump() {
    for by in [HOUR_MS, -HOUR_MS] {
        let host = FakeHost::default();
        let a = admitter(
            &host,
            r#"{"max_inflight": 20, "adaptive": {"algorithm": "aimd", "window_ms": 100}}"#,
        );
        let traffic = |from_ms: u64, for_ms: u64| {
            for t in (from_ms..from_ms + for_ms).step_by(10) {
                let ticket = admit(&a, &host, t);
                a.release(&host, ticket, Some(200), (t + 5) * 1_000);
                if t % 1_000 == 0 {
                    a.heartbeat(&host, t);
                }
            }
        };
        traffic(T0_MS, 2_000);
        // A request in flight across the jump tells no latency (an hour, or none at all).
        let across = admit(&a, &host, T0_MS + 2_000);
        let before = host.windows().len();
        let t1 = jumped(T0_MS + 2_010, by);
        a.release(&host, across, Some(200), t1 * 1_000);
        traffic(t1, 2_000);
        let windows = host.windows();
        let after = &windows[before..];
        assert!(
            after.len() >= 15,
            "jump {by}: {} windows closed in 2 s of 100 ms windows",
            after.len()
        );
        for w in after {
            assert!(w.sample.duration_ms < 1_000, "jump {by}: {:?}", w.sample);
            assert!(w.sample.p99_us < 100_000, "jump {by}: {:?}", w.sample);
        }
    }
}

#[test]
fn a_wait_still_ends_at_its_deadline_after_the_clock_went_back() {
    let host = FakeHost::default();
    let a = admitter(&host, r#"{"max_inflight": 1, "queue": {"timeout_ms": 50}}"#);
    a.set_wake_queue(1);
    let _held = admit(&a, &host, T0_MS);
    let d = a.admit_or_wait(&host, Some(b"t"), None, 7, T0_MS * 1_000);
    assert!(matches!(d, Decision::Waiting));
    let t1 = jumped(T0_MS + 10, -HOUR_MS);
    // The jump is noticed at t1: the wait keeps what it had left at the VM's last reading
    // before it (50 ms; the 10 ms across the jump cannot be told from the jump), not an hour.
    assert!(a.on_deadlines(&host, t1 * 1_000).is_empty());
    assert!(a.on_deadlines(&host, (t1 + 30) * 1_000).is_empty());
    let resolved = a.on_deadlines(&host, (t1 + 50) * 1_000);
    assert!(
        matches!(resolved.as_slice(), [Resolved::Reject(7, _)]),
        "the wait kept its time left: {resolved:?}"
    );
    assert!(a.next_deadline_ms().is_none());
}

const SYNCED: &str = r#"{"max_inflight": 50, "control": {"cluster": "wipgate_control",
    "interval_ms": 1000, "timeout_ms": 250, "stale_after_ms": 5000}}"#;

fn reply() -> Vec<u8> {
    json!({"instance": "envoy-1", "policy_version": 2, "max_inflight": 7,
           "tenants": {}, "classes": {}, "degraded": false, "stale_after_ms": 4000})
    .to_string()
    .into_bytes()
}

#[test]
fn the_sync_goes_on_after_the_clock_went_back_and_no_allowance_outlives_it() {
    let host = FakeHost::default();
    let config = GateConfig::parse(SYNCED.as_bytes()).unwrap();
    let mut s = SyncDriver::new(config.control.clone().unwrap(), "envoy-1".to_owned());
    let a = Admitter::new(config, &host);
    let sync = |s: &mut SyncDriver, now: u64| {
        a.heartbeat(&host, now);
        let calls = host.calls().len();
        s.on_tick(&host, &a, now);
        if host.calls().len() > calls {
            let token = host.calls().last().unwrap().token;
            s.on_response(&host, &a, token, Some(200), &reply(), now + 10);
            true
        } else {
            false
        }
    };
    assert!(sync(&mut s, T0_MS));
    assert_eq!(a.limits(&host, T0_MS + 20).config.max_inflight, 7);
    let t1 = jumped(T0_MS + 500, -HOUR_MS);
    // The allowance was stamped an hour ahead: it is not taken as fresh for an hour more,
    // but held as past its stale window (never the static 50: docs/fleet-sync.md).
    let held = a.limits(&host, t1);
    assert_eq!(
        (held.config.max_inflight, held.valid_until_ms),
        (7, u64::MAX),
        "a stale stamp is stale"
    );
    assert!(
        sync(&mut s, t1),
        "the next call is due now, not when the clock has caught up"
    );
    assert_eq!(a.limits(&host, t1 + 20).config.max_inflight, 7);
    assert!(!sync(&mut s, t1 + 500), "one call per interval again");
    assert!(sync(&mut s, t1 + 1_000));
}
