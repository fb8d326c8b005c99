//! The rules for the values clients send, one function per kind of field, each with the JSON
//! schema that states it, so the OpenAPI document says exactly what is enforced (patterns and
//! lengths are built from the same constants the checks use). Also the SSRF check of a
//! destination. Every refusal names its field.
//!
//! **Endpoint URLs** follow one strict grammar ([`url_pattern`]): `http` or `https`, a host
//! name (its last label starting with a letter), an IPv4 address or a bracketed
//! IPv6 address, an optional port, then a path and query of URL characters. No whitespace or
//! control characters anywhere, no credentials, no fragment. The URL is stored and shown as
//! the URL parser normalises it (lower-case host, default port dropped, `/` path), which is
//! exactly the URL dispatchers call.

use std::{
    collections::{BTreeMap, HashMap},
    sync::LazyLock,
    time::Duration,
};

use regex::Regex;
use relay_shared::{
    endpoint::{Credentials, CustomHeaders},
    envelope::MAX_CONSUMER_LEN,
    filter::{MAX_TYPE_LEN, TopicFilter},
    payload_filter::PayloadFilter,
    ssrf::NetworkPolicy,
};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use utoipa::openapi::{
    ArrayBuilder, ObjectBuilder, Schema, SchemaFormat, Type,
    schema::{KnownFormat, SchemaType},
};

use crate::error::{ApiError, FieldError};

/// Longest wait for the name resolution of a destination host.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest endpoint URL accepted, in characters.
pub const MAX_URL_LEN: usize = 2048;
/// The most topic filters one subscription may have.
pub const MAX_EVENT_TYPES: usize = 50;
/// The longest description accepted, in characters.
pub const MAX_DESCRIPTION_LEN: usize = 500;
/// The longest reason for disabling, in characters.
pub const MAX_REASON_LEN: usize = 500;
/// The lowest rate limit, requests per second (one request every 10 s).
pub const MIN_RATE_LIMIT: f64 = 0.1;
/// The highest rate limit, requests per second.
pub const MAX_RATE_LIMIT: f64 = 10_000.0;
/// The highest in-flight cap of one subscription.
pub const MAX_IN_FLIGHT: u32 = 1_000;
/// The in-flight cap of a subscription that does not set one (the former fixed cap).
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 64;

/// A field of a PATCH body: absent (leave as is), `null`, or a value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Nullable<T> {
    /// Not in the body.
    #[default]
    Absent,
    /// `null` in the body.
    Null,
    /// A value.
    Value(T),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Nullable<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Only called when the field is present (absent fields take the default), so
        // `None` here means an explicit `null`.
        Ok(Option::<T>::deserialize(deserializer)?.map_or(Self::Null, Self::Value))
    }
}

/// A whole number as JSON Schema's `integer` has it: `395` and `395.0` alike.
struct Whole(u32);

impl<'de> Deserialize<'de> for Whole {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let n = serde_json::Number::deserialize(deserializer)?;
        let whole = n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(f))
                // Checked just above: whole and within u32.
                .map(|f| {
                    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                    let v = f as u64;
                    v
                })
        });
        whole
            .and_then(|v| u32::try_from(v).ok())
            .map(Self)
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "invalid value: {n}, expected a whole number from 0 to {}",
                    u32::MAX
                ))
            })
    }
}

/// Reads an optional JSON object into `T` (for `#[serde(deserialize_with = …)]`): serde's
/// derived structs also take an array, as their fields in order, which a schema that says
/// "object" must refuse (Schemathesis sent a theme of `[null, null]`, and it was taken).
///
/// # Errors
/// The deserializer's for anything but an object or `null`, and `T`'s.
pub fn optional_object<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    match Option::<serde_json::Map<String, serde_json::Value>>::deserialize(deserializer)? {
        None => Ok(None),
        Some(map) => T::deserialize(serde_json::Value::Object(map))
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

/// Reads an optional whole number, `395.0` included (for `#[serde(deserialize_with = …)]`).
///
/// # Errors
/// The deserializer's, for anything else.
pub fn optional_whole<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
    Ok(Option::<Whole>::deserialize(deserializer)?.map(|w| w.0))
}

