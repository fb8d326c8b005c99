//! The route table: every `/v1` operation, declared once per resource (handlers in the
//! submodules, each with its `#[utoipa::path]`), from which both the axum router and the
//! OpenAPI document are built, so the two cannot list different operations. Also the
//! authentication layers, `/openapi.json`, and the one fallback that makes every error a
//! problem: unknown routes (404) and methods (405, with `Allow`), request targets and header
//! sections that are too large (414, 431), and any error a layer or extractor answers in
//! another form.

pub mod attempts;
pub mod dead_letters;
pub mod directory;
pub mod event_types;
pub mod events;
pub mod jwks;
pub mod page;
pub mod portal_sessions;
pub mod replays;
pub mod subscriptions;
pub mod tenants;

use std::sync::Arc;

use axum::{
    Router,
    extract::Request,
    http::{HeaderValue, StatusCode, header},
    middleware::{self, Next},
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
        .merge(event_types::routes())
        .merge(portal_sessions::routes());
    OpenApiRouter::with_openapi(openapi::frame())
        .merge(admin)
        .merge(tenant)
}

/// Operations that need no key (a consumer's public signing keys), mounted outside the
/// authentication layer but listed in the same document.
fn public() -> OpenApiRouter<AppState> {
    jwks::routes()
}

/// The OpenAPI document, as `/openapi.json` serves it.
pub fn document() -> utoipa::openapi::OpenApi {
    openapi::finish(table().merge(public()).into_openapi())
}

/// The whole application: the operations, `/openapi.json` (no key needed), `ops`
/// (`/metrics`, `/healthz`, `/readyz`), and problem responses for unknown routes and methods.
pub fn router(state: AppState, ops: Router) -> Router {
    let (api, document) = table()
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .merge(public())
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
    // Outermost: it sees every request first and every answer last, fallbacks included.
    .layer(middleware::from_fn(problems))
}

/// The longest request target (path and query) accepted, in bytes.
pub const MAX_TARGET_BYTES: usize = 8 * 1024;
/// The most request headers accepted.
pub const MAX_HEADER_COUNT: usize = 100;
/// The largest header section accepted (names and values), in bytes.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
/// How much of a non-problem error body is kept as the problem's detail.
const MAX_DETAIL_BYTES: usize = 512;

/// The one fallback: refuses oversized targets and header sections, and turns every error
/// answer that is not JSON (axum's 404 and 405, a plain-text rejection of a layer) into a
/// problem, keeping its status and headers (`Allow`, `WWW-Authenticate`, `Retry-After`).
async fn problems(request: Request, next: Next) -> Response {
    let target = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if target > MAX_TARGET_BYTES {
        return Problem::new(
            StatusCode::URI_TOO_LONG,
            "uri-too-long",
            "Request target too long",
            format!("the path and query are longer than {MAX_TARGET_BYTES} bytes"),
        )
        .into_response();
    }
    let headers = request.headers();
    let header_bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if headers.len() > MAX_HEADER_COUNT || header_bytes > MAX_HEADER_BYTES {
        return Problem::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers-too-large",
            "Request header fields too large",
            format!(
                "at most {MAX_HEADER_COUNT} headers of {MAX_HEADER_BYTES} bytes in all are accepted"
            ),
        )
        .into_response();
    }
    let response = next.run(request).await;
    let status = response.status();
    // JSON answers are already structured (problems, and `/readyz`'s reasons), and HTML
    // ones are the portal's error pages; what is left is axum's empty 404 and 405 and the
    // plain-text rejections of layers and extractors.
    let is_document = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| {
            let v = v.as_bytes();
            (v.starts_with(b"application/") && v.ends_with(b"json")) || v.starts_with(b"text/html")
        });
    if status.as_u16() < 400 || is_document {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_DETAIL_BYTES)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let problem = problem_for(status, &parts.headers, text);
    let mut answer = problem.into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            answer.headers_mut().insert(name.clone(), value.clone());
        }
    }
    answer
}

/// The problem for an error answer of `status` whose body said `text`.
fn problem_for(status: StatusCode, headers: &axum::http::HeaderMap, text: String) -> Problem {
    let reason = status.canonical_reason().unwrap_or("Error");
    let (slug, title, detail) = match status {
        StatusCode::NOT_FOUND => (
            "not-found".to_owned(),
            "Not found",
            "no such route".to_owned(),
        ),
        StatusCode::METHOD_NOT_ALLOWED => {
            let allowed = headers
                .get(header::ALLOW)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            (
                "method-not-allowed".to_owned(),
                "Method not allowed",
                format!("this route allows {allowed}"),
            )
        }
        StatusCode::PAYLOAD_TOO_LARGE => (
            "payload-too-large".to_owned(),
            "Body too large",
            "the body is larger than the limit".to_owned(),
        ),
        _ => {
            let slug = reason
                .to_ascii_lowercase()
                .split(|c: char| !c.is_ascii_alphanumeric())
                .filter(|w| !w.is_empty())
                .collect::<Vec<_>>()
                .join("-");
            (slug, "Request refused", text)
        }
    };
    let detail = if detail.is_empty() {
        reason.to_owned()
    } else {
        detail
    };
    Problem::new(status, &slug, title, detail)
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
                for status in ["500", "503"] {
                    assert!(responses.contains_key(status), "{method} {path}: {status}");
                }
                let public = operation["security"] == serde_json::json!([{}]);
                assert_eq!(
                    responses.contains_key("401"),
                    !public,
                    "{method} {path}: a 401 exactly when a key is needed"
                );
                if path.contains('{') && !public {
                    assert!(responses.contains_key("404"), "{method} {path}");
                }
            }
        }
        assert_eq!(ids.len(), 33);
    }
}
