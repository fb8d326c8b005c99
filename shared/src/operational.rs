//! Relay's own events: what happened to an endpoint or a message, delivered as ordinary events
//! (types under the reserved `relay.` prefix) that any subscription can ask for. Each type's
//! payload is documented here once, with its JSON Schema, and listed in the event-type
//! catalogue as a built-in type.
//!
//! Addressing ([`reaches`]): an operational event names the consumer it is about (`consumer`
//! in the envelope), so a tenant's subscriptions receive only their own; a subscription
//! without a consumer (an operator's) receives them for every consumer, and the events about
//! an operator's own subscriptions (no consumer) reach operator subscriptions only.

use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::envelope::{EnvelopeError, EnvelopeErrorKind};

/// The prefix producers may not use: these types are Relay's.
pub const RESERVED_PREFIX: &str = "relay.";
/// A subscription was disabled (410 from the endpoint, failing too long, or by hand).
pub const ENDPOINT_DISABLED: &str = "relay.endpoint.disabled";
/// The former name of [`ENDPOINT_DISABLED`], still sent beside it for one release.
pub const SUBSCRIPTION_DISABLED: &str = "relay.subscription.disabled";
/// An endpoint whose circuit breaker had opened answered 2xx again.
pub const ENDPOINT_RECOVERED: &str = "relay.endpoint.recovered";
/// A delivery was dead-lettered: its retry schedule was used up, or its destination is refused.
pub const MESSAGE_EXHAUSTED: &str = "relay.message.exhausted";
/// A test event sent to one subscription (`POST /v1/subscriptions/{id}/test`).
pub const PING: &str = "relay.ping";

/// Whether `event_type` is in Relay's reserved namespace.
pub fn is_reserved(event_type: &str) -> bool {
    event_type.starts_with(RESERVED_PREFIX)
}

/// Refuses a producer's event of one of Relay's own types: ingest answers it with a 400, a
/// dispatcher parks it in `relay.invalid` with this error as the reason (same wording).
///
/// # Errors
/// An [`EnvelopeError`] on `type` when `event_type` is reserved.
pub fn check_publishable(event_type: &str) -> Result<(), EnvelopeError> {
    if is_reserved(event_type) {
        return Err(EnvelopeError {
            kind: EnvelopeErrorKind::InvalidField,
            field: String::from("type"),
            reason: format!("types starting with {RESERVED_PREFIX:?} are Relay's own events"),
        });
    }
    Ok(())
}

/// Whether an operational event about consumer `about` (the envelope's `consumer`) goes to a
/// subscription owned by `owner`: an operator's subscription (no owner) receives every one, a
/// tenant's only those about itself. (Ordinary events follow the ordinary rule instead: an
/// event naming a consumer reaches only that consumer's subscriptions.)
pub fn reaches(about: Option<&str>, owner: Option<&str>) -> bool {
    owner.is_none() || owner == about
}

/// Whether an event of `event_type` naming `consumer` (if any) is addressed to a subscription
/// owned by `owner`, topic filters aside: [`reaches`] for Relay's own types; otherwise an
/// event naming a consumer goes to that consumer's subscriptions only, and an event naming
/// none to every subscription.
pub fn addressed(event_type: &str, consumer: Option<&str>, owner: Option<&str>) -> bool {
    if is_reserved(event_type) {
        reaches(consumer, owner)
    } else {
        consumer.is_none_or(|c| owner == Some(c))
    }
}

/// `data` of [`ENDPOINT_DISABLED`] (and of [`SUBSCRIPTION_DISABLED`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointDisabled {
    /// The subscription that stopped receiving events.
    pub subscription_id: String,
    /// Its owner, if any.
    pub consumer: Option<String>,
    /// Its endpoint.
    pub url: String,
    /// Why: `endpoint answered 410 Gone`, `failing since …`, or the reason given by hand.
    pub reason: String,
}

/// `data` of [`ENDPOINT_RECOVERED`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointRecovered {
    /// The subscription whose endpoint recovered.
    pub subscription_id: String,
    /// Its owner, if any.
    pub consumer: Option<String>,
    /// Its endpoint.
    pub url: String,
    /// When its circuit breaker was first seen open (RFC 3339).
    pub circuit_opened_at: String,
    /// The first successful delivery after that (RFC 3339).
    pub recovered_at: String,
}