/// Reads a nullable whole number, `395.0` included (for `#[serde(deserialize_with = …)]`).
///
/// # Errors
/// The deserializer's, for anything else.
pub fn nullable_whole<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Nullable<u32>, D::Error> {
    Ok(match Nullable::<Whole>::deserialize(deserializer)? {
        Nullable::Absent => Nullable::Absent,
        Nullable::Null => Nullable::Null,
        Nullable::Value(w) => Nullable::Value(w.0),
    })
}

impl<T> Nullable<T> {
    /// A field that may be left out but not set to `null`.
    ///
    /// # Errors
    /// A [`FieldError`] on `field` for `null`.
    pub fn required(self, field: &str) -> Result<Option<T>, FieldError> {
        match self {
            Self::Absent => Ok(None),
            Self::Null => Err(FieldError::new(field, format!("{field} cannot be null"))),
            Self::Value(v) => Ok(Some(v)),
        }
    }

    /// A field that may be left out, or set to `null` to clear it.
    pub fn clearable(self) -> Option<Option<T>> {
        match self {
            Self::Absent => None,
            Self::Null => Some(None),
            Self::Value(v) => Some(Some(v)),
        }
    }
}

/// `pattern` anchored, for both the regex crate and JSON Schema (ECMA 262) dialects.
fn anchored(pattern: &str) -> String {
    format!("^(?:{pattern})$")
}

/// A string schema; `nullable` adds `null`.
fn string(nullable: bool) -> ObjectBuilder {
    let builder = ObjectBuilder::new();
    if nullable {
        builder.schema_type(SchemaType::from_iter([Type::String, Type::Null]))
    } else {
        builder.schema_type(Type::String)
    }
}

const IPV4_OCTET: &str = "25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9]";
const H16: &str = "[0-9A-Fa-f]{1,4}";

/// The grammar of an endpoint URL (unanchored); see the module documentation.
pub fn url_pattern() -> &'static str {
    static PATTERN: LazyLock<String> = LazyLock::new(|| {
        let ipv4 = format!("(?:(?:{IPV4_OCTET})\\.){{3}}(?:{IPV4_OCTET})");
        let ipv6 = [
            format!("(?:{H16}:){{7}}{H16}"),
            format!("(?:{H16}:){{1,7}}:"),
            format!("(?:{H16}:){{1,6}}:{H16}"),
            format!("(?:{H16}:){{1,5}}(?::{H16}){{1,2}}"),
            format!("(?:{H16}:){{1,4}}(?::{H16}){{1,3}}"),
            format!("(?:{H16}:){{1,3}}(?::{H16}){{1,4}}"),
            format!("(?:{H16}:){{1,2}}(?::{H16}){{1,5}}"),
            format!("{H16}:(?::{H16}){{1,6}}"),
            format!(":(?::{H16}){{1,7}}"),
            "::".to_owned(),
            format!("::(?:[Ff]{{4}}(?::0{{1,4}})?:)?{ipv4}"),
            format!("(?:{H16}:){{1,4}}:{ipv4}"),
        ]
        .join("|");
        let label = "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?";
        let last_label = "[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?";
        // One label or more (single-label and internal names are the SSRF policy's to refuse),
        // the last starting with a letter so that it never reads as a number, and an optional
        // root dot.
        let domain = format!("(?:{label}\\.)*{last_label}\\.?");
        let port = "6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}|0";
        let path = "/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*";
        let query = "\\?[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*";
        format!(
            "[Hh][Tt][Tt][Pp][Ss]?://(?:{domain}|{ipv4}|\\[(?:{ipv6})\\])(?::(?:{port}))?(?:{path})?(?:{query})?"
        )
    });
    &PATTERN
}

