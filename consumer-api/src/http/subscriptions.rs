//! `/v1/subscriptions`: create, list, read, change and delete subscriptions, read their
//! signing secret, rotate it or the ed25519 signing key, and disable them. A consumer key
//! reaches only its own consumer's subscriptions.

use std::collections::BTreeMap;

use axum::{
    Json,
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use relay_shared::{control::Held, endpoint::RedactedCredentials, signing::SignatureScheme};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::page::List;
use crate::{
    clock::ms_rfc3339,
    dispatchers::Reports,
    error::{ApiError, FieldError},
    extract::{
        FromQuery, JsonBody, OptionalJsonBody, Paging, Param, Query, QueryParams, consumer_param,
        query_doc,
    },
    openapi::ProblemDoc,
    service::{
        Caller, PageRequest, Service,
        subscriptions::{
            NewSubscription, OwnedSubscription, PublishedKey, SchemeDoc, Secret,
            SubscriptionChanges, published_keys,
        },
    },
    state::AppState,
    store::Subscription,
    validation,
};

/// Paging of `GET /v1/subscriptions`.
pub const PAGING: Paging = Paging {
    default: 50,
    max: 500,
    sequence: false,
};

/// A subscription as clients see it; the secret only in the response to its creation.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SubscriptionView {
    /// `sub_…`
    pub id: String,
    /// The endpoint, normalised: exactly the URL deliveries are made to.
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
    /// Requests per second to the endpoint, all dispatchers together; `null`: unlimited.
    pub rate_limit: Option<f64>,
    /// Requests in flight to the endpoint, all dispatchers together.
    pub max_in_flight: u32,
    /// `none` or `key` (one delivery in flight per ordering key, in publish order).
    #[schema(schema_with = crate::validation::ordering_field)]
    pub ordering: relay_shared::subscription::Ordering,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// `whsec_…`, only when just created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Which signatures deliveries carry.
    #[schema(value_type = SchemeDoc)]
    pub signature_scheme: SignatureScheme,
    /// The public keys `v1a` signatures verify with, newest first (two during a rotation;
    /// none under `v1`); the same keys are in the consumer's JWKS.
    pub signing_keys: Vec<PublicKeyView>,
    /// Payload filter, or `null`.
    #[schema(value_type = Option<Object>)]
    pub filter: Option<Value>,
    /// Static headers added to every delivery.
    pub headers: BTreeMap<String, String>,
    /// What kind of credentials are sent (and a basic username), never the password or
    /// token; `null` when none.
    #[schema(value_type = Option<CredentialsView>)]
    pub credentials: Option<RedactedCredentials>,
    /// What happens to its deliveries now, as the dispatchers reported it within their last
    /// three heartbeats (README "Protecting endpoints").
    pub status: StatusView,
}

/// What happens to a subscription's deliveries now.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum StatusView {
    /// Delivered as they come (within its limits, none of which holds anything back now).
    Active,
    /// Deliveries wait for its rate: its `rate_limit` with a backlog, or a slow-down after
    /// 429/503 answers.
    Throttled {
        /// The rate in force, requests per second, all dispatchers together.
        rate: f64,
    },
    /// Paused until then, as the endpoint asked with `Retry-After`.
    BackingOff {
        /// RFC 3339.
        until: String,
    },
    /// Its circuit breaker is open on a dispatcher: deliveries wait in the retry tiers until
    /// a probe succeeds.
    BreakerOpen,
    /// No deliveries are made.
    Disabled {
        /// Why, when known.
        reason: Option<String>,
    },
}

impl From<Held> for StatusView {
    fn from(held: Held) -> Self {
        match held {
            // Thousandths of a request per second, at most 10,000 req/s: exact in f64.
            #[allow(clippy::cast_precision_loss)]
            Held::Throttled { rate_millis } => Self::Throttled {
                rate: rate_millis as f64 / 1000.0,
            },
            Held::BackingOff { until_ms } => Self::BackingOff {
                until: ms_rfc3339(until_ms),
            },
            Held::BreakerOpen => Self::BreakerOpen,
        }
    }
}

