//! `make demo`: the same overload three times in front of a demo upstream of limited
//! capacity: through a bare Envoy; through Envoy running `envoy/envoy.yaml` (wipgate told the
//! capacity, synced with the control service in memory; halfway through, the noisy tenant's
//! limit is lowered through the control service's REST API); and through wipgate's default
//! adaptive limit (`"adaptive": {}`), not told the capacity, with the bounded wait (`queue`)
//! so a request that finds no slot waits up to two service times for one instead of being
//! turned away at once. Then a summary: what was admitted
//! and rejected, overall and per tenant, what the upstream went through, the noisy tenant
//! before and after the change, and a plot of the upstream's in-flight over time
//! (`target/wipgate-demo.svg`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;
use wipgate_e2e::processes::ControlService;
use wipgate_e2e::sampler::Sampler;
use wipgate_e2e::svg_chart::{line_chart, Line};
use wipgate_e2e::upstream::UpstreamStats;
use wipgate_e2e::{
    open_loop_with_timeout, wait_until, wait_until_async, Envoy, EnvoyConfig, Outcome, RequestSpec,
    Summary, Upstream, UpstreamOptions,
};

/// The constrained resource: this many requests served at once, each taking `SERVICE`;
/// the rest queue inside it, like connections waiting for a database pool.
const CAPACITY: usize = 16;
const SERVICE: Duration = Duration::from_millis(50);
/// Offered load as a multiple of what the upstream can serve, for this long.
const OVERLOAD: f64 = 2.0;
const RUN: Duration = Duration::from_secs(6);
/// The two tenants of `envoy/envoy.yaml`: `noisy` sends three requests for each of `shop`'s.
const NOISY: &str = "noisy";
const SHOP: &str = "shop";
/// Halfway through, the noisy tenant's fleet limit goes down to this.
const NOISY_MAX_AFTER: u32 = 3;
/// The demo's clients give up after this long.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// The Envoy config the demo runs, as shipped.
const ENVOY_YAML: &str = include_str!("../../../envoy/envoy.yaml");
/// The adaptive run: a ceiling such as the database pool (4x what the upstream serves at
/// once), and the default adaptive limit.
const ADAPTIVE_MAX: u32 = 64;
/// How often the upstream's in-flight (and the adaptive limit) is sampled for the plot.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// Where the plot goes.
const PLOT: &str = "target/wipgate-demo.svg";

struct Phase {
    name: String,
    outcomes: Vec<Outcome>,
    upstream_max: usize,
    upstream_max_of: BTreeMap<String, usize>,
    stats: Option<String>,
    /// (seconds since the load started, in flight at the upstream, adaptive limit).
    trace: Vec<(f64, usize, Option<u64>)>,
}

/// Samples the upstream's in-flight, and the adaptive limit when `envoy` is given, every
/// `SAMPLE_EVERY`.
fn tracer(
    upstream: &Arc<UpstreamStats>,
    envoy: Option<Arc<Envoy>>,
) -> Sampler<(usize, Option<u64>)> {
    let upstream = Arc::clone(upstream);
    Sampler::start(Instant::now(), SAMPLE_EVERY, move || {
        let limit = envoy
            .as_ref()
            .and_then(|e| e.wasm_stat("wipgate.adaptive.limit"));
        Some((upstream.inflight(), limit))
    })
}

/// What a tracer read, flattened for the plot.
fn flatten(samples: Vec<(f64, (usize, Option<u64>))>) -> Vec<(f64, usize, Option<u64>)> {
    samples.into_iter().map(|(t, (n, l))| (t, n, l)).collect()
}

/// The noisy tenant around the limit change.
struct Change {
    propagated: Duration,
    before: (u64, u64, usize),
    after: (u64, u64, usize),
}

