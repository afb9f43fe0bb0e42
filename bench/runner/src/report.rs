//! Turns one run's `results.json` into `report.md`: the headline ratios against the
//! baselines of the same run, then every table, the plots, and how well the load generator
//! kept its rates.

use std::fmt::Write as _;
use std::process::Command;

use crate::results::{Bottleneck, Generator, Machine, OverheadSetup, Point, Results, Sweep};
use crate::setup::{
    CIRCUIT_BREAKER, ENVOY_ADAPTIVE, NO_PROTECTION, WIPGATE_ADAPTIVE, WIPGATE_STATIC,
};

/// What the figures were measured on.
#[must_use]
pub fn machine() -> Machine {
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_default();
    let envoy = wipgate_e2e::envoy::envoy_binary()
        .ok()
        .and_then(|b| Command::new(b).arg("--version").output().ok())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .and_then(|t| t.split("version:").nth(1).map(|s| s.trim().to_owned()))
        .unwrap_or_default();
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    Machine {
        cpus,
        cpu_model: model,
        envoy,
        date,
    }
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**missed**"
    }
}

fn overhead_setup<'a>(r: &'a Results, name: &str) -> Option<&'a OverheadSetup> {
    r.overhead.setups.iter().find(|x| x.name == name)
}

/// `report.md` for `r` (the contents of `results.json`).
#[must_use]
pub fn render(r: &Results) -> String {
    let mut out = String::new();
    header(&mut out, r);
    targets(&mut out, r);
    overhead(&mut out, r);
    setups(&mut out, r);
    // The shapes in the order of their letters: the shift (c) after a and b.
    let mut shift_done = false;
    for s in &r.sweeps {
        if !shift_done && s.title.as_str() > "c" {
            shift(&mut out, r);
            shift_done = true;
        }
        sweep(&mut out, s, &r.wipgate_adaptive);
    }
    if !shift_done {
        shift(&mut out, r);
    }
    steady(&mut out, r);
    cold_start(&mut out, r);
    noisy(&mut out, r);
    if let Some(q) = &r.queue {
        queue(&mut out, q);
    }
    generator(&mut out, r);
    method(&mut out, r);
    out
}

fn header(out: &mut String, r: &Results) {
    let m = &r.machine;
    let _ = writeln!(out, "# wipgate benchmarks\n");
    let _ = writeln!(
        out,
        "The figures of one `make bench` run ({}), written by `bench/runner` (`wipgate-bench`); \
         plots by `bench/plot.py` from `bench/results.json`. Every protection runs side by side \
         in front of the same bottlenecks in the same run; the targets are issue 13's, and a \
         missed target is reported here, not failed in the build.\n",
        m.date
    );
    let _ = writeln!(
        out,
        "**Machine:** {} CPUs ({}), Envoy {}. The load generator, Envoy (`--concurrency 2`), the \
         upstream and PostgreSQL all run on the same 2 cores, and the machine is shared (another \
         engineer's test runs may overlap with this one), so absolute numbers are modest and \
         somewhat noisy; the comparisons between setups measured side by side are the point.{}\n",
        m.cpus,
        m.cpu_model,
        m.envoy,
        if r.quick {
            " **This is a `--quick` smoke run, not the real figures.**"
        } else {
            ""
        }
    );
}

fn targets(out: &mut String, r: &Results) {
    let _ = writeln!(out, "## Targets: wipgate adaptive, default configuration\n");
    let _ = writeln!(
        out,
        "wipgate adaptive runs with `{}` in every shape: the default algorithm (the knee), not \
         told C; the ceiling is far above every C here. Unloaded p99: no protection's admitted \
         p99 at 0.5x on the same shape. \"At least equal\" to the circuit breaker allows {:.0}% \
         (run-to-run noise of one setup on this machine). Time back near the knee counts from the \
         change until the bottleneck's in-flight count (mean per {:.0} ms) is within the band and \
         stays there to the end of the phase.\n",
        r.wipgate_adaptive,
        crate::targets::EQUAL_WITHIN * 100.0,
        r.shift.bucket_s * 1e3,
    );
    let all = crate::targets::evaluate(r);
    let n_met = all.iter().filter(|t| t.met).count();
    let _ = writeln!(out, "| target | this run | |\n|---|---|---|");
    for t in &all {
        let _ = writeln!(out, "| {} | {} | {} |", t.what, t.figure, met(t.met));
    }
    let _ = writeln!(out, "\n{n_met} of {} targets met.\n", all.len());
}

