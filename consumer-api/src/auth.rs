//! Who is calling: the admin (configured key, full access) or a consumer (one of its API
//! keys, access to its own subscriptions, events, attempts and dead letters only). Another
//! tenant's resources answer 404, exactly as if they did not exist.

use axum::{
    extract::{Request, State},
    http::{HeaderValue, header},
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
    /// A consumer key: that consumer's resources only.
    Consumer(String),
}

impl Caller {
    /// The consumer this caller is restricted to; `None` for the admin.
    pub fn consumer(&self) -> Option<&str> {
        match self {
            Self::Admin => None,
            Self::Consumer(c) => Some(c),
        }
    }

    /// Whether the caller may see a resource owned by `owner`.
    pub fn may_see(&self, owner: Option<&str>) -> bool {
        match self {
            Self::Admin => true,
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

/// Lets only the admin through (routes managing tenants, the dispatchers' directory).
pub async fn require_admin(request: Request, next: Next) -> Response {
    match request.extensions().get::<Caller>() {
        Some(Caller::Admin) => next.run(request).await,
        _ => ApiError::Forbidden.into_response(),
    }
}

/// Every consumer key starts with this.
pub const KEY_PREFIX: &str = "rk_";
