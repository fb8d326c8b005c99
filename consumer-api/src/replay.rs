//! Targeted deliveries to one subscription: `POST /v1/subscriptions/{id}/replay` re-sends
//! the recorded events of a time window that the subscription matches (its filters and the
//! consumer rule), and `POST /v1/subscriptions/{id}/test` sends it a `relay.ping`. Both go
//! through the `retry-ready` exchange, so dispatchers deliver them to that subscription only,
//! signed and with the full retry schedule.

use axum::{
    Extension, Json,
    body::Body,
    extract::{Path, State, rejection::PathRejection},
    http::{HeaderMap, StatusCode},
};
use relay_shared::{envelope::Envelope, filter::TopicFilter, ids::new_id};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{
    auth::Caller,
    error::{ApiError, FieldError},
    events::matches_any,
    http::{AppState, json_body},
    store::{now_ms, records::EventScope, records::rfc3339_ms},
    subscriptions::{now, owned, subscription_id},
};

/// Type of the test event.
pub const PING_TYPE: &str = "relay.ping";

/// Body of `POST /v1/subscriptions/{id}/replay`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Start of the window (inclusive), RFC 3339, on the acceptance time.
    pub since: String,
    /// End of the window (exclusive), RFC 3339; now when absent.
    #[serde(default)]
    pub until: Option<String>,
}

/// Answer of a replay.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReplayResult {
    /// Events re-sent.
    pub replayed: u64,
}

/// Answer of a test.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TestResult {
    /// The id of the `relay.ping` event sent.
    pub event_id: String,
}

/// `POST /v1/subscriptions/{id}/replay` → 202 with the number of events re-sent.
///
/// # Errors
/// A problem for a bad body, 404, 503 when the broker does not take them, or a store failure.
pub async fn replay(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<ReplayResult>), ApiError> {
    let id = subscription_id(path)?;
    let subscription = owned(&state, &caller, &id).await?;
    let request = json_body::<ReplayRequest>(&headers, body).await?;
    let since = rfc3339_ms(&request.since)
        .ok_or_else(|| FieldError::new("since", "since must be an RFC 3339 time"))?;
    let until = match &request.until {
        None => now_ms() + 1,
        Some(until) => rfc3339_ms(until)
            .ok_or_else(|| FieldError::new("until", "until must be an RFC 3339 time"))?,
    };
    if until <= since {
        return Err(FieldError::new("until", "until must be after since").into());
    }
    let filters: Vec<TopicFilter> = subscription
        .event_types
        .iter()
        .filter_map(|f| TopicFilter::parse(f).ok())
        .collect();
    let scope = subscription
        .consumer
        .as_deref()
        .map_or(EventScope::Unnamed, EventScope::ConsumerOrUnnamed);
    let mut cursor = 0;
    let mut replayed = 0;
    loop {
        let rows = state
            .store
            .events_in_window(cursor, scope, (since, until), 500)
            .await?;
        for row in &rows {
            cursor = row.seq;
            if matches_any(&filters, &row.event.event_type) {
                state
                    .publisher
                    .redeliver(row.event.body.as_bytes(), &id, &row.event.id)
                    .await?;
                replayed += 1;
            }
        }
        if rows.len() < 500 {
            break;
        }
    }
    tracing::info!(subscription_id = %id, replayed, "events replayed");
    Ok((StatusCode::ACCEPTED, Json(ReplayResult { replayed })))
}

/// `POST /v1/subscriptions/{id}/test` → 202: a `relay.ping` event (fresh id) to that
/// subscription only.
///
/// # Errors
/// 404, 503 when the broker does not take it, or a store failure.
pub async fn test(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> Result<(StatusCode, Json<TestResult>), ApiError> {
    let id = subscription_id(path)?;
    let subscription = owned(&state, &caller, &id).await?;
    let data = serde_json::json!({ "subscription_id": id }).to_string();
    let envelope = Envelope {
        id: new_id("evt"),
        event_type: PING_TYPE.to_owned(),
        occurred_at: now(),
        consumer: subscription.consumer,
        data: RawValue::from_string(data).map_err(|e| ApiError::Broker(e.to_string()))?,
    };
    state
        .publisher
        .redeliver(&envelope.to_json(), &id, &envelope.id)
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(TestResult {
            event_id: envelope.id,
        }),
    ))
}
