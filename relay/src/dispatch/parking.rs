//! Durable hand-offs from the dispatcher: malformed messages to `invalid`, deliveries that
//! will not be attempted again to `dead`. Each is a confirmed publish: the event is acked on
//! `ingress` only after the broker holds its hand-off.

use std::time::Duration;

use lapin::{BasicProperties, Channel, types::FieldTable};
use relay_shared::{
    amqp::{self, AmqpError, header},
    topology::{
        HEADER_ATTEMPTS, HEADER_EVENT_ID, HEADER_INVALID_REASON, HEADER_LAST_ERROR,
        HEADER_LAST_STATUS, HEADER_SUBSCRIPTION, Topology,
    },
};

use super::client::AttemptError;

const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// Publishes hand-offs on a confirm channel.
#[derive(Debug, Clone)]
pub struct Parking {
    channel: Channel,
    invalid: String,
    dead: String,
}

impl Parking {
    /// Hand-offs on `channel`, which must be in confirm mode.
    pub fn new(channel: Channel, topology: &Topology) -> Self {
        Self {
            channel,
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

    /// Parks a delivery that will not be attempted again.
    ///
    /// # Errors
    /// The broker did not confirm; the event must not be acked.
    pub async fn dead(
        &self,
        event_id: &str,
        subscription_id: &str,
        attempts: u32,
        body: &[u8],
        error: &AttemptError,
    ) -> Result<(), AmqpError> {
        let mut headers = FieldTable::default();
        header(&mut headers, HEADER_EVENT_ID, event_id);
        header(&mut headers, HEADER_SUBSCRIPTION, subscription_id);
        header(&mut headers, HEADER_ATTEMPTS, attempts.to_string());
        header(&mut headers, HEADER_LAST_ERROR, error.to_string());
        if let Some(status) = error.status() {
            header(&mut headers, HEADER_LAST_STATUS, status.to_string());
        }
        let properties = amqp::persistent_json()
            .with_message_id(event_id.into())
            .with_headers(headers);
        amqp::publish_confirmed(
            &self.channel,
            "",
            &self.dead,
            body,
            properties,
            CONFIRM_TIMEOUT,
        )
        .await
    }
}
