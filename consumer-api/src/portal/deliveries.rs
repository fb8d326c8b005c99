//! The delivery log: every attempt at delivering to the consumer's endpoints, newest first,
//! searched by endpoint, event id, event type, state and time range, paged; and one
//! attempt's detail — the request as sent (headers and body), the response (status, headers
//! and the start of its body), latency and error. Payloads and responses are shown as text.

use axum::extract::{Path, Query, State};
use maud::{Markup, html};
use relay_shared::attempt::{Headers, RESPONSE_HEADERS_BYTES, RESPONSE_HEADERS_MAX};
use serde::Deserialize;

use super::{
    layout::{self, Answer, Nav, OrPage, badge, code_block, datetime},
    state::{PortalState, Session},
};
use crate::{
    clock::rfc3339_ms,
    service::portal::{DeliveryQuery, DeliveryStatus},
    store::{Subscription, portal::LoggedAttempt},
};

/// Attempts per page.
pub const PAGE_SIZE: u32 = 50;

/// The log's query string, as the filter form sends it.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct LogQuery {
    endpoint: Option<String>,
    event_id: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    status: Option<String>,
    since: Option<String>,
    until: Option<String>,
    before: Option<i64>,
}

fn given(value: Option<&String>) -> Option<String> {
    value
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// A `datetime-local` value (`2026-01-01T12:00` or with seconds), read as UTC; also RFC 3339.
pub fn parse_local_utc(text: &str) -> Option<i64> {
    rfc3339_ms(text)
        .or_else(|| rfc3339_ms(&format!("{text}Z")))
        .or_else(|| rfc3339_ms(&format!("{text}:00Z")))
}

/// Unix milliseconds as a `datetime-local` value (UTC).
fn local_value(ms: i64) -> String {
    crate::clock::ms_rfc3339(ms).chars().take(19).collect()
}

/// The badge of an attempt's state.
pub fn status_badge(attempt: &LoggedAttempt) -> Markup {
    match DeliveryStatus::of_outcome(&outcome(attempt)) {
        DeliveryStatus::Delivered => badge("ok", "Delivered"),
        DeliveryStatus::Failed => badge("warn", "Failed"),
        DeliveryStatus::Dead => badge("bad", "Dead"),
        DeliveryStatus::Deferred => badge("off", "Deferred"),
    }
}

/// A table of attempts; given the endpoints, it adds a column naming each attempt's.
pub fn table(
    state: &PortalState,
    attempts: &[LoggedAttempt],
    endpoints: Option<&[Subscription]>,
) -> Markup {
    let with_endpoint = endpoints.is_some();
    let url_of = |id: &str| {
        endpoints
            .and_then(|all| all.iter().find(|s| s.id == id))
            .map_or_else(|| id.to_owned(), |s| s.url.clone())
    };
    if attempts.is_empty() {
        return layout::empty(
            "No deliveries",
            html! { "Nothing matches yet. Deliveries appear here within a second of being made." },
        );
    }
    html! {
        div.table-wrap {
            table.attempts {
                thead { tr {
                    th scope="col" { "Time (UTC)" }
                    th scope="col" { "Event" }
                    @if with_endpoint { th scope="col" { "Endpoint" } }
                    th scope="col" { "Status" }
                    th.num scope="col" { "HTTP" }
                    th.num scope="col" { "Attempt" }
                    th.num scope="col" { "Latency" }
                    th scope="col" { span.sr { "Details" } }
                } }
                tbody {
                    @for a in attempts {
                        @let r = &a.attempt.record;
                        tr data-event-id=(r.event_id) {
                            td { (datetime(&r.at)) }
                            td {
                                div.cell-main.mono { (a.event_type.as_deref().unwrap_or("relay.ping")) }
                                div.cell-sub.mono.break { (r.event_id) }
                            }
                            @if with_endpoint {
                                td.break {
                                    a href=(state.href(&format!("/endpoints/{}", r.subscription_id))) { (url_of(&r.subscription_id)) }
                                }
                            }
                            td { (status_badge(a)) }
                            td.num { @if let Some(s) = r.status { (s) } @else { "—" } }
                            td.num { (r.attempt) }
                            td.num { (r.latency_ms) " ms" }
                            td {
                                a href=(state.href(&format!("/deliveries/{}", a.attempt.seq))) {
                                    "View" span.sr { " attempt " (r.attempt) " of " (r.event_id) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `GET {path}/deliveries`.
pub async fn log(
    State(state): State<PortalState>,
    session: Session,
    Query(query): Query<LogQuery>,
) -> Answer {
    let caller = &session.context.caller;
    let mut errors = Vec::new();
    let since = given(query.since.as_ref());
    let until = given(query.until.as_ref());
    let since_ms = since.as_deref().and_then(|t| {
        let ms = parse_local_utc(t);
        if ms.is_none() {
            errors.push("“From” is not a date and time.");
        }
        ms
    });
    let until_ms = until.as_deref().and_then(|t| {
        let ms = parse_local_utc(t);
        if ms.is_none() {
            errors.push("“Until” is not a date and time.");
        }
        ms
    });
    let status = given(query.status.as_ref());
    let search = DeliveryQuery {
        subscription_id: given(query.endpoint.as_ref()),
        event_id: given(query.event_id.as_ref()),
        event_type: given(query.event_type.as_ref()),
        status: status.as_deref().and_then(DeliveryStatus::parse),
        since_ms,
        until_ms,
        before: query.before.filter(|b| *b > 0),
        limit: PAGE_SIZE,
    };
    let endpoints = state
        .service
        .list_subscriptions(
            caller,
            None,
            &crate::service::PageRequest {
                after: String::new(),
                limit: 500,
            },
        )
        .await;
    let types = state.service.event_type_names(caller).await;
    let page = state.service.search_deliveries(caller, &search).await;
    let endpoints = endpoints.or_page(&state)?.items;
    let types = types.or_page(&state)?;
    let page = page.or_page(&state)?;
    let selected = |v: &Option<String>, option: &str| v.as_deref() == Some(option);
    let next = page.next_before.map(|before| {
        let mut pairs = url::form_urlencoded::Serializer::new(String::new());
        for (name, value) in [
            ("endpoint", &search.subscription_id),
            ("event_id", &search.event_id),
            ("type", &search.event_type),
            ("status", &status),
            ("since", &since),
            ("until", &until),
        ] {
            if let Some(value) = value {
                pairs.append_pair(name, value);
            }
        }
        pairs.append_pair("before", &before.to_string());
        state.href(&format!("/deliveries?{}", pairs.finish()))
    });
    let body = html! {
        (layout::heading("Deliveries", Some(html! { "Every attempt at delivering to your endpoints, newest first. Times are UTC." }), None))
        form.card.filters method="get" action=(state.href("/deliveries")) role="search" aria-label="Search deliveries" {
            div.field {
                label for="f-endpoint" { "Endpoint" }
                select #f-endpoint name="endpoint" {
                    option value="" { "All endpoints" }
                    @for e in &endpoints {
                        option value=(e.id) selected[selected(&search.subscription_id, &e.id)] { (e.url) }
                    }
                }
            }
            div.field {
                label for="f-event" { "Event id" }
                input #f-event type="search" name="event_id" value=(search.event_id.as_deref().unwrap_or("")) spellcheck="false";
            }
            div.field {
                label for="f-type" { "Event type" }
                select #f-type name="type" {
                    option value="" { "All types" }
                    @for t in &types {
                        option value=(t) selected[selected(&search.event_type, t)] { (t) }
                    }
                }
            }
            div.field {
                label for="f-status" { "Status" }
                select #f-status name="status" {
                    option value="" { "Any status" }
                    @for s in DeliveryStatus::ALL {
                        option value=(s.name()) selected[selected(&status, s.name())] { (capitalised(s.name())) }
                    }
                }
            }
            div.field {
                label for="f-since" { "From (UTC)" }
                input #f-since type="datetime-local" name="since" step="1" value=(since_ms.map(local_value).unwrap_or_default());
            }
            div.field {
                label for="f-until" { "Until (UTC)" }
                input #f-until type="datetime-local" name="until" step="1" value=(until_ms.map(local_value).unwrap_or_default());
            }
            div.actions {
                button.btn.btn-primary type="submit" { "Search" }
                a.btn.btn-quiet href=(state.href("/deliveries")) { "Clear" }
            }
        }
        @for e in &errors { (layout::notice("bad", html! { (e) " It was left out of the search." })) }
        section.card aria-label="Results" {
            (table(&state, &page.items, Some(&endpoints)))
            div.pager {
                span.muted { (page.items.len()) " shown" }
                @if let Some(next) = next { a.btn href=(next) { "Older deliveries →" } }
            }
        }
    };
    Ok(layout::ok(layout::page(
        &state,
        Some(&session),
        Nav::Deliveries,
        "deliveries",
        "Deliveries",
        body,
    )))
}

fn capitalised(word: &str) -> String {
    let mut chars = word.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// A table of headers (name, value), as text; `id` names it for the tests.
fn headers_table(id: &str, label: &str, headers: &Headers) -> Markup {
    html! {
        div.table-wrap {
            table #(id) aria-label=(label) {
                tbody {
                    @for (name, value) in headers.iter() {
                        tr { th.header-name scope="row" { code { (name) } } td.mono.break { (value) } }
                    }
                }
            }
        }
    }
}

/// `GET {path}/deliveries/{seq}`.
pub async fn attempt(
    State(state): State<PortalState>,
    session: Session,
    Path(seq): Path<String>,
) -> Answer {
    let Ok(seq) = seq.parse::<i64>() else {
        return Err(layout::error_page(&state, axum::http::StatusCode::NOT_FOUND).into());
    };
    let detail = state
        .service
        .attempt_detail(&session.context.caller, seq)
        .await
        .or_page(&state)?;
    let a = &detail.attempt;
    let r = &a.attempt.record;
    let endpoint = state.href(&format!("/endpoints/{}", r.subscription_id));
    let body = html! {
        p.crumbs { a href=(state.href("/deliveries")) { "Deliveries" } " / attempt " (r.attempt) }
        (layout::heading(
            a.event_type.as_deref().unwrap_or("relay.ping"),
            Some(html! { (status_badge(a)) " " span.mono { (r.event_id) } }),
            Some(html! { a.btn href=(state.href(&format!("/deliveries?event_id={}", urlencoded(&r.event_id)))) { "All attempts of this event" } }),
        ))
        div.grid {
            section.card aria-labelledby="attempt-title" {
                h2 #attempt-title { "Attempt" }
                dl.facts {
                    dt { "Time" } dd { (datetime(&r.at)) }
                    dt { "Endpoint" } dd.mono.break { a href=(endpoint) { (r.subscription_id) } }
                    dt { "Attempt" } dd { (r.attempt) }
                    dt { "Outcome" } dd.mono { (outcome(a)) }
                    dt { "Latency" } dd { (r.latency_ms) " ms" }
                    @if let Some(next) = &r.next_attempt_at { dt { "Next attempt" } dd { (datetime(next)) } }
                    @if let Some(error) = &r.error { dt { "Error" } dd.break #attempt-error { (error) } }
                }
            }
            section.card aria-labelledby="response-title" {
                h2 #response-title { "Response" }
                dl.facts {
                    dt { "Status" } dd #response-status { @if let Some(s) = r.status { (s) } @else { "No answer" } }
                }
                h3 { "Headers" }
                @if r.response_headers.is_empty() {
                    p.muted { "None recorded." }
                } @else {
                    (headers_table("response-headers", "Response headers", &r.response_headers))
                    @if r.response_headers_omitted > 0 {
                        p.hint #response-headers-omitted {
                            "… and " (r.response_headers_omitted) " more, not kept (Relay keeps the first "
                            (RESPONSE_HEADERS_MAX) " headers, " (RESPONSE_HEADERS_BYTES / 1024) " KiB)."
                        }
                    }
                }
                h3 { "Body (start)" }
                @if let Some(excerpt) = &r.response_excerpt {
                    div #response-body { (code_block("Response body", excerpt)) }
                } @else {
                    p.muted { "Not recorded: Relay keeps the start of the body of failed responses." }
                }
            }
        }
        section.card aria-labelledby="request-title" {
            h2 #request-title { "Request" }
            p.muted { "POST to the endpoint's URL." }
            h3 { "Headers" }
            @if r.request_headers.is_empty() {
                p.muted { "No request was made, or it was made before Relay recorded headers." }
            } @else {
                (headers_table("request-headers", "Request headers", &r.request_headers))
                p.hint { "As sent, credentials redacted; the HTTP client adds " code { "host" } ", " code { "content-length" } " and, unless set above, " code { "user-agent" } "." }
            }
            h3 { "Body" }
            @if let Some(body) = &detail.body {
                div #request-body { (code_block("Request body", body)) }
            } @else {
                p.muted { "Test events are sent straight to the endpoint and not recorded: " code { "{\"id\": …, \"type\": \"relay.ping\", \"data\": {\"subscription_id\": …}}" } "." }
            }
        }
    };
    Ok(layout::ok(layout::page(
        &state,
        Some(&session),
        Nav::Deliveries,
        "attempt",
        "Delivery attempt",
        body,
    )))
}

fn urlencoded(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// The stored name of an attempt's outcome (`success`, `retry_scheduled`, …).
pub fn outcome(attempt: &crate::store::portal::LoggedAttempt) -> String {
    crate::store::records::outcome_name(attempt.attempt.record.outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetime_local_values_are_utc() {
        assert_eq!(parse_local_utc("2026-01-01T00:00"), Some(1_767_225_600_000));
        assert_eq!(
            parse_local_utc("2026-01-01T00:00:01"),
            Some(1_767_225_601_000)
        );
        assert_eq!(
            parse_local_utc("2026-01-01T01:00:00+01:00"),
            Some(1_767_225_600_000)
        );
        assert_eq!(parse_local_utc("soon"), None);
        assert_eq!(local_value(1_767_225_601_000), "2026-01-01T00:00:01");
    }
}
