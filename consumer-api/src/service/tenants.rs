//! Consumers (tenants) and their API keys, admin only. A key is shown once, when it is
//! created; the store keeps its hash, and when it was last used.

use std::{sync::PoisonError, time::Instant};

use base64::Engine as _;
use relay_shared::{
    control::ControlMessage,
    ids::{new_id, random_bytes},
};
use serde::Deserialize;

use super::{Caller, Page, PageRequest, Service};
use crate::{
    clock::now,
    error::{ApiError, FieldError},
    store::{
        StoreError,
        tenants::{ApiKey, Consumer, ConsumerDeletion, key_hash},
    },
    validation,
};

/// Every consumer key starts with this.
pub const KEY_PREFIX: &str = "rk_";
/// Characters of a key kept to recognise it.
pub const KEY_PREFIX_LEN: usize = 10;
/// The longest display name of a consumer, in characters.
pub const MAX_NAME_LEN: usize = 200;

/// A new consumer (`POST /v1/consumers`).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewConsumer {
    /// The name events and subscriptions use in `consumer`: 1 to 64 of `A-Z a-z 0-9 _ - . :`.
    #[schema(schema_with = validation::consumer_field)]
    pub id: String,
    /// Display name, at most 200 characters.
    #[serde(default)]
    #[schema(schema_with = name_field)]
    pub name: Option<String>,
}

fn name_field() -> utoipa::openapi::schema::Schema {
    validation::text_schema(0, MAX_NAME_LEN, true)
}

/// A key just created: its record, and the key itself, shown this once.
#[derive(Debug, Clone)]
pub struct CreatedKey {
    /// The stored record.
    pub key: ApiKey,
    /// `rk_…`
    pub secret: String,
}

impl Caller {
    /// Tenant management is the admin's alone.
    ///
    /// # Errors
    /// [`ApiError::Forbidden`] for a consumer.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self {
            Self::Admin => Ok(()),
            Self::Directory | Self::Consumer(_) => Err(ApiError::Forbidden),
        }
    }
}

impl Service {
    /// The consumer a presented consumer key belongs to, if it is a current key.
    ///
    /// # Errors
    /// A store failure.
    pub async fn consumer_for_key(&self, key: &str) -> Result<Option<Caller>, ApiError> {
        if !key.starts_with(KEY_PREFIX) {
            return Ok(None);
        }
        let Some((key_id, consumer)) = self.store.consumer_for_key(&key_hash(key)).await? else {
            return Ok(None);
        };
        self.note_key_use(key_id);
        Ok(Some(Caller::Consumer(consumer)))
    }

    /// Records the use of key `key_id` as its `last_used_at`, at most once per
    /// [`super::key_uses::KEY_USE_RESOLUTION`] per key: a request pays one map lookup, and the write runs in a
    /// task of its own.
    fn note_key_use(&self, key_id: String) {
        let due = self
            .key_uses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .due(&key_id, Instant::now());
        if !due {
            return;
        }
        let store = self.store.clone();
        let now = now();
        tokio::spawn(async move {
            if let Err(e) = store.touch_key(&key_id, &now).await {
                tracing::warn!(key_id, error = %e, "could not record the key's last use");
            }
        });
    }

    /// Creates a consumer.
    ///
    /// # Errors
    /// A [`FieldError`], [`StoreError::Conflict`] when the id is taken, or a store failure.
    pub async fn create_consumer(
        &self,
        caller: &Caller,
        new: NewConsumer,
    ) -> Result<Consumer, ApiError> {
        caller.require_admin()?;
        validation::validate_consumer(&new.id, "id")?;
        if new
            .name
            .as_ref()
            .is_some_and(|n| n.chars().count() > MAX_NAME_LEN)
        {
            return Err(FieldError::new(
                "name",
                format!("name must be at most {MAX_NAME_LEN} characters"),
            )
            .into());
        }
        let consumer = Consumer {
            id: new.id,
            name: new.name,
            created_at: now(),
        };
        self.store.create_consumer(&consumer).await?;
        tracing::info!(consumer = %consumer.id, "consumer created");
        Ok(consumer)
    }

