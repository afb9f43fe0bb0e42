//! Child processes of a test: the control service (`wipgate-control`, the real binary) and a
//! redis-server of the test's own (with or without persistence), each on a free loopback
//! port, stopped on drop.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use tempfile::TempDir;

use crate::blocking_http;
use crate::wait::wait_until;

/// Environment variable naming the control-service binary (the Makefile sets it).
pub const CONTROL_ENV: &str = "WIPGATE_CONTROL";
/// The admin token the test control services use.
pub const ADMIN_TOKEN: &str = "e2e-admin-token";
const TIMEOUT: Duration = Duration::from_secs(5);

/// A port nobody listens on right now.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A system tool's binary: the environment variable `var` when set and not empty, else
/// `default` (a name on `PATH`).
#[must_use]
pub fn tool_binary(var: &str, default: &str) -> String {
    std::env::var(var)
        .ok()
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Environment variable naming the redis-server binary (default: `redis-server` on PATH).
pub const REDIS_SERVER_ENV: &str = "WIPGATE_REDIS_SERVER";
/// How long a redis-server may take to answer `PING` after it is spawned.
const REDIS_READY: Duration = Duration::from_secs(10);

/// A redis-server of the test's own on a free loopback port, with its data directory in a
/// tempdir; killed on drop. The one starter for the e2e tests, the benchmarks and the
/// control service's tests.
#[derive(Debug)]
pub struct Redis {
    child: Option<Child>,
    binary: String,
    port: u16,
    append_only: bool,
    /// Further redis-server arguments.
    extra: Vec<String>,
    dir: TempDir,
}

impl Redis {
    /// Starts one without persistence and waits until it answers `PING`.
    pub fn start() -> Result<Self> {
        Self::launch(Self::binary(), false)
    }

    /// [`Redis::start`] with the redis-server `binary` (a name on `PATH` or a path).
    pub fn start_binary(binary: &str) -> Result<Self> {
        Self::launch(binary.to_owned(), false)
    }

    /// Starts one with append-only persistence: every write is in its data directory, so
    /// [`Redis::restart`] after [`Redis::kill`] finds the data again (a crash and recovery).
    pub fn start_persistent() -> Result<Self> {
        Self::launch(Self::binary(), true)
    }

    /// [`Redis::start`] with further redis-server arguments.
    pub fn start_with(extra: &[&str]) -> Result<Self> {
        Self::launch_with(Self::binary(), false, extra)
    }

    fn launch(binary: String, append_only: bool) -> Result<Self> {
        Self::launch_with(binary, append_only, &[])
    }

    fn launch_with(binary: String, append_only: bool, extra: &[&str]) -> Result<Self> {
        let mut redis = Self {
            child: None,
            binary,
            port: free_port()?,
            append_only,
            extra: extra.iter().map(|a| (*a).to_owned()).collect(),
            dir: tempfile::tempdir()?,
        };
        redis.spawn()?;
        Ok(redis)
    }

    /// The binary: `WIPGATE_REDIS_SERVER`, else `redis-server`.
    #[must_use]
    pub fn binary() -> String {
        tool_binary(REDIS_SERVER_ENV, "redis-server")
    }

    fn spawn(&mut self) -> Result<()> {
        let binary = &self.binary;
        let child = Command::new(binary)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly"])
            .arg(if self.append_only { "yes" } else { "no" })
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| {
                format!("spawning {binary} (apt-get install -y redis-server, or set {REDIS_SERVER_ENV})")
            })?;
        self.child = Some(child);
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        wait_until(REDIS_READY, "redis-server to answer PING", || ping(addr))
    }

    /// `redis://127.0.0.1:PORT`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id while it runs (for CPU accounting in the benchmarks).
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(&mut child);
        }
    }

    /// Starts it again on the same port and data directory, and waits until it answers.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of the test's own: `masters` redis-servers on free ports, no replicas,
/// the slots spread by `redis-cli --cluster create`; killed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<Redis>,
}

