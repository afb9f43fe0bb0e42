//! The fleet policy the local stack seeds its control service with
//! (`deploy/compose/policy.json`) is one the service accepts, probe included.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use wipgate_control::fleet::policy::FleetPolicy;

#[test]
fn the_compose_stacks_policy_is_valid_and_probes_postgres_without_a_password_in_it() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/compose/policy.json");
    let text = std::fs::read(&path).unwrap();
    let policy = FleetPolicy::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(policy.probes.len(), 1);
    let probe = &policy.probes[0];
    assert_eq!(
        probe.password_env.as_deref(),
        Some("WIPGATE_PROBE_PASSWORD")
    );
    assert!(probe.dsn.as_deref().unwrap().contains("host=postgres"));
}
