//! Retries stranded in a retry tier. An expired retry leaves its tier through the tier's
//! dead-letter worker, which forwards it to `redeliver` and holds it until `redeliver`
//! confirms. When the forward is refused (after a node loss, `redeliver` without a leader; or
//! `retry-ready` routing to no queue) the retry stays in the tier's `messages` but in neither
//! `messages_ready` nor `messages_unacknowledged`, and RabbitMQ re-sends it only every
//! `dead_letter_worker_publisher_confirm_timeout` (180 s by default; docs/RELIABILITY.md).
//! The passive declarations of [`super::queue_metrics`] see only the ready count, so this
//! reads the three counts of each tier from RabbitMQ's management API
//! (`dispatch.management_url`) every `dispatch.queue_sample_interval`:
//!
//! - `relay_retry_tier_held{queue}`: messages − ready − unacked of the tier, as sampled;
//! - `relay_retry_tier_stranded{queue}`: the same count once it has stayed above zero in every
//!   sample for longer than the tier's delay (at most [`MAX_THRESHOLD`]), else 0; the alert
//!   `RelayRetriesStranded` (deploy/prometheus/alerts.yml) fires on it;
//! - a `/readyz` warning naming the tier while it is stranded (a warning, not unready: the
//!   broker holds the retries, and every dispatcher going unready at once would help nobody).
//!
//! A held retry is already past its due time, and a healthy worker forwards it within
//! milliseconds, so a count that stays up for a whole tier delay is a stuck forward.

use std::time::{Duration, Instant};

use prometheus::{IntGaugeVec, Registry};
use reqwest::Url;
use serde::Deserialize;

use relay_shared::{
    metrics::gauge_vec,
    ops::Readiness,
    shutdown::Shutdown,
    topology::{Topology, tier_label},
};

/// The longest a tier's held count must stay up before it counts as stranded: a 10 h tier
/// must not take 10 h to raise it.
pub const MAX_THRESHOLD: Duration = Duration::from_secs(300);

