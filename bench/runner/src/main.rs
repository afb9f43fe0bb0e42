//! `make bench`: wipgate's overhead and overload behaviour side by side with bare Envoy, a
//! pass-through wasm filter and Envoy's own protections, all in one run on this machine.
//! Writes `results.json` (every figure and time series, typed in `results.rs`) and
//! `report.md` into the output directory; `bench/plot.py` draws the PNGs from
//! `results.json`.
//!
//! Usage: `wipgate-bench [--out DIR] [--quick]` (`--quick`: a short smoke run). Needs
//! `WIPGATE_ENVOY`, and the two `.wasm` files (see `setup::Wasm::locate`).
//! `wipgate-bench --render DIR` only rewrites `DIR/report.md` from `DIR/results.json`.

mod gen;
mod report;
mod results;
mod scenarios;
mod setup;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::results::Results;
use crate::scenarios::Timing;

/// wipgate's configuration in the overload scenario: the limit at the bottleneck's knee.
fn wipgate_static() -> String {
    json!({"max_inflight": setup::KNEE}).to_string()
}

/// wipgate with adaptive limits (AIMD): free to range up to 4x the knee, it has to find
/// the knee itself from latency (the target is 1.4x the bottleneck's service time).
fn wipgate_adaptive() -> String {
    json!({
        "max_inflight": setup::KNEE * 4,
        "min_inflight": 2,
        "adaptive": {"algorithm": "aimd", "window_ms": 200, "latency_target_ms": 35,
                     "stable_windows": 2, "increase": 1}
    })
    .to_string()
}

/// wipgate's configuration in the noisy-tenant scenario: the same limit, and no tenant
/// may hold more than half of it.
fn wipgate_tenants() -> String {
    json!({"max_inflight": setup::KNEE, "tenants": {"*": {"max": setup::KNEE / 2}}}).to_string()
}

/// The noisy-tenant configuration with adaptive limits.
fn wipgate_tenants_adaptive() -> String {
    let mut config: serde_json::Value =
        serde_json::from_str(&wipgate_adaptive()).unwrap_or_default();
    config["tenants"] = json!({"*": {"max": setup::KNEE / 2}});
    config.to_string()
}

struct Args {
    out: PathBuf,
    quick: bool,
    render_only: bool,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        out: PathBuf::from("bench"),
        quick: false,
        render_only: false,
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
            other => {
                bail!("unknown argument {other:?}; usage: wipgate-bench [--out DIR] [--quick] | --render DIR")
            }
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
    let wasm = setup::Wasm::locate()?;
    let timing = Timing::new(args.quick);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let started = Instant::now();
    let overhead = runtime.block_on(scenarios::overhead(&wasm, timing))?;
    let overload = runtime.block_on(scenarios::overload(
        &wasm,
        timing,
        &wipgate_static(),
        &wipgate_adaptive(),
    ))?;
    let noisy = runtime.block_on(scenarios::noisy(
        &wasm,
        timing,
        &wipgate_tenants(),
        &wipgate_tenants_adaptive(),
    ))?;
    let results = Results {
        quick: args.quick,
        runner_wall_s: started.elapsed().as_secs_f64(),
        machine: report::machine(),
        wipgate_static: wipgate_static(),
        wipgate_adaptive: wipgate_adaptive(),
        wipgate_tenants: wipgate_tenants(),
        overhead,
        overload,
        noisy,
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let json_path = args.out.join("results.json");
    std::fs::write(&json_path, results.to_json()?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    let md_path = args.out.join("report.md");
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