impl SubscriptionView {
    /// With the status the dispatchers report (an enabled subscription's).
    fn reported(mut self, reports: &Reports) -> Self {
        if self.status == StatusView::Active
            && let Some(held) = reports.held(&self.id)
        {
            self.status = held.into();
        }
        self
    }
}

/// Credentials as the API shows them (documentation of [`RedactedCredentials`]).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum CredentialsView {
    /// Basic credentials; the password is never shown.
    Basic {
        /// The username.
        username: String,
    },
    /// A bearer token, never shown.
    Bearer,
}

/// A public key that verifies a subscription's `v1a` signatures.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PublicKeyView {
    /// RFC 7638 thumbprint: the key's `kid` in the JWKS and in `webhook-key-id`.
    pub kid: String,
    /// `whpk_…` (base64 of the 32-byte ed25519 public key).
    pub public_key: String,
    /// For the previous key of a rotation: when it stops signing (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

impl From<PublishedKey> for PublicKeyView {
    fn from(k: PublishedKey) -> Self {
        Self {
            kid: k.key.kid().to_owned(),
            public_key: k.key.to_whpk(),
            expires_at: k.expires_ms.map(ms_rfc3339),
        }
    }
}

/// Body of `POST /v1/subscriptions/{id}/rotate-signing-key`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SigningKeysView {
    /// The keys signing now, the new one first.
    pub signing_keys: Vec<PublicKeyView>,
}

impl From<Subscription> for SubscriptionView {
    fn from(s: Subscription) -> Self {
        let signing_keys = published_keys(&s)
            .into_iter()
            .map(PublicKeyView::from)
            .collect();
        Self {
            signing_keys,
            signature_scheme: s.signature_scheme,
            filter: s.filter,
            headers: s.headers,
            credentials: s.credentials.as_ref().map(|c| c.redacted()),
            id: s.id,
            url: s.url,
            event_types: s.event_types,
            consumer: s.consumer,
            description: s.description,
            status: if s.enabled {
                StatusView::Active
            } else {
                StatusView::Disabled {
                    reason: s.disabled_reason.clone(),
                }
            },
            enabled: s.enabled,
            disabled_reason: s.disabled_reason,
            rate_limit: s.rate_limit,
            max_in_flight: s.max_in_flight,
            ordering: s.ordering,
            created_at: s.created_at,
            updated_at: s.updated_at,
            secret: None,
        }
    }
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

impl From<Secret> for SecretView {
    fn from(s: Secret) -> Self {
        Self {
            secret: s.secret,
            previous_secret_expires_at: s.previous_expires_ms.map(ms_rfc3339),
        }
    }
}

/// Body of `POST /v1/subscriptions/{id}/disable`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DisableRequest {
    /// Why (shown as `disabled_reason`), 1 to 500 characters.
    #[schema(schema_with = validation::reason_field)]
    pub reason: String,
}

/// Body of `POST /v1/subscriptions/{id}/rotate-secret` and `…/rotate-signing-key` (optional).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// How long the previous secret (or signing key) keeps signing, e.g. `24h`, at most 30
    /// days (default `api.rotation_grace`).
    #[serde(default)]
    #[schema(schema_with = validation::grace_schema)]
    pub grace: Option<String>,
}

/// The query of `GET /v1/subscriptions`.
#[derive(Debug)]
pub struct ListQuery {
    page: PageRequest,
    consumer: Option<String>,
}

impl FromQuery for ListQuery {
    fn params() -> Vec<Param> {
        let mut params = Vec::from(PAGING.params());
        params.push(consumer_param(
            "Only this consumer's subscriptions (admin key).",
        ));
        params
    }

    fn from_query(query: &mut QueryParams) -> Result<Self, FieldError> {
        let page = PAGING.take(query)?;
        let consumer = query.take("consumer");
        if let Some(consumer) = &consumer {
            validation::validate_consumer(consumer, "consumer")?;
        }
        Ok(Self { page, consumer })
    }
}
query_doc!(ListQuery);

