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
    /// wipgate's adaptive configuration (JSON text), the same in every shape: not told C.
    pub wipgate_adaptive: String,
    /// wipgate's configurations in the noisy-tenant scenario, static and adaptive.
    pub wipgate_tenants: String,
    /// See `wipgate_tenants`.
    pub wipgate_tenants_adaptive: String,
    /// The overhead scenario.
    pub overhead: Overhead,
    /// Every setup at multiples of each bottleneck's capacity, one entry per shape.
    pub sweeps: Vec<Sweep>,
    /// The capacity shift: the bottleneck's service time doubles mid-run, then returns.
    pub shift: Shift,
    /// Steady overload, limit traced, one entry per shape.
    pub steady: Vec<Steady>,
    /// A fresh Envoy at half the capacity.
    pub cold_start: ColdStart,
    /// The noisy-tenant scenario.
    pub noisy: Noisy,
    /// The bounded wait (issue 14): absent from a run that did not measure it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueBench>,
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

/// A bottleneck the setups protect, with its parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Bottleneck {
    /// Up to `knee` in flight each request takes `base_ms`; beyond, a request that finds n
    /// in flight takes `base_ms × (1 + slope × (n − knee) / knee)`, at most `max_service_ms`.
    Collapse {
        /// In flight up to which the service time is the base one.
        knee: usize,
        /// The base service time, in ms.
        base_ms: f64,
        /// How much slower per `knee` requests beyond it.
        slope: f64,
        /// The longest service time, in ms.
        max_service_ms: f64,
    },
    /// A pool of `capacity`, each request `service_ms`; the rest wait in a FIFO queue.
    Queue {
        /// Requests served at once.
        capacity: usize,
        /// Each one's service time, in ms.
        service_ms: f64,
    },
    /// A pool of `capacity`; lognormal service times of median `median_ms` and `sigma`.
    HeavyTail {
        /// Requests served at once.
        capacity: usize,
        /// The median service time, in ms.
        median_ms: f64,
        /// The lognormal's sigma (1: p99/p50 about 10).
        sigma: f64,
    },
    /// A real PostgreSQL: each request a transaction on one of `rows` hot rows through a
    /// pool of `pool` connections, holding its row for `work_ms`.
    Postgres {
        /// Connections of the upstream's pool.
        pool: usize,
        /// Hot rows the transactions pick from at random.
        rows: u32,
        /// The transaction's work while it holds its row, in ms.
        work_ms: f64,
        /// The database's capacity, measured by pgbench itself.
        pgbench: Pgbench,
    },
}

impl Default for Bottleneck {
    fn default() -> Self {
        Self::Queue {
            capacity: 0,
            service_ms: 0.0,
        }
    }
}

/// pgbench on the hot-rows transaction at each client count.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pgbench {
    /// The `-f` script, the upstream's transaction statement for statement.
    pub script: String,
    /// One run's length, in seconds (`-T`).
    pub duration_s: f64,
    /// One per client count, in order.
    pub runs: Vec<PgbenchRun>,
    /// The best transactions per second: the shape's capacity.
    pub best_tps: f64,
    /// The client count at the best: the C told to the circuit breaker and wipgate static.
    pub best_clients: usize,
}

/// One pgbench run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgbenchRun {
    /// `-c`.
    pub clients: usize,
    /// Transactions per second (pgbench's, without the initial connection time).
    pub tps: f64,
    /// pgbench's average latency, in ms.
    pub latency_ms: f64,
}

/// Every setup at multiples of one bottleneck's capacity.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sweep {
    /// Its key (file names, lookups): `collapse`, `queue`, `heavy_tail`, `postgres`.
    pub key: String,
    /// Its heading in the report and the plots.
    pub title: String,
    /// The bottleneck.
    pub bottleneck: Bottleneck,
    /// Its capacity, requests per second.
    pub capacity_rps: f64,
    /// The in-flight count told to the circuit breaker and wipgate static.
    pub c: usize,
    /// wipgate static's configuration (JSON text).
    pub wipgate_static: String,
    /// One point's open loop, in seconds.
    pub point_s: f64,
    /// When the client gives up on a request, in seconds.
    pub client_timeout_s: f64,
    /// The offered loads, as multiples of capacity.
    pub multipliers: Vec<f64>,
    /// One entry per setup, in the report's order.
    pub setups: Vec<SweepSetup>,
}

/// One setup of a sweep.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepSetup {
    /// Its name in the report and the plots.
    pub name: String,
    /// One per multiple of capacity.
    pub points: Vec<Point>,
}

