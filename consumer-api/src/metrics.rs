//! consumer-api's metrics, registered under `relay_api_` on the registry `main` hands down
//! (the broker gauge keeps the name every Relay process uses, `relay_amqp_connected`). HTTP
//! requests are measured once, by the shared `relay_http_*` middleware.

use prometheus::{Histogram, IntCounterVec, IntGauge, IntGaugeVec, Registry};
use relay_shared::metrics::{FAST_SECONDS, counter_vec, gauge, gauge_vec, histogram};

/// Every metric consumer-api records.
#[derive(Debug, Clone)]
pub struct ApiMetrics {
    /// Control notifications by `outcome` (`published`, `failed`).
    pub control_notifications: IntCounterVec,
    /// 1 while the broker connection is up.
    pub amqp_connected: IntGauge,
    /// Messages the recorder consumed, by `feed` and `outcome` (`recorded`, `unreadable`).
    pub recorded: IntCounterVec,
    /// `relay_recorder_batch_seconds`: time to write one recorder batch.
    pub recorder_batch_seconds: Histogram,
    /// `relay_store_rows{table}`: rows per store table, sampled.
    pub store_rows: IntGaugeVec,
}

impl ApiMetrics {
    /// Registers every metric on `registry`.
    ///
    /// # Errors
    /// A metric of the same name is already registered there.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            control_notifications: counter_vec(
                registry,
                "relay_api_control_notifications_total",
                "Subscription change notifications to dispatchers, by outcome (published, failed).",
                &["outcome"],
            )?,
            recorded: counter_vec(
                registry,
                "relay_api_recorded_total",
                "Messages the recorder consumed, by feed (archive, attempts, dead) and outcome (recorded, unreadable).",
                &["feed", "outcome"],
            )?,
            amqp_connected: gauge(
                registry,
                "relay_amqp_connected",
                "1 while the broker connection is up, else 0.",
            )?,
            recorder_batch_seconds: histogram(
                registry,
                "relay_recorder_batch_seconds",
                "Time to write one recorder batch (events, attempts or dead letters) to the store, commit included.",
                FAST_SECONDS,
            )?,
            store_rows: gauge_vec(
                registry,
                "relay_store_rows",
                "Rows in each store table, sampled every 30 s.",
                &["table"],
            )?,
        })
    }
}
