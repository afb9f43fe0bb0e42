//! One ledger per plugin configuration (issue 15, item 1): two configurations on one host
//! (one `vm_id`) keep separate limits, configurations of one `scope` share theirs, and a VM
//! without adaptive limits in that scope leaves the adaptive state alone.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use wipgate_admission::fake_host::FakeHost;
use wipgate_admission::scope::{namespace, Scoped};
use wipgate_admission::{Admitter, Decision, GateConfig, Ticket};

/// A VM of the plugin configured with `json` under root id `wipgate`, on the Envoy `host`.
fn vm<'h>(host: &'h FakeHost, json: &str) -> (Scoped<&'h FakeHost>, Admitter) {
    let config = GateConfig::parse(json.as_bytes()).unwrap();
    let scoped = Scoped::new(host, namespace("wipgate", &config, json.as_bytes()));
    let admitter = Admitter::new(config, &scoped);
    (scoped, admitter)
}

fn admit(vm: &(Scoped<&FakeHost>, Admitter), now_ms: u64) -> Option<Ticket> {
    match vm.1.admit(&vm.0, Some(b"t"), None, now_ms * 1_000) {
        Decision::Admitted(t) => Some(t),
        _ => None,
    }
}

#[test]
fn two_configurations_on_one_vm_id_keep_separate_limits() {
    let host = FakeHost::default();
    let two = vm(&host, r#"{"max_inflight": 2}"#);
    let three = vm(&host, r#"{"max_inflight": 3}"#);
    let held: Vec<Ticket> = (0..2).map(|_| admit(&two, 1_000).unwrap()).collect();
    assert!(admit(&two, 1_000).is_none(), "the first is full");
    let other: Vec<Ticket> = (0..3).map(|_| admit(&three, 1_000).unwrap()).collect();
    assert!(admit(&three, 1_000).is_none());
    // The Envoy's stats add the two ledgers up.
    assert_eq!(host.stats().inflight, 5);
    // A second VM of the first configuration (another worker) shares its limit.
    let two_again = vm(&host, "{ \"max_inflight\": 2 }");
    assert!(admit(&two_again, 1_000).is_none());
    for t in held {
        two.1.release(&two.0, t, Some(200), 2_000_000);
    }
    let again = admit(&two_again, 2_000).unwrap();
    assert_eq!(three.1.inflight(&three.0), 3);
    assert_eq!(host.stats().inflight, 4);
    two_again.1.release(&two_again.0, again, None, 3_000_000);
    for t in other {
        three.1.release(&three.0, t, None, 3_000_000);
    }
    let stats = host.stats();
    assert_eq!((stats.inflight, stats.gauge_underflows), (0, 0));
}

#[test]
fn one_scope_shares_its_limit_and_a_vm_without_adaptive_keeps_the_adaptive_state() {
    let host = FakeHost::default();
    let adaptive = vm(
        &host,
        r#"{"max_inflight": 40, "min_inflight": 4, "scope": "db",
            "adaptive": {"algorithm": "aimd", "window_ms": 100}}"#,
    );
    // The old configuration of the same scope, draining after a listener update.
    let old = vm(&host, r#"{"max_inflight": 40, "scope": "db"}"#);
    let held = admit(&old, 1_000).unwrap();
    let mut limits = Vec::new();
    for i in 0..20 {
        let now = 1_000 + i * 100;
        // Demand above the limit: admit until rejected, then give everything back.
        let tickets: Vec<Ticket> = std::iter::from_fn(|| admit(&adaptive, now)).collect();
        limits.push(tickets.len() + 1);
        for t in tickets {
            adaptive
                .1
                .release(&adaptive.0, t, Some(200), (now + 50) * 1_000);
        }
        old.1.heartbeat(&old.0, now + 60);
    }
    assert_eq!(
        limits[0], 4,
        "cold start at min_inflight, the old VM's request counted"
    );
    assert!(
        limits.last().unwrap() > &16,
        "the limit grew despite the old VM's heartbeats: {limits:?}"
    );
    // The old VM keeps its own limit (40), not the adaptive one.
    let more: Vec<Ticket> = std::iter::from_fn(|| admit(&old, 3_500)).collect();
    assert_eq!(more.len(), 39);
    drop((held, more));
}
