//! Messages consumer-api puts on the broker besides control notifications: targeted
//! redeliveries (replay, redrive, test pings) to `retry-ready`, which dispatchers deliver to
//! one subscription with a fresh retry schedule, and operational events (such as
//! `relay.subscription.disabled`) to `events`, delivered like any other event.

use std::{sync::Arc, time::Duration};

use lapin::Channel;
use relay_shared::{
    amqp,
    envelope::Envelope,
    topology::Topology,
    wire::{Event, Handoff},
};
use tokio::sync::watch;

use crate::error::ApiError;

/// Longest wait for the broker's confirm of one message.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// Publishes redeliveries and operational events over the current confirm channel.
#[derive(Debug, Clone)]
pub struct Publisher {
    channel: watch::Receiver<Option<Channel>>,
    topology: Arc<Topology>,
}

impl Publisher {
    /// A publisher over whichever channel `channel` holds.
    pub fn new(channel: watch::Receiver<Option<Channel>>, topology: Topology) -> Self {
        Self {
            channel,
            topology: Arc::new(topology),
        }
    }

    fn channel(&self) -> Result<Channel, ApiError> {
        self.channel
            .borrow()
            .clone()
            .ok_or_else(|| ApiError::Broker("not connected".into()))
    }

    /// Asks the dispatchers to deliver `body` (a stored envelope of event `event_id`) to
    /// `subscription_id` only, on a fresh retry schedule.
    ///
    /// # Errors
    /// [`ApiError::Broker`] when `body` is not an envelope (a damaged store row) or the
    /// broker did not confirm it.
    pub async fn redeliver(
        &self,
        body: &[u8],
        subscription_id: &str,
        event_id: &str,
    ) -> Result<(), ApiError> {
        let message = Self::handoff(body, subscription_id, event_id)?;
        self.publish(&self.topology.retry_ready, "", message).await
    }

    /// [`Publisher::redeliver`] of each `(body, event_id)` of `events`, in order, with one
    /// round trip to the broker for the lot. Returns how many, from the first, the broker
    /// confirmed, and the error that stopped the rest.
    pub async fn redeliver_all(
        &self,
        events: &[(&[u8], &str)],
        subscription_id: &str,
    ) -> (usize, Option<ApiError>) {
        let mut messages = Vec::with_capacity(events.len());
        let mut damaged = None;
        for (body, event_id) in events {
            match Self::handoff(body, subscription_id, event_id) {
                Ok(message) => messages.push(message),
                Err(e) => {
                    damaged = Some(e);
                    break;
                }
            }
        }
        let channel = match self.channel() {
            Ok(channel) => channel,
            Err(e) => return (0, Some(e)),
        };
        let (confirmed, error) = amqp::publish_all_confirmed(
            &channel,
            &self.topology.retry_ready,
            "",
            messages,
            PUBLISH_TIMEOUT,
        )
        .await;
        let error = error.map(|e| ApiError::Broker(e.to_string()));
        (confirmed, error.or(damaged))
    }

    /// How many messages wait in `redeliver` for a dispatcher (a passive declare); `None`
    /// when the broker does not say.
    pub async fn redeliver_backlog(&self) -> Option<u32> {
        let channel = self.channel().ok()?;
        let queue = amqp::passive_declare(&channel, &self.topology.redeliver)
            .await
            .ok()?;
        Some(queue.message_count())
    }

    fn handoff(
        body: &[u8],
        subscription_id: &str,
        event_id: &str,
    ) -> Result<amqp::Outgoing, ApiError> {
        let event = Event::stored(body, event_id).map_err(|e| ApiError::Broker(e.to_string()))?;
        let handoff = Handoff {
            event: Arc::new(event),
            subscription_id: subscription_id.to_owned(),
            attempts: 0,
            last_error: None,
            last_status: None,
            fresh: false,
        };
        Ok(handoff.encode(None))
    }

    /// Publishes an event through Relay, as ingest does (confirmed, persistent, stamped with
    /// its acceptance time).
    ///
    /// # Errors
    /// [`ApiError::Broker`] when the broker did not confirm it.
    pub async fn publish_event(&self, envelope: &Envelope) -> Result<(), ApiError> {
        let event = Event::accepted(envelope.clone(), None);
        // The routing key places the event on its ingress shard, as ingest does.
        let key = envelope.ordering_key();
        self.publish(&self.topology.events, key, event.encode())
            .await
    }

    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        message: amqp::Outgoing,
    ) -> Result<(), ApiError> {
        let channel = self.channel()?;
        amqp::publish_confirmed(&channel, exchange, routing_key, message, PUBLISH_TIMEOUT)
            .await
            .map_err(|e| ApiError::Broker(e.to_string()))
    }
}
