//! What the consumer portal reads and keeps beyond the API's records: portal sessions (a
//! one-time link that becomes a browser session), the delivery log searched across a
//! consumer's subscriptions (newest first), per-subscription delivery figures over a recent
//! window, and the event types recently recorded for a consumer.

use std::collections::BTreeMap;

use sqlx::{Row, any::AnyRow};

use super::{
    Store, StoreError,
    records::{ATTEMPT_COLUMNS, StoredAttempt, attempt_from_row},
};

/// A portal session as stored: a link until it is opened, a browser session after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortalSession {
    /// `ps_<ULID>`.
    pub id: String,
    /// The consumer it shows.
    pub consumer_id: String,
    /// The link can be opened until then (Unix milliseconds).
    pub link_expires_ms: i64,
    /// How long the browser session lasts once the link is opened, milliseconds.
    pub session_ttl_ms: i64,
    /// The browser session ends then (Unix milliseconds), once opened.
    pub session_expires_ms: Option<i64>,
    /// The look chosen when the link was minted (JSON), if any.
    pub theme: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// When the link was opened, RFC 3339.
    pub opened_at: Option<String>,
    /// When it was revoked, RFC 3339.
    pub revoked_at: Option<String>,
}

/// A link to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPortalSession {
    /// `ps_<ULID>`.
    pub id: String,
    /// The consumer it shows.
    pub consumer_id: String,
    /// Hex SHA-256 of the link token.
    pub link_hash: String,
    /// The link can be opened until then (Unix milliseconds).
    pub link_expires_ms: i64,
    /// How long the browser session lasts once opened, milliseconds.
    pub session_ttl_ms: i64,
    /// The look (JSON), if any.
    pub theme: Option<String>,
    /// RFC 3339.
    pub created_at: String,
}

const SESSION_COLUMNS: &str = "p.id, p.consumer_id, p.link_expires_ms, p.session_ttl_ms, \
    p.session_expires_ms, p.theme, p.created_at, p.opened_at, p.revoked_at";

fn session_from_row(row: &AnyRow) -> Result<PortalSession, StoreError> {
    Ok(PortalSession {
        id: row.try_get("id")?,
        consumer_id: row.try_get("consumer_id")?,
        link_expires_ms: row.try_get("link_expires_ms")?,
        session_ttl_ms: row.try_get("session_ttl_ms")?,
        session_expires_ms: row.try_get("session_expires_ms")?,
        theme: row.try_get("theme")?,
        created_at: row.try_get("created_at")?,
        opened_at: row.try_get("opened_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

/// Which attempts a delivery-log search returns: one consumer's, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttemptSearch {
    /// Only attempts for this consumer's subscriptions.
    pub consumer: String,
    /// Only this subscription's.
    pub subscription_id: Option<String>,
    /// Only this event's.
    pub event_id: Option<String>,
    /// Only events of this type.
    pub event_type: Option<String>,
    /// Only these outcomes (their stored names); all when empty.
    pub outcomes: Vec<String>,
    /// Only attempts at or after this time (Unix milliseconds).
    pub since_ms: Option<i64>,
    /// Only attempts before this time (Unix milliseconds).
    pub until_ms: Option<i64>,
    /// Only attempts recorded before this sequence number (the cursor, newest first).
    pub before: Option<i64>,
    /// At most this many.
    pub limit: u32,
}

/// An attempt with the type of its event (absent when the event is not recorded, as for a
/// test ping) and the owner of its subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedAttempt {
    /// The attempt.
    pub attempt: StoredAttempt,
    /// The event's type, when the event is recorded.
    pub event_type: Option<String>,
    /// The subscription's consumer.
    pub consumer: Option<String>,
}

fn logged_from_row(row: &AnyRow) -> Result<LoggedAttempt, StoreError> {
    Ok(LoggedAttempt {
        attempt: attempt_from_row(row)?,
        event_type: row.try_get("event_type")?,
        consumer: row.try_get("consumer")?,
    })
}

/// Delivery figures of one subscription over a recent window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryStats {
    /// Attempts per outcome (stored names).
    pub outcomes: BTreeMap<String, i64>,
    /// The outcome of the latest attempt in the window.
    pub last_outcome: Option<String>,
    /// Failing without a success since then (Unix milliseconds).
    pub failing_since_ms: Option<i64>,
}

/// An event type recently recorded for a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenType {
    /// The type.
    pub event_type: String,
    /// Events of this type among those examined.
    pub count: i64,
    /// The latest event of this type naming the consumer or none (sequence number).
    pub last_seq: i64,
    /// The latest event of this type naming the consumer (sequence number).
    pub last_own_seq: Option<i64>,
}

