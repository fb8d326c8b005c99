//! The event types a consumer can receive: the catalogue's (name, description, JSON Schema,
//! examples, deprecation, Relay's built-in `relay.*` types) merged with the types recorded for
//! the consumer (events naming it or no consumer) — how many of the latest events had each,
//! and the latest such event it may see (the pull API's rule) as an example payload.

use std::collections::BTreeMap;

use axum::extract::State;
use maud::html;

use super::{
    layout::{self, Answer, Nav, OrPage, badge, json_block},
    state::{PortalState, Session},
};
use crate::{
    error::ApiError,
    service::{
        Caller, PageRequest,
        event_types::CatalogueEntry,
        portal::{EventTypeSeen, TYPES_EXAMINED},
    },
};

/// One type as the page shows it.
#[derive(Debug, Default)]
struct Shown {
    catalogue: Option<CatalogueEntry>,
    seen: Option<EventTypeSeen>,
}

/// Every catalogue entry (up to 1,000) and every recorded type, by name.
async fn merged(state: &PortalState, caller: &Caller) -> Result<BTreeMap<String, Shown>, ApiError> {
    let mut all: BTreeMap<String, Shown> = BTreeMap::new();
    let mut after = String::new();
    for _ in 0..2 {
        let page = state
            .service
            .list_event_types(
                caller,
                &PageRequest {
                    after: after.clone(),
                    limit: 500,
                },
            )
            .await?
            .page;
        for entry in page.items {
            let name = entry.event_type.name.clone();
            all.entry(name).or_default().catalogue = Some(entry);
        }
        if !page.has_more {
            break;
        }
        after = page.next_cursor;
    }
    for seen in state.service.event_types_seen(caller).await? {
        let name = seen.event_type.clone();
        all.entry(name).or_default().seen = Some(seen);
    }
    Ok(all)
}

/// The names of the types a consumer can pick in the endpoint form: the catalogue's and the
/// recorded ones, without deprecated types and `relay.ping` (sent to one endpoint by a test,
/// whatever its filter).
///
/// # Errors
/// A store failure.
pub async fn names(state: &PortalState, caller: &Caller) -> Result<Vec<String>, ApiError> {
    Ok(merged(state, caller)
        .await?
        .into_iter()
        .filter(|(name, shown)| {
            name != relay_shared::operational::PING
                && !shown
                    .catalogue
                    .as_ref()
                    .is_some_and(|c| c.event_type.deprecated)
        })
        .map(|(name, _)| name)
        .collect())
}

/// `GET {path}/event-types`.
pub async fn list(State(state): State<PortalState>, session: Session) -> Answer {
    let types = merged(&state, &session.context.caller)
        .await
        .or_page(&state)?;
    let body = html! {
        (layout::heading(
            "Event types",
            Some(html! { "The events you can subscribe to: the catalogue, and the types of the latest " (TYPES_EXAMINED) " events recorded for you." }),
            Some(html! { a.btn.btn-primary href=(state.href("/endpoints/new")) { "Subscribe an endpoint" } }),
        ))
        @if types.is_empty() {
            section.card {
                (layout::empty("No event types yet", html! { "Event types appear here once they are in the catalogue or events have been sent to you." }))
            }
        }
        @for (i, (name, shown)) in types.iter().enumerate() {
            @let entry = shown.catalogue.as_ref().map(|c| &c.event_type);
            section.card aria-labelledby=(format!("type-{i}")) data-event-type=(name) {
                div.card-head {
                    h2.mono id=(format!("type-{i}")) { (name) }
                    div.actions {
                        @if entry.is_some_and(|e| e.deprecated) { (badge("warn", "Deprecated")) }
                        @if shown.catalogue.as_ref().is_some_and(|c| c.builtin) { (badge("info", "Relay")) }
                        @if let Some(seen) = &shown.seen { span.muted { (seen.count) " recent event(s)" } }
                    }
                }
                @if let Some(description) = entry.and_then(|e| e.description.as_deref()) {
                    p { (description) }
                }
                @let example = entry
                    .and_then(|e| e.examples.first())
                    .map(|v| (v.to_string(), "Example data"))
                    .or_else(|| shown.seen.as_ref().and_then(|s| s.example.clone()).map(|b| (b, "Latest event")));
                @if let Some((text, label)) = example {
                    h3 { (label) }
                    (json_block(&format!("{label} of {name}"), &text))
                } @else {
                    p.muted { "Subscribe an endpoint to " code { (name) } " to see examples of it." }
                }
                @if let Some(schema) = entry.and_then(|e| e.schema.as_ref()) {
                    details {
                        summary { "JSON Schema of " code { "data" } }
                        (json_block(&format!("Schema of {name}"), &schema.to_string()))
                    }
                }
            }
        }
    };
    Ok(layout::ok(layout::page(
        &state,
        Some(&session),
        Nav::EventTypes,
        "event-types",
        "Event types",
        body,
    )))
}
