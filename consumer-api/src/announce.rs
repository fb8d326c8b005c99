//! Announcing Relay's own events through Relay: `relay.endpoint.disabled` (and, for one
//! release, its former name), `relay.endpoint.recovered` and `relay.message.exhausted`, each
//! an ordinary event on `relay.events` (confirmed, persistent) naming the consumer it is
//! about, so the dispatchers route it like any other (operators' subscriptions receive every
//! consumer's, a tenant's only its own: [`relay_shared::operational::reaches`]).
//!
//! Each fact is announced by the one process that commits it: the service for a disabling,
//! the recorder (whose feeds are competing consumers) for a dead letter, and for a recovery
//! the recorder whose row update claimed it. A failed announcement is logged, never
//! retried: the fact is committed either way and listed by the API. Ids are derived from the
//! fact where it has a stable name, so announcing it again carries the same `webhook-id`.

use relay_shared::{
    envelope::Envelope,
    operational::{self, EndpointDisabled, EndpointRecovered, MessageExhausted},
};
use serde::Serialize;
use serde_json::{Value, value::RawValue};

use crate::{
    clock::{ms_rfc3339, now},
    publisher::Publisher,
    store::{
        Store, StoreError, Subscription,
        records::{NewDeadLetter, Recovery},
    },
};

/// Publishes operational events.
#[derive(Debug, Clone)]
pub struct Announcer {
    publisher: Publisher,
    store: Store,
}

impl Announcer {
    /// Announces over `publisher`, looking subscriptions up in `store`.
    pub fn new(publisher: Publisher, store: Store) -> Self {
        Self { publisher, store }
    }

    /// `subscription` was disabled for `reason` (at its current revision).
    pub async fn disabled(&self, subscription: &Subscription, reason: &str) {
        let data = EndpointDisabled {
            subscription_id: subscription.id.clone(),
            consumer: subscription.consumer.clone(),
            url: subscription.url.clone(),
            reason: reason.to_owned(),
        };
        let revision = subscription.revision.to_string();
        // The new name, and the old one beside it for one release (each its own id, so a
        // receiver subscribed to both deduplicates neither away).
        for event_type in [
            operational::ENDPOINT_DISABLED,
            operational::SUBSCRIPTION_DISABLED,
        ] {
            let id =
                operational::derived_id("disabled", &[&subscription.id, &revision, event_type]);
            self.announce(event_type, id, subscription.consumer.as_deref(), &data)
                .await;
        }
    }

    /// Each subscription's circuit closed after being seen open.
    pub async fn recovered(&self, recoveries: &[Recovery]) {
        for recovery in recoveries {
            let Some(subscription) = self.subscription(&recovery.subscription_id).await else {
                continue;
            };
            let opened = recovery.circuit_opened_ms.to_string();
            let id = operational::derived_id("recovered", &[&subscription.id, &opened]);
            let data = EndpointRecovered {
                subscription_id: subscription.id.clone(),
                consumer: subscription.consumer.clone(),
                url: subscription.url.clone(),
                circuit_opened_at: ms_rfc3339(recovery.circuit_opened_ms),
                recovered_at: ms_rfc3339(recovery.recovered_ms),
            };
            self.announce(
                operational::ENDPOINT_RECOVERED,
                id,
                subscription.consumer.as_deref(),
                &data,
            )
            .await;
        }
    }

    /// Each delivery was dead-lettered. Not for events of Relay's own types: an operator
    /// endpoint failing its `relay.*` deliveries would otherwise feed itself.
    pub async fn exhausted(&self, letters: &[NewDeadLetter]) {
        for letter in letters {
            let envelope: Value = serde_json::from_str(&letter.body).unwrap_or_default();
            let event_type = envelope
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if operational::is_reserved(event_type) {
                continue;
            }
            let Some(subscription) = self.subscription(&letter.subscription_id).await else {
                continue;
            };
            let data = MessageExhausted {
                dead_letter_id: letter.id.clone(),
                event_id: letter.event_id.clone(),
                event_type: event_type.to_owned(),
                subscription_id: subscription.id.clone(),
                consumer: subscription.consumer.clone(),
                url: subscription.url.clone(),
                attempts: u32::try_from(letter.attempts).unwrap_or(u32::MAX),
                last_error: letter.last_error.clone(),
                dead_at: letter.dead_at.clone(),
            };
            let id = operational::derived_id("exhausted", &[&letter.id]);
            self.announce(
                operational::MESSAGE_EXHAUSTED,
                id,
                subscription.consumer.as_deref(),
                &data,
            )
            .await;
        }
    }

    /// The subscription, if it still exists (one deleted meanwhile has nobody to tell).
    async fn subscription(&self, id: &str) -> Option<Subscription> {
        match self.store.get(id).await {
            Ok(subscription) => Some(subscription),
            Err(StoreError::NotFound) => None,
            Err(e) => {
                tracing::error!(subscription_id = %id, error = %e, "cannot announce: subscription unreadable");
                None
            }
        }
    }

    async fn announce(
        &self,
        event_type: &str,
        id: String,
        consumer: Option<&str>,
        data: &impl Serialize,
    ) {
        // Structs of strings and numbers always serialise.
        let data = serde_json::to_string(data)
            .ok()
            .and_then(|d| RawValue::from_string(d).ok());
        let Some(data) = data else { return };
        let envelope = Envelope {
            id,
            event_type: event_type.to_owned(),
            occurred_at: now(),
            consumer: consumer.map(str::to_owned),
            data,
            ordering_key: None,
        };
        match self.publisher.publish_event(&envelope).await {
            Ok(()) => {
                tracing::info!(event_id = %envelope.id, event_type, consumer, "operational event announced");
            }
            Err(e) => {
                tracing::error!(event_id = %envelope.id, event_type, consumer, error = %e, "operational event not announced");
            }
        }
    }
}
