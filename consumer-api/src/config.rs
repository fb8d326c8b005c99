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
    /// How long an instance holds a replay job without writing progress before another
    /// instance (or this one, restarted) takes it over and resumes it. Progress is written
    /// after every confirmed event, so this only bounds how long a crashed job waits.
    #[serde(with = "humantime_serde")]
    pub replay_lease: Duration,
    /// `[api.portal]`: the consumer portal.
    pub portal: PortalSettings,
}

/// `[api.portal]`: the web portal where a consumer manages its endpoints, reached through
/// one-time links minted with `POST /v1/consumers/{id}/portal-sessions`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortalSettings {
    /// Serve the portal (and let links be minted).
    pub enabled: bool,
    /// The path the portal is served under, e.g. `/portal`.
    pub path: String,
    /// consumer-api's base URL as browsers reach it, e.g. `https://hooks.example.com`: minted
    /// links start with it, and with `https` the session cookie is `Secure`. Empty: `http://`
    /// and the `Host` of the request that mints the link.
    pub public_url: String,
    /// How long a minted link can be opened.
    #[serde(with = "humantime_serde")]
    pub link_ttl: Duration,
    /// How long a browser session lasts after its link is opened (a link may ask for less or
    /// more, up to 7 days).
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// Who may show the portal in a frame: CSP `frame-ancestors` sources, e.g.
    /// `https://app.example.com` (`'none'`: nobody; `'self'`: consumer-api's own origin).
    pub frame_ancestors: Vec<String>,
}

impl Section for ApiSettings {
    const NAME: &'static str = "api";
    const DEFAULTS: &'static str = include_str!("defaults.toml");
    const LIST_KEYS: &'static [&'static str] = &["directory_keys", "portal.frame_ancestors"];

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
        // A publish waits up to 5 s for its confirm: a shorter lease would be taken over
        // from a healthy instance.
        if self.replay_lease < Duration::from_secs(10) {
            return ConfigError::invalid("api.replay_lease", "must be at least 10s");
        }
        self.portal.validate()
    }
}

impl PortalSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        let path = &self.path;
        if !path.starts_with('/')
            || path.len() < 2
            || path.ends_with('/')
            || !path[1..].split('/').all(|s| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
            || path.starts_with("/v1")
        {
            return ConfigError::invalid(
                "api.portal.path",
                "must be like /portal: segments of letters, digits, - and _, not under /v1",
            );
        }
        if !self.public_url.is_empty()
            && !url::Url::parse(&self.public_url).is_ok_and(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host().is_some()
                    && u.query().is_none()
                    && !self.public_url.ends_with('/')
            })
        {
            return ConfigError::invalid(
                "api.portal.public_url",
                "must be an http(s) URL without a trailing slash, e.g. https://hooks.example.com",
            );
        }
        if self.link_ttl.is_zero() || self.session_ttl.is_zero() {
            return ConfigError::invalid(
                "api.portal.link_ttl",
                "link_ttl and session_ttl must be more than zero",
            );
        }
        // Sources are copied into a header: nothing that could end the directive.
        if self.frame_ancestors.is_empty()
            || self.frame_ancestors.iter().any(|s| {
                s.is_empty()
                    || s.bytes()
                        .any(|b| b == b';' || b == b',' || !b.is_ascii_graphic())
            })
        {
            return ConfigError::invalid(
                "api.portal.frame_ancestors",
                "must list CSP sources ('none', 'self', https://app.example.com), without ; or ,",
            );
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
    fn a_replay_lease_outlasts_a_publish_confirm() {
        let admin = ("RELAY__API__ADMIN_KEY", "0123456789abcdef");
        let s = load(&[admin]).unwrap();
        assert_eq!(s.process.replay_lease, Duration::from_secs(30));
        let err = load(&[admin, ("RELAY__API__REPLAY_LEASE", "5s")]).unwrap_err();
        assert!(err.to_string().contains("api.replay_lease"), "{err}");
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
