//! What the recorder keeps: every event in order of recording (the pull cursor is the
//! store's own sequence, never the id), every delivery attempt, every dead letter, since
//! when each subscription has been failing without a success, and since when its circuit
//! breaker has been seen open (deliveries deferred as `circuit_open`) without a success.

use std::collections::HashMap;

use relay_shared::attempt::{AttemptOutcome, AttemptRecord, Headers};
use sqlx::{Row, any::AnyRow};

use super::{Store, StoreError};
use crate::clock::{now_ms, rfc3339_ms};

/// An event to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// The event id (`webhook-id`).
    pub id: String,
    /// Its type.
    pub event_type: String,
    /// The consumer it names, if any.
    pub consumer: Option<String>,
    /// Acceptance time, Unix milliseconds.
    pub accepted_ms: i64,
    /// The envelope JSON as published.
    pub body: String,
}

/// A recorded event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Position in the order of recording: the pull cursor.
    pub seq: i64,
    /// The event as recorded.
    pub event: NewEvent,
}

/// Which events a query may return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventScope<'a> {
    /// Every event.
    All,
    /// Events naming this consumer, and events naming none.
    ConsumerOrUnnamed(&'a str),
    /// Only events naming no consumer.
    Unnamed,
}

/// A recorded attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAttempt {
    /// Position in the order of recording: the delivery log cursor.
    pub seq: i64,
    /// The record as the dispatcher published it.
    pub record: AttemptRecord,
}

/// A dead letter to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDeadLetter {
    /// `dl_<ULID>`.
    pub id: String,
    /// The event.
    pub event_id: String,
    /// The subscription it was for.
    pub subscription_id: String,
    /// Attempts made.
    pub attempts: i64,
    /// The last error.
    pub last_error: Option<String>,
    /// The last HTTP status, if the endpoint answered.
    pub last_status: Option<i64>,
    /// The envelope JSON.
    pub body: String,
    /// When it was recorded, Unix milliseconds.
    pub dead_ms: i64,
    /// The same, RFC 3339.
    pub dead_at: String,
}

/// A recorded dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Position in the order of recording: the list cursor.
    pub seq: i64,
    /// What was recorded.
    pub letter: NewDeadLetter,
    /// When it was last redriven, RFC 3339.
    pub redriven_at: Option<String>,
}

/// A subscription whose circuit breaker had been seen open and which then had a success:
/// what `relay.endpoint.recovered` announces. Claimed by one row update, so each recovery
/// is reported once however many recorders run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// The subscription.
    pub subscription_id: String,
    /// When its circuit was first seen open (the first `circuit_open` deferral), Unix ms.
    pub circuit_opened_ms: i64,
    /// The first success after that, Unix ms.
    pub recovered_ms: i64,
}

/// Rows removed by one pruning.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Events.
    pub events: u64,
    /// Attempts.
    pub attempts: u64,
    /// Dead letters.
    pub dead_letters: u64,
}

pub(super) const EVENT_COLUMNS: &str = "seq, id, event_type, consumer, accepted_ms, body";
pub(super) const ATTEMPT_COLUMNS: &str = "seq, event_id, subscription_id, attempt, at, outcome, status, latency_ms, error, response_excerpt, next_attempt_at, request_headers, response_headers, response_headers_omitted";
const DEAD_COLUMNS: &str = "seq, id, event_id, subscription_id, attempts, last_error, last_status, body, dead_ms, dead_at, redriven_at";

pub(super) fn event_from_row(row: &AnyRow) -> Result<StoredEvent, StoreError> {
    Ok(StoredEvent {
        seq: row.try_get("seq")?,
        event: NewEvent {
            id: row.try_get("id")?,
            event_type: row.try_get("event_type")?,
            consumer: row.try_get("consumer")?,
            accepted_ms: row.try_get("accepted_ms")?,
            body: row.try_get("body")?,
        },
    })
}

/// The stored spelling of an outcome (its JSON name).
pub fn outcome_name(outcome: AttemptOutcome) -> String {
    serde_json::to_value(outcome)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

pub(super) fn attempt_from_row(row: &AnyRow) -> Result<StoredAttempt, StoreError> {
    let seq: i64 = row.try_get("seq")?;
    let outcome: String = row.try_get("outcome")?;
    let outcome =
        serde_json::from_value(serde_json::Value::String(outcome.clone())).map_err(|_| {
            StoreError::Corrupt {
                id: format!("attempt {seq}"),
                reason: format!("unknown outcome {outcome:?}"),
            }
        })?;
    let number = |name: &str| -> Result<i64, StoreError> { Ok(row.try_get::<i64, _>(name)?) };
    Ok(StoredAttempt {
        seq,
        record: AttemptRecord {
            event_id: row.try_get("event_id")?,
            subscription_id: row.try_get("subscription_id")?,
            attempt: u32::try_from(number("attempt")?).unwrap_or(u32::MAX),
            at: row.try_get("at")?,
            outcome,
            status: row
                .try_get::<Option<i64>, _>("status")?
                .and_then(|s| u16::try_from(s).ok()),
            latency_ms: u64::try_from(number("latency_ms")?).unwrap_or(0),
            error: row.try_get("error")?,
            response_excerpt: row.try_get("response_excerpt")?,
            next_attempt_at: row.try_get("next_attempt_at")?,
            request_headers: headers(row, "request_headers", seq)?,
            response_headers: headers(row, "response_headers", seq)?,
            response_headers_omitted: u32::try_from(number("response_headers_omitted")?)
                .unwrap_or(0),
        },
    })
}

/// A headers column: JSON `[[name, value], …]`, NULL for none.
fn headers(row: &AnyRow, column: &str, seq: i64) -> Result<Headers, StoreError> {
    let Some(text) = row.try_get::<Option<String>, _>(column)? else {
        return Ok(Headers::default());
    };
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
        id: format!("attempt {seq}"),
        reason: format!("{column}: {e}"),
    })
}

