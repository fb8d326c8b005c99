//! Subscriptions: create, list, change, delete, rotate the signing secret or the ed25519
//! signing key, and disable; the public keys of a consumer as a JWKS. Every committed change
//! is announced to the dispatchers; a disabling is also announced through Relay as a
//! `relay.endpoint.disabled` event (and, for one release, under its former name
//! `relay.subscription.disabled`) to the subscription's consumer.
//!
//! The request bodies are defined here, with their checks, so every front end creates and
//! changes subscriptions under the same rules. Adding a field means: a column (migration and
//! [`Subscription`]), the field in [`NewSubscription`] and [`SubscriptionChanges`] with its
//! rule from [`crate::validation`], and the field in the view.

use std::{collections::BTreeMap, ops::Deref, time::Duration};

use relay_shared::{
    control::ControlMessage,
    endpoint::Credentials,
    ids::new_id,
    signing::{
        AsymmetricKey, Jwks, PublicKey, SignatureScheme, generate_asymmetric_key, generate_secret,
    },
    subscription::Ordering,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Caller, Page, PageRequest, Service};
use crate::{
    announce::Announcer,
    clock::{duration_ms, now, now_ms},
    error::{ApiError, FieldError},
    store::{self, StoreError, Subscription, SubscriptionPatch},
    validation::{self, Nullable},
};

/// Longest grace period of a rotation.
pub const MAX_GRACE: Duration = Duration::from_secs(30 * 24 * 3600);

/// A subscription the caller may act on. Only [`Service::subscription`] makes one, so an
/// operation taking it cannot skip the ownership check.
#[derive(Debug, Clone)]
pub struct OwnedSubscription {
    caller: Caller,
    subscription: Subscription,
}

impl OwnedSubscription {
    /// Who may act on it.
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// The subscription.
    pub fn into_inner(self) -> Subscription {
        self.subscription
    }
}

impl Deref for OwnedSubscription {
    type Target = Subscription;

    fn deref(&self) -> &Subscription {
        &self.subscription
    }
}

/// A new subscription (`POST /v1/subscriptions`).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSubscription {
    /// The endpoint: an absolute `http(s)` URL without credentials or fragment. It is stored
    /// (and shown) normalised, exactly as dispatchers will call it.
    #[schema(schema_with = validation::url_field)]
    pub url: String,
    /// Topic filters (`order.*`, `invoice.#`).
    #[schema(schema_with = validation::event_types_field)]
    pub event_types: Vec<String>,
    /// Owner; a consumer key may only name itself (and is the owner when absent).
    #[serde(default)]
    #[schema(schema_with = validation::consumer_or_null_field)]
    pub consumer: Option<String>,
    /// Free text, at most 500 characters.
    #[serde(default)]
    #[schema(schema_with = validation::description_or_null_field)]
    pub description: Option<String>,
    /// Whether deliveries are made; `true` when absent.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Requests per second to the endpoint, all dispatchers together (0.1 to 10,000);
    /// unlimited when absent or `null`.
    #[serde(default)]
    #[schema(schema_with = validation::rate_limit_or_null_field)]
    pub rate_limit: Option<f64>,
    /// Requests in flight to the endpoint, all dispatchers together (1 to 1,000); 64 when
    /// absent.
    #[serde(default, deserialize_with = "validation::optional_whole")]
    #[schema(schema_with = validation::max_in_flight_field)]
    pub max_in_flight: Option<u32>,
    /// Which signatures deliveries carry: `v1` (HMAC with the secret; the default), `v1a`
    /// (ed25519; receivers verify with the consumer's JWKS) or `both`.
    #[serde(default)]
    #[schema(value_type = Option<SchemeDoc>)]
    pub signature_scheme: Option<SignatureScheme>,
    /// Payload filter: only events that pass it are delivered (see the README's filter
    /// language), e.g. `{"data.total": {"$gte": 100}}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub filter: Option<Value>,
    /// Static headers added to every delivery (no hop-by-hop, `webhook-*`, `content-type`,
    /// `host` or `authorization`; at most 16, 4 KiB in all).
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
    /// Credentials sent in `Authorization`; stored like a secret and never shown again.
    #[serde(default)]
    #[schema(value_type = Option<CredentialsDoc>)]
    pub credentials: Option<Credentials>,
    /// `none` (the default): parallel deliveries. `key`: per ordering key, one delivery in
    /// flight, in publish order; a failing one holds back its key's later events.
    #[serde(default)]
    #[schema(schema_with = validation::ordering_field)]
    pub ordering: Option<Ordering>,
}

