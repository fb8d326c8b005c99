//! The consumer portal's operations: one-time links minted by the admin or a consumer's own
//! key, opened once into a browser session scoped to that consumer; and the reads the portal
//! shows beyond the API's (the delivery log across a consumer's endpoints, newest first; each
//! endpoint's recent figures; the event types recorded for it). Everything else the portal
//! does goes through the same operations as the API, with the session's consumer as the
//! [`Caller`].
//!
//! Tokens (link and cookie) are 256 random bits; the store keeps only their SHA-256.

use std::{collections::BTreeMap, time::Duration};

use base64::Engine as _;
use relay_shared::ids::{new_id, random_bytes};
use serde::{Deserialize, Serialize};

use super::{Caller, Service, events::matches_any, subscriptions::OwnedSubscription};
use crate::{
    clock::{duration_ms, now, now_ms},
    error::{ApiError, FieldError},
    store::{
        StoreError,
        portal::{AttemptSearch, DeliveryStats, LoggedAttempt, NewPortalSession, PortalSession},
        tenants::key_hash,
    },
    validation,
};

/// Shortest browser session a link may ask for.
pub const MIN_SESSION_TTL: Duration = Duration::from_secs(1);
/// Longest browser session a link may ask for.
pub const MAX_SESSION_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most events examined to list the event types a consumer has received.
pub const TYPES_EXAMINED: u32 = 5_000;
/// Longest theme name, in characters.
pub const MAX_THEME_NAME_LEN: usize = 100;
/// Longest logo URL, in characters.
pub const MAX_LOGO_URL_LEN: usize = 2048;

/// How the portal looks for one link: the product's name, logo and accent colour.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Theme {
    /// Shown in the header and the page titles, 1 to 100 characters, no control characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]{1,100}$")]
    pub name: Option<String>,
    /// An `https` image URL shown in the header, in normal form (lower-case host name, a
    /// path), at most 2048 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        pattern = "^https://((?!xn--)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\\.)*(?!xn--)[a-z]([a-z0-9-]{0,61}[a-z0-9])?/[A-Za-z0-9._~/-]*$",
        max_length = 2048
    )]
    pub logo_url: Option<String>,
    /// `#rrggbb`; darkened where needed so text on it and links in it keep WCAG AA contrast.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^#[0-9A-Fa-f]{6}$")]
    pub accent: Option<String>,
}

impl Theme {
    /// Checks every field present.
    ///
    /// # Errors
    /// A [`FieldError`] naming the field.
    pub fn validate(&self) -> Result<(), FieldError> {
        if let Some(name) = &self.name {
            let n = name.chars().count();
            if n == 0 || n > MAX_THEME_NAME_LEN || name.chars().any(char::is_control) {
                return Err(FieldError::new(
                    "theme.name",
                    format!(
                        "name must be 1 to {MAX_THEME_NAME_LEN} characters, without control characters"
                    ),
                ));
            }
        }
        if let Some(logo) = &self.logo_url {
            let ok = logo.chars().count() <= MAX_LOGO_URL_LEN
                && url::Url::parse(logo).is_ok_and(|u| {
                    u.scheme() == "https" && u.host().is_some() && u.as_str() == logo
                });
            if !ok {
                return Err(FieldError::new(
                    "theme.logo_url",
                    "logo_url must be an absolute https URL in normal form",
                ));
            }
        }
        if let Some(accent) = &self.accent
            && parse_hex_colour(accent).is_none()
        {
            return Err(FieldError::new("theme.accent", "accent must be #rrggbb"));
        }
        Ok(())
    }
}

/// `#rrggbb` as its three components.
pub fn parse_hex_colour(text: &str) -> Option<[u8; 3]> {
    let hex = text.strip_prefix('#')?;
    if hex.len() != 6 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let byte = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).ok();
    Some([byte(0)?, byte(2)?, byte(4)?])
}

/// A link to mint (`POST /v1/consumers/{id}/portal-sessions`, body optional).
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPortalLink {
    /// How the portal looks for this link.
    #[serde(default, deserialize_with = "validation::optional_object")]
    pub theme: Option<Theme>,
    /// How long the browser session lasts once the link is opened, e.g. `2h` (default
    /// `api.portal.session_ttl`; 1 s to 7 days).
    #[serde(default)]
    #[schema(schema_with = validation::session_ttl_field)]
    pub session_ttl: Option<String>,
}

