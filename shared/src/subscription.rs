//! A subscription as dispatchers see it: where to deliver, what to select, how to sign, and
//! what to add to each request.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{endpoint::Credentials, signing::SignatureScheme};

/// One subscription in the dispatchers' directory (loaded from consumer-api, kept current
/// through `relay.control`). It carries its secrets, so it never leaves the trust boundary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryEntry {
    /// `sub_…`
    pub id: String,
    /// Endpoint receiving the POSTs.
    pub url: String,
    /// Topic filters; an event matching any of them is delivered.
    pub event_types: Vec<String>,
    /// Owner; an event that names a consumer reaches only that consumer's subscriptions.
    #[serde(default)]
    pub consumer: Option<String>,
    /// Disabled subscriptions receive nothing.
    pub enabled: bool,
    /// Current signing secrets, newest first; more than one during a rotation.
    pub secrets: Vec<String>,
    /// Which signatures deliveries carry (`v1` when absent: entries from an older consumer-api).
    #[serde(default)]
    pub signature_scheme: SignatureScheme,
    /// Current ed25519 signing keys (`whsk_…`), newest first; more than one during a rotation.
    #[serde(default)]
    pub signing_keys: Vec<String>,
    /// Payload filter ([`crate::payload_filter`]), checked when saved.
    #[serde(default)]
    pub filter: Option<Value>,
    /// Static headers added to every request, checked when saved.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Credentials sent in `Authorization`.
    #[serde(default)]
    pub credentials: Option<Credentials>,
    /// Increases with every change, so a stale notification never overwrites a newer state.
    pub revision: i64,
    /// What the endpoint may be sent: rate and concurrency, enforced across all dispatchers.
    #[serde(default)]
    pub limits: Limits,
    /// Whether deliveries of one ordering key go out one at a time, in publish order.
    #[serde(default)]
    pub ordering: Ordering,
}

/// A subscription's delivery order (`"ordering"` in the API).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    /// Deliveries in parallel, retries through the retry tiers (the default).
    #[default]
    None,
    /// Per ordering key, one delivery in flight and publish order; a failing delivery holds
    /// back later events of its key (for this subscription only) until it succeeds or is
    /// dead-lettered.
    Key,
}

impl Ordering {
    /// The API and storage spelling: `none` or `key`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Key => "key",
        }
    }

    /// Parses the API and storage spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(Self::None),
            "key" => Some(Self::Key),
            _ => None,
        }
    }
}

/// A subscription's delivery limits, enforced by the dispatchers together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Requests per second to the endpoint, all dispatchers together; `None`: unlimited.
    #[serde(default)]
    pub rate_limit: Option<f64>,
    /// Requests in flight to the endpoint, all dispatchers together; `None`: each
    /// dispatcher's `dispatch.max_inflight_per_subscription`.
    #[serde(default)]
    pub max_in_flight: Option<u32>,
}

// consumer-api admits only finite rates (0.1 to 10,000), so equality is reflexive.
impl Eq for Limits {}

/// One page of `GET /v1/directory`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DirectoryPage {
    /// Entries in id order.
    pub data: Vec<DirectoryEntry>,
    /// Pass as `after` to read the next page.
    #[serde(default)]
    pub next_cursor: Option<String>,
    /// Whether more entries follow `next_cursor`.
    #[serde(default)]
    pub has_more: bool,
}
