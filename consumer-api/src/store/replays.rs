//! Replay jobs: a window of recorded events re-sent to one subscription by a background task
//! (`crate::service::replay`). A job is claimed by one instance at a time under a lease that
//! its progress writes renew; when the lease runs out (the instance died), another instance
//! (or the same one restarted) takes it over and resumes after the last confirmed event.
//!
//! At most one queued or running job per subscription: a partial unique index enforces it,
//! so two concurrent requests cannot both start one.

use sqlx::{Row, any::AnyRow};

use super::{Store, StoreError};

/// Columns of a job, in the order [`job_from_row`] reads them.
const COLUMNS: &str = "id, subscription_id, since_ms, until_ms, state, reason, total, last_seq, \
                       cursor_seq, published, created_at, updated_at, finished_at";

/// Where a replay job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReplayState {
    /// Accepted, waiting for an instance to run it.
    Queued,
    /// Counting the window, then publishing.
    Running,
    /// Every event counted was published (confirmed by the broker).
    Done,
    /// Stopped for the `reason` given; `published` events were confirmed before.
    Failed,
}

impl ReplayState {
    /// The stored (and shown) name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [Self::Queued, Self::Running, Self::Done, Self::Failed]
            .into_iter()
            .find(|s| s.as_str() == text)
    }

    /// Whether the job has ended (done or failed).
    pub const fn is_finished(self) -> bool {
        matches!(self, Self::Done | Self::Failed)
    }
}

/// A replay job as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayJob {
    /// `rpl_<ULID>`.
    pub id: String,
    /// The subscription it re-sends to.
    pub subscription_id: String,
    /// Start of the window (inclusive), Unix milliseconds of acceptance.
    pub since_ms: i64,
    /// End of the window (exclusive).
    pub until_ms: i64,
    /// Where it is.
    pub state: ReplayState,
    /// Why it failed.
    pub reason: Option<String>,
    /// How many events it re-sends; `None` until counted.
    pub total: Option<i64>,
    /// The newest event (`seq`) counted: the job ends there.
    pub last_seq: Option<i64>,
    /// Every wanted event up to this `seq` is published and confirmed.
    pub cursor_seq: i64,
    /// Events published and confirmed so far.
    pub published: i64,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339, of the last progress.
    pub updated_at: String,
    /// RFC 3339, when it ended.
    pub finished_at: Option<String>,
}

impl ReplayJob {
    /// A queued job of `subscription_id` over `[since_ms, until_ms)`, created `now`.
    pub fn queued(id: String, subscription_id: String, window: (i64, i64), now: String) -> Self {
        Self {
            id,
            subscription_id,
            since_ms: window.0,
            until_ms: window.1,
            state: ReplayState::Queued,
            reason: None,
            total: None,
            last_seq: None,
            cursor_seq: 0,
            published: 0,
            created_at: now.clone(),
            updated_at: now,
            finished_at: None,
        }
    }
}

fn job_from_row(row: &AnyRow) -> Result<ReplayJob, StoreError> {
    let id: String = row.try_get("id")?;
    let state: String = row.try_get("state")?;
    let state = ReplayState::parse(&state).ok_or_else(|| StoreError::Corrupt {
        id: id.clone(),
        reason: format!("state: unknown {state:?}"),
    })?;
    Ok(ReplayJob {
        subscription_id: row.try_get("subscription_id")?,
        since_ms: row.try_get("since_ms")?,
        until_ms: row.try_get("until_ms")?,
        state,
        reason: row.try_get("reason")?,
        total: row.try_get("total")?,
        last_seq: row.try_get("last_seq")?,
        cursor_seq: row.try_get("cursor_seq")?,
        published: row.try_get("published")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        finished_at: row.try_get("finished_at")?,
        id,
    })
}

/// A job and the consumer owning its subscription (`None`: an operator's subscription).
pub type OwnedJob = (ReplayJob, Option<String>);

