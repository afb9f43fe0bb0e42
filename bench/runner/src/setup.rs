//! What runs in front of the upstream in each configuration the benchmarks compare, and
//! the bottleneck upstream they protect.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::{json, Value};
use wipgate_e2e::{Collapse, EnvoyConfig, Upstream, UpstreamOptions};

/// Environment variable naming the pass-through filter's `.wasm` (the Makefile sets it).
pub const PASSTHROUGH_ENV: &str = "WIPGATE_PASSTHROUGH_WASM";

/// The bottleneck: up to `KNEE` requests in flight each takes `BASE`; beyond, each takes
/// longer in proportion (see [`Collapse`]), so its capacity is `KNEE / BASE`.
pub const KNEE: usize = 10;
/// The bottleneck's service time at or below its knee.
pub const BASE: Duration = Duration::from_millis(25);
/// Service time grows by this many `BASE`s per `KNEE` requests beyond the knee.
pub const SLOPE: f64 = 2.0;
/// The longest a request to the bottleneck takes.
pub const MAX_SERVICE: Duration = Duration::from_secs(5);

/// The bottleneck's capacity in requests per second.
#[must_use]
pub fn capacity_rps() -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let knee = KNEE as f64;
    knee / BASE.as_secs_f64()
}

/// The bottleneck upstream (congestion collapse past `KNEE`).
pub fn bottleneck() -> Result<Upstream> {
    Upstream::start(UpstreamOptions {
        service_time: BASE,
        collapse: Some(Collapse {
            knee: KNEE,
            slope: SLOPE,
            max_service: MAX_SERVICE,
        }),
        ..UpstreamOptions::default()
    })
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
    /// Envoy's cluster circuit breaker: this many connections, requests and pending.
    CircuitBreaker(usize),
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
    /// builds; an error names the make target of a missing one.
    pub fn locate() -> Result<Self> {
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
        for (path, make) in [(&wipgate, "make filter"), (&passthrough, "make bench")] {
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

/// Envoy's cluster circuit breaker at `c`: connections, requests and pending requests.
#[must_use]
pub fn circuit_breakers(c: usize) -> Value {
    json!({"thresholds": [{
        "priority": "DEFAULT",
        "max_connections": c,
        "max_pending_requests": c,
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
            Self::CircuitBreaker(c) => cfg.circuit_breakers = Some(circuit_breakers(*c)),
            Self::Adaptive => cfg.filters_after = vec![adaptive_concurrency_filter()],
        }
        cfg
    }
}