fn overhead(out: &mut String, r: &Results) {
    let oh = &r.overhead;
    let _ = writeln!(out, "## Overhead\n");
    let _ = writeln!(
        out,
        "An unconstrained upstream (answers at once). Throughput: a closed loop of {} keep-alive \
         connections for {} s, {} runs per setup interleaved, median shown. Latency: an open \
         loop at {:.0} req/s (a fifth of the slowest setup's maximum) over keep-alive \
         connections for {} s, {} runs pooled, from the intended send time (round trip: from \
         the request's write on a ready connection). wipgate runs with \
         `{}` (a limit it never reaches), every wasm filter in V8. For scale, the generator \
         alone straight to the upstream (no Envoy) reaches {:.0} req/s.\n",
        oh.closed_conns,
        oh.closed_s,
        oh.closed_reps,
        oh.fixed_rate,
        oh.fixed_s,
        oh.fixed_reps,
        crate::scenarios::WIPGATE_UNLIMITED,
        oh.generator_ceiling_rps,
    );
    let _ = writeln!(
        out,
        "| setup | max req/s (runs) | vs bare | p50 | p99 | p99.9 | round trip p50 / p99 | errors |\n|---|---|---|---|---|---|---|---|"
    );
    let bare = overhead_setup(r, "bare Envoy").map_or(f64::NAN, |b| b.rps);
    for x in &oh.setups {
        let runs: Vec<String> = x.rps_runs.iter().map(|v| format!("{v:.0}")).collect();
        let _ = writeln!(
            out,
            "| {} | {:.0} ({}) | {:.2}x | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} / {:.0} µs | {} |",
            x.name,
            x.rps,
            runs.join(", "),
            x.rps / bare,
            x.p50_us,
            x.p99_us,
            x.p999_us,
            x.rtt_p50_us,
            x.rtt_p99_us,
            x.closed_errors + x.fixed_failed,
        );
    }
    let _ = writeln!(out);
    overhead_targets(out, r);
    let _ = writeln!(out, "![overhead](overhead.png)\n");
}

fn overhead_targets(out: &mut String, r: &Results) {
    let _ = writeln!(out, "| overhead target | this run | |\n|---|---|---|");
    // A figure of a setup that is not in the results is NaN, as 0/0 would be.
    let by = |name: &str, figure: fn(&OverheadSetup) -> f64| {
        overhead_setup(r, name).map_or(f64::NAN, figure)
    };
    let (bare, pass, wip) = ("bare Envoy", "Envoy + pass-through wasm", "Envoy + wipgate");
    let rps = |x: &OverheadSetup| x.rps;
    let tput = by(wip, rps) / by(pass, rps);
    let _ = writeln!(
        out,
        "| wipgate ≥ 0.9x the pass-through filter's throughput | {:.2}x ({:.0} vs {:.0} req/s; bare Envoy {:.0}, wipgate {:.2}x of it) | {} |",
        tput,
        by(wip, rps),
        by(pass, rps),
        by(bare, rps),
        by(wip, rps) / by(bare, rps),
        met(tput >= 0.9)
    );
    let (p50, rtt_p50) = (
        |x: &OverheadSetup| x.p50_us,
        |x: &OverheadSetup| x.rtt_p50_us,
    );
    let added = by(wip, p50) - by(bare, p50);
    let added_pass = by(wip, p50) - by(pass, p50);
    let added_rtt = by(wip, rtt_p50) - by(bare, rtt_p50);
    let _ = writeln!(
        out,
        "| wipgate adds < 50 µs p50 | {added:+.0} µs over bare Envoy ({added_pass:+.0} µs over the pass-through filter) at {:.0} req/s, from the intended send time; {added_rtt:+.0} µs in round trip | {} |\n",
        r.overhead.fixed_rate,
        met(added < 50.0)
    );
}

fn setups(out: &mut String, r: &Results) {
    let _ = writeln!(out, "## Bottleneck shapes\n");
    let _ = writeln!(
        out,
        "Five setups in front of each bottleneck: **{NO_PROTECTION}** (Envoy's circuit breakers \
         lifted); **{CIRCUIT_BREAKER}** told C (`max_connections`, `max_requests` and \
         `max_pending_requests` = C: up to C more wait in Envoy's queue); **{ENVOY_ADAPTIVE}** \
         (gradient controller, p90 samples, limit updated every 100 ms, minimum RTT from 50 \
         requests at start); **{WIPGATE_STATIC}** at C (`{{\"max_inflight\": C}}`, no queue: the \
         excess is answered 503 at once); **{WIPGATE_ADAPTIVE}** (`{}`, not told C).\n",
        r.wipgate_adaptive
    );
    let _ = writeln!(
        out,
        "Each sweep point: a fresh Envoy (and, in process, a fresh upstream), warmed up with {} s \
         at {}x the shape's capacity and drained, so start-up costs (V8, upstream connections, \
         adaptive_concurrency's first minimum-RTT window) are not in the figures and the \
         adaptive limits meet the overload as a proxy in service would, having seen the \
         bottleneck at normal load (the cold start has a run of its own); then open-loop arrival at a constant rate (multiples of the \
         capacity) for the point's length, latency from the intended send time; the client \
         gives up after the client timeout (counted as failed). Goodput: 2xx answers completed \
         while the load runs, per second, as a fraction of capacity (a backlog served after \
         the load stops does not count). The load is the outer loop: at one load the \
         five setups run minutes apart at most.\n",
        crate::scenarios::WARM.as_secs_f64(),
        crate::scenarios::WARM_LOAD,
    );
}