fn main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let capacity_rps = CAPACITY as f64 / SERVICE.as_secs_f64();
    let rate = capacity_rps * OVERLOAD;
    println!("wipgate demo");
    println!(
        "  upstream: serves {CAPACITY} requests at once, {} ms each (capacity {capacity_rps:.0} req/s); excess queues inside it",
        SERVICE.as_millis()
    );
    println!(
        "  load:     open loop, {rate:.0} req/s ({OVERLOAD:.1}x capacity) for {} s, through Envoy --concurrency 2",
        RUN.as_secs()
    );
    println!("  tenants:  {NOISY} sends 3 of every 4 requests, {SHOP} the 4th (x-tenant-id)");
    println!("  wipgate:  envoy/envoy.yaml (told: max_inflight 16; noisy max 6; shop reserved 6), synced with wipgate-control");
    println!(
        "            and {}: not told the capacity, it finds the knee; the excess waits up to {WAIT_MS} ms for a slot",
        adaptive_config()
    );
    let bare = runtime.block_on(bare_phase(rate))?;
    let (gated, change) = runtime.block_on(wipgate_phase(rate))?;
    let adaptive = runtime.block_on(adaptive_phase(rate))?;
    println!();
    let phases = [bare, gated, adaptive];
    print_table(&phases);
    print_change(&change);
    write_plot(&phases)?;
    Ok(())
}

fn demo_upstream() -> Result<Upstream> {
    Upstream::start(UpstreamOptions {
        capacity: Some(CAPACITY),
        service_time: SERVICE,
        ..UpstreamOptions::default()
    })
}

/// `envoy/envoy.yaml` on free ports, with the freshly built module.
fn demo_bootstrap(upstream: &Upstream, control: &ControlService, wasm: &str) -> String {
    ENVOY_YAML
        .replace(
            "address: 0.0.0.0, port_value: 10000",
            "address: 127.0.0.1, port_value: 0",
        )
        .replace("port_value: 9901", "port_value: 0")
        .replace(
            "port_value: 8081",
            &format!("port_value: {}", upstream.addr().port()),
        )
        .replace(
            "port_value: 8090",
            &format!("port_value: {}", control.addr().port()),
        )
        .replace("/etc/wipgate/wipgate_filter.wasm", wasm)
}

async fn bare_phase(rate: f64) -> Result<Phase> {
    let upstream = demo_upstream()?;
    let mut cfg = EnvoyConfig::new(upstream.addr());
    cfg.route_timeout = CLIENT_TIMEOUT * 2;
    let mut envoy = Envoy::start(&cfg).context("starting the bare Envoy")?;
    eprintln!("  running: bare Envoy ...");
    let tracer = tracer(upstream.stats(), None);
    let outcomes = load(&envoy, rate).await;
    let trace = flatten(tracer.finish());
    envoy.stop()?;
    let mut bare = phase(
        "bare Envoy (no limit)",
        outcomes,
        &upstream,
        upstream.max_inflight(),
        None,
    );
    bare.trace = trace;
    Ok(bare)
}

/// How long a request may wait for a slot in the adaptive run: two service times.
const WAIT_MS: u64 = 100;

/// The adaptive run's configuration.
fn adaptive_config() -> serde_json::Value {
    json!({"max_inflight": ADAPTIVE_MAX, "adaptive": {}, "queue": {"timeout_ms": WAIT_MS, "order": "lifo_when_overloaded"}})
}

/// The default adaptive limit, not told the upstream's capacity, with the bounded wait.
async fn adaptive_phase(rate: f64) -> Result<Phase> {
    let upstream = demo_upstream()?;
    let config = adaptive_config();
    let mut cfg = EnvoyConfig::new(upstream.addr()).with_filter(config.to_string());
    cfg.route_timeout = CLIENT_TIMEOUT * 2;
    let envoy = Arc::new(Envoy::start(&cfg).context("starting Envoy with the adaptive limit")?);
    eprintln!("  running: Envoy + wipgate adaptive ...");
    let tracer = tracer(upstream.stats(), Some(Arc::clone(&envoy)));
    let outcomes = load(&envoy, rate).await;
    let trace = flatten(tracer.finish());
    let stat = |name: &str| {
        envoy
            .wasm_stat(&format!("wipgate.adaptive.{name}"))
            .map_or_else(|| "-".to_owned(), |v| v.to_string())
    };
    let queue = |name: &str| {
        envoy
            .wasm_stat(&format!("wipgate.queue.{name}"))
            .map_or_else(|| "-".to_owned(), |v| v.to_string())
    };
    let stats = Some(format!(
        "adaptive limit {} (knee estimate {}, no-load latency {} us, delivered {}/s); waited and went ahead {}, waits timed out {}",
        stat("limit"),
        stat("knee_estimate"),
        stat("no_load_latency_us"),
        stat("delivery_rate_per_s"),
        queue("handoffs"),
        queue("timeouts"),
    ));
    let mut adaptive = phase(
        "wipgate adaptive + wait",
        outcomes,
        &upstream,
        upstream.max_inflight(),
        stats,
    );
    adaptive.trace = trace;
    if let Ok(mut envoy) = Arc::try_unwrap(envoy) {
        envoy.stop()?;
    }
    Ok(adaptive)
}