/// `data` of [`MESSAGE_EXHAUSTED`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MessageExhausted {
    /// The dead letter (`dl_…`): `POST /v1/dead-letters/redrive` takes it.
    pub dead_letter_id: String,
    /// The event that was not delivered (its `webhook-id`).
    pub event_id: String,
    /// Its type.
    pub event_type: String,
    /// The subscription it was not delivered to.
    pub subscription_id: String,
    /// Its owner, if any.
    pub consumer: Option<String>,
    /// Its endpoint.
    pub url: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last failure.
    pub last_error: Option<String>,
    /// When it was dead-lettered (RFC 3339).
    pub dead_at: String,
}

/// A stable event id derived from what the event is about, so that announcing the same fact
/// twice (a restart between publishing and recording) gives receivers the same `webhook-id`.
pub fn derived_id(kind: &str, parts: &[&str]) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    let digest = hash.finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("evt_{kind}_{hex}")
}

/// A built-in catalogue entry.
#[derive(Debug, Clone, PartialEq)]
pub struct BuiltinType {
    /// Type name.
    pub name: &'static str,
    /// What it means.
    pub description: &'static str,
    /// JSON Schema of `data`.
    pub schema: Value,
    /// One example of `data`.
    pub example: Value,
    /// Whether it is being phased out.
    pub deprecated: bool,
}

fn nullable_string() -> Value {
    json!({"type": ["string", "null"]})
}

fn disabled_schema() -> Value {
    json!({
        "$schema": crate::event_schema::DRAFT_2020_12,
        "type": "object",
        "required": ["subscription_id", "consumer", "url", "reason"],
        "properties": {
            "subscription_id": {"type": "string"},
            "consumer": nullable_string(),
            "url": {"type": "string"},
            "reason": {"type": "string"}
        }
    })
}

fn disabled_example() -> Value {
    json!({"subscription_id": "sub_01JD5X0M5V7C2Q9W8Y4B6N3R1T", "consumer": "acme",
           "url": "https://hooks.acme.example/relay", "reason": "endpoint answered 410 Gone"})
}

