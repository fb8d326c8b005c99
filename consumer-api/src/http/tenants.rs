//! `/v1/consumers` (admin key only): consumers (tenants) and their API keys. A key is shown
//! once, in the answer to its creation; the store keeps its hash.

use axum::{Json, extract::State, http::StatusCode};
use serde::Serialize;
use utoipa::openapi::{ObjectBuilder, Type};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::page::List;
use crate::{
    error::{ApiError, FieldError},
    extract::{
        ConsumerId, FromQuery, JsonBody, KeyId, Paging, Param, Query, QueryParams, paged_query,
        query_doc,
    },
    openapi::ProblemDoc,
    service::{Caller, Service, tenants::NewConsumer},
    state::AppState,
    store::tenants::{ApiKey, Consumer},
};

/// Paging of `GET /v1/consumers`.
pub const CONSUMER_PAGING: Paging = Paging {
    default: 50,
    max: 500,
    sequence: false,
};
/// Paging of `GET /v1/consumers/{id}/keys`.
pub const KEY_PAGING: Paging = Paging {
    default: 50,
    max: 500,
    sequence: false,
};

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
    /// When it was last used (RFC 3339), written at most once a minute; null before its
    /// first use.
    pub last_used_at: Option<String>,
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
            last_used_at: k.last_used_at,
            key: None,
        }
    }
}

paged_query!(
    /// The query of `GET /v1/consumers`.
    ConsumerQuery,
    CONSUMER_PAGING
);

paged_query!(
    /// The query of `GET /v1/consumers/{id}/keys`.
    KeyQuery,
    KEY_PAGING
);

/// Create a consumer (tenant)
#[utoipa::path(
    post,
    path = "/v1/consumers",
    tag = "consumers",
    request_body = NewConsumer,
    responses(
        (status = 201, description = "Created", body = ConsumerView),
        (status = 409, description = "A consumer with that id exists (`conflict`)",
            body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("admin_key" = [])),
)]
async fn create_consumer(
    State(service): State<Service>,
    caller: Caller,
    JsonBody(new): JsonBody<NewConsumer>,
) -> Result<(StatusCode, Json<ConsumerView>), ApiError> {
    let consumer = service.create_consumer(&caller, new).await?;
    Ok((StatusCode::CREATED, Json(consumer.into())))
}

/// List consumers
#[utoipa::path(
    get,
    path = "/v1/consumers",
    tag = "consumers",
    params(ConsumerQuery),
    responses((status = 200, description = "One page, in id order", body = List<ConsumerView>)),
    security(("admin_key" = [])),
)]
async fn list_consumers(
    State(service): State<Service>,
    caller: Caller,
    Query(ConsumerQuery(page)): Query<ConsumerQuery>,
) -> Result<Json<List<ConsumerView>>, ApiError> {
    let page = service.list_consumers(&caller, &page).await?;
    Ok(Json(List::of(page, ConsumerView::from)))
}

/// Read a consumer
#[utoipa::path(
    get,
    path = "/v1/consumers/{id}",
    tag = "consumers",
    params(ConsumerId),
    responses((status = 200, description = "The consumer", body = ConsumerView)),
    security(("admin_key" = [])),
)]
async fn get_consumer(
    State(service): State<Service>,
    caller: Caller,
    ConsumerId(id): ConsumerId,
) -> Result<Json<ConsumerView>, ApiError> {
    Ok(Json(service.consumer(&caller, &id).await?.into()))
}

/// The query of `DELETE /v1/consumers/{id}`.
#[derive(Debug)]
pub struct DeleteConsumerQuery {
    force: bool,
}

impl FromQuery for DeleteConsumerQuery {
    fn params() -> Vec<Param> {
        vec![Param {
            name: "force",
            description: "`true` (default): delete its subscriptions with it; `false`: refuse \
                          (409 `in-use`) while it has subscriptions."
                .into(),
            schema: ObjectBuilder::new()
                .schema_type(Type::Boolean)
                .default(Some(true.into()))
                .build()
                .into(),
        }]
    }

    fn from_query(query: &mut QueryParams) -> Result<Self, FieldError> {
        let force = match query.take("force").as_deref() {
            None | Some("true") => true,
            Some("false") => false,
            Some(_) => return Err(FieldError::new("force", "force must be true or false")),
        };
        Ok(Self { force })
    }
}
query_doc!(DeleteConsumerQuery);

/// Delete a consumer
///
/// With everything that is its: its keys (revoked), portal sessions, subscriptions (and
/// their delivery logs, dead letters and health) and the events naming it. `force=false`
/// refuses while it has subscriptions.
#[utoipa::path(
    delete,
    path = "/v1/consumers/{id}",
    tag = "consumers",
    params(ConsumerId, DeleteConsumerQuery),
    responses(
        (status = 204, description = "Deleted"),
        (status = 409, description = "`force=false` and it has subscriptions (`in-use`)", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("admin_key" = [])),
)]
async fn delete_consumer(
    State(service): State<Service>,
    caller: Caller,
    ConsumerId(id): ConsumerId,
    Query(query): Query<DeleteConsumerQuery>,
) -> Result<StatusCode, ApiError> {
    service.delete_consumer(&caller, &id, query.force).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Create an API key
///
/// The key is in the answer, shown this once.
#[utoipa::path(
    post,
    path = "/v1/consumers/{id}/keys",
    tag = "consumers",
    params(ConsumerId),
    responses((status = 201, description = "Created; the key is in the answer", body = KeyView)),
    security(("admin_key" = [])),
)]
async fn create_key(
    State(service): State<Service>,
    caller: Caller,
    ConsumerId(id): ConsumerId,
) -> Result<(StatusCode, Json<KeyView>), ApiError> {
    let created = service.create_key(&caller, &id).await?;
    let view = KeyView {
        key: Some(created.secret),
        ..KeyView::from(created.key)
    };
    Ok((StatusCode::CREATED, Json(view)))
}

/// List a consumer's keys
#[utoipa::path(
    get,
    path = "/v1/consumers/{id}/keys",
    tag = "consumers",
    params(ConsumerId, KeyQuery),
    responses((status = 200, description = "One page, oldest first, without the keys", body = List<KeyView>)),
    security(("admin_key" = [])),
)]
async fn list_keys(
    State(service): State<Service>,
    caller: Caller,
    ConsumerId(id): ConsumerId,
    Query(KeyQuery(page)): Query<KeyQuery>,
) -> Result<Json<List<KeyView>>, ApiError> {
    let page = service.list_keys(&caller, &id, &page).await?;
    Ok(Json(List::of(page, KeyView::from)))
}

/// Revoke an API key
///
/// It stops working at once.
#[utoipa::path(
    delete,
    path = "/v1/consumers/{id}/keys/{key_id}",
    tag = "consumers",
    params(ConsumerId, KeyId),
    responses((status = 204, description = "Revoked")),
    security(("admin_key" = [])),
)]
async fn delete_key(
    State(service): State<Service>,
    caller: Caller,
    ConsumerId(consumer): ConsumerId,
    KeyId(key): KeyId,
) -> Result<StatusCode, ApiError> {
    service.delete_key(&caller, &consumer, &key).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The routes of this resource.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_consumer, list_consumers))
        .routes(routes!(get_consumer, delete_consumer))
        .routes(routes!(create_key, list_keys))
        .routes(routes!(delete_key))
}