fn describe(out: &mut String, s: &Sweep) {
    match &s.bottleneck {
        Bottleneck::Collapse {
            knee,
            base_ms,
            slope,
            max_service_ms,
        } => {
            let _ = writeln!(
                out,
                "C = {knee} in flight: up to C each request takes {base_ms:.0} ms ({:.0} req/s); \
                 beyond, a request that finds n in flight takes {base_ms:.0} ms × (1 + {slope} × \
                 (n − C) / C), at most {max_service_ms:.0} ms: congestion collapse, like a \
                 database under lock contention; pushed past C it serves less, not more.\n",
                s.capacity_rps
            );
        }
        Bottleneck::Queue {
            capacity,
            service_ms,
        } => {
            let _ = writeln!(
                out,
                "A pool of C = {capacity}, each request {service_ms:.0} ms ({:.0} req/s); the rest \
                 wait in a FIFO queue inside the upstream: past C its throughput stays flat and \
                 only latency grows (an in-flight count includes the queue).\n",
                s.capacity_rps
            );
        }
        Bottleneck::HeavyTail {
            capacity,
            median_ms,
            sigma,
        } => {
            let _ = writeln!(
                out,
                "A pool of C = {capacity} with a FIFO queue past it; service times lognormal, \
                 median {median_ms:.0} ms, sigma {sigma} (p99/p50 about 10; mean {:.1} ms). \
                 Capacity: C over the mean service time, {:.0} req/s.\n",
                median_ms * (sigma * sigma / 2.0).exp(),
                s.capacity_rps
            );
        }
        Bottleneck::Postgres {
            pool,
            rows,
            work_ms,
            pgbench,
        } => {
            let _ = writeln!(
                out,
                "A real PostgreSQL (a throwaway cluster on the same machine, fsync off). Each \
                 request runs one short transaction on one of {rows} hot rows chosen at random, \
                 through the upstream's pool of {pool} connections: `BEGIN; UPDATE hot SET n = n + \
                 1 WHERE id = $1; SELECT pg_sleep({:.3}); COMMIT` (the sleep stands for the \
                 transaction's work while it holds the row). Transactions on one row wait for \
                 each other's row lock, so lock contention, not the pool, is the constraint. \
                 Its capacity is measured by pgbench itself on the same statements (`pgbench -n \
                 -c N -j 2 -T {} -f script.sql`), before the sweep; the best is the capacity \
                 ({:.0} tps) and its client count the C told to the circuit breaker and wipgate \
                 static ({}). A goodput above 1 is more than pgbench's best: the two are \
                 measured minutes apart on a shared machine, with different clients.\n",
                work_ms / 1e3,
                pgbench.duration_s,
                pgbench.best_tps,
                pgbench.best_clients
            );
            let _ = writeln!(
                out,
                "| pgbench clients | tps | latency average |\n|---|---|---|"
            );
            for run in &pgbench.runs {
                let best = if run.clients == pgbench.best_clients {
                    " (best)"
                } else {
                    ""
                };
                let _ = writeln!(
                    out,
                    "| {} | {:.0}{best} | {:.1} ms |",
                    run.clients, run.tps, run.latency_ms
                );
            }
            let _ = writeln!(out);
        }
    }
}

/// A table of one figure per setup (rows) and load (columns).
fn matrix(out: &mut String, s: &Sweep, what: &str, cell: impl Fn(&Point) -> String) {
    let mut head = format!("| {what} |");
    let mut rule = String::from("|---|");
    for m in &s.multipliers {
        let _ = write!(head, " {m}x |");
        rule.push_str("---|");
    }
    let _ = writeln!(out, "{head}\n{rule}");
    for x in &s.setups {
        let mut row = format!("| {} |", x.name);
        for m in &s.multipliers {
            let c = crate::targets::at(x, *m).map_or_else(|| "—".to_owned(), &cell);
            let _ = write!(row, " {c} |");
        }
        let _ = writeln!(out, "{row}");
    }
    let _ = writeln!(out);
}

fn sweep(out: &mut String, s: &Sweep, adaptive: &str) {
    let _ = writeln!(out, "### {}\n", s.title);
    describe(out, s);
    let _ = writeln!(
        out,
        "C told to the circuit breaker and wipgate static: {} (`{}`); wipgate adaptive: `{adaptive}`. \
         {} s per point, client timeout {} s.\n",
        s.c, s.wipgate_static, s.point_s, s.client_timeout_s
    );
    goodput_and_p99(out, s);
    matrix(out, s, "rejected", |p| {
        format!("{:.1}%", p.reject_rate * 100.0)
    });
    every_point(out, s);
    let _ = writeln!(
        out,
        "![{}: goodput and admitted p99 by offered load](shape_{}.png)\n",
        s.title, s.key
    );
}

/// The goodput and admitted-p99 tables of `s`.
fn goodput_and_p99(out: &mut String, s: &Sweep) {
    matrix(out, s, "goodput (of capacity)", |p| {
        format!("{:.2}", p.goodput)
    });
    matrix(out, s, "admitted p99", |p| {
        if p.ok > 0 {
            format!("{:.1} ms", p.ok_p99_ms)
        } else {
            "—".to_owned()
        }
    });
}

