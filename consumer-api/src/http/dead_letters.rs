//! `/v1/dead-letters`: deliveries that ran out of attempts, and their redrive onto a fresh
//! retry schedule. Rules: [`crate::service::deliveries`].

use axum::{Json, extract::State, http::StatusCode};
use serde::Serialize;
use serde_json::Value;
use utoipa::openapi::{ObjectBuilder, Type};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::page::List;
use crate::{
    error::{ApiError, FieldError},
    extract::{FromQuery, JsonBody, Paging, Param, Query, QueryParams, query_doc},
    service::{Caller, PageRequest, Service, deliveries::RedriveRequest},
    state::AppState,
    store::records::DeadLetter,
};

/// Paging of `GET /v1/dead-letters`.
pub const PAGING: Paging = Paging {
    default: 100,
    max: 1000,
    sequence: true,
};

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

/// Answer of a redrive.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RedriveResult {
    /// How many were put back on the schedule.
    pub redriven: usize,
}

/// The query of `GET /v1/dead-letters`.
#[derive(Debug)]
pub struct DeadLetterQuery {
    page: PageRequest,
    subscription_id: Option<String>,
}

/// The longest id accepted as a filter.
const MAX_FILTER_ID_LEN: usize = 64;

impl FromQuery for DeadLetterQuery {
    fn params() -> Vec<Param> {
        let mut params = Vec::from(PAGING.params());
        params.push(Param {
            name: "subscription_id",
            description: "Only this subscription's dead letters.".into(),
            schema: ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(MAX_FILTER_ID_LEN))
                .build()
                .into(),
        });
        params
    }

    fn from_query(query: &mut QueryParams) -> Result<Self, FieldError> {
        let page = PAGING.take(query)?;
        let subscription_id = query.take("subscription_id");
        if subscription_id
            .as_ref()
            .is_some_and(|s| s.is_empty() || s.chars().count() > MAX_FILTER_ID_LEN)
        {
            return Err(FieldError::new(
                "subscription_id",
                format!("subscription_id must be 1 to {MAX_FILTER_ID_LEN} characters"),
            ));
        }
        Ok(Self {
            page,
            subscription_id,
        })
    }
}
query_doc!(DeadLetterQuery);

/// List dead letters
///
/// A consumer key lists its own subscriptions' only.
#[utoipa::path(
    get,
    path = "/v1/dead-letters",
    tag = "dead-letters",
    params(DeadLetterQuery),
    responses((status = 200, description = "One page", body = List<DeadLetterView>)),
    security(("admin_key" = []), ("consumer_key" = [])),
)]
async fn list_dead_letters(
    State(service): State<Service>,
    caller: Caller,
    Query(query): Query<DeadLetterQuery>,
) -> Result<Json<List<DeadLetterView>>, ApiError> {
    let page = service
        .dead_letters(&caller, query.subscription_id.as_deref(), &query.page)
        .await?;
    Ok(Json(List::of(page, DeadLetterView::from)))
}

/// Redrive dead letters
///
/// Puts them back on a fresh retry schedule for their subscription.
#[utoipa::path(
    post,
    path = "/v1/dead-letters/redrive",
    tag = "dead-letters",
    request_body = RedriveRequest,
    responses(
        (status = 202, description = "Put back on the schedule", body = RedriveResult),
        (status = 404, description = "A dead letter or subscription the caller may not see",
            body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("admin_key" = []), ("consumer_key" = [])),
)]
async fn redrive(
    State(service): State<Service>,
    caller: Caller,
    JsonBody(request): JsonBody<RedriveRequest>,
) -> Result<(StatusCode, Json<RedriveResult>), ApiError> {
    let redriven = service.redrive(&caller, request).await?;
    Ok((StatusCode::ACCEPTED, Json(RedriveResult { redriven })))
}

/// The routes of this resource.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_dead_letters))
        .routes(routes!(redrive))
}
