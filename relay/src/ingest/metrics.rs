//! Ingest metrics.

use prometheus::{Histogram, IntCounterVec, IntGauge, Registry};
use relay_shared::metrics::{FAST_SECONDS, counter_vec, gauge, histogram};

/// Counters and histograms of the ingest path.
#[derive(Debug, Clone)]
pub struct IngestMetrics {
    /// `relay_events_ingested_total{source}`
    pub ingested: IntCounterVec,
    /// `relay_ingest_rejected_total{reason}`
    pub rejected: IntCounterVec,
    /// `relay_publish_confirm_seconds`
    pub confirm_seconds: Histogram,
    /// `relay_amqp_connected`
    pub amqp_connected: IntGauge,
}

impl IngestMetrics {
    /// Registers the ingest metrics on `registry`.
    ///
    /// # Errors
    /// A name is already registered there.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            ingested: counter_vec(
                registry,
                "relay_events_ingested_total",
                "Events accepted (broker-confirmed), by source.",
                &["source"],
            )?,
            rejected: counter_vec(
                registry,
                "relay_ingest_rejected_total",
                "Events refused, by reason (auth, overloaded, media_type, too_large, invalid, schema, broker_unavailable).",
                &["reason"],
            )?,
            confirm_seconds: histogram(
                registry,
                "relay_publish_confirm_seconds",
                "Time from publish to the broker's confirm.",
                FAST_SECONDS,
            )?,
            amqp_connected: gauge(
                registry,
                "relay_amqp_connected",
                "1 while connected to the broker.",
            )?,
        })
    }

    /// Counts a rejection.
    pub fn reject(&self, reason: &str) {
        self.rejected.with_label_values(&[reason]).inc();
    }
}
