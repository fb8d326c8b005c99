//! Targeted deliveries to one subscription: `POST /v1/subscriptions/{id}/replay` starts a
//! replay job (a window of recorded events re-sent in the background) that
//! `GET /v1/replays/{id}` follows; `POST /v1/subscriptions/{id}/test` sends a `relay.ping`.

use axum::{
    Json,
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    clock::ms_rfc3339,
    error::ApiError,
    extract::{JsonBody, ReplayId},
    openapi::ProblemDoc,
    service::{Caller, Service, replay::ReplayRequest, subscriptions::OwnedSubscription},
    state::AppState,
    store::replays::{ReplayJob, ReplayState},
};

/// A replay job.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReplayView {
    /// `rpl_…`
    pub id: String,
    /// The subscription it re-sends to.
    pub subscription_id: String,
    /// `queued`, `running`, then `done` or `failed`.
    pub state: ReplayState,
    /// Start of the window (inclusive), RFC 3339.
    pub since: String,
    /// End of the window (exclusive), RFC 3339.
    pub until: String,
    /// Events of the window the subscription matches; `null` until counted.
    pub total: Option<i64>,
    /// Events re-sent so far, each confirmed by the broker; equals `total` when `done`
    /// (unless events were pruned past the retention meanwhile).
    pub published: i64,
    /// Why it failed.
    pub reason: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339, of the last progress.
    pub updated_at: String,
    /// RFC 3339, when it ended.
    pub finished_at: Option<String>,
}

impl From<ReplayJob> for ReplayView {
    fn from(job: ReplayJob) -> Self {
        Self {
            since: ms_rfc3339(job.since_ms),
            until: ms_rfc3339(job.until_ms),
            id: job.id,
            subscription_id: job.subscription_id,
            state: job.state,
            total: job.total,
            published: job.published,
            reason: job.reason,
            created_at: job.created_at,
            updated_at: job.updated_at,
            finished_at: job.finished_at,
        }
    }
}

/// Replay a window
///
/// Starts a job that re-sends the recorded events of the window that this subscription
/// matches, to it only, and answers at once; follow it at `Location` (`GET /v1/replays/{id}`).
/// One job per subscription at a time.
#[utoipa::path(
    post,
    path = "/v1/subscriptions/{id}/replay",
    tag = "subscriptions",
    params(OwnedSubscription),
    request_body = ReplayRequest,
    responses(
        (status = 202, description = "Queued", body = ReplayView,
         headers(("location" = String, description = "`/v1/replays/{id}` of the job"))),
        (status = 409, description = "A replay of this subscription has not ended (`replay-running`, its id in `replay_id`)",
         body = ProblemDoc, content_type = "application/problem+json"),
        (status = 422, description = "`until` is not after `since` (`invalid-field`)",
         body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("admin_key" = []), ("consumer_key" = [])),
)]
async fn replay(
    State(service): State<Service>,
    subscription: OwnedSubscription,
    JsonBody(request): JsonBody<ReplayRequest>,
) -> Result<Response, ApiError> {
    let job = service.start_replay(&subscription, &request).await?;
    let location = HeaderValue::from_str(&format!("/v1/replays/{}", job.id))
        .map_err(|e| ApiError::Broker(e.to_string()))?;
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(ReplayView::from(job)),
    )
        .into_response())
}

/// Follow a replay
///
/// Its progress: `published` of `total`, and its state. Another consumer's job answers 404.
#[utoipa::path(
    get,
    path = "/v1/replays/{id}",
    tag = "subscriptions",
    params(ReplayId),
    responses((status = 200, description = "The job", body = ReplayView)),
    security(("admin_key" = []), ("consumer_key" = [])),
)]
async fn get_replay(
    State(service): State<Service>,
    caller: Caller,
    ReplayId(id): ReplayId,
) -> Result<Json<ReplayView>, ApiError> {
    Ok(Json(service.replay_job(&caller, &id).await?.into()))
}

/// Answer of a test.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TestResult {
    /// The id of the `relay.ping` event sent.
    pub event_id: String,
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
        .routes(routes!(get_replay))
        .routes(routes!(send_test))
}
