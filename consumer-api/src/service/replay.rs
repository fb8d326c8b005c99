//! Targeted deliveries to one subscription: a replay re-sends the recorded events of a time
//! window that the subscription matches (its topic filters, the consumer rule and its payload
//! filter), and a test sends it a `relay.ping`. Both go through the `retry-ready` exchange, so dispatchers deliver
//! them to that subscription only, signed and with the full retry schedule.

use relay_shared::{
    envelope::Envelope,
    filter::TopicFilter,
    ids::new_id,
    operational,
    payload_filter::{PayloadFilter, Subject},
};
use serde::Deserialize;
use serde_json::{Value, value::RawValue};

use super::{Service, events::matches_any, subscriptions::OwnedSubscription};
use crate::{
    clock::{now, now_ms, rfc3339_ms},
    error::{ApiError, FieldError},
    store::records::EventScope,
};

/// Type of the test event.
pub const PING_TYPE: &str = "relay.ping";

/// A window to replay (`POST /v1/subscriptions/{id}/replay`), on the acceptance time.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Start of the window (inclusive), RFC 3339.
    pub since: String,
    /// End of the window (exclusive), RFC 3339; now when absent.
    #[serde(default)]
    pub until: Option<String>,
}

impl ReplayRequest {
    /// The window in Unix milliseconds, `[since, until)`.
    ///
    /// # Errors
    /// A [`FieldError`] on `since` or `until`.
    pub fn window(&self) -> Result<(i64, i64), FieldError> {
        let since = rfc3339_ms(&self.since)
            .ok_or_else(|| FieldError::new("since", "since must be an RFC 3339 time"))?;
        let until = match &self.until {
            None => now_ms() + 1,
            Some(until) => rfc3339_ms(until)
                .ok_or_else(|| FieldError::new("until", "until must be an RFC 3339 time"))?,
        };
        if until <= since {
            return Err(FieldError::new("until", "until must be after since"));
        }
        Ok((since, until))
    }
}

/// Whether a recorded event (its envelope as `body`) passes a payload filter.
fn passes(filter: &PayloadFilter, event_type: &str, consumer: Option<&str>, body: &str) -> bool {
    let envelope: Value = serde_json::from_str(body).unwrap_or_default();
    filter.matches(&Subject {
        event_type,
        consumer,
        data: envelope.get("data").unwrap_or(&Value::Null),
    })
}

impl Service {
    /// Re-sends the recorded events of the window that `subscription` matches; returns how
    /// many.
    ///
    /// # Errors
    /// A [`FieldError`] on the window, [`ApiError::Broker`] when the broker does not take
    /// them, or a store failure.
    pub async fn replay(
        &self,
        subscription: &OwnedSubscription,
        request: &ReplayRequest,
    ) -> Result<u64, ApiError> {
        let window = request.window()?;
        let filters: Vec<TopicFilter> = subscription
            .event_types
            .iter()
            .filter_map(|f| TopicFilter::parse(f).ok())
            .collect();
        // Checked when saved; a stored filter that no longer parses replays nothing.
        let payload = match subscription.filter.as_ref().map(PayloadFilter::parse) {
            None => None,
            Some(Ok(filter)) => Some(filter),
            Some(Err(e)) => {
                tracing::error!(subscription_id = %subscription.id, error = %e, "stored payload filter unusable; nothing replayed");
                return Ok(0);
            }
        };
        let owner = subscription.consumer.as_deref();
        // An operator's subscription also receives Relay's events about every consumer.
        let scope = owner.map_or(EventScope::All, EventScope::ConsumerOrUnnamed);
        let mut cursor = 0;
        let mut replayed = 0;
        loop {
            let rows = self
                .store
                .events_in_window(cursor, scope, window, 500)
                .await?;
            for row in &rows {
                cursor = row.seq;
                let event = &row.event;
                let wanted = matches_any(&filters, &event.event_type)
                    && operational::addressed(&event.event_type, event.consumer.as_deref(), owner)
                    && payload.as_ref().is_none_or(|p| {
                        passes(p, &event.event_type, event.consumer.as_deref(), &event.body)
                    });
                if wanted {
                    self.publisher
                        .redeliver(row.event.body.as_bytes(), &subscription.id, &row.event.id)
                        .await?;
                    replayed += 1;
                }
            }
            if rows.len() < 500 {
                break;
            }
        }
        tracing::info!(subscription_id = %subscription.id, replayed, "events replayed");
        Ok(replayed)
    }

    /// Sends a `relay.ping` event (fresh id) to `subscription` only; returns its id.
    ///
    /// # Errors
    /// [`ApiError::Broker`] when the broker does not take it.
    pub async fn ping(&self, subscription: &OwnedSubscription) -> Result<String, ApiError> {
        let data = serde_json::json!({ "subscription_id": subscription.id }).to_string();
        let envelope = Envelope {
            id: new_id("evt"),
            event_type: PING_TYPE.to_owned(),
            occurred_at: now(),
            consumer: subscription.consumer.clone(),
            data: RawValue::from_string(data).map_err(|e| ApiError::Broker(e.to_string()))?,
            ordering_key: None,
        };
        self.publisher
            .redeliver(&envelope.to_json(), &subscription.id, &envelope.id)
            .await?;
        Ok(envelope.id)
    }
}
