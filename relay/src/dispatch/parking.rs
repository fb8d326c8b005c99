//! Durable hand-offs from the dispatcher: malformed messages to `invalid`, failed or deferred
//! deliveries to a retry tier, deliveries that will not be attempted again to `dead`. Each is
//! a confirmed publish of a [`relay_shared::wire`] message: the event is acked only after the
//! broker holds its hand-off.

use std::time::Duration;

use lapin::{BasicProperties, Channel};
use relay_shared::{
    amqp::{self, AmqpError},
    topology::Topology,
    wire::{Handoff, Invalid},
};

const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// Publishes hand-offs on a confirm channel.
#[derive(Debug, Clone)]
pub struct Parking {
    channel: Channel,
    topology: Topology,
}

impl Parking {
    /// Hand-offs on `channel`, which must be in confirm mode.
    pub fn new(channel: Channel, topology: &Topology) -> Self {
        Self {
            channel,
            topology: topology.clone(),
        }
    }

    /// Whether the channel (and so the session the worker's messages came on) is open.
    pub fn is_open(&self) -> bool {
        self.channel.status().connected()
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
        let message = Invalid {
            body: body.to_vec(),
            properties: properties.clone(),
            reason: reason.to_owned(),
        };
        self.publish(&self.topology.invalid, message.encode()).await
    }

    /// Schedules the delivery to wait in the tier of `tier` (for `ttl`, jitter included),
    /// then come back through `redeliver`.
    ///
    /// # Errors
    /// The broker did not confirm; the event must not be acked.
    pub async fn retry(
        &self,
        handoff: &Handoff,
        tier: Duration,
        ttl: Duration,
    ) -> Result<(), AmqpError> {
        let queue = self.topology.retry_tier(tier);
        self.publish(&queue, handoff.encode(Some(ttl))).await
    }

    /// Parks a delivery that will not be attempted again.
    ///
    /// # Errors
    /// The broker did not confirm; the event must not be acked.
    pub async fn dead(&self, handoff: &Handoff) -> Result<(), AmqpError> {
        self.publish(&self.topology.dead, handoff.encode(None))
            .await
    }

    async fn publish(&self, queue: &str, message: amqp::Outgoing) -> Result<(), AmqpError> {
        amqp::publish_confirmed(&self.channel, "", queue, message, CONFIRM_TIMEOUT).await
    }
}
