//! The configs users copy (`envoy/`): YAML that parses, plugin configurations the filter
//! accepts, and an Istio WasmPlugin whose control cluster is the one its Service yields.
//! (`make validate-configs` also runs every Envoy config through `envoy --mode validate`.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use serde::Deserialize;
use serde_yaml::Value;
use wipgate_admission::GateConfig;

fn docs(path: &str) -> Vec<Value> {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{path}: {e}")))
        .collect()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

#[test]
fn the_envoy_config_carries_a_valid_plugin_configuration_and_its_control_cluster() {
    let doc = &docs("envoy/envoy.yaml")[0];
    let listener = &doc["static_resources"]["listeners"][0];
    let hcm = &listener["filter_chains"][0]["filters"][0]["typed_config"];
    let wasm = &hcm["http_filters"][0]["typed_config"]["config"];
    assert_eq!(wasm["vm_config"]["runtime"], "envoy.wasm.runtime.v8");
    let json = wasm["configuration"]["value"].as_str().unwrap();
    let config = GateConfig::parse(json.as_bytes()).unwrap();
    let cluster = config.control.unwrap().cluster;
    let clusters = doc["static_resources"]["clusters"].as_sequence().unwrap();
    assert!(
        clusters.iter().any(|c| c["name"] == cluster.as_str()),
        "no cluster {cluster}"
    );
}

#[test]
fn the_istio_wasmplugin_is_valid_and_names_the_control_services_cluster() {
    let plugin_docs = docs("envoy/istio/wasmplugin.yaml");
    let plugin = kind(&plugin_docs, "WasmPlugin");
    assert_eq!(plugin["apiVersion"], "extensions.istio.io/v1alpha1");
    let json = serde_json::to_string(&plugin["spec"]["pluginConfig"]).unwrap();
    let config = GateConfig::parse(json.as_bytes()).unwrap_or_else(|e| panic!("pluginConfig: {e}"));
    assert_eq!(config.max_inflight, 200);

    let control_docs = docs("envoy/istio/control-service.yaml");
    let service = kind(&control_docs, "Service");
    let port = service["spec"]["ports"][0]["port"].as_u64().unwrap();
    let host = format!(
        "{}.{}.svc.cluster.local",
        service["metadata"]["name"].as_str().unwrap(),
        service["metadata"]["namespace"].as_str().unwrap()
    );
    let control = config.control.unwrap();
    assert_eq!(control.cluster, format!("outbound|{port}||{host}"));
    assert_eq!(control.authority.as_deref(), Some(host.as_str()));
    kind(&control_docs, "ServiceEntry");

    // Syncs are authenticated: the service reads the sync token the filter sends, and only
    // the filter's namespace may reach /v1/sync, over mutual TLS.
    assert!(control.token.is_some());
    let deployment = kind(&control_docs, "Deployment");
    let args = &deployment["spec"]["template"]["spec"]["containers"][0]["args"];
    let args: Vec<&str> = args
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        args.windows(2).any(|w| w[0] == "--sync-token-file"),
        "{args:?}"
    );
    let peer = kind(&control_docs, "PeerAuthentication");
    assert_eq!(peer["spec"]["mtls"]["mode"], "STRICT");
    let policy = kind(&control_docs, "AuthorizationPolicy");
    assert_eq!(policy["spec"]["action"], "DENY");
    let rule = &policy["spec"]["rules"][0];
    assert_eq!(rule["to"][0]["operation"]["paths"][0], "/v1/sync");
    let allowed = rule["from"][0]["source"]["notNamespaces"][0]
        .as_str()
        .unwrap();
    assert_eq!(allowed, plugin["metadata"]["namespace"].as_str().unwrap());
}
