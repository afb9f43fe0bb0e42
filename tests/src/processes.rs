//! Child processes of a test: the control service (`wipgate-control`, the real binary) and a
//! redis-server of the test's own, each on a free loopback port, stopped on drop.

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

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A redis-server without persistence, on a free port.
#[derive(Debug)]
pub struct Redis {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Redis {
    /// Starts it and waits until it accepts connections.
    pub fn start() -> Result<Self> {
        Self::start_binary("redis-server")
    }

    /// [`Redis::start`] with the redis-server `binary` (a name on `PATH` or a path).
    pub fn start_binary(binary: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let child = Command::new(binary)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("spawning {binary} (apt-get install -y redis-server)"))?;
        let redis = Self {
            child,
            port,
            _dir: dir,
        };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        wait_until(TIMEOUT, "redis-server to listen", || {
            std::net::TcpStream::connect(addr).is_ok()
        })?;
        Ok(redis)
    }

    /// `redis://127.0.0.1:PORT`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Its process id (e.g. to read its CPU time).
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
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