/// The schema of an endpoint URL.
pub fn url_schema(nullable: bool) -> Schema {
    string(nullable)
        .max_length(Some(MAX_URL_LEN))
        .pattern(Some(anchored(url_pattern())))
        .description(Some(
            "An absolute http(s) URL: host name, IPv4 or [IPv6] address, optional port, path and query; no whitespace, credentials or fragment. Stored and shown normalised, exactly as deliveries are made.",
        ))
        .into()
}

/// Checks an endpoint URL and returns it normalised: exactly the URL dispatchers will call.
///
/// # Errors
/// A [`FieldError`] on `url` saying what is wrong.
pub fn normalise_url(url: &str) -> Result<String, FieldError> {
    static GRAMMAR: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(&anchored(url_pattern())).unwrap_or_else(|e| unreachable!("{e}"))
    });
    let refuse = |reason: String| Err(FieldError::new("url", reason));
    if url.chars().count() > MAX_URL_LEN {
        return refuse(format!("url must be at most {MAX_URL_LEN} characters"));
    }
    // Clear reasons for the mistakes the grammar below refuses anyway.
    if let Some((at, c)) = url
        .char_indices()
        .find(|(_, c)| c.is_whitespace() || c.is_control())
    {
        return refuse(format!(
            "url must not contain whitespace or control characters (U+{:04X} at byte {at})",
            u32::from(c)
        ));
    }
    let lower = url.to_ascii_lowercase();
    let Some(rest) = ["https://", "http://"]
        .into_iter()
        .find_map(|scheme| lower.strip_prefix(scheme))
    else {
        return refuse("url must be an absolute http:// or https:// URL".into());
    };
    let authority = rest.split(['/', '?', '#', '\\']).next().unwrap_or_default();
    if authority.is_empty() {
        return refuse("url must have a host".into());
    }
    // Credentials in a URL end up in logs and in the directory; receivers authenticate
    // deliveries by their signature instead.
    if authority.contains('@') {
        return refuse("url must not contain credentials (user:password@)".into());
    }
    if url.contains('#') {
        return refuse("url must not have a fragment (it is never sent)".into());
    }
    if !url.is_ascii() {
        return refuse("url must be ASCII: percent-encode the path and query, and write an international host name in its xn-- form".into());
    }
    if !GRAMMAR.is_match(url) {
        return refuse("url must be a host name, an IPv4 address or an [IPv6] address, an optional port, then a path and query of URL characters".into());
    }
    match url::Url::parse(url) {
        Ok(parsed) if parsed.host_str().is_some_and(|h| !h.is_empty()) => Ok(parsed.into()),
        Ok(_) => refuse("url must have a host".into()),
        Err(e) => refuse(format!("url is not a valid URL ({e})")),
    }
}

/// Checks a normalised destination against the SSRF policy: the scheme, the host name by
/// itself (metadata and internal names), a literal address, and every address a host name
/// resolves to now. A name that does not resolve now is accepted; dispatchers check every
/// address again at connect time.
///
/// # Errors
/// 400 for a scheme that is not allowed, 422 (`destination-not-allowed`) for a refused name
/// or address; both on the field `url`.
pub async fn check_destination(policy: &NetworkPolicy, url: &str) -> Result<(), ApiError> {
    let refuse = |e: relay_shared::ssrf::SsrfError| {
        if e.is_forbidden_destination() {
            ApiError::Destination(FieldError::new("url", e.to_string()))
        } else {
            ApiError::Invalid(FieldError::new("url", e.to_string()))
        }
    };
    let parsed = url::Url::parse(url)
        .map_err(|e| FieldError::new("url", format!("url is not valid ({e})")))?;
    policy.check_url(&parsed).map_err(refuse)?;
    if let Some(url::Host::Domain(host)) = parsed.host()
        && !policy.allows_every_address()
    {
        let port = parsed.port_or_known_default().unwrap_or(443);
        let host = host.trim_end_matches('.').to_owned();
        if let Ok(Ok(addrs)) =
            tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port))).await
        {
            for addr in addrs {
                policy.check_ip(addr.ip()).map_err(refuse)?;
            }
        }
    }
    Ok(())
}

