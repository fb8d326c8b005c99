//! The consumers of `ingress` (new events, delivered to every matching subscription at once)
//! and `redeliver` (retries, replays and redrives, each for one subscription), as
//! consume → decode → decide → execute → settle:
//!
//! - **consume**: one channel per queue, prefetch as the bound; every message is a task on the
//!   dispatcher's [`TaskTracker`].
//! - **decode**: [`relay_shared::wire`]; a message that is not one is parked in `invalid`.
//! - **decide**: admission ([`super::admission`]), the request ([`super::client`]), then the
//!   pure [`step::decide`].
//! - **execute**: the step's hand-off (retry tier, `dead`) or 410 disable, then its
//!   [`Outcome`] (metric, log line, attempt record, once).
//! - **settle**: ack once every subscription of the event has its outcome; nack (after a
//!   pause) when a hand-off failed or the handling panicked, so nothing is lost.
//!
//! A lost channel does not wait for its tasks: the consumers subscribe again on the next
//! session at once, and the old tasks finish on their own, record their outcomes and fail
//! to ack (the broker redelivers those messages).

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
    ops::Readiness,
    session::{self as broker, Session},
    shutdown::Shutdown,
    topology::Topology,
    trace::TraceParent,
    wire::{Event, Handoff},
};
use time::OffsetDateTime;
use tokio::sync::{Semaphore, watch};
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use super::{
    admission::{Admission, AdmissionControl},
    attempt_log::AttemptLog,
    client::{AttemptError, WebhookClient},
    directory::{Directory, Route},
    metrics::DispatchMetrics,
    outcome::{Ending, Outcome},
    parking::Parking,
    retry::RetryPolicy,
    step::{self, Failure, Refusal, Step, Tried},
    sync::DirectoryClient,
};

/// Readiness condition: both consumers are consuming.
pub const READY_CONSUMERS: &str = "consumers";

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
    pub admission: Arc<AdmissionControl>,
    /// Global cap on webhook requests in flight.
    pub inflight: Arc<Semaphore>,
    /// The delivery log feed.
    pub attempts: AttemptLog,
    /// Every delivery task, of this session and of lost ones.
    pub tasks: TaskTracker,
    /// `consumers` is ready only while both consumers run.
    pub readiness: Readiness,
}