/// The upstream's in-flight over time in each run, and the adaptive limit: an SVG file.
fn write_plot(phases: &[Phase]) -> Result<()> {
    let colors = ["#d62728", "#1f77b4", "#2ca02c"];
    let mut lines: Vec<Line> = phases
        .iter()
        .zip(colors)
        .map(|(p, color)| Line {
            name: format!("{}: in flight at the upstream", p.name),
            color,
            dashed: false,
            #[allow(clippy::cast_precision_loss)]
            points: p
                .trace
                .iter()
                .filter(|(t, _, _)| *t <= RUN.as_secs_f64())
                .map(|(t, n, _)| (*t, *n as f64))
                .collect(),
        })
        .collect();
    if let Some(adaptive) = phases.last() {
        #[allow(clippy::cast_precision_loss)]
        let limit: Vec<(f64, f64)> = adaptive
            .trace
            .iter()
            .filter(|(t, _, _)| *t <= RUN.as_secs_f64())
            // 0 until the first window closes: no limit to draw yet.
            .filter_map(|(t, _, l)| l.filter(|l| *l > 0).map(|l| (*t, l as f64)))
            .collect();
        lines.push(Line {
            name: "wipgate adaptive: its limit".into(),
            color: "#2ca02c",
            dashed: true,
            points: limit,
        });
    }
    let run_s = RUN.as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    lines.push(Line {
        name: format!("the upstream's capacity ({CAPACITY} at once)"),
        color: "#7f7f7f",
        dashed: true,
        points: vec![(0.0, CAPACITY as f64), (run_s, CAPACITY as f64)],
    });
    #[allow(clippy::cast_precision_loss)]
    let svg = line_chart(
        &format!("{OVERLOAD:.0}x overload: requests in flight at the upstream"),
        "seconds since the load started",
        "in flight (clipped)",
        (CAPACITY * 3) as f64,
        &lines,
    );
    std::fs::write(PLOT, svg).with_context(|| format!("writing {PLOT}"))?;
    println!(
        "
plot: {PLOT} (in flight at the upstream over time, each run; the adaptive limit dashed)"
    );
    Ok(())
}

async fn wipgate_phase(rate: f64) -> Result<(Phase, Change)> {
    let upstream = demo_upstream()?;
    let control = ControlService::start(None, &[]).context("starting wipgate-control")?;
    let mut cfg = EnvoyConfig::new(upstream.addr());
    cfg.bootstrap = Some(demo_bootstrap(
        &upstream,
        &control,
        &cfg.wasm_path.display().to_string(),
    ));
    let mut envoy = Envoy::start(&cfg).context("starting Envoy with envoy/envoy.yaml")?;
    let syncs = |e: &Envoy| e.wasm_stat("wipgate.sync.success").unwrap_or(0);
    wait_until(Duration::from_secs(10), "the first sync", || {
        syncs(&envoy) >= 1
    })?;
    eprintln!("  running: Envoy + wipgate ...");
    let tracer = tracer(upstream.stats(), None);
    let (outcomes, change) = tokio::join!(
        load(&envoy, rate),
        change_midway(&envoy, &control, upstream.stats())
    );
    let trace = flatten(tracer.finish());
    let change = change?;
    let stats = envoy_stats(&envoy);
    envoy.stop()?;
    let max = change.before.2.max(upstream.max_inflight());
    let mut gated = phase("wipgate told (16)", outcomes, &upstream, max, stats);
    gated.trace = trace;
    gated
        .upstream_max_of
        .insert(NOISY.to_owned(), change.before.2.max(change.after.2));
    Ok((gated, change))
}