/// A signature scheme (documentation of [`SignatureScheme`]).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SchemeDoc {
    /// HMAC-SHA256 with the `whsec_` secret.
    V1,
    /// ed25519; the public key is in the consumer's JWKS.
    V1a,
    /// Both signatures.
    Both,
}

/// Endpoint credentials as a request gives them (documentation of [`Credentials`]): one
/// object per kind, each refusing other fields, as the server does.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum CredentialsDoc {
    /// HTTP basic authentication.
    Basic(BasicCredentialsDoc),
    /// A bearer token.
    Bearer(BearerCredentialsDoc),
}

/// HTTP basic authentication.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BasicCredentialsDoc {
    /// `basic`.
    #[schema(pattern = "^basic$")]
    pub r#type: String,
    /// 1 to 1024 characters, no `:`, no control characters.
    #[schema(pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F:]{1,1024}$")]
    pub username: String,
    /// 1 to 1024 characters, no control characters; never shown again.
    #[schema(pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]{1,1024}$")]
    pub password: String,
}

/// A bearer token (`A-Z a-z 0-9 - . _ ~ + /`, trailing `=`), never shown again.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BearerCredentialsDoc {
    /// `bearer`.
    #[schema(pattern = "^bearer$")]
    pub r#type: String,
    /// 1 to 1024 characters.
    #[schema(pattern = "^[A-Za-z0-9._~+/-]+=*$", max_length = 1024)]
    pub token: String,
}

/// A change to a subscription (`PATCH /v1/subscriptions/{id}`): absent fields stay as they are.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionChanges {
    /// New endpoint; `null` is refused.
    #[serde(default)]
    #[schema(schema_with = validation::url_field)]
    pub url: Nullable<String>,
    /// New topic filters; `null` is refused.
    #[serde(default)]
    #[schema(schema_with = validation::event_types_field)]
    pub event_types: Nullable<Vec<String>>,
    /// New owner; `null` clears it (admin only: a consumer cannot give a subscription away).
    #[serde(default)]
    #[schema(schema_with = validation::consumer_or_null_field)]
    pub consumer: Nullable<String>,
    /// New description, at most 500 characters; `null` clears it.
    #[serde(default)]
    #[schema(schema_with = validation::description_or_null_field)]
    pub description: Nullable<String>,
    /// Enable or disable (enabling clears `disabled_reason`); `null` is refused.
    #[serde(default)]
    #[schema(value_type = bool)]
    pub enabled: Nullable<bool>,
    /// New rate limit (0.1 to 10,000 requests per second); `null` removes it.
    #[serde(default)]
    #[schema(schema_with = validation::rate_limit_or_null_field)]
    pub rate_limit: Nullable<f64>,
    /// New in-flight cap (1 to 1,000); `null` is refused.
    #[serde(default, deserialize_with = "validation::nullable_whole")]
    #[schema(schema_with = validation::max_in_flight_field)]
    pub max_in_flight: Nullable<u32>,
    /// New signature scheme; `null` is refused. The first move to `v1a` or `both` makes the
    /// subscription's signing key.
    #[serde(default)]
    #[schema(value_type = SchemeDoc)]
    pub signature_scheme: Nullable<SignatureScheme>,
    /// New payload filter; `null` removes it.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub filter: Nullable<Value>,
    /// New static headers, replacing them all; `null` removes them.
    #[serde(default)]
    #[schema(value_type = Option<BTreeMap<String, String>>)]
    pub headers: Nullable<BTreeMap<String, String>>,
    /// New credentials; `null` removes them.
    #[serde(default)]
    #[schema(value_type = Option<CredentialsDoc>)]
    pub credentials: Nullable<Credentials>,
    /// New delivery order, `none` or `key`; `null` is refused.
    #[serde(default)]
    #[schema(schema_with = validation::ordering_field)]
    pub ordering: Nullable<Ordering>,
}

