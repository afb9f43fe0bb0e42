//! Turns one run's `results.json` into `report.md`: the headline ratios against the
//! baselines of the same run, then every table, the plots, and how well the load generator
//! kept its rates.

use std::fmt::Write as _;
use std::process::Command;

use crate::results::{Generator, Machine, OverheadSetup, OverloadPoint, OverloadSetup, Results};

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

fn point(setup: &OverloadSetup, mult: f64) -> Option<&OverloadPoint> {
    setup.points.iter().find(|p| (p.mult - mult).abs() < 1e-9)
}

fn overload_setup<'a>(r: &'a Results, name: &str) -> Option<&'a OverloadSetup> {
    r.overload.setups.iter().find(|x| x.name == name)
}

fn overhead_setup<'a>(r: &'a Results, name: &str) -> Option<&'a OverheadSetup> {
    r.overhead.setups.iter().find(|x| x.name == name)
}

/// `report.md` for `r` (the contents of `results.json`).
#[must_use]
pub fn render(r: &Results) -> String {
    let mut out = String::new();
    header(&mut out, r);
    headline(&mut out, r);
    overhead(&mut out, r);
    overload(&mut out, r);
    noisy(&mut out, r);
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
         plots by `bench/plot.py` from `bench/results.json`. Timings are ratios against \
         baselines measured in the same run; the targets are the issue's, and a missed target \
         is reported here, not failed in the build.\n",
        m.date
    );
    let _ = writeln!(
        out,
        "**Machine:** {} CPUs ({}), Envoy {}. The load generator, Envoy (`--concurrency 2`) and \
         the upstream all run on the same 2 cores, and the machine is shared (another \
         engineer's test runs may overlap with this one), so absolute numbers are modest and \
         somewhat noisy; the ratios between setups measured side by side are the point.{}\n",
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

fn headline(out: &mut String, r: &Results) {
    let _ = writeln!(out, "## Headline\n");
    let _ = writeln!(out, "| target | this run | |\n|---|---|---|");
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
        "| wipgate adds < 50 µs p50 | {added:+.0} µs over bare Envoy ({added_pass:+.0} µs over the pass-through filter) at {:.0} req/s, from the intended send time; {added_rtt:+.0} µs in round trip | {} |",
        r.overhead.fixed_rate,
        met(added < 50.0)
    );
    let unloaded = overload_setup(r, "no protection")
        .and_then(|x| point(x, 0.5))
        .map_or(f64::NAN, |p| p.ok_p99_ms);
    for x in &r.overload.setups {
        let name = &x.name;
        if x.missing {
            let _ = writeln!(
                out,
                "| {name}: goodput ≥ 0.95 at 3x | missing (not run) | — |"
            );
            continue;
        }
        let Some(p) = point(x, 3.0) else { continue };
        let g = p.goodput;
        let _ = writeln!(
            out,
            "| {name}: goodput ≥ 0.95 of capacity at 3x | {g:.3} | {} |",
            met(g >= 0.95)
        );
    }
    if let Some(p) = overload_setup(r, "wipgate static").and_then(|x| point(x, 3.0)) {
        let ratio = p.ok_p99_ms / unloaded;
        let _ = writeln!(
            out,
            "| wipgate static: admitted p99 at 3x ≤ 1.5x the unloaded p99 | {ratio:.2}x ({:.1} ms vs {unloaded:.1} ms unloaded) | {} |",
            p.ok_p99_ms,
            met(ratio <= 1.5)
        );
        let rej = p.rej_rtt_p99_ms;
        let _ = writeln!(
            out,
            "| wipgate static: rejections answered in < 1 ms p99 at 3x | {rej:.2} ms from the request's write to the answer ({:.2} ms from its intended send time, which adds the generator's own lag and any connect) | {} |",
            p.rej_p99_ms,
            met(rej < 1.0)
        );
    }
    let _ = writeln!(
        out,
        "\nThe unloaded p99 is that of no protection at 0.5x capacity ({unloaded:.1} ms; the \
         bottleneck's service time is {:.0} ms).\n",
        r.overload.base_ms
    );
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
    let _ = writeln!(out, "\n![overhead](overhead.png)\n");
}