/// The stored form of a headers column.
fn headers_column(headers: &Headers) -> Option<String> {
    // Pairs of strings always serialise.
    (!headers.is_empty()).then(|| serde_json::to_string(headers).unwrap_or_default())
}

fn dead_from_row(row: &AnyRow) -> Result<DeadLetter, StoreError> {
    Ok(DeadLetter {
        seq: row.try_get("seq")?,
        letter: NewDeadLetter {
            id: row.try_get("id")?,
            event_id: row.try_get("event_id")?,
            subscription_id: row.try_get("subscription_id")?,
            attempts: row.try_get("attempts")?,
            last_error: row.try_get("last_error")?,
            last_status: row.try_get("last_status")?,
            body: row.try_get("body")?,
            dead_ms: row.try_get("dead_ms")?,
            dead_at: row.try_get("dead_at")?,
        },
        redriven_at: row.try_get("redriven_at")?,
    })
}

impl Store {
    /// Records events in one transaction; an id recorded before is skipped (the archive is
    /// at-least-once). Returns how many were new.
    ///
    /// # Errors
    /// [`StoreError::Database`]; nothing of the batch is then recorded.
    pub async fn insert_events(&self, events: &[NewEvent]) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        if self.postgres {
            // Sequence numbers are taken at insert but seen at commit: with several writers a
            // reader could pass a number whose transaction commits later. Writers take turns.
            sqlx::query("LOCK TABLE events IN SHARE ROW EXCLUSIVE MODE")
                .execute(&mut *tx)
                .await?;
        }
        // Multi-row statements: one round trip per chunk instead of one per event.
        let mut inserted = 0;
        for chunk in statement_chunks(events) {
            let sql = format!(
                "INSERT INTO events (id, event_type, consumer, accepted_ms, body) VALUES {} \
                 ON CONFLICT (id) DO NOTHING",
                placeholders(chunk.len(), 5, self.postgres)
            );
            let mut query = sqlx::query(&sql);
            for e in chunk {
                query = query
                    .bind(&e.id)
                    .bind(&e.event_type)
                    .bind(&e.consumer)
                    .bind(e.accepted_ms)
                    .bind(&e.body);
            }
            inserted += query.execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        Ok(inserted)
    }

