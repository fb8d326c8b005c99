//! Every message Relay puts on the broker, as a type with its one encoder (to an AMQP body and
//! properties) and its one decoder (from a delivery's body and properties):
//!
//! | message | type | from → to |
//! | --- | --- | --- |
//! | an event | [`Event`] | ingest, producers, consumer-api → `events` → `ingress`, `archive` |
//! | an event, as the recorder stores it | [`Archived`] | `archive` → recorder |
//! | a delivery handed off | [`Handoff`] | dispatcher → retry tier / `dead`; consumer-api → `retry-ready` |
//! | an unreadable message | [`Invalid`] | dispatcher → `invalid` |
//! | a directory change | [`ControlMessage`] | consumer-api → `control` → every dispatcher |
//! | attempt records | [`AttemptRecord`] batches | dispatcher → `attempts` → recorder |
//!
//! The `x-relay-*` header names are private to this module: nothing else reads or writes them,
//! so a producer, a dispatcher and the recorder cannot drift apart on what a message carries.

use std::{borrow::Cow, sync::Arc, time::Duration};

use bytes::Bytes;
use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, ShortString},
};
use serde::Deserialize;
use time::OffsetDateTime;

use crate::{
    amqp::{self, Outgoing},
    attempt::AttemptRecord,
    control::ControlMessage,
    envelope::{self, Envelope, EnvelopeError},
    trace::{self, TraceParent},
};

/// Acceptance time in Unix milliseconds, stamped by ingest; latency is measured from it.
const ACCEPTED_MS: &str = "x-relay-accepted-ms";
/// Why a message was parked in `invalid`.
const INVALID_REASON: &str = "x-relay-invalid-reason";
/// The subscription a handed-off delivery is for.
const SUBSCRIPTION: &str = "x-relay-subscription-id";
/// Attempts made so far.
const ATTEMPTS: &str = "x-relay-attempts";
/// The event id (also the `message_id`), kept for tools reading dead letters.
const EVENT_ID: &str = "x-relay-event-id";
/// The last failure of a handed-off delivery.
const LAST_ERROR: &str = "x-relay-last-error";
/// The last HTTP status of a handed-off delivery (absent if none).
const LAST_STATUS: &str = "x-relay-last-status";
/// Present on a fresh event's first attempt that its subscription deferred.
const FRESH: &str = "x-relay-fresh";

