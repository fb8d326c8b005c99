//! The subscription directory each dispatcher holds in memory: compiled filters and signing
//! keys per subscription, matched against every event. Kept current by full snapshots from
//! consumer-api and live `relay.control` notifications; a revision number on each entry
//! makes the order in which the two arrive irrelevant.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock, RwLockWriteGuard},
};

use relay_shared::{
    control::ControlMessage, filter::TopicFilter, signing::SigningKey, subscription::DirectoryEntry,
};

/// One subscription, ready to match and sign with.
#[derive(Debug)]
pub struct Route {
    /// `sub_…`
    pub id: String,
    /// Endpoint.
    pub url: reqwest::Url,
    /// Owner, for consumer-targeted events.
    pub consumer: Option<String>,
    /// Compiled topic filters.
    pub filters: Vec<TopicFilter>,
    /// Signing keys, one per current secret.
    pub keys: Vec<SigningKey>,
    /// Whether it receives events.
    pub enabled: bool,
    /// Revision of the entry this was built from.
    pub revision: i64,
}

impl Route {
    /// Compiles an entry.
    ///
    /// # Errors
    /// A reason when its URL, a filter or a secret is unusable (it is then skipped and logged).
    pub fn compile(entry: DirectoryEntry) -> Result<Self, String> {
        let url = reqwest::Url::parse(&entry.url).map_err(|e| format!("url: {e}"))?;
        let filters = entry
            .event_types
            .iter()
            .map(|f| TopicFilter::parse(f).map_err(|e| format!("filter {f:?}: {e}")))
            .collect::<Result<_, _>>()?;
        let keys = entry
            .secrets
            .iter()
            .map(|s| SigningKey::parse(s).map_err(|e| format!("secret: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(String::from("no signing secret"));
        }
        Ok(Self {
            id: entry.id,
            url,
            consumer: entry.consumer,
            filters,
            keys,
            enabled: entry.enabled,
            revision: entry.revision,
        })
    }

    fn accepts(&self, type_segments: &[&str], consumer: Option<&str>) -> bool {
        self.enabled
            && consumer.is_none_or(|c| self.consumer.as_deref() == Some(c))
            && self.filters.iter().any(|f| f.matches(type_segments))
    }
}

#[derive(Debug, Default)]
struct State {
    routes: HashMap<String, Arc<Route>>,
    /// Notifications seen while a snapshot is being fetched, replayed on top of it.
    replay: Option<Vec<ControlMessage>>,
}

/// The in-memory directory, shared by every delivery task.
#[derive(Debug, Default)]
pub struct Directory(RwLock<State>);

impl Directory {
    /// The enabled subscriptions an event of `event_type` (for `consumer`, if named) goes to.
    pub fn matching(&self, event_type: &str, consumer: Option<&str>) -> Vec<Arc<Route>> {
        let segments: Vec<&str> = event_type.split('.').collect();
        let state = self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state
            .routes
            .values()
            .filter(|r| r.accepts(&segments, consumer))
            .cloned()
            .collect()
    }

    /// One subscription by id, enabled or not.
    pub fn get(&self, subscription_id: &str) -> Option<Arc<Route>> {
        let state = self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.routes.get(subscription_id).cloned()
    }

    /// How many subscriptions are loaded.
    pub fn len(&self) -> usize {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .routes
            .len()
    }

    /// Whether no subscription is loaded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies a live notification.
    pub fn apply(&self, message: ControlMessage) {
        let mut state = self.write();
        if let Some(replay) = state.replay.as_mut() {
            replay.push(message.clone());
        }
        apply_to(&mut state.routes, message);
    }

    /// Starts recording notifications, to replay them over the snapshot about to be fetched.
    pub fn begin_snapshot(&self) {
        self.write().replay = Some(Vec::new());
    }

    /// Replaces the directory with a fetched snapshot, then replays the notifications that
    /// arrived while it was fetched (their revisions decide which state wins).
    pub fn finish_snapshot(&self, entries: Vec<DirectoryEntry>) {
        let mut routes = HashMap::with_capacity(entries.len());
        for entry in entries {
            insert(&mut routes, entry);
        }
        let mut state = self.write();
        for message in state.replay.take().unwrap_or_default() {
            apply_to(&mut routes, message);
        }
        state.routes = routes;
    }

    /// Stops recording after a failed fetch.
    pub fn abort_snapshot(&self) {
        self.write().replay = None;
    }
}

fn apply_to(routes: &mut HashMap<String, Arc<Route>>, message: ControlMessage) {
    match message {
        ControlMessage::Upsert { subscription } => {
            let newer = routes
                .get(&subscription.id)
                .is_none_or(|held| held.revision < subscription.revision);
            if newer {
                insert(routes, subscription);
            }
        }
        ControlMessage::Delete { id } => {
            routes.remove(&id);
        }
        // The event-type catalogue's, applied by `catalogue::apply`.
        ControlMessage::EventType { .. } | ControlMessage::EventTypeDeleted { .. } => {}
    }
}

fn insert(routes: &mut HashMap<String, Arc<Route>>, entry: DirectoryEntry) {
    let id = entry.id.clone();
    match Route::compile(entry) {
        Ok(route) => {
            routes.insert(id, Arc::new(route));
        }
        Err(reason) => {
            tracing::error!(subscription_id = %id, reason, "subscription skipped: cannot be compiled");
            routes.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

    fn entry(id: &str, filters: &[&str], consumer: Option<&str>, revision: i64) -> DirectoryEntry {
        DirectoryEntry {
            id: id.into(),
            url: "http://127.0.0.1:1/hook".into(),
            event_types: filters.iter().map(|f| (*f).to_owned()).collect(),
            consumer: consumer.map(str::to_owned),
            enabled: true,
            secrets: vec![SECRET.into()],
            revision,
        }
    }

    fn ids(routes: Vec<Arc<Route>>) -> Vec<String> {
        let mut ids: Vec<String> = routes.iter().map(|r| r.id.clone()).collect();
        ids.sort();
        ids
    }

    #[test]
    fn matches_by_filter_consumer_and_enabled() {
        let d = Directory::default();
        d.begin_snapshot();
        let mut disabled = entry("d", &["#"], None, 1);
        disabled.enabled = false;
        d.finish_snapshot(vec![
            entry("a", &["order.*"], Some("acme"), 1),
            entry("b", &["order.created", "invoice.#"], Some("globex"), 1),
            entry("c", &["invoice.paid"], None, 1),
            disabled,
        ]);
        assert_eq!(ids(d.matching("order.created", None)), ["a", "b"]);
        assert_eq!(ids(d.matching("order.created", Some("acme"))), ["a"]);
        assert_eq!(ids(d.matching("invoice.paid", None)), ["b", "c"]);
        assert!(d.matching("user.created", None).is_empty());
    }

    #[test]
    fn stale_notifications_never_win_and_replay_covers_the_fetch_window() {
        let d = Directory::default();
        d.apply(ControlMessage::Upsert {
            subscription: entry("a", &["x"], None, 2),
        });
        d.apply(ControlMessage::Upsert {
            subscription: entry("a", &["y"], None, 1),
        });
        assert_eq!(d.matching("x", None).len(), 1);

        // A subscription created and another deleted while the snapshot was in flight.
        d.begin_snapshot();
        d.apply(ControlMessage::Upsert {
            subscription: entry("new", &["x"], None, 1),
        });
        d.apply(ControlMessage::Delete { id: "old".into() });
        d.finish_snapshot(vec![
            entry("a", &["x"], None, 2),
            entry("old", &["x"], None, 1),
        ]);
        assert_eq!(ids(d.matching("x", None)), ["a", "new"]);
    }

    #[test]
    fn an_entry_with_a_bad_secret_is_skipped() {
        let d = Directory::default();
        let mut bad = entry("a", &["x"], None, 1);
        bad.secrets = vec!["nope".into()];
        d.apply(ControlMessage::Upsert { subscription: bad });
        assert!(d.is_empty());
    }
}