/// Every figure of every point of `s`, folded.
fn every_point(out: &mut String, s: &Sweep) {
    let _ = writeln!(
        out,
        "<details><summary>Every figure of {}</summary>\n",
        s.title
    );
    let _ = writeln!(
        out,
        "| setup | load | sent | goodput | ok p50 | ok p99 | ok p99.9 | rejected | rej p99 (round trip) | failed | upstream max in flight |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for x in &s.setups {
        for p in &x.points {
            let _ = writeln!(
                out,
                "| {} | {}x | {} | {:.3} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1}% | {} | {} | {} |",
                x.name,
                p.mult,
                p.sent,
                p.goodput,
                p.ok_p50_ms,
                p.ok_p99_ms,
                p.ok_p999_ms,
                p.reject_rate * 100.0,
                if p.rejected > 0 {
                    format!("{:.2} ms ({:.2} ms)", p.rej_p99_ms, p.rej_rtt_p99_ms)
                } else {
                    "—".to_owned()
                },
                p.failed,
                p.upstream_max_inflight,
            );
        }
    }
    let _ = writeln!(out, "\n</details>\n");
}

fn secs(v: Option<f64>) -> String {
    v.map_or_else(|| "never".to_owned(), |s| format!("{s:.1} s"))
}

fn shift(out: &mut String, r: &Results) {
    let sh = &r.shift;
    let _ = writeln!(out, "### c. Capacity shift\n");
    let _ = writeln!(
        out,
        "The collapsing bottleneck of shape a (C = {}, {:.0} req/s) at {}x its capacity for {} s; \
         from {} s to {} s every service time is {}x as long (a slower database: capacity halves \
         to {:.0} req/s, while the knee counted in flight stays at {}), then it returns. Per setup: \
         goodput in each phase as a fraction of that phase's capacity; how long the bottleneck's \
         in-flight count took to be within {:.0}% of the knee and stay there to the end of the \
         phase (\"never\": not by then); direction reversals of the moving limit over the run \
         (sampled every 100 ms from Envoy's admin stats).\n",
        sh.knee,
        sh.capacity_rps,
        sh.mult,
        sh.run_s,
        sh.slow_from_s,
        sh.slow_to_s,
        sh.slowdown,
        sh.capacity_rps / sh.slowdown,
        sh.knee,
        sh.band * 100.0
    );
    let _ = writeln!(
        out,
        "| setup | goodput before / slow / after | over the run | mean in flight before / slow / after | back near the knee after the change | after the recovery | limit reversals |\n|---|---|---|---|---|---|---|"
    );
    for x in &sh.setups {
        let g: Vec<String> = x.goodput_phases.iter().map(|g| format!("{g:.2}")).collect();
        let phase_mean = |from: f64, to: f64| {
            let v: Vec<f64> = x
                .run
                .t
                .iter()
                .zip(&x.run.inflight)
                .filter(|(&t, _)| t >= from && t < to)
                .map(|(_, &v)| v)
                .collect();
            format!("{:.1}", crate::analysis::mean(&v))
        };
        let _ = writeln!(
            out,
            "| {} | {} | {:.2} | {} / {} / {} | {} | {} | {} |",
            x.name,
            g.join(" / "),
            crate::targets::shift_goodput(sh, &x.goodput_phases),
            phase_mean(0.0, sh.slow_from_s),
            phase_mean(sh.slow_from_s, sh.slow_to_s),
            phase_mean(sh.slow_to_s, sh.run_s),
            secs(x.back_after_change_s),
            secs(x.back_after_recovery_s),
            x.reversals
                .map_or_else(|| "—".to_owned(), |n| n.to_string()),
        );
    }
    let _ = writeln!(
        out,
        "\n![capacity shift: goodput, in flight and limits over time](shift.png)\n"
    );
}

fn steady(out: &mut String, r: &Results) {
    let _ = writeln!(out, "### Steady overload\n");
    let Some(first) = r.steady.first() else {
        return;
    };
    let _ = writeln!(
        out,
        "The setups with a moving limit at {}x capacity for {} s (after the same warm-up as a \
         sweep point), the limit sampled every 100 ms: the share of samples within {:.0}% of the \
         true knee (C = {}) once the first {} s are over (while the limit leaves the level the \
         warm-up at half load left it at; over the whole run in brackets), and its direction reversals \
         over the whole run.\n",
        first.mult,
        first.run_s,
        first.band * 100.0,
        first.knee,
        first.settle_s
    );
    let _ = writeln!(
        out,
        "| shape | setup | goodput | limit within C ± {:.0}% after {} s (whole run) | mean limit | reversals (per 20 s) |\n|---|---|---|---|---|---|",
        first.band * 100.0,
        first.settle_s
    );
    for st in &r.steady {
        for x in &st.setups {
            #[allow(clippy::cast_precision_loss)]
            let per_20s = x.reversals as f64 * 20.0 / st.run_s.max(1e-9);
            let _ = writeln!(
                out,
                "| {} | {} | {:.2} | {:.0}% ({:.0}%) | {:.1} | {} ({per_20s:.1}) |",
                st.title,
                x.name,
                x.goodput,
                x.within_band_settled * 100.0,
                x.within_band * 100.0,
                x.limit_mean,
                x.reversals
            );
        }
    }
    let _ = writeln!(
        out,
        "\n![steady overload: limits over time against the knee](steady.png)\n"
    );
}