impl SubscriptionChanges {
    /// Checks every field present and returns the change to make.
    ///
    /// # Errors
    /// The first refusal found: a [`FieldError`] (400), or a filter or headers refused for
    /// what they hold (422).
    pub fn validate(self) -> Result<SubscriptionPatch, ApiError> {
        let url = self
            .url
            .required("url")?
            .map(|url| validation::normalise_url(&url))
            .transpose()?;
        let event_types = self.event_types.required("event_types")?;
        if let Some(event_types) = &event_types {
            validation::validate_event_types(event_types)?;
        }
        let consumer = self.consumer.clearable();
        if let Some(Some(consumer)) = &consumer {
            validation::validate_consumer(consumer, "consumer")?;
        }
        let description = self.description.clearable();
        if let Some(Some(description)) = &description {
            validation::validate_description(description)?;
        }
        let rate_limit = self.rate_limit.clearable();
        if let Some(Some(rate)) = rate_limit {
            validation::validate_rate_limit(rate)?;
        }
        let max_in_flight = self.max_in_flight.required("max_in_flight")?;
        if let Some(cap) = max_in_flight {
            validation::validate_max_in_flight(cap)?;
        }
        let signature_scheme = self.signature_scheme.required("signature_scheme")?;
        let filter = self.filter.clearable();
        if let Some(Some(filter)) = &filter {
            validation::validate_filter(filter)?;
        }
        let headers = self.headers.clearable();
        if let Some(Some(headers)) = &headers {
            validation::validate_headers(headers).map_err(ApiError::unprocessable)?;
        }
        let credentials = self.credentials.clearable();
        if let Some(Some(credentials)) = &credentials {
            validation::validate_credentials(credentials)?;
        }
        Ok(SubscriptionPatch {
            url,
            event_types,
            consumer,
            description,
            enabled: self.enabled.required("enabled")?,
            rate_limit,
            max_in_flight,
            // Stored only if the subscription has no key yet.
            signing_key: signature_scheme
                .filter(|s| s.signs_v1a())
                .map(|_| generate_asymmetric_key()),
            signature_scheme,
            filter,
            headers,
            credentials,
            ordering: self.ordering.required("ordering")?,
        })
    }
}

/// A public key a subscription signs `v1a` deliveries with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedKey {
    /// The key (its `kid` is the RFC 7638 thumbprint, as in the JWKS and `webhook-key-id`).
    pub key: PublicKey,
    /// For the previous key of a rotation: when it stops signing (Unix milliseconds).
    pub expires_ms: Option<i64>,
}

/// The public keys `subscription` signs with now, newest first (none under `v1`).
pub fn published_keys(subscription: &Subscription) -> Vec<PublishedKey> {
    let now = now_ms();
    let current = subscription.signing_keys(now);
    current
        .iter()
        .enumerate()
        .filter_map(|(i, key)| match AsymmetricKey::parse(key) {
            Ok(key) => Some(PublishedKey {
                key: key.public_key().clone(),
                expires_ms: (i > 0)
                    .then_some(subscription.previous_signing_key_expires_ms)
                    .flatten(),
            }),
            Err(e) => {
                tracing::error!(subscription_id = %subscription.id, error = %e, "unusable signing key not published");
                None
            }
        })
        .collect()
}

/// The signing secret, and during a rotation until when the previous one also signs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secret {
    /// `whsec_…`
    pub secret: String,
    /// End of the rotation's grace period, Unix milliseconds.
    pub previous_expires_ms: Option<i64>,
}

impl Service {
    /// Checks `url` against the SSRF policy (the scheme, literal addresses, and the addresses
    /// its host resolves to now).
    async fn check_destination(&self, url: &str) -> Result<(), ApiError> {
        validation::check_destination(&self.policy, url).await
    }

