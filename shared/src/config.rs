//! Layered configuration: compiled defaults, then an optional TOML file (`--config`), then
//! environment variables `RELAY__SECTION__KEY` (for example `RELAY__INGEST__LISTEN`).
//!
//! This module owns only what every process reads: `[amqp]`, `[log]` and `[security]`. Each
//! process owns its section (`[ingest]`, `[dispatch]`, `[api]`) as a [`Section`] type next to
//! its code, with its own defaults and checks; [`Settings::load`] puts the two together and
//! exits naming the bad key. One file may configure every process: a process skips the other
//! processes' sections, and a section name nobody owns is refused (a misspelt `[dispach]` must
//! not be silently ignored).

use std::{path::Path, time::Duration};

use serde::{Deserialize, de::DeserializeOwned};

/// The compiled defaults of the shared sections, in the same TOML shape as a configuration file.
pub const DEFAULTS: &str = include_str!("defaults.toml");

/// Every top-level section a Relay configuration file may have. Only the names live here, so
/// a file shared by every process passes each one's check while a misspelt section is refused.
pub const SECTIONS: &[&str] = &["amqp", "log", "security", "ingest", "dispatch", "api"];

/// Most ingress shards: far past what one cluster's cores use, small enough that a typo
/// does not create thousands of queues.
const MAX_INGRESS_SHARDS: u16 = 256;

/// Shared keys whose environment value is a comma-separated list.
const LIST_KEYS: &[&str] = &[
    "security.allowed_networks",
    "security.allowed_hosts",
    "amqp.urls",
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
    /// A top-level section no process owns.
    #[error(
        "configuration: unknown section `{0}` (known: amqp, log, security, ingest, dispatch, api)"
    )]
    UnknownSection(String),
}

impl ConfigError {
    /// [`ConfigError::Invalid`] as an `Err`, for validation code.
    ///
    /// # Errors
    /// Always.
    pub fn invalid<T>(key: &'static str, reason: &str) -> Result<T, Self> {
        Err(Self::Invalid {
            key,
            reason: reason.to_owned(),
        })
    }
}

/// A process's own section of the configuration.
pub trait Section: DeserializeOwned {
    /// Its top-level name, e.g. `ingest`.
    const NAME: &'static str;
    /// Its compiled defaults: TOML with the `[NAME]` header, every key documented.
    const DEFAULTS: &'static str;
    /// Its keys whose environment value is a comma-separated list, without the section name.
    const LIST_KEYS: &'static [&'static str] = &[];

    /// Checks what the process relies on.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first bad key.
    fn validate(&self) -> Result<(), ConfigError>;
}

/// What one process reads: the shared sections and its own section `S`.
#[derive(Debug, Clone)]
pub struct Settings<S> {
    /// Broker connection and topology names.
    pub amqp: AmqpSettings,
    /// Logging.
    pub log: LogSettings,
    /// Which webhook destinations are allowed.
    pub security: SecuritySettings,
    /// The process's own section.
    pub process: S,
}

/// `[security]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecuritySettings {
    /// Networks (CIDR) webhooks may reach besides public addresses, e.g. `["127.0.0.0/8"]`
    /// for local runs. Internal ranges are refused unless listed here (SSRF protection).
    pub allowed_networks: Vec<String>,
    /// Host names webhooks may use although they are metadata, internal (`.internal`,
    /// `.local`, `.svc`, …) or single-label names, refused by default whatever they resolve
    /// to: exact names (`hooks.corp.internal`) or `*.` and a suffix (`*.svc.cluster.local`).
    pub allowed_hosts: Vec<String>,
    /// Allow `http://` endpoints; by default only `https://`.
    pub allow_http: bool,
}

impl SecuritySettings {
    /// The destination policy these settings describe.
    ///
    /// # Errors
    /// The `allowed_networks` entry that is not a CIDR, or the `allowed_hosts` entry that is
    /// not a host name pattern.
    pub fn policy(&self) -> Result<crate::ssrf::NetworkPolicy, String> {
        crate::ssrf::NetworkPolicy::new(&self.allowed_networks, self.allow_http)?
            .with_allowed_hosts(&self.allowed_hosts)
    }
}