fn cold_start(out: &mut String, r: &Results) {
    let cs = &r.cold_start;
    let _ = writeln!(out, "### Cold start\n");
    let _ = writeln!(
        out,
        "A fresh Envoy per setup in front of the collapsing bottleneck, {} requests one at a \
         time (V8 compiles the paths they take), then {}x capacity ({:.0} req/s) for {} s at \
         once. Rejections by second of sending:\n",
        cs.warm_requests,
        cs.mult,
        cs.capacity_rps * cs.mult,
        cs.run_s
    );
    let mut head = String::from("| setup | whole run |");
    let mut rule = String::from("|---|---|");
    let secs = cs
        .setups
        .first()
        .map_or(0, |x| x.sent_by_second.len())
        .min(5);
    for s in 0..secs {
        let _ = write!(head, " second {} |", s + 1);
        rule.push_str("---|");
    }
    let _ = writeln!(out, "{head}\n{rule}");
    for x in &cs.setups {
        let sent: usize = x.sent_by_second.iter().sum();
        let rejected: usize = x.rejected_by_second.iter().sum();
        #[allow(clippy::cast_precision_loss)]
        let pct = if sent == 0 {
            0.0
        } else {
            rejected as f64 / sent as f64 * 100.0
        };
        let mut row = format!("| {} | {rejected} of {sent} ({pct:.2}%) |", x.name);
        for s in 0..secs {
            let _ = write!(
                row,
                " {} of {} |",
                x.rejected_by_second.get(s).unwrap_or(&0),
                x.sent_by_second.get(s).unwrap_or(&0)
            );
        }
        let _ = writeln!(out, "{row}");
    }
    let _ = writeln!(out);
}

fn noisy(out: &mut String, r: &Results) {
    let n = &r.noisy;
    let _ = writeln!(out, "## Noisy tenant\n");
    let _ = writeln!(
        out,
        "The collapsing bottleneck. Tenant `noisy` sends {:.0} req/s, `t1`…`t4` {:.0} req/s each \
         (`x-tenant-id`), {:.0} req/s in all ({:.1}x capacity), open loop for {} s. wipgate static \
         runs with `{}`, wipgate adaptive with `{}`: no tenant holds more than half the static \
         limit. Per tenant: success rate (2xx of sent) and p99 of its successes.\n",
        n.noisy_rate,
        n.normal_rate,
        n.rate,
        n.rate / n.capacity_rps,
        n.run_s,
        r.wipgate_tenants,
        r.wipgate_tenants_adaptive,
    );
    tenant_table(out, n);
    let _ = writeln!(out, "\n![per-tenant success](noisy_tenant.png)\n");
}

/// Per setup and tenant: success rate and p99 of its successes (and, where measured, the
/// goodput of all tenants together).
fn tenant_table(out: &mut String, n: &crate::results::Noisy) {
    let tenants = crate::scenarios::TENANTS;
    let with_goodput = n.setups.iter().any(|x| x.goodput.is_some());
    let mut head = String::from("| setup |");
    let mut rule = String::from("|---|");
    for t in tenants {
        let _ = write!(head, " {t} |");
        rule.push_str("---|");
    }
    if with_goodput {
        head.push_str(" goodput, all tenants |");
        rule.push_str("---|");
    }
    let _ = writeln!(out, "{head}\n{rule}");
    for x in &n.setups {
        let mut row = format!("| {} |", x.name);
        for t in &x.tenants {
            let _ = write!(
                row,
                " {:.0}% ok, p99 {:.0} ms |",
                t.success * 100.0,
                t.ok_p99_ms
            );
        }
        if with_goodput {
            let g = x
                .goodput
                .map_or_else(|| "—".to_owned(), |g| format!("{g:.2}"));
            let _ = write!(row, " {g} |");
        }
        let _ = writeln!(out, "{row}");
    }
}

