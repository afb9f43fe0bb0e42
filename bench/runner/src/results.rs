//! The shape of `results.json`, one set of types for the scenarios that write it and the
//! report that reads it: a misspelt or missing field is a compile error in Rust, and a parse
//! error naming the field for a file (unknown fields are refused too). `bench/plot.py` reads
//! the same fields by name, so none may be renamed.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Everything one `make bench` run measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Results {
    /// A `--quick` smoke run, not the real figures.
    pub quick: bool,
    /// How long the runner took, in seconds.
    pub runner_wall_s: f64,
    /// What the figures were measured on.
    pub machine: Machine,
    /// wipgate's plugin configuration (JSON text) in the overload scenario.
    pub wipgate_static: String,
    /// The same with adaptive limits.
    pub wipgate_adaptive: String,
    /// wipgate's configuration in the noisy-tenant scenario.
    pub wipgate_tenants: String,
    /// The overhead scenario.
    pub overhead: Overhead,
    /// The overload scenario.
    pub overload: Overload,
    /// The noisy-tenant scenario.
    pub noisy: Noisy,
}

/// What the figures were measured on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Machine {
    /// CPUs this process may use.
    pub cpus: usize,
    /// `/proc/cpuinfo`'s model name.
    pub cpu_model: String,
    /// `envoy --version`, after `version:`.
    pub envoy: String,
    /// When, in UTC.
    pub date: String,
}

/// Overhead: throughput (closed loop) and latency at a fixed rate (open loop) per setup.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overhead {
    /// Keep-alive connections of the closed loop.
    pub closed_conns: usize,
    /// One closed-loop run, in seconds.
    pub closed_s: f64,
    /// Closed-loop runs per setup.
    pub closed_reps: usize,
    /// The open loop's rate, requests per second.
    pub fixed_rate: f64,
    /// One open-loop run, in seconds.
    pub fixed_s: f64,
    /// Open-loop runs per setup.
    pub fixed_reps: usize,
    /// The generator straight to the upstream, requests per second.
    pub generator_ceiling_rps: f64,
    /// Bare Envoy, the pass-through filter, wipgate.
    pub setups: Vec<OverheadSetup>,
}

/// One setup of the overhead scenario.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverheadSetup {
    /// Its name in the report and the plots.
    pub name: String,
    /// Requests per second of each closed-loop run.
    pub rps_runs: Vec<f64>,
    /// Their median.
    pub rps: f64,
    /// Non-2xx answers and failures in the closed loops.
    pub closed_errors: usize,
    /// Open-loop latency percentiles from the intended send time, in µs.
    pub p50_us: f64,
    /// See `p50_us`.
    pub p99_us: f64,
    /// See `p50_us`.
    pub p999_us: f64,
    /// Round-trip percentiles (from the write on a ready connection), in µs.
    pub rtt_p50_us: f64,
    /// See `rtt_p50_us`.
    pub rtt_p99_us: f64,
    /// 2xx answers in the open loops.
    pub fixed_count: usize,
    /// Everything else in the open loops.
    pub fixed_failed: usize,
    /// How well the generator kept each open loop's schedule.
    pub generator: Vec<Generator>,
}

/// How well the load generator kept one open loop's schedule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Generator {
    /// The rate asked for.
    pub intended_rate: f64,
    /// Requests sent per second between the first and the last send.
    pub actual_rate: f64,
    /// Requests sent.
    pub sent: usize,
    /// Its own dispatch lag behind schedule, p99, in ms.
    pub lag_p99_ms: f64,
    /// The worst such lag, in ms.
    pub lag_max_ms: f64,
    /// The most connections open at once.
    pub max_conns: usize,
    /// Requests not sent for lack of a connection.
    pub overflow: usize,
}

/// Overload: each setup at multiples of a bottleneck's capacity.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overload {
    /// The bottleneck's capacity, requests per second.
    pub capacity_rps: f64,
    /// Requests in flight up to which its service time is the base one.
    pub knee: usize,
    /// That base service time, in ms.
    pub base_ms: f64,
    /// How much slower per `knee` requests beyond it.
    pub slope: f64,
    /// The longest service time, in ms.
    pub max_service_ms: f64,
    /// One point's open loop, in seconds.
    pub point_s: f64,
    /// When the client gives up on a request, in seconds.
    pub client_timeout_s: f64,
    /// The offered loads, as multiples of capacity.
    pub multipliers: Vec<f64>,
    /// One entry per setup, in the report's order.
    pub setups: Vec<OverloadSetup>,
}

/// One setup of the overload scenario.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverloadSetup {
    /// Its name in the report and the plots.
    pub name: String,
    /// Not implemented, so not run (`points` is empty).
    pub missing: bool,
    /// One per multiple of capacity.
    pub points: Vec<OverloadPoint>,
}

