//! Getting deliveries back: replay a time window to one endpoint, and the dead letters
//! (deliveries that ran out of attempts) with their redrive — one, the ones ticked, or all.

use axum::{
    extract::{Path, Query, State},
    http::StatusCode,
    response::Response,
};
use maud::html;
use serde::Deserialize;

use super::{
    deliveries::parse_local_utc,
    layout::{self, Nav, badge, csrf, datetime, failure, see_other},
    session::Posted,
    state::{PortalState, Session},
};
use crate::{
    clock::ms_rfc3339,
    error::ApiError,
    service::{PageRequest, deliveries::RedriveRequest, replay::ReplayRequest},
};

/// Dead letters per page.
pub const PAGE_SIZE: u32 = 50;

/// `POST {path}/endpoints/{id}/replay`.
pub async fn replay(
    State(state): State<PortalState>,
    Path(id): Path<String>,
    posted: Posted,
) -> Response {
    let Posted { session, form } = posted;
    let s = match state
        .service
        .owned_subscription(&session.context.caller, &id)
        .await
    {
        Ok(s) => s,
        Err(e) => return failure(&state, &e),
    };
    let since = form.text("since").as_deref().and_then(parse_local_utc);
    let until = match form.text("until") {
        None => Some(crate::clock::now_ms() + 1),
        Some(u) => parse_local_utc(&u),
    };
    let (Some(since), Some(until)) = (since, until) else {
        return layout::error_page(&state, StatusCode::BAD_REQUEST);
    };
    let request = ReplayRequest {
        since: ms_rfc3339(since),
        until: Some(ms_rfc3339(until)),
    };
    match state.service.replay(&s, &request).await {
        Ok(count) => see_other(&state.href(&format!(
            "/endpoints/{}?notice=replayed&count={count}",
            s.id
        ))),
        Err(e) => failure(&state, &e),
    }
}

/// The dead-letter list's query string.
#[derive(Debug, Default, Deserialize)]
pub struct DeadQuery {
    endpoint: Option<String>,
    after: Option<String>,
    notice: Option<String>,
    count: Option<u64>,
}

