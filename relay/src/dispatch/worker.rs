//! The ingress consumer: for each event, deliver to every matching subscription concurrently,
//! hand failures off durably, then ack. A crash anywhere before the ack redelivers the event.

use std::{sync::Arc, time::Instant};

use bytes::Bytes;
use futures_util::{StreamExt, future::join_all};
use lapin::{
    message::Delivery,
    options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions},
    types::{AMQPValue, FieldTable},
};
use relay_shared::{
    amqp::{self, AmqpError},
    envelope::{Envelope, IncomingEvent, content_id, parse_json},
    shutdown::Shutdown,
    topology::{HEADER_ACCEPTED_MS, Topology},
};
use tokio::{sync::watch, task::JoinSet};

use super::{
    client::{AttemptError, WebhookClient},
    directory::{Directory, Route},
    metrics::DispatchMetrics,
    parking::Parking,
};
use relay_shared::session::{self as broker, Session};

/// What every delivery task needs.
#[derive(Debug)]
pub struct Worker {
    /// The subscription directory.
    pub directory: Arc<Directory>,
    /// The webhook client.
    pub client: WebhookClient,
    /// Metrics.
    pub metrics: DispatchMetrics,
    /// Queue and exchange names.
    pub topology: Topology,
    /// AMQP prefetch.
    pub prefetch: u16,
}

impl Worker {
    /// Consumes `ingress` on every broker session until `shutdown`, then waits for the
    /// in-flight events to finish (their acks or hand-offs) before returning.
    pub async fn run(
        self: Arc<Self>,
        mut sessions: watch::Receiver<Option<Session>>,
        mut shutdown: Shutdown,
    ) {
        while let Some(session) = broker::next_session(&mut sessions, &mut shutdown).await {
            if let Err(e) = self.clone().consume(&session, &mut shutdown).await {
                tracing::warn!(error = %e, "ingress consumer interrupted");
            }
            if shutdown.is_triggered() {
                return;
            }
            tokio::select! {
                _ = sessions.changed() => {}
                () = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                () = shutdown.wait() => return,
            }
        }
    }

    async fn consume(
        self: Arc<Self>,
        session: &Session,
        shutdown: &mut Shutdown,
    ) -> Result<(), AmqpError> {
        let channel = session.create_channel().await?;
        channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await?;
        let parking = Parking::new(amqp::confirm_channel(session).await?, &self.topology);
        let mut consumer = channel
            .basic_consume(
                self.topology.ingress.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        tracing::info!(queue = %self.topology.ingress, prefetch = self.prefetch, "consuming");
        let mut tasks = JoinSet::new();
        let result = loop {
            tokio::select! {
                delivery = consumer.next() => match delivery {
                    Some(Ok(delivery)) => {
                        tasks.spawn(self.clone().handle(delivery, parking.clone()));
                    }
                    Some(Err(e)) => break Err(e.into()),
                    None => break Ok(()),
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                () = shutdown.wait() => break Ok(()),
            }
        };
        // Finish what was started: each task acks, hands off, or leaves its event unacked
        // for redelivery when the channel closes.
        while tasks.join_next().await.is_some() {}
        let _ = channel.close(200, "dispatcher stopping".into()).await;
        result
    }

    async fn handle(self: Arc<Self>, delivery: Delivery, parking: Parking) {
        let handed_off = match decode(&delivery) {
            Err(reason) => {
                tracing::warn!(reason, "invalid AMQP message parked");
                self.metrics
                    .rejected
                    .with_label_values(&["invalid_amqp"])
                    .inc();
                parking
                    .invalid(&delivery.data, &delivery.properties, &reason)
                    .await
                    .is_ok()
            }
            Ok(envelope) => self.deliver_all(&delivery, &envelope, &parking).await,
        };
        let settled = if handed_off {
            delivery.acker.ack(BasicAckOptions::default()).await
        } else {
            // Give the broker a moment before the event comes back, instead of a hot loop.
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            delivery
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await
        };
        if let Err(e) = settled {
            tracing::warn!(error = %e, "could not settle an event; it will be redelivered");
        }
    }

    /// Delivers to every matching subscription at once; true when each one either succeeded
    /// or has its failure durably handed off, so the event may be acked.
    async fn deliver_all(
        &self,
        delivery: &Delivery,
        envelope: &Envelope,
        parking: &Parking,
    ) -> bool {
        let accepted = accepted_ms(delivery);
        if accepted.is_none() && !delivery.redelivered {
            self.metrics.ingested.with_label_values(&["amqp"]).inc();
        }
        let body = Bytes::from(envelope.to_json());
        let routes = self
            .directory
            .matching(&envelope.event_type, envelope.consumer.as_deref());
        let attempts = routes
            .iter()
            .map(|route| self.attempt(route, &envelope.id, body.clone()));
        let outcomes = join_all(attempts).await;
        let mut all_safe = true;
        for (route, outcome) in routes.iter().zip(outcomes) {
            match outcome {
                Ok(_) => {
                    if let Some(ms) = accepted {
                        self.metrics
                            .event_to_delivery_seconds
                            .observe(seconds_since(ms));
                    }
                }
                Err(error) => match parking
                    .dead(&envelope.id, &route.id, 1, &body, &error)
                    .await
                {
                    Ok(()) => self.metrics.deliveries.with_label_values(&["dead"]).inc(),
                    Err(e) => {
                        tracing::error!(event_id = %envelope.id, subscription_id = %route.id, error = %e, "cannot hand off a failed delivery");
                        all_safe = false;
                    }
                },
            }
        }
        all_safe
    }

    async fn attempt(
        &self,
        route: &Route,
        event_id: &str,
        body: Bytes,
    ) -> Result<u16, AttemptError> {
        let span =
            tracing::info_span!("delivery", event_id, subscription_id = %route.id, attempt = 1);
        let _enter = span.enter();
        self.metrics.inflight.inc();
        let started = Instant::now();
        let outcome = self.client.deliver(route, event_id, body).await;
        self.metrics.inflight.dec();
        self.metrics
            .attempt_seconds
            .observe(started.elapsed().as_secs_f64());
        match &outcome {
            Ok(status) => {
                self.metrics
                    .deliveries
                    .with_label_values(&["success"])
                    .inc();
                tracing::debug!(event_id, subscription_id = %route.id, status, "delivered");
            }
            Err(error) => {
                self.metrics.deliveries.with_label_values(&["failed"]).inc();
                tracing::warn!(event_id, subscription_id = %route.id, status = error.status(), error = %error, "delivery failed");
            }
        }
        outcome
    }
}

/// The envelope of a delivery, or why it is not one.
fn decode(delivery: &Delivery) -> Result<Envelope, String> {
    let incoming: IncomingEvent = parse_json(&delivery.data).map_err(|e| e.to_string())?;
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|s| s.as_str().to_owned());
    incoming
        .normalise(time::OffsetDateTime::now_utc(), || {
            content_id(&delivery.data, message_id.as_deref())
        })
        .map_err(|e| e.to_string())
}

fn seconds_since(unix_ms: i64) -> f64 {
    let now_ms = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    #[allow(clippy::cast_precision_loss)]
    let seconds = (now_ms - i128::from(unix_ms)).max(0) as f64 / 1000.0;
    seconds
}

/// The acceptance time ingest stamped on the message, if it came through ingest.
fn accepted_ms(delivery: &Delivery) -> Option<i64> {
    match delivery
        .properties
        .headers()
        .as_ref()?
        .inner()
        .get(HEADER_ACCEPTED_MS)?
    {
        AMQPValue::LongLongInt(ms) => Some(*ms),
        _ => None,
    }
}
