//! `[dispatch]`: the section `relay dispatch` owns (defaults in `defaults.toml` beside this file).

use std::{net::SocketAddr, time::Duration};

use relay_shared::config::{ConfigError, Section, durations};
use serde::Deserialize;

/// `[dispatch]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatchSettings {
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    pub listen: SocketAddr,
    /// Unacknowledged events one dispatcher holds at once (AMQP prefetch).
    pub prefetch: u16,
    /// Timeout of one webhook request, connect to last body byte.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Bytes of a response body read (and kept as an excerpt); the rest is discarded.
    pub response_body_limit: usize,
    /// Base URL of consumer-api, where the subscription directory is loaded from.
    pub directory_url: String,
    /// The directory credential: one of consumer-api's `api.directory_keys`. It reads the
    /// directory and disables a subscription, nothing else (the admin key stays with operators).
    pub directory_key: String,
    /// Full reload interval of the directory, on top of live change notifications.
    #[serde(with = "humantime_serde")]
    pub directory_refresh: Duration,
    /// Delays before each retry after the first try; after the last, a delivery is dead.
    #[serde(deserialize_with = "durations")]
    pub retry_schedule: Vec<Duration>,
    /// Random jitter, as a fraction of the tier's delay taken off it (0.1 = up to 10 % sooner;
    /// never sooner than a `Retry-After`).
    pub retry_jitter: f64,
    /// Longest `Retry-After` honoured on 429/502/503/504 (the shortest tier at least that long
    /// is used; beyond the largest tier, the largest).
    #[serde(with = "humantime_serde")]
    pub max_retry_after: Duration,
    /// Webhook requests one subscription may have in flight on one dispatcher. A delivery that
    /// finds no free slot waits its turn in its queue (back-pressure; 3 × this many when the
    /// endpoint's requests take `inflight_wait` or longer, else the prefetch), unless the
    /// endpoint is failing or stalled: then it is deferred to the first retry tier without
    /// counting as an attempt.
    pub max_inflight_per_subscription: usize,
    /// The shortest stall: a subscription at its cap that completes no request for
    /// `max(inflight_wait, 4 × its average request time)` while other requests complete is
    /// stalled (hanging), and its waiting deliveries are deferred. Covers an endpoint whose
    /// first requests hang.
    #[serde(with = "humantime_serde")]
    pub inflight_wait: Duration,
    /// Webhook requests one dispatcher may have in flight in total (backpressure through prefetch).
    pub max_inflight: usize,
    /// Part of `max_inflight` kept for first attempts of fresh events while they wait (the
    /// rest for retries, replays, redrives and test pings); each lane borrows the other's
    /// idle part. From 0 to 1.
    pub first_attempt_share: f64,
    /// Consecutive failures that open a subscription's circuit.
    pub breaker_failures: u32,
    /// How long an open circuit waits before letting one probe through.
    #[serde(with = "humantime_serde")]
    pub breaker_cooldown: Duration,
    /// On SIGTERM/SIGINT, how long in-flight deliveries may take to finish before their events
    /// are handed back to the broker unacked.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// How often each dispatcher samples queue depths and consumer counts (passive
    /// declarations) into `relay_queue_messages` and `relay_queue_consumers`; `0s` turns it off.
    #[serde(with = "humantime_serde")]
    pub queue_sample_interval: Duration,
    /// Base URL of RabbitMQ's management HTTP API, credentials included
    /// (`http://user:pass@host:15672`; the user needs the `management` or `monitoring` tag). Every
    /// `queue_sample_interval` it is asked for each retry tier's counts, to report retries the
    /// broker holds but does not forward (`relay_retry_tier_stranded`, a `/readyz` warning;
    /// docs/RELIABILITY.md). Empty (the default): not watched.
    pub management_url: String,
    /// Longest an `ordering: key` delivery holds its key back, retrying in place on the
    /// schedule while its event stays unacked; then it is dead-lettered and the key's next
    /// event goes. Keep it below the broker's `consumer_timeout` (15 min in deploy/rabbitmq)
    /// minus `request_timeout`, or the broker closes the channel and hands the key's events
    /// out again.
    #[serde(with = "humantime_serde")]
    pub ordered_hold: Duration,
    /// How often each dispatcher announces itself on `relay.control`; the dispatchers alive
    /// share every subscription's limits equally (README "Protecting endpoints").
    #[serde(with = "humantime_serde")]
    pub member_heartbeat: Duration,
    /// Longest a delivery waits in memory for its rate-limit slot or window token; one whose
    /// slot is further away is deferred to the first retry tier (not an attempt). Longer than
    /// the first tier, so a backlog sent at its limit never runs dry while its deferred part
    /// waits there.
    #[serde(with = "humantime_serde")]
    pub rate_limit_wait: Duration,
}

