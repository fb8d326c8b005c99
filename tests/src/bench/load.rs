//! Load generation: events of a fixed size, sent closed-loop (N events, bounded in flight) or
//! open-loop (a fixed rate for a duration) through ingest's single or batch endpoint, or
//! straight to an exchange over AMQP with pipelined publisher confirms.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::{StreamExt, stream};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions},
};
use serde::Serialize;

use super::{relay::PUBLISHER_KEY, stats::unix_micros};

/// How events enter the system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// AMQP publish with confirms, straight to the exchange.
    Amqp,
    /// `POST /v1/events/batch`, 100 events a request.
    Batch,
    /// `POST /v1/events`, one event a request.
    Single,
}

impl Driver {
    /// Name used on the command line and in reports.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Driver::Amqp => "amqp",
            Driver::Batch => "batch",
            Driver::Single => "single",
        }
    }

    /// Parses `amqp`, `batch` or `single`.
    #[must_use]
    pub fn parse(text: &str) -> Option<Driver> {
        match text {
            "amqp" => Some(Driver::Amqp),
            "batch" => Some(Driver::Batch),
            "single" => Some(Driver::Single),
            _ => None,
        }
    }
}

/// Where events go.
#[derive(Debug, Clone)]
pub struct Target {
    /// Ingest base URL (HTTP drivers).
    pub ingest_url: String,
    /// Confirm channel, exchange and routing key (AMQP driver; an empty key: each event's
    /// ordering key, else its id).
    pub amqp: Option<(Channel, String, String)>,
}

/// Events of one run: ids, types and size.
#[derive(Debug, Clone)]
pub struct Events {
    /// Distinguishes the ids of this run.
    pub run: String,
    /// Total envelope size to pad to, in bytes.
    pub size: usize,
    /// Every `fail_every`-th event gets type `bench.fail` (0: never).
    pub fail_every: u64,
    /// When not 0, event `seq` has type `k.f{seq % families}.created` (scenario k).
    pub families: u64,
    /// When not 0, event `seq` has ordering key `k{seq % keys}` (scenario g).
    pub keys: u64,
}

impl Events {
    /// The id of event `seq`.
    #[must_use]
    pub fn id(&self, seq: u64) -> String {
        format!("evt_{}_{seq}", self.run)
    }

    /// Whether event `seq` goes to the failing endpoint.
    #[must_use]
    pub fn fails(&self, seq: u64) -> bool {
        self.fail_every > 0 && seq.is_multiple_of(self.fail_every)
    }

    /// The ordering key of event `seq`, if events have one.
    #[must_use]
    pub fn ordering_key(&self, seq: u64) -> Option<String> {
        (self.keys > 0).then(|| format!("k{}", seq % self.keys))
    }

    /// Event `seq` as envelope JSON padded to `size` bytes, stamped with the current time.
    #[must_use]
    pub fn body(&self, seq: u64) -> String {
        let kind = if self.families > 0 {
            format!("k.f{}.created", seq % self.families)
        } else if self.fails(seq) {
            "bench.fail".into()
        } else {
            "bench.ok".into()
        };
        let key = self
            .ordering_key(seq)
            .map(|key| format!(r#""ordering_key":"{key}","#))
            .unwrap_or_default();
        let head = format!(
            r#"{{"id":"{}","type":"{kind}",{key}"data":{{"sent_us":{},"seq":{seq},"pad":""#,
            self.id(seq),
            unix_micros()
        );
        let pad = self.size.saturating_sub(head.len() + 3);
        let mut body = head;
        body.extend(std::iter::repeat_n('x', pad));
        body.push_str("\"}}");
        body
    }
}

/// What a load run achieved.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sent {
    /// Events the system accepted (202, or broker confirm).
    pub accepted: u64,
    /// Events refused or failed.
    pub refused: u64,
    /// From the first send to the last acceptance, in seconds.
    pub seconds: f64,
}

/// A confirm channel on a new connection.
///
/// # Errors
/// The broker could not be reached.
pub async fn confirm_channel(url: &str) -> lapin::Result<(Connection, Channel)> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok((connection, channel))
}

/// An HTTP client for driving ingest: pooled keep-alive connections.
///
/// # Panics
/// The TLS backend cannot be initialised.
#[must_use]
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client")
}

async fn publish_amqp(
    channel: &Channel,
    exchange: &str,
    key: &str,
    id: &str,
    body: String,
) -> bool {
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(id.into());
    let Ok(confirm) = channel
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            properties,
        )
        .await
    else {
        return false;
    };
    matches!(confirm.await, Ok(Confirmation::Ack(None)))
}

