//! Endpoints (the API's subscriptions): the list with each one's state and success rate over
//! the last 24 hours; create and edit (the URL under the API's SSRF rules, the event-type
//! filter chosen from the catalogue and the types recorded for the consumer, or typed as
//! patterns); enable, disable, delete; the signature scheme (`v1`, `v1a`, both; with `v1a` a
//! link to the consumer's JWKS); the signing secret (revealed on request, rotated with a
//! grace period); and a test event with its result.

use std::{collections::BTreeMap, time::Duration};

use axum::{
    extract::{Path, Query, State},
    http::StatusCode,
    response::Response,
};
use maud::{Markup, html};
use relay_shared::signing::SignatureScheme;
use serde::Deserialize;

use super::{
    deliveries,
    form::Form,
    layout::{
        self, Answer, Nav, OrPage, Stop, badge, csrf, datetime, datetime_ms, failure, field,
        see_other,
    },
    session::Posted,
    state::{PortalState, Session},
};
use crate::{
    error::{ApiError, FieldError},
    service::{
        PageRequest, Service,
        portal::{DeliveryQuery, DeliveryStatus},
        subscriptions::{NewSubscription, OwnedSubscription, Secret, SubscriptionChanges},
    },
    store::{Subscription, portal::DeliveryStats},
    validation::Nullable,
};

/// The window of the success rate.
pub const STATS_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Grace periods offered when rotating a secret.
const GRACES: [(&str, &str); 4] = [
    ("1h", "1 hour"),
    ("24h", "24 hours"),
    ("7d", "7 days"),
    ("0s", "None: stop the old secret now"),
];

/// The `notice` of a page after a change (a fixed list: nothing from the URL is echoed).
#[derive(Debug, Default, Deserialize)]
pub struct Notice {
    notice: Option<String>,
    count: Option<u64>,
}

impl Notice {
    fn render(&self) -> Option<Markup> {
        let text = match self.notice.as_deref()? {
            "created" => "Endpoint created. Deliveries start within a second.".to_owned(),
            "updated" => "Changes saved.".to_owned(),
            "enabled" => "Endpoint enabled: deliveries resume.".to_owned(),
            "disabled" => "Endpoint disabled: it receives nothing until enabled again.".to_owned(),
            "deleted" => "Endpoint deleted.".to_owned(),
            "redriven" => format!(
                "{} dead letter(s) sent again on a fresh retry schedule.",
                self.count.unwrap_or(0)
            ),
            _ => return None,
        };
        Some(layout::notice("ok", html! { (text) }))
    }
}

/// An endpoint's state, as the list and its page show it.
fn state_badge(subscription: &Subscription, stats: &DeliveryStats) -> Markup {
    if !subscription.enabled {
        return badge("off", "Disabled");
    }
    if stats.last_outcome.as_deref() == Some("circuit_open") {
        return badge("bad", "Breaker open");
    }
    if stats.failing_since_ms.is_some() {
        return badge("warn", "Failing");
    }
    badge("ok", "Healthy")
}

/// A sentence under the badge: why it is disabled, since when it fails.
fn state_detail(subscription: &Subscription, stats: &DeliveryStats) -> Option<Markup> {
    if !subscription.enabled {
        return Some(html! {
            "Reason: " (subscription.disabled_reason.as_deref().unwrap_or("disabled by hand"))
        });
    }
    if stats.last_outcome.as_deref() == Some("circuit_open") {
        return Some(html! { "Deliveries wait while the endpoint recovers" });
    }
    stats
        .failing_since_ms
        .map(|since| html! { "No success since " (datetime_ms(since)) })
}

/// Successful attempts among the HTTP requests made (deferrals made none), as a percentage.
fn success_rate(stats: &DeliveryStats) -> Option<f64> {
    let count = |o: &str| stats.outcomes.get(o).copied().unwrap_or(0);
    let ok = count("success");
    let requests = ok + count("retry_scheduled") + count("dead") + count("disabled");
    #[allow(clippy::cast_precision_loss)]
    (requests > 0).then(|| ok as f64 * 100.0 / requests as f64)
}

fn rate_text(stats: &DeliveryStats) -> String {
    match success_rate(stats) {
        Some(rate) if rate >= 99.95 || rate == 0.0 => format!("{rate:.0}%"),
        Some(rate) => format!("{rate:.1}%"),
        None => "—".to_owned(),
    }
}

