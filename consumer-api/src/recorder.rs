//! The recorder: consumes `archive` (every event), `attempts` (one record per delivery
//! attempt, or a JSON array of them) and `dead` (deliveries out of attempts) and writes them to the store in batches.
//!
//! Memory is bounded by the prefetch (`api.recorder_prefetch` unacknowledged messages per
//! queue); a batch is acknowledged (one multiple-ack) only after its transaction commits.
//! While the store fails, the batch is retried with backoff and the broker keeps the rest:
//! nothing is lost and nothing piles up here. Messages that cannot be recorded at all (not a
//! valid envelope or record) are acknowledged and counted, never retried forever.
//!
//! What a committed batch means is announced before it is acknowledged ([`Announcer`]): a
//! dead letter as `relay.message.exhausted`, an open circuit closed by a success as
//! `relay.endpoint.recovered`.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::{
    message::Delivery,
    options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
};
use prometheus::{Histogram, IntCounterVec};
use relay_shared::{
    amqp::Backoff,
    attempt::AttemptRecord,
    ids::new_id,
    session::{Session, next_session},
    shutdown::Shutdown,
    topology::Topology,
    wire::{Archived, Handoff, WireError},
};
use tokio::sync::watch;

use crate::{
    announce::Announcer,
    clock::now_ms,
    store::{
        Store, StoreError,
        records::{NewDeadLetter, NewEvent},
    },
};

/// How long a batch waits for more messages once it has one.
pub const BATCH_WINDOW: Duration = Duration::from_millis(25);

/// Which queue a recorder task consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// Every event.
    Archive,
    /// Attempt records.
    Attempts,
    /// Dead letters.
    Dead,
}

impl Feed {
    fn label(self) -> &'static str {
        match self {
            Self::Archive => "archive",
            Self::Attempts => "attempts",
            Self::Dead => "dead",
        }
    }

    fn queue(self, topology: &Topology) -> String {
        match self {
            Self::Archive => topology.archive.clone(),
            Self::Attempts => topology.attempts.clone(),
            Self::Dead => topology.dead.clone(),
        }
    }
}

/// Starts one recorder task per feed; each stops at `shutdown` once its current batch is
/// written (or left unacked for redelivery).
#[allow(clippy::too_many_arguments)] // The wiring of one component, each part named.
pub fn spawn(
    store: Store,
    announcer: Announcer,
    sessions: watch::Receiver<Option<Session>>,
    topology: &Topology,
    prefetch: u16,
    recorded: IntCounterVec,
    batch_seconds: Histogram,
    shutdown: Shutdown,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for feed in [Feed::Archive, Feed::Attempts, Feed::Dead] {
        let recorder = Recorder {
            store: store.clone(),
            announcer: announcer.clone(),
            feed,
            queue: feed.queue(topology),
            prefetch,
            recorded: recorded.clone(),
            batch_seconds: batch_seconds.clone(),
        };
        let sessions = sessions.clone();
        let shutdown = shutdown.clone();
        tasks.push(tokio::spawn(recorder.run(sessions, shutdown)));
    }
    tasks
}

struct Recorder {
    store: Store,
    announcer: Announcer,
    feed: Feed,
    queue: String,
    prefetch: u16,
    /// `feed`, `outcome` = `recorded` | `unreadable`.
    recorded: IntCounterVec,
    batch_seconds: Histogram,
}

enum Parsed {
    Event(NewEvent),
    Attempts(Vec<AttemptRecord>),
    Dead(NewDeadLetter),
}

/// A batch's rows by table, sorted once so that a retried write copies nothing.
#[derive(Default)]
struct Rows {
    events: Vec<NewEvent>,
    attempts: Vec<AttemptRecord>,
    dead: Vec<NewDeadLetter>,
    /// Messages they came from.
    messages: u64,
}

impl Rows {
    fn add(&mut self, parsed: Parsed) {
        self.messages += 1;
        match parsed {
            Parsed::Event(e) => self.events.push(e),
            Parsed::Attempts(a) => self.attempts.extend(a),
            Parsed::Dead(d) => self.dead.push(d),
        }
    }
}

