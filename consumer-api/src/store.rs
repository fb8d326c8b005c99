//! The store: subscriptions (here), tenants and their keys ([`tenants`]), and the recorded
//! events, attempts and dead letters ([`records`]), reached through sqlx's `Any` driver so
//! that the same SQL (portable types, `$1` placeholders) runs on SQLite and PostgreSQL.
//! Only the DDL differs (`migrations/sqlite`, `migrations/postgres`).
//!
//! Every subscription write is a single statement, so concurrent requests never hold a
//! transaction open across an await point; the recorder writes its batches in one transaction.

pub mod event_types;
pub mod portal;
pub mod records;
pub mod replays;
pub mod tenants;
#[cfg(test)]
pub(crate) mod testing;

use std::{borrow::Cow, collections::BTreeMap, future::Future, pin::Pin, time::Duration};

use relay_shared::{
    endpoint::Credentials,
    signing::SignatureScheme,
    subscription::{DirectoryEntry, Limits, Ordering},
};
use serde_json::Value;

use crate::clock::now_ms;
use sqlx::{
    AnyPool, Row,
    any::{AnyPoolOptions, AnyRow},
    migrate::{Migration, MigrationSource, MigrationType, Migrator},
};

/// Columns of a subscription, in the order [`Subscription::from_row`] reads them.
const COLUMNS: &str = "id, url, event_types, consumer, description, enabled, secret, revision, created_at, updated_at, disabled_reason, previous_secret, previous_secret_expires_ms, rate_limit_millis, max_in_flight, signature_scheme, signing_key, previous_signing_key, previous_signing_key_expires_ms, filter, headers, credentials, ordering";

/// How long a request waits for a pooled connection before the store counts as unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// SQLite waits this long for the writer lock instead of failing at once with `SQLITE_BUSY`.
const SQLITE_BUSY_TIMEOUT_MS: u32 = 5_000;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No subscription has that id.
    #[error("no such subscription")]
    NotFound,
    /// No such resource of another kind (`consumer`, `key`, `event`, `dead letter`).
    #[error("no such {0}")]
    Missing(&'static str),
    /// A resource with that id already exists.
    #[error("{0} already exists")]
    Conflict(String),
    // The sqlx errors are in the message and deliberately not exposed as `source`: their
    // own source chains repeat the message, which would print it several times in `{:#}`.
    /// The database could not be reached or refused the statement.
    #[error("database error: {0}")]
    Database(sqlx::Error),
    /// The schema could not be brought up to date.
    #[error("database migration failed: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    /// A stored row does not decode (edited by hand, or written by a newer version).
    #[error("subscription {id} is stored in an unreadable form: {reason}")]
    Corrupt {
        /// The row's id.
        id: String,
        /// What did not decode.
        reason: String,
    },
}

/// Tables whose size `relay_store_rows` reports.
const COUNTED_TABLES: [&str; 6] = [
    "subscriptions",
    "consumers",
    "api_keys",
    "events",
    "attempts",
    "dead_letters",
];

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(e)
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        Self::Migrate(e)
    }
}

impl StoreError {
    /// Whether retrying later may succeed (the database is busy or unreachable), as opposed
    /// to a fault that will repeat.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Database(e) => {
                matches!(
                    e,
                    sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_)
                ) || e
                    .as_database_error()
                    .and_then(|d| d.code())
                    // SQLITE_BUSY (5) and SQLITE_LOCKED (6), with or without extended codes.
                    .is_some_and(|code| {
                        code.parse::<i64>().is_ok_and(|c| matches!(c & 0xff, 5 | 6))
                    })
            }
            Self::NotFound
            | Self::Missing(_)
            | Self::Conflict(_)
            | Self::Migrate(_)
            | Self::Corrupt { .. } => false,
        }
    }
}

/// A stored subscription, secret included.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Subscription {
    /// `sub_<ULID>`.
    pub id: String,
    /// Endpoint receiving the deliveries.
    pub url: String,
    /// Topic filters.
    pub event_types: Vec<String>,
    /// Owner, if any.
    pub consumer: Option<String>,
    /// Free text for people.
    pub description: Option<String>,
    /// Disabled subscriptions receive nothing.
    pub enabled: bool,
    /// Signing secret, `whsec_…`.
    pub secret: String,
    /// 1 at creation, +1 on every change.
    pub revision: i64,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// Why it was disabled (410 from the endpoint, failing too long, by hand); cleared when
    /// it is enabled again.
    pub disabled_reason: Option<String>,
    /// The secret before the last rotation, still signing until `previous_secret_expires_ms`.
    pub previous_secret: Option<String>,
    /// End of the rotation's grace period, Unix milliseconds.
    pub previous_secret_expires_ms: Option<i64>,
    /// Requests per second to the endpoint, all dispatchers together; `None`: unlimited.
    pub rate_limit: Option<f64>,
    /// Requests in flight to the endpoint, all dispatchers together.
    pub max_in_flight: u32,
    /// Which signatures deliveries carry.
    pub signature_scheme: SignatureScheme,
    /// The ed25519 signing key (`whsk_…`), made when the scheme first needs one; kept when
    /// the scheme goes back to `v1`, so the published key stays the same.
    pub signing_key: Option<String>,
    /// The signing key before the last rotation, still signing until
    /// `previous_signing_key_expires_ms`.
    pub previous_signing_key: Option<String>,
    /// End of the signing key rotation's grace period, Unix milliseconds.
    pub previous_signing_key_expires_ms: Option<i64>,
    /// Payload filter, checked when saved.
    pub filter: Option<Value>,
    /// Static headers added to every request, checked when saved.
    pub headers: BTreeMap<String, String>,
    /// Credentials sent to the endpoint; never shown in full.
    pub credentials: Option<Credentials>,
    /// Delivery order.
    pub ordering: Ordering,
}