/// A link just minted: the token is shown this once.
#[derive(Debug, Clone)]
pub struct MintedLink {
    /// `ps_…`, to revoke it (and the session it opens).
    pub id: String,
    /// The link token, part of the URL.
    pub token: String,
    /// The link can be opened until then (Unix milliseconds).
    pub expires_ms: i64,
}

/// Why a link does not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkRefusal {
    /// No such link.
    #[error("unknown link")]
    Unknown,
    /// The link was opened before: links are single use.
    #[error("link already used")]
    Used,
    /// The link was revoked.
    #[error("link revoked")]
    Revoked,
    /// The link expired before it was opened.
    #[error("link expired")]
    Expired,
}

/// An open browser session: whom it shows, how, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortalContext {
    /// `ps_…`.
    pub session_id: String,
    /// The consumer, as the caller of every operation.
    pub caller: Caller,
    /// The consumer's id.
    pub consumer_id: String,
    /// The look.
    pub theme: Theme,
    /// The session ends then (Unix milliseconds).
    pub expires_ms: i64,
}

/// The delivery states the portal filters on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// The endpoint answered 2xx.
    Delivered,
    /// A request failed (and was retried, or the endpoint said it is gone).
    Failed,
    /// The last attempt failed: the delivery is a dead letter.
    Dead,
    /// No request was made (breaker open, in-flight cap full): deferred.
    Deferred,
}

impl DeliveryStatus {
    /// Every status, in display order.
    pub const ALL: [Self; 4] = [Self::Delivered, Self::Failed, Self::Dead, Self::Deferred];

    /// The name in URLs and on screen.
    pub fn name(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Failed => "failed",
            Self::Dead => "dead",
            Self::Deferred => "deferred",
        }
    }

    /// The status named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The status of an attempt outcome (stored name).
    pub fn of_outcome(outcome: &str) -> Self {
        match outcome {
            "success" => Self::Delivered,
            "dead" => Self::Dead,
            "circuit_open" | "deferred" => Self::Deferred,
            _ => Self::Failed,
        }
    }

    fn outcomes(self) -> &'static [&'static str] {
        match self {
            Self::Delivered => &["success"],
            Self::Failed => &["retry_scheduled", "disabled"],
            Self::Dead => &["dead"],
            Self::Deferred => &["circuit_open", "deferred"],
        }
    }
}

/// A delivery-log search over the caller's endpoints, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryQuery {
    /// Only this endpoint's.
    pub subscription_id: Option<String>,
    /// Only this event's.
    pub event_id: Option<String>,
    /// Only events of this type.
    pub event_type: Option<String>,
    /// Only attempts in this state.
    pub status: Option<DeliveryStatus>,
    /// From this time (Unix milliseconds).
    pub since_ms: Option<i64>,
    /// Until this time (Unix milliseconds, exclusive).
    pub until_ms: Option<i64>,
    /// Only attempts older than this position (the previous page's last).
    pub before: Option<i64>,
    /// Page size.
    pub limit: u32,
}

/// One page of the delivery log.
#[derive(Debug, Clone)]
pub struct DeliveryPage {
    /// The attempts, newest first.
    pub items: Vec<LoggedAttempt>,
    /// The `before` of the next (older) page, when there is one.
    pub next_before: Option<i64>,
}

/// One attempt with what was sent.
#[derive(Debug, Clone)]
pub struct AttemptDetail {
    /// The attempt.
    pub attempt: LoggedAttempt,
    /// The request body (the event envelope), when the event is recorded.
    pub body: Option<String>,
}

/// An event type the caller has received (or could subscribe to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventTypeSeen {
    /// The type.
    pub event_type: String,
    /// Events of this type among the latest examined.
    pub count: i64,
    /// The latest event of this type the caller may see, as an example.
    pub example: Option<String>,
}

/// A fresh 256-bit token, base64url.
fn token() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<32>())
}

