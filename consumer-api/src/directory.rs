//! `GET /v1/directory`: every subscription, enabled or not, with its secrets and revision,
//! in id order. Dispatchers page through it at start and at every periodic refresh.

use axum::{
    Json,
    extract::{RawQuery, State},
};
use relay_shared::subscription::DirectoryPage;

use crate::{
    error::ApiError,
    http::{AppState, QueryParams},
    store::PageRequest,
};

/// Page size when `limit` is absent.
pub const DEFAULT_LIMIT: u32 = 1000;
/// Largest `limit`.
pub const MAX_LIMIT: u32 = 5000;

/// `GET /v1/directory?after=&limit=`.
///
/// # Errors
/// A problem response for a bad parameter or a store failure.
pub async fn page(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<DirectoryPage>, ApiError> {
    let mut params = QueryParams::parse(query.as_deref(), &["after", "limit"])?;
    let limit = params.limit(DEFAULT_LIMIT, MAX_LIMIT)?;
    let page = state
        .store
        .list(&PageRequest {
            after: params.take("after"),
            consumer: None,
            limit,
        })
        .await?;
    Ok(Json(DirectoryPage {
        data: page.items.iter().map(|s| s.directory_entry()).collect(),
        next_cursor: page.next_cursor,
    }))
}
