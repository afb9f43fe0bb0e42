//! The files operators deploy (`deploy/`) are consistent with each other and documented:
//! the PrometheusRule carries exactly the rules file's groups, the Grafana dashboard is
//! well-formed for provisioning, the compose stack's Envoy and Prometheus point at services
//! the stack has and tag stats as `envoy/envoy.yaml` does, and the README links every
//! deploy file. (`make test-deploy` parses the compose file with `docker-compose config`,
//! `make validate-configs` runs its Envoy config through `envoy --mode validate`, and the
//! control service's tests load its policy.) What the rules and
//! queries mean is tested elsewhere: `promtool test rules` (make test-deploy) and a real
//! Prometheus (tests/prometheus.rs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use wipgate_admission::GateConfig;
use wipgate_e2e::bootstrap::STATS_TAGS;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    let file = root().join(path);
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

fn yaml(path: &str) -> serde_yaml::Value {
    serde_yaml::Value::deserialize(serde_yaml::Deserializer::from_str(&read(path)))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every file below `dir`, as a path relative to the repository root.
fn files_below(dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_below(&path, out);
        } else {
            let relative = path.strip_prefix(root()).unwrap();
            out.push(relative.to_string_lossy().replace('\\', "/"));
        }
    }
}

#[test]
fn the_prometheusrule_carries_the_rules_file_verbatim() {
    let rules = yaml("deploy/prometheus/wipgate-rules.yaml");
    let manifest = yaml("deploy/prometheus/wipgate-prometheusrule.yaml");
    assert_eq!(manifest["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(manifest["kind"], "PrometheusRule");
    assert_eq!(manifest["spec"]["groups"], rules["groups"]);
    let alerts: BTreeSet<&str> = rules["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap())
        .filter_map(|r| r["alert"].as_str())
        .collect();
    for wanted in [
        "WipgateWipUtilizationHigh",
        "WipgateBottleneckSaturated",
        "WipgateRejectionRateHigh",
        "WipgateSyncFailing",
        "WipgateOnStaticConfig",
        "WipgateAdaptiveLimitAtFloor",
        "WipgateEffectiveLoadHigh",
    ] {
        assert!(alerts.contains(wanted), "{wanted} missing from {alerts:?}");
    }
}

#[test]
fn the_dashboard_is_well_formed_for_provisioning() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/wipgate.json")).unwrap();
    assert_eq!(dashboard["uid"], "wipgate");
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(variables
        .iter()
        .any(|v| v["name"] == "datasource" && v["type"] == "datasource"));
    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap();
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "{title}: id reused"
        );
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        let ref_ids: BTreeSet<&str> = targets
            .iter()
            .map(|t| t["refId"].as_str().unwrap())
            .collect();
        assert_eq!(ref_ids.len(), targets.len(), "{title}: refId reused");
        for target in targets {
            assert!(
                !target["expr"].as_str().unwrap().trim().is_empty(),
                "{title}"
            );
        }
    }
}

#[test]
fn the_readme_links_every_deploy_file() {
    let readme = read("README.md");
    let mut files = Vec::new();
    files_below(&root().join("deploy"), &mut files);
    assert!(files.len() >= 4, "{files:?}");
    let missing: Vec<&String> = files
        .iter()
        .filter(|f| !readme.contains(&format!("({f})")))
        .collect();
    assert!(missing.is_empty(), "README.md links none of {missing:?}");
}

/// `(tag_name, regex)` of a bootstrap's `stats_config.stats_tags`.
fn stats_tags(bootstrap: &serde_yaml::Value) -> Vec<(String, String)> {
    bootstrap["stats_config"]["stats_tags"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|t| {
            let field = |k: &str| t[k].as_str().unwrap().to_owned();
            (field("tag_name"), field("regex"))
        })
        .collect()
}

#[test]
fn every_bootstrap_tags_stats_as_the_e2e_harness_does() {
    let harness: Vec<(String, String)> = STATS_TAGS
        .iter()
        .map(|(n, r)| ((*n).to_owned(), (*r).to_owned()))
        .collect();
    for path in ["envoy/envoy.yaml", "deploy/compose/envoy.yaml"] {
        assert_eq!(stats_tags(&yaml(path)), harness, "{path}");
    }
}

#[test]
fn the_compose_stack_wires_envoy_and_prometheus_to_its_own_services() {
    let compose = yaml("deploy/compose/docker-compose.yaml");
    let services = compose["services"].as_mapping().unwrap();
    let service = |host: &str| services.contains_key(host);

    let envoy = yaml("deploy/compose/envoy.yaml");
    let listener = &envoy["static_resources"]["listeners"][0];
    let hcm = &listener["filter_chains"][0]["filters"][0]["typed_config"];
    let wasm = &hcm["http_filters"][0]["typed_config"]["config"];
    let json = wasm["configuration"]["value"].as_str().unwrap();
    let config = GateConfig::parse(json.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    let control_cluster = config.control.unwrap().cluster;
    let clusters = envoy["static_resources"]["clusters"].as_sequence().unwrap();
    assert!(clusters
        .iter()
        .any(|c| c["name"] == control_cluster.as_str()));
    for cluster in clusters {
        let endpoint = &cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0];
        let host = endpoint["endpoint"]["address"]["socket_address"]["address"]
            .as_str()
            .unwrap();
        assert!(
            service(host),
            "cluster {:?}: no service {host}",
            cluster["name"]
        );
    }
    let control_env = &services["control"]["environment"];
    assert_eq!(control_env["WIPGATE_LISTEN"], "0.0.0.0:8080");

    let prometheus = yaml("deploy/compose/prometheus.yml");
    let jobs = prometheus["scrape_configs"].as_sequence().unwrap();
    assert_eq!(jobs.len(), 2);
    for job in jobs {
        for target in job["static_configs"][0]["targets"].as_sequence().unwrap() {
            let host = target.as_str().unwrap().split(':').next().unwrap();
            assert!(
                service(host),
                "job {:?}: no service {host}",
                job["job_name"]
            );
        }
    }
}

/// `--config.KEY VALUE` of the umoci call in deploy/images/control-image.sh.
fn umoci_config(script: &str, key: &str) -> String {
    let flag = format!("--config.{key} ");
    let line = script
        .lines()
        .find(|l| l.trim_start().starts_with(&flag))
        .unwrap();
    let value = line.trim_start().trim_start_matches(&flag);
    value.trim_end_matches('\\').trim().to_owned()
}

#[test]
fn the_dockerfile_builds_the_image_make_images_builds() {
    let dockerfile = read("Dockerfile");
    let script = read("deploy/images/control-image.sh");
    let last_from = dockerfile
        .lines()
        .rfind(|l| l.starts_with("FROM "))
        .unwrap();
    assert_eq!(
        last_from, "FROM scratch",
        "no shell, no libc in the final stage"
    );
    let user = umoci_config(&script, "user");
    assert_ne!(user.split(':').next(), Some("0"));
    assert!(
        dockerfile.contains(&format!("\nUSER {user}\n")),
        "USER {user}"
    );
    let entrypoint = umoci_config(&script, "entrypoint");
    assert!(dockerfile.contains(&format!("ENTRYPOINT [\"{entrypoint}\"]")));
    let env = umoci_config(&script, "env");
    assert!(dockerfile.contains(&format!("\nENV {env}\n")), "ENV {env}");
    assert!(dockerfile.contains("--target x86_64-unknown-linux-musl"));
    assert!(read("Makefile").contains("MUSL          := x86_64-unknown-linux-musl"));
    assert!(read("README.md").contains("(Dockerfile)"));
}