/// A topic filter (unanchored): dot-separated segments of `[a-z0-9_-]`, `*` or `#`.
pub const FILTER_PATTERN: &str = r"(?:[a-z0-9_-]+|\*|#)(?:\.(?:[a-z0-9_-]+|\*|#))*";

/// The schema of a list of topic filters.
pub fn event_types_schema(nullable: bool) -> Schema {
    let items = ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(MAX_TYPE_LEN))
        .pattern(Some(anchored(FILTER_PATTERN)));
    let array = ArrayBuilder::new()
        .items(items)
        .min_items(Some(1))
        .max_items(Some(MAX_EVENT_TYPES))
        .unique_items(true)
        .description(Some(
            "1 to 50 distinct topic filters: `*` matches one segment, `#` zero or more.",
        ));
    let array = if nullable {
        array.schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
    } else {
        array
    };
    array.into()
}

/// 1 to 50 distinct, valid topic filters.
///
/// # Errors
/// A [`FieldError`] on `event_types` or the offending `event_types[i]`.
pub fn validate_event_types(event_types: &[String]) -> Result<(), FieldError> {
    if event_types.is_empty() {
        return Err(FieldError::new(
            "event_types",
            "event_types needs at least one filter",
        ));
    }
    if event_types.len() > MAX_EVENT_TYPES {
        return Err(FieldError::new(
            "event_types",
            format!("event_types may have at most {MAX_EVENT_TYPES} filters"),
        ));
    }
    let mut seen = HashMap::with_capacity(event_types.len());
    for (i, filter) in event_types.iter().enumerate() {
        let field = format!("event_types[{i}]");
        TopicFilter::parse(filter).map_err(|e| FieldError::new(&field, e.to_string()))?;
        if let Some(first) = seen.insert(filter.as_str(), i) {
            return Err(FieldError::new(
                field,
                format!("{filter:?} is already event_types[{first}]"),
            ));
        }
    }
    Ok(())
}

/// A consumer id (unanchored): 1 to 64 of `A-Z a-z 0-9 _ - . :`.
pub fn consumer_pattern() -> String {
    format!("[A-Za-z0-9_.:-]{{1,{MAX_CONSUMER_LEN}}}")
}

/// The schema of a consumer id.
pub fn consumer_schema(nullable: bool) -> Schema {
    string(nullable)
        .pattern(Some(anchored(&consumer_pattern())))
        .into()
}

/// 1 to 64 characters of `A-Z a-z 0-9 _ - . :`, as in an event's `consumer`.
///
/// # Errors
/// A [`FieldError`] on `field`.
pub fn validate_consumer(consumer: &str, field: &str) -> Result<(), FieldError> {
    let ok = !consumer.is_empty()
        && consumer.len() <= MAX_CONSUMER_LEN
        && consumer
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!(
                "{field} must be 1 to {MAX_CONSUMER_LEN} characters of A-Z, a-z, 0-9, '_', '-', '.', ':'"
            ),
        ))
    }
}

/// The schema of free text of at most `max` characters (at least `min`).
pub fn text_schema(min: usize, max: usize, nullable: bool) -> Schema {
    string(nullable)
        .min_length((min > 0).then_some(min))
        .max_length(Some(max))
        .into()
}

/// Free text of `min` to `max` characters.
///
/// # Errors
/// A [`FieldError`] on `field`.
pub fn validate_text(text: &str, field: &str, min: usize, max: usize) -> Result<(), FieldError> {
    let length = text.chars().count();
    if (min..=max).contains(&length) {
        Ok(())
    } else if min == 0 {
        Err(FieldError::new(
            field,
            format!("{field} must be at most {max} characters"),
        ))
    } else {
        Err(FieldError::new(
            field,
            format!("{field} must be {min} to {max} characters"),
        ))
    }
}

