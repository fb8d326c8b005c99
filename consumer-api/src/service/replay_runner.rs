//! The background task that runs replay jobs. Every second (and at once when this instance
//! queues one) it claims the jobs no live instance holds — queued ones, and running ones
//! whose lease ran out because their instance died — and runs each in its own task:
//!
//! 1. count the events of the window the subscription wants (`total`), up to the newest one
//!    recorded now (`last_seq`), so that new recordings cannot move the end;
//! 2. publish them in order of recording, in bursts of [`BURST`]: every event of a burst is
//!    sent, then their broker confirms are awaited, then `cursor_seq` and `published` are
//!    written (which also renews the lease). One round trip and one write per event held a
//!    replay to a few hundred events a second. A burst waits while more than [`BACKLOG`]
//!    messages wait in `redeliver`: the job goes at the pace the dispatchers deliver, which
//!    hold replays back while fresh events need the machine, rather than loading the broker
//!    with the whole window at once.
//!
//! A job taken over resumes after its last written event: what was confirmed and written is
//! never sent again; only the burst in flight at a crash, confirmed before its progress was
//! written, is sent a second time (same `webhook-id`, so receivers drop it).
//! A graceful stop hands running jobs back to the queue for the next instance.

use std::{collections::HashSet, sync::Arc, time::Duration};

use relay_shared::{ids::new_id, shutdown::Shutdown};
use tokio::{task::JoinSet, time::Instant};

use super::{Service, replay::Wanted};
use crate::{
    clock::{duration_ms, now, now_ms},
    store::{StoreError, records::StoredEvent, replays::ReplayJob},
};

/// How often the queue is looked at.
const POLL: Duration = Duration::from_secs(1);
/// Jobs one instance runs at once.
const MAX_JOBS: u32 = 8;
/// Events read per page.
const PAGE: u32 = 500;
/// Events published with one round trip to the broker and one progress write. A crash
/// re-sends at most the burst it was in.
const BURST: usize = 100;
/// Messages waiting in `redeliver` above which a job publishes no further burst. Publishing a
/// 50,000-event window as fast as the broker confirms took the broker from fresh events for
/// tens of seconds while the dispatchers delivered it over minutes.
const BACKLOG: u32 = 1_000;
/// How often a job held back by the backlog looks again.
const BACKLOG_POLL: Duration = Duration::from_millis(100);
/// How long a job waits for the broker to take an event before it fails.
pub const BROKER_PATIENCE: Duration = Duration::from_secs(60);

/// Runs replay jobs until `shutdown`; the task ends once its jobs are handed back.
pub fn spawn(service: Service, lease: Duration, shutdown: Shutdown) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(service, lease, shutdown))
}

async fn run(service: Service, lease: Duration, mut shutdown: Shutdown) {
    // This instance, as the owner of the jobs it claims.
    let owner: Arc<str> = new_id("api").into();
    let queued = service.replays_queued.clone();
    let mut jobs: JoinSet<String> = JoinSet::new();
    let mut running: HashSet<String> = HashSet::new();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = queued.notified() => {}
            Some(ended) = jobs.join_next() => {
                if let Ok(id) = ended {
                    running.remove(&id);
                }
            }
            () = shutdown.wait() => break,
        }
        let now = now_ms();
        let ids = match service.store.claimable_replays(now, MAX_JOBS).await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for replay jobs");
                continue;
            }
        };
        for id in ids {
            // A job this instance runs is never claimed twice, even past its lease.
            if running.len() >= MAX_JOBS as usize || running.contains(&id) {
                continue;
            }
            let lease_until = now + duration_ms(lease);
            match service
                .store
                .claim_replay(&id, &owner, now, lease_until, &crate::clock::now())
                .await
            {
                Ok(Some(job)) => {
                    running.insert(id);
                    jobs.spawn(
                        Job {
                            service: service.clone(),
                            owner: owner.clone(),
                            lease,
                            job,
                            shutdown: shutdown.clone(),
                        }
                        .run(),
                    );
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(replay_id = %id, error = %e, "cannot claim a replay job"),
            }
        }
    }
    // Each job stops after its current event and hands itself back.
    while jobs.join_next().await.is_some() {}
}

