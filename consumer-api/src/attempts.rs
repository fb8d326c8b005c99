//! `GET /v1/subscriptions/{id}/attempts`: the delivery log of one subscription — time,
//! attempt number, status code, latency, error and response excerpt — filterable by outcome.

use axum::{
    Extension, Json,
    extract::{Path, RawQuery, State, rejection::PathRejection},
};
use relay_shared::attempt::AttemptOutcome;
use serde::Serialize;

use crate::{
    auth::Caller,
    error::{ApiError, FieldError},
    http::{AppState, QueryParams, seq_cursor},
    store::records::{StoredAttempt, outcome_name},
    subscriptions::{owned, subscription_id},
};

/// Page size when `limit` is absent.
pub const DEFAULT_LIMIT: u32 = 100;
/// Largest `limit`.
pub const MAX_LIMIT: u32 = 1000;

/// One attempt.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AttemptView {
    /// Position in the log (a cursor).
    pub sequence: i64,
    /// The event.
    pub event_id: String,
    /// The subscription.
    pub subscription_id: String,
    /// 1 for the first try.
    pub attempt: u32,
    /// When it started, RFC 3339.
    pub at: String,
    /// `success`, `retry_scheduled`, `dead`, `circuit_open`, `deferred` or `disabled`.
    pub outcome: String,
    /// HTTP status, when the endpoint answered.
    pub status: Option<u16>,
    /// Duration in milliseconds.
    pub latency_ms: u64,
    /// The failure, when it failed.
    pub error: Option<String>,
    /// Start of the response body.
    pub response_excerpt: Option<String>,
    /// When the next try is due, RFC 3339.
    pub next_attempt_at: Option<String>,
}

impl From<StoredAttempt> for AttemptView {
    fn from(a: StoredAttempt) -> Self {
        let r = a.record;
        Self {
            sequence: a.seq,
            event_id: r.event_id,
            subscription_id: r.subscription_id,
            attempt: r.attempt,
            at: r.at,
            outcome: outcome_name(r.outcome),
            status: r.status,
            latency_ms: r.latency_ms,
            error: r.error,
            response_excerpt: r.response_excerpt,
            next_attempt_at: r.next_attempt_at,
        }
    }
}

/// Body of `GET /v1/subscriptions/{id}/attempts`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AttemptList {
    /// Attempts in order.
    pub data: Vec<AttemptView>,
    /// Pass as `after` for the next page; `null` on the last one.
    pub next_cursor: Option<String>,
}

/// `GET /v1/subscriptions/{id}/attempts?outcome=&after=&limit=`.
///
/// # Errors
/// A problem for a bad parameter, 404, or a store failure.
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Json<AttemptList>, ApiError> {
    let id = subscription_id(path)?;
    owned(&state, &caller, &id).await?;
    let mut params = QueryParams::parse(query.as_deref(), &["outcome", "after", "limit"])?;
    let limit = params.limit(DEFAULT_LIMIT, MAX_LIMIT)?;
    let after = seq_cursor(params.take("after"))?;
    let outcome = params
        .take("outcome")
        .map(|o| {
            serde_json::from_value::<AttemptOutcome>(serde_json::Value::String(o)).map_err(|_| {
                FieldError::new(
                    "outcome",
                    "outcome must be one of success, retry_scheduled, dead, circuit_open, deferred, disabled",
                )
            })
        })
        .transpose()?;
    let mut rows = state.store.attempts(&id, outcome, after, limit + 1).await?;
    let next_cursor = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|a| a.seq.to_string())
    } else {
        None
    };
    Ok(Json(AttemptList {
        data: rows.into_iter().map(AttemptView::from).collect(),
        next_cursor,
    }))
}
