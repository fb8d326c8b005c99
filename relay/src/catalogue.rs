//! The event-type catalogue as ingest and dispatchers hold it: every type's compiled schema,
//! loaded from consumer-api (`GET /v1/event-types`) at start, after every broker reconnect and
//! every refresh interval, and kept current by `relay.control` notifications, so a schema
//! change applies within a second everywhere.
//!
//! Both processes check an event's `data` with [`check`]: ingest for HTTP events (422 on a
//! violation), dispatchers for events producers published straight over AMQP (parked in
//! `relay.invalid` with the reason).

use std::{sync::Arc, time::Duration};

use relay_shared::{
    control::ControlMessage,
    envelope::Envelope,
    event_schema::{SchemaCache, TypeDefinition, Violation},
    ops::Readiness,
    shutdown::Shutdown,
};
use serde::Deserialize;
use tokio::sync::Notify;

use crate::event_data::EventData;

/// Readiness condition name for the catalogue.
pub const READY_CATALOGUE: &str = "catalogue";

/// Why the catalogue could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    /// consumer-api could not be reached or answered badly.
    #[error("event-type catalogue request failed: {0}")]
    Http(#[from] reqwest::Error),
    /// consumer-api answered with an error status.
    #[error("consumer-api answered HTTP {0} for the event-type catalogue")]
    Status(u16),
}

/// One page of `GET /v1/event-types`, as far as the catalogue needs it.
#[derive(Debug, Deserialize)]
struct Page {
    data: Vec<TypeDefinition>,
    #[serde(default)]
    next_cursor: Option<String>,
    #[serde(default)]
    has_more: bool,
    /// The catalogue's revision when the page was read.
    catalogue_revision: i64,
}

/// What an event's type asks of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// Accepted; `deprecated` when its type is being phased out.
    Valid {
        /// The type is deprecated (the answer says so).
        deprecated: bool,
    },
    /// `data` does not satisfy the type's schema.
    Invalid(Violation),
}

/// Checks an event's `data` against its type's schema, if the catalogue has one. A type the
/// catalogue does not know is accepted as it is.
pub fn check(cache: &SchemaCache, envelope: &Envelope) -> Checked {
    check_data(cache, &envelope.event_type, &EventData::new(envelope))
}

/// [`check`], with `data` parsed (only when the type has a schema) into `data`, where the
/// caller's payload filters find it again.
pub fn check_data(cache: &SchemaCache, event_type: &str, data: &EventData<'_>) -> Checked {
    let Some(rules) = cache.get(event_type) else {
        return Checked::Valid { deprecated: false };
    };
    if let Some(schema) = &rules.schema
        && let Err(violation) = schema.check(data.value())
    {
        return Checked::Invalid(violation);
    }
    Checked::Valid {
        deprecated: rules.deprecated,
    }
}

/// Applies a catalogue change from `relay.control`; directory changes are not its business.
pub fn apply(cache: &SchemaCache, message: &ControlMessage) {
    match message {
        ControlMessage::EventType { event_type } => {
            if let Err(e) = cache.apply(event_type) {
                tracing::error!(event_type = %event_type.name, error = %e, "event type skipped: its schema does not compile");
            }
        }
        ControlMessage::EventTypeDeleted { name, revision } => cache.remove(name, *revision),
        ControlMessage::Upsert { .. }
        | ControlMessage::Delete { .. }
        | ControlMessage::Dispatcher { .. }
        | ControlMessage::SlowDown { .. }
        | ControlMessage::Resync => {}
    }
}

/// Loads catalogue snapshots from consumer-api.
#[derive(Debug, Clone)]
pub struct CatalogueClient {
    http: reqwest::Client,
    url: String,
    key: String,
}