/// Create a subscription
///
/// Answers 201 with the subscription, its secret (shown this once) and a `Location`.
#[utoipa::path(
    post,
    path = "/v1/subscriptions",
    tag = "subscriptions",
    request_body = NewSubscription,
    responses(
        (status = 201, description = "Created; the secret is in the answer.", body = SubscriptionView,
            headers(("location" = String, description = "The subscription's path"))),
        (status = 422, description = "Destination refused by the SSRF policy (`destination-not-allowed`)",
            body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("admin_key" = []), ("consumer_key" = [])),
)]
async fn create_subscription(
    State(service): State<Service>,
    caller: Caller,
    JsonBody(new): JsonBody<NewSubscription>,
) -> Result<Response, ApiError> {
    let subscription = service.create_subscription(&caller, new).await?;
    // Ids are ASCII, so the header value is always valid.
    let location = HeaderValue::try_from(format!("/v1/subscriptions/{}", subscription.id)).ok();
    let view = SubscriptionView {
        secret: Some(subscription.secret.clone()),
        ..SubscriptionView::from(subscription)
    };
    let mut response = (StatusCode::CREATED, Json(view)).into_response();
    if let Some(location) = location {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// List subscriptions
///
/// In id (creation) order; a consumer key lists its own only.
#[utoipa::path(
    get,
    path = "/v1/subscriptions",
    tag = "subscriptions",
    params(ListQuery),
    responses((status = 200, description = "One page", body = List<SubscriptionView>)),
    security(("admin_key" = []), ("consumer_key" = [])),
)]
async fn list_subscriptions(
    State(service): State<Service>,
    State(reports): State<Reports>,
    caller: Caller,
    Query(query): Query<ListQuery>,
) -> Result<Json<List<SubscriptionView>>, ApiError> {
    let page = service
        .list_subscriptions(&caller, query.consumer, &query.page)
        .await?;
    Ok(Json(List::of(page, |s| {
        SubscriptionView::from(s).reported(&reports)
    })))
}

/// Read a subscription
#[utoipa::path(
    get,
    path = "/v1/subscriptions/{id}",
    tag = "subscriptions",
    params(OwnedSubscription),
    responses((status = 200, description = "The subscription (without its secret)", body = SubscriptionView)),
    security(("admin_key" = []), ("consumer_key" = [])),
)]
async fn get_subscription(
    State(reports): State<Reports>,
    subscription: OwnedSubscription,
) -> Json<SubscriptionView> {
    Json(SubscriptionView::from(subscription.into_inner()).reported(&reports))
}

/// Change a subscription
///
/// Absent fields stay as they are; a body that changes nothing (`{}`) returns the
/// subscription without a new revision. Enabling clears `disabled_reason`.
#[utoipa::path(
    patch,
    path = "/v1/subscriptions/{id}",
    tag = "subscriptions",
    params(OwnedSubscription),
    request_body = SubscriptionChanges,
    responses(
        (status = 200, description = "The changed subscription", body = SubscriptionView),
        (status = 422, description = "Destination refused by the SSRF policy (`destination-not-allowed`)",
            body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("admin_key" = []), ("consumer_key" = [])),
)]
async fn update_subscription(
    State(service): State<Service>,
    subscription: OwnedSubscription,
    JsonBody(changes): JsonBody<SubscriptionChanges>,
) -> Result<Json<SubscriptionView>, ApiError> {
    Ok(Json(
        service
            .update_subscription(subscription, changes)
            .await?
            .into(),
    ))
}