async fn post(http: &reqwest::Client, url: String, body: String) -> bool {
    http.post(url)
        .bearer_auth(PUBLISHER_KEY)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .is_ok_and(|r| r.status() == 202)
}

/// Sends one unit (an event, or a batch of `seqs`); returns how many were accepted.
async fn send(
    driver: Driver,
    target: &Target,
    http: &reqwest::Client,
    events: &Events,
    seqs: std::ops::Range<u64>,
) -> u64 {
    let count = seqs.end - seqs.start;
    match driver {
        Driver::Amqp => {
            let Some((channel, exchange, key)) = &target.amqp else {
                return 0;
            };
            let mut ok = 0;
            for seq in seqs {
                let id = events.id(seq);
                let ordering_key = events.ordering_key(seq);
                // To Relay's exchange (no fixed key): the routing key ingest would use, the
                // ordering key or else the id, which spreads events over sharded ingress.
                let routing = match (key.is_empty(), &ordering_key) {
                    (false, _) => key.as_str(),
                    (true, Some(ordering_key)) => ordering_key.as_str(),
                    (true, None) => id.as_str(),
                };
                if publish_amqp(channel, exchange, routing, &id, events.body(seq)).await {
                    ok += 1;
                }
            }
            ok
        }
        Driver::Single => {
            let url = format!("{}/v1/events", target.ingest_url);
            let mut ok = 0;
            for seq in seqs {
                if post(http, url.clone(), events.body(seq)).await {
                    ok += 1;
                }
            }
            ok
        }
        Driver::Batch => {
            let mut body = String::with_capacity(count as usize * (events.size + 1) + 2);
            body.push('[');
            for seq in seqs {
                if body.len() > 1 {
                    body.push(',');
                }
                body.push_str(&events.body(seq));
            }
            body.push(']');
            let url = format!("{}/v1/events/batch", target.ingest_url);
            if post(http, url, body).await {
                count
            } else {
                0
            }
        }
    }
}

/// Batch size of the batch driver.
pub const BATCH: u64 = 100;

/// In-flight units per driver in closed loop, unless a scenario says otherwise.
#[must_use]
pub fn concurrency(driver: Driver) -> usize {
    match driver {
        Driver::Amqp => 512,
        Driver::Single => 128,
        Driver::Batch => 8,
    }
}

/// Sends events `0..n` as fast as the system accepts them, with `in_flight` units (events,
/// or batches) in flight; `accepted` counts the events accepted so far.
pub async fn closed_loop(
    driver: Driver,
    target: &Target,
    http: &reqwest::Client,
    events: &Events,
    n: u64,
    in_flight: usize,
    accepted: &AtomicU64,
) -> Sent {
    let unit = if driver == Driver::Batch { BATCH } else { 1 };
    let started = Instant::now();
    let units = (0..n.div_ceil(unit)).map(|u| u * unit..((u + 1) * unit).min(n));
    let mut refused = 0;
    let mut done = stream::iter(units)
        .map(|seqs| {
            let count = seqs.end - seqs.start;
            async move { (count, send(driver, target, http, events, seqs).await) }
        })
        .buffer_unordered(in_flight);
    while let Some((count, ok)) = done.next().await {
        accepted.fetch_add(ok, Ordering::Relaxed);
        refused += count - ok;
    }
    Sent {
        accepted: accepted.load(Ordering::Relaxed),
        refused,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// Sends events at `rate` per second for `duration`, each on its own task without waiting
/// for earlier ones (open loop); returns once every send finished.
pub async fn open_loop(
    driver: Driver,
    target: &Target,
    http: &reqwest::Client,
    events: &Events,
    rate: f64,
    duration: Duration,
    accepted: &Arc<AtomicU64>,
) -> Sent {
    // A batch endpoint has no meaning at a per-event rate: send single events instead.
    let driver = if driver == Driver::Batch {
        Driver::Single
    } else {
        driver
    };
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut next: u64 = 0;
    let mut refused = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while started.elapsed() < duration {
        tick.tick().await;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        while next < due {
            let (target, http, events, accepted) = (
                target.clone(),
                http.clone(),
                events.clone(),
                Arc::clone(accepted),
            );
            let seq = next;
            tasks.spawn(async move {
                let ok = send(driver, &target, &http, &events, seq..seq + 1).await;
                accepted.fetch_add(ok, Ordering::Relaxed);
                1 - ok
            });
            next += 1;
        }
        while let Some(result) = tasks.try_join_next() {
            refused += result.unwrap_or(1);
        }
    }
    while let Some(result) = tasks.join_next().await {
        refused += result.unwrap_or(1);
    }
    Sent {
        accepted: accepted.load(Ordering::Relaxed),
        refused,
        seconds: started.elapsed().as_secs_f64(),
    }
}
