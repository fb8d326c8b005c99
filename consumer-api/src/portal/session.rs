//! Portal access. A minted link (`{path}/login/{token}`) shows a page that posts the token
//! back (a script submits it at once; a button does without script), so a mail scanner that
//! merely fetches links cannot use up a single-use link, and the cookie is then set on a
//! same-site request. Opening the link sets the session cookie: `HttpOnly`,
//! `SameSite=Strict`, `Secure` when the public URL is https, scoped to the portal's path.
//!
//! Every state-changing request (a POST) must carry the session's CSRF token, a hash of the
//! cookie token that the pages put in each form: a page of another site can neither read it
//! nor (with `SameSite=Strict`) send the cookie. A missing or wrong token answers 403.
//! An unknown, expired or revoked session answers the "link expired" page.

use axum::{
    extract::{FromRequest, FromRequestParts, Path, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{
    form::Form,
    layout::{self, see_other},
    state::{CSRF_FIELD, PortalState, Session},
};
use crate::{clock::now_ms, service::portal::LinkRefusal};

/// The session cookie's name.
pub const COOKIE: &str = "relay_portal";
/// The CSRF token of a session: a hash of its cookie token (which the page's own script cannot
/// read: the cookie is `HttpOnly`).
fn csrf_token(session_token: &str) -> String {
    Sha256::digest(format!("relay-portal-csrf\0{session_token}").as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The value of the session cookie, if the request has one.
fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

impl FromRequestParts<PortalState> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &PortalState) -> Result<Self, Response> {
        let Some(token) = cookie_token(&parts.headers) else {
            return Err(layout::expired_page(state, StatusCode::UNAUTHORIZED));
        };
        match state.service.portal_session(&token).await {
            Ok(Some(context)) => Ok(Self {
                context,
                csrf: csrf_token(&token),
            }),
            Ok(None) => Err(layout::expired_page(state, StatusCode::UNAUTHORIZED)),
            Err(e) => Err(layout::failure(state, &e)),
        }
    }
}

/// A POST from a page of the session: the session and the form, whose CSRF token matched.
#[derive(Debug)]
pub struct Posted {
    /// The session.
    pub session: Session,
    /// The form's fields.
    pub form: Form,
}

impl FromRequest<PortalState> for Posted {
    type Rejection = Response;

    async fn from_request(request: Request, state: &PortalState) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        let session = Session::from_request_parts(&mut parts, state).await?;
        let form = Form::from_request(Request::from_parts(parts, body), state).await?;
        let given = form.get(CSRF_FIELD).unwrap_or_default();
        if !bool::from(given.as_bytes().ct_eq(session.csrf.as_bytes())) {
            tracing::warn!(portal_session_id = %session.context.session_id, "portal POST without a valid CSRF token");
            return Err(layout::error_page(state, StatusCode::FORBIDDEN));
        }
        Ok(Self { session, form })
    }
}

/// `GET {path}/login/{token}`: the page that posts the token (nothing is used up yet).
pub async fn landing(State(state): State<PortalState>, Path(token): Path<String>) -> Response {
    layout::landing_page(&state, &token)
}

/// `POST {path}/login`: opens the link once, sets the cookie and goes to the endpoints.
pub async fn login(State(state): State<PortalState>, form: Form) -> Response {
    let token = form.get("token").unwrap_or_default();
    if token.is_empty() || token.len() > 128 {
        return layout::refused_link_page(&state, LinkRefusal::Unknown);
    }
    match state.service.open_portal_link(token).await {
        Ok(Ok((context, session_token))) => {
            let max_age = (context.expires_ms - now_ms()).max(0) / 1000;
            let cookie = format!(
                "{COOKIE}={session_token}; Path={}; Max-Age={max_age}; HttpOnly; SameSite=Strict{}",
                state.settings.path,
                if state.secure_cookie { "; Secure" } else { "" }
            );
            let mut response = see_other(&state.href("/endpoints"));
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(header::SET_COOKIE, value);
            }
            response
        }
        Ok(Err(refusal)) => layout::refused_link_page(&state, refusal),
        Err(e) => layout::failure(&state, &e),
    }
}

/// `POST {path}/logout`: ends the session and clears the cookie.
pub async fn logout(State(state): State<PortalState>, posted: Posted) -> Response {
    if let Err(e) = state.service.sign_out(&posted.session.context).await {
        return layout::failure(&state, &e);
    }
    let mut response = layout::signed_out_page(&state).into_response();
    let cookie = format!(
        "{COOKIE}=; Path={}; Max-Age=0; HttpOnly; SameSite=Strict{}",
        state.settings.path,
        if state.secure_cookie { "; Secure" } else { "" }
    );
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; relay_portal=tok; b=2"),
        );
        assert_eq!(cookie_token(&headers).as_deref(), Some("tok"));
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("relay_portalx=tok"),
        );
        assert_eq!(cookie_token(&headers), None);
    }

    #[test]
    fn csrf_tokens_differ_per_session() {
        assert_ne!(csrf_token("a"), csrf_token("b"));
        assert_eq!(csrf_token("a"), csrf_token("a"));
        assert_eq!(csrf_token("a").len(), 64);
    }
}