/// Delete a subscription
#[utoipa::path(
    delete,
    path = "/v1/subscriptions/{id}",
    tag = "subscriptions",
    params(OwnedSubscription),
    responses((status = 204, description = "Deleted")),
    security(("admin_key" = []), ("consumer_key" = [])),
)]
async fn delete_subscription(
    State(service): State<Service>,
    subscription: OwnedSubscription,
) -> Result<StatusCode, ApiError> {
    service.delete_subscription(subscription).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Read the signing secret
#[utoipa::path(
    get,
    path = "/v1/subscriptions/{id}/secret",
    tag = "subscriptions",
    params(OwnedSubscription),
    responses((status = 200, description = "The secret", body = SecretView)),
    security(("admin_key" = []), ("consumer_key" = [])),
)]
async fn get_secret(subscription: OwnedSubscription) -> Json<SecretView> {
    Json(Service::secret(&subscription).into())
}

/// Rotate the signing secret
///
/// The previous secret keeps signing (deliveries carry both signatures) until the grace
/// period ends.
#[utoipa::path(
    post,
    path = "/v1/subscriptions/{id}/rotate-secret",
    tag = "subscriptions",
    params(OwnedSubscription),
    request_body(content = Option<RotateRequest>, description = "Optional", content_type = "application/json"),
    responses((status = 200, description = "The new secret", body = SecretView)),
    security(("admin_key" = []), ("consumer_key" = [])),
)]
async fn rotate_secret(
    State(service): State<Service>,
    subscription: OwnedSubscription,
    OptionalJsonBody(request): OptionalJsonBody<RotateRequest>,
) -> Result<Json<SecretView>, ApiError> {
    Ok(Json(
        service
            .rotate_secret(&subscription, request.grace.as_deref())
            .await?
            .into(),
    ))
}

/// Rotate the ed25519 signing key
///
/// For a subscription whose `signature_scheme` is `v1a` or `both`. The previous key keeps
/// signing (deliveries carry both `v1a` signatures, and `webhook-key-id` names both) and stays
/// in the consumer's JWKS until the grace period ends; then only the new one signs.
#[utoipa::path(
    post,
    path = "/v1/subscriptions/{id}/rotate-signing-key",
    tag = "subscriptions",
    params(OwnedSubscription),
    request_body(content = Option<RotateRequest>, description = "Optional", content_type = "application/json"),
    responses(
        (status = 200, description = "The keys signing now", body = SigningKeysView),
        (status = 422, description = "The subscription signs `v1` only (`invalid-field` on `signature_scheme`)",
            body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("admin_key" = []), ("consumer_key" = [])),
)]
async fn rotate_signing_key(
    State(service): State<Service>,
    subscription: OwnedSubscription,
    OptionalJsonBody(request): OptionalJsonBody<RotateRequest>,
) -> Result<Json<SigningKeysView>, ApiError> {
    let rotated = service
        .rotate_signing_key(&subscription, request.grace.as_deref())
        .await?;
    Ok(Json(SigningKeysView {
        signing_keys: published_keys(&rotated)
            .into_iter()
            .map(PublicKeyView::from)
            .collect(),
    }))
}

/// Disable a subscription
///
/// Dispatchers call it when an endpoint answers `410 Gone`.
#[utoipa::path(
    post,
    path = "/v1/subscriptions/{id}/disable",
    tag = "subscriptions",
    params(OwnedSubscription),
    request_body = DisableRequest,
    responses((status = 200, description = "The disabled subscription", body = SubscriptionView)),
    security(("admin_key" = []), ("consumer_key" = [])),
)]
async fn disable_subscription(
    State(service): State<Service>,
    subscription: OwnedSubscription,
    JsonBody(request): JsonBody<DisableRequest>,
) -> Result<Json<SubscriptionView>, ApiError> {
    Ok(Json(
        service
            .disable_subscription(&subscription, &request.reason)
            .await?
            .into(),
    ))
}

/// The routes of this resource.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_subscription, list_subscriptions))
        .routes(routes!(
            get_subscription,
            update_subscription,
            delete_subscription
        ))
        .routes(routes!(get_secret))
        .routes(routes!(rotate_secret))
        .routes(routes!(rotate_signing_key))
        .routes(routes!(disable_subscription))
}
