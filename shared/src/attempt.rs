//! The record of one delivery attempt, published by dispatchers on the `attempts` queue and
//! stored by the consumer-api recorder (the delivery log).
//!
//! Dispatchers send records in batches; the message is encoded and decoded in [`crate::wire`].

use serde::{Deserialize, Serialize};

/// What came of one attempt (or of a delivery decision that made no HTTP request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// The endpoint answered 2xx.
    Success,
    /// The attempt failed and another is scheduled.
    RetryScheduled,
    /// The attempt failed and no other will be made: the delivery is dead-lettered.
    Dead,
    /// No request was made: the subscription's circuit is open; deferred to a retry tier.
    CircuitOpen,
    /// No request was made: the subscription's in-flight cap was full; deferred.
    Deferred,
    /// The endpoint answered 410 Gone, or the subscription is disabled: it gets nothing more.
    Disabled,
}

/// One delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// The event (`webhook-id`).
    pub event_id: String,
    /// The subscription.
    pub subscription_id: String,
    /// 1 for the first try; deferrals without a request keep the number of the next try.
    pub attempt: u32,
    /// When the attempt started, RFC 3339 UTC.
    pub at: String,
    /// What came of it.
    pub outcome: AttemptOutcome,
    /// HTTP status, when the endpoint answered.
    #[serde(default)]
    pub status: Option<u16>,
    /// Request duration in milliseconds (0 when no request was made).
    pub latency_ms: u64,
    /// The failure, in words, when it failed.
    #[serde(default)]
    pub error: Option<String>,
    /// Start of the response body (bounded by `dispatch.response_body_limit`).
    #[serde(default)]
    pub response_excerpt: Option<String>,
    /// When the next try is due, RFC 3339 UTC, if one is scheduled.
    #[serde(default)]
    pub next_attempt_at: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_serialise_in_snake_case() {
        let json = serde_json::to_value(AttemptOutcome::RetryScheduled).unwrap();
        assert_eq!(json, "retry_scheduled");
    }
}
