//! `GET /openapi.json`, generated from the handlers' annotations and the request and reply
//! types themselves (the sync types are the filter's own).

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{health, metrics, policy, status, sync};

#[derive(OpenApi)]
#[openapi(
    info(title = "wipgate control service", description = "Fleet policy, fleet accounting and each Envoy's allowance. See docs/control-service.md."),
    paths(health::healthz, health::readyz, metrics::metrics, openapi, policy::get_policy, policy::put_policy,
          policy::put_tenant, policy::delete_tenant, status::status, sync::sync),
    components(schemas(wipgate_admission::Bulkhead, wipgate_admission::wire::UsageReport, wipgate_admission::wire::InForce,
                       crate::fleet::InstanceView, crate::status::Totals, crate::status::TenantStatus,
                       crate::probes::ProbeSpec, crate::probes::Thresholds,
                       crate::probes::ProbeKind, crate::probes::ProbeLevel,
                       crate::probes::ProbeSample, crate::probes::ProbeState,
                       wipgate_admission::wire::ResourceHealth, crate::probes::ProbeStatus)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The OpenAPI document of this API.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "OpenAPI 3.1 document")))]
pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(document())
}
