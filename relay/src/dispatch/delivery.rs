//! One message's deliveries, the decode → decide → execute part of the worker: decode it
//! ([`relay_shared::wire`]; what is not a message is parked in `invalid`, and so is an event a
//! producer published straight over AMQP whose type is Relay's own (`relay.*`) or whose `data`
//! fails its type's schema: ingest checked HTTP events), route it ([`super::select`]: the
//! directory's type match, then payload filters), and for each subscription admit ([`super::admission`]) → send ([`super::client`]) → decide
//! ([`step::decide`]) → execute the step (hand-off or 410 disable) → report its [`Outcome`].
//! Consuming and settling are in [`super::worker`].

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::future::join_all;
use lapin::message::Delivery;
use relay_shared::{
    amqp::AmqpError,
    operational,
    problem::Problem,
    trace::TraceParent,
    wire::{Event, Handoff},
};
use time::OffsetDateTime;
use tracing::Instrument as _;

use super::{
    admission::Admission,
    capacity::Lane,
    client::{AttemptError, Exchange},
    directory::Route,
    ordered_lanes::{Ticket, Tickets},
    outcome::{Ending, Outcome},
    pacing::unix_ms_now,
    parking::Parking,
    select,
    step::{self, DeadReason, Failure, Refusal, Step, Tried},
    waiting_room::Pin,
    worker::{Kind, Worker},
};
use crate::{
    catalogue::{self, Checked},
    event_data::EventData,
};

/// The pause before an ordered delivery tries a failed hand-off again, holding its lane.
const ORDERED_HANDOFF_PAUSE: Duration = Duration::from_secs(1);

/// What the consume loop hands a message's task.
pub(super) enum Work {
    /// An `ingress` message, decoded by its task (no subscription is ordered).
    Event,
    /// An `ingress` message decoded on receipt, with its places in the ordered lanes.
    Placed(Received, Tickets),
    /// A `redeliver` message (a retry, replay or redrive of one subscription's delivery).
    Redelivery,
}

/// A decoded `ingress` message.
pub(super) enum Received {
    /// Not an event Relay accepts: parked in `invalid` for this reason.
    Invalid(String),
    /// The event and the subscriptions it goes to.
    Event(Arc<Event>, Vec<Arc<Route>>),
}

impl Worker {
    /// What the task of a message received from `kind` does. Called by the consume loop in
    /// receive order: while a subscription is `ordering: key`, an `ingress` message is decoded
    /// and routed here, so that its places in the ordered lanes follow the queue's order;
    /// otherwise (one atomic load) it is left to its task, in parallel.
    pub(super) fn place(&self, kind: Kind, delivery: &Delivery) -> Work {
        match kind {
            Kind::Redelivery => Work::Redelivery,
            Kind::Event if self.directory.has_ordered() => {
                let received = self.receive(delivery);
                let tickets = match &received {
                    Received::Event(event, routes) => self
                        .ordered_lanes
                        .tickets(routes, event.envelope.ordering_key()),
                    Received::Invalid(_) => Tickets::default(),
                };
                Work::Placed(received, tickets)
            }
            Kind::Event => Work::Event,
        }
    }

    /// Decodes an `ingress` message and routes its event.
    fn receive(&self, delivery: &Delivery) -> Received {
        let event = match Event::decode(&delivery.data, &delivery.properties) {
            Ok(event) => event,
            Err(e) => return Received::Invalid(e.to_string()),
        };
        let data = EventData::new(&event.envelope);
        match event.accepted_ms {
            Some(accepted_ms) => self.lanes.observe_fresh(unix_ms_now() - accepted_ms),
            // Not stamped by ingest: published straight over AMQP by a producer.
            None => {
                if let Some(reason) = self.refuse_from_producer(&event, &data) {
                    return Received::Invalid(reason);
                }
                if !delivery.redelivered {
                    self.metrics.ingested.with_label_values(&["amqp"]).inc();
                }
            }
        }
        let routes = select::routes(&self.directory, &event.envelope, &data);
        drop(data);
        Received::Event(Arc::new(event), routes)
    }

