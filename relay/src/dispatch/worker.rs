//! The consumers of `ingress` or its shards (new events, delivered to every matching
//! subscription at once) and `redeliver` (retries, replays and redrives, each for one
//! subscription), as
//! consume → decode → decide → execute → settle. This file is the broker side:
//!
//! - **consume**: one channel per queue, prefetch as the bound; every message is a task on the
//!   dispatcher's [`TaskTracker`].
//! - **decode → decide → execute**: [`super::delivery`] (one message's deliveries, each ending
//!   in one [`super::outcome::Outcome`]).
//! - **settle**: ack once every subscription of the event has its outcome; nack (after a
//!   pause) when a hand-off failed or the handling panicked, so nothing is lost.
//!
//! A lost channel does not wait for its tasks: the consumers subscribe again on the next
//! session at once, and the old tasks finish on their own, record their outcomes and fail
//! to ack (the broker redelivers those messages).

use std::{panic::AssertUnwindSafe, sync::Arc, time::Duration};

use futures_util::{
    FutureExt, StreamExt,
    stream::{self, select_all},
};
use lapin::{
    Channel, Consumer,
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    },
    types::FieldTable,
};
use relay_shared::{
    amqp::{self, AmqpError},
    event_schema::SchemaCache,
    ops::Readiness,
    session::{self as broker, Session},
    shutdown::Shutdown,
    topology::Topology,
};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use super::{
    admission::AdmissionControl, attempt_log::AttemptLog, capacity::Lanes, client::WebhookClient,
    delivery::Work, directory::Directory, metrics::DispatchMetrics, ordered_lanes::OrderedLanes,
    parking::Parking, retry::RetryPolicy, sync::DirectoryClient,
};

/// Readiness condition: every consumer (each ingress shard and `redeliver`) is consuming.
pub const READY_CONSUMERS: &str = "consumers";

/// How long an ack or nack may take (a nack includes its 1 s pause).
const SETTLE_BOUND: Duration = Duration::from_secs(5);

/// What every delivery task needs.
#[derive(Debug)]
pub struct Worker {
    /// The subscription directory.
    pub directory: Arc<Directory>,
    /// The event-type catalogue, for events producers published straight over AMQP.
    pub schemas: Arc<SchemaCache>,
    /// consumer-api, to disable a subscription that answered 410.
    pub directory_client: DirectoryClient,
    /// The webhook client.
    pub client: WebhookClient,
    /// Metrics.
    pub metrics: DispatchMetrics,
    /// Queue and exchange names.
    pub topology: Topology,
    /// AMQP prefetch of each consumer.
    pub prefetch: u16,
    /// The retry schedule.
    pub retry: RetryPolicy,
    /// Per-subscription caps and circuit breakers.
    pub admission: Arc<AdmissionControl>,
    /// Global cap on webhook requests in flight, in two lanes.
    pub lanes: Arc<Lanes>,
    /// The delivery log feed.
    pub attempts: AttemptLog,
    /// The confirm channel hand-offs are published on, kept open across sessions and nacks.
    pub handoff_channels: watch::Receiver<Option<Channel>>,
    /// Every delivery task, of this session and of lost ones.
    pub tasks: TaskTracker,
    /// `consumers` is ready only while every consumer runs.
    pub readiness: Readiness,
    /// Lanes of `ordering: key` subscriptions.
    pub ordered_lanes: Arc<OrderedLanes>,
    /// Longest an ordered delivery holds its key by retrying in place (below the broker's
    /// `consumer_timeout`); then it is dead-lettered and the lane moves on.
    pub ordered_hold: Duration,
}

/// Which queue a message came from.
#[derive(Debug, Clone, Copy)]
pub(super) enum Kind {
    Event,
    Redelivery,
}

impl Worker {
    /// Consumes on every broker session until `shutdown`, then stops consuming; the caller
    /// drains [`Worker::tasks`].
    pub async fn run(
        self: Arc<Self>,
        mut sessions: watch::Receiver<Option<Session>>,
        mut shutdown: Shutdown,
    ) {
        self.readiness
            .not_ready(READY_CONSUMERS, "waiting for the broker");
        while let Some(session) = broker::next_session(&mut sessions, &mut shutdown).await {
            if let Err(e) = self.clone().consume(&session, &mut shutdown).await {
                self.readiness
                    .not_ready(READY_CONSUMERS, format!("consumers interrupted: {e}"));
                tracing::warn!(error = %e, "consumers interrupted; subscribing again");
            }
            if !broker::await_replacement(&mut sessions, &mut shutdown).await {
                break;
            }
        }
        self.readiness.not_ready(READY_CONSUMERS, "shutting down");
    }

