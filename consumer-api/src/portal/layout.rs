//! The page shell (header with the product's name and logo, navigation, sign-out, footer),
//! the pages that stand alone (link landing, link refused or expired, signed out, errors), and
//! the small pieces every page uses. Everything goes through maud, which escapes each
//! interpolated value: nothing from a payload, a response or a URL can become markup.

use axum::{
    http::{StatusCode, header},
    response::{Html, IntoResponse, Response},
};
use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::{
    assets,
    state::{CSRF_FIELD, PortalState, Session},
};
use crate::{error::ApiError, service::portal::LinkRefusal, store::StoreError};

/// Brand shown when a link has no theme name.
pub const DEFAULT_BRAND: &str = "Relay";

/// The sections of the navigation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    /// Endpoints and their pages.
    Endpoints,
    /// The delivery log.
    Deliveries,
    /// Dead letters.
    DeadLetters,
    /// Event types.
    EventTypes,
    /// None (stand-alone pages).
    None,
}

const SECTIONS: [(Nav, &str, &str); 4] = [
    (Nav::Endpoints, "/endpoints", "Endpoints"),
    (Nav::Deliveries, "/deliveries", "Deliveries"),
    (Nav::DeadLetters, "/dead-letters", "Dead letters"),
    (Nav::EventTypes, "/event-types", "Event types"),
];

/// A 200 HTML response.
pub fn ok(markup: Markup) -> Response {
    Html(markup.into_string()).into_response()
}

/// An HTML response with `status`.
pub fn with_status(status: StatusCode, markup: Markup) -> Response {
    (status, Html(markup.into_string())).into_response()
}

/// The hidden CSRF field every form of a session carries.
pub fn csrf(session: &Session) -> Markup {
    html! { input type="hidden" name=(CSRF_FIELD) value=(session.csrf); }
}

/// A whole page: `id` names it for tests and styles (`data-page`).
pub fn page(
    state: &PortalState,
    session: Option<&Session>,
    nav: Nav,
    id: &str,
    title: &str,
    body: Markup,
) -> Markup {
    page_refreshing(state, session, nav, id, title, body, None)
}

/// A whole page that reloads itself after `refresh` seconds (a result still on its way),
/// without script.
pub fn page_refreshing(
    state: &PortalState,
    session: Option<&Session>,
    nav: Nav,
    id: &str,
    title: &str,
    body: Markup,
    refresh: Option<u32>,
) -> Markup {
    let theme = session.map(|s| &s.context.theme);
    let brand = theme
        .and_then(|t| t.name.as_deref())
        .unwrap_or(DEFAULT_BRAND);
    let accent = theme
        .and_then(|t| t.accent.as_deref())
        .map(|a| a.trim_start_matches('#').to_ascii_lowercase());
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="robots" content="noindex";
                @if let Some(seconds) = refresh {
                    meta http-equiv="refresh" content=(seconds);
                }
                title { (title) " · " (brand) }
                link rel="stylesheet" href=(state.href(&assets::CSS.path()));
                @if let Some(accent) = accent {
                    link rel="stylesheet" href=(state.href(&format!("/theme/{accent}.css")));
                }
                script src=(state.href(&assets::JS.path())) defer {}
            }
            body data-page=(id) {
                a.skip href="#main" { "Skip to content" }
                header.topbar {
                    div.topbar-inner {
                        div.brand {
                            @if let Some(logo) = theme.and_then(|t| t.logo_url.as_deref()) {
                                img.logo src=(logo) alt="";
                            }
                            span.brand-name { (brand) }
                            span.brand-sub { "Webhooks portal" }
                        }
                        @if let Some(session) = session {
                            nav.mainnav aria-label="Portal" {
                                ul {
                                    @for (section, path, label) in SECTIONS {
                                        li {
                                            @if section == nav {
                                                a href=(state.href(path)) aria-current="page" { (label) }
                                            } @else {
                                                a href=(state.href(path)) { (label) }
                                            }
                                        }
                                    }
                                }
                            }
                            form.signout method="post" action=(state.href("/logout")) {
                                (csrf(session))
                                span.who { "Signed in as " strong { (session.context.consumer_id) } }
                                button.btn.btn-quiet type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main id="main" tabindex="-1" {
                    (body)
                }
                footer.footer {
                    @if let Some(session) = session {
                        "Session ends " (datetime_ms(session.context.expires_ms)) ". "
                    }
                    "Deliveries are signed with the Standard Webhooks scheme. Powered by Relay."
                }
            }
        }
    }
}

/// A page title with an optional line under it and actions on the right.
pub fn heading(title: &str, lead: Option<Markup>, actions: Option<Markup>) -> Markup {
    html! {
        div.page-head {
            div {
                h1 { (title) }
                @if let Some(lead) = lead { p.lead { (lead) } }
            }
            @if let Some(actions) = actions { div.actions { (actions) } }
        }
    }
}

/// A notice above a page's content (`polite`: screen readers announce it).
pub fn notice(kind: &str, text: Markup) -> Markup {
    html! { div class=(format!("notice notice-{kind}")) role="status" aria-live="polite" { (text) } }
}

/// A status badge: text and colour together (never colour alone).
pub fn badge(kind: &str, text: &str) -> Markup {
    html! { span class=(format!("badge badge-{kind}")) { (text) } }
}

/// Text shown exactly as it is (what was sent or answered), in a scrolling monospace block.
pub fn code_block(label: &str, text: &str) -> Markup {
    html! {
        pre.code tabindex="0" aria-label=(label) { code { (text) } }
    }
}

/// JSON shown indented (an example), in a scrolling monospace block; other text as it is.
pub fn json_block(label: &str, text: &str) -> Markup {
    let pretty = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok());
    code_block(label, pretty.as_deref().unwrap_or(text))
}