/// Halfway through the load: `PUT /v1/tenants/noisy {"max": 3}`, and the noisy tenant's
/// counts before and after.
async fn change_midway(
    envoy: &Envoy,
    control: &ControlService,
    upstream: &Arc<UpstreamStats>,
) -> Result<Change> {
    let noisy = |e: &Envoy| {
        let admitted = e.wasm_stat("wipgate.tenant.noisy.rq_admitted").unwrap_or(0);
        let rejected = e
            .wasm_stat("wipgate.tenant.noisy.rq_rejected.reason.tenant_limit")
            .unwrap_or(0);
        (admitted, rejected)
    };
    // Halfway through the load: the first half under the old limit is part of the show.
    tokio::time::sleep(RUN / 2).await;
    let (admitted, rejected) = noisy(envoy);
    let before = (admitted, rejected, upstream.tenant(NOISY).max_inflight);
    let syncs = envoy.wasm_stat("wipgate.sync.success").unwrap_or(0);
    let put = Instant::now();
    let (status, body) = control.admin(
        "PUT",
        "/v1/tenants/noisy",
        &json!({"reserved": 0, "max": NOISY_MAX_AFTER}),
    )?;
    anyhow::ensure!(status == 200, "PUT /v1/tenants/noisy: {status} {body}");
    // The next sync carries the new limit; ZERO (shown as such) if none came in 2 s.
    let propagated = wait_until_async(Duration::from_secs(2), "the next sync", || {
        envoy.wasm_stat("wipgate.sync.success").unwrap_or(0) > syncs
    })
    .await
    .map_or(Duration::ZERO, |()| put.elapsed());
    let second_half_ends = tokio::time::Instant::now() + RUN / 2;
    // Requests admitted under the old limit finish within a service time or two; the
    // "after" figures count from when the noisy tenant is within its new limit.
    let _ = wait_until_async(SERVICE * 4, "noisy within its new limit", || {
        upstream.tenant(NOISY).inflight <= NOISY_MAX_AFTER as usize
    })
    .await;
    upstream.reset();
    // The rest of the run's second half: the load itself is what is shown.
    tokio::time::sleep_until(second_half_ends).await;
    let (admitted_end, rejected_end) = noisy(envoy);
    let after = (
        admitted_end - before.0,
        rejected_end - before.1,
        upstream.tenant(NOISY).max_inflight,
    );
    Ok(Change {
        propagated,
        before,
        after,
    })
}

async fn load(envoy: &Envoy, rate: f64) -> Vec<Outcome> {
    let spec = |i: usize| {
        let tenant = if i % 4 == 3 { SHOP } else { NOISY };
        RequestSpec::get(format!("/order/{i}")).tenant(tenant)
    };
    open_loop_with_timeout(envoy.listener_addr(), rate, RUN, CLIENT_TIMEOUT, spec).await
}

fn phase(
    name: &str,
    outcomes: Vec<Outcome>,
    upstream: &Upstream,
    max: usize,
    stats: Option<String>,
) -> Phase {
    Phase {
        name: name.to_owned(),
        outcomes,
        upstream_max: max,
        upstream_max_of: [NOISY, SHOP]
            .map(|t| (t.to_owned(), upstream.max_inflight_of(t)))
            .into(),
        stats,
        trace: Vec::new(),
    }
}

/// The filter's own account, read from Envoy's stats once the load is over.
fn envoy_stats(envoy: &Envoy) -> Option<String> {
    let _ = wait_until(Duration::from_secs(5), "in-flight back at 0", || {
        envoy.wasm_stat("wipgate.rq_inflight") == Some(0)
    });
    let stat = |name: &str| {
        envoy
            .wasm_stat(name)
            .map_or_else(|| "-".to_owned(), |v| v.to_string())
    };
    Some(format!(
        "wipgate.rq_admitted {}, wipgate.rq_rejected.reason.wip_limit {}, \
         wipgate.tenant.noisy.rq_rejected.reason.tenant_limit {}, wipgate.sync.success {}, \
         wipgate.rq_inflight after the run {}",
        stat("wipgate.rq_admitted"),
        stat("wipgate.rq_rejected.reason.wip_limit"),
        stat("wipgate.tenant.noisy.rq_rejected.reason.tenant_limit"),
        stat("wipgate.sync.success"),
        stat("wipgate.rq_inflight"),
    ))
}

