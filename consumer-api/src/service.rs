//! The service layer: what the consumer API *does*, independent of HTTP. Ownership (who may
//! see what), validation, every store access, the change notifications that follow a commit,
//! and the jobs that outlive a request all live here, so the HTTP handlers, the background
//! upkeep and any other front end (a portal) share one set of rules.
//!
//! [`Service`] is cheap to clone. Its operations are split by resource, each in its own file
//! adding methods to it: [`subscriptions`], [`tenants`], [`events`], [`deliveries`] (the
//! delivery log and dead letters) and [`replay`] (replay jobs and test pings, the jobs run
//! by [`replay_runner`]).
//!
//! Every operation that reads or changes a consumer's resources takes the [`Caller`]: a
//! consumer reaches only its own, and another consumer's resources answer
//! [`StoreError::NotFound`], exactly as if they did not exist.

pub mod deliveries;
pub mod event_types;
pub mod events;
pub mod key_uses;
pub mod portal;
pub mod replay;
pub mod replay_runner;
pub mod subscriptions;
pub mod tenants;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::Notify;

use relay_shared::{control::ControlMessage, ssrf::NetworkPolicy};

use crate::{
    control::ControlPublisher,
    error::{ApiError, FieldError},
    publisher::Publisher,
    store::{Store, StoreError, Subscription},
};

/// Who is asking: the admin (everything), a dispatcher (reads the directory and disables
/// subscriptions, over every consumer's) or one consumer (its own resources only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The admin key: everything.
    Admin,
    /// A directory key: `GET /v1/directory` and `POST /v1/subscriptions/{id}/disable` only
    /// (confined to them by the HTTP layer), over every consumer's subscriptions.
    Directory,
    /// A consumer key: that consumer's resources only.
    Consumer(String),
}

impl Caller {
    /// The consumer this caller is restricted to; `None` for the admin.
    pub fn consumer(&self) -> Option<&str> {
        match self {
            Self::Admin | Self::Directory => None,
            Self::Consumer(c) => Some(c),
        }
    }

    /// Whether the caller may see a resource owned by `owner`.
    pub fn may_see(&self, owner: Option<&str>) -> bool {
        match self {
            Self::Admin | Self::Directory => true,
            Self::Consumer(c) => owner == Some(c.as_str()),
        }
    }

    /// A consumer may only name itself where a request names a consumer.
    ///
    /// # Errors
    /// [`ApiError::NotYours`] on `field` when a consumer names another one.
    pub fn check_names_itself(&self, given: Option<&str>, field: &str) -> Result<(), ApiError> {
        match (self.consumer(), given) {
            (Some(own), Some(given)) if own != given => Err(ApiError::NotYours(FieldError::new(
                field,
                "a consumer key manages its own consumer's resources only",
            ))),
            _ => Ok(()),
        }
    }
}

/// One page of a list, under the one cursor rule of every list: `next_cursor` is always
/// present — the position of the last item returned (or examined), else the cursor the
/// request gave — and `has_more` says whether asking again right away may return more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The items, in the list's order.
    pub items: Vec<T>,
    /// Pass as `after` to continue.
    pub next_cursor: String,
    /// Whether more items follow now.
    pub has_more: bool,
}

impl<T> Page<T> {
    /// A page from `rows` read with `limit + 1`: the extra row only says that more follow.
    pub fn from_rows(
        mut rows: Vec<T>,
        limit: u32,
        after: &str,
        cursor_of: impl Fn(&T) -> String,
    ) -> Self {
        let limit = limit as usize;
        let has_more = rows.len() > limit;
        rows.truncate(limit);
        Self {
            next_cursor: rows.last().map_or_else(|| after.to_owned(), cursor_of),
            items: rows,
            has_more,
        }
    }

    /// The same page with each item converted.
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            next_cursor: self.next_cursor,
            has_more: self.has_more,
        }
    }
}

/// What a list request asks for: the items after `after` (empty: from the start), at most
/// `limit` of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// The previous page's `next_cursor`; empty for the start.
    pub after: String,
    /// At most this many items.
    pub limit: u32,
}

/// Parses a sequence cursor (`after` of the lists ordered by recording): empty is the start.
///
/// # Errors
/// A [`FieldError`] on `after`.
pub fn seq_cursor(after: &str) -> Result<i64, FieldError> {
    if after.is_empty() {
        return Ok(0);
    }
    after
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 0 && after.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| FieldError::new("after", "after must be a cursor returned as next_cursor"))
}

/// The operations of the consumer API. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Service {
    store: Store,
    control: ControlPublisher,
    publisher: Publisher,
    policy: Arc<NetworkPolicy>,
    rotation_grace: Duration,
    /// When each key's `last_used_at` was last written by this instance.
    key_uses: Arc<Mutex<key_uses::KeyUses>>,
    /// Wakes this instance's replay runner when a job is queued here.
    replays_queued: Arc<Notify>,
}

impl Service {
    /// The service over `store`, announcing changes through `control` and publishing
    /// redeliveries and operational events through `publisher`.
    pub fn new(
        store: Store,
        control: ControlPublisher,
        publisher: Publisher,
        policy: NetworkPolicy,
        rotation_grace: Duration,
    ) -> Self {
        Self {
            store,
            control,
            publisher,
            policy: Arc::new(policy),
            rotation_grace,
            key_uses: Arc::default(),
            replays_queued: Arc::default(),
        }
    }

    /// The subscription `id` if `caller` may see it.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when it does not exist or is another consumer's, or a store
    /// failure.
    pub async fn subscription(&self, caller: &Caller, id: &str) -> Result<Subscription, ApiError> {
        let subscription = self.store.get(id).await?;
        if caller.may_see(subscription.consumer.as_deref()) {
            Ok(subscription)
        } else {
            Err(StoreError::NotFound.into())
        }
    }

    /// Tells every dispatcher the subscription's current state (after a committed change).
    async fn announce(&self, subscription: &Subscription) {
        self.control
            .notify(ControlMessage::Upsert {
                subscription: subscription.directory_entry(),
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_always_has_a_cursor() {
        let page = Page::from_rows(vec![1, 2, 3], 2, "0", ToString::to_string);
        assert_eq!(
            (page.items.clone(), page.next_cursor.as_str(), page.has_more),
            (vec![1, 2], "2", true)
        );
        let page = Page::from_rows(vec![3], 2, "2", ToString::to_string);
        assert_eq!((page.next_cursor.as_str(), page.has_more), ("3", false));
        let page = Page::from_rows(Vec::<i32>::new(), 2, "3", ToString::to_string);
        assert_eq!((page.next_cursor.as_str(), page.has_more), ("3", false));
        let page = Page::from_rows(Vec::<i32>::new(), 2, "", ToString::to_string);
        assert_eq!(page.next_cursor, "");
    }

    #[test]
    fn a_consumer_sees_and_names_only_itself() {
        let acme = Caller::Consumer("acme".into());
        assert!(acme.may_see(Some("acme")));
        assert!(!acme.may_see(Some("globex")));
        assert!(!acme.may_see(None));
        assert!(Caller::Admin.may_see(None));
        assert!(acme.check_names_itself(Some("acme"), "consumer").is_ok());
        assert!(acme.check_names_itself(None, "consumer").is_ok());
        assert!(matches!(
            acme.check_names_itself(Some("globex"), "consumer"),
            Err(ApiError::NotYours(e)) if e.field == "consumer"
        ));
        assert!(
            Caller::Admin
                .check_names_itself(Some("globex"), "consumer")
                .is_ok()
        );
    }
}
