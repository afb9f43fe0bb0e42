//! The fleet never exceeds its number, whatever happens between the Envoys and the control
//! service: replies dropped or delayed past the filter's timeout by a lossy TCP proxy while
//! demand moves between Envoys, and the control service gone past the stale window. Real
//! Envoys (`--concurrency 2`), the real `wipgate-control` binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wipgate_e2e::processes::{static_cluster, ControlService};
use wipgate_e2e::{
    burst, require_envoy, wait_until, Envoy, EnvoyConfig, RequestSpec, Summary, Upstream,
};

const DEADLINE: Duration = Duration::from_secs(20);
const CLUSTER: &str = "wipgate_control";

fn start_envoy(upstream: &Upstream, control: SocketAddr, config: String) -> Envoy {
    let mut cfg = EnvoyConfig::new(upstream.addr()).with_filter(config);
    cfg.extra_clusters.push(static_cluster(CLUSTER, control));
    Envoy::start(&cfg).expect("start Envoy with wipgate and a control cluster")
}

fn config(max_inflight: u32, interval_ms: u64, timeout_ms: u64, stale_after_ms: u64) -> String {
    json!({"max_inflight": max_inflight,
           "control": {"cluster": CLUSTER, "interval_ms": interval_ms, "timeout_ms": timeout_ms,
                       "stale_after_ms": stale_after_ms}})
    .to_string()
}

fn syncs(envoy: &Envoy) -> u64 {
    envoy.wasm_stat("wipgate.sync.success").unwrap_or(0)
}

fn failed_syncs(envoy: &Envoy) -> u64 {
    ["timeout", "status"]
        .iter()
        .map(|k| {
            envoy
                .wasm_stat(&format!("wipgate.sync.failure.reason.{k}"))
                .unwrap_or(0)
        })
        .sum()
}

/// What the proxy did with the service's replies.
#[derive(Default)]
struct ProxyCounts {
    forwarded: AtomicU64,
    dropped: AtomicU64,
    delayed: AtomicU64,
}

/// A TCP proxy to `target` that forwards requests whole and, per chunk of reply, forwards
/// it, drops it (and the connection: the service has the report, the Envoy never hears
/// back), or delays it past the filter's timeout, in turns of a small deterministic
/// generator: 2 of 5 forwarded, 2 dropped, 1 delayed.
async fn lossy_proxy(target: SocketAddr, delay: Duration, counts: Arc<ProxyCounts>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let turn = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let (counts, turn) = (Arc::clone(&counts), Arc::clone(&turn));
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(target).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let up = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                });
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match server_read.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    // A scrambled turn order, so that every Envoy sees every fate.
                    let t = turn.fetch_add(1, Ordering::SeqCst).wrapping_mul(7) % 5;
                    match t {
                        0 | 1 => {
                            counts.forwarded.fetch_add(1, Ordering::SeqCst);
                        }
                        2 | 3 => {
                            counts.dropped.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                        _ => {
                            counts.delayed.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(delay).await;
                        }
                    }
                    if client_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                up.abort();
            });
        }
    });
    addr
}

