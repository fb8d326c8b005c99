//! Layered configuration: compiled defaults, then an optional TOML file (`--config`), then
//! environment variables `RELAY__SECTION__KEY` (for example `RELAY__INGEST__LISTEN`).
//!
//! One file configures every process; each process validates the sections it uses and exits
//! naming the bad key. The defaults below are the reference for every key.

use std::{net::SocketAddr, path::Path, time::Duration};

use serde::Deserialize;

/// The compiled defaults, in the same TOML shape as a configuration file.
pub const DEFAULTS: &str = include_str!("defaults.toml");

/// Keys whose environment value is a comma-separated list.
const LIST_KEYS: &[&str] = &[
    "ingest.publisher_keys",
    "security.allowed_networks",
    "dispatch.retry_schedule",
];

/// A configuration that cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A source could not be read or a value had the wrong type.
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// A value was read but is not acceptable.
    #[error("configuration key `{key}`: {reason}")]
    Invalid {
        /// Dotted key, e.g. `ingest.publisher_keys`.
        key: &'static str,
        /// Why it was refused.
        reason: String,
    },
}

/// Every setting of every Relay process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Broker connection and topology names.
    pub amqp: AmqpSettings,
    /// `relay ingest`.
    pub ingest: IngestSettings,
    /// `relay dispatch`.
    pub dispatch: DispatchSettings,
    /// `consumer-api`.
    pub api: ApiSettings,
    /// Logging.
    pub log: LogSettings,
    /// Which webhook destinations are allowed.
    pub security: SecuritySettings,
}

/// `[security]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecuritySettings {
    /// Networks (CIDR) webhooks may reach besides public addresses, e.g. `["127.0.0.0/8"]`
    /// for local runs. Internal ranges are refused unless listed here (SSRF protection).
    pub allowed_networks: Vec<String>,
    /// Allow `http://` endpoints; by default only `https://`.
    pub allow_http: bool,
}

impl SecuritySettings {
    /// The destination policy these settings describe.
    ///
    /// # Errors
    /// The `allowed_networks` entry that is not a CIDR.
    pub fn policy(&self) -> Result<crate::ssrf::NetworkPolicy, String> {
        crate::ssrf::NetworkPolicy::new(&self.allowed_networks, self.allow_http)
    }
}

/// A list of humantime durations (`["5s", "5m"]`).
fn durations<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    let list: Vec<humantime_serde::Serde<Duration>> = Deserialize::deserialize(d)?;
    Ok(list
        .into_iter()
        .map(humantime_serde::Serde::into_inner)
        .collect())
}

/// `[amqp]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSettings {
    /// Broker URI, `amqp://user:pass@host:port/vhost` (vhost `/` is `%2f`).
    pub url: String,
    /// Prefix of every exchange and queue name, so several Relays can share a broker.
    pub prefix: String,
    /// Bound on one connection attempt (TCP, AMQP handshake and topology declaration).
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest wait between reconnection attempts (the backoff doubles up to it).
    #[serde(with = "humantime_serde")]
    pub reconnect_max_backoff: Duration,
}

/// `[ingest]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestSettings {
    /// Address of the HTTP API (and its `/metrics`, `/healthz`, `/readyz`).
    pub listen: SocketAddr,
    /// Bearer keys producers present; at least one is required.
    pub publisher_keys: Vec<String>,
    /// Largest event body accepted, in bytes.
    pub max_event_bytes: usize,
    /// Most events in one `POST /v1/events/batch`.
    pub max_batch: usize,
    /// Requests handled at once; more are answered 503 with `Retry-After` (bounds memory).
    pub max_inflight: usize,
    /// How long to wait for the broker's publisher confirm before answering 503.
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
}

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
    /// Full reload interval of the directory, on top of live change notifications.
    #[serde(with = "humantime_serde")]
    pub directory_refresh: Duration,
    /// Delays before each retry after the first try; after the last, a delivery is dead.
    #[serde(deserialize_with = "durations")]
    pub retry_schedule: Vec<Duration>,
    /// Random extra delay, as a fraction of the tier's delay (0.1 = up to +10 %).
    pub retry_jitter: f64,
    /// Longest `Retry-After` honoured on 429/502/503/504 (the largest tier not above it is used).
    #[serde(with = "humantime_serde")]
    pub max_retry_after: Duration,
    /// Webhook requests one subscription may have in flight on one dispatcher; a delivery that
    /// finds no free slot within `inflight_wait` is deferred to the first retry tier without
    /// counting as an attempt.
    pub max_inflight_per_subscription: usize,
    /// How long a delivery waits for a subscription's free slot before it is deferred (a fast
    /// endpoint frees one within milliseconds; a slow one does not).
    #[serde(with = "humantime_serde")]
    pub inflight_wait: Duration,
    /// Webhook requests one dispatcher may have in flight in total (backpressure through prefetch).
    pub max_inflight: usize,
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
}

