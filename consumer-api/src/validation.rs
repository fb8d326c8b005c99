//! The rules for the values a subscription may contain, one function per field, and the SSRF
//! check of a destination. Every refusal names its field.

use std::collections::HashMap;

use std::time::Duration;

use relay_shared::{
    envelope::MAX_CONSUMER_LEN,
    filter::TopicFilter,
    ssrf::{NetworkPolicy, SsrfError},
};
use serde::{Deserialize, Deserializer};

use crate::error::{ApiError, FieldError};

/// Longest wait for the name resolution of a destination host.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest endpoint URL accepted, in characters.
pub const MAX_URL_LEN: usize = 2048;
/// The most topic filters one subscription may have.
pub const MAX_EVENT_TYPES: usize = 50;
/// The longest description accepted, in characters.
pub const MAX_DESCRIPTION_LEN: usize = 500;

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

/// An absolute http(s) URL with a host and no credentials.
///
/// # Errors
/// A [`FieldError`] on `url` saying what is wrong.
pub fn validate_url(url: &str) -> Result<(), FieldError> {
    let refuse = |reason: String| Err(FieldError::new("url", reason));
    if url.chars().count() > MAX_URL_LEN {
        return refuse(format!("url must be at most {MAX_URL_LEN} characters"));
    }
    // The URL parser would quietly trim these; the stored URL must be the one that is used.
    if url.trim() != url {
        return refuse("url must not start or end with whitespace".into());
    }
    let parsed = match url::Url::parse(url) {
        Ok(parsed) => parsed,
        Err(e) => return refuse(format!("url is not a valid absolute URL ({e})")),
    };
    if !matches!(parsed.scheme(), "http" | "https") {
        return refuse(format!(
            "url must use http or https, not {}",
            parsed.scheme()
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return refuse("url must have a host".into());
    }
    // Credentials in a URL end up in logs and in the directory; receivers authenticate
    // deliveries by their signature instead.
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return refuse("url must not contain credentials (user:password@)".into());
    }
    Ok(())
}

/// Checks a (syntactically valid) destination against the SSRF policy: the scheme, a
/// literal address, and every address a hostname resolves to now. A hostname that does not
/// resolve now is accepted; dispatchers check every address again at connect time.
///
/// # Errors
/// 400 for a scheme that is not allowed, 422 (`destination-not-allowed`) for a refused
/// address; both on the field `url`.
pub async fn check_destination(policy: &NetworkPolicy, url: &str) -> Result<(), ApiError> {
    let refuse = |e: SsrfError| match e {
        SsrfError::Forbidden { .. } => ApiError::Destination(FieldError::new("url", e.to_string())),
        other => ApiError::Invalid(FieldError::new("url", other.to_string())),
    };
    let parsed = url::Url::parse(url)
        .map_err(|e| FieldError::new("url", format!("url is not valid ({e})")))?;
    policy.check_url(&parsed).map_err(refuse)?;
    if let Some(url::Host::Domain(host)) = parsed.host() {
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
                "consumer must be 1 to {MAX_CONSUMER_LEN} characters of A-Z, a-z, 0-9, '_', '-', '.', ':'"
            ),
        ))
    }
}

/// At most 500 characters.
///
/// # Errors
/// A [`FieldError`] on `description`.
pub fn validate_description(description: &str) -> Result<(), FieldError> {
    if description.chars().count() > MAX_DESCRIPTION_LEN {
        return Err(FieldError::new(
            "description",
            format!("description must be at most {MAX_DESCRIPTION_LEN} characters"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_http_with_a_host_and_no_credentials() {
        for bad in [
            "example.com/hook",
            "ftp://example.com/",
            "file:///etc/passwd",
            "https://user:pass@example.com/",
            "https://user@example.com/",
            "http://",
            " https://example.com/",
            "mailto:a@example.com",
        ] {
            assert!(validate_url(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert!(validate_url(&long).is_err());
        assert!(validate_url("https://example.com").is_ok());
        assert!(validate_url("http://[::1]:9000/a").is_ok());
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
    }
}