// Rates are finite (validated before they are stored), so equality is reflexive.
impl Eq for Subscription {}

impl Subscription {
    /// The entry dispatchers hold for this subscription: during a rotation's grace period
    /// both secrets (or signing keys), newest first.
    pub fn directory_entry(&self) -> DirectoryEntry {
        let now = now_ms();
        DirectoryEntry {
            id: self.id.clone(),
            url: self.url.clone(),
            event_types: self.event_types.clone(),
            consumer: self.consumer.clone(),
            enabled: self.enabled,
            secrets: self.secrets(now),
            revision: self.revision,
            limits: Limits {
                rate_limit: self.rate_limit,
                max_in_flight: Some(self.max_in_flight),
            },
            signature_scheme: self.signature_scheme,
            signing_keys: self.signing_keys(now),
            filter: self.filter.clone(),
            headers: self.headers.clone(),
            credentials: self.credentials.clone(),
            ordering: self.ordering,
        }
    }

    /// The ed25519 keys that sign at `now_ms`, newest first (none under the `v1` scheme).
    pub fn signing_keys(&self, now_ms: i64) -> Vec<String> {
        if !self.signature_scheme.signs_v1a() {
            return Vec::new();
        }
        let mut keys: Vec<String> = self.signing_key.iter().cloned().collect();
        if let (Some(previous), Some(expires)) = (
            &self.previous_signing_key,
            self.previous_signing_key_expires_ms,
        ) && expires > now_ms
        {
            keys.push(previous.clone());
        }
        keys
    }

    /// The secrets that sign at `now_ms`, newest first.
    pub fn secrets(&self, now_ms: i64) -> Vec<String> {
        let mut secrets = vec![self.secret.clone()];
        if let (Some(previous), Some(expires)) =
            (&self.previous_secret, self.previous_secret_expires_ms)
            && expires > now_ms
        {
            secrets.push(previous.clone());
        }
        secrets
    }

    fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
        let id: String = row.try_get("id")?;
        let corrupt = |column: &str, reason: String| StoreError::Corrupt {
            id: id.clone(),
            reason: format!("{column}: {reason}"),
        };
        let event_types: String = row.try_get("event_types")?;
        let event_types = serde_json::from_str(&event_types)
            .map_err(|e| corrupt("event_types", e.to_string()))?;
        let scheme: String = row.try_get("signature_scheme")?;
        let signature_scheme = scheme.parse().map_err(|e| corrupt("signature_scheme", e))?;
        let filter = json_column(row, "filter").map_err(|e| corrupt("filter", e))?;
        let headers = json_column(row, "headers")
            .map_err(|e| corrupt("headers", e))?
            .unwrap_or_default();
        let credentials = json_column(row, "credentials").map_err(|e| corrupt("credentials", e))?;
        Ok(Self {
            signature_scheme,
            signing_key: row.try_get("signing_key")?,
            previous_signing_key: row.try_get("previous_signing_key")?,
            previous_signing_key_expires_ms: row.try_get("previous_signing_key_expires_ms")?,
            filter,
            headers,
            credentials,
            url: row.try_get("url")?,
            event_types,
            consumer: row.try_get("consumer")?,
            description: row.try_get("description")?,
            enabled: row.try_get::<i64, _>("enabled")? != 0,
            secret: row.try_get("secret")?,
            revision: row.try_get("revision")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            disabled_reason: row.try_get("disabled_reason")?,
            previous_secret: row.try_get("previous_secret")?,
            previous_secret_expires_ms: row.try_get("previous_secret_expires_ms")?,
            rate_limit: row
                .try_get::<Option<i64>, _>("rate_limit_millis")?
                .map(rate_from_millis),
            max_in_flight: u32::try_from(row.try_get::<i64, _>("max_in_flight")?).map_err(|e| {
                StoreError::Corrupt {
                    id: id.clone(),
                    reason: format!("max_in_flight: {e}"),
                }
            })?,
            ordering: {
                let ordering: String = row.try_get("ordering")?;
                Ordering::parse(&ordering).ok_or_else(|| StoreError::Corrupt {
                    id: id.clone(),
                    reason: format!("ordering: {ordering:?}"),
                })?
            },
            id,
        })
    }
}