/// An RFC 3339 time as `2026-01-01 12:00:05 UTC` in a `<time>` element.
pub fn datetime(rfc3339: &str) -> Markup {
    let shown = rfc3339
        .split_once('.')
        .map_or(rfc3339.trim_end_matches('Z'), |(whole, _)| whole)
        .replacen('T', " ", 1);
    html! { time datetime=(rfc3339) { (shown) " UTC" } }
}

/// Unix milliseconds as [`datetime`].
pub fn datetime_ms(ms: i64) -> Markup {
    datetime(&crate::clock::ms_rfc3339(ms))
}

/// A full page for an error status: not found (also another consumer's ids), forbidden
/// (a POST without its CSRF token), and the rest.
pub fn error_page(state: &PortalState, status: StatusCode) -> Response {
    let (title, text) = match status {
        StatusCode::NOT_FOUND => (
            "Page not found",
            "There is nothing here, or it is not yours to see. Check the address, or go back to your endpoints.",
        ),
        StatusCode::FORBIDDEN => (
            "Request refused",
            "This request did not come from a page of this portal (its security token is missing or wrong). Reload the page and try again.",
        ),
        StatusCode::SERVICE_UNAVAILABLE => (
            "Temporarily unavailable",
            "The service is busy or reconnecting. Nothing was changed; try again in a moment.",
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE
        | StatusCode::PAYLOAD_TOO_LARGE
        | StatusCode::BAD_REQUEST => (
            "Request not understood",
            "The form could not be read. Reload the page and try again.",
        ),
        _ => (
            "Something went wrong",
            "The request failed on the server. Nothing was lost; try again, and contact support if it keeps failing.",
        ),
    };
    let body = html! {
        section.card.narrow {
            p.eyebrow { "Error " (status.as_u16()) }
            h1 { (title) }
            p { (text) }
            p { a.btn.btn-primary href=(state.href("/endpoints")) { "Go to endpoints" } }
        }
    };
    with_status(
        status,
        page(
            state,
            None,
            Nav::None,
            &format!("error-{}", status.as_u16()),
            title,
            body,
        ),
    )
}

/// The page of a session that is unknown, expired or revoked.
pub fn expired_page(state: &PortalState, status: StatusCode) -> Response {
    let body = html! {
        section.card.narrow {
            p.eyebrow { "Session ended" }
            h1 { "This link has expired" }
            p { "Portal links open once and sessions end after a while, or when they are revoked. "
                "Open the portal again from the product you came from to get a new link." }
        }
    };
    with_status(
        status,
        page(state, None, Nav::None, "link-expired", "Link expired", body),
    )
}

/// The page of a link that does not open.
pub fn refused_link_page(state: &PortalState, refusal: LinkRefusal) -> Response {
    let (title, text) = match refusal {
        LinkRefusal::Used => (
            "This link was already used",
            "Links open once: ask the product you came from for a new one.",
        ),
        LinkRefusal::Revoked => (
            "This link was revoked",
            "Ask the product you came from for a new one.",
        ),
        LinkRefusal::Expired => (
            "This link has expired",
            "Links open only for a short while: ask the product you came from for a new one.",
        ),
        LinkRefusal::Unknown => (
            "This link is not valid",
            "Check that it was copied whole, or ask the product you came from for a new one.",
        ),
    };
    let body = html! {
        section.card.narrow {
            p.eyebrow { "Link refused" }
            h1 { (title) }
            p { (text) }
        }
    };
    with_status(
        StatusCode::GONE,
        page(state, None, Nav::None, "link-expired", "Link expired", body),
    )
}

/// The landing page of a link: posts its token (at once with script, by a button without).
pub fn landing_page(state: &PortalState, token: &str) -> Response {
    let body = html! {
        section.card.narrow {
            h1 { "Opening your webhooks portal…" }
            form method="post" action=(state.href("/login")) data-autosubmit {
                input type="hidden" name="token" value=(token);
                p { "If nothing happens, continue:" }
                button.btn.btn-primary type="submit" { "Open the portal" }
            }
        }
    };
    ok(page(
        state,
        None,
        Nav::None,
        "landing",
        "Opening the portal",
        body,
    ))
}

/// The page after signing out.
pub fn signed_out_page(state: &PortalState) -> Response {
    let body = html! {
        section.card.narrow {
            h1 { "You are signed out" }
            p { "Open the portal again from the product you came from." }
        }
    };
    ok(page(
        state,
        None,
        Nav::None,
        "signed-out",
        "Signed out",
        body,
    ))
}

/// A label with its control, a hint and the field's error, tied together for assistive
/// technology (`aria-describedby`).
pub fn field(
    id: &str,
    label: &str,
    hint: Option<&str>,
    error: Option<&str>,
    control: Markup,
) -> Markup {
    html! {
        div.field.has-error[error.is_some()] {
            label for=(id) { (label) }
            (control)
            @if let Some(hint) = hint { p.hint id=(format!("{id}-hint")) { (hint) } }
            @if let Some(error) = error { p.field-error id=(format!("{id}-error")) role="alert" { (error) } }
        }
    }
}

/// `aria-describedby` for a field with a hint and maybe an error.
pub fn described_by(id: &str, hint: bool, error: bool) -> Option<String> {
    let mut ids = Vec::new();
    if hint {
        ids.push(format!("{id}-hint"));
    }
    if error {
        ids.push(format!("{id}-error"));
    }
    (!ids.is_empty()).then(|| ids.join(" "))
}

/// An empty-state panel.
pub fn empty(title: &str, text: Markup) -> Markup {
    html! {
        div.empty {
            p.empty-title { (title) }
            p { (text) }
        }
    }
}

/// Marks trusted, constant markup (an entity), never data.
pub fn entity(text: &'static str) -> PreEscaped<&'static str> {
    PreEscaped(text)
}

/// What a portal handler answers: its page, or (`Err`) the page of what went wrong, so that
/// its steps can end it early with `?`. axum answers either.
pub type Answer = Result<Response, Stop>;

/// The page that ends a handler early (a failure's, a 404…); boxed so that every step's
/// `Result` stays small.
#[derive(Debug)]
pub struct Stop(Box<Response>);

impl From<Response> for Stop {
    fn from(page: Response) -> Self {
        Self(Box::new(page))
    }
}

impl IntoResponse for Stop {
    fn into_response(self) -> Response {
        *self.0
    }
}

/// A service result whose error becomes its page ([`failure`]), for `?` in handlers.
pub trait OrPage<T> {
    /// The value, or the page of the error.
    ///
    /// # Errors
    /// The error's page.
    fn or_page(self, state: &PortalState) -> Result<T, Stop>;
}

impl<T> OrPage<T> for Result<T, ApiError> {
    fn or_page(self, state: &PortalState) -> Result<T, Stop> {
        self.map_err(|e| failure(state, &e).into())
    }
}

/// The page for an operation's failure: not found (also another consumer's ids), a refused
/// value, or a temporary or internal failure.
pub fn failure(state: &PortalState, error: &ApiError) -> Response {
    let status = match error {
        ApiError::Store(StoreError::NotFound | StoreError::Missing(_)) => StatusCode::NOT_FOUND,
        ApiError::Forbidden | ApiError::Unauthorized | ApiError::NotYours(_) => {
            StatusCode::FORBIDDEN
        }
        ApiError::Invalid(_) | ApiError::Destination(_) | ApiError::Body(_) => {
            StatusCode::BAD_REQUEST
        }
        ApiError::Broker(_) | ApiError::ReplayFailed(_) => StatusCode::SERVICE_UNAVAILABLE,
        ApiError::Store(e) if e.is_transient() => StatusCode::SERVICE_UNAVAILABLE,
        ApiError::Store(StoreError::Conflict(_))
        | ApiError::InUse(_)
        | ApiError::ReplayRunning(_) => StatusCode::CONFLICT,
        ApiError::Rejected(p) => StatusCode::from_u16(p.status).unwrap_or(StatusCode::BAD_REQUEST),
        ApiError::Store(_) => {
            tracing::error!(error = %error, "portal request failed");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    error_page(state, status)
}

/// A redirect after a POST (303: the browser follows with a GET).
pub fn see_other(location: &str) -> Response {
    (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, location.to_owned())],
    )
        .into_response()
}