/// Why a delivery is not the message it should be.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The body is not a valid event envelope.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// A header the message needs is absent.
    #[error("header {0} is missing")]
    MissingHeader(&'static str),
    /// A header has a value of the wrong shape.
    #[error("header {name} is not valid: {value:?}")]
    BadHeader {
        /// The header.
        name: &'static str,
        /// What it held.
        value: String,
    },
    /// The body is not the JSON this message carries.
    #[error("body is not valid: {0}")]
    Json(#[from] serde_json::Error),
}

/// An event on `events`, as ingest, consumer-api and AMQP producers publish it and as
/// dispatchers (from `ingress`) and the recorder (from `archive`) read it.
#[derive(Debug, Clone)]
pub struct Event {
    /// The validated, normalised envelope.
    pub envelope: Envelope,
    /// The envelope as JSON: the body every subscriber receives.
    pub body: Bytes,
    /// When Relay accepted it (Unix ms); `None` for an event a producer published straight
    /// over AMQP.
    pub accepted_ms: Option<i64>,
    /// The producer's trace, continued by every delivery.
    pub trace: Option<TraceParent>,
}

impl Event {
    /// An event accepted now, carrying `trace`.
    pub fn accepted(envelope: Envelope, trace: Option<TraceParent>) -> Self {
        Self {
            body: Bytes::from(envelope.to_json()),
            envelope,
            accepted_ms: Some(unix_ms(OffsetDateTime::now_utc())),
            trace,
        }
    }

    /// An event read back from a store (replay, redrive): validated again, unstamped (its
    /// latency is not the original publish-to-delivery time), without a trace.
    ///
    /// # Errors
    /// [`WireError::Envelope`] when `body` is not a valid envelope.
    pub fn stored(body: &[u8], event_id: &str) -> Result<Self, WireError> {
        let envelope = envelope::from_amqp(body, Some(event_id), OffsetDateTime::now_utc())?;
        Ok(Self {
            body: Bytes::from(envelope.to_json()),
            envelope,
            accepted_ms: None,
            trace: None,
        })
    }

    /// Persistent, `message_id` = event id, `type` = event type, acceptance time and trace in
    /// headers.
    pub fn encode(&self) -> Outgoing {
        let mut headers = FieldTable::default();
        self.put_headers(&mut headers);
        let mut properties = amqp::persistent_json()
            .with_message_id(self.envelope.id.as_str().into())
            .with_type(self.envelope.event_type.as_str().into())
            .with_headers(headers);
        if let Some(ms) = self.accepted_ms {
            properties = properties.with_timestamp(u64::try_from(ms / 1000).unwrap_or_default());
        }
        Outgoing {
            body: self.body.to_vec(),
            properties,
            mandatory: true,
        }
    }

    /// Reads an event: the envelope is validated like an HTTP one; its id comes from the body,
    /// else the `message_id`, else the content (so every redelivery has the same id).
    ///
    /// # Errors
    /// [`WireError::Envelope`] when the body is not a valid envelope.
    pub fn decode(body: &[u8], properties: &BasicProperties) -> Result<Self, WireError> {
        let message_id = properties.message_id().as_ref().map(ShortString::as_str);
        let envelope = envelope::from_amqp(body, message_id, OffsetDateTime::now_utc())?;
        let headers = properties.headers().as_ref();
        Ok(Self {
            body: Bytes::from(envelope.to_json()),
            envelope,
            accepted_ms: amqp::header_i64(headers, ACCEPTED_MS),
            trace: amqp::header_text(headers, trace::HEADER)
                .and_then(|t| trace::parse_traceparent(&t)),
        })
    }

    fn put_headers(&self, headers: &mut FieldTable) {
        if let Some(ms) = self.accepted_ms {
            headers.insert(ACCEPTED_MS.into(), AMQPValue::LongLongInt(ms));
        }
        if let Some(trace) = &self.trace {
            amqp::header(headers, trace::HEADER, trace.to_string());
        }
    }
}

/// An event as the recorder stores it: the fields the store indexes, and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archived {
    /// The event id.
    pub id: String,
    /// The event type.
    pub event_type: String,
    /// The consumer it is for, if any.
    pub consumer: Option<String>,
    /// When Relay accepted it (Unix ms); `None` for an event a producer published straight
    /// over AMQP.
    pub accepted_ms: Option<i64>,
    /// The normalised envelope as JSON.
    pub body: String,
}

/// The fields of a body the store indexes, borrowed where the JSON has no escapes.
#[derive(Deserialize)]
struct Indexed<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(rename = "type", borrow)]
    event_type: Cow<'a, str>,
    #[serde(default, borrow)]
    consumer: Option<Cow<'a, str>>,
}

impl Archived {
    /// Reads an `archive` message. One that Relay published (ingest or consumer-api: the
    /// acceptance time in its headers, `message_id` and `type` set) carries Relay's own
    /// normalised envelope, so it is stored as it came: only the indexed fields are read from
    /// the body, and they must agree with the properties. Anything else (a producer's own
    /// AMQP message) is read as dispatchers read it, with [`Event::decode`], so both agree on
    /// every event's id and body. Validating and re-serialising every envelope was most of
    /// the recorder's parsing cost.
    ///
    /// # Errors
    /// [`WireError::Envelope`] when a producer's body is not a valid envelope.
    pub fn decode(body: &[u8], properties: &BasicProperties) -> Result<Self, WireError> {
        if let Some(archived) = Self::from_relay(body, properties) {
            return Ok(archived);
        }
        let event = Event::decode(body, properties)?;
        Ok(Self {
            body: String::from_utf8_lossy(&event.body).into_owned(),
            accepted_ms: event.accepted_ms,
            id: event.envelope.id,
            event_type: event.envelope.event_type,
            consumer: event.envelope.consumer,
        })
    }

