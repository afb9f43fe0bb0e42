//! What runs in front of the upstream in each configuration the benchmarks compare, and
//! the bottlenecks they protect.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::{json, Value};
use wipgate_e2e::pg_upstream::PgUpstream;
use wipgate_e2e::{Collapse, EnvoyConfig, Slowdown, Upstream, UpstreamOptions, UpstreamStats};

use crate::results::Bottleneck;

/// Environment variable naming the pass-through filter's `.wasm` (the Makefile sets it).
pub const PASSTHROUGH_ENV: &str = "WIPGATE_PASSTHROUGH_WASM";

/// The in-process bottlenecks' C: the collapsing one's knee, the pools' size.
pub const KNEE: usize = 10;
/// Their service time at or below the knee (the median of the heavy-tailed one).
pub const BASE: Duration = Duration::from_millis(25);
/// Collapse: service time grows by this many `BASE`s per `KNEE` requests beyond the knee.
pub const SLOPE: f64 = 2.0;
/// Collapse: the longest a request takes.
pub const MAX_SERVICE: Duration = Duration::from_secs(5);
/// Heavy tail: the lognormal's sigma (p99/p50 about 10).
pub const SIGMA: f64 = 1.0;
/// PostgreSQL: connections of the upstream's pool.
pub const PG_POOL: usize = 64;
/// PostgreSQL: hot rows the transactions pick from.
pub const PG_ROWS: u32 = 4;
/// PostgreSQL: the transaction's work while it holds its row.
pub const PG_WORK: Duration = Duration::from_millis(10);
/// wipgate's adaptive ceiling: far above any C here, so it has to find the knee itself.
pub const ADAPTIVE_MAX: usize = 200;

/// The setups' names, in the report's order.
pub const NO_PROTECTION: &str = "no protection";
/// See [`NO_PROTECTION`].
pub const CIRCUIT_BREAKER: &str = "Envoy circuit breaker";
/// See [`NO_PROTECTION`].
pub const ENVOY_ADAPTIVE: &str = "Envoy adaptive_concurrency";
/// See [`NO_PROTECTION`].
pub const WIPGATE_STATIC: &str = "wipgate static";
/// See [`NO_PROTECTION`].
pub const WIPGATE_ADAPTIVE: &str = "wipgate adaptive";

/// The bounded wait's setups (issue 14), in the report's order.
pub const CIRCUIT_BREAKER_PENDING: &str = "Envoy circuit breaker + pending queue";
/// See [`CIRCUIT_BREAKER_PENDING`].
pub const WIPGATE_NO_QUEUE: &str = "wipgate static, no queue";
/// See [`CIRCUIT_BREAKER_PENDING`].
pub const WIPGATE_STATIC_QUEUE: &str = "wipgate static + queue";
/// See [`CIRCUIT_BREAKER_PENDING`].
pub const WIPGATE_ADAPTIVE_QUEUE: &str = "wipgate adaptive + queue";
/// The bounded wait's `timeout_ms`: the (and the key's default) 50 ms.
pub const QUEUE_TIMEOUT_MS: u64 = 50;

/// wipgate static at `c`.
#[must_use]
pub fn wipgate_static(c: usize) -> String {
    json!({"max_inflight": c}).to_string()
}

/// wipgate adaptive with the default algorithm (the knee), not told C.
#[must_use]
pub fn wipgate_adaptive() -> String {
    json!({"max_inflight": ADAPTIVE_MAX, "adaptive": {}}).to_string()
}

/// wipgate static at `c` with the bounded wait (`timeout_ms`; `max_waiting` and `order`
/// left at their defaults, 1000 and fifo).
#[must_use]
pub fn wipgate_static_queue(c: usize, timeout_ms: u64) -> String {
    json!({"max_inflight": c, "queue": {"timeout_ms": timeout_ms}}).to_string()
}