    /// Consumes until shutdown or until the session's channels fail, and returns at once
    /// either way: the tasks it started go on under [`Worker::tasks`], each holding its
    /// channel open until its message is settled.
    async fn consume(
        self: Arc<Self>,
        session: &Session,
        shutdown: &mut Shutdown,
    ) -> Result<(), AmqpError> {
        let Some(opened) = shutdown.unless_stopped(self.open(session)).await else {
            return Ok(());
        };
        let (parking, subscribed) = opened?;
        let queues: Vec<String> = subscribed
            .iter()
            .map(|(_, c)| c.queue().to_string())
            .collect();
        let redelivery = subscribed.len() - 1;
        // One stream of (which consumer, delivery); a consumer's end is a `None` of its own.
        let mut deliveries = select_all(subscribed.iter().enumerate().map(|(i, (_, consumer))| {
            consumer
                .clone()
                .map(move |delivery| (i, Some(delivery)))
                .chain(stream::once(async move { (i, None) }))
                .boxed()
        }));
        self.readiness.ready(READY_CONSUMERS);
        tracing::info!(prefetch = self.prefetch, queues = ?queues, "consuming ingress and redeliver");
        let result = loop {
            let (i, delivery) = tokio::select! {
                next = deliveries.next() => next.unwrap_or((redelivery, None)),
                () = shutdown.wait() => break Ok(()),
            };
            let kind = if i == redelivery {
                Kind::Redelivery
            } else {
                Kind::Event
            };
            match delivery {
                Some(Ok(delivery)) => {
                    // Places in the ordered lanes are taken here, in the order received.
                    let work = self.place(kind, &delivery);
                    let task = self.clone().settle(delivery, work, parking.clone());
                    let channel = subscribed[i].0.clone();
                    self.tasks.spawn(async move {
                        task.await;
                        // Closed (when the last clone goes) only once its message is settled.
                        drop(channel);
                    });
                }
                Some(Err(e)) => break Err(e.into()),
                // The broker cancelled the consumer (e.g. the queue was deleted).
                None => break Ok(()),
            }
        };
        let why = if shutdown.is_triggered() {
            "shutting down"
        } else {
            "consumer lost"
        };
        self.readiness.not_ready(READY_CONSUMERS, why);
        for (channel, consumer) in &subscribed {
            let cancel = channel.basic_cancel(consumer.tag(), BasicCancelOptions::default());
            let _ = tokio::time::timeout(amqp::CLOSE_BOUND, cancel).await;
        }
        result
    }

    /// Declares the retry tiers and subscribes to every ingress
    /// shard (one queue unless sharded), then `redeliver`, each on its own channel.
    async fn open(
        &self,
        session: &Session,
    ) -> Result<(Parking, Vec<(Channel, Consumer)>), AmqpError> {
        let setup = session.create_channel().await?;
        for tier in self.retry.tiers() {
            self.topology.declare_retry_tier(&setup, tier).await?;
        }
        amqp::close_channel(&setup, "tiers declared").await;
        let parking = Parking::new(
            self.handoff_channels.clone(),
            session.clone(),
            &self.topology,
        );
        let mut queues = self.topology.ingress_queues();
        queues.push(self.topology.redeliver.clone());
        let mut subscribed = Vec::with_capacity(queues.len());
        for queue in &queues {
            subscribed.push(self.subscribe(session, queue).await?);
        }
        Ok((parking, subscribed))
    }

    async fn subscribe(
        &self,
        session: &Session,
        queue: &str,
    ) -> Result<(Channel, Consumer), AmqpError> {
        let channel = session.create_channel().await?;
        channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok((channel, consumer))
    }

    /// Handles one message and acks it, or nacks it back (after a pause, not in a hot loop)
    /// when a hand-off failed or the handling panicked.
    async fn settle(self: Arc<Self>, delivery: Delivery, work: Work, parking: Parking) {
        let handled = AssertUnwindSafe(self.handle(&delivery, &parking, work))
            .catch_unwind()
            .await;
        let settle = async {
            match handled {
                Ok(Ok(())) => delivery.acker.ack(BasicAckOptions::default()).await,
                outcome => {
                    if outcome.is_err() {
                        tracing::error!("handling a message panicked; it goes back to the queue");
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let requeue = BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    };
                    delivery.acker.nack(requeue).await
                }
            }
        };
        // An ack on the channel of a connection that died may never complete (the frame waits
        // for an I/O loop that has ended) and would hold the drain for its whole grace; that
        // message is redelivered by the broker either way.
        match tokio::time::timeout(SETTLE_BOUND, settle).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "could not settle a message; it will be redelivered");
            }
            Err(_) => tracing::debug!("settling a message timed out; it will be redelivered"),
        }
    }
}