/// `[api]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    /// Address of the consumer API.
    pub listen: SocketAddr,
    /// Admin bearer key for consumer-api; dispatchers use it to read the directory.
    pub admin_key: String,
    /// Store: `sqlite://path/to/file.db` (created if missing) or `postgres://user:pass@host/db`
    /// (several consumer-api instances may share one PostgreSQL database).
    pub database_url: String,
    /// How long recorded events, attempts and dead letters are kept before being pruned.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// A subscription whose attempts have all failed for this long (no success in between)
    /// is disabled.
    #[serde(with = "humantime_serde")]
    pub disable_after_failing_for: Duration,
    /// Default grace period of a secret rotation, during which both secrets sign.
    #[serde(with = "humantime_serde")]
    pub rotation_grace: Duration,
    /// Unacknowledged messages the recorder holds per queue (bounds its memory); also its
    /// largest write batch.
    pub recorder_prefetch: u16,
    /// How often background upkeep runs: ending rotation grace periods, disabling failing
    /// subscriptions, pruning past the retention.
    #[serde(with = "humantime_serde")]
    pub maintenance_interval: Duration,
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// `pretty` for people, `json` for log shippers.
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `info,relay=debug`.
    pub level: String,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Which process is validating, so each checks only what it uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Process {
    /// `relay ingest`
    Ingest,
    /// `relay dispatch`
    Dispatch,
    /// `consumer-api`
    ConsumerApi,
}