/// A nullable JSON column: `NULL` is `None`.
fn json_column<T: serde::de::DeserializeOwned>(
    row: &AnyRow,
    column: &str,
) -> Result<Option<T>, String> {
    let text: Option<String> = row.try_get(column).map_err(|e| e.to_string())?;
    text.map(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
        .transpose()
}

/// A value as a JSON column (what serialises always does: maps, values and enums of strings).
fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// A change to some fields of a subscription; `None` leaves a field as it is.
/// For the optional fields, `Some(None)` clears them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubscriptionPatch {
    /// New endpoint.
    pub url: Option<String>,
    /// New topic filters.
    pub event_types: Option<Vec<String>>,
    /// New owner, or `Some(None)` to clear it.
    pub consumer: Option<Option<String>>,
    /// New description, or `Some(None)` to clear it.
    pub description: Option<Option<String>>,
    /// Enable or disable.
    pub enabled: Option<bool>,
    /// New rate limit, or `Some(None)` to remove it.
    pub rate_limit: Option<Option<f64>>,
    /// New in-flight cap.
    pub max_in_flight: Option<u32>,
    /// New signature scheme.
    pub signature_scheme: Option<SignatureScheme>,
    /// A fresh ed25519 signing key, stored only if the subscription has none yet (set when
    /// the new scheme signs `v1a`).
    pub signing_key: Option<String>,
    /// New payload filter, or `Some(None)` to remove it.
    pub filter: Option<Option<Value>>,
    /// New static headers (replacing them all), or `Some(None)` to remove them.
    pub headers: Option<Option<BTreeMap<String, String>>>,
    /// New credentials, or `Some(None)` to remove them.
    pub credentials: Option<Option<Credentials>>,
    /// New delivery order.
    pub ordering: Option<Ordering>,
}

impl SubscriptionPatch {
    /// Whether the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// Which subscriptions to read, in id order.
#[derive(Debug, Clone, Default)]
pub struct ListRequest {
    /// Only ids strictly after this one (empty: from the first).
    pub after: String,
    /// Only this consumer's subscriptions.
    pub consumer: Option<String>,
    /// At most this many.
    pub limit: u32,
}

/// The store.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    /// PostgreSQL (else SQLite): event inserts then serialise on a table lock, so that
    /// sequence numbers become visible in order even with several writers.
    postgres: bool,
}

