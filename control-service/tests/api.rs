//! The API over real TCP with the memory store: every endpoint, auth and validation
//! failures, body limits, and a restart of the real binary with `--policy-file`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{request, wait_for, Service, TOKEN};
use serde_json::json;

const POLICY: &str = r#"{"global_max_inflight": 100,
    "tenants": {"acme": {"reserved": 10, "max": 60}, "*": {"max": 30}},
    "classes": {"interactive": {"reserved": 20}, "batch": {"max": 50}}, "probes": []}"#;

#[tokio::test]
async fn health_metrics_and_openapi() {
    let svc = Service::start(&[]).await;
    assert_eq!(svc.get("/healthz").await.json()["status"], "ok");
    let ready = svc.get("/readyz").await;
    assert_eq!(
        (ready.status, ready.json()["store"].as_str()),
        (200, Some("memory"))
    );

    svc.sync(&json!({"instance": "e1", "inflight": 40})).await;
    let metrics = svc.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(metrics.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = metrics.text();
    for line in [
        "wipgate_fleet_instances 1",
        "wipgate_fleet_inflight 40",
        "wipgate_fleet_max_inflight 1000",
        "wipgate_fleet_effective_load 0.04",
        "wipgate_control_http_requests_total{method=\"POST\",route=\"/v1/sync\",status=\"200\"} 1",
        "wipgate_control_sync_total{result=\"ok\"} 1",
        "wipgate_control_store_up 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in\n{text}"
        );
    }
    assert!(text.contains(
        "wipgate_control_http_request_duration_seconds_bucket{method=\"POST\",route=\"/v1/sync\""
    ));

    let doc = svc.get("/openapi.json").await.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/v1/policy",
        "/v1/tenants/{name}",
        "/v1/status",
        "/v1/sync",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    for schema in [
        "FleetPolicy",
        "SyncRequest",
        "SyncReply",
        "Bulkhead",
        "FleetStatus",
        "ErrorBody",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "schema {schema} missing"
        );
    }
    assert!(doc["components"]["schemas"]["SyncReply"]["properties"]["stale_after_ms"].is_object());
    assert!(doc["paths"]["/v1/policy"]["put"]["security"].is_array());
}

