//! The one place where errors become HTTP problem responses.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};
use relay_shared::{
    envelope::{EnvelopeError, EnvelopeErrorKind},
    problem::Problem,
};

use crate::store::StoreError;

/// A value that is present and well-formed JSON but not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    /// JSON path of the field, e.g. `event_types[2]`, or the query parameter's name.
    pub field: String,
    /// Why it was refused.
    pub reason: String,
}

impl FieldError {
    /// A refusal of `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Why a consumer API request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No or a wrong bearer key.
    #[error("unauthorized")]
    Unauthorized,
    /// A consumer key on an admin route.
    #[error("forbidden")]
    Forbidden,
    /// A well-formed value the caller may not use (a consumer naming another consumer).
    #[error("forbidden: {0}")]
    NotYours(FieldError),
    /// A destination refused by the SSRF policy.
    #[error(transparent)]
    Destination(FieldError),
    /// The broker did not take a message (not connected, or no confirm).
    #[error("broker unavailable: {0}")]
    Broker(String),
    /// Refused before parsing (content type, size), already phrased as a problem.
    #[error("{}", .0.detail)]
    Rejected(Problem),
    /// The body is not JSON or not of the expected shape.
    #[error(transparent)]
    Body(#[from] EnvelopeError),
    /// A field or query parameter has a value that is not allowed.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// The store failed (or has no such subscription).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The resource is still used by others and the request asked not to take them along.
    #[error("in use: {0}")]
    InUse(String),
    /// The subscription has a replay job queued or running: this one.
    #[error("replay {0} is still running")]
    ReplayRunning(String),
    /// A replay job that the caller waited for ended failed, for this reason.
    #[error("replay failed: {0}")]
    ReplayFailed(String),
}

impl From<Problem> for ApiError {
    fn from(problem: Problem) -> Self {
        Self::Rejected(problem)
    }
}

impl ApiError {
    /// A well-formed value refused for what it means rather than its shape (a JSON Schema
    /// that does not compile, a window that ends before it starts): 422 `invalid-field`,
    /// where a value the document already rules out is a 400.
    pub fn unprocessable(e: FieldError) -> Self {
        Self::Rejected(
            Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-field",
                "A field is missing or invalid",
                e.reason,
            )
            .with_field(e.field),
        )
    }

    /// The problem response for this error.
    pub fn to_problem(&self) -> Problem {
        match self {
            Self::Unauthorized => Problem::unauthorized(),
            Self::Forbidden => Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "Admin key required",
                "this route needs the admin key; consumer keys cannot use it",
            ),
            Self::NotYours(e) => Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "Not allowed for this key",
                e.reason.clone(),
            )
            .with_field(e.field.clone()),
            Self::Destination(e) => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "destination-not-allowed",
                "Destination not allowed",
                e.reason.clone(),
            )
            .with_field(e.field.clone()),
            Self::Broker(reason) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "broker-unavailable",
                "Broker unavailable",
                format!("the message broker did not take the message ({reason}); retry shortly"),
            )
            .with_retry_after(1),
            Self::Rejected(problem) => problem.clone(),
            Self::Body(e) => Problem::from_envelope(e.clone()),
            // The same type and title as a shape error in the body, so clients branch once.
            Self::Invalid(e) => Problem::from_envelope(EnvelopeError {
                kind: EnvelopeErrorKind::InvalidField,
                field: e.field.clone(),
                reason: e.reason.clone(),
            }),
            Self::InUse(detail) => Problem::new(
                StatusCode::CONFLICT,
                "in-use",
                "Still in use",
                detail.clone(),
            ),
            Self::ReplayRunning(id) => Problem::new(
                StatusCode::CONFLICT,
                "replay-running",
                "A replay is running",
                format!(
                    "replay {id} of this subscription has not ended; follow it at /v1/replays/{id}"
                ),
            )
            .with_extension("replay_id", id.as_str()),
            Self::ReplayFailed(reason) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "replay-failed",
                "Replay failed",
                format!("the replay stopped: {reason}"),
            ),
            Self::Store(StoreError::NotFound) => Problem::not_found("subscription"),
            Self::Store(StoreError::Missing(what)) => Problem::not_found(what),
            Self::Store(StoreError::Conflict(what)) => Problem::new(
                StatusCode::CONFLICT,
                "conflict",
                "Already exists",
                format!("{what} already exists"),
            ),
            Self::Store(e) if e.is_transient() => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store-unavailable",
                "Store unavailable",
                "the subscription store is busy or unreachable; retry shortly",
            )
            .with_retry_after(1),
            Self::Store(_) => Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
                "the request failed on the server; see its logs",
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Store(e) = &self
            && !matches!(
                e,
                StoreError::NotFound | StoreError::Missing(_) | StoreError::Conflict(_)
            )
        {
            // The response says only "see the logs"; this is what the logs say.
            tracing::error!(error = %e, "store operation failed");
        }
        self.to_problem().into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_its_problem_type_and_status() {
        let p = ApiError::from(FieldError::new("event_types[1]", "bad")).to_problem();
        assert_eq!(
            (p.status, p.problem_type.as_str()),
            (400, "urn:relay:problem:invalid-field")
        );
        assert_eq!(p.field.as_deref(), Some("event_types[1]"));

        let p = ApiError::from(StoreError::NotFound).to_problem();
        assert_eq!(
            (p.status, p.problem_type.as_str()),
            (404, "urn:relay:problem:not-found")
        );

        let p = ApiError::from(StoreError::Database(sqlx::Error::PoolTimedOut)).to_problem();
        assert_eq!((p.status, p.retry_after), (503, Some(1)));

        let p = ApiError::from(StoreError::Corrupt {
            id: "sub_1".into(),
            reason: "x".into(),
        })
        .to_problem();
        assert_eq!(p.status, 500);

        assert_eq!(ApiError::Unauthorized.to_problem().status, 401);
    }
}