/// One setup at one offered load.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverloadPoint {
    /// The offered load, as a multiple of capacity.
    pub mult: f64,
    /// Requests sent.
    pub sent: usize,
    /// 2xx answers.
    pub ok: usize,
    /// 429 and 503 answers.
    pub rejected: usize,
    /// Everything else (timeouts, errors).
    pub failed: usize,
    /// 2xx answers per second, as a fraction of capacity.
    pub goodput: f64,
    /// Latency percentiles of the 2xx answers, in ms.
    pub ok_p50_ms: f64,
    /// See `ok_p50_ms`.
    pub ok_p99_ms: f64,
    /// See `ok_p50_ms`.
    pub ok_p999_ms: f64,
    /// Rejected of sent.
    pub reject_rate: f64,
    /// p99 of rejections from the intended send time, in ms.
    pub rej_p99_ms: f64,
    /// p99 of rejections from their write on a ready connection, in ms.
    pub rej_rtt_p99_ms: f64,
    /// How well the generator kept the schedule.
    pub generator: Generator,
    /// The most requests in flight at the bottleneck.
    pub upstream_max_inflight: usize,
    /// The point over time.
    pub series: Series,
}

/// One point over time, in buckets of 100 ms.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Series {
    /// Each bucket's start, in seconds.
    pub t: Vec<f64>,
    /// 2xx answers completed in the bucket, per second, as a fraction of capacity.
    pub goodput: Vec<f64>,
    /// p99 of the 2xx answers sent in the bucket, in ms; `None` where there were none.
    pub ok_p99_ms: Vec<Option<f64>>,
    /// Rejections sent in the bucket, per second.
    pub rejected_per_s: Vec<f64>,
}

/// The noisy-tenant scenario.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Noisy {
    /// All tenants together, requests per second.
    pub rate: f64,
    /// Each normal tenant's rate.
    pub normal_rate: f64,
    /// The noisy tenant's rate.
    pub noisy_rate: f64,
    /// One entry per setup, in the report's order.
    pub setups: Vec<NoisySetup>,
}

/// One setup of the noisy-tenant scenario.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoisySetup {
    /// Its name in the report and the plots.
    pub name: String,
    /// Not implemented, so not run (no tenants, no generator).
    pub missing: bool,
    /// One per tenant, in `scenarios::TENANTS` order.
    pub tenants: Vec<TenantResult>,
    /// How well the generator kept the schedule; absent for a missing setup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generator: Option<Generator>,
    /// The most requests in flight at the bottleneck; absent for a missing setup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_max_inflight: Option<usize>,
}

/// One tenant of the noisy-tenant scenario.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantResult {
    /// Its `x-tenant-id`.
    pub tenant: String,
    /// Requests sent.
    pub sent: usize,
    /// 2xx answers.
    pub ok: usize,
    /// 429 and 503 answers.
    pub rejected: usize,
    /// Everything else.
    pub failed: usize,
    /// 2xx of sent.
    pub success: f64,
    /// p99 of its 2xx answers, in ms.
    pub ok_p99_ms: f64,
}

impl Results {
    /// Reads `path`; an error names the file and the field at fault.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Parses `results.json` text; an error names the field at fault.
    pub fn parse(text: &str) -> Result<Self> {
        let de = &mut serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            anyhow::anyhow!("{path}: {}", e.into_inner())
        })
    }

    /// Pretty JSON with every object's keys in alphabetical order, as `results.json` has
    /// always been written (serde_json's map order), so a new run diffs field by field
    /// against the last one.
    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(&serde_json::to_value(self)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked_in() -> (String, Results) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../results.json");
        let text = std::fs::read_to_string(&path).unwrap();
        let results = Results::load(&path).unwrap_or_else(|e| panic!("{e:#}"));
        (text, results)
    }

    #[test]
    fn the_checked_in_results_parse_and_write_back_field_for_field() {
        let (text, results) = checked_in();
        assert_eq!(results.overhead.setups.len(), 3);
        assert_eq!(results.overload.setups.len(), 5);
        assert_eq!(results.noisy.setups.len(), 5);
        // Same names, same nesting, integers as integers: what plot.py reads is unchanged.
        let original: serde_json::Value = serde_json::from_str(&text).unwrap();
        let written: serde_json::Value = serde_json::from_str(&results.to_json().unwrap()).unwrap();
        assert!(original == written, "results.json does not round-trip");
    }

    #[test]
    fn a_misspelt_or_missing_field_is_an_error_naming_it() {
        let (text, _) = checked_in();
        let misspelt = text.replacen("\"goodput\":", "\"godput\":", 1);
        let err = Results::parse(&misspelt).unwrap_err().to_string();
        assert!(err.contains("godput"), "{err}");
        let missing = text.replacen("\"knee\": 10,", "", 1);
        assert_ne!(missing, text);
        let err = Results::parse(&missing).unwrap_err().to_string();
        assert!(err.contains("overload") && err.contains("knee"), "{err}");
    }
}
