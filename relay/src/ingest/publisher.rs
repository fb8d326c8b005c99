//! Confirmed publishing of events to the `events` exchange.

use std::time::{Duration, Instant};

use lapin::Channel;
use relay_shared::{
    amqp::{self, AmqpError},
    config::Settings,
    envelope::Envelope,
    ops::Readiness,
    shutdown::Shutdown,
    topology::Topology,
    trace::TraceParent,
    wire::Event,
};
use tokio::sync::watch;

use super::metrics::IngestMetrics;
use relay_shared::session as broker;

/// Why an event was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// No broker connection right now.
    #[error("the broker is unreachable")]
    Unavailable,
    /// The publish or its confirm failed; the event is not accepted.
    #[error(transparent)]
    Broker(#[from] AmqpError),
}

impl PublishError {
    /// Whether the broker may hold the event anyway: the connection failed (or the confirm
    /// timed out) after it was sent, so a retry with the same id may deliver it twice.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, Self::Broker(e) if e.outcome_unknown())
    }
}

/// Publishes events with publisher confirms on a channel that follows the broker session.
#[derive(Debug, Clone)]
pub struct Publisher {
    sessions: watch::Receiver<Option<broker::Session>>,
    channel: watch::Receiver<Option<Channel>>,
    exchange: String,
    timeout: Duration,
    metrics: IngestMetrics,
}

impl Publisher {
    /// Starts the broker session and the confirm channel that follows it, both kept until
    /// `close`.
    pub fn start(
        settings: &Settings<super::IngestSettings>,
        readiness: Readiness,
        metrics: IngestMetrics,
        close: Shutdown,
    ) -> Self {
        let sessions = broker::keep_connected(
            settings.amqp.clone(),
            "relay-ingest",
            readiness,
            metrics.amqp_connected.clone(),
            close.clone(),
        );
        Self {
            sessions: sessions.clone(),
            channel: broker::confirm_channels(sessions, close),
            exchange: Topology::from_settings(&settings.amqp).events,
            timeout: settings.process.publish_timeout,
            metrics,
        }
    }

    /// The broker sessions the publisher follows, for the process's other broker work.
    pub fn sessions(&self) -> watch::Receiver<Option<broker::Session>> {
        self.sessions.clone()
    }

    /// The confirm channel as it comes and goes.
    pub fn channels(&self) -> watch::Receiver<Option<Channel>> {
        self.channel.clone()
    }

    /// Publishes one event persistently, with `trace` in its `traceparent` header, and waits
    /// for the broker's confirm.
    ///
    /// # Errors
    /// [`PublishError`]: the event was not accepted and the producer should retry.
    pub async fn publish(
        &self,
        envelope: &Envelope,
        trace: &TraceParent,
    ) -> Result<(), PublishError> {
        let channel = self
            .channel
            .borrow()
            .clone()
            .ok_or(PublishError::Unavailable)?;
        let message = Event::accepted(envelope.clone(), Some(*trace)).encode();
        let started = Instant::now();
        // The routing key places the event on its ingress shard (consistent hash).
        let key = envelope.ordering_key();
        amqp::publish_confirmed(&channel, &self.exchange, key, message, self.timeout).await?;
        self.metrics
            .confirm_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(())
    }
}
