//! The event envelope: what producers send (over HTTP or AMQP), how it is validated and
//! normalised, and what subscribers receive.
//!
//! ```json
//! {"id": "evt_…", "type": "order.created", "data": {…}, "consumer": "acme", "occurred_at": "2026-01-01T00:00:00Z",
//!  "ordering_key": "order-1042"}
//! ```

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::filter::validate_event_type;

/// The longest id (producer-supplied or assigned) in bytes.
pub const MAX_ID_LEN: usize = 128;
/// The longest consumer name in bytes.
pub const MAX_CONSUMER_LEN: usize = 64;

/// What a producer sent, before validation. Unknown fields are refused so that a typo such as
/// `"tpye"` is an error rather than a silently dropped field.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncomingEvent {
    /// Producer's idempotency key; assigned when absent.
    #[serde(default)]
    pub id: Option<String>,
    /// Event type, such as `order.created`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Any JSON; kept byte for byte.
    #[serde(default)]
    pub data: Option<Box<RawValue>>,
    /// Restricts delivery to this consumer's subscriptions.
    #[serde(default)]
    pub consumer: Option<String>,
    /// RFC 3339 time the event happened; the acceptance time when absent.
    #[serde(default)]
    pub occurred_at: Option<String>,
    /// Events with the same key go to the same ingress shard, and subscriptions with
    /// `"ordering": "key"` receive them in publish order; the event id when absent.
    #[serde(default)]
    pub ordering_key: Option<String>,
}

/// A validated, normalised event: every field present, `occurred_at` in UTC.
/// This is the body on the broker and the body subscribers receive.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    /// Unique id; the `webhook-id` of every delivery of this event.
    pub id: String,
    /// Event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// RFC 3339 UTC time.
    pub occurred_at: String,
    /// Target consumer, if the producer named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
    /// The producer's payload.
    pub data: Box<RawValue>,
    /// The producer's ordering key, if it gave one (see [`Envelope::ordering_key`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering_key: Option<String>,
}

/// Why an event was refused; `field` is the JSON path at fault (empty for the whole body).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {field}: {reason}")]
pub struct EnvelopeError {
    /// Which kind of problem this is.
    pub kind: EnvelopeErrorKind,
    /// JSON path of the offending field, e.g. `type` or `[2].id`; empty for the body itself.
    pub field: String,
    /// Human-readable reason.
    pub reason: String,
}

/// The kinds of envelope error, each with its own stable problem type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvelopeErrorKind {
    /// The body is not JSON at all.
    MalformedJson,
    /// JSON, but a field is missing, unknown, of the wrong type or has a bad value.
    InvalidField,
}

impl std::fmt::Display for EnvelopeErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::MalformedJson => "malformed JSON",
            Self::InvalidField => "invalid field",
        })
    }
}

