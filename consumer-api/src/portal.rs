//! The consumer portal: server-rendered pages where a consumer (the people who receive the
//! webhooks) manages its endpoints, reads its delivery log, replays, redrives dead letters and
//! browses the event types — without writing API calls. It is a second front end over the
//! same [`Service`] as the JSON API, with the browser session's consumer as the
//! [`crate::service::Caller`], so it shows only that consumer's data under the same rules.
//!
//! - Access: a one-time link (`POST /v1/consumers/{id}/portal-sessions`) is opened into a
//!   session cookie ([`session`]); every POST carries a CSRF token derived from it.
//! - Pages are [`maud`] templates: every interpolated value is HTML-escaped at compile time,
//!   so payloads, response excerpts, URLs and headers are always text.
//! - Assets (one stylesheet, one small script) are compiled into the binary ([`assets`]); the
//!   Content-Security-Policy allows only them: no inline script or style, no `unsafe-inline`.

pub mod assets;
pub mod deliveries;
pub mod endpoints;
pub mod event_types;
pub mod form;
pub mod layout;
pub mod recovery;
pub mod session;
pub mod state;

use std::sync::Arc;

use axum::{
    Router,
    extract::{Request, State},
    http::{HeaderName, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{Redirect, Response},
    routing::{get, post},
};

use self::state::PortalState;
use crate::{config::PortalSettings, service::Service};

/// The portal's routes under `settings.path`, with their security headers; an empty router
/// when the portal is turned off.
pub fn router(service: Service, settings: &PortalSettings) -> Router {
    if !settings.enabled {
        return Router::new();
    }
    let state = PortalState {
        service,
        secure_cookie: settings.public_url.starts_with("https://"),
        settings: Arc::new(settings.clone()),
    };
    let csp: Arc<str> = content_security_policy(&settings.frame_ancestors).into();
    let pages = Router::new()
        .route("/", get(home))
        .route("/login/{token}", get(session::landing))
        .route("/login", post(session::login))
        .route("/logout", post(session::logout))
        .route("/endpoints", get(endpoints::list).post(endpoints::create))
        .route("/endpoints/new", get(endpoints::new))
        .route(
            "/endpoints/{id}",
            get(endpoints::show).post(endpoints::update),
        )
        .route("/endpoints/{id}/edit", get(endpoints::edit))
        .route("/endpoints/{id}/enable", post(endpoints::enable))
        .route("/endpoints/{id}/disable", post(endpoints::disable))
        .route(
            "/endpoints/{id}/delete",
            get(endpoints::confirm_delete).post(endpoints::delete),
        )
        .route("/endpoints/{id}/secret", post(endpoints::reveal_secret))
        .route("/endpoints/{id}/rotate", post(endpoints::rotate))
        .route("/endpoints/{id}/test", post(endpoints::send_test))
        .route(
            "/endpoints/{id}/tests/{event_id}",
            get(endpoints::test_result),
        )
        .route("/endpoints/{id}/replay", post(recovery::replay))
        .route(
            "/endpoints/{id}/replays/{job}",
            get(recovery::replay_progress),
        )
        .route("/deliveries", get(deliveries::log))
        .route("/deliveries/{seq}", get(deliveries::attempt))
        .route("/dead-letters", get(recovery::dead_letters))
        .route("/dead-letters/redrive", post(recovery::redrive))
        .route("/event-types", get(event_types::list))
        .route("/assets/{name}", get(assets::serve))
        .route("/theme/{accent}", get(assets::theme))
        .fallback(not_found)
        .with_state(state.clone());
    Router::new()
        .nest(&settings.path, pages)
        .layer(middleware::from_fn_with_state(csp, security_headers))
}

/// `default-src 'none'` and only what the pages use: the portal's own script and stylesheet,
/// images from itself or over https (a theme's logo), forms posting to itself.
fn content_security_policy(frame_ancestors: &[String]) -> String {
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' https:; \
         connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors {}",
        frame_ancestors.join(" ")
    )
}

/// Adds the security headers to every portal response; pages are never cached (they show
/// secrets and change with every delivery), assets are (their names carry their hash).
async fn security_headers(State(csp): State<Arc<str>>, request: Request, next: Next) -> Response {
    let asset =
        request.uri().path().contains("/assets/") || request.uri().path().contains("/theme/");
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&csp) {
        headers.insert(header::CONTENT_SECURITY_POLICY, value);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // The login URL carries the link token: never send it on as a referrer.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    if !asset {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

async fn home(State(state): State<PortalState>) -> Redirect {
    Redirect::to(&state.href("/endpoints"))
}

async fn not_found(State(state): State<PortalState>) -> Response {
    layout::error_page(&state, StatusCode::NOT_FOUND)
}
