//! `GET /openapi.json`: the OpenAPI 3.1 description of the consumer API, generated from the
//! code — the request and response types derive their schemas (utoipa), and the table below
//! lists every route with its parameters, body, answer and problem responses.

use axum::{Json, response::IntoResponse};
use utoipa::{
    OpenApi, ToSchema,
    openapi::{
        self, ContentBuilder, HttpMethod, ObjectBuilder, OpenApi as Doc, PathItem, Ref, Required,
        ResponseBuilder, Type,
        path::{OperationBuilder, ParameterBuilder, ParameterIn},
        request_body::RequestBodyBuilder,
        security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme},
    },
};

use crate::{attempts, dead_letters, events, replay, subscriptions, tenants, validation};

/// An `application/problem+json` body (RFC 9457).
#[derive(Debug, serde::Serialize, ToSchema)]
#[allow(dead_code)]
pub struct ProblemDoc {
    /// `urn:relay:problem:<slug>`: stable, for programs to branch on (`invalid-field`,
    /// `malformed-json`, `unauthorized`, `forbidden`, `not-found`, `conflict`,
    /// `destination-not-allowed`, `unsupported-media-type`, `payload-too-large`,
    /// `method-not-allowed`, `store-unavailable`, `broker-unavailable`, `internal`).
    #[serde(rename = "type")]
    pub problem_type: String,
    /// Short summary.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// What went wrong this time.
    pub detail: String,
    /// The field or query parameter at fault, when there is one.
    pub field: Option<String>,
}

/// The dispatchers' directory page.
#[derive(Debug, serde::Serialize, ToSchema)]
#[allow(dead_code)]
pub struct DirectoryPageDoc {
    /// Entries (with secrets, newest first) in id order.
    #[schema(value_type = Vec<Object>)]
    pub data: Vec<serde_json::Value>,
    /// Pass as `after` for the next page.
    pub next_cursor: Option<String>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Relay consumer API",
        description = "Tenants and keys, subscriptions, the pull API, the delivery log, replay, dead letters and secret rotation. Authenticate with `Authorization: Bearer <key>`: the admin key (configuration) or a consumer key.",
    ),
    components(schemas(
        ProblemDoc,
        DirectoryPageDoc,
        validation::CreateRequest,
        validation::PatchRequest,
        subscriptions::SubscriptionView,
        subscriptions::SubscriptionList,
        subscriptions::SecretView,
        subscriptions::DisableRequest,
        subscriptions::RotateRequest,
        tenants::CreateConsumer,
        tenants::ConsumerView,
        tenants::ConsumerList,
        tenants::KeyView,
        tenants::KeyList,
        events::EventView,
        events::EventList,
        events::EventDetail,
        events::DeliveryView,
        attempts::AttemptView,
        attempts::AttemptList,
        dead_letters::DeadLetterView,
        dead_letters::DeadLetterList,
        dead_letters::RedriveRequest,
        dead_letters::RedriveResult,
        replay::ReplayRequest,
        replay::ReplayResult,
        replay::TestResult,
    ))
)]
struct Components;

/// One route: method, path, summary, admin only, query parameters, body schema, success
/// status and its schema.
struct Route {
    method: HttpMethod,
    path: &'static str,
    summary: &'static str,
    admin: bool,
    query: &'static [&'static str],
    body: Option<&'static str>,
    ok: (u16, Option<&'static str>),
}

