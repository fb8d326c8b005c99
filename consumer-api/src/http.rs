//! The HTTP surface: routes, admin authentication, request-body and query-string reading,
//! fallbacks for unknown routes and methods, and request metrics. Every rejection is a
//! problem response, so the body is read by hand rather than through axum's extractors.

use std::{collections::HashMap, sync::Arc, time::Instant};

use axum::{
    Router,
    body::Body,
    extract::{MatchedPath, Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use relay_shared::{
    envelope::parse_json,
    problem::{Problem, bearer_matches, is_json, read_body},
};
use serde::de::DeserializeOwned;

use crate::{
    control::ControlPublisher,
    directory,
    error::{ApiError, FieldError},
    metrics::ApiMetrics,
    store::Store,
    subscriptions,
};

/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What every `/v1` handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The subscription store.
    pub store: Store,
    /// Change notifications to dispatchers.
    pub control: ControlPublisher,
    /// The bearer key every `/v1` route requires.
    admin_key: Arc<str>,
}

impl AppState {
    /// State for the `/v1` routes.
    pub fn new(store: Store, control: ControlPublisher, admin_key: &str) -> Self {
        Self {
            store,
            control,
            admin_key: admin_key.into(),
        }
    }
}

/// The whole application: `/v1` routes behind the admin key, `ops` (`/metrics`, `/healthz`,
/// `/readyz`) open, and problem responses for unknown routes and methods.
pub fn router(state: AppState, ops: Router, metrics: ApiMetrics) -> Router {
    let v1 = Router::new()
        .route(
            "/v1/subscriptions",
            get(subscriptions::list).post(subscriptions::create),
        )
        .route(
            "/v1/subscriptions/{id}",
            get(subscriptions::get)
                .patch(subscriptions::update)
                .delete(subscriptions::delete),
        )
        .route("/v1/subscriptions/{id}/secret", get(subscriptions::secret))
        .route("/v1/directory", get(directory::page))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_admin_key,
        ))
        .with_state(state);
    v1.merge(ops)
        // Set after every route is added: it applies to the routes present at the time.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(metrics, record_request))
}

async fn require_admin_key(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if bearer_matches(request.headers(), [state.admin_key.as_ref()]) {
        return next.run(request).await;
    }
    let mut response = ApiError::Unauthorized.into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

async fn not_found() -> Problem {
    Problem::not_found("route")
}

async fn method_not_allowed(method: Method) -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        format!("{method} is not allowed on this route"),
    )
}

async fn record_request(
    State(metrics): State<ApiMetrics>,
    request: Request,
    next: Next,
) -> Response {
    // The matched route template, not the path, keeps label values bounded.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let method = match *request.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let started = Instant::now();
    let response = next.run(request).await;
    metrics
        .http_requests
        .with_label_values(&[method, route.as_str(), response.status().as_str()])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Reads a JSON body of at most [`MAX_BODY_BYTES`] into `T`.
///
/// # Errors
/// 415 when not declared as JSON, 413 when too large, 400 when malformed or of the wrong shape.
pub async fn json_body<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ApiError> {
    if !is_json(headers) {
        return Err(Problem::unsupported_media_type().into());
    }
    let bytes = read_body(body, MAX_BODY_BYTES).await?;
    Ok(parse_json::<T>(&bytes)?)
}

/// Query-string parameters, each allowed name at most once.
#[derive(Debug, Default)]
pub struct QueryParams(HashMap<String, String>);

impl QueryParams {
    /// Parses `raw`, refusing names not in `allowed` (a typo should not silently be ignored)
    /// and repeated names. Empty values count as absent.
    ///
    /// # Errors
    /// A [`FieldError`] naming the parameter.
    pub fn parse(raw: Option<&str>, allowed: &[&str]) -> Result<Self, FieldError> {
        let mut params = HashMap::new();
        for (name, value) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            if !allowed.contains(&name.as_ref()) {
                return Err(FieldError::new(
                    name.as_ref(),
                    format!(
                        "unknown query parameter; expected one of {}",
                        allowed.join(", ")
                    ),
                ));
            }
            if params.insert(name.to_string(), value.to_string()).is_some() {
                return Err(FieldError::new(
                    name.as_ref(),
                    "query parameter given more than once",
                ));
            }
        }
        params.retain(|_, value| !value.is_empty());
        Ok(Self(params))
    }

    /// The value of `name`, if given.
    pub fn take(&mut self, name: &str) -> Option<String> {
        self.0.remove(name)
    }

    /// `limit`: `default` when absent, else an integer in `1..=max`.
    ///
    /// # Errors
    /// A [`FieldError`] on `limit`.
    pub fn limit(&mut self, default: u32, max: u32) -> Result<u32, FieldError> {
        let Some(raw) = self.take("limit") else {
            return Ok(default);
        };
        match raw.parse::<u32>() {
            Ok(limit) if (1..=max).contains(&limit) => Ok(limit),
            _ => Err(FieldError::new(
                "limit",
                format!("limit must be an integer from 1 to {max}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_checked() {
        let mut q = QueryParams::parse(
            Some("limit=10&after=sub_1&consumer="),
            &["limit", "after", "consumer"],
        )
        .unwrap();
        assert_eq!(q.limit(50, 500).unwrap(), 10);
        assert_eq!(q.take("after").as_deref(), Some("sub_1"));
        assert_eq!(q.take("consumer"), None);

        let mut q = QueryParams::parse(None, &["limit"]).unwrap();
        assert_eq!(q.limit(50, 500).unwrap(), 50);

        for bad in ["limit=0", "limit=501", "limit=ten", "limit=-1"] {
            let mut q = QueryParams::parse(Some(bad), &["limit"]).unwrap();
            assert_eq!(q.limit(50, 500).unwrap_err().field, "limit", "{bad}");
        }
        assert_eq!(
            QueryParams::parse(Some("limt=5"), &["limit"])
                .unwrap_err()
                .field,
            "limt"
        );
        assert_eq!(
            QueryParams::parse(Some("limit=5&limit=6"), &["limit"])
                .unwrap_err()
                .field,
            "limit"
        );
    }
}
