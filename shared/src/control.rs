//! Messages on the `relay.control` exchange: subscription changes every dispatcher applies,
//! event-type catalogue changes every dispatcher and ingest applies, and the dispatchers'
//! own coordination (who is alive, which subscription must slow down).

use serde::{Deserialize, Serialize};

use crate::{event_schema::TypeDefinition, subscription::DirectoryEntry};

/// A change to the subscription directory or the event-type catalogue.
// One message per subscription or type change, decoded and applied at once: the size of the
// largest variant costs nothing, and boxing it would burden every constructor.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlMessage {
    /// Created or changed; applied when its revision is newer than the one held.
    Upsert {
        /// The subscription's new state.
        subscription: DirectoryEntry,
    },
    /// Deleted.
    Delete {
        /// `sub_…`
        id: String,
    },
    /// An event type created or changed: its schema is recompiled.
    EventType {
        /// The type's new state; applied when its revision is newer than the one held.
        event_type: TypeDefinition,
    },
    /// An event type deleted at catalogue revision `revision`.
    EventTypeDeleted {
        /// Type name.
        name: String,
        /// The catalogue revision of the deletion.
        revision: i64,
    },
    /// A dispatcher is alive (sent every `dispatch.member_heartbeat`): each dispatcher takes
    /// `1 / n` of every subscription's limits.
    Dispatcher {
        /// The dispatcher's id for this run (`dsp_…`).
        id: String,
        /// How many dispatchers it shares the limits with, itself included.
        #[serde(default)]
        members: u32,
        /// The largest count for which it holds no more than its part of every limit.
        #[serde(default)]
        settled_for: u32,
    },
    /// A dispatcher got 429 or 503 from a subscription's endpoint: every dispatcher slows it.
    SlowDown {
        /// `sub_…`
        subscription_id: String,
        /// The subscription's total rate in force, thousandths of a request per second
        /// (absent: unlimited, only paused).
        #[serde(default)]
        rate_millis: Option<u64>,
        /// `Retry-After`: nothing is sent to it before this time (Unix milliseconds).
        #[serde(default)]
        paused_until_ms: Option<i64>,
    },
}

impl ControlMessage {
    /// What the change is about: the subscription id or the event type name (for logs).
    pub fn subject(&self) -> &str {
        match self {
            Self::Upsert { subscription } => &subscription.id,
            Self::Delete { id } => id,
            Self::EventType { event_type } => &event_type.name,
            Self::EventTypeDeleted { name, .. } => name,
            Self::Dispatcher { id, .. } => id,
            Self::SlowDown {
                subscription_id, ..
            } => subscription_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_tagged_by_op() {
        let json = serde_json::to_value(ControlMessage::Delete { id: "sub_1".into() }).unwrap();
        assert_eq!(json, serde_json::json!({"op": "delete", "id": "sub_1"}));
    }
}
