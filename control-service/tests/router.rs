//! The router in-process (`tower::ServiceExt::oneshot`, no socket) with the memory store and
//! a manual clock: exactly what the contract and docs/control-service.md promise of auth,
//! errors, the policy round trip, the sync reply, health, metrics and the OpenAPI document.
//! Time passes by advancing the clock, never by sleeping.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::Router;
use clap::Parser;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;
use wipgate_admission::wire::{SyncReply, SyncRequest};
use wipgate_control::fleet::{FleetPolicy, InstanceView, SplitParams};
use wipgate_control::store::{BoxFuture, StoreError, Versioned};
use wipgate_control::{
    app, open_store_with_clock, AdminToken, AppState, FleetStore, ManualClock, Settings,
};

const TOKEN: &str = "router-admin-token";
/// Where the manual clock starts: ms since the epoch, as the system clock would say.
const START_MS: u64 = 1_700_000_000_000;
const POLICY: &str = r#"{"global_max_inflight": 100,
    "tenants": {"acme": {"reserved": 10, "max": 60}, "*": {"max": 30}},
    "classes": {"interactive": {"reserved": 20}, "batch": {"max": 50}}, "probes": []}"#;

/// One reply, read whole.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn version(&self) -> u64 {
        self.headers["x-wipgate-policy-version"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    }
}

/// The service's router with the memory store, reading `clock`.
struct Api {
    router: Router,
    state: AppState,
    clock: Arc<ManualClock>,
}

impl Api {
    /// Flags as on the command line (after the program name).
    fn new(flags: &[&str]) -> Self {
        Self::with_token(flags, Some(TOKEN))
    }

    fn with_token(flags: &[&str], token: Option<&str>) -> Self {
        let settings = settings(flags);
        let clock = ManualClock::new(START_MS);
        let store = open_store_with_clock(&settings, clock.clone()).unwrap();
        Self::around(store, &settings, token, clock)
    }

    fn around(
        store: Arc<dyn FleetStore>,
        settings: &Settings,
        token: Option<&str>,
        clock: Arc<ManualClock>,
    ) -> Self {
        let token = AdminToken::new(token.map(str::to_owned));
        let state = AppState::with_clock(store, token, settings, clock.clone()).unwrap();
        Self {
            router: app(state.clone()),
            state,
            clock,
        }
    }

    async fn call(&self, method: &str, path: &str, body: &str, auth: Option<&str>) -> Reply {
        let mut request = Request::builder().method(method).uri(path);
        if !body.is_empty() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        if let Some(auth) = auth {
            request = request.header(header::AUTHORIZATION, auth);
        }
        let request = request.body(Body::from(body.to_owned())).unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers,
            body: body.to_vec(),
        }
    }

    async fn get(&self, path: &str) -> Reply {
        self.call("GET", path, "", None).await
    }

    async fn admin(&self, method: &str, path: &str, body: &str) -> Reply {
        self.call(method, path, body, Some(&format!("Bearer {TOKEN}")))
            .await
    }

    async fn sync(&self, report: &Value) -> Reply {
        self.call("POST", "/v1/sync", &report.to_string(), None)
            .await
    }
}

fn settings(flags: &[&str]) -> Settings {
    let mut args = vec!["wipgate-control"];
    args.extend_from_slice(flags);
    Settings::parse_from(args)
}

/// The keys of a JSON object, sorted.
fn keys(v: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    keys
}

#[tokio::test]
async fn liveness_and_readiness() {
    let api = Api::new(&[]);
    let live = api.get("/healthz").await;
    assert_eq!(live.status, StatusCode::OK);
    assert_eq!(live.json(), json!({"status": "ok"}));
    let ready = api.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.json(), json!({"status": "ready", "store": "memory"}));

    api.state.start_draining();
    let draining = api.get("/readyz").await;
    assert_eq!(draining.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        draining.json(),
        json!({"status": "not ready", "store": "memory", "reason": "draining"})
    );
    assert_eq!(
        api.get("/healthz").await.status,
        StatusCode::OK,
        "still live"
    );
}