impl Store {
    /// Opens the database at `url` and brings its schema up to date. A SQLite file is created
    /// if missing and switched to WAL mode, so readers never wait for the writer.
    ///
    /// # Errors
    /// [`StoreError::Database`] when the database cannot be opened,
    /// [`StoreError::Migrate`] when the schema cannot be migrated.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        let url = if sqlite {
            sqlite_create_if_missing(url)
        } else {
            url.to_owned()
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if sqlite { 4 } else { 10 })
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        // Per-connection settings: the Any driver only passes the URL on, so
                        // they cannot be given as connect options.
                        sqlx::query(&format!("PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}"))
                            .execute(&mut *conn)
                            .await?;
                        // Safe with WAL: a crash loses at most the last commits, never integrity.
                        sqlx::query("PRAGMA synchronous = NORMAL")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        if sqlite {
            // WAL is a property of the file, so setting it once here lasts.
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await?;
        }
        Migrator::new(EmbeddedMigrations::for_url(&url))
            .await?
            .run(&pool)
            .await?;
        Ok(Self {
            pool,
            postgres: !sqlite,
        })
    }

    /// Rows in each table, for `relay_store_rows{table}`.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn row_counts(&self) -> Result<Vec<(&'static str, i64)>, StoreError> {
        let mut counts = Vec::with_capacity(COUNTED_TABLES.len());
        for table in COUNTED_TABLES {
            // The table name comes from the constant list above, never from input.
            let (count,): (i64,) = sqlx::query_as(&format!("SELECT COUNT(*) FROM {table}"))
                .fetch_one(&self.pool)
                .await?;
            counts.push((table, count));
        }
        Ok(counts)
    }

    /// Answers when the database does (readiness).
    ///
    /// # Errors
    /// [`StoreError::Database`] when it does not.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes every connection (waits for those in use to be returned).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Stores a new subscription.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn create(&self, subscription: &Subscription) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO subscriptions ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
             $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23)"
        ))
        .bind(&subscription.id)
        .bind(&subscription.url)
        .bind(encode_event_types(&subscription.event_types))
        .bind(&subscription.consumer)
        .bind(&subscription.description)
        .bind(i64::from(subscription.enabled))
        .bind(&subscription.secret)
        .bind(subscription.revision)
        .bind(&subscription.created_at)
        .bind(&subscription.updated_at)
        .bind(&subscription.disabled_reason)
        .bind(&subscription.previous_secret)
        .bind(subscription.previous_secret_expires_ms)
        .bind(subscription.rate_limit.map(rate_millis))
        .bind(i64::from(subscription.max_in_flight))
        .bind(subscription.signature_scheme.as_str())
        .bind(&subscription.signing_key)
        .bind(&subscription.previous_signing_key)
        .bind(subscription.previous_signing_key_expires_ms)
        .bind(subscription.filter.as_ref().map(to_json))
        .bind(headers_column(Some(&subscription.headers)))
        .bind(subscription.credentials.as_ref().map(to_json))
        .bind(subscription.ordering.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Reads one subscription.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], [`StoreError::Database`] or [`StoreError::Corrupt`].
    pub async fn get(&self, id: &str) -> Result<Subscription, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM subscriptions WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        Subscription::from_row(&row)
    }

    /// Reads up to `request.limit` subscriptions in id order.
    ///
    /// # Errors
    /// [`StoreError::Database`] or [`StoreError::Corrupt`].
    pub async fn list(&self, request: &ListRequest) -> Result<Vec<Subscription>, StoreError> {
        let limit = i64::from(request.limit.max(1));
        // Two statements rather than `($2 IS NULL OR consumer = $2)`, which PostgreSQL cannot
        // type and which would keep SQLite from using the (consumer, id) index.
        let rows = match &request.consumer {
            None => {
                sqlx::query(&format!(
                    "SELECT {COLUMNS} FROM subscriptions WHERE id > $1 ORDER BY id LIMIT $2"
                ))
                .bind(&request.after)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            Some(consumer) => {
                sqlx::query(&format!(
                    "SELECT {COLUMNS} FROM subscriptions WHERE consumer = $1 AND id > $2 ORDER BY id LIMIT $3"
                ))
                .bind(consumer)
                .bind(&request.after)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(Subscription::from_row).collect()
    }

    /// Applies `patch` and increments the revision, in one statement so that concurrent
    /// changes each get their own revision. `now` becomes `updated_at`.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], [`StoreError::Database`] or [`StoreError::Corrupt`].
    pub async fn update(
        &self,
        id: &str,
        patch: &SubscriptionPatch,
        now: &str,
    ) -> Result<Subscription, StoreError> {
        let row = sqlx::query(&format!(
            "UPDATE subscriptions SET \
                url = COALESCE($2, url), \
                event_types = COALESCE($3, event_types), \
                consumer = CASE WHEN $4 = 1 THEN $5 ELSE consumer END, \
                description = CASE WHEN $6 = 1 THEN $7 ELSE description END, \
                enabled = COALESCE($8, enabled), \
                disabled_reason = CASE WHEN $8 = 1 THEN NULL ELSE disabled_reason END, \
                rate_limit_millis = CASE WHEN $10 = 1 THEN $11 ELSE rate_limit_millis END, \
                max_in_flight = COALESCE($12, max_in_flight), \
                revision = revision + 1, \
                updated_at = $9, \
                signature_scheme = COALESCE($13, signature_scheme), \
                signing_key = COALESCE(signing_key, $14), \
                filter = CASE WHEN $15 = 1 THEN $16 ELSE filter END, \
                headers = CASE WHEN $17 = 1 THEN $18 ELSE headers END, \
                credentials = CASE WHEN $19 = 1 THEN $20 ELSE credentials END, \
                ordering = COALESCE($21, ordering) \
             WHERE id = $1 RETURNING {COLUMNS}"
        ))
        .bind(id)
        .bind(patch.url.as_deref())
        .bind(patch.event_types.as_deref().map(encode_event_types))
        .bind(i64::from(patch.consumer.is_some()))
        .bind(patch.consumer.clone().flatten())
        .bind(i64::from(patch.description.is_some()))
        .bind(patch.description.clone().flatten())
        .bind(patch.enabled.map(i64::from))
        .bind(now)
        .bind(i64::from(patch.rate_limit.is_some()))
        .bind(patch.rate_limit.flatten().map(rate_millis))
        .bind(patch.max_in_flight.map(i64::from))
        .bind(patch.signature_scheme.map(SignatureScheme::as_str))
        .bind(patch.signing_key.as_deref())
        .bind(i64::from(patch.filter.is_some()))
        .bind(patch.filter.clone().flatten().as_ref().map(to_json))
        .bind(i64::from(patch.headers.is_some()))
        .bind(headers_column(
            patch.headers.as_ref().and_then(Option::as_ref),
        ))
        .bind(i64::from(patch.credentials.is_some()))
        .bind(patch.credentials.clone().flatten().as_ref().map(to_json))
        .bind(patch.ordering.map(Ordering::as_str))
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        Subscription::from_row(&row)
    }

    /// Disables a subscription with `reason`, unless it is disabled already. Returns it and
    /// whether this call changed it.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], [`StoreError::Database`] or [`StoreError::Corrupt`].
    pub async fn disable(
        &self,
        id: &str,
        reason: &str,
        now: &str,
    ) -> Result<(Subscription, bool), StoreError> {
        let row = sqlx::query(&format!(
            "UPDATE subscriptions SET enabled = 0, disabled_reason = $2, \
                revision = revision + 1, updated_at = $3 \
             WHERE id = $1 AND enabled = 1 RETURNING {COLUMNS}"
        ))
        .bind(id)
        .bind(reason)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => Ok((Subscription::from_row(&row)?, true)),
            None => Ok((self.get(id).await?, false)),
        }
    }

    /// Replaces the secret with `secret`; the old one keeps signing until `expires_ms`.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], [`StoreError::Database`] or [`StoreError::Corrupt`].
    pub async fn rotate_secret(
        &self,
        id: &str,
        secret: &str,
        expires_ms: i64,
        now: &str,
    ) -> Result<Subscription, StoreError> {
        let row = sqlx::query(&format!(
            "UPDATE subscriptions SET previous_secret = secret, secret = $2, \
                previous_secret_expires_ms = $3, revision = revision + 1, updated_at = $4 \
             WHERE id = $1 RETURNING {COLUMNS}"
        ))
        .bind(id)
        .bind(secret)
        .bind(expires_ms)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        Subscription::from_row(&row)
    }

    /// Replaces the ed25519 signing key with `key`; the old one keeps signing until
    /// `expires_ms`. A subscription without a signing key is left as it is (`None`).
    ///
    /// # Errors
    /// [`StoreError::NotFound`], [`StoreError::Database`] or [`StoreError::Corrupt`].
    pub async fn rotate_signing_key(
        &self,
        id: &str,
        key: &str,
        expires_ms: i64,
        now: &str,
    ) -> Result<Option<Subscription>, StoreError> {
        let row = sqlx::query(&format!(
            "UPDATE subscriptions SET previous_signing_key = signing_key, signing_key = $2, \
                previous_signing_key_expires_ms = $3, revision = revision + 1, updated_at = $4 \
             WHERE id = $1 AND signing_key IS NOT NULL RETURNING {COLUMNS}"
        ))
        .bind(id)
        .bind(key)
        .bind(expires_ms)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => Ok(Some(Subscription::from_row(&row)?)),
            None => self.get(id).await.map(|_| None),
        }
    }

    /// The signing keys of `consumer`'s subscriptions whose scheme signs `v1a`, with the
    /// previous key of a rotation and the end of its grace period, in subscription order.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn signing_keys_of(
        &self,
        consumer: &str,
    ) -> Result<Vec<(String, Option<String>, Option<i64>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT signing_key, previous_signing_key, previous_signing_key_expires_ms \
             FROM subscriptions WHERE consumer = $1 AND signature_scheme <> 'v1' \
             AND signing_key IS NOT NULL ORDER BY id",
        )
        .bind(consumer)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get("signing_key")?,
                    row.try_get("previous_signing_key")?,
                    row.try_get("previous_signing_key_expires_ms")?,
                ))
            })
            .collect()
    }

    /// Ends every rotation grace period (of a secret or a signing key) that is over at
    /// `now_ms`: the previous secret or key is dropped and the revision bumped. Returns the
    /// subscriptions changed.
    ///
    /// # Errors
    /// [`StoreError::Database`] or [`StoreError::Corrupt`].
    pub async fn expire_rotations(
        &self,
        now_ms: i64,
        now: &str,
    ) -> Result<Vec<Subscription>, StoreError> {
        // Every SET expression sees the row as it was, so each CASE tests the old expiry.
        let rows = sqlx::query(&format!(
            "UPDATE subscriptions SET \
                previous_secret = CASE WHEN previous_secret_expires_ms <= $1 \
                    THEN NULL ELSE previous_secret END, \
                previous_secret_expires_ms = CASE WHEN previous_secret_expires_ms <= $1 \
                    THEN NULL ELSE previous_secret_expires_ms END, \
                previous_signing_key = CASE WHEN previous_signing_key_expires_ms <= $1 \
                    THEN NULL ELSE previous_signing_key END, \
                previous_signing_key_expires_ms = CASE WHEN previous_signing_key_expires_ms <= $1 \
                    THEN NULL ELSE previous_signing_key_expires_ms END, \
                revision = revision + 1, updated_at = $2 \
             WHERE previous_secret_expires_ms <= $1 OR previous_signing_key_expires_ms <= $1 \
             RETURNING {COLUMNS}"
        ))
        .bind(now_ms)
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Subscription::from_row).collect()
    }

    /// Deletes a subscription and its replay jobs (a running one stops at its next step).
    ///
    /// # Errors
    /// [`StoreError::NotFound`] or [`StoreError::Database`].
    pub async fn delete(&self, id: &str) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM subscriptions WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        // Unreachable without their subscription either way; this only frees the rows.
        sqlx::query("DELETE FROM replay_jobs WHERE subscription_id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// A rate as stored: thousandths of a request per second (integers read back exactly on
/// both backends, and through the Any driver).
fn rate_millis(rate: f64) -> i64 {
    // Validated rates are 0.1 to 10,000.
    #[allow(clippy::cast_possible_truncation)]
    let millis = (rate * 1000.0).round() as i64;
    millis
}

fn rate_from_millis(millis: i64) -> f64 {
    // At most 10,000,000: exact in an f64.
    #[allow(clippy::cast_precision_loss)]
    let rate = millis as f64 / 1000.0;
    rate
}

/// Headers as stored: `NULL` when there are none.
fn headers_column(headers: Option<&BTreeMap<String, String>>) -> Option<String> {
    headers.filter(|h| !h.is_empty()).map(to_json)
}

fn encode_event_types(event_types: &[String]) -> String {
    // A list of strings always serialises.
    serde_json::to_string(event_types).unwrap_or_else(|_| String::from("[]"))
}

/// Adds `mode=rwc` (read, write, create) unless the URL already chooses a mode: the Any driver
/// takes SQLite options only from the URL.
fn sqlite_create_if_missing(url: &str) -> String {
    let query = url.split_once('?').map(|(_, q)| q);
    match query {
        Some(q) if q.split('&').any(|p| p.starts_with("mode=")) => url.to_owned(),
        Some(_) => format!("{url}&mode=rwc"),
        None => format!("{url}?mode=rwc"),
    }
}

/// The SQL migrations compiled into the binary (`migrations/<backend>/NNNN_name.sql`).
///
/// Embedded by hand rather than with `sqlx::migrate!`, which needs sqlx's `macros` feature
/// and with it a second build of SQLite for the proc-macro host.
#[derive(Debug)]
struct EmbeddedMigrations(&'static [(i64, &'static str, &'static str)]);

/// SQLite migrations: (version, description, SQL).
const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "subscriptions",
        include_str!("../migrations/sqlite/0001_subscriptions.sql"),
    ),
    (
        2,
        "tenants and records",
        include_str!("../migrations/sqlite/0002_tenants_and_records.sql"),
    ),
    (
        3,
        "event contract",
        include_str!("../migrations/sqlite/0003_event_contract.sql"),
    ),
    (
        4,
        "limits",
        include_str!("../migrations/sqlite/0004_limits.sql"),
    ),
    (
        5,
        "portal sessions",
        include_str!("../migrations/sqlite/0005_portal_sessions.sql"),
    ),
    (
        6,
        "key last used",
        include_str!("../migrations/sqlite/0006_key_last_used.sql"),
    ),
    (
        7,
        "replay jobs",
        include_str!("../migrations/sqlite/0007_replay_jobs.sql"),
    ),
    (
        8,
        "ordering",
        include_str!("../migrations/sqlite/0008_ordering.sql"),
    ),
    (
        9,
        "attempt headers",
        include_str!("../migrations/sqlite/0009_attempt_headers.sql"),
    ),
];