/// One setup at one offered load.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Point {
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
    /// 2xx answers completed while the load ran, per second, as a fraction of capacity.
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
}

/// One setup's open loop over time, in buckets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeline {
    /// Requests sent.
    pub sent: usize,
    /// 2xx answers.
    pub ok: usize,
    /// 429 and 503 answers.
    pub rejected: usize,
    /// Everything else.
    pub failed: usize,
    /// How well the generator kept the schedule.
    pub generator: Generator,
    /// Each bucket's start, in seconds from the start of the load.
    pub t: Vec<f64>,
    /// 2xx answers completed in the bucket, per second, as a fraction of the bottleneck's
    /// (unslowed) capacity.
    pub goodput: Vec<f64>,
    /// Rejections sent in the bucket, per second.
    pub rejected_per_s: Vec<f64>,
    /// Requests in flight at the bottleneck, the bucket's mean (sampled every 10 ms).
    pub inflight: Vec<f64>,
    /// When the limit was sampled, in seconds; empty for a setup without a moving limit.
    pub limit_t: Vec<f64>,
    /// The limit then (wipgate's `wipgate.adaptive.limit`, or adaptive_concurrency's
    /// `gradient_controller.concurrency_limit`).
    pub limit: Vec<f64>,
}

/// The capacity shift.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shift {
    /// The bottleneck (the collapsing one).
    pub bottleneck: Bottleneck,
    /// Its capacity before and after the slow phase, requests per second.
    pub capacity_rps: f64,
    /// The true knee in flight (the slowdown does not move it: every request takes longer).
    pub knee: usize,
    /// The offered load, as a multiple of `capacity_rps`.
    pub mult: f64,
    /// The whole run, in seconds.
    pub run_s: f64,
    /// The service time is multiplied by `slowdown` from here...
    pub slow_from_s: f64,
    /// ... to here, in seconds from the start.
    pub slow_to_s: f64,
    /// The multiplier.
    pub slowdown: f64,
    /// "Within the knee" means within this fraction of it.
    pub band: f64,
    /// The length of a bucket of the time series, in seconds.
    pub bucket_s: f64,
    /// One per setup, in the report's order.
    pub setups: Vec<ShiftSetup>,
}

/// One setup through the capacity shift.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShiftSetup {
    /// Its name in the report and the plots.
    pub name: String,
    /// Goodput before, during and after the slow phase, each as a fraction of the capacity
    /// of that phase.
    pub goodput_phases: Vec<f64>,
    /// From the slowdown until the bottleneck's in-flight count is within the band of the
    /// knee and stays there to the end of the slow phase, in seconds; `None`: never.
    pub back_after_change_s: Option<f64>,
    /// The same from the recovery to the end of the run.
    pub back_after_recovery_s: Option<f64>,
    /// Direction reversals of the limit over the run; `None` without a moving limit.
    pub reversals: Option<usize>,
    /// The run over time.
    pub run: Timeline,
}

/// Steady overload of one shape.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Steady {
    /// The sweep's key of this shape.
    pub key: String,
    /// Its heading.
    pub title: String,
    /// Its capacity, requests per second.
    pub capacity_rps: f64,
    /// The true knee in flight.
    pub knee: usize,
    /// The offered load, as a multiple of capacity.
    pub mult: f64,
    /// The run, in seconds.
    pub run_s: f64,
    /// "Within the knee" means within this fraction of it.
    pub band: f64,
    /// The first seconds of the run, while the limit leaves where the warm-up left it, are
    /// not steady: `within_band_settled` leaves them out.
    pub settle_s: f64,
    /// The length of a bucket of the time series, in seconds.
    pub bucket_s: f64,
    /// The setups with a moving limit.
    pub setups: Vec<SteadySetup>,
}

/// One setup at steady overload.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SteadySetup {
    /// Its name in the report and the plots.
    pub name: String,
    /// 2xx answers per second over the run, as a fraction of capacity.
    pub goodput: f64,
    /// Share of the limit's samples within the band of the knee, over the whole run.
    pub within_band: f64,
    /// The same after the first `settle_s` seconds.
    pub within_band_settled: f64,
    /// Direction reversals of the limit over the run.
    pub reversals: usize,
    /// The limit's mean over the run.
    pub limit_mean: f64,
    /// The run over time.
    pub run: Timeline,
}