/// Why a job stopped before its end.
enum Stop {
    /// Ended, failed, for this reason.
    Failed(String),
    /// This instance no longer holds it (taken over, or deleted with its subscription).
    Lost,
    /// This instance is stopping.
    Shutdown,
    /// The store failed.
    Store(StoreError),
}

impl From<StoreError> for Stop {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

/// One claimed job.
struct Job {
    service: Service,
    owner: Arc<str>,
    lease: Duration,
    job: ReplayJob,
    shutdown: Shutdown,
}

impl Job {
    /// Runs the job to its end (or until it stops); returns its id.
    async fn run(mut self) -> String {
        let id = self.job.id.clone();
        let outcome = self.work().await;
        let result = match outcome {
            Ok(()) => self.end(None).await,
            Err(Stop::Failed(reason)) => {
                tracing::warn!(replay_id = %id, reason, "replay failed");
                self.end(Some(&reason)).await
            }
            Err(Stop::Lost) => {
                tracing::info!(replay_id = %id, "replay job taken over or deleted; stopped here");
                Ok(())
            }
            Err(Stop::Store(e)) if !e.is_transient() => {
                let reason = format!("the store failed: {e}");
                tracing::warn!(replay_id = %id, reason, "replay failed");
                self.end(Some(&reason)).await
            }
            // Back to the queue: this instance (or another) resumes it from its progress.
            Err(Stop::Store(_) | Stop::Shutdown) => {
                self.service.store.release_replay(&id, &self.owner).await
            }
        };
        if let Err(e) = result {
            // The lease runs out and the job is resumed from its last written progress.
            tracing::warn!(replay_id = %id, error = %e, "cannot record the replay job's end");
        }
        tracing::info!(
            replay_id = %id,
            published = self.job.published,
            total = self.job.total,
            "replay job stopped"
        );
        id
    }

    /// Records the end: done, or failed for `reason`.
    async fn end(&self, reason: Option<&str>) -> Result<(), StoreError> {
        let now_ms = now_ms();
        let now = crate::clock::ms_rfc3339(now_ms);
        self.service
            .store
            .finish_replay(&self.job, &self.owner, reason, (now_ms, &now))
            .await
            .map(|_| ())
    }

    async fn work(&mut self) -> Result<(), Stop> {
        let subscription = match self.service.store.get(&self.job.subscription_id).await {
            Ok(s) => s,
            Err(StoreError::NotFound) => return Err(Stop::Lost),
            Err(e) => return Err(e.into()),
        };
        let wanted = Wanted::of(&subscription).map_err(Stop::Failed)?;
        if self.job.total.is_none() {
            self.count(&wanted).await?;
        }
        self.publish_all(&wanted).await
    }

    fn window(&self) -> (i64, i64) {
        (self.job.since_ms, self.job.until_ms)
    }

    /// Counts what the job will send, up to the newest event recorded now.
    async fn count(&mut self, wanted: &Wanted) -> Result<(), Stop> {
        let (mut cursor, mut total) = (0, 0);
        loop {
            let rows = self
                .service
                .store
                .events_in_window(cursor, wanted.scope(), self.window(), PAGE)
                .await?;
            for row in &rows {
                cursor = row.seq;
                total += i64::from(wanted.wants(row));
            }
            if rows.len() < PAGE as usize {
                break;
            }
            self.stop_if_asked()?;
            self.save().await?;
        }
        self.job.total = Some(total);
        self.job.last_seq = Some(cursor);
        self.save().await
    }

