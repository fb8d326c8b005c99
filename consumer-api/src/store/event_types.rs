//! The event-type catalogue: one row per type. Every change (deletions included) takes the
//! next value of one catalogue-wide revision in the same transaction, so ingest and the
//! dispatchers can order a snapshot and the notifications around it, and a type deleted and
//! created again never goes back in revision.

use serde_json::Value;
use sqlx::{Row, any::AnyRow};

use super::{Store, StoreError};

const COLUMNS: &str =
    "name, description, schema, examples, deprecated, revision, created_at, updated_at";

/// One event type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventType {
    /// `order.created`.
    pub name: String,
    /// What it means.
    pub description: Option<String>,
    /// JSON Schema (draft 2020-12) of `data`.
    pub schema: Option<Value>,
    /// Example `data`.
    pub examples: Vec<Value>,
    /// Producers should stop sending it (it is still accepted).
    pub deprecated: bool,
    /// Catalogue revision of the last change.
    pub revision: i64,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

/// A change to an event type; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventTypePatch {
    /// New description (`Some(None)` clears it).
    pub description: Option<Option<String>>,
    /// New schema (`Some(None)` removes it).
    pub schema: Option<Option<Value>>,
    /// New examples.
    pub examples: Option<Vec<Value>>,
    /// New deprecation flag.
    pub deprecated: Option<bool>,
}

fn json_text(value: &Value) -> String {
    value.to_string()
}

fn from_row(row: &AnyRow) -> Result<EventType, StoreError> {
    let name: String = row.try_get("name")?;
    let corrupt = |what: &str, e: serde_json::Error| StoreError::Corrupt {
        id: name.clone(),
        reason: format!("{what}: {e}"),
    };
    let schema: Option<String> = row.try_get("schema")?;
    let examples: String = row.try_get("examples")?;
    Ok(EventType {
        description: row.try_get("description")?,
        schema: schema
            .map(|s| serde_json::from_str(&s))
            .transpose()
            .map_err(|e| corrupt("schema", e))?,
        examples: serde_json::from_str(&examples).map_err(|e| corrupt("examples", e))?,
        deprecated: row.try_get::<i64, _>("deprecated")? != 0,
        revision: row.try_get("revision")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        name,
    })
}

async fn next_revision(tx: &mut sqlx::Transaction<'_, sqlx::Any>) -> Result<i64, StoreError> {
    Ok(
        sqlx::query("UPDATE catalogue_revision SET value = value + 1 WHERE id = 1 RETURNING value")
            .fetch_one(&mut **tx)
            .await?
            .try_get(0)?,
    )
}

