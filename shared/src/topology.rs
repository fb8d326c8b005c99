//! The RabbitMQ topology, declared idempotently by every process at (re)connect.
//!
//! ```text
//! exchange {p}events (fanout) ─┬► queue {p}ingress (quorum) ─► dispatchers
//!                              └► queue {p}archive (quorum) ─► consumer-api recorder
//! queue {p}retry.<delay> (quorum, x-message-ttl = delay) ─DLX─► exchange {p}retry-ready (fanout)
//!                                                                ─► queue {p}redeliver ─► dispatchers
//! queue {p}attempts  one record per delivery attempt ─► consumer-api recorder
//! queue {p}dead      deliveries that will not be attempted again ─► consumer-api recorder
//! queue {p}invalid   AMQP messages that are not valid envelopes, with the reason in a header,
//!                    and poison messages past the ingress delivery limit
//! exchange {p}control (fanout) ─► one exclusive queue per dispatcher
//! ```
//!
//! Quorum queues throughout: replicated, and their dead-lettering is at-least-once. Tier
//! queues are named by their delay, so changing the schedule declares new queues instead of
//! failing on a changed argument; old tiers drain on their own.

use std::time::Duration;

use lapin::{
    Channel, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, ShortString},
};

/// Redeliveries past this count park a message from `ingress` or `redeliver` in `invalid` (poison messages:
/// a message that crashes or keeps failing its handling, not its endpoint).
pub const INGRESS_DELIVERY_LIMIT: i64 = 20;

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
    /// Copy of every event, for the consumer-api recorder (pull API, replay).
    pub archive: String,
    /// One record per delivery attempt, for the recorder.
    pub attempts: String,
    /// Where expired retry messages are dead-lettered to.
    pub retry_ready: String,
    /// Targeted deliveries (retries, replays, redrives) dispatchers consume.
    pub redeliver: String,
    prefix: String,
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
            archive: format!("{prefix}archive"),
            attempts: format!("{prefix}attempts"),
            retry_ready: format!("{prefix}retry-ready"),
            redeliver: format!("{prefix}redeliver"),
            prefix: prefix.to_owned(),
        }
    }

    /// The tier queue holding retries due after `delay`, e.g. `relay.retry.5m`.
    pub fn retry_tier(&self, delay: Duration) -> String {
        format!("{}retry.{}", self.prefix, tier_label(delay))
    }

    /// Declares the tier queue for `delay`: messages wait there `delay`, then go to `redeliver`.
    ///
    /// # Errors
    /// The broker refused the declaration.
    pub async fn declare_retry_tier(
        &self,
        channel: &Channel,
        delay: Duration,
    ) -> lapin::Result<lapin::Queue> {
        let name = self.retry_tier(delay);
        let mut args = quorum_args();
        let ttl_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
        args.insert(
            ShortString::from("x-message-ttl"),
            AMQPValue::LongLongInt(ttl_ms),
        );
        args.insert(
            ShortString::from("x-dead-letter-exchange"),
            AMQPValue::LongString(self.retry_ready.as_str().into()),
        );
        at_least_once_dead_lettering(&mut args);
        declare_queue(channel, &name, args).await
    }

    /// Declares everything (idempotent: safe on every start and reconnect).
    ///
    /// # Errors
    /// The broker refused a declaration, e.g. an existing queue has other arguments.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        for exchange in [&self.events, &self.control, &self.retry_ready] {
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
        let mut consumed_args = quorum_args();
        consumed_args.insert(
            ShortString::from("x-delivery-limit"),
            AMQPValue::LongLongInt(INGRESS_DELIVERY_LIMIT),
        );
        consumed_args.insert(
            ShortString::from("x-dead-letter-exchange"),
            AMQPValue::LongString("".into()),
        );
        consumed_args.insert(
            ShortString::from("x-dead-letter-routing-key"),
            AMQPValue::LongString(self.invalid.as_str().into()),
        );
        at_least_once_dead_lettering(&mut consumed_args);
        // Both queues dispatchers consume park a message whose handling keeps failing.
        declare_queue(channel, &self.ingress, consumed_args.clone()).await?;
        declare_queue(channel, &self.redeliver, consumed_args).await?;
        for queue in [&self.invalid, &self.dead, &self.archive, &self.attempts] {
            declare_queue(channel, queue, quorum_args()).await?;
        }
        for (queue, exchange) in [
            (&self.ingress, &self.events),
            (&self.archive, &self.events),
            (&self.redeliver, &self.retry_ready),
        ] {
            channel
                .queue_bind(
                    queue.as_str().into(),
                    exchange.as_str().into(),
                    "".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }
}

fn quorum_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString("quorum".into()),
    );
    args
}

/// Dead-letter without losing messages: the broker keeps a message until the target queue
/// confirmed it (needs `reject-publish` overflow).
fn at_least_once_dead_lettering(args: &mut FieldTable) {
    args.insert(
        ShortString::from("x-dead-letter-strategy"),
        AMQPValue::LongString("at-least-once".into()),
    );
    args.insert(
        ShortString::from("x-overflow"),
        AMQPValue::LongString("reject-publish".into()),
    );
}

/// `5s`, `5m`, `2h`, `1500ms`: a queue-name-friendly rendering of a delay.
pub fn tier_label(delay: Duration) -> String {
    let ms = delay.as_millis();
    match ms {
        ms if ms % 3_600_000 == 0 && ms > 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 && ms > 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 && ms > 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

async fn declare_queue(
    channel: &Channel,
    name: &str,
    args: FieldTable,
) -> lapin::Result<lapin::Queue> {
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
        assert_eq!(t.retry_tier(Duration::from_secs(300)), "acme.retry.5m");
    }

    #[test]
    fn tier_labels_use_the_largest_whole_unit() {
        let label = |ms| tier_label(Duration::from_millis(ms));
        assert_eq!(label(5_000), "5s");
        assert_eq!(label(1_800_000), "30m");
        assert_eq!(label(36_000_000), "10h");
        assert_eq!(label(1_500), "1500ms");
        assert_eq!(label(90_000), "90s");
    }
}
