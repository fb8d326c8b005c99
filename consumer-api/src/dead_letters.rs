//! `/v1/dead-letters`: deliveries that ran out of attempts, and their redrive — the same
//! message put back on a fresh retry schedule for its subscription. A redriven dead letter
//! stays listed (with `redriven_at`) as history; if it dies again, a new one is recorded.

use axum::{
    Extension, Json,
    body::Body,
    extract::{RawQuery, State},
    http::{HeaderMap, StatusCode},
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    auth::Caller,
    error::{ApiError, FieldError},
    http::{AppState, QueryParams, json_body, seq_cursor},
    store::{StoreError, records::DeadLetter},
    subscriptions::{now, owned},
};

/// Page size when `limit` is absent.
pub const DEFAULT_LIMIT: u32 = 100;
/// Largest `limit`.
pub const MAX_LIMIT: u32 = 1000;
/// Most ids in one redrive by ids.
pub const MAX_IDS: usize = 100;
/// Most dead letters redriven by one request by subscription.
pub const MAX_REDRIVE: usize = 10_000;

/// A dead letter.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeadLetterView {
    /// `dl_…`
    pub id: String,
    /// Position in the list (a cursor).
    pub sequence: i64,
    /// The event.
    pub event_id: String,
    /// The subscription.
    pub subscription_id: String,
    /// Attempts made.
    pub attempts: i64,
    /// The last error.
    pub last_error: Option<String>,
    /// The last HTTP status.
    pub last_status: Option<i64>,
    /// When it was dead-lettered, RFC 3339.
    pub dead_at: String,
    /// When it was last redriven, RFC 3339.
    pub redriven_at: Option<String>,
    /// The event envelope.
    #[schema(value_type = Object)]
    pub event: Value,
}

impl From<DeadLetter> for DeadLetterView {
    fn from(d: DeadLetter) -> Self {
        Self {
            event: serde_json::from_str(&d.letter.body).unwrap_or(Value::Null),
            id: d.letter.id,
            sequence: d.seq,
            event_id: d.letter.event_id,
            subscription_id: d.letter.subscription_id,
            attempts: d.letter.attempts,
            last_error: d.letter.last_error,
            last_status: d.letter.last_status,
            dead_at: d.letter.dead_at,
            redriven_at: d.redriven_at,
        }
    }
}

/// Body of `GET /v1/dead-letters`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeadLetterList {
    /// Dead letters in order.
    pub data: Vec<DeadLetterView>,
    /// Pass as `after` for the next page; `null` on the last one.
    pub next_cursor: Option<String>,
}

/// Body of `POST /v1/dead-letters/redrive`: `ids` or `subscription_id` (its dead letters not
/// redriven yet).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedriveRequest {
    /// Dead letters to redrive (at most 100).
    #[serde(default)]
    pub ids: Option<Vec<String>>,
    /// Redrive every pending dead letter of this subscription.
    #[serde(default)]
    pub subscription_id: Option<String>,
}

/// Answer of a redrive.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RedriveResult {
    /// How many were put back on the schedule.
    pub redriven: usize,
}

/// `GET /v1/dead-letters?subscription_id=&after=&limit=`.
///
/// # Errors
/// A problem for a bad parameter or a store failure.
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Result<Json<DeadLetterList>, ApiError> {
    let mut params = QueryParams::parse(query.as_deref(), &["subscription_id", "after", "limit"])?;
    let limit = params.limit(DEFAULT_LIMIT, MAX_LIMIT)?;
    let after = seq_cursor(params.take("after"))?;
    let subscription_id = params.take("subscription_id");
    let mut rows = state
        .store
        .dead_letters(
            subscription_id.as_deref(),
            caller.consumer(),
            after,
            limit + 1,
        )
        .await?;
    let next_cursor = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|d| d.seq.to_string())
    } else {
        None
    };
    Ok(Json(DeadLetterList {
        data: rows.into_iter().map(DeadLetterView::from).collect(),
        next_cursor,
    }))
}

async fn redrive_one(state: &AppState, letter: &DeadLetter) -> Result<(), ApiError> {
    state
        .publisher
        .redeliver(
            letter.letter.body.as_bytes(),
            &letter.letter.subscription_id,
            &letter.letter.event_id,
        )
        .await?;
    state.store.mark_redriven(&letter.letter.id, &now()).await?;
    tracing::info!(
        dead_letter_id = %letter.letter.id,
        subscription_id = %letter.letter.subscription_id,
        event_id = %letter.letter.event_id,
        "dead letter redriven"
    );
    Ok(())
}

/// `POST /v1/dead-letters/redrive` → 202 with the count.
///
/// # Errors
/// A problem for a bad body, 404 for an id the caller may not see, 503 when the broker does
/// not take them (those already sent stay redriven), or a store failure.
pub async fn redrive(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<RedriveResult>), ApiError> {
    let request = json_body::<RedriveRequest>(&headers, body).await?;
    let mut redriven = 0;
    match (request.ids, request.subscription_id) {
        (Some(ids), None) => {
            if ids.is_empty() || ids.len() > MAX_IDS {
                return Err(FieldError::new("ids", "ids must list 1 to 100 dead letters").into());
            }
            let mut letters = Vec::with_capacity(ids.len());
            for id in &ids {
                let letter = state.store.dead_letter(id).await?;
                // The subscription must still exist and belong to the caller.
                owned(&state, &caller, &letter.letter.subscription_id)
                    .await
                    .map_err(|_| ApiError::Store(StoreError::Missing("dead letter")))?;
                letters.push(letter);
            }
            for letter in &letters {
                redrive_one(&state, letter).await?;
                redriven += 1;
            }
        }
        (None, Some(subscription_id)) => {
            owned(&state, &caller, &subscription_id).await?;
            while redriven < MAX_REDRIVE {
                let batch = state
                    .store
                    .pending_dead_letters(&subscription_id, 500)
                    .await?;
                if batch.is_empty() {
                    break;
                }
                for letter in &batch {
                    redrive_one(&state, letter).await?;
                    redriven += 1;
                }
            }
        }
        _ => {
            return Err(
                FieldError::new("ids", "give either ids or subscription_id (exactly one)").into(),
            );
        }
    }
    Ok((StatusCode::ACCEPTED, Json(RedriveResult { redriven })))
}