/// A list of humantime durations (`["5s", "5m"]`), for section types.
///
/// # Errors
/// An entry is not a duration.
pub fn durations<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
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
    /// Broker URI, `amqp://user:pass@host:port/vhost` (vhost `/` is `%2f`); the one-node
    /// form of `urls`, used when `urls` is empty.
    pub url: String,
    /// The URIs of a cluster's nodes. A process connects to the first that answers and, when
    /// that connection is lost, tries the next ones first (with backoff once all failed).
    /// Replaces `url` when not empty.
    pub urls: Vec<String>,
    /// Prefix of every exchange and queue name, so several Relays can share a broker.
    pub prefix: String,
    /// Number of ingress queues (`ingress.0` … `ingress.N-1`) events are spread over by a
    /// hash of their ordering key, so more than one queue leader takes the load; 1 (the
    /// default) is the single `ingress` queue. More than 1 needs the broker's
    /// `rabbitmq_consistent_hash_exchange` plugin. Every process must have the same value;
    /// changing it on a running system is a drain-and-switch (docs/SCALING.md).
    pub ingress_shards: u16,
    /// Declare the ingress queue(s) single-active-consumer: one dispatcher at a time reads
    /// each (the others stand by), which `"ordering": "key"` subscriptions need to keep their
    /// order across dispatchers. Spread the work with `ingress_shards`. Every process must
    /// have the same value; changing it is a drain-and-switch (docs/SCALING.md).
    pub ordered_ingress: bool,
    /// Bound on one connection attempt (TCP, AMQP handshake and topology declaration).
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest wait between reconnection attempts (the backoff doubles up to it).
    #[serde(with = "humantime_serde")]
    pub reconnect_max_backoff: Duration,
    /// After creating Relay's queues (the first start on a broker), how long a process waits
    /// before it reports ready and takes traffic: a quorum queue whose node is killed within
    /// about 2 s of its creation can come back empty, confirmed messages lost (RabbitMQ 3.10;
    /// docs/RELIABILITY.md). `0s` turns the wait off.
    #[serde(with = "humantime_serde")]
    pub new_topology_settle: Duration,
}

impl AmqpSettings {
    /// The broker URIs to try, in order: `urls`, or `url` alone.
    pub fn node_urls(&self) -> Vec<&str> {
        if self.urls.is_empty() {
            vec![self.url.as_str()]
        } else {
            self.urls.iter().map(String::as_str).collect()
        }
    }
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

/// Reads the top-level table by hand: the section's name is `S::NAME`, and other processes'
/// sections are skipped. Values go through the `config` crate's deserializer, so an error
/// still names its full key (`dispatch.prefetch`).
impl<'de, S: Section> Deserialize<'de> for Settings<S> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Top<S>(std::marker::PhantomData<S>);

        impl<'de, S: Section> serde::de::Visitor<'de> for Top<S> {
            type Value = Settings<S>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("configuration sections")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                use serde::de::Error as _;
                let (mut amqp, mut log, mut security, mut process) = (None, None, None, None);
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "amqp" => amqp = Some(map.next_value()?),
                        "log" => log = Some(map.next_value()?),
                        "security" => security = Some(map.next_value()?),
                        name if name == S::NAME => process = Some(map.next_value()?),
                        name if SECTIONS.contains(&name) => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                        name => {
                            return Err(A::Error::custom(format!(
                                "unknown section `{name}` (known: {})",
                                SECTIONS.join(", ")
                            )));
                        }
                    }
                }
                Ok(Settings {
                    amqp: amqp.ok_or_else(|| A::Error::missing_field("amqp"))?,
                    log: log.ok_or_else(|| A::Error::missing_field("log"))?,
                    security: security.ok_or_else(|| A::Error::missing_field("security"))?,
                    process: process.ok_or_else(|| A::Error::missing_field(S::NAME))?,
                })
            }
        }

        deserializer.deserialize_map(Top(std::marker::PhantomData))
    }
}

impl<S: Section> Settings<S> {
    /// Loads defaults, then `file` if given, then the process environment, and validates.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key that is unreadable, of the wrong type or refused.
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
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
            .add_source(config::File::from_str(
                S::DEFAULTS,
                config::FileFormat::Toml,
            ));
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
        for key in S::LIST_KEYS {
            environment = environment.with_list_parse_key(&format!("{}.{key}", S::NAME));
        }
        let config = builder.add_source(environment.source(env)).build()?;
        let settings: Self = config.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// As [`Settings::load`] with no file and only `pairs` as the environment (tests).
    ///
    /// # Errors
    /// As [`Settings::load`].
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Result<Self, ConfigError> {
        let env = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Self::load_with_env(None, Some(env))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let url_key = if self.amqp.urls.is_empty() {
            "amqp.url"
        } else {
            "amqp.urls"
        };
        for url in self.amqp.node_urls() {
            if !url.starts_with("amqp://") && !url.starts_with("amqps://") {
                return ConfigError::invalid(url_key, "must start with amqp:// or amqps://");
            }
            if url.parse::<lapin::uri::AMQPUri>().is_err() {
                return ConfigError::invalid(url_key, "is not a valid AMQP URI");
            }
        }
        if !(1..=MAX_INGRESS_SHARDS).contains(&self.amqp.ingress_shards) {
            return ConfigError::invalid(
                "amqp.ingress_shards",
                &format!("must be between 1 and {MAX_INGRESS_SHARDS}"),
            );
        }
        if self.amqp.connect_timeout.is_zero() {
            return ConfigError::invalid("amqp.connect_timeout", "must be more than zero");
        }
        if let Err(bad) = crate::ssrf::NetworkPolicy::new(&self.security.allowed_networks, false) {
            return ConfigError::invalid(
                "security.allowed_networks",
                &format!("{bad:?} is not a CIDR such as 127.0.0.0/8"),
            );
        }
        if let Some(bad) = self
            .security
            .allowed_hosts
            .iter()
            .find(|h| crate::ssrf::HostPattern::parse(h).is_err())
        {
            return ConfigError::invalid(
                "security.allowed_hosts",
                &format!("{bad:?} is not a host name or `*.` and a host name"),
            );
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return ConfigError::invalid("log.level", "is not a valid tracing filter (try `info`)");
        }
        self.process.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A section as a process would define one.
    #[derive(Debug, Clone, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Demo {
        size: u16,
        names: Vec<String>,
        #[serde(with = "humantime_serde")]
        wait: Duration,
    }