    fn from_relay(body: &[u8], properties: &BasicProperties) -> Option<Self> {
        let accepted_ms = amqp::header_i64(properties.headers().as_ref(), ACCEPTED_MS)?;
        let message_id = properties.message_id().as_ref()?.as_str();
        let event_type = properties.kind().as_ref()?.as_str();
        let text = std::str::from_utf8(body).ok()?;
        let indexed: Indexed<'_> = serde_json::from_str(text).ok()?;
        (indexed.id == message_id && indexed.event_type == event_type).then(|| Self {
            id: indexed.id.into_owned(),
            event_type: indexed.event_type.into_owned(),
            consumer: indexed.consumer.map(Cow::into_owned),
            accepted_ms: Some(accepted_ms),
            body: text.to_owned(),
        })
    }
}

/// One event's delivery to one subscription, handed off durably: to a retry tier (expiring
/// into `redeliver`), to `retry-ready` (replays, redrives, test pings from consumer-api) or
/// to `dead`.
#[derive(Debug, Clone)]
pub struct Handoff {
    /// The event.
    pub event: Arc<Event>,
    /// The subscription it is for.
    pub subscription_id: String,
    /// Attempts made so far (0 for a fresh schedule).
    pub attempts: u32,
    /// The last failure, if an attempt failed.
    pub last_error: Option<String>,
    /// The last HTTP status, if the endpoint answered.
    pub last_status: Option<u16>,
    /// A fresh event's first attempt, deferred by its subscription's rate limit or breaker
    /// before it was made: it is still a first attempt when it comes back. False for retries
    /// and for what consumer-api sends (replays, redrives, test pings).
    pub fresh: bool,
}

impl Handoff {
    /// Persistent, `message_id` = event id, the event's headers plus the delivery's; with
    /// `ttl`, the message expires after it (retry tiers dead-letter it into `redeliver`).
    pub fn encode(&self, ttl: Option<Duration>) -> Outgoing {
        let mut headers = FieldTable::default();
        self.event.put_headers(&mut headers);
        amqp::header(&mut headers, EVENT_ID, self.event.envelope.id.as_str());
        amqp::header(&mut headers, SUBSCRIPTION, self.subscription_id.as_str());
        amqp::header(&mut headers, ATTEMPTS, self.attempts.to_string());
        if let Some(error) = &self.last_error {
            amqp::header(&mut headers, LAST_ERROR, error.as_str());
        }
        if let Some(status) = self.last_status {
            amqp::header(&mut headers, LAST_STATUS, status.to_string());
        }
        if self.fresh {
            headers.insert(FRESH.into(), AMQPValue::Boolean(true));
        }
        let mut properties = amqp::persistent_json()
            .with_message_id(self.event.envelope.id.as_str().into())
            .with_headers(headers);
        if let Some(ttl) = ttl {
            properties = properties.with_expiration(ttl.as_millis().to_string().into());
        }
        Outgoing {
            body: self.event.body.to_vec(),
            properties,
            mandatory: true,
        }
    }

