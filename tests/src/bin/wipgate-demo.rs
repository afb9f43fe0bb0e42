//! `make demo`: the same overload twice, first through a bare Envoy, then through Envoy with
//! wipgate on its embedded defaults, in front of a demo upstream of limited capacity; then a
//! summary of what was admitted and rejected, and what the upstream went through, overall
//! and per tenant: a noisy tenant sends three quarters of the load next to a well-behaved
//! one.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;
use wipgate_e2e::{Envoy, EnvoyConfig, Outcome, RequestSpec, Summary, Upstream, UpstreamOptions};

/// The constrained resource: this many requests served at once, each taking `SERVICE`;
/// the rest queue inside it, like connections waiting for a database pool.
const CAPACITY: usize = 16;
const SERVICE: Duration = Duration::from_millis(50);
/// wipgate's limit, at the resource's sweet spot.
const MAX_INFLIGHT: u32 = 16;
/// Offered load as a multiple of what the upstream can serve, for this long.
const OVERLOAD: f64 = 2.0;
const RUN: Duration = Duration::from_secs(5);
/// The two tenants: `noisy` sends three requests for each one of `shop`.
const NOISY: &str = "noisy";
const SHOP: &str = "shop";
/// The demo's clients give up after this long.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

struct Phase {
    name: String,
    outcomes: Vec<Outcome>,
    upstream_max: usize,
    upstream_max_of: std::collections::BTreeMap<String, usize>,
    stats: Option<String>,
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
    let config = json!({
        "max_inflight": MAX_INFLIGHT,
        "retry_after_s": 1,
        "tenants": {
            NOISY: {"reserved": 0, "max": 6},
            SHOP: {"reserved": 6, "max": 16}
        }
    })
    .to_string();
    let bare = runtime.block_on(run_phase("bare Envoy (no limit)", None, rate))?;
    let gated = runtime.block_on(run_phase(
        &format!("Envoy + wipgate (max_inflight {MAX_INFLIGHT})"),
        Some(config.clone()),
        rate,
    ))?;
    println!("  wipgate configuration: {config}\n");
    print_table(&[bare, gated]);
    Ok(())
}

async fn run_phase(name: &str, filter: Option<String>, rate: f64) -> Result<Phase> {
    let upstream = Upstream::start(UpstreamOptions {
        capacity: Some(CAPACITY),
        service_time: SERVICE,
        ..UpstreamOptions::default()
    })?;
    let mut cfg = EnvoyConfig::new(upstream.addr());
    cfg.filter_config = filter;
    cfg.route_timeout = CLIENT_TIMEOUT * 2;
    let mut envoy = Envoy::start(&cfg).with_context(|| format!("starting Envoy for {name}"))?;
    eprintln!("  running: {name} ...");
    let outcomes = open_loop_with_client_timeout(&envoy, rate).await;
    let stats = envoy_stats(&envoy);
    envoy.stop()?;
    let upstream_max_of = [NOISY, SHOP].map(|t| (t.to_owned(), upstream.max_inflight_of(t)));
    Ok(Phase {
        name: name.to_owned(),
        outcomes,
        upstream_max: upstream.max_inflight(),
        upstream_max_of: upstream_max_of.into(),
        stats,
    })
}

async fn open_loop_with_client_timeout(envoy: &Envoy, rate: f64) -> Vec<Outcome> {
    let spec = |i: usize| {
        let tenant = if i % 4 == 3 { SHOP } else { NOISY };
        RequestSpec::get(format!("/order/{i}")).tenant(tenant)
    };
    wipgate_e2e::open_loop_with_timeout(envoy.listener_addr(), rate, RUN, CLIENT_TIMEOUT, spec)
        .await
}

/// The filter's own account, read from Envoy's stats once the load is over.
fn envoy_stats(envoy: &Envoy) -> Option<String> {
    let admitted = envoy.wasm_stat("wipgate.rq_admitted")?;
    let rejected = envoy.wasm_stat("wipgate.rq_rejected.reason.wip_limit")?;
    let noisy = envoy.wasm_stat("wipgate.tenant.noisy.rq_rejected.reason.tenant_limit")?;
    // Slots are released as streams end; give the last ones a moment.
    let _ = wipgate_e2e::wait_until(Duration::from_secs(5), "in-flight back at 0", || {
        envoy.wasm_stat("wipgate.rq_inflight") == Some(0)
    });
    let inflight = envoy.wasm_stat("wipgate.rq_inflight")?;
    Some(format!(
        "wipgate.rq_admitted {admitted}, wipgate.rq_rejected.reason.wip_limit {rejected}, \
         wipgate.tenant.noisy.rq_rejected.reason.tenant_limit {noisy}, wipgate.rq_inflight after the run {inflight}"
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
        "{:<36} {:>6} {:>8} {:>9} {:>6} {:>10} {:>10} {:>10} {:>10} {:>14}",
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
            "{:<36} {:>6} {:>8} {:>9} {:>6} {:>10} {:>10} {:>10} {:>10} {:>14}",
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
    println!(
        "\nwipgate keeps the upstream at its capacity and answers the excess at once, so admitted\n\
         requests keep the upstream's unloaded latency instead of queueing behind the overload."
    );
}
