//! A subscription as dispatchers see it: where to deliver, what to select, how to sign.

use serde::{Deserialize, Serialize};

/// One subscription in the dispatchers' directory (loaded from consumer-api, kept current
/// through `relay.control`). It carries its secrets, so it never leaves the trust boundary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Increases with every change, so a stale notification never overwrites a newer state.
    pub revision: i64,
}

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
