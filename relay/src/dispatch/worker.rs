//! The consumers: `ingress` (new events, delivered to every matching subscription at once)
//! and `redeliver` (retries, replays and redrives, each for one subscription). Every delivery
//! ends in a 2xx or a durable hand-off (retry tier, dead letters) before its event is acked, so
//! a crash anywhere redelivers instead of losing; a panic while handling is nacked back, and
//! the queues' delivery limit parks a message that keeps failing.

use std::{
    panic::AssertUnwindSafe,
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::{FutureExt, StreamExt, future::join_all};
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
    attempt::{AttemptOutcome, AttemptRecord},
    envelope::rfc3339,
    session::{self as broker, Session},
    shutdown::Shutdown,
    topology::Topology,
    trace::TraceParent,
    wire::{Event, Handoff},
};
use time::OffsetDateTime;
use tokio::{
    sync::{Semaphore, watch},
    task::JoinSet,
};

use super::{
    attempt_log::AttemptLog,
    client::{AttemptError, WebhookClient},
    directory::{Directory, Route},
    isolation::{Admission, Isolation},
    metrics::DispatchMetrics,
    parking::Parking,
    retry::{NextStep, RetryPolicy},
    sync::DirectoryClient,
};

/// What every delivery task needs.
#[derive(Debug)]
pub struct Worker {
    /// The subscription directory.
    pub directory: Arc<Directory>,
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
    pub isolation: Arc<Isolation>,
    /// Global cap on webhook requests in flight.
    pub inflight: Arc<Semaphore>,
    /// The delivery log feed.
    pub attempts: AttemptLog,
    /// How long in-flight work may take to finish at shutdown.
    pub grace: Duration,
}

/// This event's delivery to one subscription, `attempts` made so far, after `error`.
fn handoff(
    event: &Arc<Event>,
    subscription_id: &str,
    attempts: u32,
    error: Option<&AttemptError>,
) -> Handoff {
    Handoff {
        event: event.clone(),
        subscription_id: subscription_id.to_owned(),
        attempts,
        last_error: error.map(ToString::to_string),
        last_status: error.and_then(AttemptError::status),
    }
}

impl Worker {
    /// Consumes on every broker session until `shutdown`, then stops consuming and lets the
    /// in-flight events finish within the grace period; what is left is handed back unacked.
    pub async fn run(
        self: Arc<Self>,
        mut sessions: watch::Receiver<Option<Session>>,
        mut shutdown: Shutdown,
    ) {
        while let Some(session) = broker::next_session(&mut sessions, &mut shutdown).await {
            if let Err(e) = self.clone().consume(&session, &mut shutdown).await {
                tracing::warn!(error = %e, "consumers interrupted");
            }
            if !broker::await_replacement(&mut sessions, &mut shutdown).await {
                return;
            }
        }
    }

