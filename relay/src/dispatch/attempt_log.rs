//! The delivery log feed: attempt records batched onto the `attempts` queue for the
//! consumer-api recorder, one broker message per ~100 ms instead of one per delivery.
//!
//! With a backlog, up to [`ROUND`] batches go out together and their confirms are awaited
//! together: one confirm round trip per batch could not keep up with a dispatcher at 16,000
//! deliveries/s (fan-out 10), which then dropped a third of its records at the bound.
//!
//! Records survive broker blips: a batch that cannot be published waits for the next session
//! and goes out then, while new records queue behind it. The queue is bounded
//! ([`BUFFER`] records): past it, new records are dropped and counted in
//! `relay_attempt_records_dropped_total` rather than slowing deliveries down. That, a
//! dispatcher killed outright, and a broker still away when the shutdown flush runs out of
//! time (also counted) are the only ways a record is lost.

use std::time::Duration;

use lapin::Channel;
use prometheus::IntCounter;
use relay_shared::{amqp, attempt::AttemptRecord};
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};

const BATCH: usize = 500;
/// Batches published before their confirms are awaited, at most.
const ROUND: usize = 8;
const LINGER: Duration = Duration::from_millis(100);
/// Records waiting to be published, at most.
pub const BUFFER: usize = 20_000;
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Sends attempt records to the log.
#[derive(Debug, Clone)]
pub struct AttemptLog {
    tx: mpsc::Sender<AttemptRecord>,
    dropped: IntCounter,
}

/// The publishing task, to be flushed at shutdown.
#[derive(Debug)]
pub struct Flusher {
    finish: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl AttemptLog {
    /// Starts the batching task publishing to `queue` on the current confirm channel.
    pub fn start(
        channels: watch::Receiver<Option<Channel>>,
        queue: String,
        dropped: IntCounter,
    ) -> (Self, Flusher) {
        let (tx, rx) = mpsc::channel(BUFFER);
        let (finish, finishing) = oneshot::channel();
        let task = tokio::spawn(run(rx, finishing, channels, queue, dropped.clone()));
        (Self { tx, dropped }, Flusher { finish, task })
    }

    /// Queues a record; never waits.
    pub fn record(&self, record: AttemptRecord) {
        if self.tx.try_send(record).is_err() {
            self.dropped.inc();
        }
    }
}

impl Flusher {
    /// Stops taking records (later ones are counted as dropped), publishes what is buffered
    /// and returns, waiting at most `bound` for the broker.
    pub async fn finish(self, bound: Duration) {
        let _ = self.finish.send(());
        let mut task = self.task;
        if tokio::time::timeout(bound, &mut task).await.is_err() {
            task.abort();
            tracing::warn!(
                ?bound,
                "attempt records not flushed before the shutdown bound"
            );
        }
    }
}

/// Batches records until [`Flusher::finish`] (or until every sender is gone), then publishes
/// what is left.
async fn run(
    mut rx: mpsc::Receiver<AttemptRecord>,
    mut finishing: oneshot::Receiver<()>,
    mut channels: watch::Receiver<Option<Channel>>,
    queue: String,
    dropped: IntCounter,
) {
    let mut finished = false;
    loop {
        let first = tokio::select! {
            record = rx.recv() => record,
            _ = &mut finishing, if !finished => {
                // Buffered records still come out of `recv`; nothing new gets in.
                rx.close();
                finished = true;
                continue;
            }
        };
        let Some(first) = first else { break };
        let mut batch = Vec::with_capacity(BATCH);
        batch.push(first);
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(record)) => batch.push(record),
                Ok(None) | Err(_) => break,
            }
        }
        let mut round = vec![batch];
        // A full batch means a backlog: take what already waits, without lingering.
        while round.len() < ROUND && round.last().is_some_and(|b| b.len() == BATCH) {
            let mut next = Vec::with_capacity(BATCH);
            while next.len() < BATCH {
                let Ok(record) = rx.try_recv() else { break };
                next.push(record);
            }
            if next.is_empty() {
                break;
            }
            round.push(next);
        }
        if !publish(&round, &mut channels, &queue).await {
            dropped.inc_by(round.iter().map(|b| b.len() as u64).sum());
        }
    }
}

/// Publishes `round` (one message per batch), waiting for a channel and retrying what the
/// broker has not confirmed until it has; `false` only when no channel will ever come again.
async fn publish(
    round: &[Vec<AttemptRecord>],
    channels: &mut watch::Receiver<Option<Channel>>,
    queue: &str,
) -> bool {
    let mut confirmed = 0;
    let mut warned = false;
    loop {
        let Ok(channel) = channels.wait_for(Option::is_some).await.map(|c| c.clone()) else {
            return false;
        };
        let Some(channel) = channel else { continue };
        let messages = round[confirmed..]
            .iter()
            .map(|batch| AttemptRecord::encode_batch(batch))
            .collect();
        let (done, error) =
            amqp::publish_all_confirmed(&channel, "", queue, messages, CONFIRM_TIMEOUT).await;
        confirmed += done;
        let Some(e) = error else { return true };
        if !warned {
            let records: usize = round[confirmed..].iter().map(Vec::len).sum();
            tracing::warn!(records, error = %e, "attempt records kept until the broker takes them");
            warned = true;
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}