impl EnvelopeError {
    fn field(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            kind: EnvelopeErrorKind::InvalidField,
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The same error, with its field path placed under `prefix` (e.g. a batch index).
    #[must_use]
    pub fn within(mut self, prefix: &str) -> Self {
        self.field = if self.field.is_empty() {
            prefix.to_owned()
        } else {
            format!("{prefix}.{}", self.field)
        };
        self
    }
}

/// Parses JSON into `T`, reporting the path of the offending field.
///
/// # Errors
/// [`EnvelopeErrorKind::MalformedJson`] for a body that is not JSON,
/// [`EnvelopeErrorKind::InvalidField`] for JSON of the wrong shape.
pub fn parse_json<'de, T: Deserialize<'de>>(body: &'de [u8]) -> Result<T, EnvelopeError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: Result<T, _> = serde_path_to_error::deserialize(&mut de);
    if value.is_ok()
        && let Err(e) = de.end()
    {
        return Err(EnvelopeError {
            kind: EnvelopeErrorKind::MalformedJson,
            field: String::new(),
            reason: e.to_string(),
        });
    }
    value.map_err(|err| {
        let path = match err.path().to_string() {
            p if p == "?" => ".".to_owned(),
            p => p,
        };
        let inner = err.into_inner();
        let kind = match inner.classify() {
            serde_json::error::Category::Data => EnvelopeErrorKind::InvalidField,
            _ => EnvelopeErrorKind::MalformedJson,
        };
        let mut reason = inner.to_string();
        let join = |name: &str| {
            if path == "." {
                name.to_owned()
            } else {
                format!("{path}.{name}")
            }
        };
        // serde names a missing or unknown field in its message; surface it as the field at fault.
        let field = if let Some(name) = backticked(&reason, "missing field `") {
            reason = format!("{name} is required");
            join(&name)
        } else if let Some(name) = backticked(&reason, "unknown field `") {
            reason = format!("{name} is not a field of this object");
            // For an unknown field the path already ends at the field itself.
            if path == "." { name } else { path }
        } else if path == "." {
            String::new()
        } else {
            path
        };
        EnvelopeError {
            kind,
            field,
            reason,
        }
    })
}

fn backticked(message: &str, prefix: &str) -> Option<String> {
    let rest = message.strip_prefix(prefix)?;
    rest.split('`').next().map(str::to_owned)
}

fn valid_token(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

/// Formats a time as RFC 3339 in UTC.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_else(|_| String::from("1970-01-01T00:00:00Z"))
}

impl IncomingEvent {
    /// Validates and normalises the event; `assign_id` supplies the id when the producer gave none.
    ///
    /// # Errors
    /// An [`EnvelopeError`] naming the field at fault.
    pub fn normalise(
        self,
        now: OffsetDateTime,
        assign_id: impl FnOnce() -> String,
    ) -> Result<Envelope, EnvelopeError> {
        validate_event_type(&self.event_type)
            .map_err(|e| EnvelopeError::field("type", e.to_string()))?;
        let id = match self.id {
            Some(id) if valid_token(&id, MAX_ID_LEN) => id,
            Some(_) => {
                return Err(EnvelopeError::field(
                    "id",
                    format!(
                        "id must be 1 to {MAX_ID_LEN} characters of A-Z, a-z, 0-9, '_', '-', '.', ':'"
                    ),
                ));
            }
            None => assign_id(),
        };
        if let Some(consumer) = &self.consumer
            && !valid_token(consumer, MAX_CONSUMER_LEN)
        {
            return Err(EnvelopeError::field(
                "consumer",
                format!(
                    "consumer must be 1 to {MAX_CONSUMER_LEN} characters of A-Z, a-z, 0-9, '_', '-', '.', ':'"
                ),
            ));
        }
        if let Some(key) = &self.ordering_key
            && !valid_token(key, MAX_ID_LEN)
        {
            return Err(EnvelopeError::field(
                "ordering_key",
                format!(
                    "ordering_key must be 1 to {MAX_ID_LEN} characters of A-Z, a-z, 0-9, '_', '-', '.', ':'"
                ),
            ));
        }
        let occurred_at = match self.occurred_at {
            None => rfc3339(now),
            Some(s) => match OffsetDateTime::parse(&s, &Rfc3339) {
                Ok(t) => rfc3339(t),
                Err(e) => {
                    return Err(EnvelopeError::field(
                        "occurred_at",
                        format!(
                            "occurred_at must be an RFC 3339 time such as 2026-01-01T00:00:00Z ({e})"
                        ),
                    ));
                }
            },
        };
        let data = match self.data {
            Some(data) => data,
            None => RawValue::from_string("null".to_owned())
                .map_err(|e| EnvelopeError::field("data", e.to_string()))?,
        };
        Ok(Envelope {
            id,
            event_type: self.event_type,
            occurred_at,
            consumer: self.consumer,
            data,
            ordering_key: self.ordering_key,
        })
    }
}

impl Envelope {
    /// The key that places the event on an ingress shard and orders it: the producer's
    /// `ordering_key`, else the event id (so events without one spread evenly).
    pub fn ordering_key(&self) -> &str {
        self.ordering_key.as_deref().unwrap_or(&self.id)
    }