    /// Reads a handed-off delivery (from `redeliver` or `dead`).
    ///
    /// # Errors
    /// The body is not a valid envelope, or the subscription header is missing, or a number
    /// header is malformed.
    pub fn decode(body: &[u8], properties: &BasicProperties) -> Result<Self, WireError> {
        let event = Event::decode(body, properties)?;
        let headers = properties.headers().as_ref();
        let subscription_id = amqp::header_text(headers, SUBSCRIPTION)
            .ok_or(WireError::MissingHeader(SUBSCRIPTION))?;
        let number = |name: &'static str| -> Result<Option<i64>, WireError> {
            match amqp::header_text(headers, name) {
                None => Ok(None),
                Some(value) => value
                    .parse()
                    .map(Some)
                    .map_err(|_| WireError::BadHeader { name, value }),
            }
        };
        let attempts = number(ATTEMPTS)?.unwrap_or(0);
        let last_status = number(LAST_STATUS)?;
        Ok(Self {
            event: Arc::new(event),
            subscription_id,
            attempts: u32::try_from(attempts).map_err(|_| WireError::BadHeader {
                name: ATTEMPTS,
                value: attempts.to_string(),
            })?,
            last_error: amqp::header_text(headers, LAST_ERROR),
            last_status: last_status.and_then(|s| u16::try_from(s).ok()),
            fresh: amqp::header_bool(headers, FRESH),
        })
    }
}

/// A message that could not be read, parked in `invalid` as it came, with the reason.
#[derive(Debug, Clone)]
pub struct Invalid {
    /// The body as received.
    pub body: Vec<u8>,
    /// The properties as received.
    pub properties: BasicProperties,
    /// Why it was parked.
    pub reason: String,
}

impl Invalid {
    /// The original body and properties, made persistent, plus the reason header.
    pub fn encode(&self) -> Outgoing {
        let mut headers = self.properties.headers().clone().unwrap_or_default();
        amqp::header(&mut headers, INVALID_REASON, self.reason.as_str());
        Outgoing {
            body: self.body.clone(),
            properties: self
                .properties
                .clone()
                .with_headers(headers)
                .with_delivery_mode(2),
            mandatory: true,
        }
    }

    /// Reads a parked message.
    ///
    /// # Errors
    /// [`WireError::MissingHeader`] when it carries no reason.
    pub fn decode(body: &[u8], properties: &BasicProperties) -> Result<Self, WireError> {
        let reason = amqp::header_text(properties.headers().as_ref(), INVALID_REASON)
            .ok_or(WireError::MissingHeader(INVALID_REASON))?;
        Ok(Self {
            body: body.to_vec(),
            properties: properties.clone(),
            reason,
        })
    }
}

impl ControlMessage {
    /// JSON tagged by `op`, persistent.
    pub fn encode(&self) -> Outgoing {
        Outgoing {
            // A message of strings and integers always serialises.
            body: serde_json::to_vec(self).unwrap_or_default(),
            properties: amqp::persistent_json(),
            // Fanned out to the processes running now; none may be.
            mandatory: false,
        }
    }

    /// Reads a directory change.
    ///
    /// # Errors
    /// [`WireError::Json`] when the body is not one.
    pub fn decode(body: &[u8], _properties: &BasicProperties) -> Result<Self, WireError> {
        Ok(serde_json::from_slice(body)?)
    }
}

impl AttemptRecord {
    /// A batch of records: a JSON array, persistent.
    pub fn encode_batch(records: &[Self]) -> Outgoing {
        Outgoing {
            // Records of strings and numbers always serialise.
            body: serde_json::to_vec(records).unwrap_or_default(),
            properties: amqp::persistent_json(),
            mandatory: true,
        }
    }

    /// Reads an `attempts` message: a JSON array of records, or one record (as published
    /// before batching).
    ///
    /// # Errors
    /// [`WireError::Json`] when the body is neither.
    pub fn decode_batch(
        body: &[u8],
        _properties: &BasicProperties,
    ) -> Result<Vec<Self>, WireError> {
        if body.trim_ascii_start().starts_with(b"[") {
            Ok(serde_json::from_slice(body)?)
        } else {
            Ok(vec![serde_json::from_slice(body)?])
        }
    }
}

