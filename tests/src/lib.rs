//! The end-to-end harness: a real Envoy per test (with or without the wipgate filter), an
//! in-process upstream with exact concurrency gauges, and load generators, shared by the
//! end-to-end tests and the demo.

pub mod blocking_http;
pub mod bootstrap;
pub mod client;
pub mod envoy;
pub mod keepalive;
pub mod load;
pub mod pg_upstream;
pub mod postgres;
pub mod processes;
pub mod prometheus;
pub mod sampler;
pub mod summary;
pub mod svg_chart;
pub mod upstream;
mod upstream_stats;
pub mod wait;

pub use client::{Outcome, RequestSpec};
pub use envoy::{require_envoy, start_expect_refused, trap_wasm_path, Envoy, EnvoyConfig};
pub use load::{abort_mid_flight, burst, burst_with, open_loop, open_loop_with_timeout};
pub use summary::{percentile, Summary};
pub use upstream::{Collapse, Gate, Slowdown, Upstream, UpstreamOptions, UpstreamStats};
pub use wait::{poll_until, poll_until_async, wait_until, wait_until_async};