/// Every built-in type, with its payload schema and an example.
pub fn builtin_types() -> Vec<BuiltinType> {
    vec![
        BuiltinType {
            name: ENDPOINT_DISABLED,
            description: "A subscription stopped receiving events: its endpoint answered 410 Gone, \
                          it failed for api.disable_after_failing_for, or it was disabled by hand.",
            schema: disabled_schema(),
            example: disabled_example(),
            deprecated: false,
        },
        BuiltinType {
            name: SUBSCRIPTION_DISABLED,
            description: "The former name of relay.endpoint.disabled, sent beside it (same data) \
                          for one release; subscribe to relay.endpoint.disabled instead.",
            schema: disabled_schema(),
            example: disabled_example(),
            deprecated: true,
        },
        BuiltinType {
            name: ENDPOINT_RECOVERED,
            description: "An endpoint whose circuit breaker had opened answered 2xx again.",
            schema: json!({
                "$schema": crate::event_schema::DRAFT_2020_12,
                "type": "object",
                "required": ["subscription_id", "consumer", "url", "circuit_opened_at", "recovered_at"],
                "properties": {
                    "subscription_id": {"type": "string"},
                    "consumer": nullable_string(),
                    "url": {"type": "string"},
                    "circuit_opened_at": {"type": "string", "format": "date-time"},
                    "recovered_at": {"type": "string", "format": "date-time"}
                }
            }),
            example: json!({"subscription_id": "sub_01JD5X0M5V7C2Q9W8Y4B6N3R1T", "consumer": "acme",
                            "url": "https://hooks.acme.example/relay",
                            "circuit_opened_at": "2026-11-29T04:40:00Z", "recovered_at": "2026-11-29T04:52:13Z"}),
            deprecated: false,
        },
        BuiltinType {
            name: MESSAGE_EXHAUSTED,
            description: "A delivery was dead-lettered: it used up its retry schedule, or its \
                          destination is refused (listed under /v1/dead-letters, redrivable). \
                          Not sent for events of relay.* types, so a failing operator endpoint \
                          cannot feed itself.",
            schema: json!({
                "$schema": crate::event_schema::DRAFT_2020_12,
                "type": "object",
                "required": ["dead_letter_id", "event_id", "event_type", "subscription_id",
                             "consumer", "url", "attempts", "last_error", "dead_at"],
                "properties": {
                    "dead_letter_id": {"type": "string"},
                    "event_id": {"type": "string"},
                    "event_type": {"type": "string"},
                    "subscription_id": {"type": "string"},
                    "consumer": nullable_string(),
                    "url": {"type": "string"},
                    "attempts": {"type": "integer", "minimum": 1},
                    "last_error": nullable_string(),
                    "dead_at": {"type": "string", "format": "date-time"}
                }
            }),
            example: json!({"dead_letter_id": "dl_01JD6A1B2C3D4E5F6G7H8J9K0M",
                            "event_id": "evt_01JD5X2Q8M4T6V1C3B9N7K5R2P", "event_type": "order.created",
                            "subscription_id": "sub_01JD5X0M5V7C2Q9W8Y4B6N3R1T", "consumer": "acme",
                            "url": "https://hooks.acme.example/relay", "attempts": 8,
                            "last_error": "endpoint answered HTTP 503", "dead_at": "2026-11-30T21:35:05Z"}),
            deprecated: false,
        },
        BuiltinType {
            name: PING,
            description: "A test event sent to one subscription by POST /v1/subscriptions/{id}/test.",
            schema: json!({
                "$schema": crate::event_schema::DRAFT_2020_12,
                "type": "object",
                "required": ["subscription_id"],
                "properties": {"subscription_id": {"type": "string"}}
            }),
            example: json!({"subscription_id": "sub_01JD5X0M5V7C2Q9W8Y4B6N3R1T"}),
            deprecated: false,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{event_schema::CompiledSchema, filter::validate_event_type};

    #[test]
    fn builtin_schemas_compile_and_accept_their_examples_and_payloads() {
        let types = builtin_types();
        for t in &types {
            assert!(
                is_reserved(t.name) && validate_event_type(t.name).is_ok(),
                "{}",
                t.name
            );
            let schema = CompiledSchema::compile(&t.schema).unwrap();
            schema
                .check(&t.example)
                .unwrap_or_else(|v| panic!("{}: example fails: {v}", t.name));
        }
        let by_name = |n: &str| {
            let t = types.iter().find(|t| t.name == n).unwrap();
            CompiledSchema::compile(&t.schema).unwrap()
        };
        let disabled = serde_json::to_value(EndpointDisabled {
            subscription_id: "sub_1".into(),
            consumer: None,
            url: "https://x.example/".into(),
            reason: "endpoint answered 410 Gone".into(),
        })
        .unwrap();
        by_name(ENDPOINT_DISABLED).check(&disabled).unwrap();
        by_name(SUBSCRIPTION_DISABLED).check(&disabled).unwrap();
        let exhausted = serde_json::to_value(MessageExhausted {
            dead_letter_id: "dl_1".into(),
            event_id: "evt_1".into(),
            event_type: "order.created".into(),
            subscription_id: "sub_1".into(),
            consumer: Some("acme".into()),
            url: "https://x.example/".into(),
            attempts: 8,
            last_error: None,
            dead_at: "2026-01-01T00:00:00Z".into(),
        })
        .unwrap();
        by_name(MESSAGE_EXHAUSTED).check(&exhausted).unwrap();
        let recovered = serde_json::to_value(EndpointRecovered {
            subscription_id: "sub_1".into(),
            consumer: None,
            url: "https://x.example/".into(),
            circuit_opened_at: "2026-01-01T00:00:00Z".into(),
            recovered_at: "2026-01-01T00:01:00Z".into(),
        })
        .unwrap();
        by_name(ENDPOINT_RECOVERED).check(&recovered).unwrap();
        assert!(
            types
                .iter()
                .any(|t| t.name == SUBSCRIPTION_DISABLED && t.deprecated)
        );
    }

    #[test]
    fn operators_receive_every_consumers_events_and_tenants_their_own() {
        assert!(reaches(Some("acme"), None));
        assert!(reaches(None, None));
        assert!(reaches(Some("acme"), Some("acme")));
        assert!(!reaches(Some("acme"), Some("globex")));
        assert!(
            !reaches(None, Some("acme")),
            "an operator's events stay with operators"
        );
        let disabled = ENDPOINT_DISABLED;
        assert!(addressed(disabled, Some("acme"), None));
        assert!(!addressed(disabled, None, Some("acme")));
        assert!(!addressed("order.created", Some("acme"), None));
        assert!(addressed("order.created", None, Some("acme")));
        assert!(addressed("order.created", Some("acme"), Some("acme")));
    }

    #[test]
    fn derived_ids_are_stable_valid_and_distinct() {
        let a = derived_id("exhausted", &["evt_1", "sub_1"]);
        assert_eq!(a, derived_id("exhausted", &["evt_1", "sub_1"]));
        assert_ne!(a, derived_id("exhausted", &["evt_1s", "ub_1"]));
        assert!(a.len() <= crate::envelope::MAX_ID_LEN && a.starts_with("evt_exhausted_"));
    }
}