#[tokio::test]
async fn admin_calls_without_the_right_token_get_401_and_change_nothing() {
    let api = Api::new(&[]);
    let before = api.get("/v1/policy").await;
    let calls = [
        ("PUT", "/v1/policy", POLICY),
        ("PUT", "/v1/tenants/acme", r#"{"max": 3}"#),
        ("DELETE", "/v1/tenants/acme", ""),
        // Bad bodies too: the token is checked first.
        ("PUT", "/v1/policy", "not json"),
        ("PUT", "/v1/tenants/acme", r#"{"max": 0}"#),
    ];
    let wrong = [
        None,
        Some("Bearer wrong".to_owned()),
        Some(format!("Bearer {TOKEN}x")),
        Some(format!("Basic {TOKEN}")),
        Some(TOKEN.to_owned()),
        Some("Bearer ".to_owned()),
    ];
    for (method, path, body) in calls {
        for auth in &wrong {
            let r = api.call(method, path, body, auth.as_deref()).await;
            assert_eq!(
                r.status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} {auth:?}"
            );
            assert_eq!(r.headers[header::WWW_AUTHENTICATE], "Bearer");
            assert_eq!(r.json(), json!({"error": "missing or wrong bearer token"}));
        }
    }
    let after = api.get("/v1/policy").await;
    assert_eq!(after.version(), before.version());
    assert_eq!(after.body, before.body);

    // Without a configured token every admin call is refused, whatever it carries.
    let locked = Api::with_token(&[], None);
    let r = locked
        .call(
            "PUT",
            "/v1/policy",
            POLICY,
            Some(&format!("Bearer {TOKEN}")),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(locked.get("/v1/policy").await.version(), 0);
}

#[tokio::test]
async fn with_a_sync_token_syncs_without_it_get_401_and_take_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sync-token");
    std::fs::write(&file, "fleet-secret\n").unwrap();
    let api = Api::new(&["--sync-token-file", file.to_str().unwrap()]);
    let report = json!({"instance": "intruder", "inflight": 1_000_000});
    let wrong = [
        None,
        Some("Bearer wrong"),
        Some("Bearer fleet-secre"),
        Some("fleet-secret"),
        Some("Bearer test-admin"),
    ];
    for auth in wrong {
        for body in [
            report.to_string(),
            "not json".to_owned(),
            "x".repeat(2 << 20),
        ] {
            let r = api.call("POST", "/v1/sync", &body, auth).await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{auth:?}");
            assert_eq!(r.headers[header::WWW_AUTHENTICATE], "Bearer");
        }
    }
    // The admin token is not the sync token.
    let r = api
        .call(
            "POST",
            "/v1/sync",
            &report.to_string(),
            Some(&format!("Bearer {TOKEN}")),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(api.get("/v1/status").await.json()["totals"]["instances"], 0);
    let r = api
        .call(
            "POST",
            "/v1/sync",
            &json!({"instance": "envoy-1"}).to_string(),
            Some("Bearer fleet-secret"),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(api.get("/v1/status").await.json()["totals"]["instances"], 1);

    // A token file that holds no token stops the service at start.
    std::fs::write(&file, "\n").unwrap();
    let settings = settings(&["--sync-token-file", file.to_str().unwrap()]);
    let store = open_store_with_clock(&settings, ManualClock::new(START_MS)).unwrap();
    assert!(AppState::with_clock(
        store,
        AdminToken::new(None),
        &settings,
        ManualClock::new(START_MS)
    )
    .is_err());
}

#[tokio::test]
async fn bad_input_gets_400_or_422_naming_the_field() {
    let api = Api::new(&[]);
    let cases = [
        ("PUT", "/v1/policy", "not json", 400, "(body)"),
        ("POST", "/v1/sync", "[1,", 400, "(body)"),
        ("PUT", "/v1/policy", "{}", 422, "global_max_inflight"),
        (
            "PUT",
            "/v1/policy",
            r#"{"global_max_inflight": 0}"#,
            422,
            "global_max_inflight",
        ),
        (
            "PUT",
            "/v1/policy",
            r#"{"global_max_inflight": 5, "tenants": {"a": {"reserved": 9}}}"#,
            422,
            "tenants",
        ),
        (
            "PUT",
            "/v1/policy",
            r#"{"global_max_inflight": 5, "tenants": {"a": {"reserved": 3, "max": 2}}}"#,
            422,
            "tenants.a.max",
        ),
        (
            "PUT",
            "/v1/policy",
            r#"{"global_max_inflight": 5, "probes": [{}]}"#,
            422,
            "probes[0].name",
        ),
        (
            "PUT",
            "/v1/policy",
            r#"{"global_max_inflight": 5, "probes": [{"name": "x", "kind": "http", "url": "https://x/"}]}"#,
            422,
            "probes[0].url",
        ),
        (
            "PUT",
            "/v1/policy",
            r#"{"global_max_inflight": 5, "surprise": true}"#,
            422,
            "surprise",
        ),
        (
            "PUT",
            "/v1/tenants/acme",
            r#"{"reserved": 5, "max": 2}"#,
            422,
            "tenants.acme.max",
        ),
        (
            "PUT",
            "/v1/tenants/acme",
            r#"{"reserved": 5000}"#,
            422,
            "tenants",
        ),
        ("PUT", "/v1/tenants/acme", r#"{"mx": 2}"#, 422, "mx"),
        (
            "PUT",
            "/v1/tenants/bad%20name",
            r#"{"max": 2}"#,
            422,
            "tenants.bad name",
        ),
        ("POST", "/v1/sync", r#"{"inflight": 3}"#, 422, "instance"),
        (
            "POST",
            "/v1/sync",
            r#"{"instance": "e", "inflight": -3}"#,
            422,
            "inflight",
        ),
        (
            "POST",
            "/v1/sync",
            r#"{"instance": "e", "tenants": {"a b": {}}}"#,
            422,
            "tenants.a b",
        ),
        (
            "POST",
            "/v1/sync",
            r#"{"instance": "e", "classes": {"*": {}}}"#,
            422,
            "classes.*",
        ),
    ];
    for (method, path, body, status, field) in cases {
        let r = api.admin(method, path, body).await;
        assert_eq!(
            r.status.as_u16(),
            status,
            "{method} {path} {body}: {}",
            r.text()
        );
        assert_eq!(
            r.headers[header::CONTENT_TYPE],
            "application/json",
            "{method} {path}"
        );
        let json = r.json();
        assert_eq!(keys(&json), ["error", "field"], "{json}");
        assert_eq!(json["field"], field, "{method} {path} {body}");
        assert!(!json["error"].as_str().unwrap().is_empty());
    }
    let policy = api.get("/v1/policy").await;
    assert_eq!(policy.version(), 0, "nothing changed");
    assert_eq!(
        policy.json()["global_max_inflight"],
        1000,
        "nothing changed"
    );
}

#[tokio::test]
async fn policy_round_trip_with_versions() {
    let api = Api::new(&[]);
    let initial = api.get("/v1/policy").await;
    assert_eq!(initial.status, StatusCode::OK);
    assert_eq!(initial.version(), 0);
    assert_eq!(
        initial.json(),
        json!({"global_max_inflight": 1000, "tenants": {}, "classes": {}, "probes": []})
    );

    // The memory store's version is the time of the change, at least one more than the last.
    let put = api.admin("PUT", "/v1/policy", POLICY).await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text());
    assert_eq!(put.version(), START_MS);
    // The stored policy as served: every entry with its `reserved`, 0 when not given.
    let expected = json!({"global_max_inflight": 100,
        "tenants": {"acme": {"reserved": 10, "max": 60}, "*": {"reserved": 0, "max": 30}},
        "classes": {"interactive": {"reserved": 20}, "batch": {"reserved": 0, "max": 50}},
        "probes": []});
    assert_eq!(put.json(), expected);
    let got = api.get("/v1/policy").await;
    assert_eq!((got.version(), got.json()), (START_MS, expected.clone()));

    // The body of a GET can be PUT back as is.
    let again = api.admin("PUT", "/v1/policy", &got.text()).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.version(), START_MS + 1);
    assert_eq!(again.json(), expected);

    api.clock.advance(5_000);
    let tenant = api
        .admin("PUT", "/v1/tenants/globex", r#"{"reserved": 5, "max": 25}"#)
        .await;
    assert_eq!(tenant.status, StatusCode::OK, "{}", tenant.text());
    assert_eq!(tenant.version(), START_MS + 5_000);
    assert_eq!(
        tenant.json()["tenants"]["globex"],
        json!({"reserved": 5, "max": 25})
    );
    let deleted = api.admin("DELETE", "/v1/tenants/globex", "").await;
    assert_eq!(deleted.status, StatusCode::OK);
    assert_eq!(deleted.version(), START_MS + 5_001);
    assert_eq!(deleted.json(), expected);
    let missing = api.admin("DELETE", "/v1/tenants/globex", "").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json(), json!({"error": "no tenant entry `globex`"}));
    assert_eq!(api.get("/v1/policy").await.version(), START_MS + 5_001);
}

#[tokio::test]
async fn sync_reply_and_status_shapes() {
    // Past the warm-up (a_fresh_store_warms_up shows it): the steady-state split.
    let api = Api::new(&["--warm-up-ms", "0"]);
    let r = api
        .sync(&json!({"instance": "envoy-1", "inflight": 12,
            "tenants": {"acme": {"inflight": 10, "admitted": 300, "rejected": 4}},
            "classes": {"batch": {"inflight": 2}}, "policy_version": 7}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.headers[header::CONTENT_TYPE], "application/json");
    // Alone under the default policy: all but the floor held back for a joiner (10% of an
    // even share of 1000 / 2), valid for the stale window less 10%.
    let reply = r.json();
    assert_eq!(
        reply,
        json!({"instance": "envoy-1", "policy_version": 0, "max_inflight": 950,
            "tenants": {}, "classes": {}, "degraded": false, "stale_after_ms": 13_500,
            "health": {"state": "ok"}})
    );

    let status = api.get("/v1/status").await.json();
    assert_eq!(
        keys(&status),
        [
            "global_max_inflight",
            "health",
            "instances",
            "now_ms",
            "policy_version",
            "probes",
            "tenants",
            "totals"
        ]
    );
    assert_eq!(status["now_ms"], START_MS);
    assert_eq!(
        status["totals"],
        json!({"instances": 1, "inflight": 12, "allowance": 950, "effective_load": 0.012})
    );
    assert_eq!(status["instances"][0]["instance"], "envoy-1");
    assert_eq!(status["instances"][0]["last_seen_ms"], START_MS);
    assert_eq!(status["instances"][0]["allowance"], reply);
    assert_eq!(status["instances"][0]["report"]["policy_version"], 7);
    assert_eq!(status["health"], json!({"state": "ok"}));
    assert_eq!(status["probes"], json!([]));
}

#[tokio::test]
async fn a_fresh_store_warms_up_and_a_version_2_report_is_read_whole() {
    let api = Api::new(&[]);
    // While the census is unknown (2 s by default): no more than an even share among the
    // instances known so far and one more.
    let first = api
        .sync(
            &json!({"version": 2, "instance": "envoy-1", "nonce": "p1", "inflight": 900,
            "max_inflight": 2000, "future_field": {"ignored": true}}),
        )
        .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    assert_eq!(first.json()["max_inflight"], 500);
    api.clock.advance(2_000);
    let later = api
        .sync(
            &json!({"version": 2, "instance": "envoy-1", "nonce": "p1", "inflight": 900,
            "in_force": {"max_inflight": 500}}),
        )
        .await
        .json();
    assert_eq!(later["max_inflight"], 950);
    let status = api.get("/v1/status").await.json();
    assert_eq!(status["instances"][0]["nonce"], "p1");
    assert_eq!(status["totals"]["inflight"], 900);
    // In-flight counts no more than the Envoy's own limit: the load cannot be inflated.
    api.sync(
        &json!({"version": 2, "instance": "liar", "inflight": 4_000_000_000u32,
        "max_inflight": 100, "tenants": {"x": {"inflight": 4_000_000_000u32}}}),
    )
    .await;
    let status = api.get("/v1/status").await.json();
    assert_eq!(status["totals"]["inflight"], 1000);
    // The caps refuse a joining instance with 429, naming the field.
    let capped = Api::new(&["--max-instances", "1", "--warm-up-ms", "0"]);
    assert_eq!(
        capped.sync(&json!({"instance": "a"})).await.status,
        StatusCode::OK
    );
    let refused = capped.sync(&json!({"instance": "b"})).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.json()["field"], "instance");
    assert_eq!(refused.headers[header::RETRY_AFTER], "1");
}

#[tokio::test]
async fn writes_with_if_match_apply_only_to_that_version() {
    let api = Api::new(&[]);
    let auth = format!("Bearer {TOKEN}");
    let read = api.get("/v1/policy").await;
    let v0 = read.version();
    assert_eq!(read.headers[header::ETAG], format!("\"{v0}\""));
    let put = |if_match: String, body: &'static str| {
        let request = Request::builder()
            .method("PUT")
            .uri("/v1/policy")
            .header(header::AUTHORIZATION, auth.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::IF_MATCH, if_match)
            .body(Body::from(body))
            .unwrap();
        let router = api.router.clone();
        async move { router.oneshot(request).await.unwrap() }
    };
    // Two operators read v0; the first write wins, the second is 412 and changes nothing.
    let first = put(v0.to_string(), POLICY).await;
    assert_eq!(first.status(), StatusCode::OK);
    let v1: u64 = first.headers()["x-wipgate-policy-version"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let second = put(format!("\"{v0}\""), r#"{"global_max_inflight": 5}"#).await;
    assert_eq!(second.status(), StatusCode::PRECONDITION_FAILED);
    let body: Value =
        serde_json::from_slice(&second.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["field"], "if-match");
    let now = api.get("/v1/policy").await;
    assert_eq!(
        (now.version(), now.json()["global_max_inflight"].as_u64()),
        (v1, Some(100))
    );
    // The current version (or its weak etag, or `*`) applies; garbage is 422.
    assert_eq!(
        put(format!("W/\"{v1}\""), POLICY).await.status(),
        StatusCode::OK
    );
    assert_eq!(put("*".into(), POLICY).await.status(), StatusCode::OK);
    assert_eq!(
        put("yesterday".into(), POLICY).await.status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );
    // Tenant edits honour it too.
    let stale = api
        .call("PUT", "/v1/tenants/acme", r#"{"max": 3}"#, Some(&auth))
        .await;
    assert_eq!(stale.status, StatusCode::OK);
    let request = Request::builder()
        .method("DELETE")
        .uri("/v1/tenants/acme")
        .header(header::AUTHORIZATION, auth.clone())
        .header(header::IF_MATCH, v1.to_string())
        .body(Body::empty())
        .unwrap();
    let r = api.router.clone().oneshot(request).await.unwrap();
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(
        api.get("/v1/policy").await.json()["tenants"]["acme"]["max"],
        3
    );
}

/// Was a real-time wait in `tests/api.rs`: now the clock moves past the stale window.
#[tokio::test]
async fn stale_instances_drop_out() {
    let api = Api::new(&["--stale-after-ms", "1000", "--warm-up-ms", "0"]);
    api.sync(&json!({"instance": "gone", "inflight": 10})).await;
    api.sync(&json!({"instance": "stays", "inflight": 10}))
        .await;
    assert_eq!(api.get("/v1/status").await.json()["totals"]["instances"], 2);
    api.clock.advance(1_000);
    assert_eq!(
        api.get("/v1/status").await.json()["totals"]["instances"],
        2,
        "still within the window"
    );
    api.clock.advance(1);
    api.sync(&json!({"instance": "stays", "inflight": 10}))
        .await;
    let status = api.get("/v1/status").await.json();
    assert_eq!(status["totals"]["instances"], 1);
    assert_eq!(status["instances"][0]["instance"], "stays");
    // Alone: all but the floor held back for a joiner (10% of an even share of 1000 / 2).
    assert_eq!(
        api.sync(&json!({"instance": "stays", "inflight": 10}))
            .await
            .json()["max_inflight"],
        950
    );
}

/// The memory store behind a switch: while `down`, every call is unavailable.
struct Outage {
    inner: Arc<dyn FleetStore>,
    down: AtomicBool,
}

impl Outage {
    /// `call`, unless the store is switched off when it runs.
    fn guard<'a, T: Send + 'a>(
        &'a self,
        call: BoxFuture<'a, Result<T, StoreError>>,
    ) -> BoxFuture<'a, Result<T, StoreError>> {
        Box::pin(async move {
            if self.down.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable("switched off".into()));
            }
            call.await
        })
    }
}

impl FleetStore for Outage {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        self.guard(self.inner.ping())
    }
    fn policy(&self) -> BoxFuture<'_, Result<Versioned, StoreError>> {
        self.guard(self.inner.policy())
    }
    fn replace_policy(
        &self,
        expected: u64,
        policy: FleetPolicy,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.guard(self.inner.replace_policy(expected, policy))
    }
    fn sync(
        &self,
        report: SyncRequest,
        params: SplitParams,
    ) -> BoxFuture<'_, Result<SyncReply, StoreError>> {
        self.guard(self.inner.sync(report, params))
    }
    fn instances(
        &self,
        params: SplitParams,
    ) -> BoxFuture<'_, Result<(Vec<InstanceView>, u64), StoreError>> {
        self.guard(self.inner.instances(params))
    }
}