    /// Records attempts in one transaction and keeps each subscription's failure streak (a
    /// success ends it, a failed request starts it if none is running) and circuit state (a
    /// `circuit_open` deferral marks it open if it is not, a success closes it). Returns the
    /// recoveries: subscriptions whose open circuit a success of this batch closed.
    ///
    /// # Errors
    /// [`StoreError::Database`]; nothing of the batch is then recorded.
    pub async fn insert_attempts(
        &self,
        attempts: &[AttemptRecord],
    ) -> Result<Vec<Recovery>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let at_ms: Vec<i64> = attempts
            .iter()
            .map(|a| rfc3339_ms(&a.at).unwrap_or_else(now_ms))
            .collect();
        let rows: Vec<(&AttemptRecord, i64)> = attempts.iter().zip(at_ms).collect();
        for chunk in statement_chunks(&rows) {
            let sql = format!(
                "INSERT INTO attempts (event_id, subscription_id, attempt, at, at_ms, outcome, \
                    status, latency_ms, error, response_excerpt, next_attempt_at, \
                    request_headers, response_headers, response_headers_omitted) VALUES {}",
                placeholders(chunk.len(), 14, self.postgres)
            );
            let mut query = sqlx::query(&sql);
            for (a, at_ms) in chunk {
                query = query
                    .bind(&a.event_id)
                    .bind(&a.subscription_id)
                    .bind(i64::from(a.attempt))
                    .bind(&a.at)
                    .bind(*at_ms)
                    .bind(outcome_name(a.outcome))
                    .bind(a.status.map(i64::from))
                    .bind(i64::try_from(a.latency_ms).unwrap_or(i64::MAX))
                    .bind(&a.error)
                    .bind(&a.response_excerpt)
                    .bind(&a.next_attempt_at)
                    .bind(headers_column(&a.request_headers))
                    .bind(headers_column(&a.response_headers))
                    .bind(i64::from(a.response_headers_omitted));
            }
            query.execute(&mut *tx).await?;
        }
        // One streak change per subscription per batch, equal to applying the batch in order.
        let changes = streaks(&rows);
        // Most of a batch is successes to subscriptions without a streak: their ends are one
        // statement per chunk that writes only the rows that had one (no row is no streak),
        // not an upsert per subscription (most of consumer-api's cost at 100k subscriptions).
        let ended: Vec<&str> = changes
            .iter()
            .filter(|(_, streak)| *streak == Streak::Ended)
            .map(|(id, _)| *id)
            .collect();
        for chunk in statement_chunks(&ended) {
            let sql = format!(
                "UPDATE subscription_health SET failing_since_ms = NULL \
                 WHERE failing_since_ms IS NOT NULL AND subscription_id IN ({})",
                parameter_list(chunk.len(), self.postgres)
            );
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(*id);
            }
            query.execute(&mut *tx).await?;
        }
        for (subscription_id, streak) in changes {
            let query = match streak {
                Streak::Ended => continue,
                Streak::Restarted(since) => sqlx::query(
                    "INSERT INTO subscription_health (subscription_id, failing_since_ms) \
                     VALUES ($1, $2) ON CONFLICT (subscription_id) \
                     DO UPDATE SET failing_since_ms = excluded.failing_since_ms",
                )
                .bind(subscription_id)
                .bind(since),
                Streak::Continued(since) => sqlx::query(
                    "INSERT INTO subscription_health (subscription_id, failing_since_ms) \
                     VALUES ($1, $2) ON CONFLICT (subscription_id) DO UPDATE SET \
                     failing_since_ms = COALESCE(subscription_health.failing_since_ms, \
                                                 excluded.failing_since_ms)",
                )
                .bind(subscription_id)
                .bind(since),
            };
            query.execute(&mut *tx).await?;
        }
        let seen = circuits(&rows);
        let succeeded: Vec<&str> = seen
            .iter()
            .filter(|(_, circuit)| circuit.success_ms.is_some())
            .map(|(id, _)| *id)
            .collect();
        // Which of them have an open circuit stored: one read per chunk, not per subscription.
        let mut stored_open: HashMap<String, i64> = HashMap::new();
        for chunk in statement_chunks(&succeeded) {
            let sql = format!(
                "SELECT subscription_id, circuit_opened_ms FROM subscription_health \
                 WHERE circuit_opened_ms IS NOT NULL AND subscription_id IN ({})",
                parameter_list(chunk.len(), self.postgres)
            );
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(*id);
            }
            for row in query.fetch_all(&mut *tx).await? {
                stored_open.insert(row.try_get(0)?, row.try_get(1)?);
            }
        }
        let mut recoveries = Vec::new();
        for (subscription_id, circuit) in seen {
            if let Some(recovered_ms) = circuit.success_ms {
                // Clear the open time only if it is still the one read: of concurrent
                // recorders, one changes the row and announces the recovery.
                let claimed = match stored_open.get(subscription_id) {
                    Some(&opened_ms) => {
                        let cleared = sqlx::query(
                            "UPDATE subscription_health SET circuit_opened_ms = NULL \
                             WHERE subscription_id = $1 AND circuit_opened_ms = $2",
                        )
                        .bind(subscription_id)
                        .bind(opened_ms)
                        .execute(&mut *tx)
                        .await?;
                        (cleared.rows_affected() == 1).then_some(opened_ms)
                    }
                    // Seen open and closed within this batch: never stored.
                    None => circuit.opened_before_success,
                };
                if let Some(circuit_opened_ms) = claimed {
                    recoveries.push(Recovery {
                        subscription_id: subscription_id.to_owned(),
                        circuit_opened_ms,
                        recovered_ms,
                    });
                }
            }
            if let Some(opened_ms) = circuit.open_at_end() {
                sqlx::query(
                    "INSERT INTO subscription_health \
                        (subscription_id, failing_since_ms, circuit_opened_ms) \
                     VALUES ($1, NULL, $2) ON CONFLICT (subscription_id) DO UPDATE SET \
                     circuit_opened_ms = COALESCE(subscription_health.circuit_opened_ms, \
                                                  excluded.circuit_opened_ms)",
                )
                .bind(subscription_id)
                .bind(opened_ms)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(recoveries)
    }

    /// Records dead letters in one transaction.
    ///
    /// # Errors
    /// [`StoreError::Database`]; nothing of the batch is then recorded.
    pub async fn insert_dead_letters(&self, letters: &[NewDeadLetter]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for d in letters {
            sqlx::query(
                "INSERT INTO dead_letters (id, event_id, subscription_id, attempts, last_error, \
                    last_status, body, dead_ms, dead_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(&d.id)
            .bind(&d.event_id)
            .bind(&d.subscription_id)
            .bind(d.attempts)
            .bind(&d.last_error)
            .bind(d.last_status)
            .bind(&d.body)
            .bind(d.dead_ms)
            .bind(&d.dead_at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Up to `limit` events after `after` (a `seq`) in `scope`, in order of recording.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn events_after(
        &self,
        after: i64,
        scope: EventScope<'_>,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.events_where(after, scope, None, limit).await
    }

    /// Up to `limit` events after `after` in `scope` accepted in `[since_ms, until_ms)`.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn events_in_window(
        &self,
        after: i64,
        scope: EventScope<'_>,
        (since_ms, until_ms): (i64, i64),
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.events_where(after, scope, Some((since_ms, until_ms)), limit)
            .await
    }

    async fn events_where(
        &self,
        after: i64,
        scope: EventScope<'_>,
        window: Option<(i64, i64)>,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let mut sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE seq > $1");
        let mut next = 2;
        match scope {
            EventScope::All => {}
            EventScope::ConsumerOrUnnamed(_) => {
                sql.push_str(&format!(" AND (consumer = ${next} OR consumer IS NULL)"));
                next += 1;
            }
            EventScope::Unnamed => sql.push_str(" AND consumer IS NULL"),
        }
        if window.is_some() {
            sql.push_str(&format!(
                " AND accepted_ms >= ${} AND accepted_ms < ${}",
                next,
                next + 1
            ));
            next += 2;
        }
        sql.push_str(&format!(" ORDER BY seq LIMIT ${next}"));
        let mut query = sqlx::query(&sql).bind(after);
        if let EventScope::ConsumerOrUnnamed(consumer) = scope {
            query = query.bind(consumer);
        }
        if let Some((since, until)) = window {
            query = query.bind(since).bind(until);
        }
        let rows = query.bind(i64::from(limit)).fetch_all(&self.pool).await?;
        rows.iter().map(event_from_row).collect()
    }

    /// One event by id.
    ///
    /// # Errors
    /// [`StoreError::Missing`] or [`StoreError::Database`].
    pub async fn event(&self, id: &str) -> Result<StoredEvent, StoreError> {
        let row = sqlx::query(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::Missing("event"))?;
        event_from_row(&row)
    }

    /// A subscription's attempts after `after`, optionally of one outcome, in order.
    ///
    /// # Errors
    /// [`StoreError::Database`] or [`StoreError::Corrupt`].
    pub async fn attempts(
        &self,
        subscription_id: &str,
        outcome: Option<AttemptOutcome>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<StoredAttempt>, StoreError> {
        let rows = match outcome {
            None => {
                sqlx::query(&format!(
                    "SELECT {ATTEMPT_COLUMNS} FROM attempts \
                     WHERE subscription_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
                ))
                .bind(subscription_id)
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?
            }
            Some(outcome) => {
                sqlx::query(&format!(
                    "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE subscription_id = $1 \
                     AND outcome = $2 AND seq > $3 ORDER BY seq LIMIT $4"
                ))
                .bind(subscription_id)
                .bind(outcome_name(outcome))
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(attempt_from_row).collect()
    }

    /// Every attempt at delivering one event (bounded), in order.
    ///
    /// # Errors
    /// [`StoreError::Database`] or [`StoreError::Corrupt`].
    pub async fn attempts_for_event(
        &self,
        event_id: &str,
    ) -> Result<Vec<StoredAttempt>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE event_id = $1 ORDER BY seq LIMIT 1000"
        ))
        .bind(event_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(attempt_from_row).collect()
    }

    /// Dead letters after `after`, of one subscription and/or of one consumer's subscriptions.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn dead_letters(
        &self,
        subscription_id: Option<&str>,
        consumer: Option<&str>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let columns = DEAD_COLUMNS
            .split(", ")
            .map(|c| format!("d.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut sql = format!(
            "SELECT {columns} FROM dead_letters d LEFT JOIN subscriptions s \
             ON s.id = d.subscription_id WHERE d.seq > $1"
        );
        let mut next = 2;
        if subscription_id.is_some() {
            sql.push_str(&format!(" AND d.subscription_id = ${next}"));
            next += 1;
        }
        if consumer.is_some() {
            sql.push_str(&format!(" AND s.consumer = ${next}"));
            next += 1;
        }
        sql.push_str(&format!(" ORDER BY d.seq LIMIT ${next}"));
        let mut query = sqlx::query(&sql).bind(after);
        if let Some(id) = subscription_id {
            query = query.bind(id);
        }
        if let Some(consumer) = consumer {
            query = query.bind(consumer);
        }
        let rows = query.bind(i64::from(limit)).fetch_all(&self.pool).await?;
        rows.iter().map(dead_from_row).collect()
    }

    /// One dead letter by id.
    ///
    /// # Errors
    /// [`StoreError::Missing`] or [`StoreError::Database`].
    pub async fn dead_letter(&self, id: &str) -> Result<DeadLetter, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {DEAD_COLUMNS} FROM dead_letters WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::Missing("dead letter"))?;
        dead_from_row(&row)
    }

    /// A subscription's dead letters not redriven yet, oldest first, at most `limit`.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn pending_dead_letters(
        &self,
        subscription_id: &str,
        limit: u32,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {DEAD_COLUMNS} FROM dead_letters \
             WHERE subscription_id = $1 AND redriven_at IS NULL ORDER BY seq LIMIT $2"
        ))
        .bind(subscription_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(dead_from_row).collect()
    }

    /// Marks a dead letter redriven at `now` (it stays listed, as history).
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn mark_redriven(&self, id: &str, now: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE dead_letters SET redriven_at = $2 WHERE id = $1")
            .bind(id)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Enabled subscriptions failing without a success since `before_ms` or earlier, with
    /// the start of their streak.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn failing_since(&self, before_ms: i64) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT h.subscription_id, h.failing_since_ms FROM subscription_health h \
             JOIN subscriptions s ON s.id = h.subscription_id \
             WHERE s.enabled = 1 AND h.failing_since_ms IS NOT NULL AND h.failing_since_ms <= $1",
        )
        .bind(before_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// Forgets a subscription's failure streak (it was disabled, or enabled again).
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn reset_health(&self, subscription_id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM subscription_health WHERE subscription_id = $1")
            .bind(subscription_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Removes what was recorded before `before_ms`.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn prune(&self, before_ms: i64) -> Result<Pruned, StoreError> {
        let mut pruned = Pruned::default();
        for (sql, count) in [
            (
                "DELETE FROM events WHERE accepted_ms < $1",
                &mut pruned.events,
            ),
            (
                "DELETE FROM attempts WHERE at_ms < $1",
                &mut pruned.attempts,
            ),
            (
                "DELETE FROM dead_letters WHERE dead_ms < $1",
                &mut pruned.dead_letters,
            ),
        ] {
            *count = sqlx::query(sql)
                .bind(before_ms)
                .execute(&self.pool)
                .await?
                .rows_affected();
        }
        Ok(pruned)
    }
}

/// Rows per multi-row INSERT, largest first. A batch is cut into chunks of these sizes only,
/// so each table has at most seven distinct statements, all of which stay in the connection's
/// prepared-statement cache; a chunk of each batch's own size was parsed again almost every
/// time (11 % of consumer-api's CPU under relay-bench (a)). 14 columns × 64 rows stays far
/// below every bind limit.
const CHUNK_ROWS: [usize; 7] = [64, 32, 16, 8, 4, 2, 1];

/// `rows` cut into chunks of [`CHUNK_ROWS`] sizes, in order.
fn statement_chunks<T>(rows: &[T]) -> impl Iterator<Item = &[T]> {
    let mut rest = rows;
    std::iter::from_fn(move || {
        let size = CHUNK_ROWS.into_iter().find(|&n| n <= rest.len())?;
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        Some(chunk)
    })
}

/// The VALUES list for `rows` rows of `columns` values: `($1, $2), ($3, $4)` for PostgreSQL,
/// `(?, ?), (?, ?)` for SQLite. SQLite looks a numbered parameter up by a linear scan of the
/// statement's parameter names, at parse and again at every bind, which made a 1,400-value
/// INSERT quadratic (30 % of consumer-api's CPU); anonymous parameters are bound in order.
fn placeholders(rows: usize, columns: usize, numbered: bool) -> String {
    let mut sql = String::with_capacity(rows * columns * 6);
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for column in 0..columns {
            if column > 0 {
                sql.push_str(", ");
            }
            if numbered {
                sql.push('$');
                sql.push_str(&(row * columns + column + 1).to_string());
            } else {
                sql.push('?');
            }
        }
        sql.push(')');
    }
    sql
}

/// The parameters of an `IN (...)` list of `n` values: `$1, $2` for PostgreSQL, `?, ?` for
/// SQLite (see [`placeholders`]).
fn parameter_list(n: usize, numbered: bool) -> String {
    if numbered {
        (1..=n)
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ")
    } else {
        vec!["?"; n].join(", ")
    }
}

/// What a batch of attempts does to one subscription's failure streak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Streak {
    /// Its last request succeeded: no streak.
    Ended,
    /// A success, then failures from this time: a new streak.
    Restarted(i64),
    /// Only failures: the streak runs on, or starts at this time if none was running.
    Continued(i64),
}

/// The streak change per subscription, in first-seen order: a success ends a streak, a
/// failed request starts one if none is running; deferrals and the like change nothing.
fn streaks<'a>(rows: &[(&'a AttemptRecord, i64)]) -> Vec<(&'a str, Streak)> {
    let mut changes: Vec<(&'a str, Streak)> = Vec::new();
    let mut index: HashMap<&'a str, usize> = HashMap::new();
    for (a, at_ms) in rows {
        let failed = matches!(
            a.outcome,
            AttemptOutcome::RetryScheduled | AttemptOutcome::Dead
        );
        if !failed && a.outcome != AttemptOutcome::Success {
            continue;
        }
        let id = a.subscription_id.as_str();
        let position = index.get(id).copied();
        let next = match (position.map(|i| changes[i].1), failed) {
            (_, false) => Streak::Ended,
            (None, true) => Streak::Continued(*at_ms),
            (Some(Streak::Ended), true) => Streak::Restarted(*at_ms),
            (Some(kept), true) => kept,
        };
        match position {
            Some(i) => changes[i].1 = next,
            None => {
                index.insert(id, changes.len());
                changes.push((id, next));
            }
        }
    }
    changes
}

/// What a batch of attempts says of one subscription's circuit breaker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Circuit {
    /// The first `circuit_open` before the batch's first success.
    opened_before_success: Option<i64>,
    /// The batch's first success.
    success_ms: Option<i64>,
    /// The first `circuit_open` after the batch's last success.
    opened_after_success: Option<i64>,
}

