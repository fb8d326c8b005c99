//! `/v1/subscriptions`: create, list, read, change and delete subscriptions, read their
//! signing secret, rotate it, and disable them. Every committed change is followed by a
//! control notification. A consumer key reaches only its own consumer's subscriptions.

use std::time::Duration;

use axum::{
    Extension, Json,
    body::Body,
    extract::{Path, RawQuery, State, rejection::PathRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use relay_shared::{
    control::ControlMessage,
    envelope::{Envelope, rfc3339},
    ids::new_id,
    signing::generate_secret,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use time::OffsetDateTime;

use crate::{
    auth::Caller,
    error::{ApiError, FieldError},
    http::{AppState, QueryParams, json_body, optional_json_body},
    store::{PageRequest, StoreError, Subscription, now_ms},
    validation::{self, CreateRequest, PatchRequest},
};

/// Page size of `GET /v1/subscriptions` when `limit` is absent.
pub const DEFAULT_LIMIT: u32 = 50;
/// Largest `limit` of `GET /v1/subscriptions`.
pub const MAX_LIMIT: u32 = 500;
/// Longest grace period of a rotation.
pub const MAX_GRACE: Duration = Duration::from_secs(30 * 24 * 3600);
/// The type of the operational event announcing a disabled subscription.
pub const DISABLED_EVENT_TYPE: &str = "relay.subscription.disabled";

/// A subscription as clients see it; the secret only in the response to its creation.
#[derive(Debug, Serialize, utoipa::ToSchema)]
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
    /// Why it was disabled, while it is.
    pub disabled_reason: Option<String>,
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
            disabled_reason: s.disabled_reason,
            created_at: s.created_at,
            updated_at: s.updated_at,
            secret: None,
        }
    }
}

/// Body of `GET /v1/subscriptions`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SubscriptionList {
    /// Subscriptions in id (creation) order.
    pub data: Vec<SubscriptionView>,
    /// Pass as `after` for the next page; `null` on the last one.
    pub next_cursor: Option<String>,
}

/// Body of `GET /v1/subscriptions/{id}/secret` and of a rotation.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SecretView {
    /// `whsec_…`
    pub secret: String,
    /// During a rotation: until when the previous secret also signs (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_secret_expires_at: Option<String>,
}

/// Body of `POST /v1/subscriptions/{id}/disable`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DisableRequest {
    /// Why (shown as `disabled_reason`), 1 to 500 characters.
    pub reason: String,
}

/// Body of `POST /v1/subscriptions/{id}/rotate-secret` (optional).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// How long the previous secret keeps signing, e.g. `24h` (default `api.rotation_grace`).
    #[serde(default, with = "humantime_serde")]
    #[schema(value_type = Option<String>, example = "24h")]
    pub grace: Option<Duration>,
}

pub(crate) fn now() -> String {
    rfc3339(OffsetDateTime::now_utc())
}

/// The id from the path; one that cannot be decoded names no subscription.
pub(crate) fn subscription_id(
    path: Result<Path<String>, PathRejection>,
) -> Result<String, ApiError> {
    path.map(|Path(id)| id)
        .map_err(|_| StoreError::NotFound.into())
}

