//! `GET /v1/directory` (admin key only): every subscription, enabled or not, with its
//! secrets and revision, in id order. Dispatchers page through it at start and at every
//! periodic refresh.

use axum::{Json, extract::State};
use relay_shared::subscription::DirectoryEntry;
use serde::Serialize;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::page::List;
use crate::{
    error::ApiError,
    extract::{Paging, Query, paged_query},
    service::Service,
    state::AppState,
};

/// Paging of `GET /v1/directory`.
pub const PAGING: Paging = Paging {
    default: 1000,
    max: 5000,
    sequence: false,
};

/// One subscription as dispatchers hold it (the shape of `relay_shared`'s `DirectoryEntry`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DirectoryEntryView {
    /// `sub_…`
    pub id: String,
    /// Endpoint receiving the POSTs.
    pub url: String,
    /// Topic filters.
    pub event_types: Vec<String>,
    /// Owner.
    pub consumer: Option<String>,
    /// Disabled subscriptions receive nothing.
    pub enabled: bool,
    /// Current signing secrets, newest first; two during a rotation.
    pub secrets: Vec<String>,
    /// Increases with every change.
    pub revision: i64,
    /// Rate and in-flight limits.
    #[schema(value_type = Object)]
    pub limits: relay_shared::subscription::Limits,
    /// Delivery order, `none` or `key`.
    #[schema(schema_with = crate::validation::ordering_field)]
    pub ordering: relay_shared::subscription::Ordering,
}

impl From<DirectoryEntry> for DirectoryEntryView {
    fn from(e: DirectoryEntry) -> Self {
        Self {
            id: e.id,
            url: e.url,
            event_types: e.event_types,
            consumer: e.consumer,
            enabled: e.enabled,
            secrets: e.secrets,
            revision: e.revision,
            limits: e.limits,
            ordering: e.ordering,
        }
    }
}

paged_query!(
    /// The query of `GET /v1/directory`.
    DirectoryQuery,
    PAGING
);

/// The dispatchers' directory
///
/// Every subscription with its secrets, in id order.
#[utoipa::path(
    get,
    path = "/v1/directory",
    tag = "directory",
    params(DirectoryQuery),
    responses((status = 200, description = "One page", body = List<DirectoryEntryView>)),
    security(("admin_key" = [])),
)]
async fn get_directory(
    State(service): State<Service>,
    Query(DirectoryQuery(page)): Query<DirectoryQuery>,
) -> Result<Json<List<DirectoryEntryView>>, ApiError> {
    let page = service.directory(&page).await?;
    Ok(Json(List::of(page, DirectoryEntryView::from)))
}

/// The routes of this resource.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_directory))
}