/// A fresh Envoy at half the capacity.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColdStart {
    /// The sweep's key of the bottleneck.
    pub key: String,
    /// Its capacity, requests per second.
    pub capacity_rps: f64,
    /// The offered load, as a multiple of capacity.
    pub mult: f64,
    /// The run, in seconds.
    pub run_s: f64,
    /// Requests sent one by one before the run (V8 compiles the paths they take).
    pub warm_requests: usize,
    /// The length of a bucket of the time series, in seconds.
    pub bucket_s: f64,
    /// One per setup, in the report's order.
    pub setups: Vec<ColdSetup>,
}

/// One setup from a cold start.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColdSetup {
    /// Its name in the report and the plots.
    pub name: String,
    /// Requests sent in each whole second of the run.
    pub sent_by_second: Vec<usize>,
    /// Requests rejected in each.
    pub rejected_by_second: Vec<usize>,
    /// The run over time.
    pub run: Timeline,
}

/// The noisy-tenant scenario.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Noisy {
    /// The bottleneck's capacity (the collapsing one), requests per second.
    pub capacity_rps: f64,
    /// The open loop, in seconds.
    pub run_s: f64,
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
    /// One per tenant, in `scenarios::TENANTS` order.
    pub tenants: Vec<TenantResult>,
    /// How well the generator kept the schedule.
    pub generator: Generator,
    /// The most requests in flight at the bottleneck.
    pub upstream_max_inflight: usize,
    /// 2xx answers of all tenants completed while the load ran, per second, as a fraction of
    /// capacity (absent from results written before it was measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goodput: Option<f64>,
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

/// The bounded wait (issue 14), measured by `wipgate-bench --only queue` or as part of the
/// full run: its four setups side by side.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueBench {
    /// What this section was measured on, and when (it may be newer than the rest).
    pub machine: Machine,
    /// How long this section took, in seconds.
    pub runner_wall_s: f64,
    /// A `--quick` smoke run of this section.
    pub quick: bool,
    /// The wait's `timeout_ms` in every wipgate setup with a queue.
    pub timeout_ms: u64,
    /// Each setup's configuration, in the report's order.
    pub setups: Vec<QueueSetup>,
    /// The Poisson arrivals' seed (the same schedule for every setup at one load).
    pub seed: u64,
    /// The bottleneck's own time per request as it served it (mean, in ms, measured at the
    /// upstream below its knee with no proxy): C over it is the most C in flight deliver.
    pub service_ms: f64,
    /// Every setup at multiples of capacity, Poisson arrivals; "no protection" at 0.5x only
    /// (the unloaded p99).
    pub poisson: Sweep,
    /// The noisy tenant, no `tenants` configuration, Poisson arrivals.
    pub noisy: Noisy,
    /// The hand-off from a release on one worker to a waiter on another.
    pub handoff: Handoff,
    /// Clients that honour `retry-after` under sustained overload.
    pub retry: RetryAfter,
}

/// One setup of the bounded-wait section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSetup {
    /// Its name in the report and the plots.
    pub name: String,
    /// What it runs: wipgate's JSON, or the circuit breaker's thresholds and route timeout.
    pub config: String,
}

/// The upstream's idle gaps at a limit of 1.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handoff {
    /// Envoy's worker threads.
    pub workers: u32,
    /// The upstream's service time, in ms.
    pub service_ms: f64,
    /// Closed-loop client connections with the queue (spread over the workers).
    pub conns: usize,
    /// Each measured run, in seconds.
    pub run_s: f64,
    /// wipgate's configuration with the queue.
    pub queue_config: String,
    /// Its configuration for the baseline (no queue, one client).
    pub baseline_config: String,
    /// Answers other than 2xx in the two measured runs (each would leave a gap that is not
    /// a hand-off).
    pub errors: usize,
    /// wipgate's `queue.handoffs` over the measured run with the queue (`None`: not read).
    pub handoffs: Option<u64>,
    /// The groups the client connections fall into by the upstream connections they shared
    /// (an upstream connection belongs to one worker): the workers, when it equals them.
    pub worker_groups: usize,
    /// Gaps with the queue whose next request came on an upstream connection Envoy opened for
    /// it (a connect in the gap).
    pub new_conn: usize,
    /// With the queue: gaps where the next request came from a client on the other worker
    /// (the hand-off across workers).
    pub cross_worker: Gaps,
    /// With the queue: gaps where it came on the same worker.
    pub same_worker: Gaps,
    /// Without a queue, one client sending its next request the moment it has the answer.
    pub baseline: Gaps,
}

/// A distribution of gaps.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gaps {
    /// Gaps measured.
    pub count: usize,
    /// Percentiles, in µs.
    pub p50_us: f64,
    /// See `p50_us`.
    pub p99_us: f64,
    /// See `p50_us`.
    pub max_us: f64,
}

