//! The pull API: `GET /v1/events` reads every recorded event the caller may see, in order of
//! recording (≈ acceptance), with a stable cursor; `GET /v1/events/{id}` one event with its
//! deliveries per subscription.
//!
//! **Who sees an event.** The admin key sees every event. A consumer key sees an event when
//! the event names that consumer (`"consumer": "acme"`), or when it names no consumer and its
//! type matches a filter of one of that consumer's subscriptions (enabled or not) — exactly
//! the events Relay would push to that consumer. A consumer that relies on pulling alone can
//! keep a subscription disabled as its filter, or have producers name it in `consumer`.
//!
//! **Cursor.** `next_cursor` is the store's sequence number of the last event examined;
//! pass it as `after` to continue. It is returned even on the last page, so a poller keeps
//! it and asks again later: nothing recorded after it is skipped, nothing is seen twice.

use std::collections::BTreeMap;

use axum::{
    Extension, Json,
    extract::{Path, RawQuery, State},
};
use relay_shared::filter::TopicFilter;
use serde::Serialize;
use serde_json::Value;

use crate::{
    attempts::AttemptView,
    auth::Caller,
    error::{ApiError, FieldError},
    http::{AppState, QueryParams, seq_cursor},
    store::{
        PageRequest, StoreError,
        records::{EventScope, StoredEvent},
    },
    subscriptions::ms_rfc3339,
};

/// Page size when `limit` is absent.
pub const DEFAULT_LIMIT: u32 = 100;
/// Largest `limit`.
pub const MAX_LIMIT: u32 = 1000;
/// Most events examined by one request (filters may skip many); the cursor then moves on.
pub const SCAN_BUDGET: u32 = 10_000;
/// Most filters in `types`.
pub const MAX_TYPES: usize = 20;

/// One recorded event: the envelope as published, plus where it stands.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventView {
    /// Position in the order of recording (a cursor).
    pub sequence: i64,
    /// When Relay accepted it, RFC 3339.
    pub accepted_at: String,
    /// The envelope: `id`, `type`, `occurred_at`, `consumer`, `data`.
    #[schema(value_type = Object)]
    pub event: Value,
}

impl EventView {
    fn new(stored: &StoredEvent) -> Self {
        Self {
            sequence: stored.seq,
            accepted_at: ms_rfc3339(stored.event.accepted_ms),
            event: serde_json::from_str(&stored.event.body).unwrap_or(Value::Null),
        }
    }
}

/// Body of `GET /v1/events`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventList {
    /// Events in order of recording.
    pub data: Vec<EventView>,
    /// Pass as `after` next time; always present (the `after` given when nothing was read).
    pub next_cursor: String,
    /// Whether more events may be read right away.
    pub has_more: bool,
}

/// The deliveries of one event to one subscription.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryView {
    /// The subscription.
    pub subscription_id: String,
    /// Outcome of the last attempt.
    pub last_outcome: String,
    /// Every attempt, in order.
    pub attempts: Vec<AttemptView>,
}

/// Body of `GET /v1/events/{id}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventDetail {
    /// The event.
    #[serde(flatten)]
    pub event: EventView,
    /// Its deliveries, per subscription the caller may see.
    pub deliveries: Vec<DeliveryView>,
}

/// What a caller may see: `None` for everything, else the type filters of its subscriptions.
pub(crate) struct Visibility {
    consumer: Option<String>,
    filters: Vec<TopicFilter>,
}

impl Visibility {
    pub(crate) async fn of(state: &AppState, caller: &Caller) -> Result<Self, ApiError> {
        let Some(consumer) = caller.consumer() else {
            return Ok(Self {
                consumer: None,
                filters: Vec::new(),
            });
        };
        let mut filters = Vec::new();
        let mut after = None;
        loop {
            let page = state
                .store
                .list(&PageRequest {
                    after,
                    consumer: Some(consumer.to_owned()),
                    limit: 1000,
                })
                .await?;
            for s in &page.items {
                filters.extend(
                    s.event_types
                        .iter()
                        .filter_map(|f| TopicFilter::parse(f).ok()),
                );
            }
            match page.next_cursor {
                Some(cursor) => after = Some(cursor),
                None => break,
            }
        }
        Ok(Self {
            consumer: Some(consumer.to_owned()),
            filters,
        })
    }

