//! `[ingest]`: the section `relay ingest` owns (defaults in `defaults.toml` beside this file).

use std::{net::SocketAddr, time::Duration};

use relay_shared::config::{ConfigError, Section};
use serde::Deserialize;

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
    /// Base URL of consumer-api, where the event-type catalogue (the schemas events are
    /// checked against) is loaded from.
    pub catalogue_url: String,
    /// The credential for the catalogue: one of consumer-api's `api.directory_keys` (it reads
    /// the catalogue; ingest uses it for nothing else).
    pub catalogue_key: String,
    /// Full reload interval of the catalogue, on top of live change notifications.
    #[serde(with = "humantime_serde")]
    pub catalogue_refresh: Duration,
}

impl Section for IngestSettings {
    const NAME: &'static str = "ingest";
    const DEFAULTS: &'static str = include_str!("defaults.toml");
    const LIST_KEYS: &'static [&'static str] = &["publisher_keys"];

    fn validate(&self) -> Result<(), ConfigError> {
        let keys = &self.publisher_keys;
        if keys.is_empty() || keys.iter().any(|k| k.trim().is_empty()) {
            return ConfigError::invalid(
                "ingest.publisher_keys",
                "needs at least one non-empty key",
            );
        }
        if self.max_event_bytes < 64 {
            return ConfigError::invalid("ingest.max_event_bytes", "must be at least 64");
        }
        if self.max_inflight == 0 {
            return ConfigError::invalid("ingest.max_inflight", "must be at least 1");
        }
        if self.max_batch == 0 {
            return ConfigError::invalid("ingest.max_batch", "must be at least 1");
        }
        if !self.catalogue_url.starts_with("http") {
            return ConfigError::invalid(
                "ingest.catalogue_url",
                "must be an http(s) URL of consumer-api",
            );
        }
        if self.catalogue_key.trim().is_empty() {
            return ConfigError::invalid(
                "ingest.catalogue_key",
                "needs one of consumer-api's api.directory_keys",
            );
        }
        if self.catalogue_refresh.is_zero() {
            return ConfigError::invalid("ingest.catalogue_refresh", "must be more than zero");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use relay_shared::config::Settings;

    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Result<Settings<IngestSettings>, ConfigError> {
        Settings::from_pairs(pairs)
    }

    #[test]
    fn publisher_keys_are_required_and_read_as_a_list() {
        let err = load(&[]).unwrap_err();
        assert!(err.to_string().contains("ingest.publisher_keys"), "{err}");
        let s = load(&[
            ("RELAY__INGEST__PUBLISHER_KEYS", "k1,k2"),
            ("RELAY__INGEST__LISTEN", "127.0.0.1:9999"),
            ("RELAY__INGEST__CATALOGUE_KEY", "dk"),
        ])
        .unwrap();
        assert_eq!(s.process.publisher_keys, ["k1", "k2"]);
        assert_eq!(s.process.listen.port(), 9999);
    }

    #[test]
    fn the_catalogue_credential_is_required() {
        let err = load(&[("RELAY__INGEST__PUBLISHER_KEYS", "k1")]).unwrap_err();
        assert!(err.to_string().contains("ingest.catalogue_key"), "{err}");
    }
}
