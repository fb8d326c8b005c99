//! Durable hand-offs from the dispatcher: malformed messages to `invalid`, failed or deferred
//! deliveries to a retry tier, deliveries that will not be attempted again to `dead`. Each is
//! a confirmed publish of a [`relay_shared::wire`] message: the event is acked only after the
//! broker holds its hand-off.
//!
//! The publishing channel is the dispatcher's current confirm channel, not one of the session
//! the message came on: a channel the broker nacked on is replaced (see
//! [`relay_shared::amqp::publish_confirmed`]) without waiting for a new session.

use std::time::Duration;

use lapin::{BasicProperties, Channel};
use relay_shared::{
    amqp::{self, AmqpError},
    session::Session,
    topology::Topology,
    wire::{Handoff, Invalid},
};
use tokio::sync::watch;

const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// Publishes hand-offs of the messages of one session.
#[derive(Debug, Clone)]
pub struct Parking {
    channels: watch::Receiver<Option<Channel>>,
    session: Session,
    topology: Topology,
}

impl Parking {
    /// Hand-offs of messages that came on `session`, published on whichever confirm channel
    /// `channels` holds.
    pub fn new(
        channels: watch::Receiver<Option<Channel>>,
        session: Session,
        topology: &Topology,
    ) -> Self {
        Self {
            channels,
            session,
            topology: topology.clone(),
        }
    }

    /// Whether the session the messages came on is open (they can still be acked).
    pub fn is_open(&self) -> bool {
        self.session.status().connected()
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

    /// Publishes on an open channel, waiting for one (a replacement comes within 250 ms) for
    /// at most [`CONFIRM_TIMEOUT`] in all.
    async fn publish(&self, queue: &str, message: amqp::Outgoing) -> Result<(), AmqpError> {
        let publish = async {
            let channel = self
                .channels
                .clone()
                .wait_for(|c| c.as_ref().is_some_and(|c| c.status().connected()))
                .await
                .map_err(|_| AmqpError::SessionClosed)?
                .clone()
                .ok_or(AmqpError::SessionClosed)?;
            amqp::publish_confirmed(&channel, "", queue, message, CONFIRM_TIMEOUT).await
        };
        tokio::time::timeout(CONFIRM_TIMEOUT, publish)
            .await
            .unwrap_or(Err(AmqpError::Timeout(CONFIRM_TIMEOUT)))
    }
}
