//! The report of one sync: this Envoy's in-flight now, and per tenant and class the in-flight
//! now and the counters' growth since the previous delivered report.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::labels::{Label, Usage};
use crate::wire::{SyncRequest, UsageReport};

/// The counters (admitted, rejected) per label as of the last delivered report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reported(Vec<(Counted, u64, u64)>);

/// A label as kept in the lease's JSON (a map key must be a string there, so it is a list).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Counted {
    Tenant(String),
    Class(String),
}

impl Counted {
    fn of(label: &Label) -> Self {
        match label {
            Label::Tenant(t) => Self::Tenant(t.report_name().to_owned()),
            Label::Class(c) => Self::Class(c.to_string()),
        }
    }
}

impl Reported {
    fn get(&self, counted: &Counted) -> (u64, u64) {
        self.0
            .iter()
            .find(|(c, _, _)| c == counted)
            .map_or((0, 0), |(_, a, r)| (*a, *r))
    }
}

/// The report for one sync, and the counters to remember once it is delivered.
pub fn build_report(
    instance: &str,
    inflight: u64,
    usage: &[(Label, Usage)],
    previous: &Reported,
    policy_version: Option<u64>,
) -> (SyncRequest, Reported) {
    let mut tenants = BTreeMap::new();
    let mut classes = BTreeMap::new();
    let mut remembered = Vec::with_capacity(usage.len());
    for (label, now) in usage {
        let counted = Counted::of(label);
        let (admitted, rejected) = previous.get(&counted);
        let report = UsageReport {
            inflight: u32::try_from(now.inflight).unwrap_or(u32::MAX),
            admitted: now.admitted.saturating_sub(admitted),
            rejected: now.rejected.saturating_sub(rejected),
        };
        match label {
            Label::Tenant(t) => tenants.insert(t.report_name().to_owned(), report),
            Label::Class(c) => classes.insert(c.to_string(), report),
        };
        remembered.push((counted, now.admitted, now.rejected));
    }
    let request = SyncRequest {
        instance: instance.to_owned(),
        inflight: u32::try_from(inflight).unwrap_or(u32::MAX),
        tenants,
        classes,
        policy_version,
        ..SyncRequest::default()
    };
    (request, Reported(remembered))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::TenantLabel;
    use std::sync::Arc;

    fn tenant(name: &str) -> Label {
        Label::Tenant(TenantLabel::Listed(Arc::from(name)))
    }

    fn usage(inflight: u64, admitted: u64, rejected: u64) -> Usage {
        Usage {
            inflight,
            admitted,
            rejected,
        }
    }

    #[test]
    fn report_carries_counts_since_the_previous_one() {
        let first = [
            (tenant("acme"), usage(1, 7, 2)),
            (Label::Tenant(TenantLabel::Unlisted), usage(0, 1, 0)),
        ];
        let (_, remembered) = build_report("envoy-1", 1, &first, &Reported::default(), None);
        let now = [
            (tenant("acme"), usage(3, 10, 2)),
            (Label::Class(Arc::from("b")), usage(1, 4, 0)),
        ];
        let (req, remembered) = build_report("envoy-1", 4, &now, &remembered, Some(3));
        assert_eq!(
            req.tenants["acme"],
            UsageReport {
                inflight: 3,
                admitted: 3,
                rejected: 0
            }
        );
        assert_eq!(req.classes["b"].admitted, 4);
        assert_eq!((req.inflight, req.policy_version), (4, Some(3)));
        assert_eq!(remembered.get(&Counted::Tenant("acme".into())), (10, 2));
        assert!(req.validate().is_ok());
        let (req, _) = build_report("envoy-1", 0, &first, &Reported::default(), None);
        assert_eq!(req.tenants["*"].admitted, 1, "the unlisted report as `*`");
    }
}
