//! What a rejected request is answered with, exactly as the contract's rejection table says.

use crate::TenantName;

/// Why a request was not admitted. The string forms are the contract's `x-wipgate-reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// The Envoy-wide (or fleet share) limit is full.
    WipLimit,
    /// The control service reports the protected resource saturated.
    BottleneckSaturated,
    /// A request waited in the bounded queue past its deadline.
    QueueTimeout,
    /// The tenant is at its `max`.
    TenantLimit,
    /// The priority class is at its `max`.
    ClassLimit,
    /// Retries exceed the retry budget.
    RetryBudget,
}

impl RejectReason {
    /// Every reason, for defining one stat per reason up front.
    pub const ALL: [RejectReason; 6] = [
        Self::WipLimit,
        Self::BottleneckSaturated,
        Self::QueueTimeout,
        Self::TenantLimit,
        Self::ClassLimit,
        Self::RetryBudget,
    ];

    /// The `x-wipgate-reason` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WipLimit => "wip_limit",
            Self::BottleneckSaturated => "bottleneck_saturated",
            Self::QueueTimeout => "queue_timeout",
            Self::TenantLimit => "tenant_limit",
            Self::ClassLimit => "class_limit",
            Self::RetryBudget => "retry_budget",
        }
    }

    /// 503 when the protected resource is the limit, 429 when the caller's own share is.
    pub fn status(self) -> u16 {
        match self {
            Self::WipLimit | Self::BottleneckSaturated | Self::QueueTimeout => 503,
            Self::TenantLimit | Self::ClassLimit | Self::RetryBudget => 429,
        }
    }

    /// The body's `error` field.
    pub fn error(self) -> &'static str {
        if self.status() == 503 {
            "overloaded"
        } else {
            "too_many_requests"
        }
    }
}

/// A complete rejection: everything needed to write the local reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Why.
    pub reason: RejectReason,
    /// Whose request it was.
    pub tenant: TenantName,
    /// The `retry-after` value in whole seconds (at least 1).
    pub retry_after_s: u32,
}

impl Rejection {
    /// The HTTP status code.
    pub fn status(&self) -> u32 {
        u32::from(self.reason.status())
    }

    /// The reply headers, in the contract's names. Every rejection carries
    /// `x-envoy-ratelimited`: it is the one response header a calling Envoy's router (and so
    /// an Istio sidecar, which retries a 503 twice by default) takes as "do not retry",
    /// unless its policy asks for `envoy-ratelimited` retries; `x-envoy-overloaded` no longer
    /// stops retries in Envoy 1.40 (the e2e test with a retrying caller shows both). 503s
    /// also say `x-envoy-overloaded`, as Envoy's own overload answers do.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![
            ("x-wipgate-reason", self.reason.as_str().to_owned()),
            ("retry-after", self.retry_after_s.max(1).to_string()),
            ("content-type", "application/json".to_owned()),
            ("x-envoy-ratelimited", "true".to_owned()),
        ];
        if self.reason.status() == 503 {
            headers.push(("x-envoy-overloaded", "true".to_owned()));
        }
        headers
    }

    /// The JSON body. Every field is either a fixed word or a [`TenantName`], which is
    /// JSON-safe by construction, but it still goes through serde_json to stay correct.
    pub fn body(&self) -> String {
        serde_json::json!({
            "error": self.reason.error(),
            "reason": self.reason.as_str(),
            "tenant": self.tenant.as_str(),
            "retry_after_s": self.retry_after_s.max(1),
        })
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wip_limit_reply_matches_the_contract() {
        let r = Rejection {
            reason: RejectReason::WipLimit,
            tenant: TenantName::parse("acme").unwrap(),
            retry_after_s: 2,
        };
        assert_eq!(r.status(), 503);
        let body: serde_json::Value = serde_json::from_str(&r.body()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": "overloaded", "reason": "wip_limit", "tenant": "acme", "retry_after_s": 2})
        );
        let headers = r.headers();
        assert!(headers.contains(&("retry-after", "2".to_owned())));
        assert!(headers.contains(&("x-wipgate-reason", "wip_limit".to_owned())));
        assert!(headers.contains(&("content-type", "application/json".to_owned())));
        assert!(headers.contains(&("x-envoy-overloaded", "true".to_owned())));
        assert!(headers.contains(&("x-envoy-ratelimited", "true".to_owned())));
        let tenant = Rejection {
            reason: RejectReason::TenantLimit,
            ..r
        };
        assert!(tenant
            .headers()
            .contains(&("x-envoy-ratelimited", "true".to_owned())));
        assert!(!tenant
            .headers()
            .iter()
            .any(|(k, _)| *k == "x-envoy-overloaded"));
    }

    #[test]
    fn statuses_follow_the_table() {
        let got: Vec<(&str, u16, &str)> = RejectReason::ALL
            .iter()
            .map(|r| (r.as_str(), r.status(), r.error()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("wip_limit", 503, "overloaded"),
                ("bottleneck_saturated", 503, "overloaded"),
                ("queue_timeout", 503, "overloaded"),
                ("tenant_limit", 429, "too_many_requests"),
                ("class_limit", 429, "too_many_requests"),
                ("retry_budget", 429, "too_many_requests"),
            ]
        );
    }
}
