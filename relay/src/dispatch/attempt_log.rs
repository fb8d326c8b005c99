//! The delivery log feed: attempt records batched onto the `attempts` queue for the
//! consumer-api recorder. Batching keeps it to one broker message per ~100 ms instead of one
//! per delivery. It is observability, not delivery state: records still buffered when a
//! dispatcher crashes are lost, and when the buffer is full new records are dropped and
//! counted rather than slowing deliveries down.

use std::time::Duration;

use lapin::Channel;
use prometheus::IntCounter;
use relay_shared::{amqp, attempt::AttemptRecord, shutdown::Shutdown};
use tokio::sync::{mpsc, watch};

const BATCH: usize = 500;
const LINGER: Duration = Duration::from_millis(100);
const BUFFER: usize = 20_000;

/// Sends attempt records to the log.
#[derive(Debug, Clone)]
pub struct AttemptLog {
    tx: mpsc::Sender<AttemptRecord>,
    dropped: IntCounter,
}

impl AttemptLog {
    /// Starts the batching task publishing to `queue` on the current confirm channel.
    pub fn start(
        channels: watch::Receiver<Option<Channel>>,
        queue: String,
        dropped: IntCounter,
        shutdown: Shutdown,
    ) -> Self {
        let (tx, rx) = mpsc::channel(BUFFER);
        tokio::spawn(run(rx, channels, queue, dropped.clone(), shutdown));
        Self { tx, dropped }
    }

    /// Queues a record; never waits.
    pub fn record(&self, record: AttemptRecord) {
        if self.tx.try_send(record).is_err() {
            self.dropped.inc();
        }
    }
}

async fn run(
    mut rx: mpsc::Receiver<AttemptRecord>,
    channels: watch::Receiver<Option<Channel>>,
    queue: String,
    dropped: IntCounter,
    mut shutdown: Shutdown,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let first = tokio::select! {
            record = rx.recv() => record,
            () = shutdown.wait() => None,
        };
        let Some(first) = first else { break };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(record)) => batch.push(record),
                Ok(None) | Err(_) => break,
            }
        }
        flush(&mut batch, &channels, &queue, &dropped).await;
    }
    // Drain what is already buffered at shutdown.
    while let Ok(record) = rx.try_recv() {
        batch.push(record);
    }
    flush(&mut batch, &channels, &queue, &dropped).await;
}

async fn flush(
    batch: &mut Vec<AttemptRecord>,
    channels: &watch::Receiver<Option<Channel>>,
    queue: &str,
    dropped: &IntCounter,
) {
    if batch.is_empty() {
        return;
    }
    let channel = channels.borrow().clone();
    let published = match channel {
        Some(channel) => amqp::publish_confirmed(
            &channel,
            "",
            queue,
            AttemptRecord::encode_batch(batch),
            Duration::from_secs(5),
        )
        .await
        .map_err(|e| e.to_string()),
        None => Err(String::from("not connected")),
    };
    if let Err(e) = published {
        tracing::warn!(records = batch.len(), error = %e, "attempt records not logged");
        dropped.inc_by(batch.len() as u64);
    }
    batch.clear();
}