    /// The JSON body delivered to subscribers and stored on the broker.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising a struct of strings and a RawValue cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The envelope of an AMQP message body: validated and normalised like an HTTP event, its id
/// taken from the body, else the AMQP `message_id`, else derived from the content (see
/// [`content_id`]). Dispatchers and the recorder both read messages this way, so they agree
/// on every event's id.
///
/// # Errors
/// An [`EnvelopeError`] naming the field at fault.
pub fn from_amqp(
    body: &[u8],
    message_id: Option<&str>,
    now: OffsetDateTime,
) -> Result<Envelope, EnvelopeError> {
    parse_json::<IncomingEvent>(body)?.normalise(now, || content_id(body, message_id))
}

/// A stable id for an event published over AMQP without one: derived from its content, so
/// every redelivery of that message carries the same `webhook-id`.
pub fn content_id(body: &[u8], message_id: Option<&str>) -> String {
    if let Some(id) = message_id.filter(|id| valid_token(id, MAX_ID_LEN)) {
        return id.to_owned();
    }
    let digest = Sha256::digest(body);
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("evt_{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap()
    }

    fn normalise(body: &str) -> Result<Envelope, EnvelopeError> {
        parse_json::<IncomingEvent>(body.as_bytes())?.normalise(now(), || "evt_assigned".into())
    }

    #[test]
    fn minimal_event_gets_id_and_time_and_keeps_data_verbatim() {
        let e = normalise(r#"{"type":"order.created","data":{"b":1, "a":[2]}}"#).unwrap();
        assert_eq!(e.id, "evt_assigned");
        assert_eq!(e.occurred_at, "2023-11-14T22:13:20Z");
        assert_eq!(e.data.get(), r#"{"b":1, "a":[2]}"#);
        let json: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(json["type"], "order.created");
        assert!(json.get("consumer").is_none());
    }

    #[test]
    fn producer_fields_are_kept_and_time_normalised_to_utc() {
        let e = normalise(
            r#"{"id":"ord-1:created","type":"a.b","consumer":"acme","occurred_at":"2026-01-01T02:00:00+02:00"}"#,
        )
        .unwrap();
        assert_eq!(e.id, "ord-1:created");
        assert_eq!(e.consumer.as_deref(), Some("acme"));
        assert_eq!(e.occurred_at, "2026-01-01T00:00:00Z");
        assert_eq!(e.data.get(), "null");
    }

    #[test]
    fn errors_name_their_field() {
        let cases = [
            ("{", EnvelopeErrorKind::MalformedJson, ""),
            ("1", EnvelopeErrorKind::InvalidField, ""),
            (r#"{"data":{}}"#, EnvelopeErrorKind::InvalidField, "type"),
            (r#"{"type":5}"#, EnvelopeErrorKind::InvalidField, "type"),
            (
                r#"{"type":"Bad Type"}"#,
                EnvelopeErrorKind::InvalidField,
                "type",
            ),
            (
                r#"{"type":"a","id":"has space"}"#,
                EnvelopeErrorKind::InvalidField,
                "id",
            ),
            (
                r#"{"type":"a","id":""}"#,
                EnvelopeErrorKind::InvalidField,
                "id",
            ),
            (
                r#"{"type":"a","consumer":"x/y"}"#,
                EnvelopeErrorKind::InvalidField,
                "consumer",
            ),
            (
                r#"{"type":"a","ordering_key":"has space"}"#,
                EnvelopeErrorKind::InvalidField,
                "ordering_key",
            ),
            (
                r#"{"type":"a","ordering_key":""}"#,
                EnvelopeErrorKind::InvalidField,
                "ordering_key",
            ),
            (
                &format!(r#"{{"type":"a","ordering_key":"{}"}}"#, "k".repeat(129)),
                EnvelopeErrorKind::InvalidField,
                "ordering_key",
            ),
            (
                r#"{"type":"a","occurred_at":"yesterday"}"#,
                EnvelopeErrorKind::InvalidField,
                "occurred_at",
            ),
            (
                r#"{"type":"a","tpye":"b"}"#,
                EnvelopeErrorKind::InvalidField,
                "tpye",
            ),
            (
                r#"{"type":"a"} trailing"#,
                EnvelopeErrorKind::MalformedJson,
                "",
            ),
        ];
        for (body, kind, field) in cases {
            let err = normalise(body).unwrap_err();
            assert_eq!(
                (err.kind, err.field.as_str()),
                (kind, field),
                "{body}: {err}"
            );
        }
    }

    #[test]
    fn the_ordering_key_defaults_to_the_id_and_is_delivered_when_given() {
        let plain = normalise(r#"{"type":"a","id":"e1"}"#).unwrap();
        assert_eq!(plain.ordering_key(), "e1");
        assert!(
            !String::from_utf8(plain.to_json())
                .unwrap()
                .contains("ordering_key")
        );
        let keyed = normalise(&format!(
            r#"{{"type":"a","id":"e2","ordering_key":"{}"}}"#,
            "k".repeat(128)
        ))
        .unwrap();
        assert_eq!(keyed.ordering_key(), "k".repeat(128));
        let json = String::from_utf8(keyed.to_json()).unwrap();
        assert!(json.contains(r#""ordering_key":"kkk"#), "{json}");
    }

    #[test]
    fn content_id_is_stable_and_prefers_message_id() {
        assert_eq!(content_id(b"x", None), content_id(b"x", None));
        assert_ne!(content_id(b"x", None), content_id(b"y", None));
        assert_eq!(content_id(b"x", Some("m-1")), "m-1");
        assert!(content_id(b"x", Some("bad id")).starts_with("evt_"));
    }
}