/// Clients that honour `retry-after` under sustained overload.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryAfter {
    /// The bottleneck's capacity (the collapsing one), requests per second.
    pub capacity_rps: f64,
    /// First attempts, as a multiple of capacity (Poisson).
    pub mult: f64,
    /// How long first attempts arrive, in seconds.
    pub run_s: f64,
    /// Retries continue until this, in seconds from the start (then clients give up).
    pub until_s: f64,
    /// Retries of one request at most.
    pub max_retries: u32,
    /// The length of a bucket of the time series, in seconds.
    pub bucket_s: f64,
    /// The setups measured.
    pub setups: Vec<RetrySetup>,
}

/// One setup under retrying clients.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySetup {
    /// Its name in the report and the plots.
    pub name: String,
    /// First attempts sent.
    pub fresh: usize,
    /// Retries sent.
    pub retries: usize,
    /// Attempts answered 2xx.
    pub ok: usize,
    /// Attempts answered 429 or 503.
    pub rejected: usize,
    /// Attempts that failed otherwise.
    pub failed: usize,
    /// Requests still rejected after their last allowed retry.
    pub exhausted: usize,
    /// Requests whose next retry would have been due after `until_s`: not sent.
    pub past_window: usize,
    /// The `retry-after` values the clients were given, in seconds: median and largest.
    pub retry_after_p50_s: f64,
    /// See `retry_after_p50_s`.
    pub retry_after_max_s: f64,
    /// Each bucket's start, in seconds from the start.
    pub t: Vec<f64>,
    /// First attempts sent in the bucket, per second.
    pub fresh_per_s: Vec<f64>,
    /// Retries sent in the bucket, per second.
    pub retries_per_s: Vec<f64>,
    /// 2xx answers completed in the bucket, per second.
    pub ok_per_s: Vec<f64>,
    /// What the bottleneck had left: capacity minus `ok_per_s`, at least 0.
    pub spare_per_s: Vec<f64>,
    /// How well the generator kept the first attempts' schedule.
    pub generator: Generator,
}

impl Results {
    /// Reads `path`; an error names the file and the field at fault.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Reads `path` without its bounded-wait section, which is about to be measured again:
    /// a section written by an older runner is no obstacle.
    pub fn load_without_queue(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut value: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        if let Some(fields) = value.as_object_mut() {
            fields.remove("queue");
        }
        Self::parse(&value.to_string()).with_context(|| format!("parsing {}", path.display()))
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
        let keys: Vec<&str> = results.sweeps.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(keys, ["collapse", "queue", "heavy_tail", "postgres"]);
        for s in &results.sweeps {
            assert_eq!(s.setups.len(), 5, "{}", s.key);
        }
        assert_eq!(results.shift.setups.len(), 5);
        assert_eq!(results.cold_start.setups.len(), 5);
        assert_eq!(results.noisy.setups.len(), 5);
        assert!(matches!(
            results.sweeps[3].bottleneck,
            Bottleneck::Postgres { .. }
        ));
        // Same names, same nesting, integers as integers: what plot.py reads is unchanged.
        let original: serde_json::Value = serde_json::from_str(&text).unwrap();
        let written: serde_json::Value = serde_json::from_str(&results.to_json().unwrap()).unwrap();
        assert!(original == written, "results.json does not round-trip");
        // To the last digit: a run of one section rewrites the others as they were.
        assert!(
            results.to_json().unwrap() == text.trim_end(),
            "results.json is not written back as it was read"
        );
    }

    #[test]
    fn a_queue_section_of_another_shape_is_dropped_before_it_is_measured_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.json");
        let mut value: serde_json::Value =
            serde_json::from_str(&Results::default().to_json().unwrap()).unwrap();
        value["queue"] = serde_json::json!({"an_older_field": 1});
        std::fs::write(&path, value.to_string()).unwrap();
        assert!(Results::load(&path).is_err());
        let results = Results::load_without_queue(&path).unwrap();
        assert_eq!(results, Results::default());
    }

    #[test]
    fn a_misspelt_or_missing_field_is_an_error_naming_it() {
        let (text, _) = checked_in();
        let misspelt = text.replacen("\"goodput\":", "\"godput\":", 1);
        let err = Results::parse(&misspelt).unwrap_err().to_string();
        assert!(err.contains("godput"), "{err}");
        let missing = text.replacen("\"slow_from_s\":", "\"slow_since_s\":", 1);
        assert_ne!(missing, text);
        let err = Results::parse(&missing).unwrap_err().to_string();
        assert!(
            err.contains("shift") && err.contains("slow_since_s"),
            "{err}"
        );
    }
}