#[tokio::test]
async fn policy_and_tenant_admin() {
    let svc = Service::start(&[]).await;
    let initial = svc.get("/v1/policy").await;
    assert_eq!(initial.status, 200);
    assert_eq!(initial.json()["global_max_inflight"], 1000);
    assert_eq!(initial.headers["x-wipgate-policy-version"], "0");

    let put = svc.admin("PUT", "/v1/policy", POLICY).await;
    assert_eq!(put.status, 200, "{}", put.text());
    let v1: u64 = put.headers["x-wipgate-policy-version"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(v1 > 0);
    let got = svc.get("/v1/policy").await.json();
    assert_eq!(got["tenants"]["acme"], json!({"reserved": 10, "max": 60}));
    assert_eq!(got["probes"], json!([]));

    let tenant = svc
        .admin("PUT", "/v1/tenants/globex", r#"{"reserved": 5, "max": 25}"#)
        .await;
    assert_eq!(tenant.status, 200, "{}", tenant.text());
    let v2: u64 = tenant.headers["x-wipgate-policy-version"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(v2 > v1);
    assert_eq!(
        svc.get("/v1/policy").await.json()["tenants"]["globex"],
        json!({"reserved": 5, "max": 25})
    );

    assert_eq!(
        svc.admin("DELETE", "/v1/tenants/globex", "").await.status,
        200
    );
    assert!(svc.get("/v1/policy").await.json()["tenants"]["globex"].is_null());
    let missing = svc.admin("DELETE", "/v1/tenants/globex", "").await;
    assert_eq!(missing.status, 404);
    assert!(missing.json()["error"].as_str().unwrap().contains("globex"));
}

#[tokio::test]
async fn admin_calls_need_the_token_and_change_nothing_without_it() {
    let svc = Service::start(&[]).await;
    let before = svc.get("/v1/policy").await.text();
    let calls = [
        ("PUT", "/v1/policy", POLICY),
        ("PUT", "/v1/tenants/acme", r#"{"max": 3}"#),
        ("DELETE", "/v1/tenants/acme", ""),
    ];
    for (method, path, body) in calls {
        for token in [None, Some("wrong"), Some("test-admin-tokenX"), Some("")] {
            let r = svc.send(method, path, body, token).await;
            assert_eq!(r.status, 401, "{method} {path} with {token:?}");
            assert_eq!(r.headers["www-authenticate"], "Bearer");
            assert!(r.json()["error"].is_string());
        }
    }
    // Even a body too large or malformed is refused for the token first.
    let big = "x".repeat(2 << 20);
    assert_eq!(svc.send("PUT", "/v1/policy", &big, None).await.status, 401);
    assert_eq!(svc.get("/v1/policy").await.text(), before);
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let svc = Service::start(&["--max-body-bytes", "4096"]).await;
    let mut tenants = serde_json::Map::new();
    for i in 0..400 {
        tenants.insert(format!("tenant-{i}"), json!({"inflight": 1}));
    }
    let big = json!({"instance": "e1", "tenants": tenants}).to_string();
    assert!(big.len() > 4096);
    let r = svc.send("POST", "/v1/sync", &big, None).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["field"], "(body)");
    let r = svc
        .admin(
            "PUT",
            "/v1/policy",
            &format!(
                r#"{{"global_max_inflight": 5, "pad": "{}"}}"#,
                "x".repeat(5000)
            ),
        )
        .await;
    assert_eq!(r.status, 413);
    assert_eq!(svc.sync(&json!({"instance": "e1"})).await.status, 200);
}

#[tokio::test]
async fn sync_and_status_follow_demand() {
    let svc = Service::start(&[]).await;
    assert_eq!(svc.admin("PUT", "/v1/policy", POLICY).await.status, 200);
    let busy = json!({"instance": "busy", "inflight": 50,
        "tenants": {"acme": {"inflight": 45, "admitted": 900, "rejected": 30}, "other": {"inflight": 5}},
        "classes": {"interactive": {"inflight": 20}, "batch": {"inflight": 30, "rejected": 30}}});
    let idle = json!({"instance": "idle", "inflight": 1, "tenants": {"acme": {"inflight": 1}}});
    let mut last = (json!(null), json!(null));
    for _ in 0..3 {
        last = (svc.sync(&busy).await.json(), svc.sync(&idle).await.json());
    }
    let (b, i) = last;
    assert_eq!(b["degraded"], false);
    assert_eq!(b["stale_after_ms"], 13_500);
    assert!(b["max_inflight"].as_u64().unwrap() > i["max_inflight"].as_u64().unwrap());
    assert!(i["max_inflight"].as_u64().unwrap() >= 1, "floor: {i}");
    assert!(b["max_inflight"].as_u64().unwrap() + i["max_inflight"].as_u64().unwrap() <= 100);
    let acme = |r: &serde_json::Value, k: &str| r["tenants"]["acme"][k].as_u64().unwrap();
    assert!(acme(&b, "max") + acme(&i, "max") <= 60);
    assert!(acme(&b, "reserved") + acme(&i, "reserved") <= 10);
    assert!(b["classes"]["batch"]["max"].as_u64().unwrap() <= 50);

    let status = svc.get("/v1/status").await.json();
    assert_eq!(status["totals"]["instances"], 2);
    assert_eq!(status["totals"]["inflight"], 51);
    assert_eq!(status["tenants"]["acme"]["inflight"], 46);
    assert_eq!(status["tenants"]["*"]["inflight"], 5);
    assert!(status["totals"]["allowance"].as_u64().unwrap() <= 100);
    let ids: Vec<_> = status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["instance"].clone())
        .collect();
    assert_eq!(ids, vec![json!("busy"), json!("idle")]);
    assert_eq!(status["instances"][0]["allowance"], b);
    assert_eq!(status["probes"], json!([]));
}

/// The real binary: flags, env token, SIGTERM, and the policy file across a restart.
#[tokio::test]
async fn binary_restart_keeps_the_policy_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.json");
    let start = || {
        let port = common::free_port();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_wipgate-control"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--policy-file"])
            .arg(&file)
            .args(["--log-format", "json"])
            .env("WIPGATE_ADMIN_TOKEN", TOKEN)
            .env_remove("WIPGATE_REDIS_URL")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        (child, std::net::SocketAddr::from(([127, 0, 0, 1], port)))
    };
    let ready = |addr| async move {
        wait_for(
            "wipgate-control to be ready",
            Duration::from_secs(10),
            || async move {
                let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
                drop(stream);
                (request(addr, "GET", "/readyz", None, None).await.status == 200).then_some(())
            },
        )
        .await;
    };
    let (mut child, addr) = start();
    ready(addr).await;
    let put = request(
        addr,
        "PUT",
        "/v1/policy",
        Some(POLICY.as_bytes().to_vec()),
        Some(TOKEN),
    )
    .await;
    assert_eq!(put.status, 200, "{}", put.text());
    let tenant = request(
        addr,
        "PUT",
        "/v1/tenants/late",
        Some(br#"{"max": 7}"#.to_vec()),
        Some(TOKEN),
    )
    .await;
    assert_eq!(tenant.status, 200);
    let before = request(addr, "GET", "/v1/policy", None, None).await.json();

    // SIGTERM: graceful exit with status 0.
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(exit.success(), "{exit:?}");

    let on_disk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(on_disk, before);
    let (mut child, addr) = start();
    ready(addr).await;
    let after = request(addr, "GET", "/v1/policy", None, None).await.json();
    assert_eq!(after, before);
    assert_eq!(after["tenants"]["late"], json!({"reserved": 0, "max": 7}));
    child.kill().unwrap();
    child.wait().unwrap();
}
