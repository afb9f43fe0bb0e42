//! `make bench-control`: `/v1/sync` throughput and latency of `wipgate-control` with each
//! store, measured on loopback by a keep-alive HTTP/1.1 load generator in this process.
//!
//! The service runs as its own process (the release binary next to this one), so its CPU
//! time can be read from `/proc/PID/stat`: "per core" is requests / CPU-seconds the
//! service (and, for Redis, redis-server) used. The load generator shares the machine,
//! so wall-clock req/s understates what a dedicated core does. redis-server, free ports,
//! readiness polling and percentiles come from the e2e harness (`wipgate-e2e`).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use wipgate_e2e::processes::{free_port, Redis};
use wipgate_e2e::summary::sorted_percentile;
use wipgate_e2e::{blocking_http, wait_until};

#[derive(Parser)]
#[command(about = "Benchmark POST /v1/sync of wipgate-control with the memory and Redis stores")]
struct Args {
    /// Seconds of measured load per store.
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Distinct Envoy instances the requests claim to be.
    #[arg(long, default_value_t = 50)]
    instances: usize,
    /// Stores to measure.
    #[arg(long, value_delimiter = ',', default_value = "memory,redis")]
    stores: Vec<String>,
    /// The service binary (default: `wipgate-control` next to this binary).
    #[arg(long)]
    server: Option<PathBuf>,
    /// redis-server binary.
    #[arg(long, default_value = "redis-server")]
    redis_server: String,
    /// Write the report (markdown) here too.
    #[arg(long)]
    out: Option<PathBuf>,
}

struct Row {
    store: String,
    requests: u64,
    errors: u64,
    wall_s: f64,
    server_cpu_s: f64,
    redis_cpu_s: f64,
    p50: Duration,
    p99: Duration,
    p999: Duration,
}

/// Children are killed on drop, so a failed run leaves nothing behind.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of a process, in seconds.
fn cpu_s(pid: u32, tck: f64) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("bad /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime): (f64, f64) = (fields[11].parse()?, fields[12].parse()?);
    Ok((utime + stime) / tck)
}

async fn request(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    body: Bytes,
    token: Option<&str>,
) -> anyhow::Result<(u16, Bytes)> {
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "bench");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let response = sender.send_request(req.body(Full::new(body))?).await?;
    let status = response.status().as_u16();
    Ok((status, response.into_body().collect().await?.to_bytes()))
}

async fn connect(
    addr: SocketAddr,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

fn report(i: usize, round: u64) -> Bytes {
    let load = (i as u64 * 7 + round) % 80;
    Bytes::from(
        serde_json::json!({
            "instance": format!("bench-envoy-{i:03}"),
            "inflight": load,
            "tenants": {"acme": {"inflight": load / 2, "admitted": 100, "rejected": load % 3},
                        "globex": {"inflight": load / 4, "admitted": 50}},
            "classes": {"interactive": {"inflight": load / 3}, "batch": {"inflight": load / 5}},
        })
        .to_string(),
    )
}

async fn wait_ready(addr: SocketAddr) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || {
        wait_until(Duration::from_secs(20), "wipgate-control /readyz", || {
            blocking_http::get(addr, "/readyz", Duration::from_secs(1))
                .is_ok_and(|r| r.status == 200)
        })
    })
    .await?
}