/// While the store is unreachable a known instance gets its last allowance again, marked
/// degraded and only for what is left of its validity; after that, and for an instance
/// never served, a 503 with `retry-after: 1`.
#[tokio::test]
async fn an_outage_repeats_the_last_allowance_while_it_is_valid() {
    let settings = settings(&[]);
    let clock = ManualClock::new(START_MS);
    let outage = Arc::new(Outage {
        inner: open_store_with_clock(&settings, clock.clone()).unwrap(),
        down: AtomicBool::new(false),
    });
    let api = Api::around(outage.clone(), &settings, Some(TOKEN), clock);
    let good = api
        .sync(&json!({"instance": "e1", "inflight": 5}))
        .await
        .json();
    assert_eq!(good["stale_after_ms"], 13_500);

    outage.down.store(true, Ordering::SeqCst);
    api.clock.advance(4_000);
    let repeated = api.sync(&json!({"instance": "e1", "inflight": 5})).await;
    assert_eq!(repeated.status, StatusCode::OK);
    let mut expected = good.clone();
    expected["degraded"] = json!(true);
    expected["stale_after_ms"] = json!(9_500);
    assert_eq!(repeated.json(), expected);

    let unknown = api.sync(&json!({"instance": "newcomer"})).await;
    assert_eq!(unknown.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(unknown.headers[header::RETRY_AFTER], "1");
    assert_eq!(
        unknown.json(),
        json!({"error": "the store is unavailable; retry later"})
    );
    let ready = api.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.json()["status"], "not ready");

    api.clock.advance(9_500);
    let expired = api.sync(&json!({"instance": "e1", "inflight": 5})).await;
    assert_eq!(
        expired.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "validity ran out"
    );

    outage.down.store(false, Ordering::SeqCst);
    let fresh = api
        .sync(&json!({"instance": "e1", "inflight": 5}))
        .await
        .json();
    assert_eq!(fresh["degraded"], false);
    let metrics = api.get("/metrics").await.text();
    for line in [
        "wipgate_control_sync_total{result=\"ok\"} 2",
        "wipgate_control_sync_total{result=\"degraded\"} 1",
        "wipgate_control_sync_total{result=\"unavailable\"} 2",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing `{line}` in\n{metrics}"
        );
    }
}