fn queue(out: &mut String, q: &crate::results::QueueBench) {
    let sw = &q.poisson;
    let _ = writeln!(out, "## Bounded wait (issue 14)\n");
    let _ =
        writeln!(
        out,
        "Measured {} ({:.0} s{}), possibly later than the sections above: `make bench-queue` runs \
         this section alone and keeps the others. The collapsing bottleneck of shape a (C = {}, \
         {:.0} req/s); every arrival process here is Poisson (seed {:#x}: the same schedule for \
         every setup at one load). Four setups:\n",
        q.machine.date,
        q.runner_wall_s,
        if q.quick { ", a `--quick` smoke run" } else { "" },
        sw.c,
        sw.capacity_rps,
        q.seed
    );
    for x in &q.setups {
        let _ = writeln!(out, "- **{}**: `{}`", x.name, x.config);
    }
    let _ = writeln!(
        out,
        "\nEnvoy's circuit breaker waits in the upstream connection pool's pending queue \
         (FIFO, one per worker): `max_pending_requests` is what the bottleneck serves in {} ms, \
         so a full queue drains within the wait wipgate allows. Envoy has no timeout for the \
         pending queue alone; the route timeout, which covers the wait and the service \
         together, is the nearest: twice a full wait plus a service time, so that it only cuts \
         requests far past the wait wipgate allows (answered 504, counted as failed). wipgate's \
         queue keeps `max_waiting` and `order` at their defaults (1000, fifo). Unloaded p99: no \
         protection's admitted p99 at 0.5x with Poisson arrivals ({}).\n",
        q.timeout_ms,
        crate::targets::unloaded_p99(sw)
            .map_or_else(|| "not measured".to_owned(), |u| format!("{u:.1} ms")),
    );
    if let Some(ceiling) = crate::targets::ceiling_at_c(q) {
        let _ = writeln!(
            out,
            "**The ceiling at C.** Capacity is the nominal C / service time ({:.0} req/s). The \
             upstream's own time per request, measured at it below the knee with no proxy, is \
             {:.2} ms on the mean ({:.0} ms asked; tokio's timer rounds a sleep up to its next \
             millisecond tick), so C in flight deliver at most C / {:.2} ms = {:.0} req/s, \
             **{ceiling:.2} of capacity**, whatever holds them there; a gate whose slot also \
             covers the proxy's path delivers a little less. No setup told C can pass it, \
             whatever the goodput targets ask (0.95 at 1x, 0.97 from 2x); the targets give each \
             goodput also as a share of it.\n",
            sw.capacity_rps,
            q.service_ms,
            match sw.bottleneck {
                crate::results::Bottleneck::Collapse { base_ms, .. } => base_ms,
                _ => f64::NAN,
            },
            q.service_ms,
            ceiling * sw.capacity_rps,
        );
    }
    let all = crate::targets::evaluate_queue(q);
    let n_met = all.iter().filter(|t| t.met).count();
    let _ = writeln!(out, "| target | this run | |\n|---|---|---|");
    for t in &all {
        let _ = writeln!(out, "| {} | {} | {} |", t.what, t.figure, met(t.met));
    }
    let _ = writeln!(out, "\n{n_met} of {} targets met.\n", all.len());
    let _ = writeln!(out, "![bounded wait](queue.png)\n");
    let _ = writeln!(out, "### Poisson arrivals\n");
    let _ = writeln!(
        out,
        "As a sweep point above (fresh Envoy and upstream, warm-up, {} s per point, client \
         timeout {} s), with Poisson arrivals; \"no protection\" only at 0.5x. Goodput counts 2xx \
         answers completed while the load runs.\n",
        sw.point_s, sw.client_timeout_s
    );
    goodput_and_p99(out, sw);
    matrix(out, sw, "rejected (failed)", |p| {
        format!("{:.1}% ({})", p.reject_rate * 100.0, p.failed)
    });
    every_point(out, sw);
    let n = &q.noisy;
    let _ = writeln!(out, "### Noisy tenant, no `tenants` configuration\n");
    let _ = writeln!(
        out,
        "As the noisy-tenant scenario above (tenant `noisy` {:.0} req/s, `t1`…`t4` {:.0} req/s \
         each, {:.1}x capacity in all, {} s), Poisson arrivals, and no per-tenant configuration \
         in any setup: what the wait's fairness does by itself.\n",
        n.noisy_rate,
        n.normal_rate,
        n.rate / n.capacity_rps,
        n.run_s
    );
    tenant_table(out, n);
    let h = &q.handoff;
    let _ = writeln!(out, "\n### Hand-off between workers\n");
    let _ = writeln!(
        out,
        "Envoy with {} workers and `exact_balance` (connections spread evenly over them), wipgate \
         at a limit of 1 with a standing queue: `{}`, {} closed-loop client connections (two per \
         worker: one request in service, three waiting), an upstream that answers in {} ms, {} s. \
         The upstream records when it has each request's headers and when hyper has taken its \
         whole response; the figure is the upstream's idle gap between one request's end and the \
         next one's start. At a limit of 1 each next request is a waiter woken by the release of \
         the last one: the gap holds Envoy reading the end of the response on one worker, the \
         release and the hand-off in the shared ledger and queue, the waiter's worker woken \
         (`on_queue_ready`) and its request resumed, and Envoy writing it to its upstream \
         connection and the upstream reading it. Each client connection sends its number in \
         `x-tag`; an upstream connection belongs to one worker, so client connections whose \
         requests shared one are on one worker: a next request from a client on the other \
         worker is a hand-off across workers, else within a worker. The baseline: the same Envoy and wipgate without a queue (`{}`), one client that sends its \
         next request the moment it has the answer: the gap is then the path's own cost (the \
         answer out to the client and the next request in), with no wait and no hand-off.\n",
        h.workers, h.queue_config, h.conns, h.service_ms, h.run_s, h.baseline_config
    );
    let _ = writeln!(
        out,
        "wipgate counted {} hand-offs over the measured run with the queue; {} answers of \
         the two runs were not 2xx. The client connections fell into {} worker groups (for {} \
         workers). {} of the gaps with the queue ended on an upstream connection Envoy opened \
         for that request (its connect is in the gap).\n",
        h.handoffs
            .map_or_else(|| "(not read)".to_owned(), |n| n.to_string()),
        h.errors,
        h.worker_groups,
        h.workers,
        h.new_conn,
    );
    let _ = writeln!(
        out,
        "| upstream idle gap | count | p50 | p99 | max |\n|---|---|---|---|---|"
    );
    for (what, g) in [
        ("queue: hand-off across workers", &h.cross_worker),
        ("queue: hand-off within a worker", &h.same_worker),
        ("no queue, one client: the path alone", &h.baseline),
    ] {
        let _ = writeln!(
            out,
            "| {what} | {} | {:.0} µs | {:.0} µs | {:.0} µs |",
            g.count, g.p50_us, g.p99_us, g.max_us
        );
    }
    let r = &q.retry;
    let _ = writeln!(out, "\n### Retry-After under sustained overload\n");
    let _ = writeln!(
        out,
        "First attempts at {}x capacity ({:.0} req/s, Poisson) for {} s, from clients that honour \
         `retry-after`: a rejected request is sent again the header's seconds after its answer \
         (jittered only if the header is), at most {} times, and not after {} s (the client gives \
         up). Per second: retries offered against the spare capacity (capacity minus the 2xx \
         answers completed that second). The wipgate setups with the wait only: Envoy's circuit \
         breaker sends no `retry-after`.\n",
        r.mult,
        r.capacity_rps * r.mult,
        r.run_s,
        r.max_retries,
        r.until_s
    );
    let _ = writeln!(
        out,
        "| setup | first attempts | retries | ok | rejected | failed | given up: after {} retries / retry due after {} s | retry-after median / max |\n|---|---|---|---|---|---|---|---|",
        r.max_retries, r.until_s
    );
    for x in &r.setups {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} / {} | {:.0} s / {:.0} s |",
            x.name,
            x.fresh,
            x.retries,
            x.ok,
            x.rejected,
            x.failed,
            x.exhausted,
            x.past_window,
            x.retry_after_p50_s,
            x.retry_after_max_s
        );
    }
    let mut head = String::from("\n| second |");
    let mut rule = String::from("|---|");
    for x in &r.setups {
        let _ = write!(head, " {}: retries / spare per s |", x.name);
        rule.push_str("---|");
    }
    let _ = writeln!(out, "{head}\n{rule}");
    let seconds = r.setups.iter().map(|x| x.t.len()).max().unwrap_or(0);
    for i in 0..seconds {
        let mut row = format!("| {i}–{} |", i + 1);
        for x in &r.setups {
            let cell = match (x.retries_per_s.get(i), x.spare_per_s.get(i)) {
                (Some(a), Some(b)) => format!("{a:.0} / {b:.0}"),
                _ => "—".to_owned(),
            };
            let _ = write!(row, " {cell} |");
        }
        let _ = writeln!(out, "{row}");
    }
    let _ = writeln!(out);
}