async fn run_store(args: &Args, store: &str, server: &PathBuf, tck: f64) -> anyhow::Result<Row> {
    let token = "bench-token";
    let mut redis: Option<Redis> = None;
    let mut cmd = Command::new(server);
    let port = free_port()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    cmd.args(["--listen", &addr.to_string(), "--log-format", "json"])
        .env("WIPGATE_ADMIN_TOKEN", token)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if store == "redis" {
        let server = Redis::start_binary(&args.redis_server)?;
        cmd.args(["--redis-url", &server.url()]);
        redis = Some(server);
    }
    let service = Proc(
        cmd.spawn()
            .with_context(|| format!("starting {}", server.display()))?,
    );
    let pid = service.0.id();
    wait_ready(addr).await?;
    let mut admin = connect(addr).await?;
    let policy = r#"{"global_max_inflight": 2000,
        "tenants": {"acme": {"reserved": 200, "max": 1200}, "globex": {"reserved": 100, "max": 800}, "*": {"max": 300}},
        "classes": {"interactive": {"reserved": 500}, "batch": {"max": 1000}}}"#;
    let (status, body) = request(
        &mut admin,
        "PUT",
        "/v1/policy",
        Bytes::from_static(policy.as_bytes()),
        Some(token),
    )
    .await?;
    if status != 200 {
        bail!(
            "PUT /v1/policy: {status} {}",
            String::from_utf8_lossy(&body)
        );
    }

    // Warm-up, then the measured run.
    let measure = |secs: u64| {
        let instances = args.instances;
        let connections = args.connections;
        async move {
            let stop = Instant::now() + Duration::from_secs(secs);
            let mut tasks = Vec::new();
            for c in 0..connections {
                tasks.push(tokio::spawn(async move {
                    let mut sender = connect(addr).await?;
                    let (mut lat, mut errors, mut n) = (Vec::with_capacity(200_000), 0u64, 0u64);
                    while Instant::now() < stop {
                        let body = report((c + n as usize * connections) % instances, n);
                        let t = Instant::now();
                        match request(&mut sender, "POST", "/v1/sync", body, None).await {
                            Ok((200, _)) => lat.push(t.elapsed()),
                            Ok(_) => errors += 1,
                            Err(_) => {
                                errors += 1;
                                sender = connect(addr).await?;
                            }
                        }
                        n += 1;
                    }
                    anyhow::Ok((lat, errors))
                }));
            }
            let mut all = Vec::new();
            let mut errors = 0;
            for t in tasks {
                let (lat, e) = t.await??;
                all.extend(lat);
                errors += e;
            }
            anyhow::Ok((all, errors))
        }
    };
    measure(1).await?;
    let cpu0 = cpu_s(pid, tck)?;
    let rcpu0 = match &redis {
        Some(r) => cpu_s(r.pid().context("redis-server is not running")?, tck)?,
        None => 0.0,
    };
    let started = Instant::now();
    let (mut lat, errors) = measure(args.duration_s).await?;
    let wall_s = started.elapsed().as_secs_f64();
    let server_cpu_s = cpu_s(pid, tck)? - cpu0;
    let redis_cpu_s = match &redis {
        Some(r) => cpu_s(r.pid().context("redis-server is not running")?, tck)? - rcpu0,
        None => 0.0,
    };
    lat.sort_unstable();
    drop(service);
    drop(redis);
    Ok(Row {
        store: store.to_owned(),
        requests: lat.len() as u64,
        errors,
        wall_s,
        server_cpu_s,
        redis_cpu_s,
        p50: sorted_percentile(&lat, 50.0),
        p99: sorted_percentile(&lat, 99.0),
        p999: sorted_percentile(&lat, 99.9),
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server = match &args.server {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("wipgate-control"),
    };
    let tck = clk_tck();
    let mut rows = Vec::new();
    for store in &args.stores {
        eprintln!(
            "measuring /v1/sync with the {store} store for {} s ...",
            args.duration_s
        );
        rows.push(run_store(&args, store, &server, tck).await?);
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut md = String::new();
    writeln!(md, "# Control service: `POST /v1/sync` throughput\n")?;
    writeln!(
        md,
        "Measured by `make bench-control` (`wipgate-control-bench`): {} keep-alive HTTP/1.1 connections on \
         loopback, {} distinct instances (2 tenants + `*`, 2 classes in the policy: 8 dimensions per sync), \
         {} s per store after a 1 s warm-up; release build. The machine has {cores} cores shared by the \
         service, the load generator and redis-server. \"Per core\" divides the requests by the CPU seconds \
         the service used (read from /proc), and for Redis also by service + redis-server CPU.\n",
        args.connections, args.instances, args.duration_s
    )?;
    writeln!(md, "| store | requests | errors | req/s (wall) | service CPU s | req/s per service core | redis CPU s | req/s per core (service + redis) | p50 ms | p99 ms | p99.9 ms |")?;
    writeln!(
        md,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )?;
    for r in &rows {
        let per = |cpu: f64| {
            if cpu > 0.0 {
                r.requests as f64 / cpu
            } else {
                0.0
            }
        };
        writeln!(
            md,
            "| {} | {} | {} | {:.0} | {:.2} | {:.0} | {:.2} | {:.0} | {:.2} | {:.2} | {:.2} |",
            r.store,
            r.requests,
            r.errors,
            r.requests as f64 / r.wall_s,
            r.server_cpu_s,
            per(r.server_cpu_s),
            r.redis_cpu_s,
            per(r.server_cpu_s + r.redis_cpu_s),
            ms(r.p50),
            ms(r.p99),
            ms(r.p999),
        )?;
    }
    print!("{md}");
    if let Some(out) = &args.out {
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(out, &md)?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}
