//! The pull API: `GET /v1/events` reads every recorded event the caller may see, in order of
//! recording, with a stable cursor; `GET /v1/events/{id}` one event with its deliveries per
//! subscription. Who sees what: [`crate::service::events`].

use axum::{Json, extract::State};
use serde::Serialize;
use serde_json::Value;
use utoipa::openapi::{ObjectBuilder, Type};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{attempts::AttemptView, page::List};
use crate::{
    clock::ms_rfc3339,
    error::{ApiError, FieldError},
    extract::{EventId, FromQuery, Paging, Param, Query, QueryParams, query_doc},
    service::{
        Caller, PageRequest, Service,
        events::{EventDetail, MAX_TYPES},
    },
    state::AppState,
    store::records::StoredEvent,
};

/// Paging of `GET /v1/events`.
pub const PAGING: Paging = Paging {
    default: 100,
    max: 1000,
    sequence: true,
};

/// One recorded event: the envelope as published, plus where it stands.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventView {
    /// Position in the order of recording (a cursor).
    pub sequence: i64,
    /// When Relay accepted it, RFC 3339.
    pub accepted_at: String,
    /// The envelope: `id`, `type`, `occurred_at`, `consumer`, `data`.
    #[schema(value_type = Object)]
    pub event: Value,
}

impl From<StoredEvent> for EventView {
    fn from(stored: StoredEvent) -> Self {
        Self {
            sequence: stored.seq,
            accepted_at: ms_rfc3339(stored.event.accepted_ms),
            event: serde_json::from_str(&stored.event.body).unwrap_or(Value::Null),
        }
    }
}

/// The deliveries of one event to one subscription.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryView {
    /// The subscription.
    pub subscription_id: String,
    /// Outcome of the last attempt.
    pub last_outcome: String,
    /// Every attempt, in order.
    pub attempts: Vec<AttemptView>,
}

/// Body of `GET /v1/events/{id}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventDetailView {
    /// The event.
    #[serde(flatten)]
    pub event: EventView,
    /// Its deliveries, per subscription the caller may see.
    pub deliveries: Vec<DeliveryView>,
}

impl From<EventDetail> for EventDetailView {
    fn from(detail: EventDetail) -> Self {
        Self {
            event: detail.event.into(),
            deliveries: detail
                .deliveries
                .into_iter()
                .map(|d| {
                    let attempts: Vec<AttemptView> =
                        d.attempts.into_iter().map(AttemptView::from).collect();
                    DeliveryView {
                        subscription_id: d.subscription_id,
                        last_outcome: attempts
                            .last()
                            .map(|a| a.outcome.clone())
                            .unwrap_or_default(),
                        attempts,
                    }
                })
                .collect(),
        }
    }
}

/// The query of `GET /v1/events`.
#[derive(Debug)]
pub struct PullQuery {
    page: PageRequest,
    types: Option<Vec<String>>,
}

/// A topic filter: dot-separated segments of `[a-z0-9_-]`, `*` or `#`.
const FILTER: &str = r"(?:[a-z0-9_-]+|\*|#)(?:\.(?:[a-z0-9_-]+|\*|#))*";

impl FromQuery for PullQuery {
    fn params() -> Vec<Param> {
        let mut params = Vec::from(PAGING.params());
        params.push(Param {
            name: "types",
            description: format!(
                "Only events of these types: 1 to {MAX_TYPES} comma-separated types or topic filters (`order.*`, `invoice.#`)."
            ),
            schema: ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(format!("^{FILTER}(?:,{FILTER}){{0,{}}}$", MAX_TYPES - 1)))
                .build()
                .into(),
        });
        params
    }

    fn from_query(query: &mut QueryParams) -> Result<Self, FieldError> {
        Ok(Self {
            page: PAGING.take(query)?,
            types: query
                .take("types")
                .map(|t| t.split(',').map(str::to_owned).collect()),
        })
    }
}
query_doc!(PullQuery);

/// Pull events
///
/// Every event the caller may see, in order of recording; keep `next_cursor` and ask again.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "events",
    params(PullQuery),
    responses((status = 200, description = "One page", body = List<EventView>)),
    security(("admin_key" = []), ("consumer_key" = [])),
)]
async fn list_events(
    State(service): State<Service>,
    caller: Caller,
    Query(query): Query<PullQuery>,
) -> Result<Json<List<EventView>>, ApiError> {
    let page = service
        .pull(&caller, query.types.as_deref(), &query.page)
        .await?;
    Ok(Json(List::of(page, EventView::from)))
}

/// One event with its deliveries
#[utoipa::path(
    get,
    path = "/v1/events/{id}",
    tag = "events",
    params(EventId),
    responses((status = 200, description = "The event and its deliveries per subscription", body = EventDetailView)),
    security(("admin_key" = []), ("consumer_key" = [])),
)]
async fn get_event(
    State(service): State<Service>,
    caller: Caller,
    EventId(id): EventId,
) -> Result<Json<EventDetailView>, ApiError> {
    Ok(Json(service.event(&caller, &id).await?.into()))
}

/// The routes of this resource.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_events))
        .routes(routes!(get_event))
}
