//! wipgate's proxy-wasm HTTP filter: a thin shim that turns Envoy's host events into calls on
//! the admission core (`wipgate-admission`) and its decisions into local replies.
//!
//! Files: `root.rs` (configuration, ticks, callout replies), `http.rs` (one request: admit,
//! reject, release), `host.rs` (the core's `Host` over proxy-wasm host calls), `metrics.rs`
//! (the core's events as Envoy stats).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod host;
mod http;
mod metrics;
mod root;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(root::WipgateRoot::default())
    });
}}
