//! `GET /v1/subscriptions/{id}/attempts`: the delivery log of one subscription — time,
//! attempt number, status code, latency, error, the request's and the response's headers and
//! the response excerpt — filterable by outcome.

use axum::{Json, extract::State};
use relay_shared::attempt::{AttemptOutcome, Headers};
use serde::Serialize;
use utoipa::openapi::{ObjectBuilder, Type};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::page::List;
use crate::{
    error::{ApiError, FieldError},
    extract::{FromQuery, Paging, Param, Query, QueryParams, query_doc},
    service::{PageRequest, Service, subscriptions::OwnedSubscription},
    state::AppState,
    store::records::{StoredAttempt, outcome_name},
};

/// Paging of the delivery log.
pub const PAGING: Paging = Paging {
    default: 100,
    max: 1000,
    sequence: true,
};

/// Every outcome, as spelled in the API.
const OUTCOMES: [&str; 6] = [
    "success",
    "retry_scheduled",
    "dead",
    "circuit_open",
    "deferred",
    "disabled",
];

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
    /// The request's headers as sent, in order; credentials (`authorization`) show as
    /// `[redacted]`. Empty when no request was made.
    pub request_headers: Vec<HeaderView>,
    /// The response's headers, in order: the first 32 within 4 KiB. Empty without an answer.
    pub response_headers: Vec<HeaderView>,
    /// How many response headers those bounds left out.
    pub response_headers_omitted: u32,
}

/// One header.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HeaderView {
    /// Its name, lower case.
    pub name: String,
    /// Its value (bytes that are not UTF-8 replaced).
    pub value: String,
}

fn header_views(headers: &Headers) -> Vec<HeaderView> {
    headers
        .iter()
        .map(|(name, value)| HeaderView {
            name: name.to_owned(),
            value: value.into_owned(),
        })
        .collect()
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
            request_headers: header_views(&r.request_headers),
            response_headers: header_views(&r.response_headers),
            response_headers_omitted: r.response_headers_omitted,
        }
    }
}

/// The query of the delivery log.
#[derive(Debug)]
pub struct AttemptQuery {
    page: PageRequest,
    outcome: Option<AttemptOutcome>,
}

impl FromQuery for AttemptQuery {
    fn params() -> Vec<Param> {
        let mut params = Vec::from(PAGING.params());
        params.push(Param {
            name: "outcome",
            description: "Only attempts with this outcome.".into(),
            schema: ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(OUTCOMES))
                .build()
                .into(),
        });
        params
    }

    fn from_query(query: &mut QueryParams) -> Result<Self, FieldError> {
        let page = PAGING.take(query)?;
        let outcome = query
            .take("outcome")
            .map(|o| {
                serde_json::from_value::<AttemptOutcome>(serde_json::Value::String(o)).map_err(
                    |_| {
                        FieldError::new(
                            "outcome",
                            format!("outcome must be one of {}", OUTCOMES.join(", ")),
                        )
                    },
                )
            })
            .transpose()?;
        Ok(Self { page, outcome })
    }
}
query_doc!(AttemptQuery);

/// The delivery log
///
/// Every attempt at delivering to this subscription, in order.
#[utoipa::path(
    get,
    path = "/v1/subscriptions/{id}/attempts",
    tag = "subscriptions",
    params(OwnedSubscription, AttemptQuery),
    responses((status = 200, description = "One page", body = List<AttemptView>)),
    security(("admin_key" = []), ("consumer_key" = [])),
)]
async fn list_attempts(
    State(service): State<Service>,
    subscription: OwnedSubscription,
    Query(query): Query<AttemptQuery>,
) -> Result<Json<List<AttemptView>>, ApiError> {
    let page = service
        .attempts(&subscription, query.outcome, &query.page)
        .await?;
    Ok(Json(List::of(page, AttemptView::from)))
}

/// The routes of this resource.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_attempts))
}