impl CatalogueClient {
    /// A loader for consumer-api at `base_url`, presenting `key`.
    ///
    /// # Errors
    /// The HTTP client could not be built.
    pub fn new(base_url: &str, key: &str) -> reqwest::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            url: format!("{}/v1/event-types", base_url.trim_end_matches('/')),
            key: key.to_owned(),
        })
    }

    /// Reads every page and installs the result; returns how many types it holds.
    ///
    /// # Errors
    /// A [`CatalogueError`]; the cache is left as it was.
    pub async fn load_into(&self, cache: &SchemaCache) -> Result<usize, CatalogueError> {
        let mut definitions = Vec::new();
        let mut as_of = None;
        let mut after: Option<String> = None;
        loop {
            let mut request = self
                .http
                .get(&self.url)
                .bearer_auth(&self.key)
                .query(&[("limit", "500")]);
            if let Some(cursor) = &after {
                request = request.query(&[("after", cursor)]);
            }
            let response = request.send().await?;
            if !response.status().is_success() {
                return Err(CatalogueError::Status(response.status().as_u16()));
            }
            let page: Page = response.json().await?;
            // Every change up to the first page's revision is in the snapshot.
            as_of.get_or_insert(page.catalogue_revision);
            definitions.extend(page.data);
            match page.next_cursor {
                Some(cursor) if page.has_more => after = Some(cursor),
                _ => break,
            }
        }
        for (name, e) in cache.replace_all(&definitions, as_of.unwrap_or_default()) {
            tracing::error!(event_type = %name, error = %e, "event type skipped: its schema does not compile");
        }
        Ok(cache.len())
    }
}

/// Reloads the catalogue periodically and whenever `reload` is notified (after each broker
/// reconnect, since changes announced meanwhile were missed); the process is not ready until
/// the first load succeeded, so no event skips a schema for lack of one.
pub async fn refresh_loop(
    client: CatalogueClient,
    cache: Arc<SchemaCache>,
    refresh: Duration,
    reload: Arc<Notify>,
    readiness: Readiness,
    mut shutdown: Shutdown,
) {
    readiness.not_ready(READY_CATALOGUE, "not loaded yet");
    let mut loaded_once = false;
    loop {
        let wait = match client.load_into(&cache).await {
            Ok(n) => {
                if !loaded_once {
                    tracing::info!(event_types = n, "event-type catalogue loaded");
                    readiness.ready(READY_CATALOGUE);
                    loaded_once = true;
                }
                refresh
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot load the event-type catalogue; retrying");
                if !loaded_once {
                    readiness.not_ready(READY_CATALOGUE, e.to_string());
                }
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = reload.notified() => {}
            () = shutdown.wait() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use relay_shared::envelope::{IncomingEvent, parse_json};
    use serde_json::json;
    use time::OffsetDateTime;

    use super::*;

    fn envelope(event_type: &str, data: serde_json::Value) -> Envelope {
        let body = json!({"type": event_type, "data": data}).to_string();
        parse_json::<IncomingEvent>(body.as_bytes())
            .unwrap()
            .normalise(OffsetDateTime::now_utc(), || String::from("evt_1"))
            .unwrap()
    }

    #[test]
    fn events_are_checked_against_their_types_schema_only() {
        let cache = SchemaCache::default();
        let schema = json!({"type": "object", "required": ["total"],
                            "properties": {"total": {"type": "number", "minimum": 0}}});
        apply(
            &cache,
            &ControlMessage::EventType {
                event_type: TypeDefinition {
                    name: "order.created".into(),
                    revision: 1,
                    schema: Some(schema),
                    deprecated: false,
                },
            },
        );
        apply(
            &cache,
            &ControlMessage::EventType {
                event_type: TypeDefinition {
                    name: "order.legacy".into(),
                    revision: 2,
                    schema: None,
                    deprecated: true,
                },
            },
        );
        let ok = Checked::Valid { deprecated: false };
        assert_eq!(
            check(&cache, &envelope("order.created", json!({"total": 3}))),
            ok
        );
        assert_eq!(check(&cache, &envelope("unknown.type", json!(1))), ok);
        assert_eq!(
            check(&cache, &envelope("order.legacy", json!(1))),
            Checked::Valid { deprecated: true }
        );
        let Checked::Invalid(v) = check(&cache, &envelope("order.created", json!({"total": -3})))
        else {
            panic!("a negative total passed");
        };
        assert_eq!(
            (v.pointer.as_str(), v.rule.as_str()),
            ("/data/total", "minimum")
        );
        // Absent data is null, which the schema refuses.
        assert!(matches!(
            check(&cache, &envelope("order.created", serde_json::Value::Null)),
            Checked::Invalid(_)
        ));
        apply(
            &cache,
            &ControlMessage::EventTypeDeleted {
                name: "order.created".into(),
                revision: 3,
            },
        );
        assert_eq!(
            check(&cache, &envelope("order.created", json!({"total": -3}))),
            ok
        );
    }
}
