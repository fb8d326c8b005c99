//! Consumers (tenants) and their API keys. A key is shown once at creation; the store keeps
//! only its SHA-256 (keys are 256 random bits, so a fast hash is enough) and a short prefix.

use sha2::{Digest, Sha256};
use sqlx::{Row, any::AnyRow};

use super::{Store, StoreError};

/// A consumer (tenant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer {
    /// The name events and subscriptions use in `consumer`.
    pub id: String,
    /// Display name.
    pub name: Option<String>,
    /// RFC 3339.
    pub created_at: String,
}

/// A consumer API key, without the key itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// `key_<ULID>`.
    pub id: String,
    /// Its consumer.
    pub consumer_id: String,
    /// The first characters of the key, to recognise it.
    pub prefix: String,
    /// RFC 3339.
    pub created_at: String,
    /// When it was last used (RFC 3339, to the minute at best); `None` before its first use.
    pub last_used_at: Option<String>,
}

/// What [`Store::delete_consumer`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsumerDeletion {
    /// Deleted, with these subscriptions (by id).
    Deleted {
        /// The ids of the subscriptions deleted with it.
        subscriptions: Vec<String>,
    },
    /// Kept: it has this many subscriptions.
    Subscribed(usize),
}

/// Hex SHA-256 of a presented key: what the store compares.
pub fn key_hash(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn consumer_from_row(row: &AnyRow) -> Result<Consumer, StoreError> {
    Ok(Consumer {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        created_at: row.try_get("created_at")?,
    })
}

fn key_from_row(row: &AnyRow) -> Result<ApiKey, StoreError> {
    Ok(ApiKey {
        id: row.try_get("id")?,
        consumer_id: row.try_get("consumer_id")?,
        prefix: row.try_get("prefix")?,
        created_at: row.try_get("created_at")?,
        last_used_at: row.try_get("last_used_at")?,
    })
}

impl Store {
    /// Stores a new consumer.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the id is taken, else [`StoreError::Database`].
    pub async fn create_consumer(&self, consumer: &Consumer) -> Result<(), StoreError> {
        let done = sqlx::query(
            "INSERT INTO consumers (id, name, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&consumer.id)
        .bind(&consumer.name)
        .bind(&consumer.created_at)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!("consumer {}", consumer.id)));
        }
        Ok(())
    }

    /// Reads one consumer.
    ///
    /// # Errors
    /// [`StoreError::Missing`] or [`StoreError::Database`].
    pub async fn get_consumer(&self, id: &str) -> Result<Consumer, StoreError> {
        let row = sqlx::query("SELECT id, name, created_at FROM consumers WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::Missing("consumer"))?;
        consumer_from_row(&row)
    }

    /// Consumers in id order after `after` (empty: from the first), at most `limit`.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn list_consumers(
        &self,
        after: &str,
        limit: u32,
    ) -> Result<Vec<Consumer>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, created_at FROM consumers WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(consumer_from_row).collect()
    }

    /// Deletes a consumer with everything that is its: its subscriptions with their
    /// delivery log, dead letters, health and replay jobs, the events naming it, its portal
    /// sessions and its keys, in one transaction. With `keep_if_subscribed`, a consumer that
    /// still has subscriptions is left as it is and their number returned instead.
    ///
    /// # Errors
    /// [`StoreError::Missing`] or [`StoreError::Database`].
    pub async fn delete_consumer(
        &self,
        id: &str,
        keep_if_subscribed: bool,
    ) -> Result<ConsumerDeletion, StoreError> {
        let mut tx = self.pool.begin().await?;
        // A write first: SQLite takes its write lock here (waiting out busy_timeout) instead
        // of failing busy when a read transaction upgrades; PostgreSQL locks the row.
        let exists = sqlx::query("UPDATE consumers SET id = id WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if exists.rows_affected() == 0 {
            return Err(StoreError::Missing("consumer"));
        }
        let subscriptions =
            sqlx::query("SELECT id FROM subscriptions WHERE consumer = $1 ORDER BY id")
                .bind(id)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| r.try_get("id"))
                .collect::<Result<Vec<String>, _>>()?;
        if keep_if_subscribed && !subscriptions.is_empty() {
            return Ok(ConsumerDeletion::Subscribed(subscriptions.len()));
        }
        for table in [
            "attempts",
            "dead_letters",
            "subscription_health",
            "replay_jobs",
        ] {
            sqlx::query(&format!(
                "DELETE FROM {table} WHERE subscription_id IN \
                 (SELECT id FROM subscriptions WHERE consumer = $1)"
            ))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        for (table, column) in [
            ("subscriptions", "consumer"),
            ("events", "consumer"),
            ("portal_sessions", "consumer_id"),
            ("api_keys", "consumer_id"),
            ("consumers", "id"),
        ] {
            sqlx::query(&format!("DELETE FROM {table} WHERE {column} = $1"))
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(ConsumerDeletion::Deleted { subscriptions })
    }

    /// Stores a key of `consumer_id` by its hash.
    ///
    /// # Errors
    /// [`StoreError::Missing`] when the consumer does not exist, else [`StoreError::Database`].
    pub async fn create_key(&self, key: &ApiKey, hash: &str) -> Result<(), StoreError> {
        self.get_consumer(&key.consumer_id).await?;
        sqlx::query(
            "INSERT INTO api_keys (id, consumer_id, prefix, key_hash, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&key.id)
        .bind(&key.consumer_id)
        .bind(&key.prefix)
        .bind(hash)
        .bind(&key.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A consumer's keys after `after` (empty: from the first), oldest first, at most `limit`.
    ///
    /// # Errors
    /// [`StoreError::Missing`] when the consumer does not exist, else [`StoreError::Database`].
    pub async fn list_keys(
        &self,
        consumer_id: &str,
        after: &str,
        limit: u32,
    ) -> Result<Vec<ApiKey>, StoreError> {
        self.get_consumer(consumer_id).await?;
        let rows = sqlx::query(
            "SELECT id, consumer_id, prefix, created_at, last_used_at FROM api_keys \
             WHERE consumer_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(consumer_id)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(key_from_row).collect()
    }

    /// Revokes a key.
    ///
    /// # Errors
    /// [`StoreError::Missing`] or [`StoreError::Database`].
    pub async fn delete_key(&self, consumer_id: &str, key_id: &str) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM api_keys WHERE consumer_id = $1 AND id = $2")
            .bind(consumer_id)
            .bind(key_id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Missing("key"));
        }
        Ok(())
    }

    /// The key whose hash is `hash` and its consumer (`(key id, consumer id)`), if any.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn consumer_for_key(
        &self,
        hash: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        let row = sqlx::query("SELECT id, consumer_id FROM api_keys WHERE key_hash = $1")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row
            .map(|r| Ok::<_, sqlx::Error>((r.try_get("id")?, r.try_get("consumer_id")?)))
            .transpose()?)
    }

    /// Records that key `id` was used at `at` (RFC 3339); a deleted key is left alone.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn touch_key(&self, id: &str, at: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE api_keys SET last_used_at = $2 WHERE id = $1")
            .bind(id)
            .bind(at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::each_backend;

    fn consumer(id: &str) -> Consumer {
        Consumer {
            id: id.into(),
            name: Some(format!("{id} Inc.")),
            created_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[tokio::test]
    async fn consumers_and_keys_on_every_backend() {
        for (backend, store) in each_backend().await {
            store.create_consumer(&consumer("acme")).await.unwrap();
            store.create_consumer(&consumer("globex")).await.unwrap();
            assert!(
                matches!(
                    store.create_consumer(&consumer("acme")).await,
                    Err(StoreError::Conflict(_))
                ),
                "{backend}"
            );
            assert_eq!(store.get_consumer("acme").await.unwrap(), consumer("acme"));
            let all = store.list_consumers("", 10).await.unwrap();
            assert_eq!(all.len(), 2, "{backend}");
            let after = store.list_consumers("acme", 10).await.unwrap();
            assert_eq!(after[0].id, "globex");

            let key = ApiKey {
                id: "key_1".into(),
                consumer_id: "acme".into(),
                prefix: "rk_abcdefg".into(),
                created_at: "2026-01-01T00:00:00Z".into(),
                last_used_at: None,
            };
            store
                .create_key(&key, &key_hash("rk_secret"))
                .await
                .unwrap();
            assert!(matches!(
                store
                    .create_key(
                        &ApiKey {
                            consumer_id: "nobody".into(),
                            id: "key_2".into(),
                            ..key.clone()
                        },
                        "h"
                    )
                    .await,
                Err(StoreError::Missing("consumer"))
            ));
            assert_eq!(
                store
                    .consumer_for_key(&key_hash("rk_secret"))
                    .await
                    .unwrap(),
                Some(("key_1".into(), "acme".into()))
            );
            assert_eq!(
                store.consumer_for_key(&key_hash("rk_other")).await.unwrap(),
                None
            );
            assert_eq!(
                store.list_keys("acme", "", 10).await.unwrap(),
                std::slice::from_ref(&key)
            );
            store
                .touch_key("key_1", "2026-01-02T00:00:00Z")
                .await
                .unwrap();
            assert_eq!(
                store.list_keys("acme", "", 10).await.unwrap()[0]
                    .last_used_at
                    .as_deref(),
                Some("2026-01-02T00:00:00Z"),
                "{backend}"
            );
            store.delete_key("acme", "key_1").await.unwrap();
            assert!(matches!(
                store.delete_key("acme", "key_1").await,
                Err(StoreError::Missing("key"))
            ));
            assert_eq!(
                store
                    .consumer_for_key(&key_hash("rk_secret"))
                    .await
                    .unwrap(),
                None
            );

            store
                .create_key(&key, &key_hash("rk_secret"))
                .await
                .unwrap();
            assert_eq!(
                store.delete_consumer("acme", true).await.unwrap(),
                ConsumerDeletion::Deleted {
                    subscriptions: Vec::new()
                }
            );
            assert_eq!(
                store
                    .consumer_for_key(&key_hash("rk_secret"))
                    .await
                    .unwrap(),
                None,
                "{backend}: deleting a consumer revokes its keys"
            );
            assert!(matches!(
                store.delete_consumer("acme", false).await,
                Err(StoreError::Missing("consumer"))
            ));
            store.close().await;
        }
    }

    #[tokio::test]
    async fn deleting_a_consumer_takes_everything_of_its_and_nothing_else_on_every_backend() {
        use relay_shared::attempt::AttemptOutcome;

        use crate::store::{
            portal::NewPortalSession,
            records::{
                NewDeadLetter,
                tests::{attempt, event, subscription},
            },
        };
        // Every table that holds something of a consumer's, and how many rows it has.
        async fn counts(store: &Store) -> Vec<(&'static str, i64)> {
            let mut counts = Vec::new();
            for table in [
                "consumers",
                "api_keys",
                "portal_sessions",
                "subscriptions",
                "events",
                "attempts",
                "dead_letters",
                "subscription_health",
            ] {
                let (n,): (i64,) = sqlx::query_as(&format!("SELECT COUNT(*) FROM {table}"))
                    .fetch_one(&store.pool)
                    .await
                    .unwrap();
                counts.push((table, n));
            }
            counts
        }
        for (backend, store) in each_backend().await {
            for id in ["acme", "globex"] {
                store.create_consumer(&consumer(id)).await.unwrap();
                let key = ApiKey {
                    id: format!("key_{id}"),
                    consumer_id: id.into(),
                    prefix: "rk_".into(),
                    created_at: "2026-01-01T00:00:00Z".into(),
                    last_used_at: None,
                };
                store
                    .create_key(&key, &key_hash(&format!("rk_{id}")))
                    .await
                    .unwrap();
                store
                    .create(&subscription(&format!("sub_{id}"), Some(id)))
                    .await
                    .unwrap();
                store
                    .create_portal_session(&NewPortalSession {
                        id: format!("ps_{id}"),
                        consumer_id: id.into(),
                        link_hash: key_hash(&format!("link_{id}")),
                        link_expires_ms: i64::MAX / 2,
                        session_ttl_ms: 60_000,
                        theme: None,
                        created_at: "2026-01-01T00:00:00Z".into(),
                    })
                    .await
                    .unwrap();
                store
                    .insert_attempts(&[attempt(
                        &format!("sub_{id}"),
                        AttemptOutcome::RetryScheduled,
                        "2026-01-01T00:00:00Z",
                    )])
                    .await
                    .unwrap();
                store
                    .insert_dead_letters(&[NewDeadLetter {
                        id: format!("dl_{id}"),
                        event_id: format!("ev_{id}"),
                        subscription_id: format!("sub_{id}"),
                        attempts: 3,
                        last_error: None,
                        last_status: Some(500),
                        body: "{}".into(),
                        dead_ms: 1_000,
                        dead_at: "2026-01-01T00:00:01Z".into(),
                    }])
                    .await
                    .unwrap();
            }
            store
                .insert_events(&[
                    event("ev_acme", "order.created", Some("acme"), 1_000),
                    event("ev_globex", "order.created", Some("globex"), 1_000),
                    event("ev_all", "order.created", None, 1_000),
                ])
                .await
                .unwrap();
            let before = counts(&store).await;
            assert!(before.iter().all(|(_, n)| *n >= 1), "{backend}: {before:?}");

            // Not forced: refused, nothing deleted.
            assert_eq!(
                store.delete_consumer("acme", true).await.unwrap(),
                ConsumerDeletion::Subscribed(1),
                "{backend}"
            );
            assert_eq!(counts(&store).await, before, "{backend}");

            // Forced: acme's rows go, globex's and the event naming no one stay.
            assert_eq!(
                store.delete_consumer("acme", false).await.unwrap(),
                ConsumerDeletion::Deleted {
                    subscriptions: vec!["sub_acme".into()]
                },
                "{backend}"
            );
            let after = counts(&store).await;
            for ((table, was), (_, now)) in before.iter().zip(&after) {
                assert_eq!(
                    *now,
                    was - 1,
                    "{backend}: {table} keeps only what is not acme's"
                );
            }
            assert_eq!(
                store.consumer_for_key(&key_hash("rk_acme")).await.unwrap(),
                None,
                "{backend}"
            );
            assert!(
                store
                    .portal_session_by_link(&key_hash("link_acme"))
                    .await
                    .unwrap()
                    .is_none(),
                "{backend}"
            );
            assert!(matches!(
                store.delete_consumer("acme", false).await,
                Err(StoreError::Missing("consumer"))
            ));
            store.close().await;
        }
    }
}
