//! Structure-aware property fuzzing of everything the filter reads from outside (issue 15,
//! item 8): ledger records written by real admitters and then mutated past the version byte
//! (bytes flipped, integers overwritten with extreme values, cut or stretched), sync replies
//! and plugin configurations mutated field by field from valid ones. Nothing panics (in
//! tests, arithmetic overflow panics too), and what is accepted is used: admissions,
//! releases, heartbeats, windows and waits run on it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use serde_json::{json, Value};
use wipgate_admission::fake_host::FakeHost;
use wipgate_admission::ledger::{Ledger, LEDGER_KEY};
use wipgate_admission::limits::Limits;
use wipgate_admission::sync::{accept_reply, Allowance};
use wipgate_admission::{Admitter, Decision, GateConfig, Resolved, SharedData, Ticket};

/// A configuration that exercises every part of the ledger.
const FULL: &str = r#"{"max_inflight": 6, "min_inflight": 2,
    "tenants": {"acme": {"reserved": 1, "max": 4}, "*": {"max": 3}},
    "classes": {"interactive": {"reserved": 1}, "batch": {"max": 4}},
    "default_class": "interactive",
    "adaptive": {"window_ms": 50},
    "queue": {"timeout_ms": 30, "max_waiting": 8}}"#;

fn vm(host: &FakeHost, queue: u32) -> Admitter {
    let a = Admitter::new(GateConfig::parse(FULL.as_bytes()).unwrap(), host);
    a.set_wake_queue(queue);
    a
}

const TENANTS: [&[u8]; 4] = [b"acme", b"zed", b"x.y", b"\xff\x00bad"];
const CLASSES: [&[u8]; 3] = [b"interactive", b"batch", b"nope"];

/// Runs `ops` (worker, op, tenant/class pick, time step) on two VMs of one host; returns
/// the tickets still held.
fn drive(host: &FakeHost, vms: &[Admitter; 2], ops: &[(usize, u8, usize, u64)], t0_ms: u64) {
    let mut held: Vec<(usize, Ticket)> = Vec::new();
    let mut token = 0u32;
    let mut now = t0_ms;
    for &(w, op, pick, step) in ops {
        now += step;
        let a = &vms[w % 2];
        let now_us = now * 1_000;
        match op % 6 {
            0 | 1 => {
                token += 1;
                let d = a.admit_or_wait(
                    host,
                    Some(TENANTS[pick % TENANTS.len()]),
                    Some(CLASSES[pick % CLASSES.len()]),
                    token,
                    now_us,
                );
                if let Decision::Admitted(t) = d {
                    held.push((w % 2, t));
                }
            }
            2 if !held.is_empty() => {
                let (owner, t) = held.swap_remove(pick % held.len());
                let status = [200, 503, 404][pick % 3];
                vms[owner].release(host, t, Some(status), now_us);
            }
            3 => a.heartbeat(host, now),
            4 => {
                for r in a.on_deadlines(host, now_us) {
                    if let Resolved::Resume(_, t) = r {
                        held.push((w % 2, t));
                    }
                }
            }
            _ => a.leave(
                host,
                token.saturating_sub(u32::try_from(pick).unwrap_or(0)),
                now_us,
            ),
        }
    }
    for (owner, t) in held {
        vms[owner].release(host, t, Some(200), (now + 1) * 1_000);
    }
}

fn ops() -> impl Strategy<Value = Vec<(usize, u8, usize, u64)>> {
    proptest::collection::vec((0usize..2, any::<u8>(), 0usize..16, 0u64..40), 1..80)
}