    impl Section for Demo {
        const NAME: &'static str = "ingest";
        const DEFAULTS: &'static str = "[ingest]\nsize = 3\nnames = []\nwait = \"1s\"\n";
        const LIST_KEYS: &'static [&'static str] = &["names"];

        fn validate(&self) -> Result<(), ConfigError> {
            if self.size == 0 {
                return ConfigError::invalid("ingest.size", "must be at least 1");
            }
            Ok(())
        }
    }

    fn load(pairs: &[(&str, &str)]) -> Result<Settings<Demo>, ConfigError> {
        Settings::from_pairs(pairs)
    }

    #[test]
    fn defaults_load_and_environment_overrides_them() {
        let s = load(&[
            ("RELAY__INGEST__SIZE", "7"),
            ("RELAY__INGEST__NAMES", "k1,k2"),
            ("RELAY__INGEST__WAIT", "3s"),
            ("RELAY__SECURITY__ALLOWED_NETWORKS", "127.0.0.0/8,::1/128"),
        ])
        .unwrap();
        assert_eq!(s.process.size, 7);
        assert_eq!(s.process.names, ["k1", "k2"]);
        assert_eq!(s.process.wait, Duration::from_secs(3));
        assert_eq!(s.security.allowed_networks.len(), 2);
        assert_eq!(s.amqp.prefix, "relay.");
    }

    #[test]
    fn a_file_overrides_defaults() {
        let dir = std::env::temp_dir().join(format!("relay-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("relay.toml");
        std::fs::write(&path, "[amqp]\nprefix = \"other.\"\n[ingest]\nsize = 9\n").unwrap();
        let s = Settings::<Demo>::load_with_env(Some(&path), Some(config::Map::new())).unwrap();
        assert_eq!(s.amqp.prefix, "other.");
        assert_eq!(s.process.size, 9);
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = load(&[("RELAY__INGEST__SIZE", "lots")]).unwrap_err();
        assert!(err.to_string().contains("ingest.size"), "{err}");
        let err = load(&[("RELAY__INGEST__WAIT", "soon")]).unwrap_err();
        assert!(err.to_string().contains("ingest.wait"), "{err}");
        let err = load(&[("RELAY__INGEST__SIZE", "0")]).unwrap_err();
        assert!(err.to_string().contains("ingest.size"), "{err}");
        let err = load(&[("RELAY__AMQP__URL", "http://x")]).unwrap_err();
        assert!(err.to_string().contains("amqp.url"), "{err}");
        let err = load(&[("RELAY__AMQP__URLS", "amqp://a:5672/%2f,http://b")]).unwrap_err();
        assert!(err.to_string().contains("amqp.urls"), "{err}");
        let err = load(&[("RELAY__LOG__LEVEL", "[[")]).unwrap_err();
        assert!(err.to_string().contains("log.level"), "{err}");
        for shards in ["0", "257"] {
            let err = load(&[("RELAY__AMQP__INGRESS_SHARDS", shards)]).unwrap_err();
            assert!(err.to_string().contains("amqp.ingress_shards"), "{err}");
        }
        assert_eq!(load(&[]).unwrap().amqp.ingress_shards, 1);
    }

    #[test]
    fn urls_replace_the_single_url() {
        let s = load(&[]).unwrap();
        assert_eq!(s.amqp.node_urls(), [s.amqp.url.as_str()]);
        let s = load(&[(
            "RELAY__AMQP__URLS",
            "amqp://g:g@n1:5672/%2f,amqp://g:g@n2:5672/%2f",
        )])
        .unwrap();
        assert_eq!(
            s.amqp.node_urls(),
            ["amqp://g:g@n1:5672/%2f", "amqp://g:g@n2:5672/%2f"]
        );
    }

    #[test]
    fn other_processes_sections_are_skipped_and_unknown_ones_refused() {
        // One environment for every process: a dispatcher key does not trouble ingest.
        load(&[("RELAY__DISPATCH__PREFETCH", "lots")]).unwrap();
        let err = load(&[("RELAY__DISPACH__PREFETCH", "7")]).unwrap_err();
        assert!(err.to_string().contains("dispach"), "{err}");
    }

    #[test]
    fn unknown_keys_in_a_file_are_refused() {
        let dir = std::env::temp_dir().join(format!("relay-cfg-unknown-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("relay.toml");
        std::fs::write(&path, "[ingest]\nsizes = 1\n").unwrap();
        let err =
            Settings::<Demo>::load_with_env(Some(&path), Some(config::Map::new())).unwrap_err();
        assert!(err.to_string().contains("sizes"), "{err}");
    }
}
