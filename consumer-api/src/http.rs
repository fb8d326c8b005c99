//! The route table: every `/v1` operation, declared once per resource (handlers in the
//! submodules, each with its `#[utoipa::path]`), from which both the axum router and the
//! OpenAPI document are built, so the two cannot list different operations. Also the
//! authentication layers, `/openapi.json`, and the problem answers for unknown routes and
//! methods.

pub mod attempts;
pub mod dead_letters;
pub mod directory;
pub mod event_types;
pub mod events;
pub mod page;
pub mod replays;
pub mod subscriptions;
pub mod tenants;

use std::sync::Arc;

use axum::{
    Router,
    http::{HeaderValue, Method, StatusCode, header},
    middleware,
    response::{IntoResponse, Response},
    routing::get,
};
use relay_shared::problem::Problem;
use utoipa_axum::router::OpenApiRouter;

use crate::{auth, openapi, state::AppState};

/// Every `/v1` operation: the admin's (tenants, the directory) behind the admin check, the
/// rest open to consumer keys. The one list both the router and the document come from.
fn table() -> OpenApiRouter<AppState> {
    let admin = OpenApiRouter::new()
        .merge(tenants::routes())
        .merge(directory::routes())
        .route_layer(middleware::from_fn(auth::require_admin));
    let tenant = OpenApiRouter::new()
        .merge(subscriptions::routes())
        .merge(attempts::routes())
        .merge(replays::routes())
        .merge(events::routes())
        .merge(dead_letters::routes())
        .merge(event_types::routes());
    OpenApiRouter::with_openapi(openapi::frame())
        .merge(admin)
        .merge(tenant)
}

/// The OpenAPI document, as `/openapi.json` serves it.
pub fn document() -> utoipa::openapi::OpenApi {
    openapi::finish(table().into_openapi())
}

/// The whole application: the operations, `/openapi.json` (no key needed), `ops`
/// (`/metrics`, `/healthz`, `/readyz`), and problem responses for unknown routes and methods.
pub fn router(state: AppState, ops: Router) -> Router {
    let (api, document) = table()
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .with_state(state)
        .split_for_parts();
    let document = openapi::finish(document);
    // Built once: the document is the same for every request.
    let body: Arc<[u8]> = serde_json::to_vec(&document).unwrap_or_default().into();
    api.route(
        "/openapi.json",
        get(move || {
            let body = body.clone();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    )],
                    body.to_vec(),
                )
            }
        }),
    )
    .merge(ops)
    // Set after every route is added: it applies to the routes present at the time.
    .method_not_allowed_fallback(method_not_allowed)
    .fallback(not_found)
}

async fn not_found() -> Problem {
    Problem::not_found("route")
}

async fn method_not_allowed(method: Method) -> Response {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        format!("{method} is not allowed on this route"),
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn every_operation_has_a_unique_id_a_security_and_problem_answers() {
        let document = serde_json::to_value(document()).unwrap();
        let mut ids = HashSet::new();
        for (path, item) in document["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                let id = operation["operationId"].as_str().unwrap().to_owned();
                assert!(
                    ids.insert(id.clone()),
                    "{method} {path}: {id} is not unique"
                );
                assert!(operation["security"].is_array(), "{method} {path}");
                let responses = operation["responses"].as_object().unwrap();
                for status in ["401", "500", "503"] {
                    assert!(responses.contains_key(status), "{method} {path}: {status}");
                }
                if path.contains('{') {
                    assert!(responses.contains_key("404"), "{method} {path}");
                }
            }
        }
        assert_eq!(ids.len(), 28);
    }
}
