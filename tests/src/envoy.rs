//! Starts and stops one real Envoy per test: its bootstrap, its process, its admin API, and
//! its log, printed on failure so a red test shows what Envoy said.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use tempfile::TempDir;

use crate::blocking_http;
use crate::wait::{poll_until, wait_until};

/// Environment variable naming the Envoy binary (the Makefile sets it).
pub const ENVOY_ENV: &str = "WIPGATE_ENVOY";
/// Environment variable naming the filter's `.wasm` (the Makefile sets it).
pub const WASM_ENV: &str = "WIPGATE_WASM";

/// How long Envoy may take to become ready.
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// How long Envoy may take to exit after SIGTERM before it gets SIGKILL.
const STOP_DEADLINE: Duration = Duration::from_secs(10);
/// Timeout of one admin API call.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Lines of Envoy's log printed when a test panics.
const LOG_TAIL_LINES: usize = 200;

/// The Envoy binary from `WIPGATE_ENVOY`; an error naming `make envoy` when the variable is
/// unset, empty, or names no file.
pub fn envoy_binary() -> Result<PathBuf> {
    let Some(path) = std::env::var_os(ENVOY_ENV).filter(|p| !p.is_empty()) else {
        bail!(
            "{ENVOY_ENV} is not set: run `make envoy`, then the Envoy tests with `make test-e2e` \
             (it sets {ENVOY_ENV} and runs them with --include-ignored)"
        );
    };
    let path = PathBuf::from(path);
    if !path.is_file() {
        bail!(
            "{ENVOY_ENV}={} is not a file: run `make envoy`",
            path.display()
        );
    }
    Ok(path)
}

/// The first line of every test that runs Envoy. Such tests are `#[ignore = "needs Envoy"]`
/// (a plain `cargo test` lists them as ignored) and `make test-e2e` runs them with
/// `--include-ignored`; once running, a missing Envoy fails the test with the message of
/// [`envoy_binary`], never lets it pass by returning early.
#[track_caller]
#[allow(clippy::panic)] // A test's precondition: failing it is the point.
pub fn require_envoy() -> PathBuf {
    match envoy_binary() {
        Ok(path) => path,
        Err(e) => panic!("{e:#}"),
    }
}

/// A `.wasm` named by the environment variable `env`, else at `in_workspace` (relative to
/// the workspace root).
fn wasm_path(env: &str, in_workspace: &str) -> PathBuf {
    std::env::var_os(env).filter(|p| !p.is_empty()).map_or_else(
        || {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(in_workspace)
        },
        PathBuf::from,
    )
}

/// The filter's `.wasm`: `WIPGATE_WASM`, else the workspace's release build.
#[must_use]
pub fn default_wasm_path() -> PathBuf {
    wasm_path(WASM_ENV, "target/wasm32-wasip1/release/wipgate_filter.wasm")
}

/// The filter built with the test-only `test-trap` feature (`make filter-trap`):
/// `WIPGATE_TRAP_WASM`, else its place in this workspace.
#[must_use]
pub fn trap_wasm_path() -> PathBuf {
    wasm_path(
        "WIPGATE_TRAP_WASM",
        "target/trap/wasm32-wasip1/release/wipgate_filter.wasm",
    )
}

/// What one test Envoy looks like.
#[derive(Debug, Clone)]
pub struct EnvoyConfig {
    /// JSON text of the plugin configuration; `None` runs a bare Envoy with no wasm filter.
    pub filter_config: Option<String>,
    /// The filter's `.wasm` (default: [`default_wasm_path`]).
    pub wasm_path: PathBuf,
    /// Where the `upstream` cluster sends every request.
    pub upstream: SocketAddr,
    /// The route timeout (default 15 s).
    pub route_timeout: Duration,
    /// Worker threads (default 2).
    pub concurrency: u32,
    /// Raw cluster entries (YAML or JSON text, one cluster each) added beside `upstream`.
    pub extra_clusters: Vec<String>,
    /// HTTP filters (JSON) placed after wipgate and before the router, e.g. a fault filter
    /// that answers with a local reply after wipgate admitted the request.
    pub filters_after: Vec<serde_json::Value>,
    /// The wasm `vm_id` (default `wipgate`).
    pub vm_id: String,
    /// A complete bootstrap (YAML) to use as it is instead of the generated one (the demo
    /// runs `envoy/envoy.yaml` this way); the other fields are then ignored.
    pub bootstrap: Option<String>,
    /// Envoy's log level (default `info`).
    pub log_level: String,
    /// The `upstream` cluster's `circuit_breakers` (JSON, Envoy's `CircuitBreakers`);
    /// `None` (the default): every threshold lifted out of the way.
    pub circuit_breakers: Option<serde_json::Value>,
    /// The route's `retry_policy` (JSON, Envoy's `RetryPolicy`); `None`: no retries.
    pub retry_policy: Option<serde_json::Value>,
    /// Spread connections over the workers exactly (Envoy's `exact_balance`), so that two
    /// connections open at once are served by two different worker threads.
    pub exact_balance: bool,
    /// Further listeners (`ingress-1`, `ingress-2`, ...), each with wipgate configured with
    /// this JSON text on the same `vm_id`, routing as the first ([`Envoy::listener_addrs`]).
    pub extra_listeners: Vec<String>,
    /// The wasm filter's `failure_policy` (default `FAIL_CLOSED`; the shipped configs use
    /// `FAIL_RELOAD`).
    pub failure_policy: String,
}

