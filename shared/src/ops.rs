//! The operational routes every process serves: `/metrics`, `/healthz` and `/readyz`.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use prometheus::{Encoder, Registry, TextEncoder};

/// Named readiness conditions (broker connected, store reachable, directory loaded…).
/// A process is ready when every registered condition is met.
///
/// Warnings are shown by `/readyz` beside the status without changing it: conditions that
/// need an operator but that the process itself cannot fix or be replaced for (a broker
/// holding retries it does not forward), so that every replica does not go unready at once.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<Mutex<Conditions>>);

#[derive(Debug, Default)]
struct Conditions {
    conditions: BTreeMap<&'static str, Option<String>>,
    warnings: BTreeMap<String, String>,
}

impl Readiness {
    /// Registers `name` as not yet ready, with `reason`.
    pub fn not_ready(&self, name: &'static str, reason: impl Into<String>) {
        self.lock().conditions.insert(name, Some(reason.into()));
    }

    /// Marks `name` ready.
    pub fn ready(&self, name: &'static str) {
        self.lock().conditions.insert(name, None);
    }

    /// Shows the warning `name: reason` on `/readyz` until [`Readiness::clear_warning`].
    pub fn warn(&self, name: &str, reason: impl Into<String>) {
        self.lock().warnings.insert(name.to_owned(), reason.into());
    }

    /// Removes the warning `name`, if shown.
    pub fn clear_warning(&self, name: &str) {
        self.lock().warnings.remove(name);
    }

    /// Every warning shown, as `name: reason`.
    pub fn warnings(&self) -> Vec<String> {
        self.lock()
            .warnings
            .iter()
            .map(|(name, reason)| format!("{name}: {reason}"))
            .collect()
    }

    /// `Ok` when ready, else the reasons.
    ///
    /// # Errors
    /// The reasons of every unmet condition, as `name: reason`.
    pub fn check(&self) -> Result<(), Vec<String>> {
        let reasons: Vec<String> = self
            .lock()
            .conditions
            .iter()
            .filter_map(|(name, reason)| reason.as_ref().map(|r| format!("{name}: {r}")))
            .collect();
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Conditions> {
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
    let (status, mut body) = match state.readiness.check() {
        Ok(()) => (StatusCode::OK, serde_json::json!({"status": "ready"})),
        Err(reasons) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "not ready", "reasons": reasons}),
        ),
    };
    let warnings = state.readiness.warnings();
    if !warnings.is_empty() {
        body["warnings"] = warnings.into();
    }
    (status, Json(body))
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

    #[test]
    fn warnings_are_shown_without_changing_readiness() {
        let r = Readiness::default();
        r.warn("retry.5s", "held");
        assert!(r.check().is_ok());
        assert_eq!(r.warnings(), ["retry.5s: held"]);
        r.clear_warning("retry.5s");
        assert!(r.warnings().is_empty());
    }
}
