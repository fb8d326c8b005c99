//! Durable hand-offs from the dispatcher: malformed messages to `invalid`, failed or deferred
//! deliveries to a retry tier, deliveries that will not be attempted again to `dead`. Each is
//! a confirmed publish: the event is acked only after the broker holds its hand-off.

use std::time::Duration;

use lapin::{
    BasicProperties, Channel,
    types::{AMQPValue, FieldTable, ShortString},
};
use relay_shared::{
    amqp::{self, AmqpError, header},
    topology::{
        HEADER_ACCEPTED_MS, HEADER_ATTEMPTS, HEADER_EVENT_ID, HEADER_INVALID_REASON,
        HEADER_LAST_ERROR, HEADER_LAST_STATUS, HEADER_SUBSCRIPTION, Topology,
    },
    trace::TraceParent,
};

use super::client::AttemptError;

const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// Publishes hand-offs on a confirm channel.
#[derive(Debug, Clone)]
pub struct Parking {
    channel: Channel,
    topology: Topology,
    invalid: String,
    dead: String,
}

/// A delivery of one event to one subscription, as it travels through retry tiers.
#[derive(Debug, Clone, Copy)]
pub struct Handoff<'a> {
    /// The event id.
    pub event_id: &'a str,
    /// The subscription it is for.
    pub subscription_id: &'a str,
    /// Attempts made so far.
    pub attempts: u32,
    /// The envelope JSON.
    pub body: &'a [u8],
    /// Acceptance time (unix ms), carried along for the latency metric.
    pub accepted_ms: Option<i64>,
    /// The producer's trace, carried along so retries stay in it.
    pub trace: Option<&'a TraceParent>,
}

impl Parking {
    /// Hand-offs on `channel`, which must be in confirm mode.
    pub fn new(channel: Channel, topology: &Topology) -> Self {
        Self {
            channel,
            topology: topology.clone(),
            invalid: topology.invalid.clone(),
            dead: topology.dead.clone(),
        }
    }

    /// Parks an AMQP message that is not a valid envelope, keeping its body and properties.
    ///
    /// # Errors
    /// The broker did not confirm; the message must not be acked.
    pub async fn invalid(
        &self,
        body: &[u8],
        properties: &BasicProperties,
        reason: &str,
    ) -> Result<(), AmqpError> {
        let mut headers = properties.headers().clone().unwrap_or_default();
        header(&mut headers, HEADER_INVALID_REASON, reason);
        let properties = properties
            .clone()
            .with_headers(headers)
            .with_delivery_mode(2);
        amqp::publish_confirmed(
            &self.channel,
            "",
            &self.invalid,
            body,
            properties,
            CONFIRM_TIMEOUT,
        )
        .await
    }

    /// Schedules the delivery to wait in the tier of `tier` (for `ttl`, jitter included),
    /// then come back through `redeliver`.
    ///
    /// # Errors
    /// The broker did not confirm; the event must not be acked.
    pub async fn retry(
        &self,
        handoff: Handoff<'_>,
        tier: Duration,
        ttl: Duration,
        error: Option<&AttemptError>,
    ) -> Result<(), AmqpError> {
        let mut headers = handoff_headers(handoff, error);
        if let Some(ms) = handoff.accepted_ms {
            headers.insert(
                ShortString::from(HEADER_ACCEPTED_MS),
                AMQPValue::LongLongInt(ms),
            );
        }
        if let Some(trace) = handoff.trace {
            relay_shared::trace::to_amqp_headers(trace, &mut headers);
        }
        let properties = amqp::persistent_json()
            .with_message_id(handoff.event_id.into())
            .with_expiration(ttl.as_millis().to_string().into())
            .with_headers(headers);
        let queue = self.topology.retry_tier(tier);
        amqp::publish_confirmed(
            &self.channel,
            "",
            &queue,
            handoff.body,
            properties,
            CONFIRM_TIMEOUT,
        )
        .await
    }

    /// Parks a delivery that will not be attempted again.
    ///
    /// # Errors
    /// The broker did not confirm; the event must not be acked.
    pub async fn dead(&self, handoff: Handoff<'_>, error: &AttemptError) -> Result<(), AmqpError> {
        let properties = amqp::persistent_json()
            .with_message_id(handoff.event_id.into())
            .with_headers(handoff_headers(handoff, Some(error)));
        amqp::publish_confirmed(
            &self.channel,
            "",
            &self.dead,
            handoff.body,
            properties,
            CONFIRM_TIMEOUT,
        )
        .await
    }
}

fn handoff_headers(handoff: Handoff<'_>, error: Option<&AttemptError>) -> FieldTable {
    let mut headers = FieldTable::default();
    header(&mut headers, HEADER_EVENT_ID, handoff.event_id);
    header(&mut headers, HEADER_SUBSCRIPTION, handoff.subscription_id);
    header(&mut headers, HEADER_ATTEMPTS, handoff.attempts.to_string());
    if let Some(error) = error {
        header(&mut headers, HEADER_LAST_ERROR, error.to_string());
        if let Some(status) = error.status() {
            header(&mut headers, HEADER_LAST_STATUS, status.to_string());
        }
    }
    headers
}
