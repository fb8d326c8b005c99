//! What came of one delivery, as one value: built once the step is executed, it counts its
//! metric, writes its log line and queues its attempt record, together and once.

use std::time::Duration;

use relay_shared::{
    attempt::{AttemptOutcome, AttemptRecord},
    envelope::rfc3339,
    topology::tier_label,
};
use time::OffsetDateTime;

use super::{
    attempt_log::AttemptLog,
    client::{AttemptError, Exchange},
    metrics::DispatchMetrics,
    step::{DeadReason, Refusal},
};

/// How a delivery ended, for now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The endpoint answered 2xx.
    Delivered,
    /// The attempt failed; the next waits in `tier` and is due at `due`.
    RetryScheduled {
        /// The tier.
        tier: Duration,
        /// When the next attempt is due.
        due: OffsetDateTime,
    },
    /// No more attempts: parked in `dead`.
    Dead(DeadReason),
    /// Not attempted: handed to the first tier.
    Deferred(Refusal),
    /// The subscription gets nothing more: it answered 410 (and was disabled), or it was
    /// deleted or disabled meanwhile.
    Disabled(&'static str),
}

/// One delivery's outcome.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The event (`webhook-id`).
    pub event_id: String,
    /// The subscription.
    pub subscription_id: String,
    /// The attempt's number (a deferral keeps the number of the next try).
    pub attempt: u32,
    /// When the delivery started (admission included).
    pub started_at: OffsetDateTime,
    /// How long it took until the step was executed.
    pub took: Duration,
    /// When ingest accepted the event (Unix ms), for the publish-to-delivery latency.
    pub accepted_ms: Option<i64>,
    /// The request's failure, if one was made and failed.
    pub error: Option<AttemptError>,
    /// The status of a successful request.
    pub status: Option<u16>,
    /// The headers that went each way (empty when no request was made).
    pub exchange: Exchange,
    /// How it ended.
    pub ending: Ending,
}

impl Outcome {
    /// Counts it, logs it and queues its attempt record.
    pub fn report(self, metrics: &DispatchMetrics, log: &AttemptLog) {
        let label = self.label();
        metrics.deliveries.with_label_values(&[label]).inc();
        if self.error.is_some() {
            metrics.deliveries.with_label_values(&["failed"]).inc();
        }
        let (event_id, subscription_id, attempt) =
            (&self.event_id, &self.subscription_id, self.attempt);
        let error = self.error.as_ref().map(ToString::to_string);
        let status = self.status();
        match &self.ending {
            Ending::Delivered => {
                if let Some(ms) = self.accepted_ms {
                    metrics
                        .event_to_delivery_seconds
                        .observe(seconds_since(ms, OffsetDateTime::now_utc()));
                }
                tracing::debug!(%event_id, %subscription_id, attempt, status, "delivered");
            }
            Ending::RetryScheduled { tier, .. } => {
                let tier = tier_label(*tier);
                metrics.retries_scheduled.with_label_values(&[&tier]).inc();
                tracing::warn!(%event_id, %subscription_id, attempt, status, error, tier, "delivery attempt failed; retry scheduled");
            }
            Ending::Dead(reason) => {
                tracing::warn!(%event_id, %subscription_id, attempt, status, error, ?reason, "delivery dead-lettered");
            }
            Ending::Deferred(reason) => {
                metrics.deferred.with_label_values(&[reason.label()]).inc();
                tracing::info!(%event_id, %subscription_id, attempt, reason = reason.label(), "delivery deferred to the first retry tier");
            }
            Ending::Disabled(why) => {
                tracing::warn!(%event_id, %subscription_id, attempt, status, why, "subscription gets nothing more");
            }
        }
        log.record(self.into_record());
    }

