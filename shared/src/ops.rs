//! The operational routes every process serves: `/metrics`, `/healthz` and `/readyz`.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use prometheus::{Encoder, Registry, TextEncoder};

/// Named readiness conditions (broker connected, store reachable, directory loaded…).
/// A process is ready when every registered condition is met.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<Mutex<BTreeMap<&'static str, Option<String>>>>);

impl Readiness {
    /// Registers `name` as not yet ready, with `reason`.
    pub fn not_ready(&self, name: &'static str, reason: impl Into<String>) {
        self.lock().insert(name, Some(reason.into()));
    }

    /// Marks `name` ready.
    pub fn ready(&self, name: &'static str) {
        self.lock().insert(name, None);
    }

    /// `Ok` when ready, else the reasons.
    ///
    /// # Errors
    /// The reasons of every unmet condition, as `name: reason`.
    pub fn check(&self) -> Result<(), Vec<String>> {
        let reasons: Vec<String> = self
            .lock()
            .iter()
            .filter_map(|(name, reason)| reason.as_ref().map(|r| format!("{name}: {r}")))
            .collect();
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, Option<String>>> {
        // A poisoned map is still a valid map; readiness must keep answering.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[derive(Clone)]
struct OpsState {
    registry: Registry,
    readiness: Readiness,
}

/// Routes for `/metrics`, `/healthz` and `/readyz`, to merge into a process's router.
pub fn router(registry: Registry, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/readyz", get(readyz))
        .with_state(OpsState {
            registry,
            readiness,
        })
}

async fn metrics(State(state): State<OpsState>) -> impl IntoResponse {
    let mut body = Vec::with_capacity(8192);
    match TextEncoder::new().encode(&state.registry.gather(), &mut body) {
        Ok(()) => (
            StatusCode::OK,
            [(axum::http::header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn readyz(State(state): State<OpsState>) -> impl IntoResponse {
    match state.readiness.check() {
        Ok(()) => (StatusCode::OK, Json(serde_json::json!({"status": "ready"}))),
        Err(reasons) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "not ready", "reasons": reasons})),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_condition_is_met() {
        let r = Readiness::default();
        assert!(r.check().is_ok());
        r.not_ready("broker", "connecting");
        assert_eq!(r.check().unwrap_err(), ["broker: connecting"]);
        r.ready("broker");
        assert!(r.check().is_ok());
    }
}
