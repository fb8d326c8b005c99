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

    /// Deletes a consumer and revokes all its keys (its subscriptions stay).
    ///
    /// # Errors
    /// [`StoreError::Missing`] or [`StoreError::Database`].
    pub async fn delete_consumer(&self, id: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM api_keys WHERE consumer_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM consumers WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Missing("consumer"));
        }
        tx.commit().await?;
        Ok(())
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
            store.delete_consumer("acme").await.unwrap();
            assert_eq!(
                store
                    .consumer_for_key(&key_hash("rk_secret"))
                    .await
                    .unwrap(),
                None,
                "{backend}: deleting a consumer revokes its keys"
            );
            assert!(matches!(
                store.delete_consumer("acme").await,
                Err(StoreError::Missing("consumer"))
            ));
            store.close().await;
        }
    }
}