/// Appends `clause` with the next placeholder number(s) substituted for `{}`.
fn push(sql: &mut String, next: &mut usize, clause: &str) {
    sql.push_str(&clause.replacen("{}", &format!("${next}"), 1));
    *next += 1;
}

impl Store {
    /// Stores a new portal link.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn create_portal_session(&self, new: &NewPortalSession) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO portal_sessions (id, consumer_id, link_hash, link_expires_ms, \
                session_ttl_ms, theme, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&new.id)
        .bind(&new.consumer_id)
        .bind(&new.link_hash)
        .bind(new.link_expires_ms)
        .bind(new.session_ttl_ms)
        .bind(&new.theme)
        .bind(&new.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Opens the link whose token hashes to `link_hash`, once: the session then answers to
    /// `session_hash` until `now_ms` plus its TTL. `None` when the link is unknown, used,
    /// revoked or expired (one statement, so two browsers racing for a link cannot both win).
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn open_portal_session(
        &self,
        link_hash: &str,
        session_hash: &str,
        now_ms: i64,
        now: &str,
    ) -> Result<Option<PortalSession>, StoreError> {
        let row = sqlx::query(
            "UPDATE portal_sessions SET session_hash = $2, \
                session_expires_ms = $3 + session_ttl_ms, opened_at = $4 \
             WHERE link_hash = $1 AND opened_at IS NULL AND revoked_at IS NULL \
                AND link_expires_ms > $3 \
             RETURNING id, consumer_id, link_expires_ms, session_ttl_ms, session_expires_ms, \
                theme, created_at, opened_at, revoked_at",
        )
        .bind(link_hash)
        .bind(session_hash)
        .bind(now_ms)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(session_from_row).transpose()
    }

    /// The portal session (or link) whose link token hashes to `link_hash`.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn portal_session_by_link(
        &self,
        link_hash: &str,
    ) -> Result<Option<PortalSession>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM portal_sessions p WHERE p.link_hash = $1"
        ))
        .bind(link_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(session_from_row).transpose()
    }

    /// The opened session whose cookie token hashes to `session_hash`, if its consumer
    /// still exists (deleting a consumer ends its sessions).
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn portal_session(
        &self,
        session_hash: &str,
    ) -> Result<Option<PortalSession>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM portal_sessions p \
             JOIN consumers c ON c.id = p.consumer_id WHERE p.session_hash = $1"
        ))
        .bind(session_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(session_from_row).transpose()
    }

    /// Revokes a consumer's portal session (its link too, if unopened). Revoking twice is
    /// not an error.
    ///
    /// # Errors
    /// [`StoreError::Missing`] when the consumer has no such session, or
    /// [`StoreError::Database`].
    pub async fn revoke_portal_session(
        &self,
        consumer_id: &str,
        id: &str,
        now: &str,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE portal_sessions SET revoked_at = COALESCE(revoked_at, $3) \
             WHERE consumer_id = $1 AND id = $2",
        )
        .bind(consumer_id)
        .bind(id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Missing("portal session"));
        }
        Ok(())
    }

    /// Forgets links and sessions that ended before `before_ms`.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn prune_portal_sessions(&self, before_ms: i64) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "DELETE FROM portal_sessions \
             WHERE COALESCE(session_expires_ms, link_expires_ms) < $1",
        )
        .bind(before_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Attempts matching `search`, newest first.
    ///
    /// # Errors
    /// [`StoreError::Database`] or [`StoreError::Corrupt`].
    pub async fn search_attempts(
        &self,
        search: &AttemptSearch,
    ) -> Result<Vec<LoggedAttempt>, StoreError> {
        let columns = ATTEMPT_COLUMNS
            .split(", ")
            .map(|c| format!("a.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut sql = format!(
            "SELECT {columns}, e.event_type, s.consumer FROM attempts a \
             JOIN subscriptions s ON s.id = a.subscription_id \
             LEFT JOIN events e ON e.id = a.event_id WHERE s.consumer = $1"
        );
        let mut next = 2;
        if search.subscription_id.is_some() {
            push(&mut sql, &mut next, " AND a.subscription_id = {}");
        }
        if search.event_id.is_some() {
            push(&mut sql, &mut next, " AND a.event_id = {}");
        }
        if search.event_type.is_some() {
            push(&mut sql, &mut next, " AND e.event_type = {}");
        }
        if !search.outcomes.is_empty() {
            let list: Vec<String> = (0..search.outcomes.len())
                .map(|i| format!("${}", next + i))
                .collect();
            sql.push_str(&format!(" AND a.outcome IN ({})", list.join(", ")));
            next += search.outcomes.len();
        }
        if search.since_ms.is_some() {
            push(&mut sql, &mut next, " AND a.at_ms >= {}");
        }
        if search.until_ms.is_some() {
            push(&mut sql, &mut next, " AND a.at_ms < {}");
        }
        if search.before.is_some() {
            push(&mut sql, &mut next, " AND a.seq < {}");
        }
        push(&mut sql, &mut next, " ORDER BY a.seq DESC LIMIT {}");

        let mut query = sqlx::query(&sql).bind(&search.consumer);
        for value in [
            &search.subscription_id,
            &search.event_id,
            &search.event_type,
        ]
        .into_iter()
        .flatten()
        {
            query = query.bind(value);
        }
        for outcome in &search.outcomes {
            query = query.bind(outcome);
        }
        for value in [search.since_ms, search.until_ms, search.before]
            .into_iter()
            .flatten()
        {
            query = query.bind(value);
        }
        let rows = query
            .bind(i64::from(search.limit.max(1)))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(logged_from_row).collect()
    }

    /// One attempt by its sequence number, with its event's type and its subscription's
    /// owner; `None` when it does not exist or its subscription is gone.
    ///
    /// # Errors
    /// [`StoreError::Database`] or [`StoreError::Corrupt`].
    pub async fn logged_attempt(&self, seq: i64) -> Result<Option<LoggedAttempt>, StoreError> {
        let columns = ATTEMPT_COLUMNS
            .split(", ")
            .map(|c| format!("a.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let row = sqlx::query(&format!(
            "SELECT {columns}, e.event_type, s.consumer FROM attempts a \
             JOIN subscriptions s ON s.id = a.subscription_id \
             LEFT JOIN events e ON e.id = a.event_id WHERE a.seq = $1"
        ))
        .bind(seq)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(logged_from_row).transpose()
    }

    /// Delivery figures of each of `consumer`'s subscriptions with attempts since
    /// `since_ms`, and the failure streaks of all of them.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn delivery_stats(
        &self,
        consumer: &str,
        since_ms: i64,
    ) -> Result<BTreeMap<String, DeliveryStats>, StoreError> {
        let mut stats: BTreeMap<String, DeliveryStats> = BTreeMap::new();
        let counts = sqlx::query(
            "SELECT a.subscription_id, a.outcome, COUNT(*) AS n FROM attempts a \
             JOIN subscriptions s ON s.id = a.subscription_id \
             WHERE s.consumer = $1 AND a.at_ms >= $2 GROUP BY a.subscription_id, a.outcome",
        )
        .bind(consumer)
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        for row in &counts {
            let id: String = row.try_get(0)?;
            let outcome: String = row.try_get(1)?;
            let n: i64 = row.try_get(2)?;
            stats.entry(id).or_default().outcomes.insert(outcome, n);
        }
        let latest = sqlx::query(
            "SELECT a.subscription_id, a.outcome FROM attempts a WHERE a.seq IN ( \
                SELECT MAX(b.seq) FROM attempts b JOIN subscriptions s ON s.id = b.subscription_id \
                WHERE s.consumer = $1 AND b.at_ms >= $2 GROUP BY b.subscription_id)",
        )
        .bind(consumer)
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        for row in &latest {
            let id: String = row.try_get(0)?;
            stats.entry(id).or_default().last_outcome = Some(row.try_get(1)?);
        }
        let health = sqlx::query(
            "SELECT h.subscription_id, h.failing_since_ms FROM subscription_health h \
             JOIN subscriptions s ON s.id = h.subscription_id \
             WHERE s.consumer = $1 AND h.failing_since_ms IS NOT NULL",
        )
        .bind(consumer)
        .fetch_all(&self.pool)
        .await?;
        for row in &health {
            let id: String = row.try_get(0)?;
            stats.entry(id).or_default().failing_since_ms = row.try_get(1)?;
        }
        Ok(stats)
    }

    /// The event types among the latest `examine` events naming `consumer` or none, in
    /// type order.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn seen_types(
        &self,
        consumer: &str,
        examine: u32,
    ) -> Result<Vec<SeenType>, StoreError> {
        let rows = sqlx::query(
            "SELECT event_type, COUNT(*) AS n, MAX(seq) AS last_seq, \
                MAX(CASE WHEN consumer = $1 THEN seq END) AS last_own_seq \
             FROM (SELECT seq, event_type, consumer FROM events \
                   WHERE consumer = $1 OR consumer IS NULL ORDER BY seq DESC LIMIT $2) recent \
             GROUP BY event_type ORDER BY event_type",
        )
        .bind(consumer)
        .bind(i64::from(examine))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(SeenType {
                    event_type: row.try_get("event_type")?,
                    count: row.try_get("n")?,
                    last_seq: row.try_get("last_seq")?,
                    last_own_seq: row.try_get("last_own_seq")?,
                })
            })
            .collect()
    }

    /// The body of the event recorded at `seq`.
    ///
    /// # Errors
    /// [`StoreError::Missing`] or [`StoreError::Database`].
    pub async fn event_body_at(&self, seq: i64) -> Result<String, StoreError> {
        let row = sqlx::query("SELECT body FROM events WHERE seq = $1")
            .bind(seq)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::Missing("event"))?;
        Ok(row.try_get(0)?)
    }
}

