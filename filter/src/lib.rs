//! wipgate's proxy-wasm HTTP filter: a thin shim that turns Envoy's host events into calls on
//! the admission core (`wipgate-admission`) and its decisions into local replies.
//!
//! Files: `root.rs` (configuration, ticks), `http.rs` (one request: admit, reject, release),
//! `plugin.rs` (what root and requests share), `host.rs` (the only host-call adapter),
//! `metrics.rs` (Envoy stats).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod host;
mod http;
mod metrics;
mod plugin;
mod root;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(root::WipgateRoot::default())
    });
}}