/// How long one management API request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the watch could not be set up or one tier could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TierWatchError {
    /// `dispatch.management_url` or the AMQP URL's vhost does not make a request URL.
    #[error("dispatch.management_url: {0}")]
    Url(String),
    /// The management API could not be reached or its answer read.
    #[error("management API request failed: {0}")]
    Http(#[from] reqwest::Error),
    /// The management API answered with an error status.
    #[error("management API answered HTTP {0}")]
    Status(u16),
    /// The metrics could not be registered.
    #[error("registering the retry-tier metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// The counts of one queue as the management API reports them; a queue whose statistics
/// were not collected yet has none.
#[derive(Debug, Default, Deserialize)]
struct QueueCounts {
    #[serde(default)]
    messages: u64,
    #[serde(default)]
    messages_ready: u64,
    #[serde(default)]
    messages_unacknowledged: u64,
}

impl QueueCounts {
    fn held(&self) -> u64 {
        self.messages
            .saturating_sub(self.messages_ready + self.messages_unacknowledged)
    }
}

/// One tier's request URL and what has been seen of it.
#[derive(Debug)]
struct Tier {
    /// `retry.<delay>`, as in `relay_queue_messages`.
    label: String,
    url: Url,
    threshold: Duration,
    /// Since when every sample held retries; `None` after a sample that held none.
    held_since: Option<Instant>,
}

/// Whether a tier is stranded, from its held count and how long it has stayed above zero.
fn stranded(held: u64, held_for: Duration, threshold: Duration) -> bool {
    held > 0 && held_for > threshold
}

/// The watch over every retry tier.
#[derive(Debug)]
pub struct TierWatch {
    http: reqwest::Client,
    tiers: Vec<Tier>,
    held: IntGaugeVec,
    stranded: IntGaugeVec,
    readiness: Readiness,
    interval: Duration,
}

impl TierWatch {
    /// The watch over the tiers of `retry_schedule`, read through the management API at
    /// `management_url` (credentials in the URL) in the vhost of `amqp_url`; `None` when
    /// `management_url` is empty or `interval` zero.
    ///
    /// # Errors
    /// A URL that makes no request URL, an HTTP client that cannot be built, metrics already
    /// registered.
    pub fn register(
        registry: &Registry,
        management_url: &str,
        amqp_url: &str,
        topology: &Topology,
        retry_schedule: &[Duration],
        interval: Duration,
        readiness: Readiness,
    ) -> Result<Option<Self>, TierWatchError> {
        if management_url.is_empty() || interval.is_zero() {
            return Ok(None);
        }
        let vhost = amqp_url
            .parse::<lapin::uri::AMQPUri>()
            .map_err(|e| TierWatchError::Url(format!("the AMQP URL's vhost: {e}")))?
            .vhost;
        let base = Url::parse(management_url).map_err(|e| TierWatchError::Url(e.to_string()))?;
        let mut tiers: Vec<Tier> = Vec::new();
        for delay in retry_schedule {
            let label = format!("retry.{}", tier_label(*delay));
            if tiers.iter().any(|t| t.label == label) {
                continue;
            }
            let mut url = base.clone();
            url.path_segments_mut()
                .map_err(|()| TierWatchError::Url("not an http(s) URL".to_owned()))?
                .pop_if_empty()
                .extend(["api", "queues", &vhost, &topology.retry_tier(*delay)]);
            tiers.push(Tier {
                label,
                url,
                threshold: (*delay).min(MAX_THRESHOLD),
                held_since: None,
            });
        }
        Ok(Some(Self {
            http: reqwest::Client::builder()
                .timeout(REQUEST_TIMEOUT)
                .build()?,
            tiers,
            held: gauge_vec(
                registry,
                "relay_retry_tier_held",
                "Expired retries a retry tier holds but has not forwarded to redeliver \
                 (messages - ready - unacked, management API), by queue role.",
                &["queue"],
            )?,
            stranded: gauge_vec(
                registry,
                "relay_retry_tier_stranded",
                "relay_retry_tier_held once it has stayed above zero for longer than the \
                 tier's delay (at most 5 min), else 0: retries RabbitMQ does not forward.",
                &["queue"],
            )?,
            readiness,
            interval,
        }))
    }

    /// Samples every tier each interval until `shutdown`.
    pub async fn run(mut self, mut shutdown: Shutdown) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.wait() => return,
            }
            if shutdown.unless_stopped(self.sample()).await.is_none() {
                return;
            }
        }
    }

    async fn sample(&mut self) {
        for i in 0..self.tiers.len() {
            match self.counts(&self.tiers[i].url).await {
                Ok(counts) => self.record(i, counts.held(), Instant::now()),
                Err(e) => {
                    // Unknown is not "cleared": the tier keeps its `held_since`.
                    let tier = &self.tiers[i];
                    tracing::debug!(queue = %tier.label, error = %e, "retry tier not sampled");
                    let _ = self.held.remove_label_values(&[tier.label.as_str()]);
                    let _ = self.stranded.remove_label_values(&[tier.label.as_str()]);
                }
            }
        }
    }

    async fn counts(&self, url: &Url) -> Result<QueueCounts, TierWatchError> {
        let response = self.http.get(url.clone()).send().await?;
        match response.status().as_u16() {
            // The tier is declared on its first use: nothing held.
            404 => Ok(QueueCounts::default()),
            s if !(200..300).contains(&s) => Err(TierWatchError::Status(s)),
            _ => Ok(response.json().await?),
        }
    }

    /// Records tier `i` holding `held` at `now`: gauges, readiness warning, log on changes.
    fn record(&mut self, i: usize, held: u64, now: Instant) {
        let tier = &mut self.tiers[i];
        let since = if held > 0 {
            *tier.held_since.get_or_insert(now)
        } else {
            tier.held_since = None;
            now
        };
        let held_for = now.duration_since(since);
        let value = i64::try_from(held).unwrap_or(i64::MAX);
        self.held
            .with_label_values(&[tier.label.as_str()])
            .set(value);
        let stranded_gauge = self.stranded.with_label_values(&[tier.label.as_str()]);
        let was = stranded_gauge.get() > 0;
        if stranded(held, held_for, tier.threshold) {
            stranded_gauge.set(value);
            self.readiness.warn(
                &tier.label,
                format!(
                    "{held} expired retries held by the tier's dead-letter worker for {}s, \
                     not forwarded to redeliver (docs/RELIABILITY.md)",
                    held_for.as_secs()
                ),
            );
            if !was {
                tracing::warn!(
                    queue = %tier.label,
                    held,
                    held_for_s = held_for.as_secs(),
                    "retries stranded in a retry tier: RabbitMQ does not forward them to redeliver"
                );
            }
        } else {
            stranded_gauge.set(0);
            self.readiness.clear_warning(&tier.label);
            if was {
                tracing::info!(queue = %tier.label, held, "retry tier no longer stranded");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(schedule: &[Duration]) -> (TierWatch, Readiness) {
        let readiness = Readiness::default();
        let watch = TierWatch::register(
            &Registry::new(),
            "http://relay:secret@rabbit:15672/",
            "amqp://relay:secret@rabbit:5672/%2f",
            &Topology::new("acme."),
            schedule,
            Duration::from_secs(15),
            readiness.clone(),
        )
        .unwrap()
        .unwrap();
        (watch, readiness)
    }

    #[test]
    fn one_request_url_per_distinct_tier_in_the_vhost() {
        let (w, _) = watch(&[
            Duration::from_secs(5),
            Duration::from_secs(36_000),
            Duration::from_secs(36_000),
        ]);
        let urls: Vec<&str> = w.tiers.iter().map(|t| t.url.as_str()).collect();
        assert_eq!(
            urls,
            [
                "http://relay:secret@rabbit:15672/api/queues/%2F/acme.retry.5s",
                "http://relay:secret@rabbit:15672/api/queues/%2F/acme.retry.10h"
            ]
        );
        assert_eq!(w.tiers[0].threshold, Duration::from_secs(5));
        assert_eq!(w.tiers[1].threshold, MAX_THRESHOLD);
    }

    #[test]
    fn no_url_no_watch() {
        let none = TierWatch::register(
            &Registry::new(),
            "",
            "amqp://localhost",
            &Topology::new("acme."),
            &[Duration::from_secs(5)],
            Duration::from_secs(15),
            Readiness::default(),
        )
        .unwrap();
        assert!(none.is_none());
    }

    #[test]
    fn stranded_only_after_held_for_longer_than_the_tier_delay() {
        let (mut w, readiness) = watch(&[Duration::from_secs(5)]);
        let t0 = Instant::now();
        let stranded_now = |w: &TierWatch| w.stranded.with_label_values(&["retry.5s"]).get();
        w.record(0, 3, t0);
        assert_eq!(stranded_now(&w), 0);
        w.record(0, 7, t0 + Duration::from_secs(4));
        assert_eq!(stranded_now(&w), 0, "held for 4 s of a 5 s tier");
        w.record(0, 7, t0 + Duration::from_secs(6));
        assert_eq!(stranded_now(&w), 7);
        assert_eq!(w.held.with_label_values(&["retry.5s"]).get(), 7);
        let warnings = readiness.warnings();
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].starts_with("retry.5s: 7 expired retries"),
            "{warnings:?}"
        );
        assert!(readiness.check().is_ok(), "a warning, not unready");

        // Forwarded: cleared at once, and a new hold starts its own clock.
        w.record(0, 0, t0 + Duration::from_secs(7));
        assert_eq!(stranded_now(&w), 0);
        assert!(readiness.warnings().is_empty());
        w.record(0, 2, t0 + Duration::from_secs(8));
        w.record(0, 2, t0 + Duration::from_secs(12));
        assert_eq!(stranded_now(&w), 0);
    }

    #[test]
    fn held_is_what_is_neither_ready_nor_unacked() {
        let counts: QueueCounts = serde_json::from_str(
            r#"{"messages": 12, "messages_ready": 3, "messages_unacknowledged": 1, "x": 0}"#,
        )
        .unwrap();
        assert_eq!(counts.held(), 8);
        let fresh: QueueCounts = serde_json::from_str(r#"{"name": "q"}"#).unwrap();
        assert_eq!(fresh.held(), 0);
    }
}