    /// The `relay_deliveries_total` label.
    fn label(&self) -> &'static str {
        match &self.ending {
            Ending::Delivered => "success",
            Ending::RetryScheduled { .. } => "retry_scheduled",
            Ending::Dead(_) => "dead",
            Ending::Deferred(Refusal::CircuitOpen) => "circuit_open",
            Ending::Deferred(_) => "deferred",
            Ending::Disabled(_) => "disabled",
        }
    }

    fn status(&self) -> Option<u16> {
        self.status
            .or_else(|| self.error.as_ref().and_then(AttemptError::status))
    }

    /// The delivery-log record of this outcome; its strings and headers move into it.
    pub fn into_record(self) -> AttemptRecord {
        let outcome = match &self.ending {
            Ending::Delivered => AttemptOutcome::Success,
            Ending::RetryScheduled { .. } => AttemptOutcome::RetryScheduled,
            Ending::Dead(_) => AttemptOutcome::Dead,
            Ending::Deferred(Refusal::CircuitOpen) => AttemptOutcome::CircuitOpen,
            Ending::Deferred(_) => AttemptOutcome::Deferred,
            Ending::Disabled(_) => AttemptOutcome::Disabled,
        };
        let error = match (&self.error, &self.ending) {
            (Some(error), _) => Some(error.to_string()),
            (None, Ending::Disabled(why)) => Some((*why).to_owned()),
            (None, _) => None,
        };
        AttemptRecord {
            status: self.status(),
            attempt: self.attempt,
            at: rfc3339(self.started_at),
            outcome,
            latency_ms: u64::try_from(self.took.as_millis()).unwrap_or(u64::MAX),
            error,
            response_excerpt: self
                .error
                .as_ref()
                .and_then(AttemptError::excerpt)
                .map(str::to_owned),
            next_attempt_at: match &self.ending {
                Ending::RetryScheduled { due, .. } => Some(rfc3339(*due)),
                _ => None,
            },
            request_headers: self.exchange.sent,
            response_headers: self.exchange.received,
            response_headers_omitted: self.exchange.omitted,
            event_id: self.event_id,
            subscription_id: self.subscription_id,
        }
    }
}

/// Seconds from `unix_ms` to `now`, never negative.
fn seconds_since(unix_ms: i64, now: OffsetDateTime) -> f64 {
    let now_ms = now.unix_timestamp_nanos() / 1_000_000;
    #[allow(clippy::cast_precision_loss)]
    let seconds = (now_ms - i128::from(unix_ms)).max(0) as f64 / 1000.0;
    seconds
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(ending: Ending, error: Option<AttemptError>) -> Outcome {
        Outcome {
            event_id: "evt_1".into(),
            subscription_id: "sub_1".into(),
            attempt: 2,
            started_at: OffsetDateTime::UNIX_EPOCH,
            took: Duration::from_millis(12),
            accepted_ms: None,
            error,
            status: None,
            exchange: Exchange::default(),
            ending,
        }
    }

    #[test]
    fn the_record_carries_what_happened() {
        let failed = AttemptError::Status {
            status: 503,
            body_excerpt: "busy".into(),
            retry_after: None,
        };
        let due = OffsetDateTime::UNIX_EPOCH + Duration::from_secs(5);
        let r = outcome(
            Ending::RetryScheduled {
                tier: Duration::from_secs(5),
                due,
            },
            Some(failed),
        )
        .into_record();
        assert_eq!(r.outcome, AttemptOutcome::RetryScheduled);
        assert_eq!((r.status, r.latency_ms, r.attempt), (Some(503), 12, 2));
        assert_eq!(r.response_excerpt.as_deref(), Some("busy"));
        assert_eq!(r.next_attempt_at.as_deref(), Some("1970-01-01T00:00:05Z"));
        assert_eq!(r.at, "1970-01-01T00:00:00Z");

        let r = outcome(Ending::Deferred(Refusal::CircuitOpen), None).into_record();
        assert_eq!(
            (r.outcome, r.status, r.error),
            (AttemptOutcome::CircuitOpen, None, None)
        );
        let r = outcome(Ending::Disabled("subscription deleted"), None).into_record();
        assert_eq!(r.error.as_deref(), Some("subscription deleted"));
    }

    #[test]
    fn latency_is_never_negative() {
        let now = OffsetDateTime::UNIX_EPOCH + Duration::from_secs(10);
        assert!((seconds_since(7_500, now) - 2.5).abs() < 1e-9);
        assert!(seconds_since(20_000, now).abs() < 1e-9);
    }
}
