//! The HTTP surface: routes, authentication ([`crate::auth`]), request-body and query-string reading,
//! fallbacks for unknown routes and methods, and request metrics. Every rejection is a
//! problem response, so the body is read by hand rather than through axum's extractors.

use std::{collections::HashMap, sync::Arc, time::Duration, time::Instant};

use axum::{
    Router,
    body::Body,
    extract::{MatchedPath, Request, State},
    http::{HeaderMap, Method, StatusCode},
    middleware::{self, Next},
    response::Response,
    routing::{delete, get, post},
};
use relay_shared::{
    envelope::parse_json,
    problem::{Problem, is_json, read_body},
    ssrf::NetworkPolicy,
};
use serde::de::DeserializeOwned;

use crate::{
    ApiSettings, attempts, auth,
    control::ControlPublisher,
    dead_letters, directory,
    error::{ApiError, FieldError},
    events,
    metrics::ApiMetrics,
    openapi,
    publisher::Publisher,
    replay,
    store::Store,
    subscriptions, tenants,
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
    /// Redeliveries and operational events.
    pub publisher: Publisher,
    /// Which destinations subscriptions may have.
    pub policy: Arc<NetworkPolicy>,
    /// Default grace period of a secret rotation.
    pub rotation_grace: Duration,
    /// The admin bearer key.
    admin_key: Arc<str>,
    /// The dispatchers' directory keys.
    directory_keys: Arc<[String]>,
}

impl AppState {
    /// State for the `/v1` routes.
    pub fn new(
        store: Store,
        control: ControlPublisher,
        publisher: Publisher,
        policy: NetworkPolicy,
        api: &ApiSettings,
    ) -> Self {
        Self {
            store,
            control,
            publisher,
            policy: Arc::new(policy),
            rotation_grace: api.rotation_grace,
            admin_key: api.admin_key.as_str().into(),
            directory_keys: api.directory_keys.clone().into(),
        }
    }

    /// The admin bearer key.
    pub fn admin_key(&self) -> &str {
        &self.admin_key
    }

    /// The dispatchers' directory keys.
    pub fn directory_keys(&self) -> &[String] {
        &self.directory_keys
    }
}

/// The whole application: `/v1` routes behind an API key (tenant management and the
/// directory behind the admin key), `/openapi.json` and `ops` (`/metrics`, `/healthz`,
/// `/readyz`) open, and problem responses for unknown routes and methods.
pub fn router(state: AppState, ops: Router, metrics: ApiMetrics) -> Router {
    let admin = Router::new()
        .route("/v1/consumers", get(tenants::list).post(tenants::create))
        .route(
            "/v1/consumers/{id}",
            get(tenants::get).delete(tenants::delete),
        )
        .route(
            "/v1/consumers/{id}/keys",
            get(tenants::list_keys).post(tenants::create_key),
        )
        .route(
            "/v1/consumers/{id}/keys/{key_id}",
            delete(tenants::delete_key),
        )
        .route("/v1/directory", get(directory::page))
        .route_layer(middleware::from_fn(auth::require_admin));
    let tenant = Router::new()
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
        .route(
            "/v1/subscriptions/{id}/disable",
            post(subscriptions::disable),
        )
        .route(
            "/v1/subscriptions/{id}/rotate-secret",
            post(subscriptions::rotate_secret),
        )
        .route("/v1/subscriptions/{id}/test", post(replay::test))
        .route("/v1/subscriptions/{id}/replay", post(replay::replay))
        .route("/v1/subscriptions/{id}/attempts", get(attempts::list))
        .route("/v1/events", get(events::list))
        .route("/v1/events/{id}", get(events::get))
        .route("/v1/dead-letters", get(dead_letters::list))
        .route("/v1/dead-letters/redrive", post(dead_letters::redrive));
    let v1 = admin
        .merge(tenant)
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .with_state(state);
    v1.route("/openapi.json", get(openapi::serve))
        .merge(ops)
        // Set after every route is added: it applies to the routes present at the time.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(metrics, record_request))
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

/// Reads an optional JSON body: an empty body gives `T::default()`, anything else is read
/// as by [`json_body`].
///
/// # Errors
/// As [`json_body`].
pub async fn optional_json_body<T: DeserializeOwned + Default>(
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ApiError> {
    let bytes = read_body(body, MAX_BODY_BYTES).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    if !is_json(headers) {
        return Err(Problem::unsupported_media_type().into());
    }
    Ok(parse_json::<T>(&bytes)?)
}

/// Parses a numeric cursor (`after`): absent is the start.
///
/// # Errors
/// A [`FieldError`] on `after`.
pub fn seq_cursor(raw: Option<String>) -> Result<i64, FieldError> {
    match raw {
        None => Ok(0),
        Some(raw) => raw.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            FieldError::new("after", "after must be a cursor returned as next_cursor")
        }),
    }
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