    /// Creates a subscription (with a fresh secret) and announces it.
    ///
    /// # Errors
    /// A [`FieldError`] for a bad field, [`ApiError::NotYours`] for a consumer naming another
    /// one, a refused
    /// destination, or a store failure.
    pub async fn create_subscription(
        &self,
        caller: &Caller,
        new: NewSubscription,
    ) -> Result<Subscription, ApiError> {
        let url = validation::normalise_url(&new.url)?;
        validation::validate_event_types(&new.event_types)?;
        if let Some(consumer) = &new.consumer {
            validation::validate_consumer(consumer, "consumer")?;
        }
        if let Some(description) = &new.description {
            validation::validate_description(description)?;
        }
        if let Some(rate) = new.rate_limit {
            validation::validate_rate_limit(rate)?;
        }
        if let Some(cap) = new.max_in_flight {
            validation::validate_max_in_flight(cap)?;
        }
        if let Some(filter) = &new.filter {
            validation::validate_filter(filter)?;
        }
        if let Some(headers) = &new.headers {
            validation::validate_headers(headers).map_err(ApiError::unprocessable)?;
        }
        if let Some(credentials) = &new.credentials {
            validation::validate_credentials(credentials)?;
        }
        caller.check_names_itself(new.consumer.as_deref(), "consumer")?;
        self.check_destination(&url).await?;
        let signature_scheme = new.signature_scheme.unwrap_or_default();
        let created_at = now();
        let subscription = Subscription {
            id: new_id("sub"),
            url,
            event_types: new.event_types,
            consumer: caller.consumer().map(str::to_owned).or(new.consumer),
            description: new.description,
            enabled: new.enabled.unwrap_or(true),
            secret: generate_secret(),
            revision: 1,
            updated_at: created_at.clone(),
            created_at,
            disabled_reason: None,
            previous_secret: None,
            previous_secret_expires_ms: None,
            rate_limit: new.rate_limit,
            max_in_flight: new
                .max_in_flight
                .unwrap_or(validation::DEFAULT_MAX_IN_FLIGHT),
            signing_key: signature_scheme.signs_v1a().then(generate_asymmetric_key),
            signature_scheme,
            filter: new.filter,
            headers: new.headers.unwrap_or_default(),
            credentials: new.credentials,
            ordering: new.ordering.unwrap_or_default(),
            ..Subscription::default()
        };
        self.store.create(&subscription).await?;
        tracing::info!(subscription_id = %subscription.id, "subscription created");
        self.announce(&subscription).await;
        Ok(subscription)
    }