    /// Publishes every wanted event after the cursor up to `last_seq`, a burst at a time.
    async fn publish_all(&mut self, wanted: &Wanted) -> Result<(), Stop> {
        let last = self.job.last_seq.unwrap_or(0);
        while self.job.cursor_seq < last {
            let rows = self
                .service
                .store
                .events_in_window(self.job.cursor_seq, wanted.scope(), self.window(), PAGE)
                .await?;
            let Some(newest) = rows.last().map(|row| row.seq) else {
                // Pruned past the retention meanwhile: nothing more to send.
                break;
            };
            let rows: Vec<&StoredEvent> = rows.iter().take_while(|row| row.seq <= last).collect();
            for burst in rows.chunks(BURST) {
                self.stop_if_asked()?;
                self.wait_for_room().await?;
                let sending: Vec<&StoredEvent> = burst
                    .iter()
                    .copied()
                    .filter(|row| wanted.wants(row))
                    .collect();
                self.publish(&sending).await?;
                if let Some(row) = burst.last() {
                    self.job.cursor_seq = row.seq;
                }
                self.save().await?;
            }
            if newest >= last {
                break;
            }
        }
        Ok(())
    }

    /// Waits while more than [`BACKLOG`] messages wait in `redeliver` (renewing the lease
    /// meanwhile). When the broker does not say, the publish goes ahead and waits out the
    /// broker itself.
    async fn wait_for_room(&mut self) -> Result<(), Stop> {
        let mut saved = Instant::now();
        while self
            .service
            .publisher
            .redeliver_backlog()
            .await
            .is_some_and(|waiting| waiting > BACKLOG)
        {
            if saved.elapsed() >= self.lease / 3 {
                self.save().await?;
                saved = Instant::now();
            }
            let mut shutdown = self.shutdown.clone();
            tokio::select! {
                () = tokio::time::sleep(BACKLOG_POLL) => {}
                () = shutdown.wait() => return Err(Stop::Shutdown),
            }
        }
        Ok(())
    }

    /// Publishes `rows` in order (one round trip for the lot) and counts them, waiting out a
    /// broker outage up to [`BROKER_PATIENCE`]: what the broker confirmed is counted (and the
    /// cursor moved past it), the rest is sent again.
    async fn publish(&mut self, rows: &[&StoredEvent]) -> Result<(), Stop> {
        let give_up = Instant::now() + BROKER_PATIENCE;
        let mut rest = rows;
        while !rest.is_empty() {
            let events: Vec<(&[u8], &str)> = rest
                .iter()
                .map(|row| (row.event.body.as_bytes(), row.event.id.as_str()))
                .collect();
            let (confirmed, error) = self
                .service
                .publisher
                .redeliver_all(&events, &self.job.subscription_id)
                .await;
            if let Some(row) = rest[..confirmed].last() {
                self.job.published += i64::try_from(confirmed).unwrap_or(i64::MAX);
                self.job.cursor_seq = row.seq;
            }
            rest = &rest[confirmed..];
            let Some(e) = error else { return Ok(()) };
            if Instant::now() >= give_up {
                let id = rest.first().map_or("?", |row| row.event.id.as_str());
                return Err(Stop::Failed(format!(
                    "the broker did not take event {id} for {}s: {e}",
                    BROKER_PATIENCE.as_secs()
                )));
            }
            tracing::warn!(replay_id = %self.job.id, error = %e, "replay waits for the broker");
            self.save().await?;
            let mut shutdown = self.shutdown.clone();
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = shutdown.wait() => return Err(Stop::Shutdown),
            }
        }
        Ok(())
    }

    fn stop_if_asked(&self) -> Result<(), Stop> {
        if self.shutdown.is_triggered() {
            Err(Stop::Shutdown)
        } else {
            Ok(())
        }
    }

    /// Writes the progress and renews the lease.
    async fn save(&self) -> Result<(), Stop> {
        let lease_until = now_ms() + duration_ms(self.lease);
        if self
            .service
            .store
            .save_replay(&self.job, &self.owner, lease_until, &now())
            .await?
        {
            Ok(())
        } else {
            Err(Stop::Lost)
        }
    }
}
