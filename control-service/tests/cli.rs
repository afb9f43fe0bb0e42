//! The operator CLI (`wipgate-control policy …`, `wipgate-control status`): the real binary
//! against a real service on a socket (memory store), as an operator runs it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write as _;

use std::process::Stdio;

use std::time::Duration;

use common::{wait_for, Service, TOKEN};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt as _;

/// What one run of the CLI left.
#[derive(Debug)]
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }
}

/// Runs `wipgate-control ARGS --url <service>` with `token` in `WIPGATE_ADMIN_TOKEN` (none:
/// unset) and `stdin` as its input.
async fn cli(service: &Service, args: &[&str], token: Option<&str>, stdin: &str) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_wipgate-control"));
    command
        .args(args)
        .arg("--url")
        .arg(format!("http://{}", service.addr))
        .env_remove("WIPGATE_ADMIN_TOKEN")
        .env_remove("WIPGATE_ADMIN_TOKEN_FILE")
        .env_remove("WIPGATE_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(token) = token {
        command.env("WIPGATE_ADMIN_TOKEN", token);
    }
    let mut child = command.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let out = child.wait_with_output().await.unwrap();
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn stored_policy(service: &Service) -> Value {
    service.get("/v1/policy").await.json()
}

#[tokio::test]
async fn policy_get_put_and_tenant_edits_go_through_the_api() {
    let service = Service::start(&[]).await;

    let got = cli(&service, &["policy", "get"], None, "").await;
    assert!(got.ok, "{got:?}");
    assert_eq!(got.json()["global_max_inflight"], 1000);
    assert!(got.stderr.contains("policy version 0"), "{got:?}");

    // A policy from a file, then one from standard input.
    let policy = json!({"global_max_inflight": 500,
                        "tenants": {"acme": {"reserved": 5, "max": 50}}});
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(policy.to_string().as_bytes()).unwrap();
    let path = file.path().to_str().unwrap();
    let put = cli(&service, &["policy", "put", path], Some(TOKEN), "").await;
    assert!(put.ok, "{put:?}");
    assert_eq!(put.json()["global_max_inflight"], 500);
    assert_eq!(stored_policy(&service).await["tenants"]["acme"]["max"], 50);
    let piped =
        json!({"global_max_inflight": 400, "tenants": {"acme": {"reserved": 5, "max": 50}}});
    let put = cli(
        &service,
        &["policy", "put", "-"],
        Some(TOKEN),
        &piped.to_string(),
    )
    .await;
    assert!(put.ok, "{put:?}");
    assert_eq!(stored_policy(&service).await["global_max_inflight"], 400);

    // An edit keeps what it does not name; a new tenant starts from reserved 0.
    let edit = cli(
        &service,
        &["policy", "edit-tenant", "acme", "--max", "80"],
        Some(TOKEN),
        "",
    )
    .await;
    assert!(edit.ok, "{edit:?}");
    assert_eq!(
        edit.json()["tenants"]["acme"],
        json!({"reserved": 5, "max": 80})
    );
    let add = cli(
        &service,
        &["policy", "edit-tenant", "*", "--max", "30"],
        Some(TOKEN),
        "",
    )
    .await;
    assert!(add.ok, "{add:?}");
    let stored = stored_policy(&service).await;
    assert_eq!(stored["tenants"]["acme"], json!({"reserved": 5, "max": 80}));
    assert_eq!(stored["tenants"]["*"], json!({"reserved": 0, "max": 30}));

    let delete = cli(
        &service,
        &["policy", "delete-tenant", "acme"],
        Some(TOKEN),
        "",
    )
    .await;
    assert!(delete.ok, "{delete:?}");
    assert!(stored_policy(&service).await["tenants"]
        .get("acme")
        .is_none());
    let again = cli(
        &service,
        &["policy", "delete-tenant", "acme"],
        Some(TOKEN),
        "",
    )
    .await;
    assert!(!again.ok);
    assert!(again.stderr.contains("404"), "{again:?}");
}

#[tokio::test]
async fn changes_need_the_admin_token_from_the_environment_or_a_file() {
    let service = Service::start(&[]).await;
    let args = ["policy", "edit-tenant", "acme", "--max", "10"];

    let none = cli(&service, &args, None, "").await;
    assert!(!none.ok);
    assert!(none.stderr.contains("needs the admin token"), "{none:?}");
    let wrong = cli(&service, &args, Some("not-the-token"), "").await;
    assert!(!wrong.ok);
    assert!(wrong.stderr.contains("401"), "{wrong:?}");
    assert!(stored_policy(&service).await["tenants"]
        .get("acme")
        .is_none());

    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "{TOKEN}").unwrap();
    let mut with_file = args.to_vec();
    with_file.extend(["--admin-token-file", file.path().to_str().unwrap()]);
    let ok = cli(&service, &with_file, None, "").await;
    assert!(ok.ok, "{ok:?}");
    assert_eq!(stored_policy(&service).await["tenants"]["acme"]["max"], 10);
}

