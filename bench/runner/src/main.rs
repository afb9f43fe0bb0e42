//! `make bench`: wipgate's overhead, and every protection side by side in front of
//! bottlenecks of several shapes (collapsing, pure queue, capacity shift, heavy-tailed, a real
//! PostgreSQL under lock contention), all in one run on this machine. Writes `results.json`
//! (every figure and time series, typed in `results.rs`) and `report.md` (with the targets
//! of `targets.rs`) into the output directory; `bench/plot.py` draws the PNGs from
//! `results.json`.
//!
//! Usage: `wipgate-bench [--out DIR] [--quick] [--only queue]` (`--quick`: a short smoke
//! run; `--only queue`: only the bounded wait's section, `queue.rs`, merged into the
//! results already in `DIR/results.json`, the other sections kept as they are). Needs
//! `WIPGATE_ENVOY`, the two `.wasm` files (see `setup::Wasm::locate`), PostgreSQL's
//! `initdb`/`pg_ctl` and `pgbench`.
//! `wipgate-bench --render DIR` only rewrites `DIR/report.md` from `DIR/results.json`.

mod analysis;
mod gen;
mod pgbench;
mod queue;
mod report;
mod results;
mod scenarios;
mod setup;
mod sweeps;
mod targets;
mod timelines;
mod trace;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::results::Results;
use crate::scenarios::Timing;
use crate::setup::Shape;

/// wipgate's configuration in the noisy-tenant scenario: the limit at the knee, and no
/// tenant may hold more than half of it.
fn wipgate_tenants() -> String {
    json!({"max_inflight": setup::KNEE, "tenants": {"*": {"max": setup::KNEE / 2}}}).to_string()
}

/// The noisy-tenant configuration with the default adaptive limit instead of the told one
/// (the tenant maximum stays a number: it is a policy, not a guess at the bottleneck).
fn wipgate_tenants_adaptive() -> String {
    json!({
        "max_inflight": setup::ADAPTIVE_MAX,
        "adaptive": {},
        "tenants": {"*": {"max": setup::KNEE / 2}}
    })
    .to_string()
}

struct Args {
    out: PathBuf,
    quick: bool,
    render_only: bool,
    only_queue: bool,
}

const USAGE: &str = "usage: wipgate-bench [--out DIR] [--quick] [--only queue] | --render DIR";

fn parse_args() -> Result<Args> {
    let mut args = Args {
        out: PathBuf::from("bench"),
        quick: false,
        render_only: false,
        only_queue: false,
    };
    let mut it = std::env::args().skip(1);
    // Each round consumes at least one argument, so the loop is bounded by argv.
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--out" => args.out = PathBuf::from(it.next().context("--out needs a directory")?),
            "--quick" => args.quick = true,
            "--render" => {
                args.out = PathBuf::from(it.next().context("--render needs a directory")?);
                args.render_only = true;
            }
            "--only" => match it.next().as_deref() {
                Some("queue") => args.only_queue = true,
                other => bail!("--only takes `queue`, not {other:?}; {USAGE}"),
            },
            other => bail!("unknown argument {other:?}; {USAGE}"),
        }
    }
    Ok(args)
}

fn render_only(dir: &std::path::Path) -> Result<()> {
    let results = Results::load(&dir.join("results.json"))?;
    let md_path = dir.join("report.md");
    std::fs::write(&md_path, report::render(&results))
        .with_context(|| format!("writing {}", md_path.display()))?;
    println!("wrote {}", md_path.display());
    Ok(())
}

fn main() -> Result<()> {
    let args = parse_args()?;
    if args.render_only {
        return render_only(&args.out);
    }
    wipgate_e2e::envoy::envoy_binary().context("run the benchmarks with `make bench`")?;
    let wasm = setup::Wasm::locate(!args.only_queue)?;
    let timing = Timing::new(args.quick);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let started = Instant::now();
    if args.only_queue {
        // The other sections stay as the last full run left them.
        let json_path = args.out.join("results.json");
        let mut results = if json_path.exists() {
            Results::load_without_queue(&json_path)?
        } else {
            Results::default()
        };
        results.queue = Some(runtime.block_on(queue::run(&wasm, timing, args.quick))?);
        return write(&args.out, &results, started);
    }
    let adaptive = setup::wipgate_adaptive();
    let results = runtime.block_on(async {
        let overhead = scenarios::overhead(&wasm, timing).await?;
        let mut sweeps = Vec::new();
        for shape in [Shape::Collapse, Shape::Queue, Shape::HeavyTail] {
            sweeps.push(sweeps::shape(&wasm, timing, shape, &adaptive).await?);
        }
        sweeps.push(sweeps::postgres(&wasm, timing, &adaptive).await?);
        let shift = timelines::shift(&wasm, timing, &adaptive).await?;
        let mut steady = Vec::new();
        for shape in [Shape::Collapse, Shape::Queue] {
            steady.push(timelines::steady(&wasm, timing, shape, &adaptive).await?);
        }
        let cold_start = timelines::cold_start(&wasm, timing, &adaptive).await?;
        let noisy = scenarios::noisy(
            &wasm,
            timing,
            setup::setups(setup::KNEE, &wipgate_tenants(), &wipgate_tenants_adaptive()),
            gen::Arrivals::Even,
        )
        .await?;
        let queue = queue::run(&wasm, timing, args.quick).await?;
        anyhow::Ok(Results {
            quick: args.quick,
            runner_wall_s: started.elapsed().as_secs_f64(),
            machine: report::machine(),
            wipgate_adaptive: adaptive.clone(),
            wipgate_tenants: wipgate_tenants(),
            wipgate_tenants_adaptive: wipgate_tenants_adaptive(),
            overhead,
            sweeps,
            shift,
            steady,
            cold_start,
            noisy,
            queue: Some(queue),
        })
    })?;
    write(&args.out, &results, started)
}

/// Writes `results.json` and the report rendered from it into `out`.
fn write(out: &std::path::Path, results: &Results, started: Instant) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let json_path = out.join("results.json");
    let json = results.to_json()?;
    std::fs::write(&json_path, &json)
        .with_context(|| format!("writing {}", json_path.display()))?;
    // The report is rendered from the file as written, as `--render` would: a float read back
    // may differ from the measured one in its last bit, and a figure on a rounding boundary
    // would then print differently.
    let results = Results::parse(&json)?;
    let md_path = out.join("report.md");
    std::fs::write(&md_path, report::render(&results))
        .with_context(|| format!("writing {}", md_path.display()))?;
    println!(
        "wrote {} and {} in {:.0} s",
        md_path.display(),
        json_path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
