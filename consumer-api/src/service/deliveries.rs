//! What happened to deliveries: the delivery log of a subscription (every attempt), the dead
//! letters (deliveries that ran out of attempts) and their redrive — the same message put
//! back on a fresh retry schedule for its subscription. A redriven dead letter stays listed
//! (with `redriven_at`) as history; if it dies again, a new one is recorded. Also the
//! retention: records older than `api.retention` are pruned.

use std::time::Duration;

use relay_shared::attempt::AttemptOutcome;
use serde::Deserialize;
use utoipa::openapi::{
    RefOr, Schema,
    schema::{AdditionalProperties, ArrayBuilder, ObjectBuilder, OneOfBuilder, Type},
};

use super::{Caller, Page, PageRequest, Service, seq_cursor, subscriptions::OwnedSubscription};
use crate::{
    clock::{duration_ms, now, now_ms},
    error::{ApiError, FieldError},
    store::{
        StoreError,
        records::{DeadLetter, Pruned, StoredAttempt},
    },
};

/// Most ids in one redrive by ids.
pub const MAX_IDS: usize = 100;
/// Most dead letters redriven by one request by subscription.
pub const MAX_REDRIVE: usize = 10_000;

/// Which dead letters to redrive (`POST /v1/dead-letters/redrive`): exactly one of `ids` or
/// `subscription_id` (its dead letters not redriven yet). A field is given or absent, never
/// `null`: the document's `oneOf` says the same.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedriveRequest {
    /// Dead letters to redrive (1 to 100).
    #[serde(default, deserialize_with = "present")]
    pub ids: Option<Vec<String>>,
    /// Redrive every pending dead letter of this subscription.
    #[serde(default, deserialize_with = "present")]
    pub subscription_id: Option<String>,
}

/// A field that is there has a value: `null` is refused (absent is `None` by `default`).
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

impl utoipa::PartialSchema for RedriveRequest {
    fn schema() -> RefOr<Schema> {
        let ids = ArrayBuilder::new()
            .items(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .min_length(Some(1)),
            )
            .min_items(Some(1))
            .max_items(Some(MAX_IDS))
            .description(Some("Dead letters to redrive."));
        let subscription_id = ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .description(Some(
                "Redrive every pending dead letter of this subscription.",
            ));
        let only = |name: &str, schema: RefOr<Schema>| {
            ObjectBuilder::new()
                .property(name, schema)
                .required(name)
                .additional_properties(Some(AdditionalProperties::FreeForm(false)))
        };
        OneOfBuilder::new()
            .item(only("ids", ids.into()))
            .item(only("subscription_id", subscription_id.into()))
            .description(Some(
                "Exactly one of `ids` (1 to 100 dead letters) or `subscription_id` (its \
                 dead letters not redriven yet).",
            ))
            .into()
    }
}

impl utoipa::ToSchema for RedriveRequest {}

impl Service {
    /// One page of a subscription's delivery log, optionally of one outcome.
    ///
    /// # Errors
    /// A [`FieldError`] on `after`, or a store failure.
    pub async fn attempts(
        &self,
        subscription: &OwnedSubscription,
        outcome: Option<AttemptOutcome>,
        page: &PageRequest,
    ) -> Result<Page<StoredAttempt>, ApiError> {
        let after = seq_cursor(&page.after)?;
        let rows = self
            .store
            .attempts(
                &subscription.id,
                outcome,
                after,
                page.limit.saturating_add(1),
            )
            .await?;
        Ok(Page::from_rows(rows, page.limit, &page.after, |a| {
            a.seq.to_string()
        }))
    }

    /// One page of dead letters: a consumer's own subscriptions' only, optionally of one
    /// subscription.
    ///
    /// # Errors
    /// A [`FieldError`] on `after`, or a store failure.
    pub async fn dead_letters(
        &self,
        caller: &Caller,
        subscription_id: Option<&str>,
        page: &PageRequest,
    ) -> Result<Page<DeadLetter>, ApiError> {
        let after = seq_cursor(&page.after)?;
        let rows = self
            .store
            .dead_letters(
                subscription_id,
                caller.consumer(),
                after,
                page.limit.saturating_add(1),
            )
            .await?;
        Ok(Page::from_rows(rows, page.limit, &page.after, |d| {
            d.seq.to_string()
        }))
    }

    async fn redrive_one(&self, letter: &DeadLetter) -> Result<(), ApiError> {
        self.publisher
            .redeliver(
                letter.letter.body.as_bytes(),
                &letter.letter.subscription_id,
                &letter.letter.event_id,
            )
            .await?;
        self.store.mark_redriven(&letter.letter.id, &now()).await?;
        tracing::info!(
            dead_letter_id = %letter.letter.id,
            subscription_id = %letter.letter.subscription_id,
            event_id = %letter.letter.event_id,
            "dead letter redriven"
        );
        Ok(())
    }

    /// Puts dead letters back on a fresh retry schedule; returns how many.
    ///
    /// # Errors
    /// A [`FieldError`] unless exactly one of `ids` or `subscription_id` is given,
    /// [`StoreError::Missing`] for a dead letter the caller may not see, [`ApiError::Broker`]
    /// when the broker does not take them (those already sent stay redriven), or a store
    /// failure.
    pub async fn redrive(
        &self,
        caller: &Caller,
        request: RedriveRequest,
    ) -> Result<usize, ApiError> {
        let mut redriven = 0;
        match (request.ids, request.subscription_id) {
            (Some(ids), None) => {
                if ids.is_empty() || ids.len() > MAX_IDS {
                    return Err(FieldError::new(
                        "ids",
                        format!("ids must list 1 to {MAX_IDS} dead letters"),
                    )
                    .into());
                }
                let mut letters = Vec::with_capacity(ids.len());
                for id in &ids {
                    let letter = self.store.dead_letter(id).await?;
                    // The subscription must still exist and belong to the caller.
                    self.subscription(caller, &letter.letter.subscription_id)
                        .await
                        .map_err(|_| ApiError::Store(StoreError::Missing("dead letter")))?;
                    letters.push(letter);
                }
                for letter in &letters {
                    self.redrive_one(letter).await?;
                    redriven += 1;
                }
            }
            (None, Some(subscription_id)) => {
                let subscription = self.owned_subscription(caller, &subscription_id).await?;
                while redriven < MAX_REDRIVE {
                    let batch = self
                        .store
                        .pending_dead_letters(&subscription.id, 500)
                        .await?;
                    if batch.is_empty() {
                        break;
                    }
                    for letter in &batch {
                        self.redrive_one(letter).await?;
                        redriven += 1;
                    }
                }
            }
            _ => {
                return Err(FieldError::new(
                    "ids",
                    "give either ids or subscription_id (exactly one)",
                )
                .into());
            }
        }
        Ok(redriven)
    }

    /// Removes the records (events, attempts, dead letters) older than `retention`.
    ///
    /// # Errors
    /// A store failure.
    pub async fn prune(&self, retention: Duration) -> Result<Pruned, StoreError> {
        self.store
            .prune(now_ms().saturating_sub(duration_ms(retention)))
            .await
    }
}