/// Samples every Envoy's limit in force (`wipgate.inflight_limit`) every 100 ms until told
/// to stop; returns the largest sum seen and how many samples were taken.
fn sample_limits(
    envoys: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(u64, u64)> {
    std::thread::spawn(move || {
        let (mut worst, mut samples) = (0, 0);
        while !stop.load(Ordering::SeqCst) {
            let limits: Vec<u64> = envoys.iter().map(|admin| limit_at(*admin)).collect();
            let sum: u64 = limits.iter().sum();
            if sum > worst {
                eprintln!("limits in force {limits:?}");
            }
            worst = worst.max(sum);
            samples += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        (worst, samples)
    })
}

/// The `wipgate.inflight_limit` gauge of the Envoy whose admin API is at `admin` (0 when
/// unreadable).
fn limit_at(admin: SocketAddr) -> u64 {
    let path = "/stats?format=json&filter=%5Ewasmcustom%5C.wipgate%5C.inflight_limit%24";
    wipgate_e2e::blocking_http::get(admin, path, Duration::from_secs(2))
        .ok()
        .and_then(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
        .and_then(|v| v["stats"][0]["value"].as_u64())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy"]
async fn lost_and_late_replies_never_let_the_fleet_exceed_its_limit() {
    require_envoy();
    const LIMIT: u64 = 12;
    let control = ControlService::start(None, &["--warm-up-ms", "0"]).unwrap();
    let (status, body) = control
        .admin("PUT", "/v1/policy", &json!({"global_max_inflight": LIMIT}))
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let counts = Arc::new(ProxyCounts::default());
    let proxy = lossy_proxy(
        control.addr(),
        Duration::from_millis(400),
        Arc::clone(&counts),
    )
    .await;
    let upstream = Upstream::start_default().unwrap();
    // Interval 200 ms, timeout 100 ms: a delayed reply arrives after the Envoy gave up.
    let envoys: Vec<Envoy> = (0..3)
        .map(|_| start_envoy(&upstream, proxy, config(40, 200, 100, 10_000)))
        .collect();
    for e in &envoys {
        wait_until(DEADLINE, "a first good sync", || syncs(e) >= 1).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_limits(
        envoys.iter().map(Envoy::admin_addr).collect(),
        Arc::clone(&stop),
    );
    // Demand moves from Envoy to Envoy, so that shares grow and shrink while replies are
    // lost: 8 rounds, each loading one Envoy hard and the others lightly.
    upstream.reset_stats();
    for round in 0..8 {
        let busy = round % envoys.len();
        let loads = envoys.iter().enumerate().map(|(i, e)| {
            let n = if i == busy { 40 } else { 2 };
            burst(e.listener_addr(), n, RequestSpec::get("/f").delay_ms(600))
        });
        let out: Vec<_> = futures_join_all(loads).await;
        let admitted: Vec<usize> = out.iter().map(|o| Summary::of(o).status(200)).collect();
        eprintln!(
            "round {round}: busy envoy {busy}, admitted {admitted:?}, upstream max {}",
            upstream.max_inflight()
        );
    }
    stop.store(true, Ordering::SeqCst);
    let (worst, samples) = sampler.join().unwrap();
    let lost = counts.dropped.load(Ordering::SeqCst) + counts.delayed.load(Ordering::SeqCst);
    eprintln!(
        "replies forwarded {}, dropped {}, delayed {}; good syncs {:?}, failed {:?}; largest sum of limits in force {worst} in {samples} samples; upstream max {}",
        counts.forwarded.load(Ordering::SeqCst),
        counts.dropped.load(Ordering::SeqCst),
        counts.delayed.load(Ordering::SeqCst),
        envoys.iter().map(syncs).collect::<Vec<_>>(),
        envoys.iter().map(failed_syncs).collect::<Vec<_>>(),
        upstream.max_inflight()
    );
    assert!(
        lost >= 10,
        "the proxy lost too few replies to show anything"
    );
    assert!(samples >= 20);
    assert!(
        worst <= LIMIT,
        "the limits in force summed to {worst} > {LIMIT}"
    );
    assert!(
        upstream.max_inflight() as u64 <= LIMIT,
        "upstream saw {}",
        upstream.max_inflight()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy"]
async fn a_fleet_cut_off_past_the_stale_window_stays_within_its_limit() {
    require_envoy();
    let mut control = ControlService::start(None, &["--warm-up-ms", "0"]).unwrap();
    let (status, body) = control
        .admin("PUT", "/v1/policy", &json!({"global_max_inflight": 10}))
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let upstream = Upstream::start_default().unwrap();
    // Static 50 each: falling back to it would admit 100 across the two.
    let envoys = [
        start_envoy(&upstream, control.addr(), config(50, 200, 100, 1_000)),
        start_envoy(&upstream, control.addr(), config(50, 200, 100, 1_000)),
    ];
    for e in &envoys {
        wait_until(DEADLINE, "two good syncs", || syncs(e) >= 2).unwrap();
    }
    control.kill();
    for e in &envoys {
        let before = failed_syncs(e);
        wait_until(DEADLINE, "failed syncs", || failed_syncs(e) >= before + 2).unwrap();
    }
    // Past the 1 s stale window.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    upstream.reset_stats();
    let (a, b) = tokio::join!(
        burst(
            envoys[0].listener_addr(),
            40,
            RequestSpec::get("/c").delay_ms(500)
        ),
        burst(
            envoys[1].listener_addr(),
            40,
            RequestSpec::get("/c").delay_ms(500)
        )
    );
    let limits: Vec<u64> = envoys
        .iter()
        .map(|e| e.wasm_stat("wipgate.inflight_limit").unwrap_or(0))
        .collect();
    eprintln!(
        "control service gone past the stale window: {} / {}; limits {limits:?}; upstream max {}",
        Summary::of(&a),
        Summary::of(&b),
        upstream.max_inflight()
    );
    assert!(
        upstream.max_inflight() <= 10,
        "upstream saw {}",
        upstream.max_inflight()
    );
    assert!(Summary::of(&a).status(200) >= 1 && Summary::of(&b).status(200) >= 1);
    assert!(limits.iter().sum::<u64>() <= 10, "{limits:?}");
    for e in &envoys {
        assert_eq!(e.wasm_stat("wipgate.sync.on_static_config"), Some(0));
    }
}

/// Runs the futures concurrently and returns their outputs in order.
async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy"]
async fn a_restarted_memory_store_does_not_hand_out_what_envoys_still_enforce() {
    require_envoy();
    const LIMIT: u64 = 12;
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.json");
    std::fs::write(&policy, json!({"global_max_inflight": LIMIT}).to_string()).unwrap();
    let mut control =
        ControlService::start(None, &["--policy-file", policy.to_str().unwrap()]).unwrap();
    let upstream = Upstream::start_default().unwrap();
    let envoys: Vec<Envoy> = (0..3)
        .map(|_| start_envoy(&upstream, control.addr(), config(40, 200, 100, 10_000)))
        .collect();
    let load = |e: &Envoy, rate: f64, secs: u64| {
        tokio::spawn(wipgate_e2e::open_loop(
            e.listener_addr(),
            rate,
            Duration::from_secs(secs),
            |_| RequestSpec::get("/r").delay_ms(300),
        ))
    };
    // Envoy 0 busy, the others nearly idle, until Envoy 0 holds the larger share.
    let busy0 = load(&envoys[0], 60.0, 6);
    let idle: Vec<_> = envoys[1..].iter().map(|e| load(e, 2.0, 12)).collect();
    wait_until(DEADLINE, "Envoy 0 with the larger share", || {
        envoys.iter().all(|e| syncs(e) >= 3)
            && limit_at(envoys[0].admin_addr()) >= 6
            && envoys.iter().all(|e| limit_at(e.admin_addr()) <= LIMIT)
    })
    .unwrap();
    upstream.reset_stats();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_limits(
        envoys.iter().map(Envoy::admin_addr).collect(),
        Arc::clone(&stop),
    );
    // Demand moves to Envoy 1 as the service restarts knowing nobody: Envoy 0 still
    // enforces its large share, so Envoy 1 must not get it before Envoy 0 has reported.
    let busy1 = load(&envoys[1], 60.0, 6);
    control.kill();
    control.restart().unwrap();
    let before: Vec<u64> = envoys.iter().map(syncs).collect();
    wait_until(DEADLINE, "every Envoy synced with the new service", || {
        envoys.iter().zip(&before).all(|(e, b)| syncs(e) >= b + 3)
    })
    .unwrap();
    for task in [busy0, busy1].into_iter().chain(idle) {
        task.await.unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    let (worst, samples) = sampler.join().unwrap();
    eprintln!(
        "memory store restarted as demand moved: largest sum of limits in force {worst} in {samples} samples; upstream max {}",
        upstream.max_inflight()
    );
    assert!(
        worst <= LIMIT,
        "the limits in force summed to {worst} > {LIMIT}"
    );
    assert!(upstream.max_inflight() as u64 <= LIMIT);
}