fn unix_ms(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use crate::attempt::AttemptOutcome;

    use super::*;

    fn event() -> Event {
        let envelope = envelope::from_amqp(
            br#"{"id":"evt_1","type":"order.created","data":{"n":1}}"#,
            None,
            OffsetDateTime::now_utc(),
        )
        .unwrap();
        Event::accepted(envelope, Some(TraceParent::new_root()))
    }

    #[test]
    fn an_event_round_trips_with_its_time_and_trace() {
        let sent = event();
        let out = sent.encode();
        assert_eq!(
            out.properties.message_id().as_ref().unwrap().as_str(),
            "evt_1"
        );
        assert_eq!(
            out.properties.kind().as_ref().unwrap().as_str(),
            "order.created"
        );
        assert_eq!(out.properties.delivery_mode(), &Some(2));
        let got = Event::decode(&out.body, &out.properties).unwrap();
        assert_eq!(got.envelope.to_json(), sent.envelope.to_json());
        assert_eq!(got.accepted_ms, sent.accepted_ms);
        assert_eq!(got.trace, sent.trace);
        assert_eq!(got.body, sent.body);
    }

    #[test]
    fn a_producers_bare_message_is_an_event_with_a_stable_id() {
        let body = br#"{"type":"order.created","data":{}}"#;
        let bare = BasicProperties::default();
        let one = Event::decode(body, &bare).unwrap();
        let two = Event::decode(body, &bare).unwrap();
        assert_eq!(one.envelope.id, two.envelope.id);
        assert_eq!((one.accepted_ms, one.trace), (None, None));
        let named = BasicProperties::default().with_message_id("evt_given".into());
        assert_eq!(
            Event::decode(body, &named).unwrap().envelope.id,
            "evt_given"
        );
        let err = Event::decode(b"not json", &bare).unwrap_err();
        assert!(err.to_string().contains("malformed JSON"), "{err}");
    }

    #[test]
    fn an_event_relay_published_is_archived_as_it_came() {
        let mut sent = event();
        sent.envelope.consumer = Some("acme".into());
        sent.body = Bytes::from(sent.envelope.to_json());
        let out = sent.encode();
        let got = Archived::decode(&out.body, &out.properties).unwrap();
        assert_eq!(
            got,
            Archived {
                id: "evt_1".into(),
                event_type: "order.created".into(),
                consumer: Some("acme".into()),
                accepted_ms: sent.accepted_ms,
                body: String::from_utf8(sent.body.to_vec()).unwrap(),
            }
        );
    }

    #[test]
    fn anything_else_is_archived_as_dispatchers_read_it() {
        // A producer's own message: no acceptance time, so the envelope is normalised.
        let raw =
            br#"{"type":"order.created","occurred_at":"2026-01-01T01:00:00+01:00","data":{"n":1}}"#;
        let named = BasicProperties::default().with_message_id("evt_given".into());
        let decoded = Event::decode(raw, &named).unwrap();
        let got = Archived::decode(raw, &named).unwrap();
        assert_eq!(got.id, "evt_given");
        assert_eq!(got.body.as_bytes(), &decoded.body[..]);
        assert_eq!(got.accepted_ms, None);
        // Relay's headers on a body whose id disagrees with them: the body's id wins, as in
        // a dispatcher.
        let out = event().encode();
        let props = out.properties.clone().with_message_id("evt_other".into());
        let got = Archived::decode(&out.body, &props).unwrap();
        assert_eq!(got.id, "evt_1");
        assert_eq!(
            got.body.as_bytes(),
            &Event::decode(&out.body, &props).unwrap().body[..]
        );
        // Not an envelope at all.
        assert!(Archived::decode(b"[1]", &out.properties).is_err());
    }

    #[test]
    fn a_handoff_round_trips_and_expires_only_when_asked() {
        let sent = Handoff {
            event: Arc::new(event()),
            subscription_id: "sub_1".into(),
            attempts: 3,
            last_error: Some("endpoint answered HTTP 500".into()),
            last_status: Some(500),
            fresh: false,
        };
        let out = sent.encode(Some(Duration::from_millis(1500)));
        assert_eq!(
            out.properties.expiration().as_ref().unwrap().as_str(),
            "1500"
        );
        assert!(sent.encode(None).properties.expiration().is_none());
        let got = Handoff::decode(&out.body, &out.properties).unwrap();
        assert_eq!(got.subscription_id, "sub_1");
        assert_eq!(got.attempts, 3);
        assert_eq!(got.last_error, sent.last_error);
        assert_eq!(got.last_status, Some(500));
        assert_eq!(got.event.envelope.to_json(), sent.event.envelope.to_json());
        assert_eq!(got.event.trace, sent.event.trace);
        assert_eq!(got.event.accepted_ms, sent.event.accepted_ms);
        assert!(!got.fresh);
        // A deferred first attempt says so; nothing else does.
        let deferred = Handoff {
            attempts: 0,
            fresh: true,
            ..sent
        };
        let out = deferred.encode(Some(Duration::from_millis(1500)));
        assert!(Handoff::decode(&out.body, &out.properties).unwrap().fresh);
    }

    #[test]
    fn a_handoff_needs_its_subscription_and_sane_numbers() {
        let plain = event().encode();
        let err = Handoff::decode(&plain.body, &plain.properties).unwrap_err();
        assert!(
            matches!(err, WireError::MissingHeader(SUBSCRIPTION)),
            "{err}"
        );
        let mut headers = FieldTable::default();
        amqp::header(&mut headers, SUBSCRIPTION, "sub_1");
        amqp::header(&mut headers, ATTEMPTS, "many");
        let props = plain.properties.clone().with_headers(headers);
        let err = Handoff::decode(&plain.body, &props).unwrap_err();
        assert!(
            matches!(err, WireError::BadHeader { name: ATTEMPTS, .. }),
            "{err}"
        );
    }

    #[test]
    fn an_invalid_message_keeps_what_it_was_and_says_why() {
        let original = BasicProperties::default().with_message_id("m1".into());
        let out = Invalid {
            body: b"garbage".to_vec(),
            properties: original,
            reason: "malformed JSON".into(),
        }
        .encode();
        assert_eq!(out.properties.delivery_mode(), &Some(2));
        let got = Invalid::decode(&out.body, &out.properties).unwrap();
        assert_eq!(
            (got.body.as_slice(), got.reason.as_str()),
            (&b"garbage"[..], "malformed JSON")
        );
        assert_eq!(got.properties.message_id().as_ref().unwrap().as_str(), "m1");
    }

    #[test]
    fn control_messages_and_attempt_batches_round_trip() {
        let control = ControlMessage::Delete { id: "sub_1".into() };
        let out = control.encode();
        assert_eq!(
            ControlMessage::decode(&out.body, &out.properties).unwrap(),
            control
        );

        let record = AttemptRecord {
            event_id: "evt_1".into(),
            subscription_id: "sub_1".into(),
            attempt: 1,
            at: "2026-01-01T00:00:00Z".into(),
            outcome: AttemptOutcome::Success,
            status: Some(200),
            latency_ms: 3,
            error: None,
            response_excerpt: None,
            next_attempt_at: None,
            request_headers: crate::attempt::Headers::default(),
            response_headers: crate::attempt::Headers::default(),
            response_headers_omitted: 0,
        };
        let out = AttemptRecord::encode_batch(&[record.clone(), record.clone()]);
        let got = AttemptRecord::decode_batch(&out.body, &out.properties).unwrap();
        assert_eq!(got, [record.clone(), record.clone()]);
        let one = serde_json::to_vec(&record).unwrap();
        let got = AttemptRecord::decode_batch(&one, &BasicProperties::default()).unwrap();
        assert_eq!(got, [record]);
        assert!(AttemptRecord::decode_batch(b"[1]", &BasicProperties::default()).is_err());
    }
}
