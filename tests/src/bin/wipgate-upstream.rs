//! The test upstream standalone, for people following the docs with curl:
//! `wipgate-upstream --port 8081 --capacity 20 --service-ms 50`, then
//! `curl -H 'x-delay-ms: 200' localhost:8081/` and `curl localhost:8081/__stats`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use wipgate_e2e::upstream::{serve, UpstreamOptions, UpstreamStats};

const USAGE: &str =
    "usage: wipgate-upstream [--host IP (default 127.0.0.1)] [--port N (default 8081)]
                        [--capacity C] [--service-ms MS]

Serves HTTP/1.1 on IP:N (--host 0.0.0.0 in a container, so other containers reach it). Request headers: x-delay-ms: N (answer after N ms),
x-reset: 1 (drop the connection instead of answering), x-status: N, x-tenant-id: T.
GET /__stats answers the in-flight gauges as JSON. With --capacity C at most C requests
are served at once and the others wait; each takes --service-ms plus its delay.";

fn value<T: std::str::FromStr>(flag: &str, v: Option<String>) -> Result<T> {
    let v = v.with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
    v.parse()
        .ok()
        .with_context(|| format!("{flag}: bad value {v:?}\n{USAGE}"))
}

fn parse_args() -> Result<(IpAddr, UpstreamOptions)> {
    let mut host = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut opts = UpstreamOptions {
        port: 8081,
        ..UpstreamOptions::default()
    };
    let mut args = std::env::args().skip(1);
    // Each round consumes at least one argument, so the loop is bounded by argv.
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--host" => host = value("--host", args.next())?,
            "--port" => opts.port = value("--port", args.next())?,
            "--capacity" => opts.capacity = Some(value("--capacity", args.next())?),
            "--service-ms" => {
                opts.service_time = Duration::from_millis(value("--service-ms", args.next())?);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if opts.capacity == Some(0) {
        bail!("--capacity must be at least 1");
    }
    Ok((host, opts))
}

fn main() -> Result<()> {
    let (host, opts) = parse_args()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let addr = SocketAddr::new(host, opts.port);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        println!(
            "wipgate-upstream listening on http://{} (capacity {}, service time {} ms); stats: GET /__stats",
            listener.local_addr()?,
            opts.capacity.map_or_else(|| "unlimited".to_owned(), |c| c.to_string()),
            opts.service_time.as_millis()
        );
        let stats = Arc::new(UpstreamStats::default());
        // Runs until the process is stopped (Ctrl-C or SIGTERM end it).
        serve(listener, &opts, stats, std::future::pending()).await;
        Ok(())
    })
}