fn gen_row(out: &mut String, what: &str, g: &Generator) {
    let (intended, actual) = (g.intended_rate, g.actual_rate);
    let _ = writeln!(
        out,
        "| {what} | {intended:.0} | {actual:.0} ({:+.1}%) | {:.2} ms | {:.2} ms | {} | {} |",
        (actual / intended - 1.0) * 100.0,
        g.lag_p99_ms,
        g.lag_max_ms,
        g.max_conns,
        g.overflow,
    );
}

fn generator(out: &mut String, r: &Results) {
    let _ = writeln!(out, "## The load generator\n");
    let _ = writeln!(
        out,
        "Our own small Rust generator (`bench/runner/src/gen.rs`, hyper HTTP/1.1 client, \
         keep-alive): a closed loop for maximum throughput, and an open loop that sends request \
         i at i / rate whether or not earlier ones are done, on an idle keep-alive connection \
         or a new one (at most 6,000 open); a dedicated thread keeps the schedule with the \
         kernel's timers and spawns each request onto the runtime; latency counts from that intended time (no \
         coordinated omission). It runs in the same process as the upstream, on a 2-thread \
         tokio runtime. Below, for every open-loop run: the intended rate, the rate actually \
         sent (between the first and last send), how late it dispatched requests behind \
         schedule (its own lag, p99 and worst), the most connections it held, and requests it \
         could not send for lack of a connection.{}\n",
        if r.queue.is_some() {
            " The bounded wait's runs send at the same mean rate with Poisson (exponential) \
             gaps instead: their lag is measured against that schedule, and their sent rate \
             differs from the mean by chance (about ±3% over 1,000 requests)."
        } else {
            ""
        }
    );
    let mut worst_dev: f64 = 0.0;
    let mut worst_lag: f64 = 0.0;
    let mut overflow = 0;
    let mut rows = String::new();
    let mut track = |what: &str, g: &Generator, rows: &mut String| {
        worst_dev = worst_dev.max((g.actual_rate / g.intended_rate - 1.0).abs());
        worst_lag = worst_lag.max(g.lag_p99_ms);
        overflow += g.overflow;
        gen_row(rows, what, g);
    };
    for x in &r.overhead.setups {
        for (i, g) in x.generator.iter().enumerate() {
            track(
                &format!("overhead: {} (run {})", x.name, i + 1),
                g,
                &mut rows,
            );
        }
    }
    for sw in &r.sweeps {
        for x in &sw.setups {
            for p in &x.points {
                track(
                    &format!("{}: {} {}x", sw.key, x.name, p.mult),
                    &p.generator,
                    &mut rows,
                );
            }
        }
    }
    for x in &r.shift.setups {
        track(&format!("shift: {}", x.name), &x.run.generator, &mut rows);
    }
    for st in &r.steady {
        for x in &st.setups {
            track(
                &format!("steady {}: {}", st.key, x.name),
                &x.run.generator,
                &mut rows,
            );
        }
    }
    for x in &r.cold_start.setups {
        track(
            &format!("cold start: {}", x.name),
            &x.run.generator,
            &mut rows,
        );
    }
    for x in &r.noisy.setups {
        track(
            &format!("noisy tenant: {}", x.name),
            &x.generator,
            &mut rows,
        );
    }
    if let Some(q) = &r.queue {
        for x in &q.poisson.setups {
            for p in &x.points {
                track(
                    &format!("bounded wait, Poisson: {} {}x", x.name, p.mult),
                    &p.generator,
                    &mut rows,
                );
            }
        }
        for x in &q.noisy.setups {
            track(
                &format!("bounded wait, noisy tenant: {}", x.name),
                &x.generator,
                &mut rows,
            );
        }
        for x in &q.retry.setups {
            track(
                &format!(
                    "bounded wait, retrying clients (first attempts): {}",
                    x.name
                ),
                &x.generator,
                &mut rows,
            );
        }
    }
    let _ = writeln!(
        out,
        "Over every run: the sent rate was within {:.1}% of the intended rate, the worst p99 \
         send lag was {worst_lag:.2} ms, and {overflow} requests went unsent for lack of a \
         connection.\n",
        worst_dev * 100.0
    );
    let _ = writeln!(
        out,
        "| run | intended req/s | sent req/s | lag p99 | lag max | max conns | unsent |\n|---|---|---|---|---|---|---|"
    );
    out.push_str(&rows);
    let _ = writeln!(out);
}