#[cfg(test)]
mod tests {
    use relay_shared::attempt::{AttemptOutcome, AttemptRecord};

    use super::{super::testing::each_backend, *};
    use crate::store::{Subscription, records::NewEvent};

    fn subscription(id: &str, consumer: &str) -> Subscription {
        Subscription {
            id: id.into(),
            url: "https://example.com/hook".into(),
            event_types: vec!["order.*".into()],
            consumer: Some(consumer.into()),
            description: None,
            enabled: true,
            secret: "whsec_x".into(),
            revision: 1,
            created_at: "2026-01-01T00:00:00Z".into(),
            updated_at: "2026-01-01T00:00:00Z".into(),
            max_in_flight: 64,
            ..Subscription::default()
        }
    }

    fn attempt(event: &str, sub: &str, outcome: AttemptOutcome, at: &str) -> AttemptRecord {
        AttemptRecord {
            event_id: event.into(),
            subscription_id: sub.into(),
            attempt: 1,
            at: at.into(),
            outcome,
            status: Some(200),
            latency_ms: 3,
            error: None,
            response_excerpt: None,
            next_attempt_at: None,
            request_headers: relay_shared::attempt::Headers::default(),
            response_headers: relay_shared::attempt::Headers::default(),
            response_headers_omitted: 0,
        }
    }

