//! The default adaptive limit ("knee") in front of simulated bottlenecks, behind the real
//! admitter: it finds the knee without being told, keeps it under overload, follows a slower
//! resource, and never turns away light load. Loose bounds on purpose: the physics, not one
//! benchmark's numbers (the figures with real Envoy are in bench/report.md).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod sim;

use sim::{Model, Scenario};

const DEFAULT: &str = r#"{"max_inflight": 200, "adaptive": {}}"#;

fn collapse() -> Model {
    Model::Collapse {
        c: 10,
        service_us: 25_000.0,
        slope: 2.0,
    }
}

fn describe(name: &str, s: &Scenario, r: &sim::Run) {
    let cap = s.model.capacity_per_s();
    eprintln!(
        "{name}: goodput {:.2} of capacity, rejected {:.2}%, p50 {:.1} ms p99 {:.1} ms, limits {:?}",
        r.goodput_per_s / cap,
        100.0 * r.rejected as f64 / r.sent.max(1) as f64,
        r.p(0.5) / 1e3,
        r.p(0.99) / 1e3,
        &r.limits[..r.limits.len().min(40)]
    );
}

#[test]
fn settles_at_the_knee_of_a_collapsing_bottleneck() {
    for load in [2.0, 3.0, 10.0] {
        let s = Scenario::new(collapse(), load, DEFAULT);
        let r = s.run();
        describe(&format!("collapse {load}x"), &s, &r);
        let cap = s.model.capacity_per_s();
        assert!(
            r.goodput_per_s >= 0.9 * cap,
            "goodput {:.2}",
            r.goodput_per_s / cap
        );
        for t in [12.0, 18.0, 24.0, 30.0, 36.0, 39.0] {
            let l = r.limit_at(t).unwrap();
            assert!((7..=13).contains(&l), "limit {l} at {t} s");
        }
        assert!(
            r.reversals(15.0, 35.0) <= 4,
            "{} reversals in 20 s",
            r.reversals(15.0, 35.0)
        );
    }
}

#[test]
fn keeps_a_pure_queue_busy_without_queueing() {
    let s = Scenario::new(
        Model::Queue {
            c: 10,
            service_us: 25_000.0,
        },
        3.0,
        DEFAULT,
    );
    let r = s.run();
    describe("queue 3x", &s, &r);
    let cap = s.model.capacity_per_s();
    assert!(r.goodput_per_s >= 0.95 * cap);
    assert!(r.p(0.99) <= 1.5 * 25_000.0 * 1.2, "p99 {}", r.p(0.99));
}

#[test]
fn light_load_is_never_turned_away_from_the_first_second_on() {
    for model in [
        collapse(),
        Model::Queue {
            c: 10,
            service_us: 25_000.0,
        },
    ] {
        let s = Scenario::new(model, 0.5, DEFAULT);
        let r = s.run();
        describe("0.5x", &s, &r);
        assert!(
            r.rejected as f64 <= 0.001 * r.sent as f64,
            "{} of {}",
            r.rejected,
            r.sent
        );
    }
}

#[test]
fn follows_a_resource_that_slows_down_and_recovers() {
    let mut s = Scenario::new(collapse(), 3.0, DEFAULT);
    s.slowdown = Box::new(|t| if (15.0..25.0).contains(&t) { 2.0 } else { 1.0 });
    let r = s.run();
    describe("slower 15-25 s", &s, &r);
    // The knee in flight does not move (10 at once, each slower): in flight stays near it.
    for t in [17.0, 20.0, 24.5, 27.0, 30.0] {
        let l = r.limit_at(t).unwrap();
        assert!((7..=13).contains(&l), "limit {l} at {t} s");
    }
}

#[test]
fn heavy_tailed_service_keeps_most_of_its_capacity() {
    let s = Scenario::new(
        Model::HeavyTail {
            c: 10,
            service_us: 25_000.0,
        },
        3.0,
        DEFAULT,
    );
    let r = s.run();
    describe("heavy tail 3x", &s, &r);
    let cap = s.model.capacity_per_s();
    assert!(
        r.goodput_per_s >= 0.85 * cap,
        "goodput {:.2}",
        r.goodput_per_s / cap
    );
}

#[test]
fn slow_requests_behind_a_low_limit_still_move_it() {
    // 200 ms per request: at a limit of 2, a 125 ms window finishes one request at most.
    // Windows too thin to judge stay open until they are not.
    let model = Model::Collapse {
        c: 20,
        service_us: 200_000.0,
        slope: 2.0,
    };
    let s = Scenario::new(model, 10.0, DEFAULT);
    let r = s.run();
    describe("slow, 10x", &s, &r);
    let late = r.limit_at(39.0).unwrap();
    assert!((14..=26).contains(&late), "limit {late} at 39 s");
}

/// Normal load (half the capacity) for 1.5 s, then a flood for 5 s, as a benchmark point: the
/// goodput of those first 5 s is mostly how fast the limit gets from where normal load left
/// it to the knee.
fn flood_after_normal_load(model: Model, load: f64, config: &str) -> (Scenario, sim::Run) {
    let mut s = Scenario::new(model, load, config);
    s.load = Box::new(move |t| if t < 1.5 { 0.5 } else { load });
    s.warmup_s = 1.5;
    s.duration_s = 6.5;
    let r = s.run();
    (s, r)
}

#[test]
fn a_flood_after_normal_load_reaches_the_knee_within_seconds() {
    let queue = Model::Queue {
        c: 10,
        service_us: 25_000.0,
    };
    for load in [2.0, 3.0, 10.0] {
        for (name, model, least) in [("collapse", collapse(), 0.8), ("queue", queue, 0.9)] {
            let (s, r) = flood_after_normal_load(model, load, DEFAULT);
            describe(&format!("flood {name} {load}x"), &s, &r);
            let goodput = r.goodput_per_s / s.model.capacity_per_s();
            assert!(goodput >= least, "{name} {load}x: goodput {goodput:.2}");
            // The drain stops once latency is back at no load: never far below the knee.
            let lowest = r
                .limits
                .iter()
                .filter(|(t, _)| *t > 3.0)
                .map(|(_, l)| *l)
                .min();
            assert!(lowest >= Some(7), "{name} {load}x: down to {lowest:?}");
        }
    }
}
