//! `application/problem+json` (RFC 9457) responses: every HTTP error Relay gives has a stable
//! `type`, a title, the status, a detail and, where one field is at fault, its name.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::{
    envelope::{EnvelopeError, EnvelopeErrorKind},
    event_schema::Violation,
};

/// Prefix of every problem `type`.
pub const TYPE_PREFIX: &str = "urn:relay:problem:";

/// An HTTP error response.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// `urn:relay:problem:<slug>`; stable, for programs to branch on.
    #[serde(rename = "type")]
    pub problem_type: String,
    /// Short summary, the same for every occurrence of this type.
    pub title: &'static str,
    /// HTTP status.
    pub status: u16,
    /// What exactly went wrong this time.
    pub detail: String,
    /// The field at fault, as a JSON path, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Seconds to wait before retrying (also sent as `Retry-After`).
    #[serde(skip)]
    pub retry_after: Option<u64>,
    /// Further members of this problem type (RFC 9457 extensions), e.g. `pointer` and `rule`
    /// (boxed: most problems have none, and the error type stays small).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<Box<Map<String, Value>>>,
}

impl Problem {
    /// A problem of type `urn:relay:problem:{slug}`.
    pub fn new(
        status: StatusCode,
        slug: &str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            problem_type: format!("{TYPE_PREFIX}{slug}"),
            title,
            status: status.as_u16(),
            detail: detail.into(),
            field: None,
            retry_after: None,
            extensions: None,
        }
    }

    /// Adds an extension member.
    #[must_use]
    pub fn with_extension(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.extensions
            .get_or_insert_with(Box::default)
            .insert(name.to_owned(), value.into());
        self
    }

    /// Names the field at fault.
    #[must_use]
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        let field = field.into();
        self.field = (!field.is_empty()).then_some(field);
        self
    }

    /// Adds `Retry-After`.
    #[must_use]
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// 401: missing or unknown bearer key.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Missing or unknown API key",
            "send `Authorization: Bearer <key>` with a configured key",
        )
    }

    /// 404 for a resource that does not exist (or the caller may not see).
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not found",
            format!("no such {what}"),
        )
    }

    /// 415: the body is not declared as JSON.
    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Body must be JSON",
            "send `Content-Type: application/json`",
        )
    }

    /// 413: the body is over `limit` bytes.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Body too large",
            format!("the body is larger than the limit of {limit} bytes"),
        )
    }

    /// 400 for a body that is not valid JSON of the right shape.
    pub fn from_envelope(err: EnvelopeError) -> Self {
        let (slug, title) = match err.kind {
            EnvelopeErrorKind::MalformedJson => ("malformed-json", "Body is not valid JSON"),
            EnvelopeErrorKind::InvalidField => ("invalid-field", "A field is missing or invalid"),
        };
        Self::new(StatusCode::BAD_REQUEST, slug, title, err.reason).with_field(err.field)
    }

    /// 422: an event's `data` does not satisfy its type's schema; `pointer` locates the value
    /// in the event and `rule` names the schema keyword that failed.
    pub fn schema_violation(event_type: &str, violation: &Violation) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "schema-violation",
            "The event does not match its type's schema",
            format!(
                "{event_type}: {} at {} ({})",
                violation.message, violation.pointer, violation.rule
            ),
        )
        .with_field("data")
        .with_extension("pointer", violation.pointer.as_str())
        .with_extension("rule", violation.rule.as_str())
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Whether a request declares a JSON body (`application/json` or any `+json` type).
pub fn is_json(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|mime| {
            let mime = mime.trim().to_ascii_lowercase();
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        })
        .unwrap_or(false)
}

/// Reads a request body of at most `limit` bytes.
///
/// # Errors
/// 413 when over the limit, 400 when the body could not be read.
pub async fn read_body(body: axum::body::Body, limit: usize) -> Result<bytes::Bytes, Problem> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        // axum reports "length limit exceeded" through the error's source chain.
        let over = std::error::Error::source(&e)
            .map(|s| s.to_string().contains("length limit"))
            .unwrap_or(false)
            || e.to_string().contains("length limit");
        if over {
            Problem::too_large(limit)
        } else {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "unreadable-body",
                "Body could not be read",
                e.to_string(),
            )
        }
    })
}

/// Checks `Authorization: Bearer <key>` against `keys` in constant time per key.
pub fn bearer_matches<'a>(
    headers: &axum::http::HeaderMap,
    keys: impl IntoIterator<Item = &'a str>,
) -> bool {
    use subtle::ConstantTimeEq;
    let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    keys.into_iter().fold(false, |found, key| {
        found | bool::from(token.as_bytes().ct_eq(key.as_bytes()))
    })
}
