//! The subscription directory each dispatcher holds in memory: compiled filters and signing
//! keys per subscription, and an index of the filters by type segment (a trie) so that
//! matching an event costs what its matches cost, not the number of subscriptions. Kept
//! current by full snapshots from consumer-api and live `relay.control` notifications; a
//! revision number on each entry makes the order in which the two arrive irrelevant.

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock, RwLockWriteGuard,
        atomic::{AtomicBool, Ordering as Atomic},
    },
};

use relay_shared::{
    control::ControlMessage,
    endpoint::{Credentials, CustomHeaders},
    filter::TopicFilter,
    payload_filter::PayloadFilter,
    signing::Signer,
    subscription::{DirectoryEntry, Limits, Ordering},
};
use reqwest::header::HeaderValue;

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
    /// Signs with every current key its scheme uses.
    pub signer: Signer,
    /// Payload filter, evaluated after the type match; `None` takes every event of the types.
    pub payload_filter: Option<PayloadFilter>,
    /// Static headers added to every request.
    pub headers: CustomHeaders,
    /// `Authorization` made from its credentials (marked sensitive: never logged).
    pub authorization: Option<HeaderValue>,
    /// Whether it receives events.
    pub enabled: bool,
    /// Revision of the entry this was built from.
    pub revision: i64,
    /// Rate and in-flight limits, all dispatchers together.
    pub limits: Limits,
    /// Delivery order ([`super::ordered_lanes`] for `key`).
    pub ordering: Ordering,
}

impl Route {
    /// Compiles an entry.
    ///
    /// # Errors
    /// A reason when its URL, a filter, a key, a header or its credentials are unusable (it
    /// is then skipped and logged). consumer-api checked them all when they were saved.
    pub fn compile(entry: DirectoryEntry) -> Result<Self, String> {
        let url = reqwest::Url::parse(&entry.url).map_err(|e| format!("url: {e}"))?;
        let filters = entry
            .event_types
            .iter()
            .map(|f| TopicFilter::parse(f).map_err(|e| format!("filter {f:?}: {e}")))
            .collect::<Result<_, _>>()?;
        let signer = Signer::new(entry.signature_scheme, &entry.secrets, &entry.signing_keys)
            .map_err(|e| format!("signing: {e}"))?;
        let payload_filter = entry
            .filter
            .as_ref()
            .map(PayloadFilter::parse)
            .transpose()
            .map_err(|e| format!("payload filter: {e}"))?;
        let headers = CustomHeaders::parse(&entry.headers).map_err(|e| e.to_string())?;
        let authorization = entry
            .credentials
            .as_ref()
            .map(Credentials::authorization)
            .transpose()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            id: entry.id,
            url,
            consumer: entry.consumer,
            filters,
            signer,
            payload_filter,
            headers,
            authorization,
            enabled: entry.enabled,
            revision: entry.revision,
            limits: entry.limits,
            ordering: entry.ordering,
        })
    }

    /// Order of routes in a trie node: by consumer, so a consumer's routes are one range.
    fn key(&self) -> (Option<&str>, &str) {
        (self.consumer.as_deref(), &self.id)
    }
}

/// One step of a filter in the trie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step<'a> {
    Word(&'a str),
    /// `*`
    One,
    /// `#`
    Any,
}

/// A filter's steps, with consecutive `#` collapsed (`#.#` selects what `#` selects), so
/// that a run of them does not multiply the matching work.
fn steps(filter: &TopicFilter) -> Vec<Step<'_>> {
    let mut out: Vec<Step<'_>> = Vec::new();
    for segment in filter.as_str().split('.') {
        let step = match segment {
            "*" => Step::One,
            "#" => Step::Any,
            word => Step::Word(word),
        };
        if !(step == Step::Any && out.last() == Some(&Step::Any)) {
            out.push(step);
        }
    }
    out
}