/// Which queue a message came from.
#[derive(Debug, Clone, Copy)]
enum Kind {
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
        self.readiness.ready(READY_CONSUMERS);
        tracing::info!(prefetch = self.prefetch, "consuming ingress and redeliver");
        let result = loop {
            let (delivery, kind, channel) = tokio::select! {
                delivery = ingress.next() => (delivery, Kind::Event, &ingress_channel),
                delivery = redeliver.next() => (delivery, Kind::Redelivery, &redeliver_channel),
                () = shutdown.wait() => break Ok(()),
            };
            match delivery {
                Some(Ok(delivery)) => {
                    let task = self.clone().settle(delivery, kind, parking.clone());
                    let channel = channel.clone();
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
        for (channel, consumer) in [
            (&ingress_channel, &ingress),
            (&redeliver_channel, &redeliver),
        ] {
            let _ = channel
                .basic_cancel(consumer.tag(), BasicCancelOptions::default())
                .await;
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

    /// Handles one message and acks it, or nacks it back (after a pause, not in a hot loop)
    /// when a hand-off failed or the handling panicked.
    async fn settle(self: Arc<Self>, delivery: Delivery, kind: Kind, parking: Parking) {
        let handled = AssertUnwindSafe(self.handle(&delivery, &parking, kind))
            .catch_unwind()
            .await;
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
            // Its channel is gone: the broker hands the message out again.
            tracing::debug!(error = %e, "could not settle a message; it will be redelivered");
        }
    }

    /// Decodes a message and delivers it to each subscription it is for; `Ok` once every
    /// one succeeded or is durably handed off.
    async fn handle(
        &self,
        delivery: &Delivery,
        parking: &Parking,
        kind: Kind,
    ) -> Result<(), AmqpError> {
        let (body, properties) = (&delivery.data, &delivery.properties);
        let (event, routes, attempt) = match kind {
            Kind::Event => match Event::decode(body, properties) {
                Ok(event) => {
                    if event.accepted_ms.is_none() && !delivery.redelivered {
                        self.metrics.ingested.with_label_values(&["amqp"]).inc();
                    }
                    let routes = self.directory.matching(
                        &event.envelope.event_type,
                        event.envelope.consumer.as_deref(),
                    );
                    (Arc::new(event), routes, 1)
                }
                Err(e) => return self.park_invalid(delivery, parking, &e.to_string()).await,
            },
            Kind::Redelivery => match Handoff::decode(body, properties) {
                Ok(handoff) => match self.directory.get(&handoff.subscription_id) {
                    Some(route) if route.enabled => {
                        (handoff.event, vec![route], handoff.attempts + 1)
                    }
                    gone => {
                        let why = if gone.is_some() {
                            "subscription disabled"
                        } else {
                            "subscription deleted"
                        };
                        let started = (OffsetDateTime::now_utc(), Instant::now());
                        self.outcome(
                            &handoff.event,
                            &handoff.subscription_id,
                            handoff.attempts + 1,
                            started,
                            None,
                            Ending::Disabled(why),
                        )
                        .report(&self.metrics, &self.attempts);
                        return Ok(());
                    }
                },
                Err(e) => return self.park_invalid(delivery, parking, &e.to_string()).await,
            },
        };
        // Every subscription either succeeded or has its hand-off confirmed; otherwise the
        // whole event comes back (the successful ones then see it twice, with the same id).
        join_all(
            routes
                .iter()
                .map(|route| self.deliver(route, &event, attempt, parking)),
        )
        .await
        .into_iter()
        .collect()
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

    /// Delivers `event` to one subscription as attempt number `attempt`: admit, send, decide,
    /// execute, report. `Ok` once it succeeded or is durably handed off.
    async fn deliver(
        &self,
        route: &Route,
        event: &Arc<Event>,
        attempt: u32,
        parking: &Parking,
    ) -> Result<(), AmqpError> {
        let trace_id = event.trace.as_ref().map(TraceParent::trace_id_hex);
        let span = tracing::info_span!("delivery", event_id = %event.envelope.id, subscription_id = %route.id, attempt, trace_id);
        async {
            let started = (OffsetDateTime::now_utc(), Instant::now());
            let refused = match self.admission.admit(&route.id).await {
                Admission::Go(permit) => Err(permit),
                Admission::CircuitOpen => Ok(Refusal::CircuitOpen),
                Admission::Failing => Ok(Refusal::Failing),
                Admission::Stalled => Ok(Refusal::Stalled),
                Admission::QueueFull => Ok(Refusal::QueueFull),
            };
            let deferral = refused
                .as_ref()
                .ok()
                .map(|reason| step::decide(Tried::Refused(*reason), attempt, &self.retry))
                .filter(|step| *step != Step::SendAnyway);
            let (step, result) = match deferral {
                Some(step) => (step, None),
                None => {
                    let (result, took) = self.send(route, event).await;
                    drop(refused);
                    self.admission.record(&route.id, result.is_ok(), took);
                    (
                        step::decide(Tried::Sent(&result), attempt, &self.retry),
                        Some(result),
                    )
                }
            };
            let error = result.as_ref().and_then(|r| r.as_ref().err());
            let ending = self
                .execute(step, route, event, attempt, error, parking)
                .await?;
            let mut outcome =
                self.outcome(event, &route.id, attempt, started, error.cloned(), ending);
            outcome.status = result.and_then(Result::ok);
            outcome.report(&self.metrics, &self.attempts);
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// One HTTP request, within the global in-flight cap; its result and its own duration.
    async fn send(&self, route: &Route, event: &Event) -> (Result<u16, AttemptError>, Duration) {
        let _slot = self.inflight.acquire().await;
        self.metrics.inflight.inc();
        let started = Instant::now();
        let result = self
            .client
            .deliver(
                route,
                &event.envelope.id,
                event.body.clone(),
                event.trace.as_ref(),
            )
            .await;
        self.metrics.inflight.dec();
        let took = started.elapsed();
        self.metrics.attempt_seconds.observe(took.as_secs_f64());
        (result, took)
    }

    /// Carries out `step`: the hand-off it needs, or the 410 disable.
    async fn execute(
        &self,
        step: Step,
        route: &Route,
        event: &Arc<Event>,
        attempt: u32,
        error: Option<&AttemptError>,
        parking: &Parking,
    ) -> Result<Ending, AmqpError> {
        let failure = match step {
            Step::Done | Step::SendAnyway => return Ok(Ending::Delivered),
            Step::Defer { tier, reason } => {
                // Not an attempt: the number of the next try stays the same.
                let handoff = handoff(event, &route.id, attempt - 1, None);
                parking
                    .retry(&handoff, tier, self.retry.ttl_with_jitter(tier))
                    .await?;
                return Ok(Ending::Deferred(reason));
            }
            Step::Disable { otherwise } => {
                let reason = format!("endpoint answered 410 Gone to event {}", event.envelope.id);
                match self.directory_client.disable(&route.id, &reason).await {
                    Ok(()) => return Ok(Ending::Disabled("endpoint answered 410 Gone")),
                    Err(e) => {
                        tracing::error!(subscription_id = %route.id, error = %e, "cannot disable a subscription that answered 410");
                        otherwise
                    }
                }
            }
            Step::Failed(failure) => failure,
        };
        let handoff = handoff(event, &route.id, attempt, error);
        match failure {
            Failure::Retry { tier } => {
                let ttl = self.retry.ttl_with_jitter(tier);
                parking.retry(&handoff, tier, ttl).await?;
                Ok(Ending::RetryScheduled {
                    tier,
                    due: OffsetDateTime::now_utc() + ttl,
                })
            }
            Failure::Dead(reason) => {
                parking.dead(&handoff).await?;
                Ok(Ending::Dead(reason))
            }
        }
    }

    fn outcome(
        &self,
        event: &Event,
        subscription_id: &str,
        attempt: u32,
        (started_at, started): (OffsetDateTime, Instant),
        error: Option<AttemptError>,
        ending: Ending,
    ) -> Outcome {
        Outcome {
            event_id: event.envelope.id.clone(),
            subscription_id: subscription_id.to_owned(),
            attempt,
            started_at,
            took: started.elapsed(),
            accepted_ms: event.accepted_ms,
            error,
            status: None,
            ending,
        }
    }
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
