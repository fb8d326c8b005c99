//! Messages on the `relay.control` exchange: subscription changes every dispatcher applies.

use serde::{Deserialize, Serialize};

use crate::subscription::DirectoryEntry;

/// A change to the subscription directory.
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