#[tokio::test]
async fn metrics_in_prometheus_text_format() {
    let api = Api::new(&[]);
    assert_eq!(
        api.sync(&json!({"instance": "e1", "inflight": 40, "tenants": {"acme": {"inflight": 40}}}))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        api.admin("PUT", "/v1/policy", POLICY).await.status,
        StatusCode::OK
    );
    let r = api.get("/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.headers[header::CONTENT_TYPE],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = r.text();
    for line in [
        "# TYPE wipgate_fleet_instances gauge",
        "wipgate_fleet_instances 1",
        "wipgate_fleet_inflight 40",
        "wipgate_fleet_max_inflight 100",
        "wipgate_fleet_effective_load 0.4",
        &format!("wipgate_fleet_policy_version {START_MS}"),
        "wipgate_fleet_tenant_inflight{tenant=\"acme\"} 40",
        "wipgate_fleet_tenant_max{tenant=\"acme\"} 60",
        "wipgate_control_store_up 1",
        "wipgate_control_resource_health 0",
        "wipgate_control_resource_limit_percent 100",
        "# TYPE wipgate_control_sync_total counter",
        "wipgate_control_sync_total{result=\"ok\"} 1",
        "wipgate_control_http_requests_total{method=\"POST\",route=\"/v1/sync\",status=\"200\"} 1",
        "wipgate_control_http_requests_total{method=\"PUT\",route=\"/v1/policy\",status=\"200\"} 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in\n{text}"
        );
    }
    assert!(text.contains(
        "wipgate_control_http_request_duration_seconds_bucket{method=\"POST\",route=\"/v1/sync\",le=\"0.0005\"}"
    ));
}