impl RedisCluster {
    /// Starts the nodes, creates the cluster and waits until every node says it is ok.
    pub fn start(masters: usize) -> Result<Self> {
        let nodes = (0..masters)
            .map(|_| {
                Redis::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                ])
            })
            .collect::<Result<Vec<_>>>()?;
        let cli = tool_binary("WIPGATE_REDIS_CLI", "redis-cli");
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new(&cli)
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .with_context(|| format!("running {cli} --cluster create"))?;
        if !out.status.success() {
            bail!(
                "redis-cli --cluster create: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        for node in &nodes {
            wait_until(REDIS_READY, "the cluster to be ok", || {
                Command::new(&cli)
                    .args(["-p", &node.port.to_string(), "cluster", "info"])
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
            })?;
        }
        Ok(Self { nodes })
    }

    /// The seed nodes, comma-separated `redis://` URLs (`--redis-url` with `--redis-cluster`).
    #[must_use]
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(Redis::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The nodes.
    #[must_use]
    pub fn nodes(&self) -> &[Redis] {
        &self.nodes
    }
}

/// Whether a Redis at `addr` answers `PING` with `+PONG` (not only accepts the connection:
/// one still loading its append-only file answers `-LOADING`).
fn ping(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, TIMEOUT) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(TIMEOUT));
    let mut buf = [0u8; 16];
    stream.write_all(b"PING\r\n").is_ok()
        && stream
            .read(&mut buf)
            .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
}

/// The real control service on a fixed free port, so it can be killed and started again
/// where the Envoys expect it.
#[derive(Debug)]
pub struct ControlService {
    child: Option<Child>,
    addr: SocketAddr,
    args: Vec<String>,
}

impl ControlService {
    /// The binary from `WIPGATE_CONTROL`.
    pub fn binary() -> Result<PathBuf> {
        let path = std::env::var_os(CONTROL_ENV)
            .map(PathBuf::from)
            .ok_or_else(|| {
                anyhow!("{CONTROL_ENV} is not set: run the tests with `make test-e2e`")
            })?;
        if !path.is_file() {
            bail!(
                "{CONTROL_ENV}={} is not a file: `cargo build -p wipgate-control`",
                path.display()
            );
        }
        Ok(path)
    }

    /// Starts it with the memory store, or on `redis_url`, with extra flags `args`.
    pub fn start(redis_url: Option<&str>, args: &[&str]) -> Result<Self> {
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let mut all = vec!["--listen".to_owned(), addr.to_string()];
        if let Some(url) = redis_url {
            all.extend(["--redis-url".to_owned(), url.to_owned()]);
        }
        all.extend(args.iter().map(|a| (*a).to_owned()));
        let mut service = Self {
            child: None,
            addr,
            args: all,
        };
        service.restart()?;
        Ok(service)
    }

    /// Where it listens.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Kills it (SIGKILL): no goodbye to anyone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(&mut child);
        }
    }

    /// Starts it again on the same address and waits until it is ready.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        let child = Command::new(Self::binary()?)
            .args(&self.args)
            .env("WIPGATE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawning wipgate-control")?;
        self.child = Some(child);
        let addr = self.addr;
        wait_until(TIMEOUT * 2, "wipgate-control /readyz", || {
            blocking_http::get(addr, "/readyz", TIMEOUT).is_ok_and(|r| r.status == 200)
        })
    }

    /// An admin call with the bearer token; returns status and body.
    pub fn admin(&self, method: &str, path: &str, body: &Value) -> Result<(u16, String)> {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        let headers = [
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ];
        let r = blocking_http::request(
            self.addr,
            method,
            path,
            &headers,
            body.to_string().as_bytes(),
            TIMEOUT,
        )?;
        Ok((r.status, r.text()))
    }

    /// `GET path` as JSON.
    pub fn get_json(&self, path: &str) -> Result<Value> {
        let r = blocking_http::get(self.addr, path, TIMEOUT)?;
        serde_json::from_slice(&r.body).with_context(|| format!("GET {path}: {}", r.text()))
    }

    /// The Envoy cluster entry (YAML) that points at this service, named `name`.
    #[must_use]
    pub fn cluster(&self, name: &str) -> String {
        static_cluster(name, self.addr)
    }
}

/// A STATIC HTTP/1.1 cluster entry (YAML) for `addr`.
#[must_use]
pub fn static_cluster(name: &str, addr: SocketAddr) -> String {
    format!(
        "name: {name}\ntype: STATIC\nconnect_timeout: 0.25s\nload_assignment:\n  cluster_name: {name}\n  endpoints:\n  - lb_endpoints:\n    - endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}",
        addr.ip(),
        addr.port()
    )
}

impl Drop for ControlService {
    fn drop(&mut self) {
        self.kill();
    }
}
