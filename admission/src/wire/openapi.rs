//! The OpenAPI schema of [`Bulkhead`], a wire type that lives outside this module (written
//! by hand so that `bulkhead.rs` stays free of the feature). The control service builds its
//! `/openapi.json` from the wire types; only with the `openapi` feature.

use std::borrow::Cow;

use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;

use crate::Bulkhead;

impl utoipa::PartialSchema for Bulkhead {
    fn schema() -> RefOr<Schema> {
        let count = |doc: &str| {
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                    utoipa::openapi::KnownFormat::Int32,
                )))
                .minimum(Some(0))
                .description(Some(doc.to_owned()))
        };
        ObjectBuilder::new()
            .description(Some("Reservation and cap of one tenant or class."))
            .property(
                "reserved",
                count("In-flight capacity held back for this partition (default 0)."),
            )
            .property(
                "max",
                count("Hard cap for this partition; absent: up to the whole limit."),
            )
            .additional_properties(Some(
                utoipa::openapi::schema::AdditionalProperties::FreeForm(false),
            ))
            .into()
    }
}

impl utoipa::ToSchema for Bulkhead {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Bulkhead")
    }
}
