//! `docs/plugin-config.schema.json` is the schema the configuration types generate (a stale
//! one fails here: regenerate it with `make schema`), and it describes real
//! configurations: the contract's example and every shipped configuration validate, and
//! configurations the filter refuses for their shape do not.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};
use wipgate_admission::schema::{plugin_config_schema, KEY_DESCRIPTIONS};
use wipgate_admission::GateConfig;

const SCHEMA_FILE: &str = "docs/plugin-config.schema.json";
/// Set to write the generated schema to [`SCHEMA_FILE`] instead of comparing (`make schema`).
const UPDATE_ENV: &str = "WIPGATE_UPDATE_SCHEMA";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn generated() -> Value {
    serde_json::to_value(plugin_config_schema()).unwrap()
}

fn validator() -> jsonschema::Validator {
    let text = std::fs::read_to_string(root().join(SCHEMA_FILE)).unwrap();
    let schema: Value = serde_json::from_str(&text).unwrap();
    jsonschema::validator_for(&schema).unwrap()
}

fn errors(config: &Value) -> Vec<String> {
    validator()
        .iter_errors(config)
        .map(|e| format!("{}: {e}", e.instance_path))
        .collect()
}

/// The plugin configuration (JSON) of an Envoy bootstrap's first HTTP filter.
fn envoy_plugin_config(path: &str) -> Value {
    let text = std::fs::read_to_string(root().join(path)).unwrap();
    let doc = serde_yaml::Value::deserialize(serde_yaml::Deserializer::from_str(&text)).unwrap();
    let hcm =
        &doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    let value = hcm["http_filters"][0]["typed_config"]["config"]["configuration"]["value"]
        .as_str()
        .unwrap();
    serde_json::from_str(value).unwrap()
}

/// The contract's plugin configuration example (the first JSON block of its "Plugin
/// configuration" section), kept in the repository so that a clone alone runs this test.
fn contract_example() -> Value {
    let text = std::fs::read_to_string(root().join(CONTRACT_EXAMPLE)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Where the contract's example lives in the repository.
const CONTRACT_EXAMPLE: &str = "tests/fixtures/contract-plugin-config.json";

#[test]
fn the_checked_in_schema_is_the_generated_one() {
    let schema = generated();
    let file = root().join(SCHEMA_FILE);
    if std::env::var_os(UPDATE_ENV).is_some() {
        let text = serde_json::to_string_pretty(&schema).unwrap() + "\n";
        std::fs::write(&file, text).unwrap();
    }
    let text = std::fs::read_to_string(&file).unwrap_or_default();
    let checked_in: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    assert!(
        checked_in == schema,
        "{SCHEMA_FILE} is stale: regenerate it with `make schema` ({UPDATE_ENV}=1)"
    );
}

#[test]
fn every_top_level_key_is_described() {
    let schema = generated();
    let properties = schema["properties"].as_object().unwrap();
    for key in properties.keys() {
        assert!(
            properties[key]["description"].is_string(),
            "`{key}` has no description: add it to KEY_DESCRIPTIONS in admission/src/schema.rs"
        );
    }
    assert_eq!(properties.len(), KEY_DESCRIPTIONS.len(), "{properties:?}");
    assert_eq!(schema["required"], json!(["max_inflight"]));
    assert_eq!(schema["additionalProperties"], json!(false));
}

#[test]
fn the_contract_example_and_every_shipped_configuration_validate() {
    let mut configs = vec![("CONTRACT.md".to_owned(), contract_example())];
    for path in ["envoy/envoy.yaml", "deploy/compose/envoy.yaml"] {
        configs.push((path.to_owned(), envoy_plugin_config(path)));
    }
    let text = std::fs::read_to_string(root().join("envoy/istio/wasmplugin.yaml")).unwrap();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let doc = serde_yaml::Value::deserialize(doc).unwrap();
        if doc["kind"] == "WasmPlugin" {
            let config = serde_json::to_value(&doc["spec"]["pluginConfig"]).unwrap();
            configs.push(("envoy/istio/wasmplugin.yaml".to_owned(), config));
        }
    }
    assert_eq!(configs.len(), 4);
    for (name, config) in &configs {
        // The filter accepts it too: the schema and the filter agree on these.
        GateConfig::parse(config.to_string().as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(errors(config), Vec::<String>::new(), "{name}");
    }
}

#[test]
fn configurations_of_the_wrong_shape_do_not_validate() {
    let bad = [
        json!({}),
        json!({"max_inflight": "64"}),
        json!({"max_inflight": -1}),
        json!({"max_inflight": 64, "max_inflght": 64}),
        json!({"max_inflight": 64, "tenants": {"acme": {"reserved": 1, "limit": 2}}}),
        json!({"max_inflight": 64, "adaptive": {"algorithm": "vegas"}}),
        json!({"max_inflight": 64, "control": {"interval_ms": 500}}),
    ];
    for config in &bad {
        assert!(!errors(config).is_empty(), "{config} validates");
        assert!(
            GateConfig::parse(config.to_string().as_bytes()).is_err(),
            "{config}"
        );
    }
}