    /// Delivers a message to each subscription it is for; `Ok` once every one succeeded or
    /// is durably handed off.
    pub(super) async fn handle(
        &self,
        delivery: &Delivery,
        parking: &Parking,
        work: Work,
    ) -> Result<(), AmqpError> {
        let (received, mut tickets) = match work {
            Work::Event => (self.receive(delivery), Tickets::default()),
            Work::Placed(received, tickets) => (received, tickets),
            Work::Redelivery => return self.redeliver(delivery, parking).await,
        };
        let (event, routes) = match received {
            Received::Event(event, routes) => (event, routes),
            Received::Invalid(reason) => {
                return self.park_invalid(delivery, parking, &reason).await;
            }
        };
        // Every subscription either succeeded or has its hand-off confirmed; otherwise the
        // whole event comes back (the successful ones then see it twice, with the same id).
        let deliveries: Vec<_> = routes
            .iter()
            .enumerate()
            .map(|(i, route)| {
                self.deliver(route, &event, 1, Origin::Ingress, parking, tickets.take(i))
            })
            .collect();
        join_all(deliveries).await.into_iter().collect()
    }

    /// A `redeliver` message: its one subscription's next attempt (in the capacity lane
    /// [`lane`] picks), unless the subscription is gone or disabled. It takes no place in the
    /// ordered lanes: ordered deliveries retry in place, so what comes here for an ordered
    /// subscription is a replay or a redrive, sent when it comes.
    async fn redeliver(&self, delivery: &Delivery, parking: &Parking) -> Result<(), AmqpError> {
        let handoff = match Handoff::decode(&delivery.data, &delivery.properties) {
            Ok(handoff) => handoff,
            Err(e) => return self.park_invalid(delivery, parking, &e.to_string()).await,
        };
        match self.directory.get(&handoff.subscription_id) {
            Some(route) if route.enabled => {
                self.deliver(
                    &route,
                    &handoff.event,
                    handoff.attempts + 1,
                    Origin::Redeliver(lane(&handoff)),
                    parking,
                    None,
                )
                .await
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
                Ok(())
            }
        }
    }