/// A trie node: the routes whose filter ends here, and the ways on.
#[derive(Debug, Default)]
struct Node {
    /// Sorted by [`Route::key`].
    routes: Vec<Arc<Route>>,
    words: HashMap<Box<str>, Node>,
    one: Option<Box<Node>>,
    any: Option<Box<Node>>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.routes.is_empty() && self.words.is_empty() && self.one.is_none() && self.any.is_none()
    }

    fn insert(&mut self, path: &[Step<'_>], route: &Arc<Route>) {
        match path.split_first() {
            None => {
                if let Err(at) = self
                    .routes
                    .binary_search_by(|held| held.key().cmp(&route.key()))
                {
                    self.routes.insert(at, Arc::clone(route));
                }
            }
            Some((step, rest)) => {
                let next = match step {
                    Step::Word(word) => self.words.entry((*word).into()).or_default(),
                    Step::One => self.one.get_or_insert_default(),
                    Step::Any => self.any.get_or_insert_default(),
                };
                next.insert(rest, route);
            }
        }
    }

    /// Removes `route` at the end of `path`, and the nodes left empty on the way back.
    fn remove(&mut self, path: &[Step<'_>], route: &Route) {
        match path.split_first() {
            None => {
                if let Ok(at) = self
                    .routes
                    .binary_search_by(|held| held.key().cmp(&route.key()))
                {
                    self.routes.remove(at);
                }
            }
            Some((Step::Word(word), rest)) => {
                if let Some(next) = self.words.get_mut(*word) {
                    next.remove(rest, route);
                    if next.is_empty() {
                        self.words.remove(*word);
                    }
                }
            }
            Some((Step::One, rest)) => prune(&mut self.one, rest, route),
            Some((Step::Any, rest)) => prune(&mut self.any, rest, route),
        }
    }
}

fn prune(slot: &mut Option<Box<Node>>, rest: &[Step<'_>], route: &Route) {
    if let Some(next) = slot.as_mut() {
        next.remove(rest, route);
        if next.is_empty() {
            *slot = None;
        }
    }
}

/// One matching walk over the trie for an event type.
struct Walk<'a, 'r> {
    words: &'a [&'a str],
    consumer: Option<&'a str>,
    /// For each `#` entered: the first position from which it has been walked. Skips of
    /// earlier `#`s reach the same `#` at several positions; each is walked once.
    seen: Vec<(*const Node, usize)>,
    found: &'r mut Vec<Arc<Route>>,
}

impl Walk<'_, '_> {
    fn visit(&mut self, node: &Node, at: usize) {
        if at == self.words.len() {
            self.take(node);
        }
        if let Some(word) = self.words.get(at) {
            if let Some(next) = node.words.get(*word) {
                self.visit(next, at + 1);
            }
            if let Some(next) = &node.one {
                self.visit(next, at + 1);
            }
        }
        if let Some(next) = &node.any {
            // Entering a `#` at `at` walks on from every position from `at` to the end; a
            // later entry into the same `#` need only walk the positions not yet walked.
            let ptr = std::ptr::from_ref::<Node>(next);
            let end = match self.seen.iter_mut().find(|(p, _)| *p == ptr) {
                Some((_, from)) if *from <= at => return,
                Some((_, from)) => std::mem::replace(from, at),
                None => {
                    self.seen.push((ptr, at));
                    self.words.len() + 1
                }
            };
            for skip in at..end {
                self.visit(next, skip);
            }
        }
    }

    fn take(&mut self, node: &Node) {
        match self.consumer {
            None => self.found.extend(node.routes.iter().cloned()),
            Some(consumer) => {
                let wanted = Some(consumer);
                let from = node
                    .routes
                    .partition_point(|r| r.consumer.as_deref() < wanted);
                let to = node
                    .routes
                    .partition_point(|r| r.consumer.as_deref() <= wanted);
                self.found.extend(node.routes[from..to].iter().cloned());
            }
        }
    }
}

/// Every enabled route, by id and by its filters' segments.
#[derive(Debug, Default)]
struct Table {
    routes: HashMap<String, Arc<Route>>,
    trie: Node,
    /// How many routes have `ordering: key` (none: the worker skips taking lane tickets).
    ordered: usize,
}

impl Table {
    fn with_capacity(n: usize) -> Self {
        Self {
            routes: HashMap::with_capacity(n),
            trie: Node::default(),
            ordered: 0,
        }
    }

    fn put(&mut self, route: Route) {
        let route = Arc::new(route);
        if let Some(old) = self.routes.insert(route.id.clone(), Arc::clone(&route)) {
            self.unindex(&old);
        }
        if route.ordering == Ordering::Key {
            self.ordered += 1;
        }
        if route.enabled {
            for filter in &route.filters {
                self.trie.insert(&steps(filter), &route);
            }
        }
    }

    fn delete(&mut self, id: &str) {
        if let Some(old) = self.routes.remove(id) {
            self.unindex(&old);
        }
    }

    fn unindex(&mut self, route: &Route) {
        if route.ordering == Ordering::Key {
            self.ordered -= 1;
        }
        if route.enabled {
            for filter in &route.filters {
                self.trie.remove(&steps(filter), route);
            }
        }
    }

    fn matching(&self, event_type: &str, consumer: Option<&str>) -> Vec<Arc<Route>> {
        let words: Vec<&str> = event_type.split('.').collect();
        let mut found = Vec::new();
        Walk {
            words: &words,
            consumer,
            seen: Vec::new(),
            found: &mut found,
        }
        .visit(&self.trie, 0);
        // A route whose several filters match (or one filter by several skips) counts once.
        if found.len() > 1 {
            found.sort_unstable_by_key(|r| Arc::as_ptr(r) as usize);
            found.dedup_by(|a, b| Arc::ptr_eq(a, b));
        }
        found
    }
}

#[derive(Debug, Default)]
struct State {
    table: Table,
    /// Notifications seen while a snapshot is being fetched, replayed on top of it.
    replay: Option<Vec<ControlMessage>>,
}

/// The in-memory directory, shared by every delivery task.
#[derive(Debug, Default)]
pub struct Directory {
    state: RwLock<State>,
    /// Whether a loaded subscription has `ordering: key`: read for every event received, so
    /// an atomic beside the lock rather than a read of it.
    ordered: AtomicBool,
}

impl Directory {
    /// The enabled subscriptions an event of `event_type` (for `consumer`, if named) goes to,
    /// each once.
    pub fn matching(&self, event_type: &str, consumer: Option<&str>) -> Vec<Arc<Route>> {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .table
            .matching(event_type, consumer)
    }

    /// One subscription by id, enabled or not.
    pub fn get(&self, subscription_id: &str) -> Option<Arc<Route>> {
        let state = self
            .state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.table.routes.get(subscription_id).cloned()
    }

    /// Whether any subscription loaded has `ordering: key`.
    pub fn has_ordered(&self) -> bool {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .table
            .ordered
            > 0
    }

    /// How many subscriptions are loaded.
    pub fn len(&self) -> usize {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .table
            .routes
            .len()
    }

    /// Whether no subscription is loaded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies a live notification.
    pub fn apply(&self, message: ControlMessage) {
        let mut state = self.write();
        if let Some(replay) = state.replay.as_mut() {
            replay.push(message.clone());
        }
        apply_to(&mut state.table, message);
        self.ordered.store(state.table.ordered > 0, Atomic::Release);
    }

    /// Starts recording notifications, to replay them over the snapshot about to be fetched.
    pub fn begin_snapshot(&self) {
        self.write().replay = Some(Vec::new());
    }

    /// Replaces the directory with a fetched snapshot, then replays the notifications that
    /// arrived while it was fetched (their revisions decide which state wins). The new table
    /// is built before the lock is taken, so deliveries keep matching meanwhile.
    pub fn finish_snapshot(&self, entries: Vec<DirectoryEntry>) {
        let mut table = Table::with_capacity(entries.len());
        for entry in entries {
            insert(&mut table, entry);
        }
        let mut state = self.write();
        for message in state.replay.take().unwrap_or_default() {
            apply_to(&mut table, message);
        }
        self.ordered.store(table.ordered > 0, Atomic::Release);
        state.table = table;
    }

    /// Stops recording after a failed fetch.
    pub fn abort_snapshot(&self) {
        self.write().replay = None;
    }
}

fn apply_to(table: &mut Table, message: ControlMessage) {
    match message {
        ControlMessage::Upsert { subscription } => {
            let newer = table
                .routes
                .get(&subscription.id)
                .is_none_or(|held| held.revision < subscription.revision);
            if newer {
                insert(table, subscription);
            }
        }
        ControlMessage::Delete { id } => table.delete(&id),
        // The event-type catalogue's, applied by `catalogue::apply`; the dispatchers' own,
        // applied by `pacing`.
        ControlMessage::EventType { .. }
        | ControlMessage::EventTypeDeleted { .. }
        | ControlMessage::Dispatcher { .. }
        | ControlMessage::SlowDown { .. }
        | ControlMessage::Resync => {}
    }
}

fn insert(table: &mut Table, entry: DirectoryEntry) {
    let id = entry.id.clone();
    match Route::compile(entry) {
        Ok(route) => table.put(route),
        Err(reason) => {
            tracing::error!(subscription_id = %id, reason, "subscription skipped: cannot be compiled");
            table.delete(&id);
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
            ..DirectoryEntry::default()
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
    fn an_entry_with_a_bad_key_filter_header_or_credential_is_skipped() {
        let d = Directory::default();
        let mut bad_secret = entry("a", &["x"], None, 1);
        bad_secret.secrets = vec!["nope".into()];
        let mut no_signing_key = entry("b", &["x"], None, 1);
        no_signing_key.signature_scheme = relay_shared::signing::SignatureScheme::Both;
        let mut bad_filter = entry("c", &["x"], None, 1);
        bad_filter.filter = Some(serde_json::json!({"data.total": {"$regex": "x"}}));
        let mut bad_header = entry("d", &["x"], None, 1);
        bad_header.headers.insert("Host".into(), "x".into());
        let mut bad_credentials = entry("e", &["x"], None, 1);
        bad_credentials.credentials = Some(Credentials::Bearer {
            token: "has space".into(),
        });
        for bad in [
            bad_secret,
            no_signing_key,
            bad_filter,
            bad_header,
            bad_credentials,
        ] {
            d.apply(ControlMessage::Upsert { subscription: bad });
        }
        assert!(d.is_empty());
        let mut good = entry("f", &["x"], None, 1);
        good.signature_scheme = relay_shared::signing::SignatureScheme::Both;
        good.signing_keys = vec![relay_shared::signing::generate_asymmetric_key()];
        good.filter = Some(serde_json::json!({"data.total": {"$gt": 1}}));
        good.headers.insert("X-Tenant".into(), "acme".into());
        good.credentials = Some(Credentials::Bearer {
            token: "t0k".into(),
        });
        d.apply(ControlMessage::Upsert { subscription: good });
        let route = d.get("f").unwrap();
        assert!(route.payload_filter.is_some() && !route.headers.is_empty());
        assert!(
            route
                .authorization
                .as_ref()
                .is_some_and(HeaderValue::is_sensitive)
        );
    }

    /// The scan the index replaced: every route, every filter.
    fn scan(table: &Table, event_type: &str, consumer: Option<&str>) -> Vec<String> {
        let segments: Vec<&str> = event_type.split('.').collect();
        let mut ids: Vec<String> = table
            .routes
            .values()
            .filter(|r| {
                r.enabled
                    && consumer.is_none_or(|c| r.consumer.as_deref() == Some(c))
                    && r.filters.iter().any(|f| f.matches(&segments))
            })
            .map(|r| r.id.clone())
            .collect();
        ids.sort();
        ids
    }

    fn pick<'a>(rng: &mut fastrand::Rng, from: &[&'a str]) -> &'a str {
        from[rng.usize(..from.len())]
    }

    fn random_type(rng: &mut fastrand::Rng) -> String {
        (0..rng.usize(1..=5))
            .map(|_| pick(rng, &["a", "b", "c"]))
            .collect::<Vec<_>>()
            .join(".")
    }

    fn random_filter(rng: &mut fastrand::Rng) -> String {
        (0..rng.usize(1..=5))
            .map(|_| pick(rng, &["a", "b", "c", "*", "#", "#"]))
            .collect::<Vec<_>>()
            .join(".")
    }

    fn random_entry(rng: &mut fastrand::Rng, id: usize, revision: i64) -> DirectoryEntry {
        let filters: Vec<String> = (0..rng.usize(1..=3)).map(|_| random_filter(rng)).collect();
        let refs: Vec<&str> = filters.iter().map(String::as_str).collect();
        let consumer = [None, Some("x"), Some("y")][rng.usize(..3)];
        let mut e = entry(&format!("s{id}"), &refs, consumer, revision);
        e.enabled = rng.u8(..10) > 0;
        e
    }

    #[test]
    fn the_index_selects_exactly_what_a_scan_selects() {
        for seed in 0..24 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut table = Table::default();
            let mut revision = 0;
            for _ in 0..300 {
                revision += 1;
                let id = rng.usize(..40);
                if rng.u8(..5) == 0 {
                    table.delete(&format!("s{id}"));
                } else {
                    apply_to(
                        &mut table,
                        ControlMessage::Upsert {
                            subscription: random_entry(&mut rng, id, revision),
                        },
                    );
                }
                for _ in 0..4 {
                    let event_type = random_type(&mut rng);
                    let consumer = [None, Some("x"), Some("y"), Some("z")][rng.usize(..4)];
                    assert_eq!(
                        ids(table.matching(&event_type, consumer)),
                        scan(&table, &event_type, consumer),
                        "seed {seed}: {event_type} for {consumer:?}"
                    );
                }
            }
            // Deleting everything leaves an empty trie behind: nothing dangles.
            let held: Vec<String> = table.routes.keys().cloned().collect();
            for id in held {
                table.delete(&id);
            }
            assert!(table.trie.is_empty(), "seed {seed}");
        }
    }

    #[test]
    fn wildcards_follow_topic_semantics_in_the_index() {
        let d = Directory::default();
        d.begin_snapshot();
        d.finish_snapshot(vec![
            entry("exact", &["order.created"], None, 1),
            entry("one", &["order.*"], None, 1),
            entry("tail", &["order.#"], None, 1),
            entry("head", &["#.created"], None, 1),
            entry("runs", &["#.#.#"], None, 1),
            entry("mid", &["a.#.z"], None, 1),
            entry("twice", &["order.*", "order.created", "#"], None, 1),
        ]);
        assert_eq!(
            ids(d.matching("order.created", None)),
            ["exact", "head", "one", "runs", "tail", "twice"]
        );
        assert_eq!(ids(d.matching("order", None)), ["runs", "tail", "twice"]);
        assert_eq!(
            ids(d.matching("order.created.v2", None)),
            ["runs", "tail", "twice"]
        );
        assert_eq!(ids(d.matching("a.z", None)), ["mid", "runs", "twice"]);
        assert_eq!(ids(d.matching("a.b.c.z", None)), ["mid", "runs", "twice"]);
    }

    #[test]
    fn a_disabled_or_replaced_route_leaves_the_index() {
        let d = Directory::default();
        d.apply(ControlMessage::Upsert {
            subscription: entry("a", &["x.*"], Some("acme"), 1),
        });
        assert_eq!(ids(d.matching("x.y", Some("acme"))), ["a"]);
        let mut disabled = entry("a", &["x.*"], Some("acme"), 2);
        disabled.enabled = false;
        d.apply(ControlMessage::Upsert {
            subscription: disabled,
        });
        assert!(d.matching("x.y", None).is_empty());
        assert!(d.get("a").is_some_and(|r| !r.enabled));
        d.apply(ControlMessage::Upsert {
            subscription: entry("a", &["z"], Some("acme"), 3),
        });
        assert!(d.matching("x.y", None).is_empty());
        assert_eq!(ids(d.matching("z", None)), ["a"]);
        assert!(d.matching("z", Some("globex")).is_empty());
    }

    #[test]
    fn a_pathological_filter_costs_polynomial_time() {
        let d = Directory::default();
        let filter = vec!["#.a"; 40].join(".");
        d.apply(ControlMessage::Upsert {
            subscription: entry("p", &[&filter], None, 1),
        });
        let event_type = vec!["a"; 120].join(".");
        assert_eq!(ids(d.matching(&event_type, None)), ["p"]);
        assert!(d.matching(&format!("{event_type}.b"), None).is_empty());
    }
}