/// PostgreSQL migrations: the same versions, with PostgreSQL's DDL.
const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "subscriptions",
        include_str!("../migrations/postgres/0001_subscriptions.sql"),
    ),
    (
        2,
        "tenants and records",
        include_str!("../migrations/postgres/0002_tenants_and_records.sql"),
    ),
    (
        3,
        "event contract",
        include_str!("../migrations/postgres/0003_event_contract.sql"),
    ),
    (
        4,
        "limits",
        include_str!("../migrations/postgres/0004_limits.sql"),
    ),
    (
        5,
        "portal sessions",
        include_str!("../migrations/postgres/0005_portal_sessions.sql"),
    ),
    (
        6,
        "key last used",
        include_str!("../migrations/postgres/0006_key_last_used.sql"),
    ),
    (
        7,
        "replay jobs",
        include_str!("../migrations/postgres/0007_replay_jobs.sql"),
    ),
    (
        8,
        "ordering",
        include_str!("../migrations/postgres/0008_ordering.sql"),
    ),
    (
        9,
        "attempt headers",
        include_str!("../migrations/postgres/0009_attempt_headers.sql"),
    ),
];

impl EmbeddedMigrations {
    fn for_url(url: &str) -> Self {
        if url.starts_with("sqlite:") {
            Self(SQLITE_MIGRATIONS)
        } else {
            Self(POSTGRES_MIGRATIONS)
        }
    }
}