#[tokio::test]
async fn an_invalid_change_is_refused_with_the_field_at_fault() {
    let service = Service::start(&[]).await;
    let args = [
        "policy",
        "edit-tenant",
        "acme",
        "--reserved",
        "20",
        "--max",
        "10",
    ];
    let run = cli(&service, &args, Some(TOKEN), "").await;
    assert!(!run.ok);
    assert!(run.stderr.contains("422"), "{run:?}");
    assert!(run.stderr.contains("tenants.acme"), "{run:?}");
}

#[tokio::test]
async fn status_shows_the_live_fleet_as_tables() {
    let service = Service::start(&[]).await;
    // A probe of a port nobody listens on: degraded from its first sample.
    let policy = json!({
        "global_max_inflight": 100,
        "tenants": {"acme": {"reserved": 10, "max": 60}},
        "probes": [{"name": "orders-api", "kind": "http", "url": "http://127.0.0.1:1/",
                    "interval_ms": 100, "timeout_ms": 50}]
    });
    let put = service
        .admin("PUT", "/v1/policy", &policy.to_string())
        .await;
    assert_eq!(put.status, 200, "{}", put.text());
    wait_for(
        "the probe's first sample",
        Duration::from_secs(10),
        || async {
            let status = service.get("/v1/status").await.json();
            (status["probes"][0]["state"] == "degraded").then_some(())
        },
    )
    .await;
    let report = json!({"instance": "envoy-a", "inflight": 7,
                        "tenants": {"acme": {"inflight": 7, "admitted": 40}}});
    assert_eq!(service.sync(&report).await.status, 200);

    let run = cli(&service, &["status"], None, "").await;
    assert!(run.ok, "{run:?}");
    eprintln!("{}", run.stdout);
    let lines: Vec<&str> = run.stdout.lines().collect();
    let line = |start: &str| -> Vec<&str> {
        let found = lines.iter().find(|l| l.starts_with(start));
        found
            .unwrap_or_else(|| panic!("no {start} in\n{}", run.stdout))
            .split_whitespace()
            .collect()
    };
    for part in [
        "global_max_inflight 100",
        "instances 1",
        "in flight 7",
        "health degraded 50%",
    ] {
        assert!(lines[0].contains(part), "{part}: {}", lines[0]);
    }
    // INSTANCE, LAST SYNC (3 words), IN FLIGHT, ALLOWANCE, POLICY, REPEATED
    let instance = line("envoy-a");
    assert_eq!((instance[4], instance[7]), ("7", "no"), "{instance:?}");
    assert_eq!(&line("acme")[..4], ["acme", "7", "60", "10"]);
    let probe = line("orders-api");
    assert_eq!(&probe[..3], ["orders-api", "http", "degraded"], "{probe:?}");
    assert!(probe.contains(&"failed"), "{probe:?}");

    let json = cli(&service, &["status", "--json"], None, "").await;
    assert_eq!(json.json()["totals"]["instances"], 1);
}

/// `edit-tenant` puts its read-modify-write with `If-Match`: a write against a policy that
/// changed since the read is refused as stale (and the command reads again), never
/// overwriting the change.
#[tokio::test]
async fn a_tenant_edit_never_overwrites_a_change_made_since_its_read() {
    use wipgate_control::cli::api::{Api, StalePolicy};
    let service = Service::start(&[]).await;
    let api = Api::new(&format!("http://{}", service.addr), Some(TOKEN.to_owned())).unwrap();
    let read = api.get("/v1/policy").await.unwrap();
    let version = read.version.clone().unwrap();
    // Someone else changes the policy after our read.
    let other = service
        .admin("PUT", "/v1/tenants/globex", r#"{"max": 7}"#)
        .await;
    assert_eq!(other.status, 200);
    let put = api
        .admin_if_match(
            http::Method::PUT,
            "/v1/tenants/acme",
            Some(br#"{"max": 5}"#.to_vec()),
            &version,
        )
        .await;
    assert!(
        put.as_ref()
            .unwrap_err()
            .downcast_ref::<StalePolicy>()
            .is_some(),
        "{put:?}"
    );
    let stored = stored_policy(&service).await;
    assert_eq!(stored["tenants"]["globex"]["max"], 7);
    assert!(stored["tenants"].get("acme").is_none());
    // The command itself reads again and applies its edit on top of the change.
    let run = cli(
        &service,
        &["policy", "edit-tenant", "acme", "--max", "5"],
        Some(TOKEN),
        "",
    )
    .await;
    assert!(run.ok, "{run:?}");
    let stored = stored_policy(&service).await;
    assert_eq!(
        (
            stored["tenants"]["acme"]["max"].as_u64(),
            stored["tenants"]["globex"]["max"].as_u64()
        ),
        (Some(5), Some(7))
    );
}
