//! What one probe sample measured, and the level a probe's thresholds give it. A sample
//! that could not be taken is never `ok`.

use serde::{Deserialize, Serialize};

use crate::probes::policy::{ProbeKind, ProbeLevel, ProbeSpec};

/// The outcome of one sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ProbeSample {
    /// A PostgreSQL server answered.
    Postgres {
        /// Client sessions (`pg_stat_activity`, `backend_type = 'client backend'`).
        connections: u64,
        /// The server's `max_connections`.
        max_connections: u64,
        /// Sessions waiting on a lock (`wait_event_type = 'Lock'`).
        lock_waits: u64,
        /// Latency of `SELECT 1`, ms.
        query_latency_ms: u64,
    },
    /// An HTTP endpoint answered.
    Http {
        /// Response status.
        status: u16,
        /// Time to the response head, ms.
        latency_ms: u64,
    },
    /// No answer within `timeout_ms`.
    TimedOut,
    /// Could not connect, or the answer was unusable.
    Failed,
}

impl ProbeSpec {
    /// The level of `sample` under this probe's thresholds. A sample without an answer
    /// (`Failed`, `TimedOut`) is `degraded`: never ok, and never `saturated`, which would
    /// shut out all unreserved traffic fleet-wide on a network blip between the control
    /// service and the resource. A measure without thresholds does not count.
    pub fn classify(&self, sample: &ProbeSample) -> ProbeLevel {
        let at_least_degraded = |l: ProbeLevel| l.max(ProbeLevel::Degraded);
        match (*sample, self.kind) {
            (
                ProbeSample::Postgres {
                    connections,
                    max_connections,
                    lock_waits,
                    query_latency_ms,
                },
                ProbeKind::Postgres,
            ) => {
                let mut level = ProbeLevel::Ok;
                if let Some(t) = self.connections_percent {
                    // connections / max >= percent / 100, without rounding.
                    level = level.max(if max_connections == 0 {
                        ProbeLevel::Degraded
                    } else {
                        let used = u128::from(connections) * 100;
                        let max = u128::from(max_connections);
                        if used >= u128::from(t.saturated) * max {
                            ProbeLevel::Saturated
                        } else if used >= u128::from(t.degraded) * max {
                            ProbeLevel::Degraded
                        } else {
                            ProbeLevel::Ok
                        }
                    });
                }
                if let Some(t) = self.lock_waits {
                    level = level.max(t.level(lock_waits));
                }
                if let Some(t) = self.query_latency_ms {
                    level = level.max(t.level(query_latency_ms));
                }
                level
            }
            (ProbeSample::Http { status, latency_ms }, ProbeKind::Http) => {
                let mut level = self
                    .latency_ms
                    .map_or(ProbeLevel::Ok, |t| t.level(latency_ms));
                if !(200..300).contains(&status) {
                    level = level.max(at_least_degraded(
                        self.non_2xx.unwrap_or(ProbeLevel::Degraded),
                    ));
                }
                level
            }
            // No answer (timed out, failed), or a sample of the other kind (a bug): never
            // healthy, never more than degraded.
            _ => ProbeLevel::Degraded,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use proptest::prelude::*;

    use super::*;
    use crate::probes::policy::Thresholds;

    fn pg() -> ProbeSpec {
        serde_json::from_str(
            r#"{"name": "db", "kind": "postgres", "dsn": "host=h", "timeout_ms": 300,
                "connections_percent": {"degraded": 70, "saturated": 90},
                "lock_waits": {"degraded": 5, "saturated": 20},
                "query_latency_ms": {"degraded": 50, "saturated": 200}}"#,
        )
        .unwrap()
    }

    fn http() -> ProbeSpec {
        serde_json::from_str(
            r#"{"name": "api", "kind": "http", "url": "http://x/",
                "latency_ms": {"degraded": 100, "saturated": 400}}"#,
        )
        .unwrap()
    }

    fn pg_sample(connections: u64, lock_waits: u64, latency: u64) -> ProbeSample {
        ProbeSample::Postgres {
            connections,
            max_connections: 100,
            lock_waits,
            query_latency_ms: latency,
        }
    }

