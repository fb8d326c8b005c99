//! The RabbitMQ topology, declared idempotently by every process at (re)connect.
//!
//! ```text
//! exchange {p}events (fanout) ─► queue {p}ingress (quorum) ─► dispatchers
//! queue {p}invalid   AMQP messages that are not valid envelopes, with the reason in a header
//! queue {p}dead      deliveries that will not be attempted again
//! exchange {p}control (fanout) ─► one exclusive queue per dispatcher
//! ```

use lapin::{
    Channel, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, ShortString},
};

/// Header ingest stamps with the acceptance time in Unix milliseconds; latency is measured from it.
pub const HEADER_ACCEPTED_MS: &str = "x-relay-accepted-ms";
/// Header carrying why a message was parked in `invalid`.
pub const HEADER_INVALID_REASON: &str = "x-relay-invalid-reason";
/// Header carrying the subscription a dead-lettered delivery was for.
pub const HEADER_SUBSCRIPTION: &str = "x-relay-subscription-id";
/// Header carrying how many attempts were made.
pub const HEADER_ATTEMPTS: &str = "x-relay-attempts";
/// Header carrying the last error of a dead-lettered delivery.
pub const HEADER_LAST_ERROR: &str = "x-relay-last-error";
/// Header carrying the last HTTP status of a dead-lettered delivery (absent if none).
pub const HEADER_LAST_STATUS: &str = "x-relay-last-status";

/// Names of every exchange and queue, derived from the configured prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Fanout exchange producers publish events to.
    pub events: String,
    /// Quorum queue dispatchers consume.
    pub ingress: String,
    /// Where malformed AMQP messages are parked.
    pub invalid: String,
    /// Where deliveries end when they will not be attempted again.
    pub dead: String,
    /// Fanout exchange of subscription changes.
    pub control: String,
}

impl Topology {
    /// Names under `prefix`, e.g. `relay.`.
    pub fn new(prefix: &str) -> Self {
        Self {
            events: format!("{prefix}events"),
            ingress: format!("{prefix}ingress"),
            invalid: format!("{prefix}invalid"),
            dead: format!("{prefix}dead"),
            control: format!("{prefix}control"),
        }
    }

    /// Declares everything (idempotent: safe on every start and reconnect).
    ///
    /// # Errors
    /// The broker refused a declaration, e.g. an existing queue has other arguments.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        for exchange in [&self.events, &self.control] {
            channel
                .exchange_declare(
                    exchange.as_str().into(),
                    ExchangeKind::Fanout,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
        }
        for queue in [&self.ingress, &self.invalid, &self.dead] {
            declare_quorum_queue(channel, queue).await?;
        }
        channel
            .queue_bind(
                self.ingress.as_str().into(),
                self.events.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
    }
}

/// A durable, replicated (quorum) queue.
async fn declare_quorum_queue(channel: &Channel, name: &str) -> lapin::Result<()> {
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_prefix() {
        let t = Topology::new("acme.");
        assert_eq!(t.events, "acme.events");
        assert_eq!(t.ingress, "acme.ingress");
        assert_eq!(t.control, "acme.control");
    }
}
