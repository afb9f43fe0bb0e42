//! The JSON Schema of the plugin configuration, generated from the types that parse it, so
//! it cannot drift from what the filter accepts: for editors and CI linting of Envoy and
//! Istio manifests (`docs/plugin-config.schema.json`). Behind the `schema` feature, so the
//! filter builds without schemars. The schema says which keys exist and their types;
//! rules across keys (reservations fit within `max_inflight`, names well-formed) stay the
//! filter's validation, which names the field at fault.

use schemars::generate::SchemaSettings;
use schemars::Schema;
use serde_json::Value;

use crate::config::RawConfig;

/// What each top-level key is for; nested keys carry their types' doc comments.
pub const KEY_DESCRIPTIONS: &[(&str, &str)] = &[
    ("max_inflight", "Requests in flight through this Envoy, all worker threads together, never more (required, at least 1)."),
    ("min_inflight", "Floor of the adaptive limit (1 when not set); only with `adaptive`."),
    ("tenant_header", "Header naming the tenant (default `x-tenant-id`)."),
    ("default_tenant", "Tenant of requests whose tenant header is absent, empty, over 64 bytes or not [A-Za-z0-9._-] (default `default`)."),
    ("max_tenants", "Distinct tenants tracked at once; beyond, new names share the `*` entry (default 1024, at most 65536)."),
    ("tenants", "Per-tenant bulkheads by name; `*` applies to every tenant not listed."),
    ("priority_header", "Header naming the priority class (default `x-priority`)."),
    ("default_class", "Class of requests without a known priority header value; required with `classes`."),
    ("classes", "Per-class bulkheads by name."),
    ("retry_after_s", "The least `retry-after` a rejection carries, seconds (default 1, at most 3600); the filter computes it from the backlog, up to 30 s."),
    ("control", "Sync with the control service; without it the static configuration alone is enforced. `token` is sent as `authorization: Bearer TOKEN` (the service's `--sync-token-file`)."),
    ("adaptive", "Adaptive limits between `min_inflight` and `max_inflight`; `{}` is a complete configuration (the knee)."),
    ("scope", "Names the Envoy-wide ledger (in-flight counts, adaptive state, fleet sync) this configuration uses: configurations with the same scope share one limit, e.g. across a listener update; without it, each distinct configuration (by root id and content) has its own. 1-64 bytes of [A-Za-z0-9._-]."),
    ("queue", "The bounded wait: a request that finds the limit full waits up to `timeout_ms` for a slot, else `503 queue_timeout`; `{}` is a complete configuration."),
];

/// The schema (JSON Schema draft 2020-12) of the plugin configuration.
#[must_use]
pub fn plugin_config_schema() -> Schema {
    let mut schema = SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<RawConfig>();
    schema.insert("title".into(), "wipgate plugin configuration".into());
    schema.insert(
        "description".into(),
        "The JSON in Envoy's wasm `configuration` value or Istio's `pluginConfig` (docs/configuration.md). Generated from the filter's configuration types; the filter also checks rules across keys."
            .into(),
    );
    if let Some(Value::Object(properties)) = schema.get_mut("properties") {
        for (key, text) in KEY_DESCRIPTIONS {
            if let Some(Value::Object(property)) = properties.get_mut(*key) {
                property.insert("description".into(), (*text).into());
            }
        }
    }
    schema
}