/// [`wipgate_adaptive`] with the bounded wait, as [`wipgate_static_queue`].
#[must_use]
pub fn wipgate_adaptive_queue(timeout_ms: u64) -> String {
    json!({"max_inflight": ADAPTIVE_MAX, "adaptive": {}, "queue": {"timeout_ms": timeout_ms}})
        .to_string()
}

/// Envoy's pending queue sized like a wait of `timeout_ms` in front of a bottleneck of
/// `capacity_rps`: as many as it serves in that time, so a full queue drains within it.
#[must_use]
pub fn pending_for(capacity_rps: f64, timeout_ms: u64) -> usize {
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let n = (capacity_rps * timeout_ms as f64 / 1e3).ceil() as usize;
    n.max(1)
}

/// Envoy has no timeout for the pending queue alone: the route timeout, which covers the
/// wait and the service, is the nearest. Twice a wait of `timeout_ms` plus a service time at
/// the knee: it cuts only requests far past the wait wipgate allows (each one cut wastes
/// the bottleneck's work on it, so it must not bite in normal operation).
#[must_use]
pub fn pending_route_timeout(timeout_ms: u64) -> Duration {
    2 * (Duration::from_millis(timeout_ms) + BASE)
}

/// The bounded wait's four setups in front of a bottleneck of `capacity_rps` (C = `c`):
/// Envoy's circuit breaker told C with its pending queue, wipgate static at C without and
/// with the queue, and wipgate adaptive (not told C) with it.
#[must_use]
pub fn queue_setups(c: usize, capacity_rps: f64, timeout_ms: u64) -> Vec<(&'static str, Setup)> {
    vec![
        (
            CIRCUIT_BREAKER_PENDING,
            Setup::CircuitBreakerPending {
                c,
                pending: pending_for(capacity_rps, timeout_ms),
                route_timeout: pending_route_timeout(timeout_ms),
            },
        ),
        (WIPGATE_NO_QUEUE, Setup::Wipgate(wipgate_static(c))),
        (
            WIPGATE_STATIC_QUEUE,
            Setup::Wipgate(wipgate_static_queue(c, timeout_ms)),
        ),
        (
            WIPGATE_ADAPTIVE_QUEUE,
            Setup::Wipgate(wipgate_adaptive_queue(timeout_ms)),
        ),
    ]
}

/// The five setups side by side, the circuit breaker and wipgate static told `c`.
#[must_use]
pub fn setups(
    c: usize,
    wipgate_static: &str,
    wipgate_adaptive: &str,
) -> Vec<(&'static str, Setup)> {
    vec![
        (NO_PROTECTION, Setup::Bare),
        (CIRCUIT_BREAKER, Setup::CircuitBreaker(c)),
        (ENVOY_ADAPTIVE, Setup::Adaptive),
        (WIPGATE_STATIC, Setup::Wipgate(wipgate_static.to_owned())),
        (
            WIPGATE_ADAPTIVE,
            Setup::Wipgate(wipgate_adaptive.to_owned()),
        ),
    ]
}

/// One of the in-process bottleneck shapes (the test upstream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Congestion collapse past `KNEE` (see [`Collapse`]).
    Collapse,
    /// A pool of `KNEE`, `BASE` each, a FIFO queue past it: throughput flat, latency grows.
    Queue,
    /// A pool of `KNEE`, lognormal service times of median `BASE` and sigma `SIGMA`.
    HeavyTail,
}

