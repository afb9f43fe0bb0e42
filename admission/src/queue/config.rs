//! The `queue` configuration key: how long a request may wait for a slot, how many may wait,
//! and in which order they are served.

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// Upper bound of `timeout_ms`: a wait is a short pause, not a buffer (one minute).
pub const MAX_TIMEOUT_MS: u64 = 60_000;
/// Upper bound of `max_waiting`: every waiter is a record in the shared ledger, which every
/// admission reads and writes whole.
pub const MAX_WAITING_LIMIT: u32 = 10_000;

/// Which waiter of equal standing goes first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum QueueOrder {
    /// Oldest first.
    #[default]
    Fifo,
    /// Oldest first until the queue is overloaded (its oldest live waiter has waited half of
    /// `timeout_ms`), then newest first: under overload the newest waiters are the ones whose
    /// clients are still there, and the oldest would time out anyway.
    LifoWhenOverloaded,
}

/// Validated `queue` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// How long a request that finds no slot may wait for one before `503 queue_timeout`.
    #[serde(default = "defaults::timeout_ms")]
    pub timeout_ms: u64,
    /// Waiters Envoy-wide; beyond it a request is rejected at once, as without a queue.
    #[serde(default = "defaults::max_waiting")]
    pub max_waiting: u32,
    /// `fifo` (default) or `lifo_when_overloaded`.
    #[serde(default)]
    pub order: QueueOrder,
}

mod defaults {
    pub fn timeout_ms() -> u64 {
        50
    }
    pub fn max_waiting() -> u32 {
        1_000
    }
}

impl QueueConfig {
    /// Checks the ranges; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_TIMEOUT_MS).contains(&self.timeout_ms) {
            return Err(ConfigError::new(
                "queue.timeout_ms",
                format!("must be between 1 and {MAX_TIMEOUT_MS}"),
            ));
        }
        if !(1..=MAX_WAITING_LIMIT).contains(&self.max_waiting) {
            return Err(ConfigError::new(
                "queue.max_waiting",
                format!("must be between 1 and {MAX_WAITING_LIMIT}"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::GateConfig;

    fn field_of(json: &str) -> String {
        GateConfig::parse(json.as_bytes()).unwrap_err().field
    }

    #[test]
    fn an_empty_queue_is_a_complete_configuration() {
        let c = GateConfig::parse(br#"{"max_inflight": 4, "queue": {}}"#).unwrap();
        let q = c.queue.unwrap();
        assert_eq!((q.timeout_ms, q.max_waiting), (50, 1_000));
        assert_eq!(q.order, super::QueueOrder::Fifo);
    }

    #[test]
    fn bad_values_name_their_field() {
        for (json, field) in [
            (
                r#"{"max_inflight": 4, "queue": {"timeout_ms": 0}}"#,
                "queue.timeout_ms",
            ),
            (
                r#"{"max_inflight": 4, "queue": {"timeout_ms": 60001}}"#,
                "queue.timeout_ms",
            ),
            (
                r#"{"max_inflight": 4, "queue": {"max_waiting": 0}}"#,
                "queue.max_waiting",
            ),
            (
                r#"{"max_inflight": 4, "queue": {"order": "random"}}"#,
                "queue.order",
            ),
            (r#"{"max_inflight": 4, "queue": {"size": 3}}"#, "queue.size"),
        ] {
            assert_eq!(field_of(json), field, "{json}");
        }
    }
}
