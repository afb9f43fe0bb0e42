//! Field errors of the service's own documents (the fleet policy and its probes). They are
//! the admission crate's [`ConfigError`], so a bad policy, a bad sync body and a bad plugin
//! configuration all name their field the same way, and the API answers each with one 422.

use wipgate_admission::ConfigError;

/// `field` (a dotted path) is at fault: `problem`.
pub fn field_error(field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        problem: problem.into(),
    }
}
