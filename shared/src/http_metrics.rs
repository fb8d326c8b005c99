//! HTTP request metrics for any axum router: `relay_http_requests_total{route,status}` and
//! `relay_http_request_duration_seconds{route}`.
//!
//! `route` is the route *pattern* that matched (`/v1/subscriptions/{id}`), never the path a
//! client sent, and `unmatched` for requests no route took; `status` is the numeric status.
//! Both label sets are therefore bounded by the code, whatever clients send.

use std::time::Instant;

use axum::{
    Router,
    extract::{MatchedPath, Request, State},
    middleware::{self, Next},
    response::Response,
};
use prometheus::{HistogramVec, IntCounterVec, Registry};

use crate::metrics::{FAST_SECONDS, counter_vec, histogram_vec};

/// Route label of requests that matched no route (fallbacks).
pub const UNMATCHED: &str = "unmatched";

/// The two HTTP metrics, registered on a process's registry.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl HttpMetrics {
    /// Registers the metrics on `registry`.
    ///
    /// # Errors
    /// They are already registered there.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            requests: counter_vec(
                registry,
                "relay_http_requests_total",
                "HTTP requests served, by matched route pattern and status code.",
                &["route", "status"],
            )?,
            duration: histogram_vec(
                registry,
                "relay_http_request_duration_seconds",
                "Time to produce the response head, by matched route pattern.",
                &["route"],
                FAST_SECONDS,
            )?,
        })
    }

    /// `router` with every request counted and timed. Call it on the finished router (after
    /// every route and merge): the layer wraps the routes present at the time.
    pub fn instrument(&self, router: Router) -> Router {
        router.layer(middleware::from_fn_with_state(self.clone(), track))
    }

    fn record(&self, route: &str, status: u16, seconds: f64) {
        self.requests
            .with_label_values(&[route, &status.to_string()])
            .inc();
        self.duration.with_label_values(&[route]).observe(seconds);
    }
}

async fn track(State(metrics): State<HttpMetrics>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| UNMATCHED.to_owned(), |p| p.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    metrics.record(
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

#[cfg(test)]
mod tests {
    use axum::{body::Body, http::StatusCode, routing::get};
    use prometheus::{Encoder, TextEncoder};
    use tower::ServiceExt as _;

    use super::*;

    #[tokio::test]
    async fn labels_are_route_patterns_and_statuses() {
        let registry = Registry::new();
        let metrics = HttpMetrics::register(&registry).unwrap();
        let app = metrics.instrument(
            Router::new()
                .route("/items/{id}", get(|| async { "ok" }))
                .route("/fail", get(|| async { StatusCode::BAD_GATEWAY })),
        );
        for uri in ["/items/1", "/items/2", "/fail", "/nowhere/secret-path"] {
            let request = axum::http::Request::get(uri).body(Body::empty()).unwrap();
            app.clone().oneshot(request).await.unwrap();
        }
        let mut text = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut text)
            .unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains(r#"relay_http_requests_total{route="/items/{id}",status="200"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"relay_http_requests_total{route="/fail",status="502"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"relay_http_requests_total{route="unmatched",status="404"} 1"#),
            "{text}"
        );
        assert!(!text.contains("secret-path"), "{text}");
        assert!(
            text.contains(r#"relay_http_request_duration_seconds_count{route="/items/{id}"} 2"#),
            "{text}"
        );
    }
}