/// At most 500 characters.
///
/// # Errors
/// A [`FieldError`] on `description`.
pub fn validate_description(description: &str) -> Result<(), FieldError> {
    validate_text(description, "description", 0, MAX_DESCRIPTION_LEN)
}

/// A grace period of at most 30 days (unanchored): a number and a unit, `s`, `m`, `h` or `d`.
pub const GRACE_PATTERN: &str = "(?:[0-9]{1,6}|1[0-9]{6}|2[0-4][0-9]{5}|25[0-8][0-9]{4}|259[01][0-9]{3}|2592000)s|(?:[0-9]{1,4}|[1-3][0-9]{4}|4[0-2][0-9]{3}|43[01][0-9]{2}|43200)m|(?:[0-9]{1,2}|[1-6][0-9]{2}|7[01][0-9]|720)h|(?:[0-9]|[12][0-9]|30)d";

/// An endpoint URL (for `#[schema(schema_with = …)]`).
pub fn url_field() -> Schema {
    url_schema(false)
}

/// A list of topic filters (for `#[schema(schema_with = …)]`).
pub fn event_types_field() -> Schema {
    event_types_schema(false)
}

/// A consumer id (for `#[schema(schema_with = …)]`).
pub fn consumer_field() -> Schema {
    consumer_schema(false)
}

/// A consumer id, or `null` (for `#[schema(schema_with = …)]`).
pub fn consumer_or_null_field() -> Schema {
    consumer_schema(true)
}

/// A description, or `null` (for `#[schema(schema_with = …)]`).
pub fn description_or_null_field() -> Schema {
    text_schema(0, MAX_DESCRIPTION_LEN, true)
}

/// A reason for disabling (for `#[schema(schema_with = …)]`).
pub fn reason_field() -> Schema {
    text_schema(1, MAX_REASON_LEN, false)
}

/// The schema of a rotation's grace period.
pub fn grace_schema() -> Schema {
    string(true)
        .pattern(Some(anchored(GRACE_PATTERN)))
        .description(Some(
            "How long the previous secret keeps signing: a number and a unit (`s`, `m`, `h`, `d`), at most 30 days, e.g. `24h`.",
        ))
        .examples(["24h"])
        .into()
}

/// Reads a grace period (`24h`, `90m`, `7d`).
///
/// # Errors
/// A [`FieldError`] on `grace`.
pub fn parse_grace(grace: &str) -> Result<Duration, FieldError> {
    static GRAMMAR: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(&anchored(GRACE_PATTERN)).unwrap_or_else(|e| unreachable!("{e}"))
    });
    parse_unit_duration(grace, &GRAMMAR, || {
        FieldError::new(
            "grace",
            "grace must be a number and a unit (s, m, h or d), at most 30 days, e.g. 24h",
        )
    })
}

/// A portal session's length (unanchored): a number and a unit, 1 s to 7 days.
pub const SESSION_TTL_PATTERN: &str = "(?:[1-9][0-9]{0,4}|[1-5][0-9]{5}|60[0-3][0-9]{3}|604[0-7][0-9]{2}|604800)s|(?:[1-9][0-9]{0,3}|100[0-7][0-9]|10080)m|(?:[1-9][0-9]?|1[0-5][0-9]|16[0-8])h|[1-7]d";

/// The schema of a portal session's length, or `null` (for `#[schema(schema_with = …)]`).
pub fn session_ttl_field() -> Schema {
    string(true)
        .pattern(Some(anchored(SESSION_TTL_PATTERN)))
        .description(Some(
            "How long the browser session lasts once the link is opened: a number and a unit (`s`, `m`, `h`, `d`), 1 s to 7 days, e.g. `2h`; `api.portal.session_ttl` when absent.",
        ))
        .examples(["2h"])
        .into()
}