impl Service {
    /// Mints a one-time portal link for `consumer_id`: the admin for any consumer, a
    /// consumer key for its own only (another's answers not found).
    ///
    /// # Errors
    /// A [`FieldError`] on the theme or `session_ttl`, [`StoreError::Missing`] when there
    /// is no such consumer (or it is another's), or a store failure.
    pub async fn mint_portal_link(
        &self,
        caller: &Caller,
        consumer_id: &str,
        request: NewPortalLink,
        link_ttl: Duration,
        default_session_ttl: Duration,
    ) -> Result<MintedLink, ApiError> {
        if !caller.may_see(Some(consumer_id)) || matches!(caller, Caller::Directory) {
            return Err(StoreError::Missing("consumer").into());
        }
        let theme = request.theme.unwrap_or_default();
        theme.validate()?;
        let session_ttl = match request.session_ttl.as_deref() {
            Some(ttl) => validation::parse_session_ttl(ttl)?,
            None => default_session_ttl,
        };
        if !(MIN_SESSION_TTL..=MAX_SESSION_TTL).contains(&session_ttl) {
            return Err(
                FieldError::new("session_ttl", "session_ttl must be from 1s to 7days").into(),
            );
        }
        self.store.get_consumer(consumer_id).await?;
        let token = token();
        let expires_ms = now_ms().saturating_add(duration_ms(link_ttl));
        let id = new_id("ps");
        let theme_json =
            (theme != Theme::default()).then(|| serde_json::to_string(&theme).unwrap_or_default());
        self.store
            .create_portal_session(&NewPortalSession {
                id: id.clone(),
                consumer_id: consumer_id.to_owned(),
                link_hash: key_hash(&token),
                link_expires_ms: expires_ms,
                session_ttl_ms: duration_ms(session_ttl),
                theme: theme_json,
                created_at: now(),
            })
            .await?;
        tracing::info!(consumer = %consumer_id, portal_session_id = %id, "portal link minted");
        Ok(MintedLink {
            id,
            token,
            expires_ms,
        })
    }

    /// Revokes a portal link or session of `consumer_id` (same access rule as minting).
    ///
    /// # Errors
    /// [`StoreError::Missing`] or a store failure.
    pub async fn revoke_portal_session(
        &self,
        caller: &Caller,
        consumer_id: &str,
        id: &str,
    ) -> Result<(), ApiError> {
        if !caller.may_see(Some(consumer_id)) || matches!(caller, Caller::Directory) {
            return Err(StoreError::Missing("portal session").into());
        }
        self.store
            .revoke_portal_session(consumer_id, id, &now())
            .await?;
        tracing::info!(consumer = %consumer_id, portal_session_id = %id, "portal session revoked");
        Ok(())
    }

    /// Opens a link (once): returns the session and its cookie token.
    ///
    /// # Errors
    /// `Ok(Err(refusal))` when the link does not open; a store failure.
    pub async fn open_portal_link(
        &self,
        link_token: &str,
    ) -> Result<Result<(PortalContext, String), LinkRefusal>, ApiError> {
        let link_hash = key_hash(link_token);
        let session_token = token();
        let opened = self
            .store
            .open_portal_session(&link_hash, &key_hash(&session_token), now_ms(), &now())
            .await?;
        if let Some(session) = opened {
            tracing::info!(consumer = %session.consumer_id, portal_session_id = %session.id, "portal link opened");
            return Ok(Ok((context(session), session_token)));
        }
        let refusal = match self.store.portal_session_by_link(&link_hash).await? {
            None => LinkRefusal::Unknown,
            Some(s) if s.revoked_at.is_some() => LinkRefusal::Revoked,
            Some(s) if s.opened_at.is_some() => LinkRefusal::Used,
            Some(_) => LinkRefusal::Expired,
        };
        Ok(Err(refusal))
    }

    /// The open session the cookie token belongs to; `None` when it is unknown, revoked,
    /// expired, or its consumer is gone.
    ///
    /// # Errors
    /// A store failure.
    pub async fn portal_session(
        &self,
        session_token: &str,
    ) -> Result<Option<PortalContext>, ApiError> {
        let session = self.store.portal_session(&key_hash(session_token)).await?;
        Ok(session
            .filter(|s| s.revoked_at.is_none())
            .filter(|s| s.session_expires_ms.is_some_and(|end| end > now_ms()))
            .map(context))
    }

