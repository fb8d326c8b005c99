//! Targeted deliveries to one subscription: a replay re-sends the recorded events of a time
//! window that the subscription matches (its topic filters, the consumer rule and its payload
//! filter), and a test sends it a `relay.ping`. Both go through the `retry-ready` exchange,
//! so dispatchers deliver them to that subscription only, signed and with the full retry
//! schedule. A replay is a job: [`Service::start_replay`] queues it and answers at once;
//! [`super::replay_runner`] runs it in the background.

use std::time::Duration;

use relay_shared::{
    envelope::Envelope,
    filter::TopicFilter,
    ids::new_id,
    operational,
    payload_filter::{PayloadFilter, Subject},
};
use serde::Deserialize;
use serde_json::{Value, value::RawValue};

use super::{Caller, Service, events::matches_any, subscriptions::OwnedSubscription};
use crate::{
    clock::{duration_ms, now, now_ms, rfc3339_ms},
    error::{ApiError, FieldError},
    store::{
        StoreError, Subscription,
        records::{EventScope, StoredEvent},
        replays::ReplayJob,
    },
};

/// Type of the test event.
pub const PING_TYPE: &str = "relay.ping";

/// A window to replay (`POST /v1/subscriptions/{id}/replay`), on the acceptance time.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Start of the window (inclusive), RFC 3339.
    #[schema(format = DateTime)]
    pub since: String,
    /// End of the window (exclusive), RFC 3339, after `since` (else 422); now when absent.
    #[serde(default)]
    #[schema(format = DateTime)]
    pub until: Option<String>,
}

impl ReplayRequest {
    /// The window in Unix milliseconds, `[since, until)`.
    ///
    /// # Errors
    /// [`ApiError::Invalid`] on `since` or `until` when one is not an RFC 3339 time;
    /// [`ApiError::unprocessable`] (422, on `until`) when `until` is not after `since`: both are
    /// well-formed, the window is empty.
    pub fn window(&self) -> Result<(i64, i64), ApiError> {
        let since = rfc3339_ms(&self.since)
            .ok_or_else(|| FieldError::new("since", "since must be an RFC 3339 time"))?;
        let until = match &self.until {
            None => now_ms() + 1,
            Some(until) => rfc3339_ms(until)
                .ok_or_else(|| FieldError::new("until", "until must be an RFC 3339 time"))?,
        };
        if until <= since {
            return Err(ApiError::unprocessable(FieldError::new(
                "until",
                "until must be after since",
            )));
        }
        Ok((since, until))
    }
}

/// Which recorded events a replay to one subscription re-sends: those its topic filters, the
/// consumer rule and its payload filter let through, as live delivery would.
#[derive(Debug)]
pub struct Wanted {
    filters: Vec<TopicFilter>,
    payload: Option<PayloadFilter>,
    owner: Option<String>,
}

impl Wanted {
    /// The rule of `subscription` as it is now.
    ///
    /// # Errors
    /// Why its stored payload filter no longer parses (it was checked when saved).
    pub fn of(subscription: &Subscription) -> Result<Self, String> {
        let payload = subscription
            .filter
            .as_ref()
            .map(PayloadFilter::parse)
            .transpose()
            .map_err(|e| format!("the subscription's stored payload filter is unusable: {e}"))?;
        Ok(Self {
            // Checked when saved; one that no longer parses matches nothing.
            filters: subscription
                .event_types
                .iter()
                .filter_map(|f| TopicFilter::parse(f).ok())
                .collect(),
            payload,
            owner: subscription.consumer.clone(),
        })
    }

    /// The events a query may return: an operator's subscription also receives Relay's
    /// events about every consumer.
    pub fn scope(&self) -> EventScope<'_> {
        self.owner
            .as_deref()
            .map_or(EventScope::All, EventScope::ConsumerOrUnnamed)
    }

    /// Whether `row` is re-sent.
    pub fn wants(&self, row: &StoredEvent) -> bool {
        let event = &row.event;
        let consumer = event.consumer.as_deref();
        matches_any(&self.filters, &event.event_type)
            && operational::addressed(&event.event_type, consumer, self.owner.as_deref())
            && self.payload.as_ref().is_none_or(|filter| {
                let envelope: Value = serde_json::from_str(&event.body).unwrap_or_default();
                filter.matches(&Subject {
                    event_type: &event.event_type,
                    consumer,
                    data: envelope.get("data").unwrap_or(&Value::Null),
                })
            })
    }
}

impl Service {
    /// Starts a replay job of the window `request` names to `subscription`; returns it,
    /// queued. A background task runs it ([`runner`](super::replay_runner)); follow it with
    /// [`Service::replay_job`].
    ///
    /// # Errors
    /// A [`FieldError`] on the window, [`ApiError::ReplayRunning`] when the subscription has
    /// a job that has not ended, or a store failure.
    pub async fn start_replay(
        &self,
        subscription: &OwnedSubscription,
        request: &ReplayRequest,
    ) -> Result<ReplayJob, ApiError> {
        let window = request.window()?;
        let job = ReplayJob::queued(new_id("rpl"), subscription.id.clone(), window, now());
        if let Some(running) = self.store.create_replay(&job).await? {
            return Err(ApiError::ReplayRunning(running));
        }
        self.replays_queued.notify_one();
        tracing::info!(subscription_id = %job.subscription_id, replay_id = %job.id, "replay queued");
        Ok(job)
    }

    /// Replay job `id`, if `caller` may see its subscription.
    ///
    /// # Errors
    /// [`StoreError::Missing`] when there is none (or it is another consumer's), or a store
    /// failure.
    pub async fn replay_job(&self, caller: &Caller, id: &str) -> Result<ReplayJob, ApiError> {
        let (job, owner) = self.store.replay_job(id).await?;
        if caller.may_see(owner.as_deref()) {
            Ok(job)
        } else {
            Err(StoreError::Missing("replay").into())
        }
    }

    /// Deletes the replay jobs that ended longer than `retention` ago; returns how many.
    ///
    /// # Errors
    /// A store failure.
    pub async fn prune_replays(&self, retention: Duration) -> Result<u64, StoreError> {
        self.store
            .prune_replays(now_ms().saturating_sub(duration_ms(retention)))
            .await
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
