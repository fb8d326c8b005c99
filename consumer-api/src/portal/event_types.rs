//! The event types a consumer can receive: each type recorded for it (events naming it or no
//! consumer), how many of the latest events had it, and the latest such event it may see (the
//! pull API's rule) as an example payload. When the event-type catalogue lands, its
//! descriptions and schemas join this page.

use axum::{extract::State, response::Response};
use maud::html;

use super::{
    PortalState, failure,
    layout::{self, Nav, json_block},
    session::Session,
};
use crate::service::portal::TYPES_EXAMINED;

/// `GET {path}/event-types`.
pub async fn list(State(state): State<PortalState>, session: Session) -> Response {
    let types = match state
        .service
        .event_types_seen(&session.context.caller)
        .await
    {
        Ok(t) => t,
        Err(e) => return failure(&state, &e),
    };
    let body = html! {
        (layout::heading(
            "Event types",
            Some(html! { "The events you can subscribe to, from the latest " (TYPES_EXAMINED) " recorded for you, each with an example payload." }),
            Some(html! { a.btn.btn-primary href=(state.href("/endpoints/new")) { "Subscribe an endpoint" } }),
        ))
        @if types.is_empty() {
            section.card {
                (layout::empty("No events yet", html! { "Event types appear here once events have been sent to you." }))
            }
        }
        @for (i, t) in types.iter().enumerate() {
            section.card aria-labelledby=(format!("type-{i}")) data-event-type=(t.event_type) {
                div.card-head {
                    h2.mono #(format!("type-{i}")) { (t.event_type) }
                    span.muted { (t.count) " recent event(s)" }
                }
                @if let Some(example) = &t.example {
                    h3 { "Example payload" }
                    (json_block(&format!("Example payload of {}", t.event_type), example))
                } @else {
                    p.muted { "Subscribe an endpoint to " code { (t.event_type) } " to see examples of it." }
                }
            }
        }
    };
    layout::ok(layout::page(
        &state,
        Some(&session),
        Nav::EventTypes,
        "event-types",
        "Event types",
        body,
    ))
}
