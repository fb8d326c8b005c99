//! `GET /v1/consumers/{id}/jwks.json`: the public keys that verify a consumer's `v1a`
//! deliveries, as a JSON Web Key Set. Public keys are public, so the route needs no key (it is
//! outside the authentication layer) and is cacheable; an unknown consumer has an empty set,
//! so the answer does not tell which consumers exist.

use axum::{
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{error::ApiError, extract::ConsumerId, service::Service, state::AppState};

/// How long a client or proxy may reuse the set. Shorter than any rotation's grace period
/// worth having: a receiver seeing an unknown `kid` should fetch again at once anyway.
pub const CACHE_CONTROL: &str = "public, max-age=300";

/// A JSON Web Key Set (documentation of [`relay_shared::signing::Jwks`]).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JwksDoc {
    /// The keys: each subscription's current key, and the previous one during a rotation.
    pub keys: Vec<JwkDoc>,
}

/// One ed25519 public key (RFC 8037).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JwkDoc {
    /// `OKP`.
    pub kty: String,
    /// `Ed25519`.
    pub crv: String,
    /// The public key, base64url without padding.
    pub x: String,
    /// RFC 7638 thumbprint; what `webhook-key-id` names.
    pub kid: String,
    /// `sig`.
    #[serde(rename = "use")]
    pub key_use: String,
    /// `EdDSA`.
    pub alg: String,
}

/// Read a consumer's public signing keys
///
/// No key needed. The keys that verify the `v1a` signatures of the consumer's deliveries:
/// pick the one whose `kid` the delivery's `webhook-key-id` names. Cacheable for five minutes
/// (`ETag`, `If-None-Match`); fetch again when a delivery names a `kid` you do not have.
#[utoipa::path(
    get,
    path = "/v1/consumers/{id}/jwks.json",
    tag = "consumers",
    params(ConsumerId),
    responses(
        (status = 200, description = "The key set (empty for a consumer with no v1a subscription)",
            body = JwksDoc, content_type = "application/jwk-set+json",
            headers(
                ("cache-control" = String, description = "`public, max-age=300`"),
                ("etag" = String, description = "Changes when the set changes"),
            )),
        (status = 304, description = "Not modified since the `If-None-Match` ETag"),
    ),
    security(()),
)]
async fn jwks(
    State(service): State<Service>,
    ConsumerId(id): ConsumerId,
    request: HeaderMap,
) -> Result<Response, ApiError> {
    let set = service.jwks(&id).await?;
    // A set of strings always serialises.
    let body = serde_json::to_vec(&set).unwrap_or_default();
    let digest = Sha256::digest(&body);
    let etag = format!(
        "\"{}\"",
        digest[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/jwk-set+json"),
            )],
            body,
        )
            .into_response()
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CACHE_CONTROL),
    );
    if let Ok(etag) = HeaderValue::try_from(etag) {
        headers.insert(header::ETAG, etag);
    }
    Ok(response)
}

/// The routes of this resource (public: mounted outside the authentication layer).
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(jwks))
}