    #[tokio::test]
    async fn a_link_opens_once_and_only_before_it_expires() {
        for (backend, store) in each_backend().await {
            eprintln!("{backend}");
            store
                .create_consumer(&crate::store::tenants::Consumer {
                    id: "acme".into(),
                    name: None,
                    created_at: "2026-01-01T00:00:00Z".into(),
                })
                .await
                .unwrap();
            let new = |id: &str, hash: &str| NewPortalSession {
                id: id.into(),
                consumer_id: "acme".into(),
                link_hash: hash.into(),
                link_expires_ms: 1_000,
                session_ttl_ms: 500,
                theme: None,
                created_at: "2026-01-01T00:00:00Z".into(),
            };
            store
                .create_portal_session(&new("ps_1", "l1"))
                .await
                .unwrap();
            store
                .create_portal_session(&new("ps_2", "l2"))
                .await
                .unwrap();
            let opened = store
                .open_portal_session("l1", "s1", 900, "t")
                .await
                .unwrap()
                .unwrap();
            assert_eq!(opened.session_expires_ms, Some(1_400));
            assert!(
                store
                    .open_portal_session("l1", "s1b", 901, "t")
                    .await
                    .unwrap()
                    .is_none()
            );
            assert!(
                store
                    .open_portal_session("l2", "s2", 1_000, "t")
                    .await
                    .unwrap()
                    .is_none(),
                "expired"
            );
            assert_eq!(
                store.portal_session("s1").await.unwrap().unwrap().id,
                "ps_1"
            );
            store
                .revoke_portal_session("acme", "ps_1", "t2")
                .await
                .unwrap();
            let revoked = store.portal_session("s1").await.unwrap().unwrap();
            assert_eq!(revoked.revoked_at.as_deref(), Some("t2"));
            assert!(matches!(
                store.revoke_portal_session("globex", "ps_1", "t").await,
                Err(StoreError::Missing(_))
            ));
            assert_eq!(store.prune_portal_sessions(1_200).await.unwrap(), 1);
            assert!(store.portal_session("s1").await.unwrap().is_some());
            store.close().await;
        }
    }