/// The subscription `id` if `caller` may see it; 404 otherwise, as if it did not exist.
///
/// # Errors
/// 404 or a store failure.
pub(crate) async fn owned(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<Subscription, ApiError> {
    let subscription = state.store.get(id).await?;
    if caller.may_see(subscription.consumer.as_deref()) {
        Ok(subscription)
    } else {
        Err(StoreError::NotFound.into())
    }
}

/// A consumer key may only name its own consumer.
fn own_consumer(caller: &Caller, given: Option<&str>) -> Result<(), FieldError> {
    match (caller.consumer(), given) {
        (Some(own), Some(given)) if own != given => Err(FieldError::new(
            "consumer",
            "a consumer key manages its own consumer's subscriptions only",
        )),
        _ => Ok(()),
    }
}

/// `POST /v1/subscriptions` → 201 with the subscription, its secret and a `Location`.
///
/// # Errors
/// A problem response for a bad body, a refused destination or a store failure.
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let valid = json_body::<CreateRequest>(&headers, body)
        .await?
        .validate()?;
    own_consumer(&caller, valid.consumer.as_deref())?;
    validation::check_destination(&state.policy, &valid.url).await?;
    let created_at = now();
    let subscription = Subscription {
        id: new_id("sub"),
        url: valid.url,
        event_types: valid.event_types,
        consumer: caller.consumer().map(str::to_owned).or(valid.consumer),
        description: valid.description,
        enabled: valid.enabled,
        secret: generate_secret(),
        revision: 1,
        updated_at: created_at.clone(),
        created_at,
        disabled_reason: None,
        previous_secret: None,
        previous_secret_expires_ms: None,
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

/// `GET /v1/subscriptions?limit=&after=&consumer=` → one page in id order (a consumer key:
/// its own subscriptions only).
///
/// # Errors
/// A problem response for a bad parameter or a store failure.
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Result<Json<SubscriptionList>, ApiError> {
    let mut params = QueryParams::parse(query.as_deref(), &["limit", "after", "consumer"])?;
    let limit = params.limit(DEFAULT_LIMIT, MAX_LIMIT)?;
    let consumer = params.take("consumer");
    if let Some(consumer) = &consumer {
        validation::validate_consumer(consumer, "consumer")?;
    }
    own_consumer(&caller, consumer.as_deref())?;
    let page = state
        .store
        .list(&PageRequest {
            after: params.take("after"),
            consumer: caller.consumer().map(str::to_owned).or(consumer),
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
/// 404 when there is no such subscription (or another tenant's), or a store failure.
pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<SubscriptionView>, ApiError> {
    let id = subscription_id(path)?;
    Ok(Json(SubscriptionView::new(
        owned(&state, &caller, &id).await?,
    )))
}

/// `PATCH /v1/subscriptions/{id}` → the updated subscription. A body that changes nothing
/// (`{}`) returns the subscription as it is, without a new revision. Enabling clears
/// `disabled_reason`.
///
/// # Errors
/// A problem response for a bad body, a refused destination, 404, or a store failure.
pub async fn update(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<SubscriptionView>, ApiError> {
    let id = subscription_id(path)?;
    let current = owned(&state, &caller, &id).await?;
    let patch = json_body::<PatchRequest>(&headers, body)
        .await?
        .validate()?;
    if patch.is_empty() {
        return Ok(Json(SubscriptionView::new(current)));
    }
    if let Some(consumer) = &patch.consumer
        && caller.consumer().is_some()
        && consumer.as_deref() != caller.consumer()
    {
        return Err(FieldError::new(
            "consumer",
            "a consumer key cannot move a subscription to another consumer",
        )
        .into());
    }
    if let Some(url) = &patch.url {
        validation::check_destination(&state.policy, url).await?;
    }
    let subscription = state.store.update(&id, &patch, &now()).await?;
    if patch.enabled == Some(true) {
        state.store.reset_health(&id).await?;
    }
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
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let id = subscription_id(path)?;
    owned(&state, &caller, &id).await?;
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
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<SecretView>, ApiError> {
    let id = subscription_id(path)?;
    let subscription = owned(&state, &caller, &id).await?;
    let rotating = subscription.secrets(now_ms()).len() > 1;
    Ok(Json(SecretView {
        previous_secret_expires_at: rotating
            .then(|| subscription.previous_secret_expires_ms.map(ms_rfc3339))
            .flatten(),
        secret: subscription.secret,
    }))
}

/// Unix milliseconds as RFC 3339.
pub fn ms_rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map(rfc3339)
        .unwrap_or_default()
}

/// `POST /v1/subscriptions/{id}/rotate-secret` → 200 with the new secret; the old one
/// keeps signing (deliveries carry both signatures) until the grace period ends.
///
/// # Errors
/// A problem response for a bad body, 404, or a store failure.
pub async fn rotate_secret(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<SecretView>, ApiError> {
    let id = subscription_id(path)?;
    owned(&state, &caller, &id).await?;
    let request = optional_json_body::<RotateRequest>(&headers, body).await?;
    let grace = request.grace.unwrap_or(state.rotation_grace);
    if grace > MAX_GRACE {
        return Err(FieldError::new("grace", "grace must be at most 30 days").into());
    }
    let expires_ms = now_ms().saturating_add(i64::try_from(grace.as_millis()).unwrap_or(0));
    let subscription = state
        .store
        .rotate_secret(&id, &generate_secret(), expires_ms, &now())
        .await?;
    tracing::info!(subscription_id = %id, grace_s = grace.as_secs(), "secret rotated");
    state
        .control
        .notify(ControlMessage::Upsert {
            subscription: subscription.directory_entry(),
        })
        .await;
    Ok(Json(SecretView {
        secret: subscription.secret,
        previous_secret_expires_at: Some(ms_rfc3339(expires_ms)),
    }))
}

/// `POST /v1/subscriptions/{id}/disable` with `{"reason": "…"}` → the disabled subscription.
/// Dispatchers call it when an endpoint answers 410.
///
/// # Errors
/// A problem response for a bad body, 404, or a store failure.
pub async fn disable(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<SubscriptionView>, ApiError> {
    let id = subscription_id(path)?;
    owned(&state, &caller, &id).await?;
    let request = json_body::<DisableRequest>(&headers, body).await?;
    let reason = request.reason.trim();
    if reason.is_empty() || reason.chars().count() > 500 {
        return Err(FieldError::new("reason", "reason must be 1 to 500 characters").into());
    }
    let subscription = disable_subscription(&state, &id, reason).await?;
    Ok(Json(SubscriptionView::new(subscription)))
}

/// Disables a subscription (unless it is already): commits, notifies the dispatchers, and
/// announces it through Relay as a `relay.subscription.disabled` event.
///
/// # Errors
/// 404 or a store failure. A broker failure on the announcement is logged, not returned:
/// the change is committed.
pub async fn disable_subscription(
    state: &AppState,
    id: &str,
    reason: &str,
) -> Result<Subscription, ApiError> {
    let (subscription, changed) = state.store.disable(id, reason, &now()).await?;
    if !changed {
        return Ok(subscription);
    }
    state.store.reset_health(id).await?;
    tracing::warn!(subscription_id = %id, reason, "subscription disabled");
    state
        .control
        .notify(ControlMessage::Upsert {
            subscription: subscription.directory_entry(),
        })
        .await;
    let data = serde_json::json!({
        "subscription_id": subscription.id,
        "reason": reason,
        "url": subscription.url,
    });
    let envelope = Envelope {
        id: new_id("evt"),
        event_type: DISABLED_EVENT_TYPE.to_owned(),
        occurred_at: now(),
        consumer: subscription.consumer.clone(),
        data: RawValue::from_string(data.to_string())
            .map_err(|e| ApiError::Broker(e.to_string()))?,
    };
    if let Err(e) = state.publisher.publish_event(&envelope).await {
        tracing::error!(subscription_id = %id, error = %e, "could not announce the disabled subscription");
    }
    Ok(subscription)
}