impl Section for DispatchSettings {
    const NAME: &'static str = "dispatch";
    const DEFAULTS: &'static str = include_str!("defaults.toml");
    const LIST_KEYS: &'static [&'static str] = &["retry_schedule"];

    fn validate(&self) -> Result<(), ConfigError> {
        if self.prefetch == 0 {
            return ConfigError::invalid("dispatch.prefetch", "must be at least 1");
        }
        if self.request_timeout.is_zero() {
            return ConfigError::invalid("dispatch.request_timeout", "must be more than zero");
        }
        if self.ordered_hold.is_zero() {
            return ConfigError::invalid("dispatch.ordered_hold", "must be more than zero");
        }
        if !self.directory_url.starts_with("http") {
            return ConfigError::invalid(
                "dispatch.directory_url",
                "must be an http(s) URL of consumer-api",
            );
        }
        if !(self.management_url.is_empty()
            || self.management_url.starts_with("http://")
            || self.management_url.starts_with("https://"))
        {
            return ConfigError::invalid(
                "dispatch.management_url",
                "must be empty or an http(s) URL of RabbitMQ's management API",
            );
        }
        if self.directory_key.trim().is_empty() {
            return ConfigError::invalid(
                "dispatch.directory_key",
                "dispatchers need one of consumer-api's api.directory_keys to read the directory",
            );
        }
        if self.retry_schedule.iter().any(Duration::is_zero) {
            return ConfigError::invalid(
                "dispatch.retry_schedule",
                "delays must be more than zero",
            );
        }
        if !(0.0..=1.0).contains(&self.retry_jitter) {
            return ConfigError::invalid("dispatch.retry_jitter", "must be between 0 and 1");
        }
        if self.max_inflight_per_subscription == 0 {
            return ConfigError::invalid(
                "dispatch.max_inflight_per_subscription",
                "must be at least 1",
            );
        }
        if self.max_inflight == 0 {
            return ConfigError::invalid("dispatch.max_inflight", "must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.first_attempt_share) {
            return ConfigError::invalid("dispatch.first_attempt_share", "must be from 0 to 1");
        }
        if self.breaker_failures == 0 {
            return ConfigError::invalid("dispatch.breaker_failures", "must be at least 1");
        }
        if self.member_heartbeat.is_zero() || self.member_heartbeat > Duration::from_secs(10) {
            return ConfigError::invalid(
                "dispatch.member_heartbeat",
                "must be more than zero and at most 10s",
            );
        }
        if self.rate_limit_wait > Duration::from_secs(60) {
            return ConfigError::invalid("dispatch.rate_limit_wait", "must be at most 60s");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use relay_shared::config::Settings;

    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Result<Settings<DispatchSettings>, ConfigError> {
        Settings::from_pairs(pairs)
    }

    #[test]
    fn the_schedule_reads_as_a_list_and_bad_values_name_their_key() {
        let key = ("RELAY__DISPATCH__DIRECTORY_KEY", "dk_test");
        let s = load(&[
            key,
            ("RELAY__DISPATCH__RETRY_SCHEDULE", "100ms,2s"),
            ("RELAY__DISPATCH__PREFETCH", "7"),
        ])
        .unwrap();
        assert_eq!(
            s.process.retry_schedule,
            [Duration::from_millis(100), Duration::from_secs(2)]
        );
        assert_eq!(s.process.prefetch, 7);
        for (pair, named) in [
            (("RELAY__DISPATCH__PREFETCH", "lots"), "dispatch.prefetch"),
            (("RELAY__DISPATCH__PREFETCH", "0"), "dispatch.prefetch"),
            (
                ("RELAY__DISPATCH__REQUEST_TIMEOUT", "soon"),
                "dispatch.request_timeout",
            ),
            (
                ("RELAY__DISPATCH__RETRY_JITTER", "2"),
                "dispatch.retry_jitter",
            ),
            (
                ("RELAY__DISPATCH__MANAGEMENT_URL", "rabbit:15672"),
                "dispatch.management_url",
            ),
            (
                ("RELAY__DISPATCH__FIRST_ATTEMPT_SHARE", "1.5"),
                "dispatch.first_attempt_share",
            ),
            (
                ("RELAY__DISPATCH__MEMBER_HEARTBEAT", "0s"),
                "dispatch.member_heartbeat",
            ),
            (
                ("RELAY__DISPATCH__RATE_LIMIT_WAIT", "2m"),
                "dispatch.rate_limit_wait",
            ),
        ] {
            let err = load(&[key, pair]).unwrap_err();
            assert!(err.to_string().contains(named), "{err}");
        }
        let err = load(&[]).unwrap_err();
        assert!(err.to_string().contains("dispatch.directory_key"), "{err}");
    }
}