    async fn consume(
        self: Arc<Self>,
        session: &Session,
        shutdown: &mut Shutdown,
    ) -> Result<(), AmqpError> {
        let setup = session.create_channel().await?;
        for tier in self.retry.tiers() {
            self.topology.declare_retry_tier(&setup, tier).await?;
        }
        let _ = setup.close(200, "tiers declared".into()).await;
        let parking = Parking::new(amqp::confirm_channel(session).await?, &self.topology);
        let (ingress_channel, mut ingress) =
            self.subscribe(session, &self.topology.ingress).await?;
        let (redeliver_channel, mut redeliver) =
            self.subscribe(session, &self.topology.redeliver).await?;
        tracing::info!(prefetch = self.prefetch, "consuming ingress and redeliver");

        let mut tasks = JoinSet::new();
        let result = loop {
            tokio::select! {
                delivery = ingress.next() => match delivery {
                    Some(Ok(delivery)) => {
                        tasks.spawn(self.clone().settle(delivery, parking.clone(), Kind::Event));
                    }
                    Some(Err(e)) => break Err(e.into()),
                    None => break Ok(()),
                },
                delivery = redeliver.next() => match delivery {
                    Some(Ok(delivery)) => {
                        tasks.spawn(self.clone().settle(delivery, parking.clone(), Kind::Redelivery));
                    }
                    Some(Err(e)) => break Err(e.into()),
                    None => break Ok(()),
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                () = shutdown.wait() => break Ok(()),
            }
        };
        // Stop taking new work, then let what was started finish (or hand it back).
        for (channel, consumer) in [
            (&ingress_channel, &ingress),
            (&redeliver_channel, &redeliver),
        ] {
            let _ = channel
                .basic_cancel(consumer.tag(), BasicCancelOptions::default())
                .await;
        }
        let drained = tokio::time::timeout(self.grace, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                left = tasks.len(),
                "grace period over; unfinished events go back to the queue"
            );
            tasks.abort_all();
        }
        for channel in [&ingress_channel, &redeliver_channel] {
            let _ = channel.close(200, "dispatcher stopping".into()).await;
        }
        result
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

    /// Handles one delivery and acks it, or nacks it back (after a pause, not in a hot loop)
    /// when a hand-off failed or the handling panicked.
    async fn settle(self: Arc<Self>, delivery: Delivery, parking: Parking, kind: Kind) {
        let work = match kind {
            Kind::Event => self.handle_event(&delivery, &parking).boxed(),
            Kind::Redelivery => self.handle_redelivery(&delivery, &parking).boxed(),
        };
        let handled = AssertUnwindSafe(work).catch_unwind().await;
        let settled = match handled {
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
        };
        if let Err(e) = settled {
            tracing::warn!(error = %e, "could not settle a message; it will be redelivered");
        }
    }

    async fn handle_event(&self, delivery: &Delivery, parking: &Parking) -> Result<(), AmqpError> {
        let event = match Event::decode(&delivery.data, &delivery.properties) {
            Ok(event) => Arc::new(event),
            Err(e) => return self.park_invalid(delivery, parking, &e.to_string()).await,
        };
        if event.accepted_ms.is_none() && !delivery.redelivered {
            self.metrics.ingested.with_label_values(&["amqp"]).inc();
        }
        let routes = self.directory.matching(
            &event.envelope.event_type,
            event.envelope.consumer.as_deref(),
        );
        let outcomes = join_all(
            routes
                .iter()
                .map(|route| self.deliver(route, &event, 1, parking)),
        )
        .await;
        // Every subscription either succeeded or has its hand-off confirmed; otherwise the
        // whole event comes back (the successful ones then see it twice, with the same id).
        outcomes.into_iter().collect()
    }

    async fn handle_redelivery(
        &self,
        delivery: &Delivery,
        parking: &Parking,
    ) -> Result<(), AmqpError> {
        let Handoff {
            event,
            subscription_id,
            attempts: made,
            ..
        } = match Handoff::decode(&delivery.data, &delivery.properties) {
            Ok(handoff) => handoff,
            Err(e) => return self.park_invalid(delivery, parking, &e.to_string()).await,
        };
        match self.directory.get(&subscription_id) {
            Some(route) if route.enabled => self.deliver(&route, &event, made + 1, parking).await,
            gone => {
                // Deleted or disabled since: it gets nothing more.
                let why = if gone.is_some() {
                    "subscription disabled"
                } else {
                    "subscription deleted"
                };
                self.metrics
                    .deliveries
                    .with_label_values(&["disabled"])
                    .inc();
                self.log(
                    &event,
                    &subscription_id,
                    made + 1,
                    AttemptOutcome::Disabled,
                    Instant::now(),
                    None,
                    Some(why),
                );
                Ok(())
            }
        }
    }

    async fn park_invalid(
        &self,
        delivery: &Delivery,
        parking: &Parking,
        reason: &str,
    ) -> Result<(), AmqpError> {
        tracing::warn!(reason, "invalid message parked");
        self.metrics
            .rejected
            .with_label_values(&["invalid_amqp"])
            .inc();
        parking
            .invalid(&delivery.data, &delivery.properties, reason)
            .await
    }

    /// Delivers `event` to one subscription as attempt number `attempt`; `Ok` once it either
    /// succeeded or is durably handed off.
    async fn deliver(
        &self,
        route: &Route,
        event: &Arc<Event>,
        attempt: u32,
        parking: &Parking,
    ) -> Result<(), AmqpError> {
        let started = Instant::now();
        let permit = match (
            self.isolation.admit(&route.id).await,
            self.retry.defer_tier(),
        ) {
            (Admission::Go(permit), _) => Some(permit),
            // With no retry tier configured there is nowhere to defer to: attempt regardless.
            (_, None) => None,
            (refused, Some(tier)) => {
                let (label, outcome) = match refused {
                    Admission::CircuitOpen => ("circuit_open", AttemptOutcome::CircuitOpen),
                    _ => ("deferred", AttemptOutcome::Deferred),
                };
                // Not an attempt: the number of the next try stays the same.
                parking
                    .retry(
                        &handoff(event, &route.id, attempt - 1, None),
                        tier,
                        self.retry.ttl_with_jitter(tier),
                    )
                    .await?;
                self.metrics.deliveries.with_label_values(&[label]).inc();
                self.log(event, &route.id, attempt, outcome, started, None, None);
                return Ok(());
            }
        };
        let result = self.attempt(route, event, attempt).await;
        drop(permit);
        self.isolation
            .record(&route.id, result.is_ok(), started.elapsed());
        match result {
            Ok(status) => {
                self.metrics
                    .deliveries
                    .with_label_values(&["success"])
                    .inc();
                if let Some(ms) = event.accepted_ms {
                    self.metrics
                        .event_to_delivery_seconds
                        .observe(seconds_since(ms));
                }
                self.log(
                    event,
                    &route.id,
                    attempt,
                    AttemptOutcome::Success,
                    started,
                    Some(status),
                    None,
                );
                Ok(())
            }
            Err(error) => {
                self.after_failure(route, event, attempt, error, started, parking)
                    .await
            }
        }
    }

    async fn after_failure(
        &self,
        route: &Route,
        event: &Arc<Event>,
        attempt: u32,
        error: AttemptError,
        started: Instant,
        parking: &Parking,
    ) -> Result<(), AmqpError> {
        let handoff = handoff(event, &route.id, attempt, Some(&error));
        if error.is_gone() {
            let reason = format!("endpoint answered 410 Gone to event {}", event.envelope.id);
            match self.directory_client.disable(&route.id, &reason).await {
                Ok(()) => {
                    tracing::warn!(subscription_id = %route.id, "subscription disabled: endpoint answered 410 Gone");
                    self.metrics
                        .deliveries
                        .with_label_values(&["disabled"])
                        .inc();
                    self.log(
                        event,
                        &route.id,
                        attempt,
                        AttemptOutcome::Disabled,
                        started,
                        error.status(),
                        Some(&error.to_string()),
                    );
                    return Ok(());
                }
                Err(e) => {
                    tracing::error!(subscription_id = %route.id, error = %e, "cannot disable a subscription that answered 410");
                }
            }
        }
        let next = match &error {
            // A refused destination stays refused: no point in retrying.
            AttemptError::Refused(_) => NextStep::Dead,
            _ => self.retry.after_failure(attempt, error.retry_after()),
        };
        match next {
            NextStep::Retry { tier, .. } => {
                let ttl = self.retry.ttl_with_jitter(tier);
                parking.retry(&handoff, tier, ttl).await?;
                self.metrics
                    .deliveries
                    .with_label_values(&["retry_scheduled"])
                    .inc();
                self.metrics
                    .retries_scheduled
                    .with_label_values(&[&relay_shared::topology::tier_label(tier)])
                    .inc();
                let due = OffsetDateTime::now_utc() + ttl;
                let mut record = self.record(
                    event,
                    &route.id,
                    attempt,
                    AttemptOutcome::RetryScheduled,
                    started,
                    error.status(),
                    Some(&error.to_string()),
                );
                record.response_excerpt = error.excerpt().map(str::to_owned);
                record.next_attempt_at = Some(rfc3339(due));
                self.attempts.record(record);
            }
            NextStep::Dead => {
                parking.dead(&handoff).await?;
                self.metrics.deliveries.with_label_values(&["dead"]).inc();
                tracing::warn!(event_id = %event.envelope.id, subscription_id = %route.id, attempt, error = %error, "delivery dead-lettered");
                let mut record = self.record(
                    event,
                    &route.id,
                    attempt,
                    AttemptOutcome::Dead,
                    started,
                    error.status(),
                    Some(&error.to_string()),
                );
                record.response_excerpt = error.excerpt().map(str::to_owned);
                self.attempts.record(record);
            }
        }
        Ok(())
    }

    /// One HTTP attempt, within the global in-flight cap.
    async fn attempt(
        &self,
        route: &Route,
        event: &Event,
        attempt: u32,
    ) -> Result<u16, AttemptError> {
        let trace_id = event.trace.as_ref().map(TraceParent::trace_id_hex);
        let span = tracing::info_span!("delivery", event_id = %event.envelope.id, subscription_id = %route.id, attempt, trace_id);
        let _enter = span.enter();
        let _slot = self.inflight.acquire().await;
        self.metrics.inflight.inc();
        let started = Instant::now();
        let outcome = self
            .client
            .deliver(
                route,
                &event.envelope.id,
                event.body.clone(),
                event.trace.as_ref(),
            )
            .await;
        self.metrics.inflight.dec();
        self.metrics
            .attempt_seconds
            .observe(started.elapsed().as_secs_f64());
        if let Err(error) = &outcome {
            self.metrics.deliveries.with_label_values(&["failed"]).inc();
            tracing::warn!(event_id = %event.envelope.id, subscription_id = %route.id, attempt, status = error.status(), error = %error, "delivery attempt failed");
        }
        outcome
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        event: &Event,
        subscription_id: &str,
        attempt: u32,
        outcome: AttemptOutcome,
        started: Instant,
        status: Option<u16>,
        error: Option<&str>,
    ) -> AttemptRecord {
        let elapsed = started.elapsed();
        AttemptRecord {
            event_id: event.envelope.id.clone(),
            subscription_id: subscription_id.to_owned(),
            attempt,
            at: rfc3339(OffsetDateTime::now_utc() - elapsed),
            outcome,
            status,
            latency_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            error: error.map(str::to_owned),
            response_excerpt: None,
            next_attempt_at: None,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn log(
        &self,
        event: &Event,
        subscription_id: &str,
        attempt: u32,
        outcome: AttemptOutcome,
        started: Instant,
        status: Option<u16>,
        error: Option<&str>,
    ) {
        self.attempts.record(self.record(
            event,
            subscription_id,
            attempt,
            outcome,
            started,
            status,
            error,
        ));
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Event,
    Redelivery,
}

fn seconds_since(unix_ms: i64) -> f64 {
    let now_ms = OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    #[allow(clippy::cast_precision_loss)]
    let seconds = (now_ms - i128::from(unix_ms)).max(0) as f64 / 1000.0;
    seconds
}