type ResolveResult = Result<Vec<Migration>, sqlx::error::BoxDynError>;

impl MigrationSource<'static> for EmbeddedMigrations {
    fn resolve(self) -> Pin<Box<dyn Future<Output = ResolveResult> + Send + 'static>> {
        let migrations = self
            .0
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    Cow::Borrowed(description),
                    MigrationType::Simple,
                    Cow::Borrowed(sql),
                    false,
                )
            })
            .collect();
        Box::pin(std::future::ready(Ok(migrations)))
    }
}

#[cfg(test)]
mod tests {
    use relay_shared::ids::new_id;

    use super::*;

    use super::testing::each_backend;

    /// Runs `$body(&Store)` as the test `$name` on SQLite and on PostgreSQL.
    macro_rules! on_each_backend {
        ($name:ident, $body:ident) => {
            #[tokio::test]
            async fn $name() {
                for (backend, store) in each_backend().await {
                    eprintln!("{}: {backend}", stringify!($name));
                    $body(&store).await;
                    store.close().await;
                }
            }
        };
    }

    /// A store in a fresh file under the temporary directory.
    async fn temp_store() -> (Store, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("consumer-api-store-{}", new_id("t")));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("relay.db");
        let store = Store::open(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        (store, dir)
    }

    fn subscription(consumer: Option<&str>) -> Subscription {
        Subscription {
            id: new_id("sub"),
            url: "https://example.com/hook".into(),
            event_types: vec!["order.*".into(), "invoice.#".into()],
            consumer: consumer.map(str::to_owned),
            description: Some("test".into()),
            enabled: true,
            secret: relay_shared::signing::generate_secret(),
            revision: 1,
            created_at: "2026-01-01T00:00:00Z".into(),
            updated_at: "2026-01-01T00:00:00Z".into(),
            rate_limit: None,
            max_in_flight: 64,
            ..Subscription::default()
        }
    }

