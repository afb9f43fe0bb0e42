//! A real Prometheus for one test: the binary from Debian's `prometheus` package, its
//! configuration and data in a tempdir, on a free loopback port, scraping the given targets
//! every second and evaluating the given rule files; killed on drop. The tests ask it what
//! an operator's dashboard and alerts would (`/api/v1/query`, `/api/v1/alerts`).

use std::fmt::Write as _;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tempfile::TempDir;

use crate::blocking_http;
use crate::processes::{free_port, tool_binary};
use crate::wait::wait_until;

/// Environment variable naming the prometheus binary (default: `prometheus` on `PATH`).
pub const PROMETHEUS_ENV: &str = "WIPGATE_PROMETHEUS";
const TIMEOUT: Duration = Duration::from_secs(5);
const READY_DEADLINE: Duration = Duration::from_secs(30);

/// One scrape job.
#[derive(Debug, Clone)]
pub struct ScrapeJob {
    /// The `job` label.
    pub name: String,
    /// Where it scrapes.
    pub target: SocketAddr,
    /// The path of the metrics (`/metrics`, Envoy's `/stats/prometheus`).
    pub path: String,
}

impl ScrapeJob {
    /// A job named `name` scraping `path` on `target`.
    #[must_use]
    pub fn new(name: &str, target: SocketAddr, path: &str) -> Self {
        Self {
            name: name.to_owned(),
            target,
            path: path.to_owned(),
        }
    }
}

/// A running Prometheus.
#[derive(Debug)]
pub struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: TempDir,
}

/// prometheus.yml: 1 s scrapes and rule evaluations, so a test sees rates within seconds.
fn config(jobs: &[ScrapeJob], rule_files: &[PathBuf]) -> String {
    let mut out = String::from("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n");
    out.push_str("rule_files:\n");
    for file in rule_files {
        let _ = writeln!(out, "- {:?}", file.display().to_string());
    }
    out.push_str("scrape_configs:\n");
    for job in jobs {
        let _ = writeln!(
            out,
            "- job_name: {:?}\n  metrics_path: {:?}\n  static_configs:\n  - targets: [{:?}]",
            job.name,
            job.path,
            job.target.to_string()
        );
    }
    out
}

/// Percent-encodes a query parameter (everything but RFC 3986's unreserved characters).
fn encode(value: &str) -> String {
    value.bytes().fold(String::new(), |mut out, b| {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
        out
    })
}

impl Prometheus {
    /// The binary: `WIPGATE_PROMETHEUS`, else `prometheus`.
    #[must_use]
    pub fn binary() -> String {
        tool_binary(PROMETHEUS_ENV, "prometheus")
    }

    /// Starts one scraping `jobs` and evaluating `rule_files`, and waits until it is ready.
    pub fn start(jobs: &[ScrapeJob], rule_files: &[PathBuf]) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("wipgate-prometheus-")
            .tempdir()?;
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config(jobs, rule_files))?;
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let log = File::create(dir.path().join("prometheus.log"))?;
        let binary = Self::binary();
        let child = Command::new(&binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!(
                    "spawning {binary} (apt-get install -y prometheus, or set {PROMETHEUS_ENV})"
                )
            })?;
        let prometheus = Self { child, addr, dir };
        wait_until(READY_DEADLINE, "Prometheus /-/ready", || {
            blocking_http::get(addr, "/-/ready", TIMEOUT).is_ok_and(|r| r.status == 200)
        })
        .with_context(|| format!("Prometheus' log:\n{}", prometheus.log()))?;
        Ok(prometheus)
    }

    /// Where its API listens.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Everything it logged so far.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// Its configuration directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn api(&self, path: &str) -> Result<Value> {
        let r = blocking_http::get(self.addr, path, TIMEOUT)?;
        let v: Value = serde_json::from_slice(&r.body)
            .with_context(|| format!("GET {path}: {} {}", r.status, r.text()))?;
        if v["status"] != "success" {
            bail!("GET {path}: {v}");
        }
        Ok(v["data"].clone())
    }

    /// An instant query's result vector (an error when Prometheus refuses the query).
    pub fn query(&self, promql: &str) -> Result<Vec<Value>> {
        let data = self.api(&format!("/api/v1/query?query={}", encode(promql)))?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// The alerts now pending or firing.
    pub fn alerts(&self) -> Result<Vec<Value>> {
        let data = self.api("/api/v1/alerts")?;
        Ok(data["alerts"].as_array().cloned().unwrap_or_default())
    }

    /// The rules whose last evaluation failed (`health: err`), with the error: a rule that
    /// parses can still fail on real data (e.g. two series left with one label set).
    pub fn rule_errors(&self) -> Result<Vec<String>> {
        let data = self.api("/api/v1/rules")?;
        let groups = data["groups"].as_array().cloned().unwrap_or_default();
        Ok(groups
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .filter(|r| r["health"] == "err")
            .map(|r| format!("{}: {}", r["name"], r["lastError"]))
            .collect())
    }

    /// Every scrape target's health (`up`, `down`, `unknown`) with its last error.
    pub fn targets(&self) -> Result<Vec<(String, String, String)>> {
        let data = self.api("/api/v1/targets")?;
        let active = data["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        Ok(active
            .iter()
            .map(|t| {
                let field = |k: &str| t[k].as_str().unwrap_or_default().to_owned();
                (field("scrapeUrl"), field("health"), field("lastError"))
            })
            .collect())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn encodes_promql_for_a_query_string() {
        assert_eq!(
            encode(r#"sum by (reason) (rate(x{a="b"}[1m]))"#),
            "sum%20by%20%28reason%29%20%28rate%28x%7Ba%3D%22b%22%7D%5B1m%5D%29%29"
        );
    }

    #[test]
    fn the_config_scrapes_every_job_and_loads_every_rule_file() {
        let jobs = [ScrapeJob::new(
            "envoy",
            "127.0.0.1:9901".parse().unwrap(),
            "/stats/prometheus",
        )];
        let text = config(&jobs, &[PathBuf::from("/r/rules.yaml")]);
        assert!(text.contains("- \"/r/rules.yaml\"\n"), "{text}");
        assert!(
            text.contains("- job_name: \"envoy\"\n  metrics_path: \"/stats/prometheus\"\n  static_configs:\n  - targets: [\"127.0.0.1:9901\"]"),
            "{text}"
        );
    }
}