/// `GET {path}/dead-letters`.
pub async fn dead_letters(
    State(state): State<PortalState>,
    session: Session,
    Query(query): Query<DeadQuery>,
) -> Response {
    let caller = &session.context.caller;
    let endpoint = query.endpoint.filter(|e| !e.is_empty());
    let endpoints = super::endpoints::listed(&state, caller).await;
    let page = state
        .service
        .dead_letters(
            caller,
            endpoint.as_deref(),
            &PageRequest {
                after: query.after.unwrap_or_default(),
                limit: PAGE_SIZE,
            },
        )
        .await;
    let (endpoints, page) = match (endpoints, page) {
        (Ok(e), Ok(p)) => (e.items, p),
        (Err(e), _) | (_, Err(e)) => return failure(&state, &e),
    };
    let url_of = |id: &str| {
        endpoints
            .iter()
            .find(|e| e.id == id)
            .map_or_else(|| id.to_owned(), |e| e.url.clone())
    };
    let pending = page
        .items
        .iter()
        .filter(|d| d.redriven_at.is_none())
        .count();
    let next = page.has_more.then(|| {
        let mut pairs = url::form_urlencoded::Serializer::new(String::new());
        if let Some(e) = &endpoint {
            pairs.append_pair("endpoint", e);
        }
        pairs.append_pair("after", &page.next_cursor);
        state.href(&format!("/dead-letters?{}", pairs.finish()))
    });
    let body = html! {
        (layout::heading(
            "Dead letters",
            Some(html! { "Deliveries that failed every attempt. Fix the endpoint, then send them again on a fresh retry schedule." }),
            None,
        ))
        @if query.notice.as_deref() == Some("redriven") {
            (layout::notice("ok", html! { (query.count.unwrap_or(0)) " dead letter(s) sent again. Follow them in the delivery log." }))
        }
        form.card.row method="get" action=(state.href("/dead-letters")) aria-label="Filter dead letters" {
            div.field {
                label for="d-endpoint" { "Endpoint" }
                select #d-endpoint name="endpoint" {
                    option value="" { "All endpoints" }
                    @for e in &endpoints {
                        option value=(e.id) selected[endpoint.as_deref() == Some(e.id.as_str())] { (e.url) }
                    }
                }
            }
            button.btn type="submit" { "Show" }
        }
        section.card {
            @if page.items.is_empty() {
                (layout::empty("No dead letters", html! { "Every delivery succeeded or is still being retried." }))
            } @else {
                form method="post" action=(state.href("/dead-letters/redrive")) {
                    (csrf(&session))
                    @if let Some(e) = &endpoint { input type="hidden" name="endpoint" value=(e); }
                    div.card-head {
                        p.muted { (page.items.len()) " shown, " (pending) " waiting for a redrive" }
                        div.actions {
                            label.check.plain for="select-all" hidden { input #select-all type="checkbox" data-select-all hidden; "Select all" }
                            button.btn type="submit" name="action" value="selected" { "Redrive selected" }
                            button.btn.btn-primary type="submit" name="action" value="all" {
                                @if endpoint.is_some() { "Redrive all of this endpoint" } @else { "Redrive all" }
                            }
                        }
                    }
                    div.table-wrap {
                        table {
                            thead { tr {
                                th scope="col" { span.sr { "Select" } }
                                th scope="col" { "Died (UTC)" }
                                th scope="col" { "Event" }
                                th scope="col" { "Endpoint" }
                                th scope="col" { "Last error" }
                                th.num scope="col" { "Attempts" }
                                th scope="col" { "State" }
                                th scope="col" { span.sr { "Action" } }
                            } }
                            tbody {
                                @for d in &page.items {
                                    @let l = &d.letter;
                                    tr data-dead-letter=(l.id) {
                                        td {
                                            input type="checkbox" name="ids" value=(l.id) id=(format!("dl-{}", l.id))
                                                aria-label=(format!("Select {}", l.event_id));
                                        }
                                        td { (datetime(&l.dead_at)) }
                                        td.mono.break { (l.event_id) }
                                        td.break {
                                            a href=(state.href(&format!("/endpoints/{}", l.subscription_id))) { (url_of(&l.subscription_id)) }
                                        }
                                        td.break {
                                            @if let Some(e) = &l.last_error {
                                                (e)
                                            } @else if let Some(s) = l.last_status {
                                                "HTTP " (s)
                                            } @else {
                                                "—"
                                            }
                                        }
                                        td.num { (l.attempts) }
                                        td {
                                            @if let Some(at) = &d.redriven_at {
                                                (badge("info", "Redriven")) div.cell-sub { (datetime(at)) }
                                            } @else {
                                                (badge("bad", "Dead"))
                                            }
                                        }
                                        td {
                                            button.btn.btn-small type="submit" name="one" value=(l.id) {
                                                "Redrive" span.sr { " " (l.event_id) }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                @if let Some(next) = next { div.pager { span {} a.btn href=(next) { "Next page →" } } }
            }
        }
    };
    layout::ok(layout::page(
        &state,
        Some(&session),
        Nav::DeadLetters,
        "dead-letters",
        "Dead letters",
        body,
    ))
}

/// `POST {path}/dead-letters/redrive`: the one clicked, the ones ticked, or all (of the
/// endpoint shown, else of every endpoint).
pub async fn redrive(State(state): State<PortalState>, posted: Posted) -> Response {
    let Posted { session, form } = posted;
    let caller = &session.context.caller;
    let endpoint = form.text("endpoint");
    let mut redriven = 0;
    let result: Result<(), ApiError> = async {
        if let Some(one) = form.text("one") {
            redriven += state
                .service
                .redrive(
                    caller,
                    RedriveRequest {
                        ids: Some(vec![one]),
                        subscription_id: None,
                    },
                )
                .await?;
        } else if form.get("action") == Some("all") {
            let targets = match &endpoint {
                Some(e) => vec![e.clone()],
                None => state
                    .service
                    .list_subscriptions(
                        caller,
                        None,
                        &PageRequest {
                            after: String::new(),
                            limit: 500,
                        },
                    )
                    .await?
                    .items
                    .into_iter()
                    .map(|s| s.id)
                    .collect(),
            };
            for id in targets {
                redriven += state
                    .service
                    .redrive(
                        caller,
                        RedriveRequest {
                            ids: None,
                            subscription_id: Some(id),
                        },
                    )
                    .await?;
            }
        } else {
            let ids = form.all("ids");
            if !ids.is_empty() {
                redriven += state
                    .service
                    .redrive(
                        caller,
                        RedriveRequest {
                            ids: Some(ids),
                            subscription_id: None,
                        },
                    )
                    .await?;
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        return failure(&state, &e);
    }
    let mut pairs = url::form_urlencoded::Serializer::new(String::new());
    if let Some(e) = &endpoint {
        pairs.append_pair("endpoint", e);
    }
    pairs.append_pair("notice", "redriven");
    pairs.append_pair("count", &redriven.to_string());
    see_other(&state.href(&format!("/dead-letters?{}", pairs.finish())))
}
