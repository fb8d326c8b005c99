//! `/v1/subscriptions`: create, list, read, change and delete subscriptions, and read their
//! signing secret. Every committed change is followed by a control notification.

use axum::{
    Json,
    body::Body,
    extract::{Path, RawQuery, State, rejection::PathRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use relay_shared::{
    control::ControlMessage, envelope::rfc3339, ids::new_id, signing::generate_secret,
};
use serde::Serialize;
use time::OffsetDateTime;

use crate::{
    error::ApiError,
    http::{AppState, QueryParams, json_body},
    store::{PageRequest, StoreError, Subscription},
    validation::{self, CreateRequest, PatchRequest},
};

/// Page size of `GET /v1/subscriptions` when `limit` is absent.
pub const DEFAULT_LIMIT: u32 = 50;
/// Largest `limit` of `GET /v1/subscriptions`.
pub const MAX_LIMIT: u32 = 500;

/// A subscription as clients see it; the secret only in the response to its creation.
#[derive(Debug, Serialize)]
pub struct SubscriptionView {
    /// `sub_…`
    pub id: String,
    /// Endpoint.
    pub url: String,
    /// Topic filters.
    pub event_types: Vec<String>,
    /// Owner, or `null`.
    pub consumer: Option<String>,
    /// Free text, or `null`.
    pub description: Option<String>,
    /// Whether deliveries are made.
    pub enabled: bool,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// `whsec_…`, only when just created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl SubscriptionView {
    /// The view of `s`, without its secret.
    pub fn new(s: Subscription) -> Self {
        Self {
            id: s.id,
            url: s.url,
            event_types: s.event_types,
            consumer: s.consumer,
            description: s.description,
            enabled: s.enabled,
            created_at: s.created_at,
            updated_at: s.updated_at,
            secret: None,
        }
    }
}

/// Body of `GET /v1/subscriptions`.
#[derive(Debug, Serialize)]
pub struct SubscriptionList {
    /// Subscriptions in id (creation) order.
    pub data: Vec<SubscriptionView>,
    /// Pass as `after` for the next page; `null` on the last one.
    pub next_cursor: Option<String>,
}

/// Body of `GET /v1/subscriptions/{id}/secret`.
#[derive(Debug, Serialize)]
pub struct SecretView {
    /// `whsec_…`
    pub secret: String,
}

fn now() -> String {
    rfc3339(OffsetDateTime::now_utc())
}

/// The id from the path; one that cannot be decoded names no subscription.
fn subscription_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(id)| id)
        .map_err(|_| StoreError::NotFound.into())
}

/// `POST /v1/subscriptions` → 201 with the subscription, its secret and a `Location`.
///
/// # Errors
/// A problem response for a bad body or a store failure.
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let valid = json_body::<CreateRequest>(&headers, body)
        .await?
        .validate()?;
    let created_at = now();
    let subscription = Subscription {
        id: new_id("sub"),
        url: valid.url,
        event_types: valid.event_types,
        consumer: valid.consumer,
        description: valid.description,
        enabled: valid.enabled,
        secret: generate_secret(),
        revision: 1,
        updated_at: created_at.clone(),
        created_at,
    };
    state.store.create(&subscription).await?;
    tracing::info!(subscription_id = %subscription.id, "subscription created");
    state
        .control
        .notify(ControlMessage::Upsert {
            subscription: subscription.directory_entry(),
        })
        .await;
    // Ids are ASCII, so the header value is always valid.
    let location = HeaderValue::try_from(format!("/v1/subscriptions/{}", subscription.id)).ok();
    let secret = subscription.secret.clone();
    let view = SubscriptionView {
        secret: Some(secret),
        ..SubscriptionView::new(subscription)
    };
    let mut response = (StatusCode::CREATED, Json(view)).into_response();
    if let Some(location) = location {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// `GET /v1/subscriptions?limit=&after=&consumer=` → one page in id order.
///
/// # Errors
/// A problem response for a bad parameter or a store failure.
pub async fn list(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<SubscriptionList>, ApiError> {
    let mut params = QueryParams::parse(query.as_deref(), &["limit", "after", "consumer"])?;
    let limit = params.limit(DEFAULT_LIMIT, MAX_LIMIT)?;
    let consumer = params.take("consumer");
    if let Some(consumer) = &consumer {
        validation::validate_consumer(consumer, "consumer")?;
    }
    let page = state
        .store
        .list(&PageRequest {
            after: params.take("after"),
            consumer,
            limit,
        })
        .await?;
    Ok(Json(SubscriptionList {
        data: page.items.into_iter().map(SubscriptionView::new).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// `GET /v1/subscriptions/{id}`.
///
/// # Errors
/// 404 when there is no such subscription, or a store failure.
pub async fn get(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<SubscriptionView>, ApiError> {
    let id = subscription_id(path)?;
    Ok(Json(SubscriptionView::new(state.store.get(&id).await?)))
}

/// `PATCH /v1/subscriptions/{id}` → the updated subscription. A body that changes nothing
/// (`{}`) returns the subscription as it is, without a new revision.
///
/// # Errors
/// A problem response for a bad body, 404, or a store failure.
pub async fn update(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<SubscriptionView>, ApiError> {
    let id = subscription_id(path)?;
    let patch = json_body::<PatchRequest>(&headers, body)
        .await?
        .validate()?;
    if patch.is_empty() {
        return Ok(Json(SubscriptionView::new(state.store.get(&id).await?)));
    }
    let subscription = state.store.update(&id, &patch, &now()).await?;
    tracing::info!(subscription_id = %id, revision = subscription.revision, "subscription updated");
    state
        .control
        .notify(ControlMessage::Upsert {
            subscription: subscription.directory_entry(),
        })
        .await;
    Ok(Json(SubscriptionView::new(subscription)))
}

/// `DELETE /v1/subscriptions/{id}` → 204.
///
/// # Errors
/// 404 when there is no such subscription, or a store failure.
pub async fn delete(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let id = subscription_id(path)?;
    state.store.delete(&id).await?;
    tracing::info!(subscription_id = %id, "subscription deleted");
    state.control.notify(ControlMessage::Delete { id }).await;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/subscriptions/{id}/secret`.
///
/// # Errors
/// 404 when there is no such subscription, or a store failure.
pub async fn secret(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<SecretView>, ApiError> {
    let id = subscription_id(path)?;
    let subscription = state.store.get(&id).await?;
    Ok(Json(SecretView {
        secret: subscription.secret,
    }))
}
