//! Targeted deliveries to one subscription: `POST /v1/subscriptions/{id}/replay` re-sends a
//! window of recorded events, `POST /v1/subscriptions/{id}/test` sends a `relay.ping`.

use axum::{Json, extract::State, http::StatusCode};
use serde::Serialize;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    error::ApiError,
    extract::JsonBody,
    service::{Service, replay::ReplayRequest, subscriptions::OwnedSubscription},
    state::AppState,
};

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

/// Replay a window
///
/// Re-sends the recorded events of the window that this subscription matches, to it only.
#[utoipa::path(
    post,
    path = "/v1/subscriptions/{id}/replay",
    tag = "subscriptions",
    params(OwnedSubscription),
    request_body = ReplayRequest,
    responses((status = 202, description = "Re-sent", body = ReplayResult)),
    security(("admin_key" = []), ("consumer_key" = [])),
)]
async fn replay(
    State(service): State<Service>,
    subscription: OwnedSubscription,
    JsonBody(request): JsonBody<ReplayRequest>,
) -> Result<(StatusCode, Json<ReplayResult>), ApiError> {
    let replayed = service.replay(&subscription, &request).await?;
    Ok((StatusCode::ACCEPTED, Json(ReplayResult { replayed })))
}

/// Send a test event
///
/// A `relay.ping` event (fresh id) to this subscription only.
#[utoipa::path(
    post,
    path = "/v1/subscriptions/{id}/test",
    tag = "subscriptions",
    params(OwnedSubscription),
    responses((status = 202, description = "Sent", body = TestResult)),
    security(("admin_key" = []), ("consumer_key" = [])),
)]
async fn send_test(
    State(service): State<Service>,
    subscription: OwnedSubscription,
) -> Result<(StatusCode, Json<TestResult>), ApiError> {
    let event_id = service.ping(&subscription).await?;
    Ok((StatusCode::ACCEPTED, Json(TestResult { event_id })))
}

/// The routes of this resource.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(replay))
        .routes(routes!(send_test))
}
