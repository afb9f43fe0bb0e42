//! A VM that traps recovers (issue 15, item 2): with `failure_policy: FAIL_RELOAD` (as the
//! shipped configs have it) and the test-only build whose VM traps on a marker header
//! (`make filter-trap`), a worker's VM traps under load; Envoy serves through a reloaded VM
//! within 2 s, the dead VM's slots come back within the lease, and the gauges end at 0.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::json;
use wipgate_e2e::blocking_http::request;
use wipgate_e2e::{require_envoy, trap_wasm_path, wait_until, Envoy, EnvoyConfig, Upstream};

const TIMEOUT: Duration = Duration::from_secs(10);

/// One GET with extra headers: its status (0: no HTTP answer) and whether wipgate decided it.
fn get(addr: SocketAddr, headers: &[(&str, &str)]) -> (u16, bool) {
    let mut all = vec![("connection", "close")];
    all.extend_from_slice(headers);
    match request(addr, "GET", "/trap", &all, b"", TIMEOUT) {
        Ok(r) => (r.status, r.header("x-wipgate-reason").is_some()),
        Err(_) => (0, false),
    }
}

#[test]
#[ignore = "needs Envoy"]
fn a_worker_vm_that_traps_is_reloaded_and_its_slots_come_back() {
    require_envoy();
    let wasm = trap_wasm_path();
    assert!(
        wasm.is_file(),
        "{} is missing: run `make filter-trap`",
        wasm.display()
    );
    let upstream = Upstream::start_default().unwrap();
    let mut cfg =
        EnvoyConfig::new(upstream.addr()).with_filter(json!({"max_inflight": 4}).to_string());
    cfg.wasm_path = wasm;
    cfg.failure_policy = "FAIL_RELOAD".to_owned();
    cfg.exact_balance = true;
    let envoy = Envoy::start(&cfg).unwrap();
    let addr = envoy.listener_addr();

    let stop = AtomicBool::new(false);
    let answers: Mutex<Vec<(Instant, u16, bool)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        // One slow request per worker holds a slot across the trap.
        let slow: Vec<_> = (0..2)
            .map(|_| s.spawn(move || get(addr, &[("x-delay-ms", "4000")])))
            .collect();
        wait_until(TIMEOUT, "two slow requests at the upstream", || {
            upstream.inflight() == 2
        })
        .unwrap();
        // Load on both workers, recorded with the time of each answer.
        let load = s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let (status, decided) = get(addr, &[("x-delay-ms", "20")]);
                answers
                    .lock()
                    .unwrap()
                    .push((Instant::now(), status, decided));
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        let trapped_at = Instant::now();
        let (trap_status, _) = get(addr, &[("x-wipgate-test-trap", "1")]);
        std::thread::sleep(Duration::from_millis(3_000));
        stop.store(true, Ordering::Relaxed);
        load.join().unwrap();
        let answers = answers.lock().unwrap().clone();
        let after = |d: Duration| answers.iter().filter(move |(t, _, _)| *t >= trapped_at + d);
        let failed_late: Vec<_> = after(Duration::from_secs(2))
            .filter(|(_, status, decided)| *status != 200 && !*decided)
            .collect();
        eprintln!(
            "trap request answered {trap_status}; {} answers under load, {} within 2 s of the trap not 200 ({:?})",
            answers.len(),
            after(Duration::ZERO)
                .filter(|(t, s, _)| *t < trapped_at + Duration::from_secs(2) && *s != 200)
                .count(),
            after(Duration::ZERO).map(|(_, s, _)| *s).take(40).collect::<Vec<_>>()
        );
        assert!(after(Duration::from_secs(2)).count() > 10, "load went on");
        assert!(
            failed_late.is_empty(),
            "failures 2 s after the trap: {failed_late:?}"
        );
        for h in slow {
            h.join().unwrap();
        }
    });
    let log = envoy.log();
    assert!(
        log.contains("unreachable") || log.contains("Function: proxy_on_request_headers failed"),
        "the VM did not trap:\n{log}"
    );
    // The dead VM's slot (its slow request) comes back within the lease (10 s) after its
    // last heartbeat; the gauges follow the ledger to 0.
    wait_until(
        Duration::from_secs(15),
        "slots reclaimed and gauges at 0",
        || {
            envoy.wasm_stat("wipgate.rq_inflight") == Some(0)
                && envoy.wasm_stat("wipgate.slots_reclaimed").unwrap_or(0) >= 1
                && upstream.inflight() == 0
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}: rq_inflight {:?}, slots_reclaimed {:?}",
            envoy.wasm_stat("wipgate.rq_inflight"),
            envoy.wasm_stat("wipgate.slots_reclaimed")
        )
    });
    // No slot is held: the whole limit is free again.
    let full: Vec<(u16, bool)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| s.spawn(move || get(addr, &[("x-delay-ms", "500")])))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(full.iter().all(|(s, _)| *s == 200), "{full:?}");
}
