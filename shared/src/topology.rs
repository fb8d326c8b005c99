//! The RabbitMQ topology, declared idempotently by every process at (re)connect.
//!
//! ```text
//! exchange {p}events (fanout) ─┬► queue {p}ingress (quorum) ─► dispatchers
//!                              └► queue {p}archive (quorum) ─► consumer-api recorder
//!   or, with `amqp.ingress_shards` = N > 1, instead of {p}ingress:
//!                              ─► exchange {p}ingress-shards (x-consistent-hash on the routing
//!                                 key, i.e. the ordering key) ─► queues {p}ingress.0 … {p}ingress.N-1
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
//!
//! Sharded ingress needs RabbitMQ's `rabbitmq_consistent_hash_exchange` plugin (shipped with
//! RabbitMQ, enabled by deploy/); one shard, the default, needs no plugin. The hash ring keeps
//! each routing key on one shard, so events with one ordering key stay in publish order.
//! Changing N is a drain-and-switch (docs/SCALING.md): queues of another N are not touched.
//!
//! With `amqp.ordered_ingress` the ingress queue(s) are single-active-consumer: one dispatcher
//! reads each at a time, in order, which `"ordering": "key"` subscriptions rely on.

use std::time::Duration;

use lapin::{
    Channel, ExchangeKind,
    options::{ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
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
    /// Quorum queue dispatchers consume (with one shard; see [`Topology::ingress_queues`]).
    pub ingress: String,
    /// Consistent-hash exchange from `events` to the shards, used with more than one shard.
    pub ingress_shards: String,
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
    shards: u16,
    single_active: bool,
}

impl Topology {
    /// Names under `prefix`, e.g. `relay.`.
    pub fn new(prefix: &str) -> Self {
        Self {
            events: format!("{prefix}events"),
            ingress: format!("{prefix}ingress"),
            ingress_shards: format!("{prefix}ingress-shards"),
            invalid: format!("{prefix}invalid"),
            dead: format!("{prefix}dead"),
            control: format!("{prefix}control"),
            archive: format!("{prefix}archive"),
            attempts: format!("{prefix}attempts"),
            retry_ready: format!("{prefix}retry-ready"),
            redeliver: format!("{prefix}redeliver"),
            prefix: prefix.to_owned(),
            shards: 1,
            single_active: false,
        }
    }

    /// The names under `amqp.prefix`, with `amqp.ingress_shards` ingress shards, single
    /// active consumer with `amqp.ordered_ingress`.
    pub fn from_settings(settings: &crate::config::AmqpSettings) -> Self {
        Self::new(&settings.prefix)
            .with_ingress_shards(settings.ingress_shards)
            .with_ordered_ingress(settings.ordered_ingress)
    }

    /// The same topology with the ingress queue(s) single-active-consumer (`ordered`) or not.
    #[must_use]
    pub fn with_ordered_ingress(mut self, ordered: bool) -> Self {
        self.single_active = ordered;
        self
    }

    /// The same names with `shards` ingress queues (1, or less, is the unsharded `ingress`).
    #[must_use]
    pub fn with_ingress_shards(mut self, shards: u16) -> Self {
        self.shards = shards.max(1);
        self
    }

    /// The queues dispatchers consume new events from: `ingress` alone, or `ingress.0` …
    /// `ingress.N-1` with N shards.
    pub fn ingress_queues(&self) -> Vec<String> {
        if self.shards == 1 {
            vec![self.ingress.clone()]
        } else {
            (0..self.shards)
                .map(|k| format!("{}.{k}", self.ingress))
                .collect()
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
        // The queues dispatchers consume park a message whose handling keeps failing.
        let mut ingress_args = consumed_args.clone();
        if self.single_active {
            // One reader per queue, so each ordering key is read in order by one dispatcher.
            ingress_args.insert(
                ShortString::from("x-single-active-consumer"),
                AMQPValue::Boolean(true),
            );
        }
        let ingress = self.ingress_queues();
        for queue in &ingress {
            declare_queue(channel, queue, ingress_args.clone()).await?;
        }
        declare_queue(channel, &self.redeliver, consumed_args).await?;
        for queue in [&self.invalid, &self.dead, &self.archive, &self.attempts] {
            declare_queue(channel, queue, quorum_args()).await?;
        }
        if self.shards > 1 {
            self.declare_shard_routing(channel, &ingress).await?;
        }
        let unsharded = (self.shards == 1).then_some((&self.ingress, &self.events));
        for (queue, exchange) in unsharded.into_iter().chain([
            (&self.archive, &self.events),
            (&self.redeliver, &self.retry_ready),
        ]) {
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

    /// `events` ─► `ingress-shards` (consistent hash of the routing key) ─► each shard, with
    /// equal weights.
    async fn declare_shard_routing(
        &self,
        channel: &Channel,
        shards: &[String],
    ) -> lapin::Result<()> {
        channel
            .exchange_declare(
                self.ingress_shards.as_str().into(),
                ExchangeKind::Custom("x-consistent-hash".into()),
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        // A fanout exchange passes the message's routing key on to the exchanges bound to it.
        channel
            .exchange_bind(
                self.ingress_shards.as_str().into(),
                self.events.as_str().into(),
                "".into(),
                ExchangeBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        for queue in shards {
            // With this exchange type, the binding key is the queue's weight on the ring.
            channel
                .queue_bind(
                    queue.as_str().into(),
                    self.ingress_shards.as_str().into(),
                    "1".into(),
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
        assert_eq!(t.ingress_queues(), ["acme.ingress"]);
    }

    #[test]
    fn shards_are_numbered_queues_and_one_shard_is_the_plain_queue() {
        let t = Topology::new("acme.").with_ingress_shards(3);
        assert_eq!(
            t.ingress_queues(),
            ["acme.ingress.0", "acme.ingress.1", "acme.ingress.2"]
        );
        assert_eq!(t.ingress_shards, "acme.ingress-shards");
        let one = Topology::new("acme.").with_ingress_shards(1);
        assert_eq!(one, Topology::new("acme."));
        assert_eq!(Topology::new("acme.").with_ingress_shards(0), one);
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