fn ms(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{:.2} s", d.as_secs_f64())
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    }
}

fn print_table(phases: &[Phase]) {
    print_rows(phases, None);
    for tenant in [NOISY, SHOP] {
        println!("\ntenant {tenant}:");
        print_rows(phases, Some(tenant));
    }
    print_details(phases);
}

fn print_rows(phases: &[Phase], tenant: Option<&str>) {
    println!(
        "{:<24} {:>6} {:>8} {:>9} {:>6} {:>10} {:>10} {:>10} {:>10} {:>14}",
        "",
        "sent",
        "admitted",
        "rejected",
        "failed",
        "ok p50",
        "ok p99",
        "rej p50",
        "rej p99",
        "upstream max"
    );
    for phase in phases {
        let mine: Vec<Outcome> = phase
            .outcomes
            .iter()
            .filter(|o| tenant.is_none() || o.tenant.as_deref() == tenant)
            .cloned()
            .collect();
        let ok: Vec<Outcome> = mine.iter().filter(|o| o.is_success()).cloned().collect();
        let rejected: Vec<Outcome> = mine
            .iter()
            .filter(|o| o.reason().is_some())
            .cloned()
            .collect();
        let failed = mine.len() - ok.len() - rejected.len();
        let upstream = match tenant {
            None => format!("{} / cap {CAPACITY}", phase.upstream_max),
            Some(t) => phase
                .upstream_max_of
                .get(t)
                .map_or_else(String::new, ToString::to_string),
        };
        let (ok, rej) = (Summary::of(&ok), Summary::of(&rejected));
        let dash = |s: &Summary, d: Duration| if s.count == 0 { "-".to_owned() } else { ms(d) };
        println!(
            "{:<24} {:>6} {:>8} {:>9} {:>6} {:>10} {:>10} {:>10} {:>10} {:>14}",
            phase.name,
            mine.len(),
            ok.count,
            rej.count,
            failed,
            dash(&ok, ok.p50),
            dash(&ok, ok.p99),
            dash(&rej, rej.p50),
            dash(&rej, rej.p99),
            upstream,
        );
    }
}

fn print_details(phases: &[Phase]) {
    println!();
    for phase in phases {
        let reasons = Summary::of(&phase.outcomes).by_reason;
        let reasons: Vec<String> = reasons.iter().map(|(r, n)| format!("{r} {n}")).collect();
        println!("{}:", phase.name);
        if !reasons.is_empty() {
            println!("  rejected by reason: {}", reasons.join(", "));
        }
        if let Some(stats) = &phase.stats {
            println!("  Envoy stats: {stats}");
        }
        let failed: Vec<&Outcome> = phase
            .outcomes
            .iter()
            .filter(|o| !o.is_success() && o.reason().is_none())
            .collect();
        if let Some(first) = failed.first() {
            println!(
                "  failed (no answer in {} s, or not 2xx): {}, e.g. {}",
                CLIENT_TIMEOUT.as_secs(),
                failed.len(),
                first.error.as_deref().unwrap_or("bad status")
            );
        }
    }
}

fn print_change(change: &Change) {
    println!(
        "\nlimit change halfway: PUT /v1/tenants/{NOISY} {{\"reserved\": 0, \"max\": {NOISY_MAX_AFTER}}} \
         -> in force at the next sync, {} later",
        ms(change.propagated)
    );
    println!(
        "{:<24} {:>10} {:>10} {:>14}",
        "tenant noisy", "admitted", "rejected", "upstream max"
    );
    for (name, (admitted, rejected, max)) in [
        ("before the change", change.before),
        ("after the change", change.after),
    ] {
        println!("{name:<24} {admitted:>10} {rejected:>10} {max:>14}");
    }
    println!(
        "\nwipgate keeps the upstream at its capacity and turns the excess away early, so admitted\n\
         requests keep the upstream's unloaded latency instead of queueing behind the overload;\n\
         the well-behaved tenant keeps its reservation, and a limit changed through the REST API\n\
         is enforced by the running Envoy from its next sync on. Not told the capacity, the\n\
         adaptive limit finds it, and the short wait hands each freed slot to a waiting request\n\
         (the least served tenant first) instead of leaving it idle until the next arrival."
    );
}