    async fn row_counts_follow_the_tables(store: &Store) {
        let before = store.row_counts().await.unwrap();
        assert_eq!(
            before.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            COUNTED_TABLES
        );
        let count = |counts: &[(&str, i64)]| {
            counts
                .iter()
                .find(|(t, _)| *t == "subscriptions")
                .unwrap()
                .1
        };
        store.create(&subscription(None)).await.unwrap();
        store.create(&subscription(Some("acme"))).await.unwrap();
        assert_eq!(
            count(&store.row_counts().await.unwrap()),
            count(&before) + 2
        );
    }
    on_each_backend!(row_counts_on_each_backend, row_counts_follow_the_tables);

    #[tokio::test]
    async fn create_get_and_reopen_keep_every_field() {
        let (store, dir) = temp_store().await;
        let s = subscription(Some("acme"));
        store.create(&s).await.unwrap();
        assert_eq!(store.get(&s.id).await.unwrap(), s);
        assert!(matches!(
            store.get("sub_missing").await,
            Err(StoreError::NotFound)
        ));
        store.close().await;

        // Migrations are idempotent and the data survives a restart.
        let reopened = Store::open(&format!("sqlite://{}", dir.join("relay.db").display()))
            .await
            .unwrap();
        assert_eq!(reopened.get(&s.id).await.unwrap(), s);
        let mode: String = sqlx::query("PRAGMA journal_mode")
            .fetch_one(&reopened.pool)
            .await
            .unwrap()
            .try_get(0)
            .unwrap();
        assert_eq!(mode.to_ascii_lowercase(), "wal");
        reopened.close().await;
        std::fs::remove_dir_all(dir).unwrap();
    }

    on_each_backend!(list_reads_in_id_order, list_reads_in_id_order_on);

