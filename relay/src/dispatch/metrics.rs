//! Dispatcher metrics. Labels are bounded: never a subscription id or a URL.

use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};
use relay_shared::metrics::{REQUEST_SECONDS, counter, counter_vec, gauge, gauge_vec, histogram};

/// Counters, gauges and histograms of the delivery path.
#[derive(Debug, Clone)]
pub struct DispatchMetrics {
    /// `relay_deliveries_total{outcome}`
    pub deliveries: IntCounterVec,
    /// `relay_delivery_attempt_seconds`
    pub attempt_seconds: Histogram,
    /// `relay_event_to_delivery_seconds`
    pub event_to_delivery_seconds: Histogram,
    /// `relay_inflight_deliveries`
    pub inflight: IntGauge,
    /// `relay_lane_inflight{lane}`
    pub lane_inflight: IntGaugeVec,
    /// `relay_lane_other_pace`
    pub lane_other_pace: IntGauge,
    /// `relay_subscriptions_loaded`
    pub subscriptions_loaded: IntGauge,
    /// `relay_events_ingested_total{source="amqp"}`: events published straight to the exchange.
    pub ingested: IntCounterVec,
    /// `relay_ingest_rejected_total{reason="invalid_amqp"}`
    pub rejected: IntCounterVec,
    /// `relay_amqp_connected`
    pub amqp_connected: IntGauge,
    /// `relay_retries_scheduled_total{tier}`
    pub retries_scheduled: IntCounterVec,
    /// `relay_circuit_open_subscriptions`
    pub circuit_open: IntGauge,
    /// `relay_attempt_records_dropped_total`
    pub attempt_records_dropped: IntCounter,
    /// `relay_deliveries_deferred_total{reason}`
    pub deferred: IntCounterVec,
}

impl DispatchMetrics {
    /// Registers the dispatcher metrics on `registry`.
    ///
    /// # Errors
    /// A name is already registered there.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            deliveries: counter_vec(
                registry,
                "relay_deliveries_total",
                "Delivery outcomes: success; failed (a failed HTTP attempt), then retry_scheduled or dead; circuit_open and deferred (handed to a retry tier without a request); disabled (410 Gone, or the subscription is gone).",
                &["outcome"],
            )?,
            attempt_seconds: histogram(
                registry,
                "relay_delivery_attempt_seconds",
                "Duration of one webhook request, successful or not.",
                REQUEST_SECONDS,
            )?,
            event_to_delivery_seconds: histogram(
                registry,
                "relay_event_to_delivery_seconds",
                "Time from acceptance by ingest to the endpoint's 2xx.",
                &[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0,
                    3600.0, 36000.0,
                ],
            )?,
            inflight: gauge(
                registry,
                "relay_inflight_deliveries",
                "Webhook requests in flight.",
            )?,
            lane_inflight: gauge_vec(
                registry,
                "relay_lane_inflight",
                "Webhook requests in flight by lane: first (first attempts of fresh events) and other (retries, replays, redrives, test pings).",
                &["lane"],
            )?,
            lane_other_pace: gauge(
                registry,
                "relay_lane_other_pace",
                "Requests a second the other lane (retries, replays, redrives, test pings) may start while first attempts have work: halved while the dispatcher, the broker or the machine is saturated, raised back while not (0: not paced).",
            )?,
            subscriptions_loaded: gauge(
                registry,
                "relay_subscriptions_loaded",
                "Subscriptions in this dispatcher's directory.",
            )?,
            ingested: counter_vec(
                registry,
                "relay_events_ingested_total",
                "Events accepted, by source; amqp counts events published straight to the exchange.",
                &["source"],
            )?,
            rejected: counter_vec(
                registry,
                "relay_ingest_rejected_total",
                "Events refused, by reason; invalid_amqp counts messages parked in the invalid queue.",
                &["reason"],
            )?,
            amqp_connected: gauge(
                registry,
                "relay_amqp_connected",
                "1 while connected to the broker.",
            )?,
            retries_scheduled: counter_vec(
                registry,
                "relay_retries_scheduled_total",
                "Deliveries handed to a retry tier after a failed attempt, by tier delay.",
                &["tier"],
            )?,
            circuit_open: gauge(
                registry,
                "relay_circuit_open_subscriptions",
                "Subscriptions whose circuit is open on this dispatcher.",
            )?,
            attempt_records_dropped: counter(
                registry,
                "relay_attempt_records_dropped_total",
                "Delivery-log records lost: the buffer that keeps them across broker blips was full.",
            )?,
            deferred: counter_vec(
                registry,
                "relay_deliveries_deferred_total",
                "Deliveries handed to the first retry tier without a request, by reason: circuit_open; or at the subscription's cap and failing, stalled (nothing completed within its latency-derived bound) or queue_full; or rate_limited (no slot within dispatch.rate_limit_wait).",
                &["reason"],
            )?,
        })
    }
}
