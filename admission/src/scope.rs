//! Which shared data a plugin configuration uses. Envoy shares proxy-wasm shared data among
//! every VM of one `vm_id`, whatever their plugin configuration: two listeners (or routes)
//! with different wipgate configurations on one `vm_id` would otherwise count against one
//! ledger, one lease and one allowance, and the older configuration draining after a listener
//! update would fight the new one over the adaptive state. So every key is put under a
//! namespace: the configuration's `scope` when it names one (configurations of one scope
//! share their limit on purpose, e.g. across a listener update), else the plugin's root id
//! and a fingerprint of the configuration's content (key order and spacing do not count).

use serde_json::Value;

use crate::config::GateConfig;
use crate::host::{Callout, Event, Host};
use crate::labels::{Label, Usage};
use crate::shared_data::{CasError, SharedData};

/// The namespace of a configuration's shared data: `wipgate/scope/NAME/` or
/// `wipgate/config/ROOT_ID/FINGERPRINT/`. `bytes` are the configuration as given.
pub fn namespace(root_id: &str, config: &GateConfig, bytes: &[u8]) -> String {
    match &config.scope {
        Some(scope) => format!("wipgate/scope/{scope}/"),
        None => format!("wipgate/config/{root_id}/{:016x}/", fingerprint(bytes)),
    }
}

/// FNV-1a of the configuration's canonical JSON (object keys sorted, no spaces); of the bytes
/// themselves if they are not JSON (they then never made it past validation anyway).
pub fn fingerprint(bytes: &[u8]) -> u64 {
    let canonical = serde_json::from_slice::<Value>(bytes).map_or_else(
        |_| bytes.to_vec(),
        |v| {
            let mut out = Vec::with_capacity(bytes.len());
            write_canonical(&v, &mut out);
            out
        },
    );
    canonical.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(&Value::String(k.clone()), out);
                out.push(b':');
                write_canonical(&map[k], out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        // Scalars have one serialisation already.
        scalar => out.extend_from_slice(scalar.to_string().as_bytes()),
    }
}

/// A host whose shared-data keys live under one namespace; everything else goes through.
#[derive(Debug)]
pub struct Scoped<H> {
    inner: H,
    prefix: String,
}

impl<H> Scoped<H> {
    /// `inner` with every shared-data key under `prefix` (see [`namespace`]).
    pub fn new(inner: H, prefix: String) -> Self {
        Self { inner, prefix }
    }

    /// The host underneath.
    pub fn inner(&self) -> &H {
        &self.inner
    }

    /// The namespace.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, key: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + key.len());
        k.push_str(&self.prefix);
        k.push_str(key);
        k
    }
}

impl<H: SharedData> SharedData for Scoped<H> {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), CasError> {
        self.inner.get(&self.key(key))
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasError> {
        self.inner.set(&self.key(key), value, cas)
    }
}

impl<H: Host> Host for Scoped<H> {
    fn dispatch(&self, call: &Callout<'_>) -> Result<u32, String> {
        self.inner.dispatch(call)
    }

    fn record(&self, event: Event<'_>) {
        self.inner.record(event);
    }

    fn usage(&self) -> Vec<(Label, Usage)> {
        self.inner.usage()
    }

    fn wake(&self, queue: u32) {
        self.inner.wake(queue);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> GateConfig {
        GateConfig::parse(json.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn distinct_configurations_get_distinct_namespaces_and_a_scope_is_shared() {
        let a = r#"{"max_inflight": 2}"#;
        let a_again = "{ \"max_inflight\" :2 }";
        let b = r#"{"max_inflight": 3}"#;
        let ns = |root: &str, json: &str| namespace(root, &config(json), json.as_bytes());
        assert_eq!(
            ns("wipgate", a),
            ns("wipgate", a_again),
            "spacing does not count"
        );
        assert_ne!(ns("wipgate", a), ns("wipgate", b));
        assert_ne!(ns("wipgate", a), ns("other", a), "the root id counts");
        let s1 = r#"{"max_inflight": 2, "scope": "db"}"#;
        let s2 = r#"{"max_inflight": 9, "adaptive": {}, "scope": "db"}"#;
        assert_eq!(ns("wipgate", s1), ns("other", s2));
        assert_eq!(ns("wipgate", s1), "wipgate/scope/db/");
        assert_eq!(
            fingerprint(br#"{"b": [1, {"y": 2, "x": 1}], "a": "s"}"#),
            fingerprint(br#"{"a":"s","b":[1,{"x":1,"y":2}]}"#)
        );
    }

    #[test]
    fn a_scope_must_be_a_name() {
        for bad in [r#""""#, r#""a b""#, r#""a/b""#] {
            let json = format!(r#"{{"max_inflight": 1, "scope": {bad}}}"#);
            let e = GateConfig::parse(json.as_bytes()).unwrap_err();
            assert_eq!(e.field, "scope");
        }
    }
}