impl Store {
    /// Stores a new queued job unless its subscription has a queued or running one; returns
    /// that one's id then.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn create_replay(&self, job: &ReplayJob) -> Result<Option<String>, StoreError> {
        // The active job can end between the refused insert and the look-up: try again then.
        for _ in 0..3 {
            let done = sqlx::query(
                "INSERT INTO replay_jobs (id, subscription_id, since_ms, until_ms, state, \
                 created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(&job.id)
            .bind(&job.subscription_id)
            .bind(job.since_ms)
            .bind(job.until_ms)
            .bind(job.state.as_str())
            .bind(&job.created_at)
            .bind(&job.updated_at)
            .execute(&self.pool)
            .await?;
            if done.rows_affected() == 1 {
                return Ok(None);
            }
            let active = sqlx::query(
                "SELECT id FROM replay_jobs WHERE subscription_id = $1 \
                 AND state IN ('queued', 'running')",
            )
            .bind(&job.subscription_id)
            .fetch_optional(&self.pool)
            .await?;
            if let Some(row) = active {
                return Ok(Some(row.try_get("id")?));
            }
        }
        Err(StoreError::Conflict(format!("replay job {}", job.id)))
    }

    /// A job with the consumer owning its subscription; a job whose subscription is gone is
    /// gone too.
    ///
    /// # Errors
    /// [`StoreError::Missing`] or [`StoreError::Database`].
    pub async fn replay_job(&self, id: &str) -> Result<OwnedJob, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {}, s.consumer AS owner FROM replay_jobs j \
             JOIN subscriptions s ON s.id = j.subscription_id WHERE j.id = $1",
            COLUMNS
                .split(", ")
                .map(|c| format!("j.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::Missing("replay"))?;
        Ok((job_from_row(&row)?, row.try_get("owner")?))
    }

    /// Ids of up to `limit` jobs an instance may claim at `now_ms`: queued ones, and running
    /// ones whose lease ran out.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn claimable_replays(
        &self,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT id FROM replay_jobs WHERE state = 'queued' \
             OR (state = 'running' AND lease_until_ms < $1) ORDER BY id LIMIT $2",
        )
        .bind(now_ms)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| r.try_get("id").map_err(StoreError::from))
            .collect()
    }

    /// Claims job `id` for `owner` until `lease_until_ms` if it is claimable at `now_ms`;
    /// `None` when another instance got it first (or it ended).
    ///
    /// # Errors
    /// [`StoreError::Database`] or [`StoreError::Corrupt`].
    pub async fn claim_replay(
        &self,
        id: &str,
        owner: &str,
        now_ms: i64,
        lease_until_ms: i64,
        now: &str,
    ) -> Result<Option<ReplayJob>, StoreError> {
        let row = sqlx::query(&format!(
            "UPDATE replay_jobs SET state = 'running', owner = $2, lease_until_ms = $3, \
             updated_at = $4 WHERE id = $1 AND (state = 'queued' \
             OR (state = 'running' AND lease_until_ms < $5)) RETURNING {COLUMNS}"
        ))
        .bind(id)
        .bind(owner)
        .bind(lease_until_ms)
        .bind(now)
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// Saves the progress of a running job `owner` holds (`total`, `last_seq`, `cursor_seq`,
    /// `published`) and renews its lease; `false` when `owner` no longer holds it (taken
    /// over, or deleted with its subscription).
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn save_replay(
        &self,
        job: &ReplayJob,
        owner: &str,
        lease_until_ms: i64,
        now: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE replay_jobs SET total = $3, last_seq = $4, cursor_seq = $5, published = $6, \
             lease_until_ms = $7, updated_at = $8 \
             WHERE id = $1 AND owner = $2 AND state = 'running'",
        )
        .bind(&job.id)
        .bind(owner)
        .bind(job.total)
        .bind(job.last_seq)
        .bind(job.cursor_seq)
        .bind(job.published)
        .bind(lease_until_ms)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Ends a running job `owner` holds as done, or failed with `reason`.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn finish_replay(
        &self,
        job: &ReplayJob,
        owner: &str,
        reason: Option<&str>,
        (now_ms, now): (i64, &str),
    ) -> Result<bool, StoreError> {
        let state = if reason.is_some() {
            ReplayState::Failed
        } else {
            ReplayState::Done
        };
        let done = sqlx::query(
            "UPDATE replay_jobs SET state = $3, reason = $4, total = $5, last_seq = $6, \
             cursor_seq = $7, published = $8, owner = NULL, lease_until_ms = NULL, \
             updated_at = $9, finished_at = $9, finished_ms = $10 \
             WHERE id = $1 AND owner = $2 AND state = 'running'",
        )
        .bind(&job.id)
        .bind(owner)
        .bind(state.as_str())
        .bind(reason)
        .bind(job.total)
        .bind(job.last_seq)
        .bind(job.cursor_seq)
        .bind(job.published)
        .bind(now)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Hands a running job `owner` holds back to the queue (its progress kept), so the next
    /// instance resumes it at once instead of after the lease.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn release_replay(&self, id: &str, owner: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE replay_jobs SET state = 'queued', owner = NULL, lease_until_ms = NULL \
             WHERE id = $1 AND owner = $2 AND state = 'running'",
        )
        .bind(id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deletes the jobs that ended before `before_ms`; returns how many.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn prune_replays(&self, before_ms: i64) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("DELETE FROM replay_jobs WHERE finished_ms < $1")
                .bind(before_ms)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Subscription, testing::each_backend};

    fn job(subscription_id: &str) -> ReplayJob {
        ReplayJob::queued(
            relay_shared::ids::new_id("rpl"),
            subscription_id.to_owned(),
            (0, 10),
            "2026-01-01T00:00:00Z".into(),
        )
    }

    #[tokio::test]
    async fn one_active_job_per_subscription_claimed_by_one_owner_at_a_time() {
        for (backend, store) in each_backend().await {
            let sub = Subscription {
                id: relay_shared::ids::new_id("sub"),
                url: "https://example.com/hook".into(),
                event_types: vec!["#".into()],
                consumer: Some("acme".into()),
                enabled: true,
                secret: relay_shared::signing::generate_secret(),
                revision: 1,
                max_in_flight: 1,
                ..Subscription::default()
            };
            store.create(&sub).await.unwrap();
            let first = job(&sub.id);
            assert_eq!(
                store.create_replay(&first).await.unwrap(),
                None,
                "{backend}"
            );
            let second = job(&sub.id);
            assert_eq!(
                store.create_replay(&second).await.unwrap(),
                Some(first.id.clone()),
                "{backend}: a second job while one is queued"
            );
            let (stored, owner) = store.replay_job(&first.id).await.unwrap();
            assert_eq!(
                (stored.state, owner.as_deref()),
                (ReplayState::Queued, Some("acme"))
            );

            // Claimed by A; B cannot take it while A's lease runs, and can once it ran out.
            assert_eq!(
                store.claimable_replays(100, 10).await.unwrap(),
                std::slice::from_ref(&first.id)
            );
            let mut claimed = store
                .claim_replay(&first.id, "a", 100, 200, "t")
                .await
                .unwrap()
                .unwrap();
            assert!(
                store
                    .claim_replay(&first.id, "b", 150, 250, "t")
                    .await
                    .unwrap()
                    .is_none()
            );
            assert!(store.claimable_replays(150, 10).await.unwrap().is_empty());
            claimed.published = 3;
            claimed.cursor_seq = 7;
            assert!(store.save_replay(&claimed, "a", 300, "t").await.unwrap());
            let taken = store
                .claim_replay(&first.id, "b", 301, 400, "t")
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                (taken.cursor_seq, taken.published),
                (7, 3),
                "{backend}: progress kept"
            );
            assert!(
                !store.save_replay(&claimed, "a", 500, "t").await.unwrap(),
                "A lost it"
            );
            assert!(
                store
                    .finish_replay(&taken, "b", None, (400, "t"))
                    .await
                    .unwrap()
            );
            assert_eq!(
                store.replay_job(&first.id).await.unwrap().0.state,
                ReplayState::Done
            );

            // Ended: a new job may start; pruning removes the ended one only.
            assert_eq!(
                store.create_replay(&second).await.unwrap(),
                None,
                "{backend}"
            );
            assert_eq!(store.prune_replays(401).await.unwrap(), 1);
            assert!(store.replay_job(&second.id).await.is_ok());
            // Gone with its subscription.
            store.delete(&sub.id).await.unwrap();
            assert!(matches!(
                store.replay_job(&second.id).await,
                Err(StoreError::Missing("replay"))
            ));
            store.close().await;
        }
    }
}
