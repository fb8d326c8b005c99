//! Who is calling: the admin (configured key, full access), a dispatcher (a directory key:
//! reads the directory and disables a subscription, nothing else) or a consumer (one of its
//! API keys, access to its own subscriptions, events, attempts and dead letters only).
//! Another tenant's resources answer 404, exactly as if they did not exist.

use axum::{
    extract::{Request, State},
    http::{HeaderValue, Method, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use subtle::ConstantTimeEq;

use crate::{error::ApiError, http::AppState, store::tenants::key_hash};

/// The authenticated caller, put in the request's extensions by [`authenticate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The admin key: everything.
    Admin,
    /// A directory key: `GET /v1/directory` and `POST /v1/subscriptions/{id}/disable` only
    /// (checked in [`authenticate`]), over every consumer's subscriptions.
    Directory,
    /// A consumer key: that consumer's resources only.
    Consumer(String),
}

impl Caller {
    /// The consumer this caller is restricted to; `None` for the admin.
    pub fn consumer(&self) -> Option<&str> {
        match self {
            Self::Admin | Self::Directory => None,
            Self::Consumer(c) => Some(c),
        }
    }

    /// Whether the caller may see a resource owned by `owner`.
    pub fn may_see(&self, owner: Option<&str>) -> bool {
        match self {
            Self::Admin | Self::Directory => true,
            Self::Consumer(c) => owner == Some(c.as_str()),
        }
    }
}

fn bearer(request: &Request) -> Option<&str> {
    request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// Resolves the bearer key to a [`Caller`], or answers 401.
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
        Some(token) if token.starts_with(KEY_PREFIX) => {
            match state.store.consumer_for_key(&key_hash(token)).await {
                Ok(consumer) => consumer.map(Caller::Consumer),
                Err(e) => return ApiError::from(e).into_response(),
            }
        }
        _ => None,
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

/// What a directory key may do: read the directory, disable one subscription.
fn directory_scope(method: &Method, path: &str) -> bool {
    let disable = path
        .strip_prefix("/v1/subscriptions/")
        .and_then(|rest| rest.strip_suffix("/disable"))
        .is_some_and(|id| !id.is_empty() && !id.contains('/'));
    (method == Method::GET && path == "/v1/directory") || (method == Method::POST && disable)
}

/// Lets only the admin through (routes managing tenants, the dispatchers' directory); a
/// directory key reaches only the directory among these (its scope is checked on entry).
pub async fn require_admin(request: Request, next: Next) -> Response {
    match request.extensions().get::<Caller>() {
        Some(Caller::Admin | Caller::Directory) => next.run(request).await,
        _ => ApiError::Forbidden.into_response(),
    }
}

/// Every consumer key starts with this.
pub const KEY_PREFIX: &str = "rk_";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_key_reads_the_directory_and_disables_nothing_else() {
        assert!(directory_scope(&Method::GET, "/v1/directory"));
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
        ] {
            assert!(!directory_scope(&method, path), "{method} {path}");
        }
    }
}