    /// Why an event a producer published over AMQP cannot be accepted, as ingest would have
    /// refused it over HTTP (same wording): a type of Relay's own, or `data` failing its type's
    /// schema.
    fn refuse_from_producer(&self, event: &Event, data: &EventData<'_>) -> Option<String> {
        let event_type = &event.envelope.event_type;
        if let Err(e) = operational::check_publishable(event_type) {
            return Some(e.to_string());
        }
        match catalogue::check_data(&self.schemas, event_type, data) {
            Checked::Valid { .. } => None,
            // The detail ingest's 422 gives for the same event.
            Checked::Invalid(violation) => {
                Some(Problem::schema_violation(event_type, &violation).detail)
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

    /// Delivers `event` to one subscription as attempt number `attempt`, its message from
    /// `origin`: admit,
    /// send, decide, execute, report. `Ok` once it succeeded or is durably handed off. With a
    /// `ticket` (an `ordering: key` subscription) it first waits for its turn in the key's
    /// lane, and retries in place, holding the lane, instead of handing off to a retry tier.
    async fn deliver(
        &self,
        route: &Route,
        event: &Arc<Event>,
        attempt: u32,
        origin: Origin,
        parking: &Parking,
        mut ticket: Option<Ticket>,
    ) -> Result<(), AmqpError> {
        let lane = origin.lane();
        let trace_id = event.trace.as_ref().map(TraceParent::trace_id_hex);
        let span = tracing::info_span!("delivery", event_id = %event.envelope.id, subscription_id = %route.id, attempt, trace_id);
        async {
            // Since when an ordered delivery holds its lane (no clock read for the others).
            let mut held_since = None;
            if let Some(ticket) = ticket.as_mut() {
                ticket.wait().await;
                held_since = Some(Instant::now());
            }
            let mut attempt = attempt;
            loop {
                // An ordered delivery whose session is gone is not made: the broker has its
                // event back, ahead of the key's later ones, for a consumer to deliver in order.
                if held_since.is_some() && !parking.is_open() {
                    return Err(AmqpError::SessionClosed);
                }
                let started = (OffsetDateTime::now_utc(), Instant::now());
                let refused = match self
                    .admission
                    .admit(&route.id, &route.limits, origin.pin(event))
                    .await {
                    Admission::Go(pass) => Err(pass),
                    Admission::RateLimited => Ok(Refusal::RateLimited),
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
                let mut exchange = Exchange::default();
                let (mut step, result) = match deferral {
                    Some(step) => (step, None),
                    None => {
                        let (result, took);
                        (result, exchange, took) = self.send(route, event, lane).await;
                        drop(refused);
                        self.admission
                            .record(&route.id, &route.limits, &result, took);
                        (
                            step::decide(Tried::Sent(&result), attempt, &self.retry),
                            Some(result),
                        )
                    }
                };
                let error = result.as_ref().and_then(|r| r.as_ref().err());
                if let Some(held_since) = held_since {
                    match self.hold(step, error, held_since) {
                        Hold::Wait { ending, ttl, next } => {
                            let mut outcome = self.outcome(
                                event,
                                &route.id,
                                attempt,
                                started,
                                error.cloned(),
                                ending,
                            );
                            outcome.status = result.and_then(Result::ok);
                            outcome.exchange = exchange;
                            outcome.report(&self.metrics, &self.attempts);
                            tokio::time::sleep(ttl).await;
                            attempt += next;
                            continue;
                        }
                        Hold::Over => step = Step::Failed(Failure::Dead(DeadReason::HeldTooLong)),
                        Hold::No => {}
                    }
                }
                let ending = loop {
                    match self
                        .execute(step, route, event, (attempt, lane), error, parking)
                        .await
                    {
                        Ok(ending) => break ending,
                        // An ordered delivery keeps its lane until its hand-off (a dead
                        // letter) is confirmed: nacked back to the queue, its event would come
                        // back after the key's next event, already received and let go.
                        Err(e) if held_since.is_some() && parking.is_open() => {
                            tracing::warn!(error = %e, "ordered hand-off failed; trying again in place");
                            tokio::time::sleep(ORDERED_HANDOFF_PAUSE).await;
                        }
                        Err(e) => return Err(e),
                    }
                };
                let mut outcome =
                    self.outcome(event, &route.id, attempt, started, error.cloned(), ending);
                outcome.status = result.and_then(Result::ok);
                outcome.exchange = exchange;
                outcome.report(&self.metrics, &self.attempts);
                return Ok(());
            }
        }
        .instrument(span)
        .await
    }

    /// For an ordered delivery, whether `step` waits in place (holding its key), and how
    /// long, or the hold is over.
    fn hold(&self, step: Step, error: Option<&AttemptError>, held_since: Instant) -> Hold {
        let (ttl, ending, next) = match step {
            Step::Defer { tier, reason } => (
                self.retry.ttl_with_jitter(tier, Duration::ZERO),
                Ending::Deferred(reason),
                0,
            ),
            Step::Failed(Failure::Retry { tier }) => {
                let ttl = self.retry.ttl_with_jitter(tier, self.asked(error));
                let due = OffsetDateTime::now_utc() + ttl;
                (ttl, Ending::RetryScheduled { tier, due }, 1)
            }
            _ => return Hold::No,
        };
        if held_since.elapsed() + ttl > self.ordered_hold {
            return Hold::Over;
        }
        Hold::Wait { ending, ttl, next }
    }

    /// What the endpoint's `Retry-After`, if it sent one with `error`, asks a retry to wait.
    fn asked(&self, error: Option<&AttemptError>) -> Duration {
        self.retry.asked(error.and_then(AttemptError::retry_after))
    }

    /// One HTTP request, within the global in-flight cap (in its lane); its result, the
    /// headers that went each way and its own duration.
    async fn send(
        &self,
        route: &Route,
        event: &Event,
        lane: Lane,
    ) -> (Result<u16, AttemptError>, Exchange, Duration) {
        let _slot = self.lanes.acquire(lane).await;
        self.metrics.inflight.inc();
        let started = Instant::now();
        let (result, exchange) = self
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
        (result, exchange, took)
    }

    /// Carries out `step` for attempt number `attempt` in `lane`: the hand-off it needs, or
    /// the 410 disable.
    async fn execute(
        &self,
        step: Step,
        route: &Route,
        event: &Arc<Event>,
        (attempt, lane): (u32, Lane),
        error: Option<&AttemptError>,
        parking: &Parking,
    ) -> Result<Ending, AmqpError> {
        let failure = match step {
            Step::Done | Step::SendAnyway => return Ok(Ending::Delivered),
            Step::Defer { tier, reason } => {
                let handoff = deferral(event, &route.id, attempt, lane);
                // Held back by its rate: back when its subscription has room, not in a clump.
                let ttl = match reason {
                    Refusal::RateLimited => self.admission.comeback(&route.id, tier),
                    _ => self.retry.ttl_with_jitter(tier, Duration::ZERO),
                };
                parking.retry(&handoff, tier, ttl).await?;
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
                let ttl = self.retry.ttl_with_jitter(tier, self.asked(error));
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
            exchange: Exchange::default(),
            ending,
        }
    }
}

/// An ordered delivery's next step after a failure or a refusal.
enum Hold {
    /// Not a retry or a deferral: executed as for any delivery.
    No,
    /// Wait `ttl` in place, then make the attempt numbered `next` more than this one.
    Wait {
        ending: Ending,
        ttl: Duration,
        next: u32,
    },
    /// Waiting would hold the key past `dispatch.ordered_hold`.
    Over,
}

/// The queue a delivery's message came on, with its capacity lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// An `ingress` event: a first attempt.
    Ingress,
    /// A `redeliver` message, in the lane [`lane`] picks.
    Redeliver(Lane),
}

impl Origin {
    fn lane(self) -> Lane {
        match self {
            Self::Ingress => Lane::First,
            Self::Redeliver(lane) => lane,
        }
    }

    /// What the delivery holds unacknowledged while it waits for its rate.
    fn pin(self, event: &Event) -> Pin<'_> {
        match self {
            Self::Ingress => Pin::Event(event.envelope.id.as_str()),
            Self::Redeliver(_) => Pin::Redelivery,
        }
    }
}

/// The lane of a `redeliver` message: a fresh event's first attempt that its subscription's
/// rate limit or breaker deferred is still a first attempt (whether ingest or a producer on
/// AMQP published it); retries, replays, redrives and test pings are the other lane's.
fn lane(handoff: &Handoff) -> Lane {
    if handoff.fresh {
        Lane::First
    } else {
        Lane::Other
    }
}

/// Attempt number `attempt` in `lane`, deferred: not an attempt, so the number of the next
/// try stays the same, and so does its lane.
fn deferral(event: &Arc<Event>, subscription_id: &str, attempt: u32, lane: Lane) -> Handoff {
    Handoff {
        fresh: lane == Lane::First,
        ..handoff(event, subscription_id, attempt - 1, None)
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
        fresh: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deferred_first_attempt_comes_back_in_the_first_lane_and_nothing_else_does() {
        let body = br#"{"id":"evt_1","type":"order.created","data":{}}"#;
        // Published straight over AMQP: no acceptance time, a first attempt all the same.
        let event = Arc::new(Event::stored(body, "evt_1").unwrap());
        let back = |handoff: Handoff| {
            let message = handoff.encode(Some(Duration::from_secs(1)));
            Handoff::decode(&message.body, &message.properties).unwrap()
        };
        // Held back by its own rate limit or breaker before any attempt, twice.
        let once = back(deferral(&event, "sub_1", 1, Lane::First));
        assert_eq!((once.attempts, lane(&once)), (0, Lane::First));
        let twice = back(deferral(&event, "sub_1", once.attempts + 1, lane(&once)));
        assert_eq!((twice.attempts, lane(&twice)), (0, Lane::First));
        // A retry, and a retry deferred.
        let retry = back(handoff(&event, "sub_1", 1, None));
        assert_eq!((retry.attempts, lane(&retry)), (1, Lane::Other));
        let deferred = back(deferral(&event, "sub_1", retry.attempts + 1, lane(&retry)));
        assert_eq!((deferred.attempts, lane(&deferred)), (1, Lane::Other));
    }
}
