//! Getting deliveries back: replay a time window to one endpoint (a job, whose progress page
//! refreshes itself until it ends), and the dead letters (deliveries that ran out of
//! attempts) with their redrive — one, the ones ticked, or all.

use axum::{
    extract::{Path, Query, State},
    http::StatusCode,
};
use maud::html;
use serde::Deserialize;

use super::{
    deliveries::parse_local_utc,
    layout::{self, Answer, Nav, OrPage, badge, csrf, datetime, datetime_ms, failure, see_other},
    session::Posted,
    state::{PortalState, Session},
};
use crate::{
    clock::ms_rfc3339,
    error::ApiError,
    service::{PageRequest, deliveries::RedriveRequest, replay::ReplayRequest},
    store::replays::ReplayState,
};

/// Dead letters per page.
pub const PAGE_SIZE: u32 = 50;

/// `POST {path}/endpoints/{id}/replay`: starts a replay job and shows its progress (the
/// endpoint's replay already running, if there is one).
pub async fn replay(
    State(state): State<PortalState>,
    Path(id): Path<String>,
    posted: Posted,
) -> Answer {
    let Posted { session, form } = posted;
    let s = state
        .service
        .owned_subscription(&session.context.caller, &id)
        .await
        .or_page(&state)?;
    let since = form.text("since").as_deref().and_then(parse_local_utc);
    let until = match form.text("until") {
        None => Some(crate::clock::now_ms() + 1),
        Some(u) => parse_local_utc(&u),
    };
    let (Some(since), Some(until)) = (since, until) else {
        return Err(layout::error_page(&state, StatusCode::BAD_REQUEST).into());
    };
    let request = ReplayRequest {
        since: ms_rfc3339(since),
        until: Some(ms_rfc3339(until)),
    };
    let job = match state.service.start_replay(&s, &request).await {
        Ok(job) => job.id,
        Err(ApiError::ReplayRunning(running)) => running,
        Err(e) => return Err(failure(&state, &e).into()),
    };
    Ok(see_other(
        &state.href(&format!("/endpoints/{}/replays/{job}", s.id)),
    ))
}

/// `GET {path}/endpoints/{id}/replays/{job}`: a replay job's progress, events re-sent of the
/// window's total; the page reloads itself every second until the job ends (no script).
pub async fn replay_progress(
    State(state): State<PortalState>,
    session: Session,
    Path((id, job)): Path<(String, String)>,
) -> Answer {
    let caller = &session.context.caller;
    let s = state
        .service
        .owned_subscription(caller, &id)
        .await
        .or_page(&state)?;
    let job = state
        .service
        .replay_job(caller, &job)
        .await
        .or_page(&state)?;
    if job.subscription_id != s.id {
        return Err(layout::error_page(&state, StatusCode::NOT_FOUND).into());
    }
    let ended = matches!(job.state, ReplayState::Done | ReplayState::Failed);
    let base = state.href(&format!("/endpoints/{}", s.id));
    let log = state.href(&format!("/deliveries?endpoint={}", s.id));
    let body = html! {
        p.crumbs { a href=(state.href("/endpoints")) { "Endpoints" } " / " a href=(base) { (s.url) } }
        (layout::heading("Replay", Some(html! {
            "Events recorded from " (datetime_ms(job.since_ms)) " until " (datetime_ms(job.until_ms)) ", re-sent to this endpoint."
        }), None))
        section.card #replay data-state=(job.state.as_str()) data-published=(job.published) {
            @match job.state {
                ReplayState::Queued => { (layout::notice("info", html! { "Queued: it starts within a moment. This page refreshes by itself." })) }
                ReplayState::Running => { (layout::notice("info", html! { "Re-sending… this page refreshes by itself." })) }
                ReplayState::Done => { (layout::notice("ok", html! { (job.published) " event(s) re-sent. " a href=(log) { "Follow them in the delivery log." } })) }
                ReplayState::Failed => { (layout::notice("bad", html! { "Stopped after " (job.published) " event(s): " (job.reason.as_deref().unwrap_or("no reason given")) })) }
            }
            @if let Some(total) = job.total {
                label for="replay-progress" { (job.published) " of " (total) " event(s) re-sent" }
                progress #replay-progress max=(total.max(1)) value=(if total == 0 { 1 } else { job.published }) {}
            } @else {
                p.muted { "Counting the window's events…" }
            }
        }
        p { a.btn href=(base) { "Back to the endpoint" } }
    };
    Ok(layout::ok(layout::page_refreshing(
        &state,
        Some(&session),
        Nav::Endpoints,
        "replay",
        "Replay",
        body,
        (!ended).then_some(1),
    )))
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
) -> Answer {
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
    let endpoints = endpoints.or_page(&state)?.items;
    let page = page.or_page(&state)?;
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
    Ok(layout::ok(layout::page(
        &state,
        Some(&session),
        Nav::DeadLetters,
        "dead-letters",
        "Dead letters",
        body,
    )))
}

/// `POST {path}/dead-letters/redrive`: the one clicked, the ones ticked, or all (of the
/// endpoint shown, else of every endpoint).
pub async fn redrive(State(state): State<PortalState>, posted: Posted) -> Answer {
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
    result.or_page(&state)?;
    let mut pairs = url::form_urlencoded::Serializer::new(String::new());
    if let Some(e) = &endpoint {
        pairs.append_pair("endpoint", e);
    }
    pairs.append_pair("notice", "redriven");
    pairs.append_pair("count", &redriven.to_string());
    Ok(see_other(
        &state.href(&format!("/dead-letters?{}", pairs.finish())),
    ))
}