    /// The subscription `id`, if `caller` may act on it.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when it does not exist or is another consumer's, or a store
    /// failure.
    pub async fn owned_subscription(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<OwnedSubscription, ApiError> {
        Ok(OwnedSubscription {
            subscription: self.subscription(caller, id).await?,
            caller: caller.clone(),
        })
    }

    /// One page of subscriptions in id order: a consumer's own only; the admin's optionally
    /// of one `consumer`.
    ///
    /// # Errors
    /// A [`FieldError`] for a consumer naming another one, or a store failure.
    pub async fn list_subscriptions(
        &self,
        caller: &Caller,
        consumer: Option<String>,
        page: &PageRequest,
    ) -> Result<Page<Subscription>, ApiError> {
        if let Some(consumer) = &consumer {
            validation::validate_consumer(consumer, "consumer")?;
        }
        caller.check_names_itself(consumer.as_deref(), "consumer")?;
        let rows = self
            .store
            .list(&store::ListRequest {
                after: page.after.clone(),
                consumer: caller.consumer().map(str::to_owned).or(consumer),
                limit: page.limit.saturating_add(1),
            })
            .await?;
        Ok(Page::from_rows(rows, page.limit, &page.after, |s| {
            s.id.clone()
        }))
    }

    /// Applies `changes`; a change that changes nothing returns the subscription as it is,
    /// without a new revision. Enabling clears `disabled_reason` and the failure streak.
    ///
    /// # Errors
    /// A [`FieldError`] for a bad field, a refused destination, a consumer giving the
    /// subscription away, [`StoreError::NotFound`] if it was deleted meanwhile, or a store
    /// failure.
    pub async fn update_subscription(
        &self,
        current: OwnedSubscription,
        changes: SubscriptionChanges,
    ) -> Result<Subscription, ApiError> {
        let patch = changes.validate()?;
        if patch.is_empty() {
            return Ok(current.into_inner());
        }
        if let Some(consumer) = &patch.consumer
            && let Some(own) = current.caller.consumer()
            && consumer.as_deref() != Some(own)
        {
            return Err(ApiError::NotYours(FieldError::new(
                "consumer",
                "a consumer key cannot move a subscription to another consumer",
            )));
        }
        if let Some(url) = &patch.url {
            self.check_destination(url).await?;
        }
        let subscription = self.store.update(&current.id, &patch, &now()).await?;
        if patch.enabled == Some(true) {
            self.store.reset_health(&current.id).await?;
        }
        tracing::info!(subscription_id = %subscription.id, revision = subscription.revision, "subscription updated");
        self.announce(&subscription).await;
        Ok(subscription)
    }

    /// Deletes a subscription and tells the dispatchers.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] if it was deleted meanwhile, or a store failure.
    pub async fn delete_subscription(
        &self,
        subscription: OwnedSubscription,
    ) -> Result<(), ApiError> {
        let id = subscription.into_inner().id;
        self.store.delete(&id).await?;
        tracing::info!(subscription_id = %id, "subscription deleted");
        self.control.notify(ControlMessage::Delete { id }).await;
        Ok(())
    }

    /// The signing secret (and the end of a running rotation's grace period).
    pub fn secret(subscription: &OwnedSubscription) -> Secret {
        let rotating = subscription.secrets(now_ms()).len() > 1;
        Secret {
            secret: subscription.secret.clone(),
            previous_expires_ms: rotating
                .then_some(subscription.previous_secret_expires_ms)
                .flatten(),
        }
    }

    /// Replaces the secret; the previous one keeps signing (deliveries carry both
    /// signatures) for `grace` (`24h`, at most 30 days; default `api.rotation_grace`).
    ///
    /// # Errors
    /// A [`FieldError`] on `grace`, [`StoreError::NotFound`] if it was deleted meanwhile, or
    /// a store failure.
    pub async fn rotate_secret(
        &self,
        subscription: &OwnedSubscription,
        grace: Option<&str>,
    ) -> Result<Secret, ApiError> {
        let expires_ms = self.grace_ends(grace)?;
        let rotated = self
            .store
            .rotate_secret(&subscription.id, &generate_secret(), expires_ms, &now())
            .await?;
        tracing::info!(subscription_id = %rotated.id, grace_ends_ms = expires_ms, "secret rotated");
        self.announce(&rotated).await;
        Ok(Secret {
            secret: rotated.secret,
            previous_expires_ms: Some(expires_ms),
        })
    }

    /// When a rotation's grace period of `grace` (default `api.rotation_grace`) started now
    /// ends, in Unix milliseconds.
    fn grace_ends(&self, grace: Option<&str>) -> Result<i64, FieldError> {
        let grace = match grace {
            Some(grace) => validation::parse_grace(grace)?,
            None => self.rotation_grace.min(MAX_GRACE),
        };
        Ok(now_ms().saturating_add(duration_ms(grace)))
    }

    /// Replaces the ed25519 signing key; the previous one keeps signing (deliveries carry
    /// both `v1a` signatures, `webhook-key-id` names both) and stays in the consumer's JWKS
    /// for `grace`, under the same rule as a secret's rotation.
    ///
    /// # Errors
    /// A [`FieldError`] on `grace`; [`ApiError::unprocessable`] on `signature_scheme` when
    /// the subscription does not sign `v1a`; [`StoreError::NotFound`] if it was deleted meanwhile, or a store failure.
    pub async fn rotate_signing_key(
        &self,
        subscription: &OwnedSubscription,
        grace: Option<&str>,
    ) -> Result<Subscription, ApiError> {
        let no_key = || {
            FieldError::new(
                "signature_scheme",
                "this subscription signs with v1 only: set signature_scheme to v1a or both first",
            )
        };
        // Refused for the subscription's state, not the request's shape.
        if !subscription.signature_scheme.signs_v1a() {
            return Err(ApiError::unprocessable(no_key()));
        }
        let expires_ms = self.grace_ends(grace)?;
        let rotated = self
            .store
            .rotate_signing_key(
                &subscription.id,
                &generate_asymmetric_key(),
                expires_ms,
                &now(),
            )
            .await?
            .ok_or_else(|| ApiError::unprocessable(no_key()))?;
        tracing::info!(subscription_id = %rotated.id, grace_ends_ms = expires_ms, "signing key rotated");
        self.announce(&rotated).await;
        Ok(rotated)
    }

    /// The public keys of `consumer`'s subscriptions that sign `v1a` (previous keys of a
    /// rotation included until their grace ends), as a JWKS. Public: it needs no key, and an
    /// unknown consumer has an empty set (the answer does not tell which consumers exist).
    ///
    /// # Errors
    /// A [`FieldError`] on `id` for a malformed consumer id, or a store failure.
    pub async fn jwks(&self, consumer: &str) -> Result<Jwks, ApiError> {
        validation::validate_consumer(consumer, "id")?;
        let now = now_ms();
        let mut keys = Vec::new();
        for (current, previous, expires_ms) in self.store.signing_keys_of(consumer).await? {
            let previous = previous.filter(|_| expires_ms.is_some_and(|e| e > now));
            for key in std::iter::once(current).chain(previous) {
                match AsymmetricKey::parse(&key) {
                    Ok(key) => keys.push(key.public_key().to_jwk()),
                    Err(e) => {
                        tracing::error!(consumer, error = %e, "unusable signing key not published");
                    }
                }
            }
        }
        Ok(Jwks { keys })
    }

    /// Disables a subscription at a client's request (dispatchers call it on `410 Gone`).
    ///
    /// # Errors
    /// A [`FieldError`] on `reason`, [`StoreError::NotFound`] if it was deleted meanwhile,
    /// or a store failure.
    pub async fn disable_subscription(
        &self,
        subscription: &OwnedSubscription,
        reason: &str,
    ) -> Result<Subscription, ApiError> {
        validation::validate_text(reason, "reason", 1, validation::MAX_REASON_LEN)?;
        self.disable(&subscription.id, reason).await
    }

    /// Disables the subscription `id` (unless it is already): commits, notifies the
    /// dispatchers, and announces it through Relay as `relay.endpoint.disabled` (and
    /// `relay.subscription.disabled`, its former name, for one release).
    /// The system's own path, for the background upkeep.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] or a store failure. A broker failure on the announcement is
    /// logged, not returned: the change is committed.
    pub async fn disable(&self, id: &str, reason: &str) -> Result<Subscription, ApiError> {
        let (subscription, changed) = self.store.disable(id, reason, &now()).await?;
        if !changed {
            return Ok(subscription);
        }
        self.store.reset_health(id).await?;
        tracing::warn!(subscription_id = %id, reason, "subscription disabled");
        self.announce(&subscription).await;
        Announcer::new(self.publisher.clone(), self.store.clone())
            .disabled(&subscription, reason)
            .await;
        Ok(subscription)
    }

    /// Ends the rotations whose grace period is over and announces each.
    ///
    /// # Errors
    /// A store failure.
    pub async fn expire_rotations(&self) -> Result<usize, StoreError> {
        let ended = self.store.expire_rotations(now_ms(), &now()).await?;
        for subscription in &ended {
            tracing::info!(subscription_id = %subscription.id, "rotation grace period over");
            self.announce(subscription).await;
        }
        Ok(ended.len())
    }

    /// Disables every enabled subscription that has failed without a success for `after`.
    ///
    /// # Errors
    /// A store failure while looking for them; failures to disable one are logged.
    pub async fn disable_failing(&self, after: Duration) -> Result<(), StoreError> {
        let failing = self
            .store
            .failing_since(now_ms().saturating_sub(duration_ms(after)))
            .await?;
        for (id, since) in failing {
            let reason = format!("failing since {}", crate::clock::ms_rfc3339(since));
            if let Err(e) = self.disable(&id, &reason).await {
                tracing::warn!(subscription_id = %id, error = %e, "cannot disable a failing subscription");
            }
        }
        Ok(())
    }

    /// The dispatchers' directory: every subscription, enabled or not, with its secrets.
    ///
    /// # Errors
    /// A store failure.
    pub async fn directory(
        &self,
        page: &PageRequest,
    ) -> Result<Page<relay_shared::subscription::DirectoryEntry>, ApiError> {
        let rows = self
            .store
            .list(&store::ListRequest {
                after: page.after.clone(),
                consumer: None,
                limit: page.limit.saturating_add(1),
            })
            .await?;
        Ok(
            Page::from_rows(rows, page.limit, &page.after, |s| s.id.clone())
                .map(|s| s.directory_entry()),
        )
    }
}

#[cfg(test)]
mod tests {
    use relay_shared::envelope::parse_json;

