//! The record of one delivery attempt, published by dispatchers on the `attempts` queue and
//! stored by the consumer-api recorder (the delivery log).
//!
//! Dispatchers send records in batches; the message is encoded and decoded in [`crate::wire`].

use std::fmt;

use http::{HeaderMap, HeaderName, HeaderValue};
use serde::{
    Deserialize, Deserializer, Serialize, Serializer,
    de::{SeqAccess, Visitor},
    ser::SerializeSeq,
};

/// Response headers kept in a record, at most (the rest are counted, not kept).
pub const RESPONSE_HEADERS_MAX: usize = 32;
/// Bytes of response header names and values kept in a record, at most.
pub const RESPONSE_HEADERS_BYTES: usize = 4096;
/// What a record shows instead of a credential the request carried.
pub const REDACTED: &str = "[redacted]";

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
    /// The request's headers as sent, credentials [redacted](REDACTED); empty when no
    /// request was made.
    #[serde(default, skip_serializing_if = "Headers::is_empty")]
    pub request_headers: Headers,
    /// The response's headers, the first [`RESPONSE_HEADERS_MAX`] within
    /// [`RESPONSE_HEADERS_BYTES`]; empty when there was no answer.
    #[serde(default, skip_serializing_if = "Headers::is_empty")]
    pub response_headers: Headers,
    /// How many response headers were left out of `response_headers` by those bounds.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub response_headers_omitted: u32,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
const fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Headers of a request or a response, in the order they were sent. It holds the
/// [`HeaderMap`] the HTTP client used (values are shared, not copied) and serialises as
/// `[[name, value], …]`, values that are not UTF-8 lossily.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(pub HeaderMap);

impl Headers {
    /// No header.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Each header as text, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, std::borrow::Cow<'_, str>)> {
        self.0
            .iter()
            .map(|(name, value)| (name.as_str(), String::from_utf8_lossy(value.as_bytes())))
    }

    /// The first headers of `all` that fit [`RESPONSE_HEADERS_MAX`] and
    /// [`RESPONSE_HEADERS_BYTES`] (names and values), and how many did not.
    ///
    /// The values kept are copied: the HTTP client's values are slices of the connection's
    /// read buffer, so a record waiting in the attempt log would keep that whole buffer alive
    /// (kilobytes per record: a dispatcher at 16,000 deliveries/s grew to 313 MiB).
    pub fn bounded(all: HeaderMap) -> (Self, u32) {
        let count = all.len();
        let mut kept = HeaderMap::with_capacity(count.min(RESPONSE_HEADERS_MAX));
        let (mut bytes, mut name) = (0, None);
        for (next, value) in all {
            // `into_iter` names a header once, before its first value.
            if next.is_some() {
                name = next;
            }
            let Some(name) = &name else { break };
            bytes += name.as_str().len() + value.len();
            if kept.len() == RESPONSE_HEADERS_MAX || bytes > RESPONSE_HEADERS_BYTES {
                break;
            }
            // `from_bytes` copies; a parsed value is valid, so this never fails.
            if let Ok(owned) = HeaderValue::from_bytes(value.as_bytes()) {
                kept.append(name.clone(), owned);
            }
        }
        let omitted = u32::try_from(count - kept.len()).unwrap_or(u32::MAX);
        (Self(kept), omitted)
    }
}

impl Serialize for Headers {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for pair in self.iter() {
            seq.serialize_element(&pair)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for Headers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Pairs;
        impl<'de> Visitor<'de> for Pairs {
            type Value = Headers;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of [name, value] header pairs")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Headers, A::Error> {
                use serde::de::Error;
                let mut map = HeaderMap::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some((name, value)) = seq.next_element::<(String, String)>()? {
                    let name = HeaderName::try_from(name).map_err(A::Error::custom)?;
                    let value = HeaderValue::try_from(value).map_err(A::Error::custom)?;
                    map.append(name, value);
                }
                Ok(Headers(map))
            }
        }
        deserializer.deserialize_seq(Pairs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_serialise_as_pairs_in_order() {
        let mut map = HeaderMap::new();
        map.insert("webhook-id", HeaderValue::from_static("evt_1"));
        map.append("x-many", HeaderValue::from_static("a"));
        map.append("x-many", HeaderValue::from_static("b"));
        map.insert("content-type", HeaderValue::from_static("application/json"));
        let headers = Headers(map);
        let json = serde_json::to_string(&headers).unwrap();
        assert_eq!(
            json,
            r#"[["webhook-id","evt_1"],["x-many","a"],["x-many","b"],["content-type","application/json"]]"#
        );
        assert_eq!(serde_json::from_str::<Headers>(&json).unwrap(), headers);
        assert!(serde_json::from_str::<Headers>(r#"[["bad name","x"]]"#).is_err());
    }

    #[test]
    fn response_headers_are_bounded_in_count_and_bytes() {
        let few: HeaderMap = (0..3)
            .map(|i| {
                (
                    HeaderName::try_from(format!("x-{i}")).unwrap(),
                    HeaderValue::from(i),
                )
            })
            .collect();
        assert_eq!(Headers::bounded(few.clone()), (Headers(few), 0));

        let many: HeaderMap = (0..40)
            .map(|i| {
                (
                    HeaderName::try_from(format!("x-{i}")).unwrap(),
                    HeaderValue::from(i),
                )
            })
            .collect();
        let (kept, omitted) = Headers::bounded(many);
        assert_eq!((kept.0.len(), omitted), (RESPONSE_HEADERS_MAX, 8));
        assert_eq!(kept.iter().next().unwrap(), ("x-0", "0".into()));

        let big = HeaderValue::try_from("v".repeat(1500)).unwrap();
        let mut large = HeaderMap::new();
        for name in ["x-a", "x-b", "x-c", "x-d"] {
            large.append(name, big.clone());
        }
        large.append("x-a", big.clone());
        let (kept, omitted) = Headers::bounded(large);
        assert_eq!((kept.0.len(), omitted), (2, 3));
        let total: usize = kept.iter().map(|(n, v)| n.len() + v.len()).sum();
        assert!(total <= RESPONSE_HEADERS_BYTES);
    }

    #[test]
    fn kept_header_values_do_not_share_the_clients_buffer() {
        let buffer = bytes::Bytes::from(vec![b'v'; 8192]);
        let mut all = HeaderMap::new();
        all.append(
            "x-a",
            HeaderValue::from_maybe_shared(buffer.slice(0..10)).unwrap(),
        );
        let (kept, _) = Headers::bounded(all);
        let value = kept.0.get("x-a").unwrap().as_bytes();
        assert_eq!(value, &buffer[..10]);
        let range = buffer.as_ptr_range();
        assert!(
            !range.contains(&value.as_ptr()),
            "the value still points into the buffer"
        );
    }

    #[test]
    fn outcomes_serialise_in_snake_case() {
        let json = serde_json::to_value(AttemptOutcome::RetryScheduled).unwrap();
        assert_eq!(json, "retry_scheduled");
    }
}