    /// Ends a session at its user's request.
    ///
    /// # Errors
    /// A store failure.
    pub async fn sign_out(&self, session: &PortalContext) -> Result<(), ApiError> {
        self.store
            .revoke_portal_session(&session.consumer_id, &session.session_id, &now())
            .await?;
        Ok(())
    }

    /// Forgets links and sessions that ended more than a day ago.
    ///
    /// # Errors
    /// A store failure.
    pub async fn prune_portal_sessions(&self) -> Result<u64, StoreError> {
        self.store
            .prune_portal_sessions(now_ms().saturating_sub(24 * 3600 * 1000))
            .await
    }

    /// One page of the delivery log across the caller's endpoints, newest first.
    ///
    /// # Errors
    /// [`ApiError::Forbidden`] for a caller that is not a consumer, or a store failure.
    pub async fn search_deliveries(
        &self,
        caller: &Caller,
        query: &DeliveryQuery,
    ) -> Result<DeliveryPage, ApiError> {
        let consumer = caller.consumer().ok_or(ApiError::Forbidden)?;
        let limit = query.limit.clamp(1, 200);
        let mut rows = self
            .store
            .search_attempts(&AttemptSearch {
                consumer: consumer.to_owned(),
                subscription_id: query.subscription_id.clone(),
                event_id: query.event_id.clone(),
                event_type: query.event_type.clone(),
                outcomes: query
                    .status
                    .map(|s| s.outcomes().iter().map(|o| (*o).to_owned()).collect())
                    .unwrap_or_default(),
                since_ms: query.since_ms,
                until_ms: query.until_ms,
                before: query.before,
                limit: limit + 1,
            })
            .await?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        Ok(DeliveryPage {
            next_before: more.then(|| rows.last().map(|a| a.attempt.seq)).flatten(),
            items: rows,
        })
    }

    /// One attempt of the caller's, with the request body.
    ///
    /// # Errors
    /// [`StoreError::Missing`] when there is no such attempt or it is another consumer's, or
    /// a store failure.
    pub async fn attempt_detail(
        &self,
        caller: &Caller,
        seq: i64,
    ) -> Result<AttemptDetail, ApiError> {
        let attempt = self
            .store
            .logged_attempt(seq)
            .await?
            .filter(|a| caller.may_see(a.consumer.as_deref()))
            .ok_or(StoreError::Missing("attempt"))?;
        let body = match self.store.event(&attempt.attempt.record.event_id).await {
            Ok(event) => Some(event.event.body),
            Err(StoreError::Missing(_)) => None,
            Err(e) => return Err(e.into()),
        };
        Ok(AttemptDetail { attempt, body })
    }

    /// Recent delivery figures of each of the caller's endpoints (those with attempts in the
    /// last `window`, and the failure streaks of all).
    ///
    /// # Errors
    /// [`ApiError::Forbidden`] for a caller that is not a consumer, or a store failure.
    pub async fn endpoint_stats(
        &self,
        caller: &Caller,
        window: Duration,
    ) -> Result<BTreeMap<String, DeliveryStats>, ApiError> {
        let consumer = caller.consumer().ok_or(ApiError::Forbidden)?;
        Ok(self
            .store
            .delivery_stats(consumer, now_ms().saturating_sub(duration_ms(window)))
            .await?)
    }

    /// The figures of one endpoint (see [`Service::endpoint_stats`]).
    ///
    /// # Errors
    /// A store failure.
    pub async fn subscription_stats(
        &self,
        subscription: &OwnedSubscription,
        window: Duration,
    ) -> Result<DeliveryStats, ApiError> {
        let Some(consumer) = subscription.consumer.as_deref() else {
            return Ok(DeliveryStats::default());
        };
        let mut all = self
            .store
            .delivery_stats(consumer, now_ms().saturating_sub(duration_ms(window)))
            .await?;
        Ok(all.remove(&subscription.id).unwrap_or_default())
    }

