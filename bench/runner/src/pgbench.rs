//! The PostgreSQL shape's capacity, measured by pgbench itself on the upstream's own
//! transaction at each client count: its best transactions per second is the capacity the
//! report compares against, and the client count at the best is the C the circuit breaker
//! and wipgate static are told.

use std::io::Write as _;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::results::{Pgbench, PgbenchRun};
use crate::scenarios::Timing;

/// The number after `prefix` on the line of pgbench's output that starts with it.
fn figure(output: &str, prefix: &str) -> Option<f64> {
    output
        .lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// One pgbench run: `-c clients -j min(2, clients) -T secs -f script`.
fn run(dsn: &str, script: &std::path::Path, clients: usize, secs: u64) -> Result<PgbenchRun> {
    let out = Command::new("pgbench")
        .args(["-n", "-c", &clients.to_string()])
        .args(["-j", &clients.min(2).to_string()])
        .args(["-T", &secs.to_string(), "-f"])
        .arg(script)
        .arg(dsn)
        .output()
        .context("running pgbench (apt-get install -y postgresql-client)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "pgbench -c {clients}: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(PgbenchRun {
        clients,
        tps: figure(&text, "tps =").context("no `tps =` in pgbench's output")?,
        latency_ms: figure(&text, "latency average =").unwrap_or(0.0),
    })
}

/// pgbench at each of `timing.pgbench_clients` on `dsn` with `script`.
pub fn measure(dsn: &str, script: &str, timing: Timing) -> Result<Pgbench> {
    let mut file = tempfile::Builder::new()
        .prefix("wipgate-pgbench-")
        .suffix(".sql")
        .tempfile()?;
    file.write_all(script.as_bytes())?;
    file.flush()?;
    let secs = timing.pgbench_run.as_secs().max(1);
    let mut runs = Vec::new();
    for &clients in timing.pgbench_clients {
        let r = run(dsn, file.path(), clients, secs)?;
        eprintln!("postgres: pgbench -c {clients}: {:.0} tps", r.tps);
        runs.push(r);
    }
    let best = runs
        .iter()
        .max_by(|a, b| a.tps.total_cmp(&b.tps))
        .context("no pgbench run")?;
    Ok(Pgbench {
        script: script.to_owned(),
        duration_s: timing.pgbench_run.as_secs_f64(),
        best_tps: best.tps,
        best_clients: best.clients,
        runs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tps_and_latency_from_pgbench_output() {
        let out = "number of failed transactions: 0 (0.000%)\nlatency average = 13.767 ms\n\
                   initial connection time = 14.073 ms\n\
                   tps = 145.271367 (without initial connection time)\n";
        assert_eq!(figure(out, "tps ="), Some(145.271_367));
        assert_eq!(figure(out, "latency average ="), Some(13.767));
        assert_eq!(figure(out, "nothing ="), None);
    }
}
