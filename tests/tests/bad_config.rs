//! Bad plugin configurations keep the listener from serving, and Envoy's log names the field.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use wipgate_e2e::{require_envoy, start_expect_refused, EnvoyConfig, Upstream};

/// (configuration, the field its log line must name)
const BAD: [(&str, &str); 9] = [
    (r#"{"max_inflight": 0}"#, "max_inflight"),
    (r#"{"max_inflight": "many"}"#, "max_inflight"),
    (r#"{"max_inflight": 10, "max_inflght": 10}"#, "max_inflght"),
    (
        r#"{"max_inflight": 10, "tenants": {"a": {"reserved": 6, "max": 8}, "b": {"reserved": 6}}}"#,
        "tenants",
    ),
    (
        r#"{"max_inflight": 10, "tenants": {"a": {"reserved": 5, "max": 2}}}"#,
        "tenants.a.max",
    ),
    (
        r#"{"max_inflight": 10, "classes": {"batch": {"max": 5}}, "default_class": "gold"}"#,
        "default_class",
    ),
    (
        r#"{"max_inflight": 10, "control": {"cluster": "c", "timeout_ms": 5000}}"#,
        "control.timeout_ms",
    ),
    (
        r#"{"max_inflight": 10, "retry_after_s": 0}"#,
        "retry_after_s",
    ),
    (r#"{"max_inflight": 10,"#, "(top level)"),
];

#[test]
#[ignore = "needs Envoy"]
fn bad_configurations_are_refused_naming_the_field() {
    require_envoy();
    let upstream = Upstream::start_default().unwrap();
    for (config, field) in BAD {
        let cfg = EnvoyConfig::new(upstream.addr()).with_filter(config);
        let log = start_expect_refused(&cfg, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{config} was not refused: {e:#}"));
        let line = format!("invalid plugin configuration: field `{field}`");
        assert!(
            log.contains(&line),
            "log for {config} lacks `{line}`:\n{log}"
        );
        assert_eq!(upstream.total(), 0);
    }
}

#[test]
#[ignore = "needs Envoy"]
fn an_empty_configuration_is_refused() {
    require_envoy();
    let upstream = Upstream::start_default().unwrap();
    let cfg = EnvoyConfig::new(upstream.addr()).with_filter("");
    let log = start_expect_refused(&cfg, Duration::from_secs(30)).unwrap();
    assert!(
        log.contains("field `max_inflight`: the plugin configuration is empty"),
        "{log}"
    );
}
