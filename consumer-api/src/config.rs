//! `[api]`: the section consumer-api owns (defaults in `defaults.toml` beside this file).

use std::{net::SocketAddr, time::Duration};

use relay_shared::config::{ConfigError, Section};
use serde::Deserialize;

/// `[api]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    /// Address of the consumer API.
    pub listen: SocketAddr,
    /// Admin bearer key for consumer-api: every route. Operators keep it; dispatchers use a
    /// directory key instead.
    pub admin_key: String,
    /// Directory keys dispatchers present (`dispatch.directory_key`): they may read
    /// `GET /v1/directory` and disable a subscription, nothing else. Several may be listed so
    /// a key can be rotated without downtime.
    pub directory_keys: Vec<String>,
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

impl Section for ApiSettings {
    const NAME: &'static str = "api";
    const DEFAULTS: &'static str = include_str!("defaults.toml");
    const LIST_KEYS: &'static [&'static str] = &["directory_keys"];

    fn validate(&self) -> Result<(), ConfigError> {
        if self.admin_key.len() < 16 {
            return ConfigError::invalid("api.admin_key", "needs at least 16 characters");
        }
        if self
            .directory_keys
            .iter()
            .any(|k| k.len() < 16 || *k == self.admin_key)
        {
            return ConfigError::invalid(
                "api.directory_keys",
                "each needs at least 16 characters and must differ from api.admin_key",
            );
        }
        let url = &self.database_url;
        if !["sqlite:", "postgres://", "postgresql://"]
            .iter()
            .any(|scheme| url.starts_with(scheme))
        {
            return ConfigError::invalid(
                "api.database_url",
                "must be a sqlite:, postgres:// or postgresql:// URL",
            );
        }
        if self.recorder_prefetch == 0 {
            return ConfigError::invalid("api.recorder_prefetch", "must be at least 1");
        }
        if self.maintenance_interval.is_zero() {
            return ConfigError::invalid("api.maintenance_interval", "must be more than zero");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use relay_shared::config::Settings;

    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Result<Settings<ApiSettings>, ConfigError> {
        Settings::from_pairs(pairs)
    }

    #[test]
    fn the_store_url_may_be_sqlite_or_postgres() {
        for (url, ok) in [
            ("sqlite://relay.db", true),
            ("postgres://relay:pw@db:5432/relay", true),
            ("postgresql://relay@db/relay", true),
            ("mysql://db/relay", false),
        ] {
            let checked = load(&[
                ("RELAY__API__ADMIN_KEY", "0123456789abcdef"),
                ("RELAY__API__DATABASE_URL", url),
            ]);
            assert_eq!(checked.is_ok(), ok, "{url}: {checked:?}");
            if let Err(e) = checked {
                assert!(e.to_string().contains("api.database_url"), "{e}");
            }
        }
    }

    #[test]
    fn directory_keys_are_a_list_apart_from_the_admin_key() {
        let admin = ("RELAY__API__ADMIN_KEY", "0123456789abcdef");
        let s = load(&[
            admin,
            (
                "RELAY__API__DIRECTORY_KEYS",
                "dk_0123456789abcdef,dk_fedcba9876543210",
            ),
        ])
        .unwrap();
        assert_eq!(s.process.directory_keys.len(), 2);
        let err = load(&[admin, ("RELAY__API__DIRECTORY_KEYS", "0123456789abcdef")]).unwrap_err();
        assert!(err.to_string().contains("api.directory_keys"), "{err}");
    }
}