impl Shape {
    /// The sweep's key.
    #[must_use]
    pub fn key(self) -> &'static str {
        match self {
            Self::Collapse => "collapse",
            Self::Queue => "queue",
            Self::HeavyTail => "heavy_tail",
        }
    }

    /// Its heading.
    #[must_use]
    pub fn title(self) -> &'static str {
        match self {
            Self::Collapse => "a. Collapsing past C",
            Self::Queue => "b. Pure queue",
            Self::HeavyTail => "d. Heavy-tailed service times",
        }
    }

    /// Its parameters, as the results record them.
    #[must_use]
    pub fn bottleneck(self) -> Bottleneck {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        match self {
            Self::Collapse => Bottleneck::Collapse {
                knee: KNEE,
                base_ms: ms(BASE),
                slope: SLOPE,
                max_service_ms: ms(MAX_SERVICE),
            },
            Self::Queue => Bottleneck::Queue {
                capacity: KNEE,
                service_ms: ms(BASE),
            },
            Self::HeavyTail => Bottleneck::HeavyTail {
                capacity: KNEE,
                median_ms: ms(BASE),
                sigma: SIGMA,
            },
        }
    }

    /// Its capacity in requests per second: C over the mean service time (a lognormal's
    /// mean is its median times e^(sigma²/2)).
    #[must_use]
    pub fn capacity_rps(self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let knee = KNEE as f64;
        let mean = match self {
            Self::Collapse | Self::Queue => BASE.as_secs_f64(),
            Self::HeavyTail => BASE.as_secs_f64() * (SIGMA * SIGMA / 2.0).exp(),
        };
        knee / mean
    }

    /// A fresh upstream of this shape; `slowdown` multiplies its service times.
    pub fn start(self, slowdown: &Slowdown) -> Result<Upstream> {
        let mut opts = UpstreamOptions {
            service_time: BASE,
            slowdown: slowdown.clone(),
            ..UpstreamOptions::default()
        };
        match self {
            Self::Collapse => {
                opts.collapse = Some(Collapse {
                    knee: KNEE,
                    slope: SLOPE,
                    max_service: MAX_SERVICE,
                });
            }
            Self::Queue => opts.capacity = Some(KNEE),
            Self::HeavyTail => {
                opts.capacity = Some(KNEE);
                opts.lognormal_sigma = SIGMA;
            }
        }
        Upstream::start(opts)
    }
}

/// What the benchmarks need of an upstream: where it listens and its in-flight gauges.
pub trait Backend: Send + Sync {
    /// Where it listens.
    fn addr(&self) -> SocketAddr;
    /// Its gauges.
    fn stats(&self) -> Arc<UpstreamStats>;
}

impl Backend for Upstream {
    fn addr(&self) -> SocketAddr {
        Upstream::addr(self)
    }

    fn stats(&self) -> Arc<UpstreamStats> {
        Arc::clone(Upstream::stats(self))
    }
}

impl Backend for Arc<PgUpstream> {
    fn addr(&self) -> SocketAddr {
        PgUpstream::addr(self)
    }

    fn stats(&self) -> Arc<UpstreamStats> {
        Arc::clone(PgUpstream::stats(self))
    }
}

/// One configuration of Envoy.
#[derive(Debug, Clone)]
pub enum Setup {
    /// Envoy alone; the cluster's circuit breakers lifted out of the way.
    Bare,
    /// Envoy + a proxy-wasm filter that does nothing (V8).
    Passthrough,
    /// Envoy + wipgate (V8) with this plugin configuration.
    Wipgate(String),
    /// Envoy's cluster circuit breaker told C: this many connections, requests and pending.
    CircuitBreaker(usize),
    /// Envoy's cluster circuit breaker told C (connections and requests) with a pending
    /// queue of `pending`, bounded in time only by the route timeout.
    CircuitBreakerPending {
        /// Connections and requests.
        c: usize,
        /// `max_pending_requests`.
        pending: usize,
        /// The route timeout (wait and service together).
        route_timeout: Duration,
    },
    /// Envoy's adaptive_concurrency filter (gradient controller).
    Adaptive,
}

/// Where the `.wasm` files are.
#[derive(Debug, Clone)]
pub struct Wasm {
    /// wipgate's filter.
    pub wipgate: PathBuf,
    /// The pass-through filter.
    pub passthrough: PathBuf,
}

