//! `/v1/consumers/{id}/portal-sessions`: one-time links into the consumer portal, minted by
//! the admin (any consumer) or by a consumer key (its own consumer only; another's answers
//! 404), and their revocation (which also ends the browser session a link opened).

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, StatusCode, header},
};
use serde::Serialize;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    clock::ms_rfc3339,
    error::ApiError,
    extract::{ConsumerId, OptionalJsonBody, PortalSessionId},
    service::{Caller, portal::NewPortalLink},
    state::AppState,
};

/// A minted link.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PortalLinkView {
    /// `ps_…`: revoke with `DELETE /v1/consumers/{id}/portal-sessions/{session_id}`.
    pub id: String,
    /// The link to hand to the consumer's browser; it opens once.
    pub url: String,
    /// The link cannot be opened after this time (RFC 3339).
    pub expires_at: String,
}

/// The base URL links start with: the configured public URL, else `http://` and the host
/// the request was sent to.
fn base_url(state: &AppState, headers: &HeaderMap) -> String {
    let configured = &state.portal().public_url;
    if !configured.is_empty() {
        return configured.clone();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        })
        .unwrap_or("127.0.0.1");
    format!("http://{host}")
}

/// Mint a portal link
///
/// A one-time link into the consumer portal for this consumer: opening it starts a browser
/// session (cookie) scoped to the consumer. The admin key mints for any consumer, a consumer
/// key for its own only. 404 when the portal is turned off (`api.portal.enabled`).
#[utoipa::path(
    post,
    path = "/v1/consumers/{id}/portal-sessions",
    tag = "portal",
    params(ConsumerId),
    request_body(content = Option<NewPortalLink>, description = "Optional", content_type = "application/json"),
    responses((status = 201, description = "Minted; the URL opens once", body = PortalLinkView)),
    security(("admin_key" = []), ("consumer_key" = [])),
)]
async fn mint_portal_session(
    State(state): State<AppState>,
    caller: Caller,
    ConsumerId(id): ConsumerId,
    headers: HeaderMap,
    OptionalJsonBody(request): OptionalJsonBody<NewPortalLink>,
) -> Result<(StatusCode, Json<PortalLinkView>), ApiError> {
    let portal = state.portal();
    if !portal.enabled {
        return Err(crate::store::StoreError::Missing("portal").into());
    }
    let minted = state
        .service
        .mint_portal_link(&caller, &id, request, portal.link_ttl, portal.session_ttl)
        .await?;
    let url = format!(
        "{}{}/login/{}",
        base_url(&state, &headers),
        portal.path,
        minted.token
    );
    Ok((
        StatusCode::CREATED,
        Json(PortalLinkView {
            id: minted.id,
            url,
            expires_at: ms_rfc3339(minted.expires_ms),
        }),
    ))
}

/// Revoke a portal link or session
///
/// The link no longer opens, and the browser session it opened ends at once.
#[utoipa::path(
    delete,
    path = "/v1/consumers/{id}/portal-sessions/{session_id}",
    tag = "portal",
    params(ConsumerId, PortalSessionId),
    responses((status = 204, description = "Revoked")),
    security(("admin_key" = []), ("consumer_key" = [])),
)]
async fn revoke_portal_session(
    State(state): State<AppState>,
    caller: Caller,
    ConsumerId(id): ConsumerId,
    PortalSessionId(session): PortalSessionId,
) -> Result<StatusCode, ApiError> {
    state
        .service
        .revoke_portal_session(&caller, &id, &session)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The routes of this resource.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(mint_portal_session))
        .routes(routes!(revoke_portal_session))
}