#[tokio::test]
async fn the_openapi_document_describes_the_api() {
    let api = Api::new(&[]);
    let r = api.get("/openapi.json").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers[header::CONTENT_TYPE], "application/json");
    let doc = r.json();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let operations = [
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
        ("/v1/policy", "get"),
        ("/v1/policy", "put"),
        ("/v1/tenants/{name}", "put"),
        ("/v1/tenants/{name}", "delete"),
        ("/v1/status", "get"),
        ("/v1/sync", "post"),
    ];
    for (path, method) in operations {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} missing"
        );
    }
    for (path, method) in [
        ("/v1/policy", "put"),
        ("/v1/tenants/{name}", "put"),
        ("/v1/tenants/{name}", "delete"),
    ] {
        assert_eq!(
            doc["paths"][path][method]["security"],
            json!([{"bearer": []}]),
            "{method} {path}"
        );
    }
    assert!(doc["paths"]["/v1/sync"]["post"]["security"].is_null());
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"],
        json!({"type": "http", "scheme": "bearer"})
    );
    let schemas = &doc["components"]["schemas"];
    for schema in [
        "FleetPolicy",
        "SyncRequest",
        "SyncReply",
        "UsageReport",
        "Bulkhead",
        "ResourceHealth",
        "FleetStatus",
        "InstanceView",
        "ProbeSpec",
        "ProbeStatus",
        "ErrorBody",
        "Health",
    ] {
        assert!(schemas[schema].is_object(), "schema {schema} missing");
    }
    let reply = &schemas["SyncReply"]["properties"];
    for field in [
        "instance",
        "policy_version",
        "max_inflight",
        "tenants",
        "classes",
        "degraded",
        "stale_after_ms",
        "health",
    ] {
        assert!(reply[field].is_object(), "SyncReply.{field} missing");
    }
}
