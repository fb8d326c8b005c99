//! `/v1/event-types`: the event-type catalogue. Every key reads it (a directory key too: ingest
//! and the dispatchers load the schemas from it); only the admin key changes it.

use axum::{Json, extract::State, http::StatusCode};
use serde::Serialize;
use serde_json::Value;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    error::ApiError,
    extract::{EventTypeName, JsonBody, OwnEventTypeName, Paging, Query, paged_query},
    openapi::ProblemDoc,
    service::{
        Caller, Service,
        event_types::{CatalogueEntry, EventTypeChanges, NewEventType},
    },
    state::AppState,
};

/// Paging of `GET /v1/event-types`.
pub const PAGING: Paging = Paging {
    default: 100,
    max: 500,
    sequence: false,
};

/// An event type.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventTypeView {
    /// `order.created`.
    pub name: String,
    /// What it means, or `null`.
    pub description: Option<String>,
    /// JSON Schema (draft 2020-12) of `data`, or `null` (any `data`).
    #[schema(value_type = Option<Object>)]
    pub schema: Option<Value>,
    /// Example `data`.
    #[schema(value_type = Vec<Object>)]
    pub examples: Vec<Value>,
    /// Producers should stop sending it; it is still accepted, and the answer says so.
    pub deprecated: bool,
    /// One of Relay's own `relay.*` types (read-only).
    pub builtin: bool,
    /// Catalogue revision of the last change (0 for built-in types).
    pub revision: i64,
    /// RFC 3339; `null` for built-in types.
    pub created_at: Option<String>,
    /// RFC 3339; `null` for built-in types.
    pub updated_at: Option<String>,
}

impl From<CatalogueEntry> for EventTypeView {
    fn from(entry: CatalogueEntry) -> Self {
        let t = entry.event_type;
        let time = |s: String| (!s.is_empty()).then_some(s);
        Self {
            name: t.name,
            description: t.description,
            schema: t.schema,
            examples: t.examples,
            deprecated: t.deprecated,
            builtin: entry.builtin,
            revision: t.revision,
            created_at: time(t.created_at),
            updated_at: time(t.updated_at),
        }
    }
}

/// Body of `GET /v1/event-types`: a list page, and the catalogue revision it reflects.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventTypeList {
    /// The types, in name order.
    pub data: Vec<EventTypeView>,
    /// Always present: pass it as `after` to continue.
    pub next_cursor: String,
    /// Whether asking again right away may return more.
    pub has_more: bool,
    /// Every catalogue change up to this revision is reflected in the page.
    pub catalogue_revision: i64,
}

paged_query!(
    /// The query of `GET /v1/event-types`.
    ListQuery,
    PAGING
);

/// Create an event type
///
/// The schema is compiled (an invalid one is refused with the pointer at fault) and every
/// example checked against it. Ingest and the dispatchers apply it within a second.
#[utoipa::path(
    post,
    path = "/v1/event-types",
    tag = "event-types",
    request_body = NewEventType,
    responses(
        (status = 201, description = "Created", body = EventTypeView),
        (status = 409, description = "A type of that name exists (`conflict`)",
            body = ProblemDoc, content_type = "application/problem+json"),
        (status = 422, description = "The schema does not compile, or an example fails it (`invalid-field`)",
            body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("admin_key" = [])),
)]
async fn create(
    State(service): State<Service>,
    caller: Caller,
    JsonBody(new): JsonBody<NewEventType>,
) -> Result<(StatusCode, Json<EventTypeView>), ApiError> {
    let created = service.create_event_type(&caller, new).await?;
    Ok((StatusCode::CREATED, Json(created.into())))
}

/// List event types
///
/// Built-in `relay.*` types included.
#[utoipa::path(
    get,
    path = "/v1/event-types",
    tag = "event-types",
    params(ListQuery),
    responses((status = 200, description = "One page, in name order", body = EventTypeList)),
    security(("admin_key" = []), ("consumer_key" = [])),
)]
async fn list(
    State(service): State<Service>,
    caller: Caller,
    Query(ListQuery(page)): Query<ListQuery>,
) -> Result<Json<EventTypeList>, ApiError> {
    let catalogue = service.list_event_types(&caller, &page).await?;
    let page = catalogue.page.map(EventTypeView::from);
    Ok(Json(EventTypeList {
        data: page.items,
        next_cursor: page.next_cursor,
        has_more: page.has_more,
        catalogue_revision: catalogue.revision,
    }))
}

/// Read an event type
#[utoipa::path(
    get,
    path = "/v1/event-types/{name}",
    tag = "event-types",
    params(EventTypeName),
    responses((status = 200, description = "The type", body = EventTypeView)),
    security(("admin_key" = []), ("consumer_key" = [])),
)]
async fn get(
    State(service): State<Service>,
    caller: Caller,
    EventTypeName(name): EventTypeName,
) -> Result<Json<EventTypeView>, ApiError> {
    Ok(Json(service.event_type(&caller, &name).await?.into()))
}

/// Change an event type
///
/// Absent fields stay as they are; `schema: null` removes the schema.
#[utoipa::path(
    patch,
    path = "/v1/event-types/{name}",
    tag = "event-types",
    params(OwnEventTypeName),
    request_body = EventTypeChanges,
    responses(
        (status = 200, description = "Changed", body = EventTypeView),
        (status = 422, description = "The schema does not compile, or an example fails it (`invalid-field`)",
            body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("admin_key" = [])),
)]
async fn update(
    State(service): State<Service>,
    caller: Caller,
    OwnEventTypeName(name): OwnEventTypeName,
    JsonBody(changes): JsonBody<EventTypeChanges>,
) -> Result<Json<EventTypeView>, ApiError> {
    Ok(Json(
        service
            .update_event_type(&caller, &name, changes)
            .await?
            .into(),
    ))
}

/// Delete an event type
///
/// Events of that type are then accepted without a schema.
#[utoipa::path(
    delete,
    path = "/v1/event-types/{name}",
    tag = "event-types",
    params(OwnEventTypeName),
    responses((status = 204, description = "Deleted")),
    security(("admin_key" = [])),
)]
async fn delete(
    State(service): State<Service>,
    caller: Caller,
    OwnEventTypeName(name): OwnEventTypeName,
) -> Result<StatusCode, ApiError> {
    service.delete_event_type(&caller, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The routes of this resource.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get, update, delete))
}