impl Recorder {
    async fn run(self, mut sessions: watch::Receiver<Option<Session>>, mut shutdown: Shutdown) {
        while let Some(session) = next_session(&mut sessions, &mut shutdown).await {
            match self.consume(&session, &mut shutdown).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(feed = self.feed.label(), error = %e, "recorder lost its channel; resuming");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                        () = shutdown.wait() => break,
                    }
                }
            }
        }
    }

    /// Consumes until shutdown (`Ok`) or until the channel fails (`Err`).
    async fn consume(&self, session: &Session, shutdown: &mut Shutdown) -> anyhow::Result<()> {
        let channel = session.create_channel().await?;
        channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await?;
        let mut consumer = channel
            .basic_consume(
                self.queue.as_str().into(),
                format!("consumer-api-recorder-{}", self.feed.label())
                    .as_str()
                    .into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        loop {
            let first = tokio::select! {
                next = consumer.next() => next,
                () = shutdown.wait() => return Ok(()),
            };
            let Some(first) = first else {
                anyhow::bail!("the broker ended the consumer");
            };
            let mut batch = vec![first?];
            let deadline = tokio::time::Instant::now() + BATCH_WINDOW;
            while batch.len() < usize::from(self.prefetch) {
                match tokio::time::timeout_at(deadline, consumer.next()).await {
                    Ok(Some(delivery)) => batch.push(delivery?),
                    Ok(None) | Err(_) => break,
                }
            }
            if !self.write(&batch, shutdown).await {
                // Shutting down with the batch unwritten: the broker redelivers it.
                return Ok(());
            }
            if let Some(last) = batch.last() {
                channel
                    .basic_ack(last.delivery_tag, BasicAckOptions { multiple: true })
                    .await?;
            }
        }
    }

    /// Writes a batch, retrying while the store fails; `false` when shutdown came first.
    async fn write(&self, batch: &[Delivery], shutdown: &mut Shutdown) -> bool {
        let mut rows = Rows::default();
        for delivery in batch {
            match self.parse(delivery) {
                Ok(p) => rows.add(p),
                Err(e) => {
                    self.recorded
                        .with_label_values(&[self.feed.label(), "unreadable"])
                        .inc();
                    tracing::warn!(
                        feed = self.feed.label(),
                        reason = %e,
                        "message not recorded: unreadable"
                    );
                }
            }
        }
        let mut backoff = Backoff::new(Duration::from_secs(5));
        loop {
            let started = std::time::Instant::now();
            match self.store_batch(&rows).await {
                Ok(()) => {
                    self.batch_seconds.observe(started.elapsed().as_secs_f64());
                    self.recorded
                        .with_label_values(&[self.feed.label(), "recorded"])
                        .inc_by(rows.messages);
                    return true;
                }
                Err(e) => {
                    tracing::error!(feed = self.feed.label(), error = %e, batch = rows.messages, "cannot record a batch; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff.next_delay()) => {}
                        () = shutdown.wait() => return false,
                    }
                }
            }
        }
    }

    async fn store_batch(&self, rows: &Rows) -> Result<(), StoreError> {
        if !rows.events.is_empty() {
            self.store.insert_events(&rows.events).await?;
        }
        if !rows.attempts.is_empty() {
            let recoveries = self.store.insert_attempts(&rows.attempts).await?;
            self.announcer.recovered(&recoveries).await;
        }
        if !rows.dead.is_empty() {
            self.store.insert_dead_letters(&rows.dead).await?;
            self.announcer.exhausted(&rows.dead).await;
        }
        Ok(())
    }

    fn parse(&self, delivery: &Delivery) -> Result<Parsed, WireError> {
        let (body, properties) = (&delivery.data, &delivery.properties);
        Ok(match self.feed {
            Feed::Archive => {
                let event = Archived::decode(body, properties)?;
                Parsed::Event(NewEvent {
                    body: event.body,
                    accepted_ms: event.accepted_ms.unwrap_or_else(now_ms),
                    id: event.id,
                    event_type: event.event_type,
                    consumer: event.consumer,
                })
            }
            Feed::Attempts => Parsed::Attempts(AttemptRecord::decode_batch(body, properties)?),
            Feed::Dead => {
                let handoff = Handoff::decode(body, properties)?;
                let dead_ms = now_ms();
                Parsed::Dead(NewDeadLetter {
                    id: new_id("dl"),
                    event_id: handoff.event.envelope.id.clone(),
                    subscription_id: handoff.subscription_id,
                    attempts: i64::from(handoff.attempts),
                    last_error: handoff.last_error,
                    last_status: handoff.last_status.map(i64::from),
                    body: String::from_utf8_lossy(&handoff.event.body).into_owned(),
                    dead_ms,
                    dead_at: crate::clock::ms_rfc3339(dead_ms),
                })
            }
        })
    }
}
