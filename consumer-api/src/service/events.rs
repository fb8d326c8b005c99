//! The pull API: every recorded event the caller may see, in order of recording
//! (≈ acceptance), with a stable cursor; one event with its deliveries per subscription.
//!
//! **Who sees an event.** The admin sees every event. A consumer sees an event when the event
//! names that consumer (`"consumer": "acme"`), or when it names no consumer and its type
//! matches a filter of one of that consumer's subscriptions (enabled or not) — exactly the
//! events Relay would push to that consumer. Relay's own events (`relay.*`) that name no
//! consumer are about an operator's subscriptions and stay with the admin. A consumer that relies on pulling alone can keep
//! a subscription disabled as its filter, or have producers name it in `consumer`.
//!
//! **Cursor.** The store's sequence number of the last event examined (events the caller may
//! not see or did not ask for are examined and skipped), so a poller that keeps `next_cursor`
//! and asks again later skips nothing recorded after it and sees nothing twice.

use std::collections::BTreeMap;

use relay_shared::{filter::TopicFilter, operational};

use super::{Caller, Page, PageRequest, Service, seq_cursor};
use crate::{
    error::{ApiError, FieldError},
    store::{
        ListRequest, StoreError,
        records::{EventScope, StoredAttempt, StoredEvent},
    },
};

/// Most events examined by one request (filters may skip many); the cursor then moves on.
pub const SCAN_BUDGET: u32 = 10_000;
/// Most filters in `types`.
pub const MAX_TYPES: usize = 20;

/// The attempts at delivering one event to one subscription.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The subscription.
    pub subscription_id: String,
    /// Every attempt, in order.
    pub attempts: Vec<StoredAttempt>,
}

/// One event with its deliveries to the subscriptions the caller may see.
#[derive(Debug, Clone)]
pub struct EventDetail {
    /// The event.
    pub event: StoredEvent,
    /// Its deliveries, per subscription, in subscription id order.
    pub deliveries: Vec<Delivery>,
}

/// What a caller may see: everything, or the events naming it plus the unnamed events
/// matching one of its subscriptions' filters.
#[derive(Debug)]
pub(crate) struct Visibility {
    consumer: Option<String>,
    pub(crate) filters: Vec<TopicFilter>,
}

impl Visibility {
    pub(crate) fn scope(&self) -> EventScope<'_> {
        self.consumer
            .as_deref()
            .map_or(EventScope::All, EventScope::ConsumerOrUnnamed)
    }

    pub(crate) fn sees(&self, event: &StoredEvent) -> bool {
        let (event_type, named) = (&event.event.event_type, event.event.consumer.as_deref());
        match &self.consumer {
            None => true,
            Some(c) => {
                operational::addressed(event_type, named, Some(c))
                    && (named.is_some() || matches_any(&self.filters, event_type))
            }
        }
    }
}

/// Whether `event_type` matches one of `filters`.
pub(crate) fn matches_any(filters: &[TopicFilter], event_type: &str) -> bool {
    let segments: Vec<&str> = event_type.split('.').collect();
    filters.iter().any(|f| f.matches(&segments))
}

/// Parses the `types` filters of a pull.
///
/// # Errors
/// A [`FieldError`] on `types`.
fn parse_types(types: &[String]) -> Result<Vec<TopicFilter>, FieldError> {
    if types.is_empty() || types.len() > MAX_TYPES {
        return Err(FieldError::new(
            "types",
            format!("types must list 1 to {MAX_TYPES} filters"),
        ));
    }
    types
        .iter()
        .map(|f| TopicFilter::parse(f).map_err(|e| FieldError::new("types", e.to_string())))
        .collect()
}

impl Service {
    pub(crate) async fn visibility(&self, caller: &Caller) -> Result<Visibility, ApiError> {
        let Some(consumer) = caller.consumer() else {
            return Ok(Visibility {
                consumer: None,
                filters: Vec::new(),
            });
        };
        let mut filters = Vec::new();
        let mut after = String::new();
        loop {
            let rows = self
                .store
                .list(&ListRequest {
                    after: after.clone(),
                    consumer: Some(consumer.to_owned()),
                    limit: 1000,
                })
                .await?;
            for s in &rows {
                filters.extend(
                    s.event_types
                        .iter()
                        .filter_map(|f| TopicFilter::parse(f).ok()),
                );
            }
            match rows.last() {
                Some(last) if rows.len() == 1000 => after = last.id.clone(),
                _ => break,
            }
        }
        Ok(Visibility {
            consumer: Some(consumer.to_owned()),
            filters,
        })
    }

    /// The events after `page.after` that the caller may see, optionally only those of
    /// `types` (types or topic filters), at most `page.limit`, examining at most
    /// [`SCAN_BUDGET`] events.
    ///
    /// # Errors
    /// A [`FieldError`] on `after` or `types`, or a store failure.
    pub async fn pull(
        &self,
        caller: &Caller,
        types: Option<&[String]>,
        page: &PageRequest,
    ) -> Result<Page<StoredEvent>, ApiError> {
        let mut cursor = seq_cursor(&page.after)?;
        let types = types.map(parse_types).transpose()?;
        let visibility = self.visibility(caller).await?;
        let batch = page.limit.max(200);
        let mut items = Vec::new();
        let mut scanned = 0;
        let mut has_more = false;
        let mut examined = false;
        'scan: loop {
            let rows = self
                .store
                .events_after(cursor, visibility.scope(), batch)
                .await?;
            let full = rows.len() == batch as usize;
            for row in rows {
                cursor = row.seq;
                examined = true;
                scanned += 1;
                let wanted = visibility.sees(&row)
                    && types
                        .as_ref()
                        .is_none_or(|t| matches_any(t, &row.event.event_type));
                if wanted {
                    items.push(row);
                    if items.len() == page.limit as usize {
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
        Ok(Page {
            items,
            // Nothing examined: the cursor given, as given.
            next_cursor: if examined {
                cursor.to_string()
            } else {
                page.after.clone()
            },
            has_more,
        })
    }

    /// One event with its deliveries to the subscriptions the caller may see.
    ///
    /// # Errors
    /// [`StoreError::Missing`] when there is no such event or the caller may not see it, or
    /// a store failure.
    pub async fn event(&self, caller: &Caller, id: &str) -> Result<EventDetail, ApiError> {
        let stored = self.store.event(id).await?;
        let visibility = self.visibility(caller).await?;
        if !visibility.sees(&stored) {
            return Err(StoreError::Missing("event").into());
        }
        let mut per_subscription: BTreeMap<String, Vec<StoredAttempt>> = BTreeMap::new();
        for attempt in self.store.attempts_for_event(id).await? {
            per_subscription
                .entry(attempt.record.subscription_id.clone())
                .or_default()
                .push(attempt);
        }
        let mut deliveries = Vec::new();
        for (subscription_id, attempts) in per_subscription {
            if let Some(consumer) = caller.consumer() {
                let owner = match self.store.get(&subscription_id).await {
                    Ok(s) => s.consumer,
                    Err(StoreError::NotFound) => None,
                    Err(e) => return Err(e.into()),
                };
                if owner.as_deref() != Some(consumer) {
                    continue;
                }
            }
            deliveries.push(Delivery {
                subscription_id,
                attempts,
            });
        }
        Ok(EventDetail {
            event: stored,
            deliveries,
        })
    }
}
