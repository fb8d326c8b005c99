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
        /// Its heartbeat, milliseconds (absent: 1 s): its `holding` counts for three.
        #[serde(default)]
        heartbeat_ms: u64,
        /// The subscriptions it holds back now (at most [`HOLDING_REPORTED`]), for the status
        /// consumer-api shows.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        holding: Vec<Holding>,
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
        /// The slow-down episode's recovery step, thousandths of a request per second added
        /// per second of successes (absent: from an older dispatcher, or only paused).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step_millis: Option<u64>,
    },
    /// Changes were committed while their notifications could not be published (consumer-api
    /// had no broker connection): every dispatcher and ingest reloads its directory and
    /// catalogue now rather than at its next periodic refresh.
    Resync,
}

/// The most subscriptions one heartbeat reports as held back.
pub const HOLDING_REPORTED: usize = 500;

/// A subscription a dispatcher holds back, as its heartbeat reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holding {
    /// `sub_…`
    pub subscription_id: String,
    /// How.
    #[serde(flatten)]
    pub held: Held,
}

/// How a dispatcher holds a subscription back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Held {
    /// Its deliveries wait for its rate (its limit with a backlog, or a slow-down after
    /// 429/503): the total rate in force, thousandths of a request per second.
    Throttled {
        /// Thousandths of a request per second, all dispatchers together.
        rate_millis: u64,
    },
    /// Paused by `Retry-After` until then.
    BackingOff {
        /// Unix milliseconds.
        until_ms: i64,
    },
    /// Its circuit breaker is open on this dispatcher.
    BreakerOpen,
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
            Self::Resync => "resync",
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