fn requests_24h(stats: &DeliveryStats) -> i64 {
    stats
        .outcomes
        .iter()
        .filter(|(o, _)| !matches!(o.as_str(), "circuit_open" | "deferred"))
        .map(|(_, n)| n)
        .sum()
}

/// `GET {path}/endpoints`.
pub async fn list(
    State(state): State<PortalState>,
    session: Session,
    Query(notice): Query<Notice>,
) -> Answer {
    let caller = &session.context.caller;
    let page = listed(&state, caller).await.or_page(&state)?;
    let stats = state
        .service
        .endpoint_stats(caller, STATS_WINDOW)
        .await
        .or_page(&state)?;
    let none = DeliveryStats::default();
    let body = html! {
        (layout::heading(
            "Endpoints",
            Some(html! { "Where your webhooks are delivered. Success rates cover the last 24 hours." }),
            Some(html! { a.btn.btn-primary href=(state.href("/endpoints/new")) { "Add endpoint" } }),
        ))
        @if let Some(n) = notice.render() { (n) }
        section.card {
            @if page.items.is_empty() {
                (layout::empty("No endpoints yet", html! {
                    "Add an endpoint to start receiving webhooks. "
                    a href=(state.href("/endpoints/new")) { "Add your first endpoint" }
                }))
            } @else {
                div.table-wrap {
                    table {
                        caption.sr { (page.items.len()) " endpoint(s)" }
                        thead { tr {
                            th scope="col" { "Endpoint" }
                            th scope="col" { "Events" }
                            th scope="col" { "Status" }
                            th.num scope="col" { "Success (24 h)" }
                            th.num scope="col" { "Requests (24 h)" }
                        } }
                        tbody {
                            @for s in &page.items {
                                @let stats = stats.get(&s.id).unwrap_or(&none);
                                tr {
                                    td {
                                        div.cell-main.break {
                                            a href=(state.href(&format!("/endpoints/{}", s.id))) { (s.url) }
                                        }
                                        div.cell-sub {
                                            @if let Some(d) = &s.description { (d) " · " }
                                            span.mono { (s.id) }
                                        }
                                    }
                                    td { @for t in &s.event_types { span.chip { (t) } } }
                                    td {
                                        (state_badge(s, stats))
                                        @if let Some(detail) = state_detail(s, stats) {
                                            div.cell-sub { (detail) }
                                        }
                                    }
                                    td.num { (rate_text(stats)) }
                                    td.num { (requests_24h(stats)) }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(layout::ok(layout::page(
        &state,
        Some(&session),
        Nav::Endpoints,
        "endpoints",
        "Endpoints",
        body,
    )))
}

/// What the endpoint form shows: the values typed, and the errors per field.
#[derive(Debug, Default)]
struct FormValues {
    url: String,
    types: Vec<String>,
    patterns: String,
    description: String,
    errors: BTreeMap<&'static str, String>,
}

impl FormValues {
    fn of(subscription: &Subscription, known: &[String]) -> Self {
        let (types, patterns): (Vec<String>, Vec<String>) = subscription
            .event_types
            .iter()
            .cloned()
            .partition(|t| known.contains(t));
        Self {
            url: subscription.url.clone(),
            types,
            patterns: patterns.join(", "),
            description: subscription.description.clone().unwrap_or_default(),
            errors: BTreeMap::new(),
        }
    }

    fn from_form(form: &Form) -> Self {
        Self {
            url: form.get("url").unwrap_or_default().trim().to_owned(),
            types: form.all("types"),
            patterns: form.get("patterns").unwrap_or_default().to_owned(),
            description: form
                .get("description")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            errors: BTreeMap::new(),
        }
    }

    /// The filters: the ticked types, then the typed patterns (comma or space separated).
    fn event_types(&self) -> Vec<String> {
        let mut all = self.types.clone();
        for pattern in self
            .patterns
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|p| !p.is_empty())
        {
            if !all.iter().any(|t| t == pattern) {
                all.push(pattern.to_owned());
            }
        }
        all
    }

    /// Puts a refused value's message on its field.
    fn refused(mut self, error: &FieldError) -> Self {
        let field = if error.field.starts_with("event_types") {
            "types"
        } else if error.field == "description" {
            "description"
        } else {
            "url"
        };
        self.errors.insert(field, error.reason.clone());
        self
    }
}

fn endpoint_form(
    state: &PortalState,
    session: &Session,
    action: &str,
    submit: &str,
    values: &FormValues,
    known: &[String],
) -> Markup {
    let error = |f: &str| values.errors.get(f).map(String::as_str);
    html! {
        form.card method="post" action=(action) novalidate {
            (csrf(session))
            @if !values.errors.is_empty() {
                (layout::notice("bad", html! { "Some values need fixing before this can be saved." }))
            }
            (field("url", "Endpoint URL", Some("An https URL on the public internet. Relay POSTs each event to it, signed."), error("url"), html! {
                input #url type="url" name="url" value=(values.url) required
                    placeholder="https://example.com/webhooks" autocomplete="url" spellcheck="false"
                    aria-invalid=[error("url").map(|_| "true")]
                    aria-describedby=[layout::described_by("url", true, error("url").is_some())];
            }))
            fieldset #types aria-describedby=[layout::described_by("types", true, error("types").is_some())] {
                legend { "Events to receive" }
                @if known.is_empty() {
                    p.hint { "No event types are registered or recorded for you yet: type the types or patterns below." }
                } @else {
                    div.checks {
                        @for (i, t) in known.iter().enumerate() {
                            label.check for=(format!("type-{i}")) {
                                input id=(format!("type-{i}")) type="checkbox" name="types" value=(t)
                                    checked[values.types.contains(t)];
                                (t)
                            }
                        }
                    }
                }
                div.field {
                    label for="patterns" { "Other types or patterns" }
                    input #patterns type="text" name="patterns" value=(values.patterns)
                        placeholder="order.*, invoice.#" spellcheck="false"
                        aria-describedby="types-hint";
                }
                p.hint #types-hint { "Patterns: " code { "*" } " matches one segment, " code { "#" } " any number (" code { "order.*" } ", " code { "#" } " for everything)." }
                @if let Some(e) = error("types") { p.field-error #types-error role="alert" { (e) } }
            }
            (field("description", "Description (optional)", None, error("description"), html! {
                input #description type="text" name="description" value=(values.description) maxlength="500"
                    aria-invalid=[error("description").map(|_| "true")]
                    aria-describedby=[layout::described_by("description", false, error("description").is_some())];
            }))
            div.form-actions {
                button.btn.btn-primary type="submit" { (submit) }
                a.btn href=(state.href("/endpoints")) { "Cancel" }
            }
        }
    }
}

async fn known_types(state: &PortalState, session: &Session) -> Result<Vec<String>, ApiError> {
    super::event_types::names(state, &session.context.caller).await
}

fn form_page(
    state: &PortalState,
    session: &Session,
    status: StatusCode,
    existing: Option<&Subscription>,
    values: &FormValues,
    known: &[String],
) -> Response {
    let (title, action, submit) = match existing {
        Some(s) => (
            "Edit endpoint",
            state.href(&format!("/endpoints/{}", s.id)),
            "Save changes",
        ),
        None => ("Add endpoint", state.href("/endpoints"), "Add endpoint"),
    };
    let body = html! {
        (layout::heading(title, Some(html! { "Choose where events go and which ones." }), None))
        (endpoint_form(state, session, &action, submit, values, known))
    };
    layout::with_status(
        status,
        layout::page(
            state,
            Some(session),
            Nav::Endpoints,
            "endpoint-form",
            title,
            body,
        ),
    )
}

/// `GET {path}/endpoints/new`.
pub async fn new(State(state): State<PortalState>, session: Session) -> Answer {
    let known = known_types(&state, &session).await.or_page(&state)?;
    Ok(form_page(
        &state,
        &session,
        StatusCode::OK,
        None,
        &FormValues::default(),
        &known,
    ))
}

/// `POST {path}/endpoints`.
pub async fn create(State(state): State<PortalState>, posted: Posted) -> Answer {
    let Posted { session, form } = posted;
    let values = FormValues::from_form(&form);
    let new = NewSubscription {
        url: values.url.clone(),
        event_types: values.event_types(),
        consumer: None,
        description: (!values.description.is_empty()).then(|| values.description.clone()),
        enabled: Some(true),
        // Limits are the operator's and the API's to set; the portal leaves the defaults.
        rate_limit: None,
        max_in_flight: None,
        // Signing `v1` (the receiver's secret is on the endpoint page); the event contract's
        // options (v1a, filter, headers, credentials) are set through the API.
        signature_scheme: None,
        filter: None,
        headers: None,
        credentials: None,
        ordering: None,
    };
    match state
        .service
        .create_subscription(&session.context.caller, new)
        .await
    {
        Ok(s) => Ok(see_other(
            &state.href(&format!("/endpoints/{}?notice=created", s.id)),
        )),
        Err(ApiError::Invalid(e) | ApiError::Destination(e)) => {
            let known = known_types(&state, &session).await.or_page(&state)?;
            Ok(form_page(
                &state,
                &session,
                StatusCode::BAD_REQUEST,
                None,
                &values.refused(&e),
                &known,
            ))
        }
        Err(e) => Err(failure(&state, &e).into()),
    }
}

/// What an endpoint's page shows besides the endpoint.
#[derive(Debug, Default)]
struct Extras {
    notice: Option<Markup>,
    secret: Option<Secret>,
}

async fn show_page(
    state: &PortalState,
    session: &Session,
    subscription: OwnedSubscription,
    extras: Extras,
) -> Answer {
    let stats = state
        .service
        .subscription_stats(&subscription, STATS_WINDOW)
        .await
        .or_page(state)?;
    let recent = state
        .service
        .search_deliveries(
            &session.context.caller,
            &DeliveryQuery {
                subscription_id: Some(subscription.id.clone()),
                limit: 8,
                ..DeliveryQuery::default()
            },
        )
        .await
        .or_page(state)?
        .items;
    let s: &Subscription = &subscription;
    let base = state.href(&format!("/endpoints/{}", s.id));
    let count = |o: &str| stats.outcomes.get(o).copied().unwrap_or(0);
    let body = html! {
        p.crumbs { a href=(state.href("/endpoints")) { "Endpoints" } " / " span.mono { (s.id) } }
        (layout::heading(
            &s.url,
            Some(html! {
                (state_badge(s, &stats))
                @if let Some(detail) = state_detail(s, &stats) { " " (detail) }
            }),
            Some(html! {
                a.btn href=(format!("{base}/edit")) { "Edit" }
                @if s.enabled {
                    form.inline method="post" action=(format!("{base}/disable")) {
                        (csrf(session))
                        button.btn type="submit" { "Disable" }
                    }
                } @else {
                    form.inline method="post" action=(format!("{base}/enable")) {
                        (csrf(session))
                        button.btn type="submit" { "Enable" }
                    }
                }
                a.btn.btn-danger href=(format!("{base}/delete")) { "Delete" }
            }),
        ))
        @if let Some(n) = extras.notice { (n) }
        div.grid {
            section.card aria-labelledby="overview-title" {
                h2 #overview-title { "Overview" }
                dl.facts {
                    dt { "URL" } dd.break.mono { (s.url) }
                    dt { "Events" } dd { @for t in &s.event_types { span.chip { (t) } } }
                    dt { "Signatures" } dd { (signatures(state, s)) }
                    @if let Some(d) = &s.description { dt { "Description" } dd { (d) } }
                    dt { "Created" } dd { (datetime(&s.created_at)) }
                    dt { "Updated" } dd { (datetime(&s.updated_at)) }
                }
                h3 { "Last 24 hours" }
                dl.stats {
                    div { dt { "Success rate" } dd { (rate_text(&stats)) } }
                    div { dt { "Delivered" } dd { (count("success")) } }
                    div { dt { "Failed" } dd { (count("retry_scheduled") + count("disabled")) } }
                    div { dt { "Dead" } dd { (count("dead")) } }
                }
            }
            section.card aria-labelledby="secret-title" {
                h2 #secret-title { "Signing secret" }
                @if s.signature_scheme.signs_v1() {
                    p.muted { "Verify each delivery's " code { "webhook-signature" } " with this secret (Standard Webhooks)." }
                } @else {
                    p.muted { "Deliveries carry only " code { "v1a" } " (ed25519) signatures: this secret signs nothing until the scheme includes " code { "v1" } "." }
                }
                @if let Some(secret) = &extras.secret {
                    div.secret {
                        code #secret-value data-secret { (secret.secret) }
                        button.btn.btn-small type="button" data-copy="secret-value" hidden { "Copy" }
                    }
                    @if let Some(until) = secret.previous_expires_ms {
                        p.hint { "The previous secret also signs until " (datetime_ms(until)) ": deliveries carry both signatures." }
                    }
                } @else {
                    form.secret method="post" action=(format!("{base}/secret")) {
                        (csrf(session))
                        code.masked aria-label="Secret hidden" { "whsec_••••••••••••••••" }
                        button.btn.btn-small type="submit" { "Reveal" }
                    }
                }
                h3 { "Rotate" }
                form.row method="post" action=(format!("{base}/rotate")) {
                    (csrf(session))
                    div.field {
                        label for="grace" { "Keep the old secret signing for" }
                        select #grace name="grace" {
                            @for (value, label) in GRACES {
                                option value=(value) selected[value == "24h"] { (label) }
                            }
                        }
                    }
                    button.btn type="submit" { "Rotate secret" }
                }
                h3 { "Test" }
                form method="post" action=(format!("{base}/test")) {
                    (csrf(session))
                    p.muted { "Sends a " code { "relay.ping" } " event to this endpoint only, and shows what it answered." }
                    button.btn.btn-primary type="submit" { "Send test event" }
                }
            }
        }
        section.card aria-labelledby="recent-title" {
            div.card-head {
                h2 #recent-title { "Recent deliveries" }
                a href=(state.href(&format!("/deliveries?endpoint={}", s.id))) { "Open the delivery log" }
            }
            (deliveries::table(state, &recent, None))
        }
        section.card aria-labelledby="replay-title" {
            h2 #replay-title { "Replay" }
            p.muted { "Send again every recorded event of a time window that this endpoint subscribes to (times in UTC). They are signed and retried like new deliveries." }
            form.row method="post" action=(format!("{base}/replay")) {
                (csrf(session))
                div.field {
                    label for="since" { "From" }
                    input #since type="datetime-local" name="since" required step="1";
                }
                div.field {
                    label for="until" { "Until (empty: now)" }
                    input #until type="datetime-local" name="until" step="1";
                }
                button.btn type="submit" { "Replay window" }
            }
        }
    };
    Ok(layout::ok(layout::page(
        state,
        Some(session),
        Nav::Endpoints,
        "endpoint",
        &s.url,
        body,
    )))
}

/// The signature scheme deliveries carry, and where a `v1a` signature's public keys are.
fn signatures(state: &PortalState, s: &Subscription) -> Markup {
    let scheme = s.signature_scheme;
    let what = match scheme {
        SignatureScheme::V1 => "HMAC-SHA256 with the signing secret",
        SignatureScheme::V1a => "ed25519, verified with your public key",
        SignatureScheme::Both => {
            "HMAC-SHA256 with the signing secret, and ed25519 verified with your public key"
        }
    };
    let jwks = s
        .consumer
        .as_deref()
        .filter(|_| scheme.signs_v1a())
        .map(|c| {
            format!(
                "{}/v1/consumers/{}/jwks.json",
                state.settings.public_url,
                url::form_urlencoded::byte_serialize(c.as_bytes()).collect::<String>()
            )
        });
    html! {
        code #signature-scheme { (scheme.as_str()) } " — " (what)
        @if let Some(jwks) = jwks {
            " (" a #jwks-link href=(jwks) { "public keys, JWKS" } ")"
        }
    }
}

/// The caller's endpoints as the portal lists them: the first 500.
pub(super) async fn listed(
    state: &PortalState,
    caller: &crate::service::Caller,
) -> Result<crate::service::Page<crate::store::Subscription>, ApiError> {
    let first = PageRequest {
        after: String::new(),
        limit: 500,
    };
    state.service.list_subscriptions(caller, None, &first).await
}

async fn owned(
    state: &PortalState,
    session: &Session,
    id: &str,
) -> Result<OwnedSubscription, Stop> {
    state
        .service
        .owned_subscription(&session.context.caller, id)
        .await
        .or_page(state)
}

/// `GET {path}/endpoints/{id}`.
pub async fn show(
    State(state): State<PortalState>,
    session: Session,
    Path(id): Path<String>,
    Query(notice): Query<Notice>,
) -> Answer {
    let s = owned(&state, &session, &id).await?;
    let extras = Extras {
        notice: notice.render(),
        ..Extras::default()
    };
    show_page(&state, &session, s, extras).await
}

/// `GET {path}/endpoints/{id}/edit`.
pub async fn edit(
    State(state): State<PortalState>,
    session: Session,
    Path(id): Path<String>,
) -> Answer {
    let s = owned(&state, &session, &id).await?;
    let known = known_types(&state, &session).await.or_page(&state)?;
    Ok(form_page(
        &state,
        &session,
        StatusCode::OK,
        Some(&s),
        &FormValues::of(&s, &known),
        &known,
    ))
}

/// `POST {path}/endpoints/{id}`: saves the edit form.
pub async fn update(
    State(state): State<PortalState>,
    Path(id): Path<String>,
    posted: Posted,
) -> Answer {
    let Posted { session, form } = posted;
    let s = owned(&state, &session, &id).await?;
    let values = FormValues::from_form(&form);
    let changes = SubscriptionChanges {
        url: Nullable::Value(values.url.clone()),
        event_types: Nullable::Value(values.event_types()),
        description: if values.description.is_empty() {
            Nullable::Null
        } else {
            Nullable::Value(values.description.clone())
        },
        ..SubscriptionChanges::default()
    };
    let current = (*s).clone();
    match state.service.update_subscription(s, changes).await {
        Ok(s) => Ok(see_other(
            &state.href(&format!("/endpoints/{}?notice=updated", s.id)),
        )),
        Err(ApiError::Invalid(e) | ApiError::Destination(e)) => {
            let known = known_types(&state, &session).await.or_page(&state)?;
            Ok(form_page(
                &state,
                &session,
                StatusCode::BAD_REQUEST,
                Some(&current),
                &values.refused(&e),
                &known,
            ))
        }
        Err(e) => Err(failure(&state, &e).into()),
    }
}

/// `POST {path}/endpoints/{id}/enable`.
pub async fn enable(
    State(state): State<PortalState>,
    Path(id): Path<String>,
    posted: Posted,
) -> Answer {
    let s = owned(&state, &posted.session, &id).await?;
    let changes = SubscriptionChanges {
        enabled: Nullable::Value(true),
        ..SubscriptionChanges::default()
    };
    let s = state
        .service
        .update_subscription(s, changes)
        .await
        .or_page(&state)?;
    Ok(see_other(
        &state.href(&format!("/endpoints/{}?notice=enabled", s.id)),
    ))
}

/// `POST {path}/endpoints/{id}/disable`.
pub async fn disable(
    State(state): State<PortalState>,
    Path(id): Path<String>,
    posted: Posted,
) -> Answer {
    let s = owned(&state, &posted.session, &id).await?;
    let s = state
        .service
        .disable_subscription(&s, "disabled in the portal")
        .await
        .or_page(&state)?;
    Ok(see_other(
        &state.href(&format!("/endpoints/{}?notice=disabled", s.id)),
    ))
}

/// `GET {path}/endpoints/{id}/delete`: asks first (a page, so it needs no script).
pub async fn confirm_delete(
    State(state): State<PortalState>,
    session: Session,
    Path(id): Path<String>,
) -> Answer {
    let s = owned(&state, &session, &id).await?;
    let base = state.href(&format!("/endpoints/{}", s.id));
    let body = html! {
        section.card.narrow {
            p.eyebrow { "Delete endpoint" }
            h1 { "Delete this endpoint?" }
            p.break.mono { (s.url) }
            p { "It stops receiving events at once. Its delivery history and dead letters are no longer shown. This cannot be undone." }
            form.form-actions method="post" action=(format!("{base}/delete")) {
                (csrf(&session))
                button.btn.btn-danger type="submit" { "Delete endpoint" }
                a.btn href=(base) { "Cancel" }
            }
        }
    };
    Ok(layout::ok(layout::page(
        &state,
        Some(&session),
        Nav::Endpoints,
        "endpoint-delete",
        "Delete endpoint",
        body,
    )))
}

/// `POST {path}/endpoints/{id}/delete`.
pub async fn delete(
    State(state): State<PortalState>,
    Path(id): Path<String>,
    posted: Posted,
) -> Answer {
    let s = owned(&state, &posted.session, &id).await?;
    state.service.delete_subscription(s).await.or_page(&state)?;
    Ok(see_other(&state.href("/endpoints?notice=deleted")))
}

/// `POST {path}/endpoints/{id}/secret`: the page with the secret shown.
pub async fn reveal_secret(
    State(state): State<PortalState>,
    Path(id): Path<String>,
    posted: Posted,
) -> Answer {
    let s = owned(&state, &posted.session, &id).await?;
    let extras = Extras {
        secret: Some(Service::secret(&s)),
        ..Extras::default()
    };
    show_page(&state, &posted.session, s, extras).await
}

/// `POST {path}/endpoints/{id}/rotate`: rotates and shows the new secret.
pub async fn rotate(
    State(state): State<PortalState>,
    Path(id): Path<String>,
    posted: Posted,
) -> Answer {
    let s = owned(&state, &posted.session, &id).await?;
    let grace = posted.form.text("grace");
    let secret = state
        .service
        .rotate_secret(&s, grace.as_deref())
        .await
        .or_page(&state)?;
    let notice = layout::notice(
        "ok",
        html! { "Secret rotated. Update your verifier with the new secret below." },
    );
    let extras = Extras {
        notice: Some(notice),
        secret: Some(secret),
    };
    let s = owned(&state, &posted.session, &id).await?;
    show_page(&state, &posted.session, s, extras).await
}

/// `POST {path}/endpoints/{id}/test`: sends a `relay.ping`, then shows its result page.
pub async fn send_test(
    State(state): State<PortalState>,
    Path(id): Path<String>,
    posted: Posted,
) -> Answer {
    let s = owned(&state, &posted.session, &id).await?;
    let event_id = state.service.ping(&s).await.or_page(&state)?;
    Ok(see_other(
        &state.href(&format!("/endpoints/{}/tests/{event_id}", s.id)),
    ))
}

/// `GET {path}/endpoints/{id}/tests/{event_id}`: the test event's attempts; reloads itself
/// every second until the first is recorded.
pub async fn test_result(
    State(state): State<PortalState>,
    session: Session,
    Path((id, event_id)): Path<(String, String)>,
) -> Answer {
    let s = owned(&state, &session, &id).await?;
    let attempts = state
        .service
        .search_deliveries(
            &session.context.caller,
            &DeliveryQuery {
                subscription_id: Some(s.id.clone()),
                event_id: Some(event_id.clone()),
                limit: 20,
                ..DeliveryQuery::default()
            },
        )
        .await
        .or_page(&state)?
        .items;
    let latest = attempts.first();
    let base = state.href(&format!("/endpoints/{}", s.id));
    let body = html! {
        p.crumbs { a href=(state.href("/endpoints")) { "Endpoints" } " / " a href=(base) { (s.url) } }
        (layout::heading("Test event", Some(html! { "Event " span.mono { (event_id) } " (" code { "relay.ping" } ")" }), None))
        @match latest {
            None => {
                section.card #test-result data-state="pending" {
                    (layout::notice("info", html! { "Sent. Waiting for the endpoint's answer… this page refreshes by itself." }))
                }
            }
            Some(a) => {
                @let status = DeliveryStatus::of_outcome(&deliveries::outcome(a));
                section.card #test-result data-state=(status.name()) {
                    @if status == DeliveryStatus::Delivered {
                        (layout::notice("ok", html! { "Delivered: the endpoint answered " (a.attempt.record.status.unwrap_or(0)) " in " (a.attempt.record.latency_ms) " ms." }))
                    } @else {
                        (layout::notice("bad", html! { "Not delivered: " (a.attempt.record.error.as_deref().unwrap_or("the endpoint did not answer 2xx")) }))
                    }
                    (deliveries::table(&state, &attempts, None))
                }
            }
        }
        p { a.btn href=(base) { "Back to the endpoint" } }
    };
    Ok(layout::ok(layout::page_refreshing(
        &state,
        Some(&session),
        Nav::Endpoints,
        "test-result",
        "Test event",
        body,
        latest.is_none().then_some(1),
    )))
}