fn overload(out: &mut String, r: &Results) {
    let ol = &r.overload;
    let _ = writeln!(out, "## Overload\n");
    let _ = writeln!(
        out,
        "A bottleneck upstream of capacity C = {} in flight: up to C each request takes {:.0} ms \
         ({:.0} req/s); beyond, a request that finds n in flight takes {:.0} ms × (1 + {} × (n − \
         C) / C), at most {:.0} ms — congestion collapse, like a database under lock \
         contention: pushed past C it serves less, not more. Open-loop arrival at a constant \
         rate for {} s per point, latency from the intended send time; a fresh upstream and \
         Envoy per point, warmed up with half a second at capacity's rate (then drained) so \
         that start-up costs (V8 compiling the rejection path, upstream connections, \
         adaptive_concurrency's first minimum-RTT window) are not in the figures; the client gives up after {} s (counted as failed). Goodput: 2xx \
         answers per second over the {} s, as a fraction of capacity. Latencies count from the \
         intended send time; the round trip of a rejection counts from its write on a ready \
         connection.\n",
        ol.knee,
        ol.base_ms,
        ol.capacity_rps,
        ol.base_ms,
        ol.slope,
        ol.max_service_ms,
        ol.point_s,
        ol.client_timeout_s,
        ol.point_s,
    );
    let _ = writeln!(
        out,
        "Setups: **no protection** (Envoy's circuit breakers lifted); **Envoy circuit breaker** \
         at C (`max_connections`, `max_requests` and `max_pending_requests` = {c}); **Envoy \
         adaptive_concurrency** (gradient controller, p90 samples, limit updated every 100 ms, \
         min RTT from 50 requests at start); **wipgate static** (`{}`); **wipgate adaptive** \
         (`{}`).\n",
        r.wipgate_static,
        r.wipgate_adaptive,
        c = ol.knee,
    );
    for x in &ol.setups {
        let name = &x.name;
        if x.missing {
            let _ = writeln!(out, "### {name}\n\nmissing (not run)\n");
            continue;
        }
        let _ = writeln!(out, "### {name}\n");
        let _ = writeln!(
            out,
            "| load | sent | goodput | ok p50 | ok p99 | ok p99.9 | rejected | rej p99 (round trip) | failed | upstream max in flight |\n|---|---|---|---|---|---|---|---|---|---|"
        );
        for p in &x.points {
            let _ = writeln!(
                out,
                "| {}x | {} | {:.2} | {:.1} ms | {:.1} ms | {:.1} ms | {:.0}% | {} | {} | {} |",
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
        let _ = writeln!(out);
    }
    let _ = writeln!(
        out,
        "![goodput and latency by offered load](overload_summary.png)\n\n\
         ![goodput and latency over time at 3x](overload_timeseries_3x.png)\n\n\
         ![goodput and latency over time at 5x](overload_timeseries_5x.png)\n"
    );
    reading(out);
}

fn reading(out: &mut String) {
    let _ = writeln!(
        out,
        "### Reading the figures\n\n\
         - **No protection**: past C the bottleneck slows down, so it serves less the more \
           it is offered; requests pile up inside it and most time out on the client.\n\
         - **Envoy circuit breaker** at C keeps the bottleneck at C, and its pending queue \
           (also C) keeps it busy, so goodput stays at capacity; the price is queueing: \
           admitted requests wait up to one service time for a connection, so their p50 and \
           p99 are well above the unloaded ones.\n\
         - **Envoy adaptive_concurrency** learns a limit from latency; the gradient \
           controller's limit settles above C (see the upstream's maximum in flight), the \
           bottleneck runs past its knee, slower, and goodput sits well under capacity.\n\
         - **wipgate static** at C keeps the bottleneck at or under C and admitted latency at \
           the unloaded one, and answers the excess at once. It has no queue and its slot \
           covers the whole round trip through Envoy, so the bottleneck idles between a \
           release and the next admitted arrival: goodput sits a few percent under capacity \
           at a limit of exactly C. (Adaptive limits, once implemented, are the place to \
           close that gap.)\n"
    );
}

fn noisy(out: &mut String, r: &Results) {
    let n = &r.noisy;
    let _ = writeln!(out, "## Noisy tenant\n");
    let _ = writeln!(
        out,
        "The same bottleneck. Tenant `noisy` sends {:.0} req/s, `t1`…`t4` {:.0} req/s each \
         (`x-tenant-id`), {:.0} req/s in all ({:.1}x capacity), open loop for {} s. wipgate \
         runs with `{}`: no tenant holds more than half the limit. Per tenant: success rate \
         (2xx of sent) and p99 of its successes.\n",
        n.noisy_rate,
        n.normal_rate,
        n.rate,
        n.rate / r.overload.capacity_rps,
        r.overload.point_s,
        r.wipgate_tenants,
    );
    let tenants = crate::scenarios::TENANTS;
    let mut head = String::from("| setup |");
    let mut rule = String::from("|---|");
    for t in tenants {
        let _ = write!(head, " {t} |");
        rule.push_str("---|");
    }
    let _ = writeln!(out, "{head}\n{rule}");
    for x in &n.setups {
        let name = &x.name;
        if x.missing {
            let _ = writeln!(
                out,
                "| {name} | missing (not run) |{}",
                " |".repeat(tenants.len() - 1)
            );
            continue;
        }
        let mut row = format!("| {name} |");
        for t in &x.tenants {
            let _ = write!(
                row,
                " {:.0}% ok, p99 {:.0} ms |",
                t.success * 100.0,
                t.ok_p99_ms
            );
        }
        let _ = writeln!(out, "{row}");
    }
    let _ = writeln!(out, "\n![per-tenant success](noisy_tenant.png)\n");
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
         could not send for lack of a connection.\n"
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
    for x in &r.overload.setups {
        for p in &x.points {
            track(
                &format!("overload: {} {}x", x.name, p.mult),
                &p.generator,
                &mut rows,
            );
        }
    }
    for x in &r.noisy.setups {
        if let Some(g) = &x.generator {
            track(&format!("noisy tenant: {}", x.name), g, &mut rows);
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
         run). The runner took {:.0} s in this run.\n",
        r.runner_wall_s
    );
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn an_empty_result_renders_every_section_and_names_the_missing_setup() {
        let mut results = Results::default();
        results.overload.setups.push(OverloadSetup {
            name: "wipgate adaptive".to_owned(),
            missing: true,
            points: Vec::new(),
        });
        let text = render(&results);
        for heading in [
            "## Headline",
            "## Overhead",
            "## Overload",
            "## Noisy tenant",
        ] {
            assert!(text.contains(heading), "{heading}");
        }
        assert!(text.contains("| wipgate adaptive: goodput ≥ 0.95 at 3x | missing"));
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