impl Settings {
    /// Loads defaults, then `file` if given, then the process environment.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key that is unreadable or of the wrong type.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(file, None)
    }

    /// As [`Settings::load`], with the environment given as a map (tests).
    ///
    /// # Errors
    /// As [`Settings::load`].
    pub fn load_with_env(
        file: Option<&Path>,
        env: Option<config::Map<String, String>>,
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        let mut environment = config::Environment::with_prefix("RELAY")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",");
        for key in LIST_KEYS {
            environment = environment.with_list_parse_key(key);
        }
        builder = builder.add_source(environment.source(env));
        Ok(builder.build()?.try_deserialize()?)
    }

    /// Checks what `process` relies on.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first bad key.
    pub fn validate(&self, process: Process) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| {
            Err(ConfigError::Invalid {
                key,
                reason: reason.to_owned(),
            })
        };
        if !self.amqp.url.starts_with("amqp://") && !self.amqp.url.starts_with("amqps://") {
            return invalid("amqp.url", "must start with amqp:// or amqps://");
        }
        if self.amqp.url.parse::<lapin::uri::AMQPUri>().is_err() {
            return invalid("amqp.url", "is not a valid AMQP URI");
        }
        if self.amqp.connect_timeout.is_zero() {
            return invalid("amqp.connect_timeout", "must be more than zero");
        }
        if let Err(bad) = self.security.policy() {
            return invalid(
                "security.allowed_networks",
                &format!("{bad:?} is not a CIDR such as 127.0.0.0/8"),
            );
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return invalid("log.level", "is not a valid tracing filter (try `info`)");
        }
        match process {
            Process::Ingest => {
                let keys = &self.ingest.publisher_keys;
                if keys.is_empty() || keys.iter().any(|k| k.trim().is_empty()) {
                    return invalid("ingest.publisher_keys", "needs at least one non-empty key");
                }
                if self.ingest.max_event_bytes < 64 {
                    return invalid("ingest.max_event_bytes", "must be at least 64");
                }
                if self.ingest.max_inflight == 0 {
                    return invalid("ingest.max_inflight", "must be at least 1");
                }
                if self.ingest.max_batch == 0 {
                    return invalid("ingest.max_batch", "must be at least 1");
                }
            }
            Process::Dispatch => {
                if self.dispatch.prefetch == 0 {
                    return invalid("dispatch.prefetch", "must be at least 1");
                }
                if self.dispatch.request_timeout.is_zero() {
                    return invalid("dispatch.request_timeout", "must be more than zero");
                }
                if !self.dispatch.directory_url.starts_with("http") {
                    return invalid(
                        "dispatch.directory_url",
                        "must be an http(s) URL of consumer-api",
                    );
                }
                if self.api.admin_key.trim().is_empty() {
                    return invalid("api.admin_key", "dispatchers need it to read the directory");
                }
                if self.dispatch.retry_schedule.iter().any(Duration::is_zero) {
                    return invalid("dispatch.retry_schedule", "delays must be more than zero");
                }
                if !(0.0..=1.0).contains(&self.dispatch.retry_jitter) {
                    return invalid("dispatch.retry_jitter", "must be between 0 and 1");
                }
                if self.dispatch.max_inflight_per_subscription == 0
                    || self.dispatch.max_inflight == 0
                {
                    return invalid(
                        "dispatch.max_inflight_per_subscription",
                        "in-flight caps must be at least 1",
                    );
                }
                if self.dispatch.breaker_failures == 0 {
                    return invalid("dispatch.breaker_failures", "must be at least 1");
                }
            }
            Process::ConsumerApi => {
                if self.api.admin_key.len() < 16 {
                    return invalid("api.admin_key", "needs at least 16 characters");
                }
                let url = &self.api.database_url;
                if !["sqlite:", "postgres://", "postgresql://"]
                    .iter()
                    .any(|scheme| url.starts_with(scheme))
                {
                    return invalid(
                        "api.database_url",
                        "must be a sqlite:, postgres:// or postgresql:// URL",
                    );
                }
                if self.api.recorder_prefetch == 0 {
                    return invalid("api.recorder_prefetch", "must be at least 1");
                }
                if self.api.maintenance_interval.is_zero() {
                    return invalid("api.maintenance_interval", "must be more than zero");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Option<config::Map<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn defaults_load_and_environment_overrides_them() {
        let s = Settings::load_with_env(
            None,
            env(&[
                ("RELAY__INGEST__LISTEN", "127.0.0.1:9999"),
                ("RELAY__INGEST__PUBLISHER_KEYS", "k1,k2"),
                ("RELAY__DISPATCH__REQUEST_TIMEOUT", "3s"),
                ("RELAY__DISPATCH__PREFETCH", "7"),
                ("RELAY__DISPATCH__RETRY_SCHEDULE", "100ms,2s"),
            ]),
        )
        .unwrap();
        assert_eq!(s.ingest.listen.port(), 9999);
        assert_eq!(s.ingest.publisher_keys, ["k1", "k2"]);
        assert_eq!(s.dispatch.request_timeout, Duration::from_secs(3));
        assert_eq!(s.dispatch.prefetch, 7);
        assert_eq!(
            s.dispatch.retry_schedule,
            [Duration::from_millis(100), Duration::from_secs(2)]
        );
        assert_eq!(s.amqp.prefix, "relay.");
        s.validate(Process::Ingest).unwrap();
    }

    #[test]
    fn a_file_overrides_defaults() {
        let dir = std::env::temp_dir().join(format!("relay-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("relay.toml");
        std::fs::write(&path, "[amqp]\nprefix = \"other.\"\n").unwrap();
        let s = Settings::load_with_env(Some(&path), env(&[])).unwrap();
        assert_eq!(s.amqp.prefix, "other.");
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = Settings::load_with_env(None, env(&[("RELAY__DISPATCH__PREFETCH", "lots")]))
            .unwrap_err();
        assert!(err.to_string().contains("dispatch.prefetch"), "{err}");

        let err =
            Settings::load_with_env(None, env(&[("RELAY__DISPATCH__REQUEST_TIMEOUT", "soon")]))
                .unwrap_err();
        assert!(
            err.to_string().contains("dispatch.request_timeout"),
            "{err}"
        );

        let s = Settings::load_with_env(None, env(&[])).unwrap();
        let err = s.validate(Process::Ingest).unwrap_err();
        assert!(err.to_string().contains("ingest.publisher_keys"), "{err}");

        let s = Settings::load_with_env(None, env(&[("RELAY__AMQP__URL", "http://x")])).unwrap();
        let err = s.validate(Process::Dispatch).unwrap_err();
        assert!(err.to_string().contains("amqp.url"), "{err}");
    }

    #[test]
    fn the_store_url_may_be_sqlite_or_postgres() {
        for (url, ok) in [
            ("sqlite://relay.db", true),
            ("postgres://relay:pw@db:5432/relay", true),
            ("postgresql://relay@db/relay", true),
            ("mysql://db/relay", false),
        ] {
            let s = Settings::load_with_env(
                None,
                env(&[
                    ("RELAY__API__ADMIN_KEY", "0123456789abcdef"),
                    ("RELAY__API__DATABASE_URL", url),
                ]),
            )
            .unwrap();
            let checked = s.validate(Process::ConsumerApi);
            assert_eq!(checked.is_ok(), ok, "{url}: {checked:?}");
            if let Err(e) = checked {
                assert!(e.to_string().contains("api.database_url"), "{e}");
            }
        }
    }

    #[test]
    fn unknown_keys_in_a_file_are_refused() {
        let dir = std::env::temp_dir().join(format!("relay-cfg-unknown-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("relay.toml");
        std::fs::write(&path, "[ingest]\nlisten_addr = \"127.0.0.1:1\"\n").unwrap();
        let err = Settings::load_with_env(Some(&path), env(&[])).unwrap_err();
        assert!(err.to_string().contains("listen_addr"), "{err}");
    }
}