const fn route(
    method: HttpMethod,
    path: &'static str,
    summary: &'static str,
    body: Option<&'static str>,
    ok: (u16, Option<&'static str>),
) -> Route {
    Route {
        method,
        path,
        summary,
        admin: false,
        query: &[],
        body,
        ok,
    }
}

fn routes() -> Vec<Route> {
    use HttpMethod::{Delete, Get, Patch, Post};
    let admin = |r: Route| Route { admin: true, ..r };
    let query = |r: Route, q: &'static [&'static str]| Route { query: q, ..r };
    vec![
        admin(route(
            Post,
            "/v1/consumers",
            "Create a consumer (tenant)",
            Some("CreateConsumer"),
            (201, Some("ConsumerView")),
        )),
        admin(query(
            route(
                Get,
                "/v1/consumers",
                "List consumers",
                None,
                (200, Some("ConsumerList")),
            ),
            &["after", "limit"],
        )),
        admin(route(
            Get,
            "/v1/consumers/{id}",
            "Read a consumer",
            None,
            (200, Some("ConsumerView")),
        )),
        admin(route(
            Delete,
            "/v1/consumers/{id}",
            "Delete a consumer and revoke its keys",
            None,
            (204, None),
        )),
        admin(route(
            Post,
            "/v1/consumers/{id}/keys",
            "Create an API key (shown once)",
            None,
            (201, Some("KeyView")),
        )),
        admin(route(
            Get,
            "/v1/consumers/{id}/keys",
            "List a consumer's keys",
            None,
            (200, Some("KeyList")),
        )),
        admin(route(
            Delete,
            "/v1/consumers/{id}/keys/{key_id}",
            "Revoke an API key",
            None,
            (204, None),
        )),
        admin(query(
            route(
                Get,
                "/v1/directory",
                "The dispatchers' directory",
                None,
                (200, Some("DirectoryPageDoc")),
            ),
            &["after", "limit"],
        )),
        route(
            Post,
            "/v1/subscriptions",
            "Create a subscription",
            Some("CreateRequest"),
            (201, Some("SubscriptionView")),
        ),
        query(
            route(
                Get,
                "/v1/subscriptions",
                "List subscriptions",
                None,
                (200, Some("SubscriptionList")),
            ),
            &["after", "limit", "consumer"],
        ),
        route(
            Get,
            "/v1/subscriptions/{id}",
            "Read a subscription",
            None,
            (200, Some("SubscriptionView")),
        ),
        route(
            Patch,
            "/v1/subscriptions/{id}",
            "Change a subscription",
            Some("PatchRequest"),
            (200, Some("SubscriptionView")),
        ),
        route(
            Delete,
            "/v1/subscriptions/{id}",
            "Delete a subscription",
            None,
            (204, None),
        ),
        route(
            Get,
            "/v1/subscriptions/{id}/secret",
            "Read the signing secret",
            None,
            (200, Some("SecretView")),
        ),
        route(
            Post,
            "/v1/subscriptions/{id}/rotate-secret",
            "Rotate the signing secret with a grace period",
            Some("RotateRequest"),
            (200, Some("SecretView")),
        ),
        route(
            Post,
            "/v1/subscriptions/{id}/disable",
            "Disable a subscription",
            Some("DisableRequest"),
            (200, Some("SubscriptionView")),
        ),
        route(
            Post,
            "/v1/subscriptions/{id}/test",
            "Send a relay.ping event to this subscription",
            None,
            (202, Some("TestResult")),
        ),
        route(
            Post,
            "/v1/subscriptions/{id}/replay",
            "Re-send the recorded events of a window to this subscription",
            Some("ReplayRequest"),
            (202, Some("ReplayResult")),
        ),
        query(
            route(
                Get,
                "/v1/subscriptions/{id}/attempts",
                "The delivery log",
                None,
                (200, Some("AttemptList")),
            ),
            &["outcome", "after", "limit"],
        ),
        query(
            route(
                Get,
                "/v1/events",
                "Pull events in order of acceptance",
                None,
                (200, Some("EventList")),
            ),
            &["after", "types", "limit"],
        ),
        route(
            Get,
            "/v1/events/{id}",
            "One event with its deliveries",
            None,
            (200, Some("EventDetail")),
        ),
        query(
            route(
                Get,
                "/v1/dead-letters",
                "List dead letters",
                None,
                (200, Some("DeadLetterList")),
            ),
            &["subscription_id", "after", "limit"],
        ),
        route(
            Post,
            "/v1/dead-letters/redrive",
            "Put dead letters back on the retry schedule",
            Some("RedriveRequest"),
            (202, Some("RedriveResult")),
        ),
    ]
}

fn method_name(method: &HttpMethod) -> &'static str {
    match method {
        HttpMethod::Get => "get",
        HttpMethod::Post => "post",
        HttpMethod::Patch => "patch",
        HttpMethod::Delete => "delete",
        HttpMethod::Put => "put",
        _ => "other",
    }
}

fn string_schema() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
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

/// The whole document.
pub fn document() -> Doc {
    let mut doc = Components::openapi();
    let mut paths = openapi::path::PathsBuilder::new();
    for r in routes() {
        let mut op = OperationBuilder::new()
            .summary(Some(r.summary))
            .operation_id(Some(format!(
                "{}{}",
                method_name(&r.method),
                r.path.replace(['/', '{', '}', '-'], "_")
            )));
        for name in r
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
        {
            op = op.parameter(
                ParameterBuilder::new()
                    .name(name)
                    .parameter_in(ParameterIn::Path)
                    .required(Required::True)
                    .schema(Some(string_schema())),
            );
        }
        for name in r.query {
            let schema = if *name == "limit" {
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(1))
            } else {
                string_schema()
            };
            op = op.parameter(
                ParameterBuilder::new()
                    .name(*name)
                    .parameter_in(ParameterIn::Query)
                    .required(Required::False)
                    .schema(Some(schema)),
            );
        }
        if let Some(body) = r.body {
            op = op.request_body(Some(
                RequestBodyBuilder::new()
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name(body)))
                            .build(),
                    )
                    .required(Some(if body == "RotateRequest" {
                        Required::False
                    } else {
                        Required::True
                    }))
                    .build(),
            ));
        }
        let mut ok = ResponseBuilder::new().description("Success");
        if let Some(schema) = r.ok.1 {
            ok = ok.content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name(schema)))
                    .build(),
            );
        }
        op = op
            .response(r.ok.0.to_string(), ok.build())
            .response(
                "400",
                problem("Invalid parameter or body (`invalid-field`, `malformed-json`)"),
            )
            .response("401", problem("Missing or unknown API key"))
            .response("404", problem("No such resource, or another tenant's"))
            .response(
                "503",
                problem("Store or broker unavailable; retry after `Retry-After`"),
            )
            .response("500", problem("Internal error"));
        if r.admin {
            op = op.response("403", problem("A consumer key on an admin route"));
        }
        if r.body.is_some() {
            op = op
                .response("413", problem("Body too large"))
                .response("415", problem("Body not declared as JSON"));
        }
        if r.path == "/v1/subscriptions" && matches!(r.method, HttpMethod::Post)
            || r.path == "/v1/subscriptions/{id}" && matches!(r.method, HttpMethod::Patch)
        {
            op = op.response("422", problem("Destination refused by the SSRF policy"));
        }
        if r.path == "/v1/consumers" && matches!(r.method, HttpMethod::Post) {
            op = op.response("409", problem("A consumer with that id exists"));
        }
        paths = paths.path(r.path, PathItem::new(r.method, op.build()));
    }
    doc.paths = paths.build();
    let mut components = doc.components.take().unwrap_or_default();
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
    );
    doc.components = Some(components);
    doc.security = Some(vec![SecurityRequirement::new(
        "bearer",
        Vec::<String>::new(),
    )]);
    doc
}

/// `GET /openapi.json` (no key needed).
pub async fn serve() -> impl IntoResponse {
    Json(document())
}