    #[test]
    fn postgres_levels() {
        let p = pg();
        assert_eq!(p.classify(&pg_sample(10, 0, 1)), ProbeLevel::Ok);
        assert_eq!(p.classify(&pg_sample(69, 4, 49)), ProbeLevel::Ok);
        assert_eq!(p.classify(&pg_sample(70, 0, 1)), ProbeLevel::Degraded);
        assert_eq!(p.classify(&pg_sample(90, 0, 1)), ProbeLevel::Saturated);
        assert_eq!(p.classify(&pg_sample(1, 5, 1)), ProbeLevel::Degraded);
        assert_eq!(p.classify(&pg_sample(1, 25, 60)), ProbeLevel::Saturated);
        assert_eq!(p.classify(&pg_sample(1, 0, 200)), ProbeLevel::Saturated);
        // 18 of 20 connections is 90%.
        let s = ProbeSample::Postgres {
            connections: 18,
            max_connections: 20,
            lock_waits: 0,
            query_latency_ms: 1,
        };
        assert_eq!(p.classify(&s), ProbeLevel::Saturated);
        // Timed out at 300 ms, past the saturated latency (200): still only degraded.
        assert_eq!(p.classify(&ProbeSample::TimedOut), ProbeLevel::Degraded);
        assert_eq!(p.classify(&ProbeSample::Failed), ProbeLevel::Degraded);
        let http_sample = ProbeSample::Http {
            status: 200,
            latency_ms: 1,
        };
        assert_eq!(p.classify(&http_sample), ProbeLevel::Degraded);
    }

    #[test]
    fn http_levels() {
        let mut h = http();
        let s = |status, latency_ms| ProbeSample::Http { status, latency_ms };
        assert_eq!(h.classify(&s(200, 99)), ProbeLevel::Ok);
        assert_eq!(h.classify(&s(204, 100)), ProbeLevel::Degraded);
        assert_eq!(h.classify(&s(200, 400)), ProbeLevel::Saturated);
        assert_eq!(h.classify(&s(500, 1)), ProbeLevel::Degraded);
        assert_eq!(h.classify(&s(500, 450)), ProbeLevel::Saturated);
        // timeout_ms defaults to 500, past the saturated latency: a timeout is degraded.
        assert_eq!(h.classify(&ProbeSample::TimedOut), ProbeLevel::Degraded);
        h.non_2xx = Some(ProbeLevel::Saturated);
        assert_eq!(h.classify(&s(503, 1)), ProbeLevel::Saturated);
        h.latency_ms = None;
        assert_eq!(h.classify(&ProbeSample::TimedOut), ProbeLevel::Degraded);
        assert_eq!(h.classify(&s(200, 10_000)), ProbeLevel::Ok);
    }

    fn any_sample() -> impl Strategy<Value = ProbeSample> {
        prop_oneof![
            (0u64..200, 0u64..200, 0u64..50, 0u64..1000).prop_map(|(c, m, l, q)| {
                ProbeSample::Postgres {
                    connections: c,
                    max_connections: m,
                    lock_waits: l,
                    query_latency_ms: q,
                }
            }),
            (100u16..600, 0u64..1000)
                .prop_map(|(status, latency_ms)| ProbeSample::Http { status, latency_ms }),
            Just(ProbeSample::TimedOut),
            Just(ProbeSample::Failed),
        ]
    }

    proptest! {
        /// A sample that is not a proper answer of the probe's own kind is never ok.
        #[test]
        fn no_answer_is_never_ok(sample in any_sample(), d in 1u64..100, gap in 1u64..100) {
            let t = Thresholds { degraded: d, saturated: d + gap };
            for mut spec in [pg(), http()] {
                if spec.kind == ProbeKind::Http {
                    spec.latency_ms = Some(t);
                } else {
                    spec.query_latency_ms = Some(t);
                }
                let own = matches!(
                    (sample, spec.kind),
                    (ProbeSample::Postgres { .. }, ProbeKind::Postgres)
                        | (ProbeSample::Http { .. }, ProbeKind::Http)
                );
                if !own {
                    prop_assert!(spec.classify(&sample) >= ProbeLevel::Degraded);
                }
            }
        }

        /// More load never gives a less constrained level.
        #[test]
        fn monotone(c in 0u64..100, l in 0u64..30, q in 0u64..300, dc in 0u64..20, dl in 0u64..10, dq in 0u64..100) {
            let p = pg();
            prop_assert!(p.classify(&pg_sample(c, l, q)) <= p.classify(&pg_sample(c + dc, l + dl, q + dq)));
        }
    }
}