fn method(out: &mut String, r: &Results) {
    let _ = writeln!(
        out,
        "## Reproduce\n\n`make bench` (this report, `results.json` and the PNGs; plus the control \
         service's `bench/control-sync.md`). The runner alone: `cargo run --release -p \
         wipgate-bench -- --out bench` with `WIPGATE_ENVOY` set (`--quick` for a short smoke \
         run). The runner took {:.0} s in this run.{}\n",
        r.runner_wall_s,
        if r.queue.is_some() {
            " `make bench-queue` (`wipgate-bench --out bench --only queue`) runs only the bounded \
             wait's section and merges it into `results.json`, the other sections as they were."
        } else {
            ""
        }
    );
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn an_empty_result_renders_every_section() {
        let text = render(&Results::default());
        for heading in [
            "## Targets",
            "## Overhead",
            "## Bottleneck shapes",
            "### c. Capacity shift",
            "### Steady overload",
            "### Cold start",
            "## Noisy tenant",
            "## The load generator",
        ] {
            assert!(text.contains(heading), "{heading}");
        }
        assert!(text.contains("0 of 0 targets met"));
        assert!(!text.contains("## Bounded wait"), "not measured, not shown");
        let with_queue = render(&Results {
            queue: Some(crate::results::QueueBench::default()),
            ..Results::default()
        });
        for heading in [
            "## Bounded wait (issue 14)",
            "### Poisson arrivals",
            "### Noisy tenant, no `tenants` configuration",
            "### Hand-off between workers",
            "### Retry-After under sustained overload",
        ] {
            assert!(with_queue.contains(heading), "{heading}");
        }
    }

    #[test]
    fn a_missed_target_is_marked_in_bold() {
        let mut results = Results::default();
        results.cold_start.mult = 0.5;
        results.cold_start.setups.push(crate::results::ColdSetup {
            name: WIPGATE_ADAPTIVE.to_owned(),
            sent_by_second: vec![100, 100],
            rejected_by_second: vec![1, 0],
            ..crate::results::ColdSetup::default()
        });
        let text = render(&results);
        let line = text
            .lines()
            .find(|l| l.contains("from a cold start"))
            .unwrap();
        assert!(
            line.ends_with("| 0.50% over 0 s (1 of 200); first 2 s: 1 of 200 | **missed** |"),
            "{line}"
        );
    }

    #[test]
    fn the_checked_in_results_render_the_checked_in_report() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let results = Results::load(&dir.join("results.json")).unwrap();
        let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
        let rendered = render(&results);
        for (i, (got, want)) in rendered.lines().zip(report.lines()).enumerate() {
            assert_eq!(got, want, "bench/report.md line {}", i + 1);
        }
        assert_eq!(rendered, report, "bench/report.md");
    }
}