impl EnvoyConfig {
    /// The defaults, proxying to `upstream`, with no filter.
    #[must_use]
    pub fn new(upstream: SocketAddr) -> Self {
        Self {
            filter_config: None,
            wasm_path: default_wasm_path(),
            upstream,
            route_timeout: Duration::from_secs(15),
            concurrency: 2,
            extra_clusters: Vec::new(),
            filters_after: Vec::new(),
            vm_id: "wipgate".to_owned(),
            bootstrap: None,
            log_level: "info".to_owned(),
            circuit_breakers: None,
            exact_balance: false,
            retry_policy: None,
            extra_listeners: Vec::new(),
            failure_policy: "FAIL_CLOSED".to_owned(),
        }
    }

    /// Sets the plugin configuration (JSON text), which turns the wasm filter on.
    #[must_use]
    pub fn with_filter(mut self, json: impl Into<String>) -> Self {
        self.filter_config = Some(json.into());
        self
    }
}

/// A running Envoy. Dropping it stops the process.
#[derive(Debug)]
pub struct Envoy {
    child: Child,
    /// Holds the bootstrap and the logs; removed on drop.
    dir: TempDir,
    admin: SocketAddr,
    listener: SocketAddr,
}

/// Files of one Envoy run inside its tempdir.
struct Files {
    config: PathBuf,
    admin_path: PathBuf,
    /// Envoy's stdout and stderr. Not `--log-path`: Envoy flushes that file only every
    /// 10 s, while its stderr sink writes each line as it is logged.
    log: PathBuf,
}

impl Files {
    fn in_dir(dir: &Path) -> Self {
        Self {
            config: dir.join("envoy.yaml"),
            admin_path: dir.join("admin_address.txt"),
            log: dir.join("envoy.log"),
        }
    }
}

/// Spawns Envoy on a fresh bootstrap in a fresh tempdir.
fn spawn(cfg: &EnvoyConfig) -> Result<(Child, TempDir)> {
    let binary = envoy_binary()?;
    let dir = tempfile::Builder::new()
        .prefix("wipgate-envoy-")
        .tempdir()
        .context("creating Envoy's tempdir")?;
    let files = Files::in_dir(dir.path());
    std::fs::write(&files.config, crate::bootstrap::render(cfg)?)
        .context("writing the bootstrap")?;
    let log = File::create(&files.log).context("creating Envoy's log file")?;
    // --disable-hot-restart: no shared-memory region or domain socket, so any number of
    // Envoys run side by side without choosing distinct --base-id values.
    let child = Command::new(&binary)
        .arg("-c")
        .arg(&files.config)
        .arg("--concurrency")
        .arg(cfg.concurrency.to_string())
        .arg("--disable-hot-restart")
        .arg("-l")
        .arg(&cfg.log_level)
        .arg("--admin-address-path")
        .arg(&files.admin_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("spawning {}", binary.display()))?;
    Ok((child, dir))
}

/// Everything Envoy logged so far.
fn read_log(dir: &Path) -> String {
    std::fs::read_to_string(Files::in_dir(dir).log).unwrap_or_default()
}

fn read_admin_addr(dir: &Path) -> Option<SocketAddr> {
    let text = std::fs::read_to_string(Files::in_dir(dir).admin_path).ok()?;
    text.trim().parse().ok()
}

fn admin_get(admin: SocketAddr, path: &str) -> Result<blocking_http::Response> {
    blocking_http::get(admin, path, ADMIN_TIMEOUT)
        .with_context(|| format!("admin GET {path} on {admin}"))
}

fn is_ready(admin: SocketAddr) -> bool {
    admin_get(admin, "/ready").is_ok_and(|r| r.status == 200)
}

