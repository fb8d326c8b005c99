//! Messages consumer-api puts on the broker besides control notifications: targeted
//! redeliveries (replay, redrive, test pings) to `retry-ready`, which dispatchers deliver to
//! one subscription with a fresh retry schedule, and operational events (such as
//! `relay.subscription.disabled`) to `events`, delivered like any other event.

use std::{sync::Arc, time::Duration};

use lapin::{Channel, types::FieldTable};
use relay_shared::{
    amqp,
    envelope::Envelope,
    topology::{
        HEADER_ACCEPTED_MS, HEADER_ATTEMPTS, HEADER_EVENT_ID, HEADER_SUBSCRIPTION, Topology,
    },
};
use tokio::sync::watch;

use crate::{error::ApiError, store::now_ms};

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

    /// Asks the dispatchers to deliver `body` (an envelope) to `subscription_id` only, on a
    /// fresh retry schedule.
    ///
    /// # Errors
    /// [`ApiError::Broker`] when the broker did not confirm it.
    pub async fn redeliver(
        &self,
        body: &[u8],
        subscription_id: &str,
        event_id: &str,
    ) -> Result<(), ApiError> {
        let channel = self.channel()?;
        let mut headers = FieldTable::default();
        amqp::header(&mut headers, HEADER_SUBSCRIPTION, subscription_id);
        amqp::header(&mut headers, HEADER_EVENT_ID, event_id);
        amqp::header(&mut headers, HEADER_ATTEMPTS, "0");
        let properties = amqp::persistent_json()
            .with_message_id(event_id.into())
            .with_headers(headers);
        amqp::publish_confirmed(
            &channel,
            &self.topology.retry_ready,
            "",
            body,
            properties,
            PUBLISH_TIMEOUT,
        )
        .await
        .map_err(|e| ApiError::Broker(e.to_string()))
    }

    /// Publishes an event through Relay, as ingest would (confirmed, persistent, stamped
    /// with its acceptance time).
    ///
    /// # Errors
    /// [`ApiError::Broker`] when the broker did not confirm it.
    pub async fn publish_event(&self, envelope: &Envelope) -> Result<(), ApiError> {
        let channel = self.channel()?;
        let mut headers = FieldTable::default();
        headers.insert(
            HEADER_ACCEPTED_MS.into(),
            lapin::types::AMQPValue::LongLongInt(now_ms()),
        );
        let properties = amqp::persistent_json()
            .with_message_id(envelope.id.as_str().into())
            .with_headers(headers);
        amqp::publish_confirmed(
            &channel,
            &self.topology.events,
            "",
            &envelope.to_json(),
            properties,
            PUBLISH_TIMEOUT,
        )
        .await
        .map_err(|e| ApiError::Broker(e.to_string()))
    }
}