    /// One page of consumers in id order.
    ///
    /// # Errors
    /// A store failure.
    pub async fn list_consumers(
        &self,
        caller: &Caller,
        page: &PageRequest,
    ) -> Result<Page<Consumer>, ApiError> {
        caller.require_admin()?;
        let rows = self
            .store
            .list_consumers(&page.after, page.limit.saturating_add(1))
            .await?;
        Ok(Page::from_rows(rows, page.limit, &page.after, |c| {
            c.id.clone()
        }))
    }

    /// One consumer.
    ///
    /// # Errors
    /// [`StoreError::Missing`] or a store failure.
    pub async fn consumer(&self, caller: &Caller, id: &str) -> Result<Consumer, ApiError> {
        caller.require_admin()?;
        Ok(self.store.get_consumer(id).await?)
    }

    /// Deletes a consumer with its keys, portal sessions, subscriptions (announced to the
    /// dispatchers), their delivery logs and dead letters, and the events naming it. With
    /// `force` false, a consumer that still has subscriptions is refused and kept.
    ///
    /// # Errors
    /// [`StoreError::Missing`], [`ApiError::InUse`] (not forced, subscriptions left), or a
    /// store failure.
    pub async fn delete_consumer(
        &self,
        caller: &Caller,
        id: &str,
        force: bool,
    ) -> Result<(), ApiError> {
        caller.require_admin()?;
        match self.store.delete_consumer(id, !force).await? {
            ConsumerDeletion::Subscribed(n) => Err(ApiError::InUse(format!(
                "consumer {id} has {n} subscription(s): delete them first, or delete it with \
                 force=true to delete them with it"
            ))),
            ConsumerDeletion::Deleted { subscriptions } => {
                tracing::info!(
                    consumer = %id,
                    subscriptions = subscriptions.len(),
                    "consumer deleted"
                );
                for id in subscriptions {
                    self.control.notify(ControlMessage::Delete { id }).await;
                }
                Ok(())
            }
        }
    }

    /// Creates an API key for `consumer_id`.
    ///
    /// # Errors
    /// [`StoreError::Missing`] when there is no such consumer, or a store failure.
    pub async fn create_key(
        &self,
        caller: &Caller,
        consumer_id: &str,
    ) -> Result<CreatedKey, ApiError> {
        caller.require_admin()?;
        let secret = format!(
            "{KEY_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<32>())
        );
        let key = ApiKey {
            id: new_id("key"),
            consumer_id: consumer_id.to_owned(),
            prefix: secret.chars().take(KEY_PREFIX_LEN).collect(),
            created_at: now(),
            last_used_at: None,
        };
        self.store.create_key(&key, &key_hash(&secret)).await?;
        tracing::info!(consumer = %key.consumer_id, key_id = %key.id, "API key created");
        Ok(CreatedKey { key, secret })
    }

    /// One page of a consumer's keys, oldest first.
    ///
    /// # Errors
    /// [`StoreError::Missing`] when there is no such consumer, or a store failure.
    pub async fn list_keys(
        &self,
        caller: &Caller,
        consumer_id: &str,
        page: &PageRequest,
    ) -> Result<Page<ApiKey>, ApiError> {
        caller.require_admin()?;
        let rows = self
            .store
            .list_keys(consumer_id, &page.after, page.limit.saturating_add(1))
            .await?;
        Ok(Page::from_rows(rows, page.limit, &page.after, |k| {
            k.id.clone()
        }))
    }

    /// Revokes a key: it stops working at once.
    ///
    /// # Errors
    /// [`StoreError::Missing`] or a store failure.
    pub async fn delete_key(
        &self,
        caller: &Caller,
        consumer_id: &str,
        key_id: &str,
    ) -> Result<(), ApiError> {
        caller.require_admin()?;
        match self.store.delete_key(consumer_id, key_id).await {
            Ok(()) => {}
            Err(StoreError::Missing(_)) => return Err(StoreError::Missing("key").into()),
            Err(e) => return Err(e.into()),
        }
        tracing::info!(consumer = %consumer_id, key_id = %key_id, "API key revoked");
        Ok(())
    }
}