impl Wasm {
    /// From `WIPGATE_WASM` and `WIPGATE_PASSTHROUGH_WASM`, else the workspace's release
    /// builds; an error names the make target of a missing one (the pass-through filter's
    /// only when `passthrough`: the runs that do not use it do not need it built).
    pub fn locate(passthrough_needed: bool) -> Result<Self> {
        let wipgate = wipgate_e2e::envoy::default_wasm_path();
        let passthrough = std::env::var_os(PASSTHROUGH_ENV)
            .filter(|p| !p.is_empty())
            .map_or_else(
                || {
                    Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("../../target/wasm32-wasip1/release/passthrough_filter.wasm")
                },
                PathBuf::from,
            );
        let needed = [
            (&wipgate, "make filter", true),
            (&passthrough, "make bench", passthrough_needed),
        ];
        for (path, make, _) in needed.iter().filter(|n| n.2) {
            if !path.is_file() {
                bail!("{} is missing: run `{make}`", path.display());
            }
        }
        Ok(Self {
            wipgate,
            passthrough,
        })
    }
}

/// Envoy's adaptive concurrency filter with the gradient controller: p90 latency samples,
/// the limit recomputed every 100 ms, the minimum RTT measured at start (50 requests at
/// the minimum concurrency of 3) and then every 60 s, i.e. once per benchmark point.
#[must_use]
pub fn adaptive_concurrency_filter() -> Value {
    json!({
        "name": "envoy.filters.http.adaptive_concurrency",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.adaptive_concurrency.v3.AdaptiveConcurrency",
            "gradient_controller_config": {
                "sample_aggregate_percentile": {"value": 90},
                "concurrency_limit_params": {"concurrency_update_interval": "0.1s"},
                "min_rtt_calc_params": {"interval": "60s", "request_count": 50}
            }
        }
    })
}

/// Envoy's cluster circuit breaker at `c` connections and requests, `pending` pending
/// requests.
#[must_use]
pub fn circuit_breakers(c: usize, pending: usize) -> Value {
    json!({"thresholds": [{
        "priority": "DEFAULT",
        "max_connections": c,
        "max_pending_requests": pending,
        "max_requests": c,
        "max_retries": 3
    }]})
}

impl Setup {
    /// The Envoy configuration for this setup, proxying to `upstream`.
    #[must_use]
    pub fn envoy_config(&self, upstream: std::net::SocketAddr, wasm: &Wasm) -> EnvoyConfig {
        let mut cfg = EnvoyConfig::new(upstream);
        cfg.log_level = "warn".to_owned();
        cfg.wasm_path = wasm.wipgate.clone();
        match self {
            Self::Bare => {}
            Self::Passthrough => {
                cfg.filter_config = Some("{}".to_owned());
                cfg.wasm_path = wasm.passthrough.clone();
                cfg.vm_id = "passthrough".to_owned();
            }
            Self::Wipgate(config) => cfg.filter_config = Some(config.clone()),
            Self::CircuitBreaker(c) => cfg.circuit_breakers = Some(circuit_breakers(*c, *c)),
            Self::CircuitBreakerPending {
                c,
                pending,
                route_timeout,
            } => {
                cfg.circuit_breakers = Some(circuit_breakers(*c, *pending));
                cfg.route_timeout = *route_timeout;
            }
            Self::Adaptive => cfg.filters_after = vec![adaptive_concurrency_filter()],
        }
        cfg
    }

    /// The stat that holds this setup's moving limit, if it has one: matched by suffix in
    /// Envoy's `/stats` (adaptive_concurrency's carries the listener's stat prefix).
    #[must_use]
    pub fn limit_stat(&self) -> Option<&'static str> {
        match self {
            Self::Wipgate(config) if config.contains("\"adaptive\"") => {
                Some("wasmcustom.wipgate.adaptive.limit")
            }
            Self::Adaptive => Some("adaptive_concurrency.gradient_controller.concurrency_limit"),
            _ => None,
        }
    }
}
