//! Who is calling: the admin (configured key, full access), a dispatcher or ingest (a
//! directory key: reads the directory and the event-type catalogue, disables a subscription,
//! nothing else) or a consumer (one of its
//! API keys, access to its own subscriptions, events, attempts and dead letters only). The
//! middleware here turns the bearer key into a [`Caller`] and confines a directory key to
//! its two routes; what a caller may do is otherwise decided in the service layer.

use axum::{
    extract::{Request, State},
    http::{HeaderValue, Method, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use subtle::ConstantTimeEq;

use crate::{error::ApiError, service::Caller, state::AppState};

/// The token of `Authorization: Bearer <token>`; the scheme is case-insensitive (RFC 9110).
fn bearer(request: &Request) -> Option<&str> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start_matches(' '))
        .filter(|token| !token.is_empty())
}

/// Resolves the bearer key to a [`Caller`] (in the request's extensions), or answers 401.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let caller = match bearer(&request) {
        Some(token) if bool::from(token.as_bytes().ct_eq(state.admin_key().as_bytes())) => {
            Some(Caller::Admin)
        }
        Some(token) if matches_any(token, state.directory_keys()) => {
            if !directory_scope(request.method(), request.uri().path()) {
                return ApiError::Forbidden.into_response();
            }
            Some(Caller::Directory)
        }
        Some(token) => match state.service.consumer_for_key(token).await {
            Ok(caller) => caller,
            Err(e) => return e.into_response(),
        },
        None => None,
    };
    let Some(caller) = caller else {
        let mut response = ApiError::Unauthorized.into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    };
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// Whether `token` is one of `keys`, in constant time per key.
fn matches_any(token: &str, keys: &[String]) -> bool {
    keys.iter()
        .any(|key| bool::from(token.as_bytes().ct_eq(key.as_bytes())))
}

/// What a directory key may do: read the directory and the event-type catalogue (ingest and
/// dispatchers load schemas from it), disable one subscription.
fn directory_scope(method: &Method, path: &str) -> bool {
    let disable = path
        .strip_prefix("/v1/subscriptions/")
        .and_then(|rest| rest.strip_suffix("/disable"))
        .is_some_and(|id| !id.is_empty() && !id.contains('/'));
    (method == Method::GET && (path == "/v1/directory" || path == "/v1/event-types"))
        || (method == Method::POST && disable)
}

/// Lets only the admin through (routes managing tenants, the dispatchers' directory); a
/// directory key reaches only the directory among these (its scope is checked on entry).
pub async fn require_admin(request: Request, next: Next) -> Response {
    match request.extensions().get::<Caller>() {
        Some(Caller::Admin | Caller::Directory) => next.run(request).await,
        _ => ApiError::Forbidden.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_key_reads_the_directory_and_disables_nothing_else() {
        assert!(directory_scope(&Method::GET, "/v1/directory"));
        assert!(directory_scope(&Method::GET, "/v1/event-types"));
        assert!(directory_scope(
            &Method::POST,
            "/v1/subscriptions/sub_1/disable"
        ));
        for (method, path) in [
            (Method::POST, "/v1/directory"),
            (Method::GET, "/v1/subscriptions/sub_1/disable"),
            (Method::POST, "/v1/subscriptions//disable"),
            (Method::POST, "/v1/subscriptions/a/b/disable"),
            (Method::GET, "/v1/subscriptions"),
            (Method::GET, "/v1/consumers"),
            (Method::POST, "/v1/subscriptions/sub_1/replay"),
            (Method::POST, "/v1/event-types"),
            (Method::DELETE, "/v1/event-types/order.created"),
        ] {
            assert!(!directory_scope(&method, path), "{method} {path}");
        }
    }
}