/// A mutation of an encoded record: never the version byte, so decoding goes past it.
#[derive(Debug, Clone)]
enum Mutation {
    /// XOR one byte.
    Flip(usize, u8),
    /// Overwrite an integer of 1, 2, 4 or 8 bytes with an extreme value.
    Int(usize, u8, u64),
    /// Cut the record here.
    Cut(usize),
    /// Insert bytes here.
    Insert(usize, Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let extreme = prop_oneof![
        Just(0u64),
        Just(1),
        Just(u64::MAX),
        Just(u64::from(u32::MAX)),
        Just(u64::from(u16::MAX)),
        Just(0x8000_0000_0000_0000),
        any::<u64>()
    ];
    prop_oneof![
        3 => (any::<usize>(), 1u8..=255).prop_map(|(p, x)| Mutation::Flip(p, x)),
        3 => (any::<usize>(), prop_oneof![Just(1u8), Just(2), Just(4), Just(8)], extreme)
            .prop_map(|(p, w, v)| Mutation::Int(p, w, v)),
        1 => any::<usize>().prop_map(Mutation::Cut),
        1 => (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..24))
            .prop_map(|(p, b)| Mutation::Insert(p, b)),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = bytes.len();
        if len < 2 {
            break;
        }
        let at = |p: usize| 1 + p % (len - 1);
        match m {
            Mutation::Flip(p, x) => bytes[at(*p)] ^= x,
            Mutation::Int(p, width, v) => {
                let start = at(*p);
                let le = v.to_le_bytes();
                for (i, b) in le.iter().take(usize::from(*width)).enumerate() {
                    if let Some(slot) = bytes.get_mut(start + i) {
                        *slot = *b;
                    }
                }
            }
            Mutation::Cut(p) => bytes.truncate(at(*p)),
            Mutation::Insert(p, more) => {
                let start = at(*p);
                bytes.splice(start..start, more.iter().copied());
            }
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// A record written by real VMs, mutated, then found in shared data by new VMs: decoding
    /// never panics, what decodes re-encodes to itself, and the gate works on it.
    #[test]
    fn mutated_ledger_records_never_panic(
        before in ops(),
        mutations in proptest::collection::vec(mutation(), 1..6),
        after in ops(),
        t0 in prop_oneof![Just(1u64), Just(1_000_000_000u64), Just(u64::MAX / 2_000)],
    ) {
        let host = FakeHost::default();
        let vms = [vm(&host, 1), vm(&host, 2)];
        drive(&host, &vms, &before, t0);
        let valid = host.get(LEDGER_KEY).unwrap().0.unwrap();
        prop_assert!(Ledger::decode(&valid).is_ok());
        let bytes = mutate(valid, &mutations);
        if let Ok(ledger) = Ledger::decode(&bytes) {
            prop_assert_eq!(Ledger::decode(&ledger.encode()), Ok(ledger));
        }
        let fresh = FakeHost::default();
        fresh.set(LEDGER_KEY, &bytes, None).unwrap();
        let vms = [vm(&fresh, 1), vm(&fresh, 2)];
        drive(&fresh, &vms, &after, t0);
    }

    /// Sync replies mutated field by field from a valid one: no panic, and an accepted one
    /// becomes limits that admit and release.
    #[test]
    fn mutated_sync_replies_never_panic(
        edits in proptest::collection::vec((0usize..9, json_value()), 0..5),
        now in prop_oneof![Just(0u64), Just(1_000u64), Just(u64::MAX - 1)],
    ) {
        let mut reply = json!({"instance": "envoy-1", "policy_version": 2, "max_inflight": 5,
            "tenants": {"acme": {"reserved": 1, "max": 3}}, "classes": {"batch": {"max": 2}},
            "degraded": false, "stale_after_ms": 4000, "health": "ok"});
        let keys = ["instance", "policy_version", "max_inflight", "tenants", "classes",
                    "degraded", "stale_after_ms", "health", "extra"];
        for (k, v) in edits {
            reply[keys[k]] = v;
        }
        let config = GateConfig::parse(FULL.as_bytes()).unwrap();
        let body = serde_json::to_vec(&reply).unwrap();
        if let Ok(allowance) = accept_reply(Some(200), &body, "envoy-1", &config, 15_000, 1, now) {
            use_allowance(&config, &allowance, now);
        }
    }

    /// Plugin configurations mutated key by key from a valid one: no panic, and an accepted
    /// one admits and releases.
    #[test]
    fn mutated_plugin_configs_never_panic(
        edits in proptest::collection::vec((0usize..16, json_value()), 0..4),
        ops in ops(),
    ) {
        let mut config: Value = serde_json::from_str(FULL).unwrap();
        let keys = ["max_inflight", "min_inflight", "tenants", "classes", "default_class",
                    "adaptive", "queue", "retry_after_s", "tenant_header", "priority_header",
                    "max_tenants", "default_tenant", "control", "scope", "bogus", "tenants"];
        for (k, v) in edits {
            if k == 15 {
                if let Some(tenants) = config["tenants"].as_object_mut() {
                    tenants.insert("acme".to_owned(), v);
                }
            } else {
                config[keys[k]] = v;
            }
        }
        let bytes = serde_json::to_vec(&config).unwrap();
        if let Ok(parsed) = GateConfig::parse(&bytes) {
            let host = FakeHost::default();
            let a = Admitter::new(parsed.clone(), &host);
            a.set_wake_queue(1);
            let b = Admitter::new(parsed, &host);
            b.set_wake_queue(2);
            drive(&host, &[a, b], &ops, 1_000_000);
        }
    }
}

fn use_allowance(config: &GateConfig, allowance: &Allowance, now: u64) {
    let limits = Limits::build(config, Some(allowance), now);
    let host = FakeHost::default();
    let a = Admitter::new(limits.config.clone(), &host);
    let held: Vec<Ticket> = (0..8)
        .filter_map(
            |_| match a.admit(&host, Some(b"acme"), Some(b"batch"), now) {
                Decision::Admitted(t) => Some(t),
                _ => None,
            },
        )
        .collect();
    for t in held {
        a.release(&host, t, Some(200), now);
    }
}

/// JSON values of the shapes the inputs have, and their neighbours.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        prop_oneof![
            Just(0i64),
            Just(-1),
            Just(1),
            Just(i64::MAX),
            Just(i64::MIN),
            Just(65_536)
        ]
        .prop_map(Value::from),
        prop_oneof![Just(u64::MAX), Just(u64::from(u32::MAX) + 1)].prop_map(Value::from),
        prop_oneof![
            Just(0.5f64),
            Just(-0.0),
            Just(1e300),
            Just(f64::MIN_POSITIVE)
        ]
        .prop_map(Value::from),
        "[a-z*._ -]{0,8}".prop_map(Value::from),
        Just(Value::from("x".repeat(5_000))),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("reserved".to_owned()),
                    Just("max".to_owned()),
                    Just("algorithm".to_owned()),
                    Just("timeout_ms".to_owned()),
                    Just("cluster".to_owned()),
                    Just("acme".to_owned()),
                    "[a-z_*]{1,6}"
                ],
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
