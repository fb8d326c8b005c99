//! The OpenAPI 3.1 document's frame: its description, the two bearer schemes, the problem
//! body, and the problem responses every operation can give. The operations themselves come
//! from the handlers' own declarations through the route table ([`crate::http`]), so the
//! router and the document are built from the same list and cannot drift.

use utoipa::{
    OpenApi, ToSchema,
    openapi::{
        self, ContentBuilder, OpenApi as Doc, Ref, ResponseBuilder,
        path::Operation,
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};

/// The security scheme of the admin key.
pub const ADMIN_KEY: &str = "admin_key";
/// The security scheme of a consumer key.
pub const CONSUMER_KEY: &str = "consumer_key";

/// An `application/problem+json` body (RFC 9457).
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct ProblemDoc {
    /// `urn:relay:problem:<slug>`: stable, for programs to branch on (`invalid-field`,
    /// `malformed-json`, `unauthorized`, `forbidden`, `not-found`, `conflict`,
    /// `destination-not-allowed`, `unsupported-media-type`, `payload-too-large`,
    /// `method-not-allowed`, `uri-too-long`, `headers-too-large`, `replay-running`,
    /// `store-unavailable`, `broker-unavailable`, `internal`).
    #[serde(rename = "type")]
    pub problem_type: String,
    /// Short summary.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// What went wrong this time.
    pub detail: String,
    /// The field or query parameter at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Relay consumer API",
        description = "Tenants and keys, subscriptions, the pull API, the delivery log, replay, dead letters and secret rotation.\n\nAuthenticate with `Authorization: Bearer <key>`: the admin key (configuration) reaches everything; a consumer key (`rk_…`) reaches only its consumer's resources, and another consumer's ids answer 404.\n\n**Lists.** Every list answers `{data, next_cursor, has_more}`. `next_cursor` is always present: the position of the last item returned (or examined, for the pull API), or the `after` given when there is nothing after it. Pass it as `after` to continue; empty or absent `after` is the start. `has_more` says whether asking again right away may return more.\n\n**Errors.** Every error is `application/problem+json` with a stable `type`.",
    ),
    components(schemas(ProblemDoc))
)]
struct Frame;

/// The document before the operations are added.
pub fn frame() -> Doc {
    let mut doc = Frame::openapi();
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        ADMIN_KEY,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some("The admin key (`api.admin_key`)."))
                .build(),
        ),
    );
    components.add_security_scheme(
        CONSUMER_KEY,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "A consumer key (`rk_…`): that consumer's resources only.",
                ))
                .build(),
        ),
    );
    doc
}

fn problem(description: &str) -> openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/problem+json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ProblemDoc")))
                .build(),
        )
        .build()
}

/// Adds `response` under `status` unless the operation declares that status itself.
fn add(operation: &mut Operation, status: &str, description: &str) {
    operation
        .responses
        .responses
        .entry(status.to_owned())
        .or_insert_with(|| problem(description).into());
}

/// Adds the problem responses every operation can give, by what it takes: any operation
/// 414/431/500/503; one that needs a key 401 and 403; one with query parameters or a body 400;
/// one with path parameters 404; one with a body 413/415. A public operation (security
/// `[{}]`: no key) gets no 401, 403 or 404.
pub fn finish(mut doc: Doc) -> Doc {
    for item in doc.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            let has = |place: openapi::path::ParameterIn| {
                operation
                    .parameters
                    .as_ref()
                    .is_some_and(|ps| ps.iter().any(|p| p.parameter_in == place))
            };
            let has_path_params = has(openapi::path::ParameterIn::Path);
            let has_query_params = has(openapi::path::ParameterIn::Query);
            let security = operation
                .security
                .as_ref()
                .map(|s| serde_json::to_string(s).unwrap_or_default());
            let public = security.as_deref() == Some("[{}]");
            // A public operation checks its path itself: a malformed id is a 400, an unknown
            // one is not told apart.
            let checks_path = has_path_params && public;
            let has_path_params = has_path_params && !public;
            if has_query_params || checks_path || operation.request_body.is_some() {
                add(
                    operation,
                    "400",
                    "Invalid parameter or body (`invalid-field`, `malformed-json`)",
                );
            }
            if !public {
                add(operation, "401", "Missing or unknown key (`unauthorized`)");
            }
            if !public {
                add(
                    operation,
                    "403",
                    "A key without this right: a consumer key on an admin route or naming another consumer, a directory key outside its scope (`forbidden`)",
                );
            }
            if has_path_params {
                add(
                    operation,
                    "404",
                    "No such resource, or another consumer's (`not-found`)",
                );
            }
            if operation.request_body.is_some() {
                add(operation, "413", "Body too large (`payload-too-large`)");
                add(
                    operation,
                    "415",
                    "Body not declared as JSON (`unsupported-media-type`)",
                );
            }
            add(operation, "414", "Request target too long (`uri-too-long`)");
            add(
                operation,
                "431",
                "Request header fields too large (`headers-too-large`)",
            );
            add(operation, "500", "Internal error (`internal`)");
            add(
                operation,
                "503",
                "Store or broker unavailable; retry after `Retry-After`",
            );
        }
    }
    doc
}