    use super::*;

    fn patch(body: &str) -> Result<SubscriptionPatch, String> {
        let request: SubscriptionChanges = parse_json(body.as_bytes()).map_err(|e| e.field)?;
        request
            .validate()
            .map_err(|e| e.to_problem().field.unwrap_or_default())
    }

    #[test]
    fn a_whole_number_may_be_written_as_a_float_as_json_schema_allows() {
        assert_eq!(
            patch(r#"{"max_in_flight": 395.0}"#).unwrap().max_in_flight,
            Some(395)
        );
        for bad in ["395.5", "-1", "1e10", "null"] {
            assert_eq!(
                patch(&format!(r#"{{"max_in_flight": {bad}}}"#)).unwrap_err(),
                "max_in_flight",
                "{bad}"
            );
        }
    }

    #[test]
    fn changes_tell_absent_from_null() {
        assert!(patch("{}").unwrap().is_empty());
        let p = patch(r#"{"consumer":null,"description":"x","enabled":false}"#).unwrap();
        assert_eq!(p.consumer, Some(None));
        assert_eq!(p.description, Some(Some("x".into())));
        assert_eq!(p.enabled, Some(false));
        assert_eq!(p.url, None);
        assert_eq!(p.event_types, None);
        assert_eq!(patch(r#"{"url":null}"#).unwrap_err(), "url");
        assert_eq!(patch(r#"{"event_types":null}"#).unwrap_err(), "event_types");
        assert_eq!(patch(r#"{"enabled":null}"#).unwrap_err(), "enabled");
        assert_eq!(
            patch(r#"{"event_types":["ok","no way"]}"#).unwrap_err(),
            "event_types[1]"
        );
        assert_eq!(patch(r#"{"url":"gopher://x"}"#).unwrap_err(), "url");
        assert_eq!(patch(r#"{"secret":"whsec_x"}"#).unwrap_err(), "secret");
        assert_eq!(patch(r#"{"consumer":"bad/name"}"#).unwrap_err(), "consumer");
        let p = patch(r#"{"rate_limit":null,"max_in_flight":3}"#).unwrap();
        assert_eq!((p.rate_limit, p.max_in_flight), (Some(None), Some(3)));
        assert_eq!(
            patch(r#"{"rate_limit":2.5}"#).unwrap().rate_limit,
            Some(Some(2.5))
        );
        for bad in ["-1", "0", "1e9", "\"5\""] {
            let body = format!(r#"{{"rate_limit":{bad}}}"#);
            assert_eq!(patch(&body).unwrap_err(), "rate_limit", "{bad}");
        }
        for bad in ["0", "1001", "null", "-3", "\"5\""] {
            let body = format!(r#"{{"max_in_flight":{bad}}}"#);
            assert_eq!(patch(&body).unwrap_err(), "max_in_flight", "{bad}");
        }
        assert_eq!(
            patch(r#"{"ordering":"key"}"#).unwrap().ordering,
            Some(Ordering::Key)
        );
        for bad in ["null", "\"fifo\"", "\"KEY\"", "1"] {
            let body = format!(r#"{{"ordering":{bad}}}"#);
            assert_eq!(patch(&body).unwrap_err(), "ordering", "{bad}");
        }
    }

    #[test]
    fn contract_fields_are_checked_naming_the_spot() {
        assert_eq!(
            patch(r#"{"signature_scheme":null}"#).unwrap_err(),
            "signature_scheme"
        );
        assert_eq!(
            patch(r#"{"signature_scheme":"v2"}"#).unwrap_err(),
            "signature_scheme"
        );
        assert_eq!(
            patch(r#"{"filter":{"$or":[{"data.a":1},{"data.b":{"$regex":"x"}}]}}"#).unwrap_err(),
            "filter.$or[1].data.b.$regex"
        );
        assert_eq!(patch(r#"{"filter":[]}"#).unwrap_err(), "filter");
        assert_eq!(
            patch(r#"{"headers":{"Webhook-Id":"x"}}"#).unwrap_err(),
            "headers.Webhook-Id"
        );
        assert_eq!(
            patch(r#"{"credentials":{"type":"basic","username":"a:b","password":"p"}}"#)
                .unwrap_err(),
            "credentials.username"
        );
        let p = patch(r#"{"signature_scheme":"both","filter":null,"headers":null}"#).unwrap();
        assert_eq!(p.signature_scheme, Some(SignatureScheme::Both));
        assert!(
            p.signing_key
                .as_deref()
                .is_some_and(|k| k.starts_with("whsk_"))
        );
        assert_eq!(
            (p.filter, p.headers, p.credentials),
            (Some(None), Some(None), None)
        );
        let p = patch(r#"{"signature_scheme":"v1"}"#).unwrap();
        assert_eq!(p.signing_key, None, "v1 needs no key");
    }
}