/// Reads a portal session's length (`2h`, `30m`, `7d`).
///
/// # Errors
/// A [`FieldError`] on `session_ttl`.
pub fn parse_session_ttl(ttl: &str) -> Result<Duration, FieldError> {
    static GRAMMAR: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(&anchored(SESSION_TTL_PATTERN)).unwrap_or_else(|e| unreachable!("{e}"))
    });
    parse_unit_duration(ttl, &GRAMMAR, || {
        FieldError::new(
            "session_ttl",
            "session_ttl must be a number and a unit (s, m, h or d), 1s to 7 days, e.g. 2h",
        )
    })
}

/// A number and a one-letter unit (`s`, `m`, `h`, `d`) that `grammar` accepts.
fn parse_unit_duration(
    text: &str,
    grammar: &Regex,
    refuse: impl Fn() -> FieldError,
) -> Result<Duration, FieldError> {
    if !grammar.is_match(text) {
        return Err(refuse());
    }
    let (number, unit) = text.split_at(text.len() - 1);
    let number: u64 = number.parse().map_err(|_| refuse())?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => 86_400,
    };
    Ok(Duration::from_secs(number * seconds))
}

/// The schema of a rate limit, or `null` (for `#[schema(schema_with = …)]`).
pub fn rate_limit_or_null_field() -> Schema {
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Number, Type::Null]))
        .minimum(Some(MIN_RATE_LIMIT))
        .maximum(Some(MAX_RATE_LIMIT))
        .description(Some(
            "Requests per second to the endpoint, all dispatchers together (0.1 to 10000); `null`: unlimited.",
        ))
        .examples([50])
        .into()
}

/// A rate limit: 0.1 to 10,000 requests per second.
///
/// # Errors
/// A [`FieldError`] on `rate_limit`.
pub fn validate_rate_limit(rate: f64) -> Result<(), FieldError> {
    if (MIN_RATE_LIMIT..=MAX_RATE_LIMIT).contains(&rate) {
        Ok(())
    } else {
        Err(FieldError::new(
            "rate_limit",
            format!("rate_limit must be {MIN_RATE_LIMIT} to {MAX_RATE_LIMIT} requests per second"),
        ))
    }
}

/// The schema of an in-flight cap (for `#[schema(schema_with = …)]`).
pub fn max_in_flight_field() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(1))
        .maximum(Some(MAX_IN_FLIGHT))
        .description(Some(
            "Requests in flight to the endpoint, all dispatchers together (1 to 1000; 64 when not set).",
        ))
        .into()
}

/// An in-flight cap: 1 to 1,000.
///
/// # Errors
/// A [`FieldError`] on `max_in_flight`.
pub fn validate_max_in_flight(cap: u32) -> Result<(), FieldError> {
    if (1..=MAX_IN_FLIGHT).contains(&cap) {
        Ok(())
    } else {
        Err(FieldError::new(
            "max_in_flight",
            format!("max_in_flight must be 1 to {MAX_IN_FLIGHT}"),
        ))
    }
}

/// The schema of a delivery order (for `#[schema(schema_with = …)]`).
pub fn ordering_field() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(["none", "key"]))
        .description(Some(
            "`none` (default): parallel deliveries. `key`: per ordering key, one delivery in flight and publish order; a failing delivery holds back later events of its key for this subscription only, until it succeeds or is dead-lettered.",
        ))
        .into()
}

/// The schema of an RFC 3339 time.
pub fn time_schema() -> Schema {
    string(false)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
        .into()
}

/// A payload filter within its bounds ([`relay_shared::payload_filter`]).
///
/// # Errors
/// [`ApiError::Invalid`] (400) when it is not an object, the shape the document gives;
/// [`ApiError::unprocessable`] (422) on `filter`, or on the path or operator at fault inside
/// it (`filter.$or[1].data.total.$gt`), when it breaks the grammar the document describes.
pub fn validate_filter(filter: &Value) -> Result<(), ApiError> {
    if !filter.is_object() {
        return Err(FieldError::new("filter", "filter must be an object").into());
    }
    PayloadFilter::parse(filter).map(drop).map_err(|e| {
        let field = if e.at == "filter" {
            e.at
        } else {
            format!("filter.{}", e.at)
        };
        ApiError::unprocessable(FieldError::new(field, e.reason))
    })
}