    async fn list_reads_in_id_order_on(store: &Store) {
        let mut ids = Vec::new();
        for i in 0..5 {
            let s = subscription(if i % 2 == 0 { Some("acme") } else { None });
            store.create(&s).await.unwrap();
            ids.push(s.id);
            // ULIDs made in the same millisecond are not ordered; keep creation order.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }

        let mut seen = Vec::new();
        let mut after = String::new();
        loop {
            let rows = store
                .list(&ListRequest {
                    after: after.clone(),
                    consumer: None,
                    limit: 2,
                })
                .await
                .unwrap();
            let Some(last) = rows.last() else { break };
            after = last.id.clone();
            seen.extend(rows.iter().map(|s| s.id.clone()));
        }
        assert_eq!(seen, ids);

        let acme = store
            .list(&ListRequest {
                after: String::new(),
                consumer: Some("acme".into()),
                limit: 10,
            })
            .await
            .unwrap();
        let acme_ids: Vec<_> = acme.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(
            acme_ids,
            [ids[0].as_str(), ids[2].as_str(), ids[4].as_str()]
        );
    }

    on_each_backend!(
        update_applies_only_given_fields_and_bumps_the_revision,
        update_applies_only_given_fields_and_bumps_the_revision_on
    );

    async fn update_applies_only_given_fields_and_bumps_the_revision_on(store: &Store) {
        let s = subscription(Some("acme"));
        store.create(&s).await.unwrap();

        let patch = SubscriptionPatch {
            enabled: Some(false),
            consumer: Some(None),
            ..SubscriptionPatch::default()
        };
        let updated = store
            .update(&s.id, &patch, "2026-02-02T00:00:00Z")
            .await
            .unwrap();
        assert_eq!(updated.revision, 2);
        assert!(!updated.enabled);
        assert_eq!(updated.consumer, None);
        assert_eq!(updated.description, s.description);
        assert_eq!(updated.url, s.url);
        assert_eq!(updated.event_types, s.event_types);
        assert_eq!(updated.created_at, s.created_at);
        assert_eq!(updated.updated_at, "2026-02-02T00:00:00Z");

        let patch = SubscriptionPatch {
            url: Some("http://other.example/x".into()),
            event_types: Some(vec!["a.b".into()]),
            description: Some(Some("new".into())),
            consumer: Some(Some("beta".into())),
            enabled: Some(true),
            rate_limit: Some(Some(12.5)),
            max_in_flight: Some(7),
            ordering: Some(Ordering::Key),
            ..SubscriptionPatch::default()
        };
        let updated = store
            .update(&s.id, &patch, "2026-02-03T00:00:00Z")
            .await
            .unwrap();
        assert_eq!(updated.revision, 3);
        assert_eq!(updated.url, "http://other.example/x");
        assert_eq!(updated.event_types, ["a.b"]);
        assert_eq!(updated.description.as_deref(), Some("new"));
        assert_eq!(updated.consumer.as_deref(), Some("beta"));
        assert!(updated.enabled);
        assert_eq!(updated.rate_limit, Some(12.5));
        assert_eq!(updated.max_in_flight, 7);
        assert_eq!(store.get(&s.id).await.unwrap(), updated);
        assert_eq!(updated.directory_entry().secrets, [s.secret.as_str()]);
        assert_eq!(updated.directory_entry().limits.rate_limit, Some(12.5));
        assert_eq!(updated.directory_entry().ordering, Ordering::Key);

        let cleared = SubscriptionPatch {
            rate_limit: Some(None),
            ..SubscriptionPatch::default()
        };
        let updated = store.update(&s.id, &cleared, "x").await.unwrap();
        assert_eq!((updated.rate_limit, updated.max_in_flight), (None, 7));

        let missing = store.update("sub_missing", &patch, "x").await;
        assert!(matches!(missing, Err(StoreError::NotFound)), "{missing:?}");
    }

    on_each_backend!(
        contract_fields_round_trip_and_clear,
        contract_fields_round_trip_and_clear_on
    );

    async fn contract_fields_round_trip_and_clear_on(store: &Store) {
        let first_key = relay_shared::signing::generate_asymmetric_key();
        let s = Subscription {
            signature_scheme: SignatureScheme::Both,
            signing_key: Some(first_key.clone()),
            filter: Some(serde_json::json!({"data.total": {"$gt": 100}})),
            headers: BTreeMap::from([("X-Tenant".to_owned(), "acme".to_owned())]),
            credentials: Some(Credentials::Bearer {
                token: "t0k".into(),
            }),
            ..subscription(Some("acme"))
        };
        store.create(&s).await.unwrap();
        assert_eq!(store.get(&s.id).await.unwrap(), s);
        let entry = s.directory_entry();
        assert_eq!(entry.signing_keys, [first_key.as_str()]);
        assert_eq!(entry.credentials, s.credentials);

        // A scheme change keeps the key held; clearing removes filter, headers, credentials.
        let patch = SubscriptionPatch {
            signature_scheme: Some(SignatureScheme::V1),
            signing_key: Some(relay_shared::signing::generate_asymmetric_key()),
            filter: Some(None),
            headers: Some(None),
            credentials: Some(None),
            ..SubscriptionPatch::default()
        };
        let updated = store.update(&s.id, &patch, "t1").await.unwrap();
        assert_eq!(updated.signature_scheme, SignatureScheme::V1);
        assert_eq!(updated.signing_key.as_deref(), Some(first_key.as_str()));
        assert!(
            updated.signing_keys(0).is_empty(),
            "v1 signs with no ed25519 key"
        );
        assert_eq!(
            (updated.filter, updated.headers.len(), updated.credentials),
            (None, 0, None)
        );
        assert!(store.signing_keys_of("acme").await.unwrap().is_empty());

        // A subscription without a key gets the one offered; rotation keeps the old one signing.
        let plain = subscription(Some("acme"));
        store.create(&plain).await.unwrap();
        assert_eq!(
            store
                .rotate_signing_key(&plain.id, "whsk_x", 5, "t2")
                .await
                .unwrap(),
            None,
            "no key, nothing to rotate"
        );
        let offered = relay_shared::signing::generate_asymmetric_key();
        let patch = SubscriptionPatch {
            signature_scheme: Some(SignatureScheme::V1a),
            signing_key: Some(offered.clone()),
            ..SubscriptionPatch::default()
        };
        let keyed = store.update(&plain.id, &patch, "t3").await.unwrap();
        assert_eq!(keyed.signing_key.as_deref(), Some(offered.as_str()));
        let next = relay_shared::signing::generate_asymmetric_key();
        let rotated = store
            .rotate_signing_key(&plain.id, &next, 10_000, "t4")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rotated.signing_keys(9_999), [next.clone(), offered.clone()]);
        assert_eq!(rotated.signing_keys(10_000), [next.as_str()]);
        assert_eq!(
            store.signing_keys_of("acme").await.unwrap(),
            [(next.clone(), Some(offered), Some(10_000))]
        );
        let ended = store.expire_rotations(10_000, "t5").await.unwrap();
        assert_eq!(ended.len(), 1);
        assert_eq!(
            (
                ended[0].previous_signing_key.as_ref(),
                ended[0].signing_key.as_ref()
            ),
            (None, Some(&next))
        );
        assert_eq!(ended[0].secret, plain.secret, "the secret is untouched");
    }

    on_each_backend!(delete_removes_once, delete_removes_once_on);

    async fn delete_removes_once_on(store: &Store) {
        let s = subscription(None);
        store.create(&s).await.unwrap();
        store.delete(&s.id).await.unwrap();
        assert!(matches!(store.get(&s.id).await, Err(StoreError::NotFound)));
        assert!(matches!(
            store.delete(&s.id).await,
            Err(StoreError::NotFound)
        ));
    }

    #[test]
    fn sqlite_urls_get_create_mode_unless_they_choose_one() {
        assert_eq!(
            sqlite_create_if_missing("sqlite://a.db"),
            "sqlite://a.db?mode=rwc"
        );
        assert_eq!(
            sqlite_create_if_missing("sqlite://a.db?cache=shared"),
            "sqlite://a.db?cache=shared&mode=rwc"
        );
        assert_eq!(
            sqlite_create_if_missing("sqlite://a.db?mode=ro"),
            "sqlite://a.db?mode=ro"
        );
    }
}