/// The `ingress` listener's bound address from `/listeners?format=json`, if it is bound.
fn listener_addr_of(admin: SocketAddr) -> Result<Option<SocketAddr>> {
    let resp = admin_get(admin, "/listeners?format=json")?;
    let v: Value = serde_json::from_slice(&resp.body).context("parsing /listeners")?;
    // The listener named `ingress` (the first of the bootstrap), else the first listed.
    let statuses = v["listener_statuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let first = statuses
        .iter()
        .find(|l| l["name"] == "ingress")
        .or(statuses.first());
    let Some(sock) = first.map(|l| l["local_address"]["socket_address"].clone()) else {
        return Ok(None);
    };
    let ip = sock["address"].as_str().unwrap_or("127.0.0.1");
    let port = sock["port_value"].as_u64().unwrap_or(0);
    if port == 0 {
        return Ok(None);
    }
    Ok(Some(format!("{ip}:{port}").parse()?))
}

/// Where a start attempt ended up.
enum Started {
    /// Admin `/ready` answered 200.
    Ready(SocketAddr),
    /// The process ended first.
    Exited(std::process::ExitStatus),
}

/// Polls until Envoy is ready or has exited, within `deadline`.
fn wait_ready_or_exit(child: &mut Child, dir: &Path, deadline: Duration) -> Result<Started> {
    let started = poll_until(deadline, "Envoy to be ready", || match child.try_wait() {
        Ok(Some(status)) => Some(Ok(Started::Exited(status))),
        Err(e) => Some(Err(anyhow!(e).context("waiting on Envoy"))),
        Ok(None) => read_admin_addr(dir)
            .filter(|admin| is_ready(*admin))
            .map(|admin| Ok(Started::Ready(admin))),
    });
    started.map_err(|e| anyhow!("{e}; its log:\n{}", read_log(dir)))?
}

/// Starts Envoy and waits until it is ready and its listener is bound. An Envoy that exits
/// or is not ready within 30 s gives an error carrying its log.
pub fn start(cfg: &EnvoyConfig) -> Result<Envoy> {
    let (mut child, dir) = spawn(cfg)?;
    let started = wait_ready_or_exit(&mut child, dir.path(), READY_DEADLINE);
    let admin = match started {
        Ok(Started::Ready(admin)) => admin,
        Ok(Started::Exited(status)) => {
            let hint = if cfg.filter_config.is_some() && !cfg.wasm_path.is_file() {
                format!(
                    " (the wasm {} does not exist: run `make filter`)",
                    cfg.wasm_path.display()
                )
            } else {
                String::new()
            };
            bail!(
                "Envoy exited ({status}) before it was ready{hint}; its log:\n{}",
                read_log(dir.path())
            );
        }
        Err(e) => {
            kill_and_reap(&mut child);
            return Err(e);
        }
    };
    let mut envoy = Envoy {
        child,
        dir,
        admin,
        listener: SocketAddr::from(([127, 0, 0, 1], 0)),
    };
    let mut found = None;
    wait_until(READY_DEADLINE, "Envoy's listener to be bound", || {
        found = listener_addr_of(admin).ok().flatten();
        found.is_some()
    })
    .with_context(|| format!("Envoy's log:\n{}", envoy.log()))?;
    if let Some(listener) = found {
        envoy.listener = listener;
    }
    Ok(envoy)
}

/// Starts Envoy with a configuration it must refuse, and returns its log. Succeeds when
/// Envoy exits within `deadline`, or becomes ready with no bound listener, or its listener
/// does not serve (connection error, or a 5xx of Envoy's own without
/// `x-wipgate-reason`). Fails when the listener serves a request (the configuration was
/// accepted), or Envoy neither exits nor becomes ready in time. Give it an upstream that
/// runs, so an accepted configuration really is served.
///
/// Envoy 1.40 exits with status 1 within a fraction of a second when a fail-closed wasm
/// plugin's `on_configure` returns false, or its `.wasm` is missing, in a static listener.
pub fn start_expect_refused(cfg: &EnvoyConfig, deadline: Duration) -> Result<String> {
    let (mut child, dir) = spawn(cfg)?;
    let started = wait_ready_or_exit(&mut child, dir.path(), deadline);
    let admin = match started {
        Ok(Started::Exited(_)) => return Ok(read_log(dir.path())),
        Ok(Started::Ready(admin)) => admin,
        Err(e) => {
            kill_and_reap(&mut child);
            return Err(e);
        }
    };
    let verdict = probe_refused(admin);
    kill_and_reap(&mut child);
    let log = read_log(dir.path());
    match verdict {
        Ok(None) => Ok(log),
        Ok(Some(why)) => bail!("Envoy accepted the configuration: {why}; its log:\n{log}"),
        Err(e) => Err(e.context(format!("Envoy's log:\n{log}"))),
    }
}

/// `Ok(None)` when the listener does not serve, `Ok(Some(why))` when it does.
fn probe_refused(admin: SocketAddr) -> Result<Option<String>> {
    let Some(listener) = listener_addr_of(admin)? else {
        return Ok(None);
    };
    match blocking_http::get(listener, "/", ADMIN_TIMEOUT) {
        Err(_) => Ok(None),
        Ok(r) if r.status >= 500 && r.header("x-wipgate-reason").is_none() => Ok(None),
        Ok(r) => Ok(Some(format!("GET / on {listener} answered {}", r.status))),
    }
}

/// SIGKILL and reap; for paths that already fail.
fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

impl Envoy {
    /// Starts Envoy: see [`start`].
    pub fn start(cfg: &EnvoyConfig) -> Result<Self> {
        start(cfg)
    }

    /// The HTTP listener's bound address.
    #[must_use]
    pub fn listener_addr(&self) -> SocketAddr {
        self.listener
    }

    /// Every listener's bound address, in the order of the bootstrap (the first listener,
    /// then [`EnvoyConfig::extra_listeners`]).
    pub fn listener_addrs(&self) -> Result<Vec<SocketAddr>> {
        let resp = admin_get(self.admin, "/listeners?format=json")?;
        let v: Value = serde_json::from_slice(&resp.body).context("parsing /listeners")?;
        let mut named: Vec<(String, SocketAddr)> = Vec::new();
        for status in v["listener_statuses"].as_array().into_iter().flatten() {
            let sock = &status["local_address"]["socket_address"];
            let ip = sock["address"].as_str().unwrap_or("127.0.0.1");
            let port = sock["port_value"].as_u64().unwrap_or(0);
            let name = status["name"].as_str().unwrap_or_default().to_owned();
            named.push((name, format!("{ip}:{port}").parse()?));
        }
        // "ingress" first, then "ingress-1", "ingress-2", ... in order.
        named.sort_by_key(|(name, _)| {
            name.strip_prefix("ingress-")
                .and_then(|n| n.parse::<u32>().ok())
                .unwrap_or(0)
        });
        Ok(named.into_iter().map(|(_, addr)| addr).collect())
    }

    /// The admin API's address.
    #[must_use]
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The process id.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The tempdir holding `envoy.yaml` and `envoy.log`.
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything Envoy logged so far (its stdout and stderr).
    #[must_use]
    pub fn log(&self) -> String {
        read_log(self.dir.path())
    }

    /// `GET path` on the admin API.
    pub fn admin_get(&self, path: &str) -> Result<blocking_http::Response> {
        admin_get(self.admin, path)
    }

    /// Every counter and gauge by its full name (wasm stats as `wasmcustom.<name>`), from
    /// `/stats?format=json`; histograms and text readouts are left out.
    pub fn stats(&self) -> Result<BTreeMap<String, u64>> {
        let resp = self.admin_get("/stats?format=json")?;
        let v: Value = serde_json::from_slice(&resp.body).context("parsing /stats")?;
        let entries = v["stats"]
            .as_array()
            .ok_or_else(|| anyhow!("/stats has no `stats` array"))?;
        Ok(entries
            .iter()
            .filter_map(|s| Some((s["name"].as_str()?.to_owned(), s["value"].as_u64()?)))
            .collect())
    }

    /// One counter or gauge by its full name; `None` when Envoy has no such stat (or the
    /// admin call failed).
    #[must_use]
    pub fn stat(&self, name: &str) -> Option<u64> {
        self.stats().ok()?.get(name).copied()
    }

    /// A stat a wasm plugin defined as `name`: Envoy shows it as `wasmcustom.<name>`.
    #[must_use]
    pub fn wasm_stat(&self, name: &str) -> Option<u64> {
        self.stat(&format!("wasmcustom.{name}"))
    }

    /// The `/stats/prometheus` text.
    pub fn prometheus(&self) -> Result<String> {
        Ok(self.admin_get("/stats/prometheus")?.text())
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, wait up to 10 s, then SIGKILL; reaps the process. Idempotent.
    pub fn stop(&mut self) -> Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = self.child.id().to_string();
        let term = Command::new("kill")
            .args(["-TERM", &pid])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if term.is_ok_and(|s| s.success()) {
            let exited = poll_until(STOP_DEADLINE, "Envoy to exit on SIGTERM", || {
                match self.child.try_wait() {
                    Ok(None) => None,
                    Ok(Some(_)) => Some(Ok(())),
                    Err(e) => Some(Err(e)),
                }
            });
            // Not gone in time: SIGKILL below.
            if let Ok(reaped) = exited {
                return Ok(reaped?);
            }
        }
        self.child.kill().context("SIGKILL to Envoy")?;
        self.child.wait().context("reaping Envoy")?;
        Ok(())
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            eprintln!(
                "---- last {} lines of Envoy's log ({}) ----\n{}\n---- end of Envoy's log ----",
                tail.len(),
                self.dir.path().display(),
                tail.join("\n")
            );
        }
        if let Err(e) = self.stop() {
            eprintln!("stopping Envoy (pid {}): {e:#}", self.child.id());
        }
    }
}