    /// The event types among the latest events naming the caller or none, each with the
    /// latest such event the caller may see (the pull API's rule) as an example.
    ///
    /// # Errors
    /// [`ApiError::Forbidden`] for a caller that is not a consumer, or a store failure.
    pub async fn event_types_seen(&self, caller: &Caller) -> Result<Vec<EventTypeSeen>, ApiError> {
        let consumer = caller.consumer().ok_or(ApiError::Forbidden)?;
        let filters = self.visibility(caller).await?.filters;
        let mut out = Vec::new();
        for seen in self.store.seen_types(consumer, TYPES_EXAMINED).await? {
            // An unnamed event is visible when one of the consumer's filters matches its
            // type, so the latest visible one is either the latest of all or the latest own.
            let visible = if matches_any(&filters, &seen.event_type) {
                Some(seen.last_seq)
            } else {
                seen.last_own_seq
            };
            let example = match visible {
                Some(seq) => Some(self.store.event_body_at(seq).await?),
                None => None,
            };
            out.push(EventTypeSeen {
                event_type: seen.event_type,
                count: seen.count,
                example,
            });
        }
        Ok(out)
    }

    /// The names of the event types among the latest events naming the caller or none.
    ///
    /// # Errors
    /// [`ApiError::Forbidden`] for a caller that is not a consumer, or a store failure.
    pub async fn event_type_names(&self, caller: &Caller) -> Result<Vec<String>, ApiError> {
        let consumer = caller.consumer().ok_or(ApiError::Forbidden)?;
        Ok(self
            .store
            .seen_types(consumer, TYPES_EXAMINED)
            .await?
            .into_iter()
            .map(|t| t.event_type)
            .collect())
    }
}

fn context(session: PortalSession) -> PortalContext {
    let theme = session
        .theme
        .as_deref()
        .and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or_default();
    PortalContext {
        session_id: session.id,
        caller: Caller::Consumer(session.consumer_id.clone()),
        consumer_id: session.consumer_id,
        theme,
        expires_ms: session.session_expires_ms.unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_theme_is_an_object_or_absent() {
        let link = |body: &str| serde_json::from_str::<NewPortalLink>(body);
        assert!(link(r#"{"theme": [null, null]}"#).is_err());
        assert!(link(r#"{"theme": "dark"}"#).is_err());
        assert!(link(r#"{"theme": {"colour": "red"}}"#).is_err());
        assert_eq!(link(r#"{"theme": null}"#).unwrap().theme, None);
        assert_eq!(link("{}").unwrap().theme, None);
        let themed = link(r##"{"theme": {"accent": "#0a7cff"}}"##).unwrap();
        assert_eq!(themed.theme.unwrap().accent.as_deref(), Some("#0a7cff"));
    }

    #[test]
    fn a_theme_takes_only_safe_values() {
        let ok = Theme {
            name: Some("Acme Hooks".into()),
            logo_url: Some("https://cdn.acme.example/logo.svg".into()),
            accent: Some("#0a7cff".into()),
        };
        assert!(ok.validate().is_ok());
        for (theme, field) in [
            (
                Theme {
                    logo_url: Some("javascript:alert(1)".into()),
                    ..Theme::default()
                },
                "theme.logo_url",
            ),
            (
                Theme {
                    logo_url: Some("http://cdn.acme.example/logo.svg".into()),
                    ..Theme::default()
                },
                "theme.logo_url",
            ),
            (
                Theme {
                    accent: Some("red;}body{display:none".into()),
                    ..Theme::default()
                },
                "theme.accent",
            ),
            (
                Theme {
                    name: Some("a\u{7}".into()),
                    ..Theme::default()
                },
                "theme.name",
            ),
        ] {
            assert_eq!(theme.validate().unwrap_err().field, field);
        }
    }

    #[test]
    fn statuses_cover_every_outcome() {
        for outcome in [
            "success",
            "retry_scheduled",
            "dead",
            "circuit_open",
            "deferred",
            "disabled",
        ] {
            let status = DeliveryStatus::of_outcome(outcome);
            assert!(status.outcomes().contains(&outcome), "{outcome}");
            assert_eq!(DeliveryStatus::parse(status.name()), Some(status));
        }
    }
}