    #[tokio::test]
    async fn the_delivery_log_is_searched_per_consumer_newest_first() {
        for (backend, store) in each_backend().await {
            eprintln!("{backend}");
            store.create(&subscription("sub_a", "acme")).await.unwrap();
            store
                .create(&subscription("sub_g", "globex"))
                .await
                .unwrap();
            store
                .insert_events(&[NewEvent {
                    id: "evt_1".into(),
                    event_type: "order.created".into(),
                    consumer: Some("acme".into()),
                    accepted_ms: 1,
                    body: "{}".into(),
                }])
                .await
                .unwrap();
            store
                .insert_attempts(&[
                    attempt(
                        "evt_1",
                        "sub_a",
                        AttemptOutcome::RetryScheduled,
                        "2026-01-01T00:00:01Z",
                    ),
                    attempt(
                        "evt_1",
                        "sub_a",
                        AttemptOutcome::Success,
                        "2026-01-01T00:00:02Z",
                    ),
                    attempt(
                        "evt_1",
                        "sub_g",
                        AttemptOutcome::Success,
                        "2026-01-01T00:00:03Z",
                    ),
                    attempt(
                        "ping",
                        "sub_a",
                        AttemptOutcome::Success,
                        "2026-01-01T00:00:04Z",
                    ),
                ])
                .await
                .unwrap();
            let mut search = AttemptSearch {
                consumer: "acme".into(),
                limit: 10,
                ..AttemptSearch::default()
            };
            let all = store.search_attempts(&search).await.unwrap();
            let ids: Vec<_> = all
                .iter()
                .map(|a| a.attempt.record.event_id.as_str())
                .collect();
            assert_eq!(ids, ["ping", "evt_1", "evt_1"]);
            assert_eq!(all[0].event_type, None);
            assert_eq!(all[1].event_type.as_deref(), Some("order.created"));

            search.event_type = Some("order.created".into());
            search.outcomes = vec!["success".into()];
            let found = store.search_attempts(&search).await.unwrap();
            assert_eq!(found.len(), 1);
            search.outcomes.clear();
            search.before = Some(all[1].attempt.seq);
            let older = store.search_attempts(&search).await.unwrap();
            assert_eq!(older.len(), 1);
            assert_eq!(older[0].attempt.seq, all[2].attempt.seq);
            search.before = None;
            search.since_ms = Some(1_767_225_602_000);
            assert_eq!(store.search_attempts(&search).await.unwrap().len(), 1);

            let one = store
                .logged_attempt(all[0].attempt.seq)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(one.consumer.as_deref(), Some("acme"));

            let stats = store.delivery_stats("acme", 0).await.unwrap();
            assert_eq!(stats.len(), 1);
            assert_eq!(stats["sub_a"].outcomes["success"], 2);
            assert_eq!(stats["sub_a"].outcomes["retry_scheduled"], 1);
            assert_eq!(stats["sub_a"].last_outcome.as_deref(), Some("success"));

            let seen = store.seen_types("acme", 100).await.unwrap();
            assert_eq!(seen.len(), 1);
            assert_eq!(seen[0].last_own_seq, Some(seen[0].last_seq));
            assert_eq!(store.event_body_at(seen[0].last_seq).await.unwrap(), "{}");
            assert!(store.seen_types("globex", 100).await.unwrap().is_empty());
            store.close().await;
        }
    }
}