    pub(crate) fn scope(&self) -> EventScope<'_> {
        self.consumer
            .as_deref()
            .map_or(EventScope::All, EventScope::ConsumerOrUnnamed)
    }

    pub(crate) fn sees(&self, event: &StoredEvent) -> bool {
        match &self.consumer {
            None => true,
            Some(c) if event.event.consumer.as_deref() == Some(c) => true,
            Some(_) if event.event.consumer.is_some() => false,
            Some(_) => matches_any(&self.filters, &event.event.event_type),
        }
    }
}

pub(crate) fn matches_any(filters: &[TopicFilter], event_type: &str) -> bool {
    let segments: Vec<&str> = event_type.split('.').collect();
    filters.iter().any(|f| f.matches(&segments))
}

fn parse_types(raw: Option<String>) -> Result<Option<Vec<TopicFilter>>, FieldError> {
    let Some(raw) = raw else { return Ok(None) };
    let filters = raw
        .split(',')
        .map(|f| TopicFilter::parse(f.trim()).map_err(|e| FieldError::new("types", e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    if filters.len() > MAX_TYPES {
        return Err(FieldError::new(
            "types",
            format!("types may have at most {MAX_TYPES} filters"),
        ));
    }
    Ok(Some(filters))
}

/// `GET /v1/events?after=&types=&limit=`: `types` is a comma-separated list of types or
/// topic filters (`order.*`, `invoice.#`).
///
/// # Errors
/// A problem for a bad parameter or a store failure.
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Result<Json<EventList>, ApiError> {
    let mut params = QueryParams::parse(query.as_deref(), &["after", "types", "limit"])?;
    let limit = params.limit(DEFAULT_LIMIT, MAX_LIMIT)?;
    let mut cursor = seq_cursor(params.take("after"))?;
    let types = parse_types(params.take("types"))?;
    let visibility = Visibility::of(&state, &caller).await?;
    let batch = limit.max(200);
    let mut data = Vec::new();
    let mut scanned = 0;
    let mut has_more = false;
    'scan: loop {
        let rows = state
            .store
            .events_after(cursor, visibility.scope(), batch)
            .await?;
        let full = rows.len() == batch as usize;
        for row in &rows {
            cursor = row.seq;
            scanned += 1;
            let wanted = visibility.sees(row)
                && types
                    .as_ref()
                    .is_none_or(|t| matches_any(t, &row.event.event_type));
            if wanted {
                data.push(EventView::new(row));
                if data.len() == limit as usize {
                    has_more = true;
                    break 'scan;
                }
            }
            if scanned >= SCAN_BUDGET {
                has_more = true;
                break 'scan;
            }
        }
        if !full {
            break;
        }
    }
    Ok(Json(EventList {
        data,
        next_cursor: cursor.to_string(),
        has_more,
    }))
}

/// `GET /v1/events/{id}` with its deliveries per subscription.
///
/// # Errors
/// 404 when there is no such event or the caller may not see it, or a store failure.
pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<EventDetail>, ApiError> {
    let stored = state.store.event(&id).await?;
    let visibility = Visibility::of(&state, &caller).await?;
    if !visibility.sees(&stored) {
        return Err(StoreError::Missing("event").into());
    }
    let mut per_subscription: BTreeMap<String, Vec<AttemptView>> = BTreeMap::new();
    for attempt in state.store.attempts_for_event(&id).await? {
        per_subscription
            .entry(attempt.record.subscription_id.clone())
            .or_default()
            .push(AttemptView::from(attempt));
    }
    let mut deliveries = Vec::new();
    for (subscription_id, attempts) in per_subscription {
        if let Some(consumer) = caller.consumer() {
            let owner = match state.store.get(&subscription_id).await {
                Ok(s) => s.consumer,
                Err(StoreError::NotFound) => None,
                Err(e) => return Err(e.into()),
            };
            if owner.as_deref() != Some(consumer) {
                continue;
            }
        }
        deliveries.push(DeliveryView {
            last_outcome: attempts
                .last()
                .map(|a| a.outcome.clone())
                .unwrap_or_default(),
            subscription_id,
            attempts,
        });
    }
    Ok(Json(EventDetail {
        event: EventView::new(&stored),
        deliveries,
    }))
}