/// Static headers: no hop-by-hop, `webhook-*`, `content-type`, `host` or `authorization`;
/// count and size capped ([`relay_shared::endpoint`]).
///
/// # Errors
/// A [`FieldError`] on `headers` or on the header at fault (`headers.Host`).
pub fn validate_headers(headers: &BTreeMap<String, String>) -> Result<(), FieldError> {
    CustomHeaders::parse(headers)
        .map(drop)
        .map_err(|e| FieldError::new(e.field, e.reason))
}

/// Basic or bearer credentials; the refusal never repeats the value.
///
/// # Errors
/// A [`FieldError`] on the part at fault (`credentials.token`).
pub fn validate_credentials(credentials: &Credentials) -> Result<(), FieldError> {
    credentials
        .validate()
        .map_err(|e| FieldError::new(e.field, e.reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_refused_naming_what_is_wrong() {
        for (bad, why) in [
            ("example.com/hook", "absolute"),
            ("ftp://example.com/", "absolute"),
            ("file:///etc/passwd", "absolute"),
            ("https://user:pass@example.com/", "credentials"),
            ("https://user@example.com/", "credentials"),
            ("https://@example.com/", "credentials"),
            ("http://", "host"),
            ("https:///hook", "host"),
            ("https:hook", "absolute"),
            (" https://example.com/", "whitespace"),
            ("https://example.com/\nX-Injected: 1", "U+000A"),
            ("https://exa\tmple.com/hook", "U+0009"),
            ("https://example.com/a\u{7f}", "control"),
            ("https://example.com/\u{a0}", "whitespace"),
            ("https://example.com/#top", "fragment"),
            ("https://example.com/ü", "ASCII"),
            ("mailto:a@example.com", "absolute"),
            ("https://999.1.1.1/", "host name"),
            ("https://1.2.3.4.5/", "host name"),
            ("https://example.com:99999/", "host name"),
            ("https://example.com/a b", "whitespace"),
            ("https://exa_mple.com/", "host name"),
            ("https://[::1/", "host name"),
            ("https://example.com/<script>", "host name"),
            ("https://example.com\\@evil.com/", "host name"),
        ] {
            let e = normalise_url(bad).expect_err(bad);
            assert_eq!(e.field, "url");
            assert!(e.reason.contains(why), "{bad:?}: {}", e.reason);
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert!(normalise_url(&long).is_err());
    }

    #[test]
    fn urls_are_stored_as_the_dispatcher_calls_them() {
        for (given, stored) in [
            ("https://example.com", "https://example.com/"),
            (
                "https://Metadata.Google.Internal./x",
                "https://metadata.google.internal./x",
            ),
            ("http://localhost:8443", "http://localhost:8443/"),
            (
                "HTTPS://Example.COM:443/Hook?a=1",
                "https://example.com/Hook?a=1",
            ),
            ("http://example.com:80/x", "http://example.com/x"),
            (
                "http://example.com:8080/a/../b/./c",
                "http://example.com:8080/b/c",
            ),
            ("http://[::1]:9000/a", "http://[::1]:9000/a"),
            ("http://[::FFFF:127.0.0.1]/", "http://[::ffff:7f00:1]/"),
            ("http://10.0.0.1:8080/x?y=1", "http://10.0.0.1:8080/x?y=1"),
            (
                "https://xn--bcher-kva.example/",
                "https://xn--bcher-kva.example/",
            ),
            (
                "https://example.com/?q='x'",
                "https://example.com/?q=%27x%27",
            ),
            (
                "https://a-b.example.org/%zz%41",
                "https://a-b.example.org/%zz%41",
            ),
        ] {
            let normalised = normalise_url(given).unwrap_or_else(|e| panic!("{given}: {e}"));
            assert_eq!(normalised, stored, "{given}");
            // What the dispatcher parses is what is stored, byte for byte.
            assert_eq!(url::Url::parse(&normalised).unwrap().as_str(), normalised);
            assert_eq!(normalise_url(&normalised).unwrap(), normalised);
        }
    }

    #[test]
    fn the_grace_grammar_stops_at_30_days() {
        for (grace, seconds) in [
            ("0s", 0),
            ("24h", 86_400),
            ("90m", 5_400),
            ("30d", 2_592_000),
            ("2592000s", 2_592_000),
            ("43200m", 2_592_000),
            ("720h", 2_592_000),
        ] {
            assert_eq!(parse_grace(grace).unwrap().as_secs(), seconds, "{grace}");
        }
        for bad in [
            "31d", "721h", "43201m", "2592001s", "1h30m", "24 h", "", "h", "-1h", "1.5h",
        ] {
            assert_eq!(parse_grace(bad).unwrap_err().field, "grace", "{bad}");
        }
    }

    #[test]
    fn event_types_are_checked_one_by_one() {
        let field = |types: &[&str]| {
            let types: Vec<String> = types.iter().map(|t| (*t).to_owned()).collect();
            validate_event_types(&types).map_err(|e| e.field)
        };
        assert_eq!(field(&[]).unwrap_err(), "event_types");
        assert_eq!(field(&["a.b", "Bad"]).unwrap_err(), "event_types[1]");
        assert_eq!(field(&["a.*", "b", "a.*"]).unwrap_err(), "event_types[2]");
        let many: Vec<String> = (0..=MAX_EVENT_TYPES).map(|i| format!("t{i}")).collect();
        assert_eq!(
            validate_event_types(&many).unwrap_err().field,
            "event_types"
        );
        assert!(validate_event_types(&many[..MAX_EVENT_TYPES]).is_ok());
        // The pattern the document states accepts exactly the filters the parser does.
        let pattern = Regex::new(&anchored(FILTER_PATTERN)).unwrap();
        for filter in [
            "a", "a.*", "#", "a.#.b", "x_y-z.0", "", "a.", ".a", "A", "a..b", "a.**",
        ] {
            assert_eq!(
                pattern.is_match(filter),
                TopicFilter::parse(filter).is_ok(),
                "{filter:?}"
            );
        }
    }

    #[test]
    fn limits_are_bounded() {
        for ok in [0.1, 1.0, 50.0, 10_000.0] {
            assert!(validate_rate_limit(ok).is_ok(), "{ok}");
        }
        for bad in [-1.0, 0.0, 0.09, 10_000.5, 1e9, f64::NAN, f64::INFINITY] {
            assert_eq!(validate_rate_limit(bad).unwrap_err().field, "rate_limit");
        }
        assert!(validate_max_in_flight(1).is_ok());
        assert!(validate_max_in_flight(MAX_IN_FLIGHT).is_ok());
        for bad in [0, MAX_IN_FLIGHT + 1] {
            assert_eq!(
                validate_max_in_flight(bad).unwrap_err().field,
                "max_in_flight"
            );
        }
    }

    #[test]
    fn consumer_and_description_are_bounded() {
        assert!(validate_consumer("a b", "consumer").is_err());
        assert!(validate_consumer("", "consumer").is_err());
        assert!(validate_consumer("acme:eu-1", "consumer").is_ok());
        assert!(validate_consumer(&"x".repeat(64), "consumer").is_ok());
        assert!(validate_consumer(&"x".repeat(65), "consumer").is_err());
        assert!(validate_description(&"é".repeat(500)).is_ok());
        assert!(validate_description(&"é".repeat(501)).is_err());
        let pattern = Regex::new(&anchored(&consumer_pattern())).unwrap();
        for consumer in [
            "acme",
            "a:b.c_d-e",
            "",
            "a b",
            "é",
            &"x".repeat(64),
            &"x".repeat(65),
        ] {
            assert_eq!(
                pattern.is_match(consumer),
                validate_consumer(consumer, "consumer").is_ok(),
                "{consumer:?}"
            );
        }
    }
}