impl Store {
    /// The catalogue's current revision (0 before any change).
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn catalogue_revision(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query("SELECT value FROM catalogue_revision WHERE id = 1")
                .fetch_one(&self.pool)
                .await?
                .try_get(0)?,
        )
    }

    /// Stores a new event type at the next catalogue revision; returns it as stored.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the name is taken, else [`StoreError::Database`].
    pub async fn create_event_type(&self, new: &EventType) -> Result<EventType, StoreError> {
        let mut tx = self.pool.begin().await?;
        let revision = next_revision(&mut tx).await?;
        let done = sqlx::query(
            "INSERT INTO event_types (name, description, schema, examples, deprecated, revision, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(&new.name)
        .bind(&new.description)
        .bind(new.schema.as_ref().map(json_text))
        .bind(json_text(&Value::from(new.examples.clone())))
        .bind(i64::from(new.deprecated))
        .bind(revision)
        .bind(&new.created_at)
        .bind(&new.updated_at)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!("event type {}", new.name)));
        }
        tx.commit().await?;
        Ok(EventType {
            revision,
            ..new.clone()
        })
    }

    /// Reads one event type.
    ///
    /// # Errors
    /// [`StoreError::Missing`] when there is none of that name, else [`StoreError::Database`].
    pub async fn get_event_type(&self, name: &str) -> Result<EventType, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM event_types WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::Missing("event type"))?;
        from_row(&row)
    }

    /// Up to `limit + 1` types after `after` in name order (the extra one says more follow),
    /// with the catalogue revision read before them: every change up to it is in the list.
    ///
    /// # Errors
    /// [`StoreError::Database`] or [`StoreError::Corrupt`].
    pub async fn list_event_types(
        &self,
        after: &str,
        limit: u32,
    ) -> Result<(Vec<EventType>, i64), StoreError> {
        let revision = self.catalogue_revision().await?;
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM event_types WHERE name > $1 ORDER BY name LIMIT $2"
        ))
        .bind(after)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        let types = rows.iter().map(from_row).collect::<Result<_, _>>()?;
        Ok((types, revision))
    }

    /// Applies `patch` at the next catalogue revision; returns the type as stored.
    ///
    /// # Errors
    /// [`StoreError::Missing`] when there is none of that name, else [`StoreError::Database`].
    pub async fn update_event_type(
        &self,
        name: &str,
        patch: &EventTypePatch,
        now: &str,
    ) -> Result<EventType, StoreError> {
        let mut tx = self.pool.begin().await?;
        // A write first: SQLite takes its write lock here (waiting out busy_timeout) instead
        // of failing busy when the read below upgrades; PostgreSQL locks the revision row, so
        // concurrent updates apply one after the other. A missing type rolls it back.
        let revision = next_revision(&mut tx).await?;
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM event_types WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::Missing("event type"))?;
        let mut current = from_row(&row)?;
        if let Some(description) = &patch.description {
            current.description.clone_from(description);
        }
        if let Some(schema) = &patch.schema {
            current.schema.clone_from(schema);
        }
        if let Some(examples) = &patch.examples {
            current.examples.clone_from(examples);
        }
        if let Some(deprecated) = patch.deprecated {
            current.deprecated = deprecated;
        }
        current.revision = revision;
        now.clone_into(&mut current.updated_at);
        sqlx::query(
            "UPDATE event_types SET description = $2, schema = $3, examples = $4, \
             deprecated = $5, revision = $6, updated_at = $7 WHERE name = $1",
        )
        .bind(name)
        .bind(&current.description)
        .bind(current.schema.as_ref().map(json_text))
        .bind(json_text(&Value::from(current.examples.clone())))
        .bind(i64::from(current.deprecated))
        .bind(current.revision)
        .bind(&current.updated_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(current)
    }

    /// Deletes an event type; returns the catalogue revision of the deletion.
    ///
    /// # Errors
    /// [`StoreError::Missing`] when there is none of that name, else [`StoreError::Database`].
    pub async fn delete_event_type(&self, name: &str) -> Result<i64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("DELETE FROM event_types WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Missing("event type"));
        }
        let revision = next_revision(&mut tx).await?;
        tx.commit().await?;
        Ok(revision)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::testing::each_backend;

    fn order_created() -> EventType {
        EventType {
            name: "order.created".into(),
            description: Some("An order was placed.".into()),
            schema: Some(json!({"type": "object", "required": ["total"]})),
            examples: vec![json!({"total": 10})],
            deprecated: false,
            revision: 0,
            created_at: "2026-01-01T00:00:00Z".into(),
            updated_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[tokio::test]
    async fn every_change_takes_the_next_catalogue_revision() {
        for (backend, store) in each_backend().await {
            assert_eq!(store.catalogue_revision().await.unwrap(), 0, "{backend}");
            let created = store.create_event_type(&order_created()).await.unwrap();
            assert_eq!(created.revision, 1, "{backend}");
            assert_eq!(
                store.get_event_type("order.created").await.unwrap(),
                created
            );
            assert!(matches!(
                store.create_event_type(&order_created()).await,
                Err(StoreError::Conflict(_))
            ));
            let mut other = order_created();
            other.name = "invoice.paid".into();
            other.schema = None;
            store.create_event_type(&other).await.unwrap();

            let patch = EventTypePatch {
                schema: Some(None),
                deprecated: Some(true),
                ..EventTypePatch::default()
            };
            let changed = store
                .update_event_type("order.created", &patch, "2026-01-02T00:00:00Z")
                .await
                .unwrap();
            assert_eq!(
                (changed.revision, changed.schema.clone(), changed.deprecated),
                (3, None, true),
                "{backend}"
            );
            assert_eq!(changed.description, created.description);
            assert_eq!(changed.updated_at, "2026-01-02T00:00:00Z");

            let (page, as_of) = store.list_event_types("", 1).await.unwrap();
            assert_eq!(as_of, 3);
            let names: Vec<&str> = page.iter().map(|t| t.name.as_str()).collect();
            assert_eq!(names, ["invoice.paid", "order.created"], "{backend}");
            let (page, _) = store.list_event_types("invoice.paid", 10).await.unwrap();
            assert_eq!(page.len(), 1);

            assert_eq!(store.delete_event_type("order.created").await.unwrap(), 4);
            assert!(matches!(
                store.delete_event_type("order.created").await,
                Err(StoreError::Missing(_))
            ));
            assert!(matches!(
                store.get_event_type("order.created").await,
                Err(StoreError::Missing(_))
            ));
            // Created again, it continues the sequence.
            let again = store.create_event_type(&order_created()).await.unwrap();
            assert_eq!(again.revision, 5, "{backend}");
        }
    }

    #[tokio::test]
    async fn concurrent_updates_all_apply_one_after_the_other() {
        for (backend, store) in each_backend().await {
            store.create_event_type(&order_created()).await.unwrap();
            // As many writers as the SQLite pool has connections, and more.
            let updates = (0..8).map(|n| {
                let store = store.clone();
                tokio::spawn(async move {
                    let patch = EventTypePatch {
                        description: Some(Some(format!("take {n}"))),
                        ..EventTypePatch::default()
                    };
                    store
                        .update_event_type("order.created", &patch, "2026-01-02T00:00:00Z")
                        .await
                })
            });
            let mut revisions: Vec<i64> = futures_util::future::join_all(updates)
                .await
                .into_iter()
                .map(|r| {
                    r.unwrap()
                        .unwrap_or_else(|e| panic!("{backend}: {e}"))
                        .revision
                })
                .collect();
            revisions.sort_unstable();
            assert_eq!(revisions, (2..=9).collect::<Vec<_>>(), "{backend}");
            assert!(matches!(
                store
                    .update_event_type("no.such", &EventTypePatch::default(), "t")
                    .await,
                Err(StoreError::Missing(_))
            ));
            assert_eq!(
                store.catalogue_revision().await.unwrap(),
                9,
                "{backend}: rolled back"
            );
        }
    }
}
