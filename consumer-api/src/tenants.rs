//! `/v1/consumers` (admin key only): consumers (tenants) and their API keys. A key is shown
//! once, in the answer to its creation; the store keeps its hash.

use axum::{
    Json,
    body::Body,
    extract::{Path, RawQuery, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use base64::Engine as _;
use relay_shared::ids::{new_id, random_bytes};
use serde::{Deserialize, Serialize};

use crate::{
    auth::KEY_PREFIX,
    error::{ApiError, FieldError},
    http::{AppState, QueryParams, json_body},
    store::{
        StoreError,
        tenants::{ApiKey, Consumer, key_hash},
    },
    subscriptions::now,
    validation,
};

/// Largest `limit` of `GET /v1/consumers`.
pub const MAX_LIMIT: u32 = 500;
/// Characters of a key kept to recognise it.
pub const KEY_PREFIX_LEN: usize = 10;

/// Body of `POST /v1/consumers`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateConsumer {
    /// The name events and subscriptions use in `consumer`: 1 to 64 of `A-Z a-z 0-9 _ - . :`.
    pub id: String,
    /// Display name, at most 200 characters.
    #[serde(default)]
    pub name: Option<String>,
}

/// A consumer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConsumerView {
    /// Its id.
    pub id: String,
    /// Display name.
    pub name: Option<String>,
    /// RFC 3339.
    pub created_at: String,
}

impl From<Consumer> for ConsumerView {
    fn from(c: Consumer) -> Self {
        Self {
            id: c.id,
            name: c.name,
            created_at: c.created_at,
        }
    }
}

/// Body of `GET /v1/consumers`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConsumerList {
    /// Consumers in id order.
    pub data: Vec<ConsumerView>,
    /// Pass as `after` for the next page; `null` on the last one.
    pub next_cursor: Option<String>,
}

/// An API key; `key` only in the answer to its creation.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyView {
    /// `key_…`
    pub id: String,
    /// Its consumer.
    pub consumer_id: String,
    /// First characters of the key.
    pub prefix: String,
    /// RFC 3339.
    pub created_at: String,
    /// The key itself (`rk_…`), shown once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl From<ApiKey> for KeyView {
    fn from(k: ApiKey) -> Self {
        Self {
            id: k.id,
            consumer_id: k.consumer_id,
            prefix: k.prefix,
            created_at: k.created_at,
            key: None,
        }
    }
}

/// Body of `GET /v1/consumers/{id}/keys`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyList {
    /// Keys, oldest first.
    pub data: Vec<KeyView>,
}

/// `POST /v1/consumers` → 201.
///
/// # Errors
/// A problem for a bad body, 409 when the id is taken, or a store failure.
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request = json_body::<CreateConsumer>(&headers, body).await?;
    validation::validate_consumer(&request.id, "id")?;
    if request
        .name
        .as_ref()
        .is_some_and(|n| n.chars().count() > 200)
    {
        return Err(FieldError::new("name", "name must be at most 200 characters").into());
    }
    let consumer = Consumer {
        id: request.id,
        name: request.name,
        created_at: now(),
    };
    state.store.create_consumer(&consumer).await?;
    tracing::info!(consumer = %consumer.id, "consumer created");
    Ok((StatusCode::CREATED, Json(ConsumerView::from(consumer))).into_response())
}

/// `GET /v1/consumers?after=&limit=`.
///
/// # Errors
/// A problem for a bad parameter or a store failure.
pub async fn list(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<ConsumerList>, ApiError> {
    let mut params = QueryParams::parse(query.as_deref(), &["after", "limit"])?;
    let limit = params.limit(50, MAX_LIMIT)?;
    let mut items = state
        .store
        .list_consumers(params.take("after").as_deref(), limit + 1)
        .await?;
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|c| c.id.clone())
    } else {
        None
    };
    Ok(Json(ConsumerList {
        data: items.into_iter().map(ConsumerView::from).collect(),
        next_cursor,
    }))
}

/// `GET /v1/consumers/{id}`.
///
/// # Errors
/// 404 or a store failure.
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ConsumerView>, ApiError> {
    Ok(Json(state.store.get_consumer(&id).await?.into()))
}

/// `DELETE /v1/consumers/{id}` → 204; its keys are revoked, its subscriptions stay.
///
/// # Errors
/// 404 or a store failure.
pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.store.delete_consumer(&id).await?;
    tracing::info!(consumer = %id, "consumer deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/consumers/{id}/keys` → 201 with the key, shown this once.
///
/// # Errors
/// 404 or a store failure.
pub async fn create_key(
    State(state): State<AppState>,
    Path(consumer_id): Path<String>,
) -> Result<Response, ApiError> {
    let secret = format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<32>())
    );
    let key = ApiKey {
        id: new_id("key"),
        consumer_id,
        prefix: secret.chars().take(KEY_PREFIX_LEN).collect(),
        created_at: now(),
    };
    state.store.create_key(&key, &key_hash(&secret)).await?;
    tracing::info!(consumer = %key.consumer_id, key_id = %key.id, "API key created");
    let view = KeyView {
        key: Some(secret),
        ..KeyView::from(key)
    };
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// `GET /v1/consumers/{id}/keys`.
///
/// # Errors
/// 404 or a store failure.
pub async fn list_keys(
    State(state): State<AppState>,
    Path(consumer_id): Path<String>,
) -> Result<Json<KeyList>, ApiError> {
    let keys = state.store.list_keys(&consumer_id).await?;
    Ok(Json(KeyList {
        data: keys.into_iter().map(KeyView::from).collect(),
    }))
}

/// `DELETE /v1/consumers/{id}/keys/{key_id}` → 204: the key stops working at once.
///
/// # Errors
/// 404 or a store failure.
pub async fn delete_key(
    State(state): State<AppState>,
    Path((consumer_id, key_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    match state.store.delete_key(&consumer_id, &key_id).await {
        Ok(()) => {}
        Err(StoreError::Missing(_)) => return Err(StoreError::Missing("key").into()),
        Err(e) => return Err(e.into()),
    }
    tracing::info!(consumer = %consumer_id, key_id = %key_id, "API key revoked");
    Ok(StatusCode::NO_CONTENT)
}