impl Circuit {
    /// When the circuit is (first) seen open at the end of the batch, if it is.
    fn open_at_end(&self) -> Option<i64> {
        if self.success_ms.is_some() {
            self.opened_after_success
        } else {
            self.opened_before_success
        }
    }
}

/// The circuit evidence per subscription, in first-seen order; subscriptions with neither a
/// `circuit_open` deferral nor a success are left out.
fn circuits<'a>(rows: &[(&'a AttemptRecord, i64)]) -> Vec<(&'a str, Circuit)> {
    let mut seen: Vec<(&'a str, Circuit)> = Vec::new();
    let mut index: HashMap<&'a str, usize> = HashMap::new();
    for (a, at_ms) in rows {
        if !matches!(
            a.outcome,
            AttemptOutcome::CircuitOpen | AttemptOutcome::Success
        ) {
            continue;
        }
        let id = a.subscription_id.as_str();
        let i = *index.entry(id).or_insert_with(|| {
            seen.push((id, Circuit::default()));
            seen.len() - 1
        });
        let circuit = &mut seen[i].1;
        if a.outcome == AttemptOutcome::Success {
            circuit.success_ms.get_or_insert(*at_ms);
            circuit.opened_after_success = None;
        } else if circuit.success_ms.is_none() {
            circuit.opened_before_success.get_or_insert(*at_ms);
        } else {
            circuit.opened_after_success.get_or_insert(*at_ms);
        }
    }
    seen
}

#[cfg(test)]
mod streak_tests {
    use relay_shared::attempt::{AttemptOutcome, AttemptRecord};

    use super::{
        Circuit, Streak, circuits, parameter_list, placeholders, statement_chunks, streaks,
    };

    fn attempt(subscription: &str, outcome: AttemptOutcome) -> AttemptRecord {
        AttemptRecord {
            event_id: "evt_1".into(),
            subscription_id: subscription.into(),
            attempt: 1,
            at: "2026-01-01T00:00:00Z".into(),
            outcome,
            status: None,
            latency_ms: 1,
            error: None,
            response_excerpt: None,
            next_attempt_at: None,
            request_headers: relay_shared::attempt::Headers::default(),
            response_headers: relay_shared::attempt::Headers::default(),
            response_headers_omitted: 0,
        }
    }

    #[test]
    fn in_lists_are_numbered_for_postgres_and_anonymous_for_sqlite() {
        assert_eq!(parameter_list(3, true), "$1, $2, $3");
        assert_eq!(parameter_list(2, false), "?, ?");
        assert_eq!(parameter_list(1, false), "?");
    }

    #[test]
    fn a_batch_collapses_to_what_applying_it_in_order_would_do() {
        use AttemptOutcome::{CircuitOpen, Dead, RetryScheduled, Success};
        let records = [
            attempt("a", RetryScheduled),
            attempt("a", Success),
            attempt("a", RetryScheduled),
            attempt("a", Dead),
            attempt("b", Dead),
            attempt("b", RetryScheduled),
            attempt("c", RetryScheduled),
            attempt("c", Success),
            attempt("d", CircuitOpen),
        ];
        let rows: Vec<(&AttemptRecord, i64)> = records.iter().zip(1..).collect();
        assert_eq!(
            streaks(&rows),
            [
                ("a", Streak::Restarted(3)),
                ("b", Streak::Continued(5)),
                ("c", Streak::Ended)
            ]
        );
        assert_eq!(placeholders(2, 3, true), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(placeholders(2, 2, false), "(?, ?), (?, ?)");
    }

    #[test]
    fn a_batch_is_cut_into_cached_statement_sizes_in_order() {
        let rows: Vec<usize> = (0..100).collect();
        let chunks: Vec<&[usize]> = statement_chunks(&rows).collect();
        assert_eq!(
            chunks.iter().map(|c| c.len()).collect::<Vec<_>>(),
            [64, 32, 4]
        );
        assert_eq!(chunks.concat(), rows);
        assert_eq!(statement_chunks(&rows[..7]).count(), 3);
        assert_eq!(statement_chunks::<usize>(&[]).count(), 0);
    }

    #[test]
    fn circuit_evidence_is_what_applying_the_batch_in_order_would_show() {
        use AttemptOutcome::{CircuitOpen, RetryScheduled, Success};
        let records = [
            attempt("a", CircuitOpen),
            attempt("a", CircuitOpen),
            attempt("a", Success),
            attempt("b", Success),
            attempt("b", CircuitOpen),
            attempt("b", Success),
            attempt("b", CircuitOpen),
            attempt("c", CircuitOpen),
            attempt("d", RetryScheduled),
        ];
        let rows: Vec<(&AttemptRecord, i64)> = records.iter().zip(1..).collect();
        let found = circuits(&rows);
        let circuit = |o, s, a| Circuit {
            opened_before_success: o,
            success_ms: s,
            opened_after_success: a,
        };
        assert_eq!(
            found,
            [
                ("a", circuit(Some(1), Some(3), None)),
                ("b", circuit(None, Some(4), Some(7))),
                ("c", circuit(Some(8), None, None)),
            ]
        );
        let open: Vec<Option<i64>> = found.iter().map(|(_, c)| c.open_at_end()).collect();
        assert_eq!(open, [None, Some(7), Some(8)]);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::{Subscription, testing::each_backend};

    pub(crate) fn event(
        id: &str,
        event_type: &str,
        consumer: Option<&str>,
        accepted_ms: i64,
    ) -> NewEvent {
        NewEvent {
            id: id.into(),
            event_type: event_type.into(),
            consumer: consumer.map(str::to_owned),
            accepted_ms,
            body: format!(r#"{{"id":"{id}","type":"{event_type}"}}"#),
        }
    }

    pub(crate) fn attempt(sub: &str, outcome: AttemptOutcome, at: &str) -> AttemptRecord {
        AttemptRecord {
            event_id: "e1".into(),
            subscription_id: sub.into(),
            attempt: 1,
            at: at.into(),
            outcome,
            status: Some(500),
            latency_ms: 12,
            error: Some("HTTP 500".into()),
            response_excerpt: Some("oops".into()),
            next_attempt_at: None,
            request_headers: relay_shared::attempt::Headers::default(),
            response_headers: relay_shared::attempt::Headers::default(),
            response_headers_omitted: 0,
        }
    }

    pub(crate) fn subscription(id: &str, consumer: Option<&str>) -> Subscription {
        Subscription {
            id: id.into(),
            url: "https://example.com/".into(),
            event_types: vec!["#".into()],
            consumer: consumer.map(str::to_owned),
            description: None,
            enabled: true,
            secret: "whsec_AAAA".into(),
            revision: 1,
            created_at: "2026-01-01T00:00:00Z".into(),
            updated_at: "2026-01-01T00:00:00Z".into(),
            max_in_flight: 64,
            ..Subscription::default()
        }
    }

    #[tokio::test]
    async fn events_keep_their_order_scope_and_window_on_every_backend() {
        for (backend, store) in each_backend().await {
            let batch = [
                event("a", "order.created", None, 1_000),
                event("b", "order.created", Some("acme"), 2_000),
                event("c", "order.paid", Some("globex"), 3_000),
            ];
            assert_eq!(store.insert_events(&batch).await.unwrap(), 3);
            // Redelivered by the broker: recorded once.
            assert_eq!(
                store
                    .insert_events(&[batch[0].clone(), event("d", "x", None, 4_000)])
                    .await
                    .unwrap(),
                1
            );
            let all = store.events_after(0, EventScope::All, 10).await.unwrap();
            let ids: Vec<_> = all.iter().map(|e| e.event.id.as_str()).collect();
            assert_eq!(ids, ["a", "b", "c", "d"], "{backend}");
            assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
            assert_eq!(all[1].event, batch[1]);

            let page = store
                .events_after(all[1].seq, EventScope::All, 1)
                .await
                .unwrap();
            assert_eq!(page[0].event.id, "c");
            let acme = store
                .events_after(0, EventScope::ConsumerOrUnnamed("acme"), 10)
                .await
                .unwrap();
            let ids: Vec<_> = acme.iter().map(|e| e.event.id.as_str()).collect();
            assert_eq!(ids, ["a", "b", "d"]);
            let unnamed = store
                .events_after(0, EventScope::Unnamed, 10)
                .await
                .unwrap();
            assert_eq!(unnamed.len(), 2);
            let window = store
                .events_in_window(0, EventScope::All, (2_000, 4_000), 10)
                .await
                .unwrap();
            let ids: Vec<_> = window.iter().map(|e| e.event.id.as_str()).collect();
            assert_eq!(
                ids,
                ["b", "c"],
                "{backend}: since inclusive, until exclusive"
            );
            assert_eq!(store.event("c").await.unwrap().event, batch[2]);
            assert!(matches!(
                store.event("zz").await,
                Err(StoreError::Missing("event"))
            ));

            let pruned = store.prune(2_500).await.unwrap();
            assert_eq!(pruned.events, 2);
            assert_eq!(
                store
                    .events_after(0, EventScope::All, 10)
                    .await
                    .unwrap()
                    .len(),
                2
            );
            store.close().await;
        }
    }

    #[tokio::test]
    async fn attempts_and_failure_streaks_on_every_backend() {
        for (backend, store) in each_backend().await {
            store.create(&subscription("sub_a", None)).await.unwrap();
            store.create(&subscription("sub_b", None)).await.unwrap();
            store
                .insert_attempts(&[
                    attempt(
                        "sub_a",
                        AttemptOutcome::RetryScheduled,
                        "2026-01-01T00:00:00Z",
                    ),
                    attempt(
                        "sub_a",
                        AttemptOutcome::RetryScheduled,
                        "2026-01-02T00:00:00Z",
                    ),
                    attempt(
                        "sub_b",
                        AttemptOutcome::RetryScheduled,
                        "2026-01-01T00:00:00Z",
                    ),
                    attempt("sub_b", AttemptOutcome::Success, "2026-01-03T00:00:00Z"),
                ])
                .await
                .unwrap();
            let log = store.attempts("sub_a", None, 0, 10).await.unwrap();
            assert_eq!(log.len(), 2, "{backend}");
            assert_eq!(
                log[0].record,
                attempt(
                    "sub_a",
                    AttemptOutcome::RetryScheduled,
                    "2026-01-01T00:00:00Z"
                )
            );
            let next = store.attempts("sub_a", None, log[0].seq, 10).await.unwrap();
            assert_eq!(next.len(), 1);
            let ok = store
                .attempts("sub_b", Some(AttemptOutcome::Success), 0, 10)
                .await
                .unwrap();
            assert_eq!(ok.len(), 1);
            assert_eq!(store.attempts_for_event("e1").await.unwrap().len(), 4);

            let jan_1 = rfc3339_ms("2026-01-01T00:00:00Z").unwrap();
            let failing = store.failing_since(jan_1 + 1).await.unwrap();
            assert_eq!(
                failing,
                [("sub_a".to_owned(), jan_1)],
                "{backend}: the streak starts at the first failure; a success ends it"
            );
            assert!(store.failing_since(jan_1 - 1).await.unwrap().is_empty());
            // A later batch's successes end stored streaks (one statement for all the ends).
            store
                .insert_attempts(&[
                    attempt("sub_b", AttemptOutcome::Success, "2026-01-03T00:00:01Z"),
                    attempt("sub_a", AttemptOutcome::Success, "2026-01-03T00:00:02Z"),
                ])
                .await
                .unwrap();
            assert!(
                store.failing_since(i64::MAX).await.unwrap().is_empty(),
                "{backend}: a success in a later batch ends the streak"
            );
            let fail_at = "2026-01-03T00:00:03Z";
            store
                .insert_attempts(&[attempt("sub_a", AttemptOutcome::Dead, fail_at)])
                .await
                .unwrap();
            assert_eq!(
                store.failing_since(i64::MAX).await.unwrap(),
                [("sub_a".to_owned(), rfc3339_ms(fail_at).unwrap())],
                "{backend}: a new streak"
            );
            store.reset_health("sub_a").await.unwrap();
            assert!(store.failing_since(i64::MAX).await.unwrap().is_empty());

            // A circuit seen open, then a success: one recovery, reported once.
            let open_at = "2026-01-04T00:00:00Z";
            let none = store
                .insert_attempts(&[attempt("sub_a", AttemptOutcome::CircuitOpen, open_at)])
                .await
                .unwrap();
            assert!(none.is_empty(), "{backend}");
            let later = attempt("sub_a", AttemptOutcome::CircuitOpen, "2026-01-04T00:01:00Z");
            assert!(store.insert_attempts(&[later]).await.unwrap().is_empty());
            let ok_at = "2026-01-04T00:02:00Z";
            let recovered = store
                .insert_attempts(&[attempt("sub_a", AttemptOutcome::Success, ok_at)])
                .await
                .unwrap();
            assert_eq!(
                recovered,
                [Recovery {
                    subscription_id: "sub_a".into(),
                    circuit_opened_ms: rfc3339_ms(open_at).unwrap(),
                    recovered_ms: rfc3339_ms(ok_at).unwrap(),
                }],
                "{backend}: the first time it was seen open"
            );
            let again = attempt("sub_a", AttemptOutcome::Success, "2026-01-04T00:03:00Z");
            assert!(
                store.insert_attempts(&[again]).await.unwrap().is_empty(),
                "{backend}: a closed circuit does not recover twice"
            );
            // Open and recovered within one batch.
            let recovered = store
                .insert_attempts(&[
                    attempt("sub_b", AttemptOutcome::CircuitOpen, open_at),
                    attempt("sub_b", AttemptOutcome::Success, ok_at),
                ])
                .await
                .unwrap();
            assert_eq!(recovered.len(), 1, "{backend}");
            assert_eq!(recovered[0].subscription_id, "sub_b");
            // Two stored open circuits, closed by one batch: both recover.
            let reopen_at = "2026-01-05T00:00:00Z";
            store
                .insert_attempts(&[
                    attempt("sub_a", AttemptOutcome::CircuitOpen, reopen_at),
                    attempt("sub_b", AttemptOutcome::CircuitOpen, reopen_at),
                ])
                .await
                .unwrap();
            let mut recovered = store
                .insert_attempts(&[
                    attempt("sub_b", AttemptOutcome::Success, "2026-01-05T00:01:00Z"),
                    attempt("sub_a", AttemptOutcome::Success, "2026-01-05T00:01:00Z"),
                ])
                .await
                .unwrap();
            recovered.sort_by(|x, y| x.subscription_id.cmp(&y.subscription_id));
            assert_eq!(
                recovered
                    .iter()
                    .map(|r| (r.subscription_id.as_str(), r.circuit_opened_ms))
                    .collect::<Vec<_>>(),
                [
                    ("sub_a", rfc3339_ms(reopen_at).unwrap()),
                    ("sub_b", rfc3339_ms(reopen_at).unwrap())
                ],
                "{backend}"
            );
            store.close().await;
        }
    }

    #[tokio::test]
    async fn dead_letters_list_redrive_state_and_tenant_scope_on_every_backend() {
        for (backend, store) in each_backend().await {
            store
                .create(&subscription("sub_a", Some("acme")))
                .await
                .unwrap();
            store
                .create(&subscription("sub_g", Some("globex")))
                .await
                .unwrap();
            let letter = |id: &str, sub: &str| NewDeadLetter {
                id: id.into(),
                event_id: "e1".into(),
                subscription_id: sub.into(),
                attempts: 8,
                last_error: Some("HTTP 500".into()),
                last_status: Some(500),
                body: "{}".into(),
                dead_ms: 5_000,
                dead_at: "2026-01-01T00:00:05Z".into(),
            };
            store
                .insert_dead_letters(&[
                    letter("dl_1", "sub_a"),
                    letter("dl_2", "sub_g"),
                    letter("dl_3", "sub_a"),
                ])
                .await
                .unwrap();
            let all = store.dead_letters(None, None, 0, 10).await.unwrap();
            assert_eq!(all.len(), 3, "{backend}");
            assert_eq!(all[0].letter, letter("dl_1", "sub_a"));
            let acme = store.dead_letters(None, Some("acme"), 0, 10).await.unwrap();
            let ids: Vec<_> = acme.iter().map(|d| d.letter.id.as_str()).collect();
            assert_eq!(ids, ["dl_1", "dl_3"]);
            let of_g = store
                .dead_letters(Some("sub_g"), Some("acme"), 0, 10)
                .await
                .unwrap();
            assert!(of_g.is_empty(), "{backend}: another tenant's subscription");
            let page = store.dead_letters(None, None, all[0].seq, 1).await.unwrap();
            assert_eq!(page[0].letter.id, "dl_2");

            store
                .mark_redriven("dl_1", "2026-01-02T00:00:00Z")
                .await
                .unwrap();
            let pending = store.pending_dead_letters("sub_a", 10).await.unwrap();
            assert_eq!(pending.len(), 1);
            assert_eq!(pending[0].letter.id, "dl_3");
            assert_eq!(
                store
                    .dead_letter("dl_1")
                    .await
                    .unwrap()
                    .redriven_at
                    .as_deref(),
                Some("2026-01-02T00:00:00Z")
            );
            assert_eq!(store.prune(6_000).await.unwrap().dead_letters, 3);
            store.close().await;
        }
    }

    #[tokio::test]
    async fn rotation_disable_and_grace_expiry_on_every_backend() {
        for (backend, store) in each_backend().await {
            let s = subscription("sub_r", None);
            store.create(&s).await.unwrap();
            let rotated = store
                .rotate_secret("sub_r", "whsec_BBBB", 10_000, "t1")
                .await
                .unwrap();
            assert_eq!(rotated.revision, 2);
            assert_eq!(
                rotated.secrets(9_999),
                ["whsec_BBBB", "whsec_AAAA"],
                "{backend}"
            );
            assert_eq!(rotated.secrets(10_000), ["whsec_BBBB"]);
            assert!(
                store
                    .expire_rotations(9_999, "t2")
                    .await
                    .unwrap()
                    .is_empty()
            );
            let ended = store.expire_rotations(10_000, "t2").await.unwrap();
            assert_eq!(ended.len(), 1);
            assert_eq!(ended[0].revision, 3);
            assert_eq!(ended[0].previous_secret, None);
            assert!(
                store
                    .expire_rotations(20_000, "t3")
                    .await
                    .unwrap()
                    .is_empty()
            );

            let (disabled, changed) = store.disable("sub_r", "410 Gone", "t4").await.unwrap();
            assert!(changed && !disabled.enabled);
            assert_eq!(disabled.disabled_reason.as_deref(), Some("410 Gone"));
            let (again, changed) = store.disable("sub_r", "other", "t5").await.unwrap();
            assert!(!changed, "{backend}: disabling twice changes nothing");
            assert_eq!(again.revision, disabled.revision);
            let patch = crate::store::SubscriptionPatch {
                enabled: Some(true),
                ..Default::default()
            };
            let enabled = store.update("sub_r", &patch, "t6").await.unwrap();
            assert!(enabled.enabled);
            assert_eq!(
                enabled.disabled_reason, None,
                "{backend}: enabling clears the reason"
            );
            store.close().await;
        }
    }
}
