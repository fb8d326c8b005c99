//! When each API key was last used, written at most once per [`KEY_USE_RESOLUTION`] per key
//! (and consumer-api instance) so that authenticating stays one read.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

/// A key's `last_used_at` is written at most this often (per consumer-api instance).
pub const KEY_USE_RESOLUTION: Duration = Duration::from_secs(60);
/// How many keys' last writes are remembered before those older than
/// [`KEY_USE_RESOLUTION`] are forgotten.
const KEY_USES_KEPT: usize = 10_000;

/// When each key's `last_used_at` was last written (by this instance), to write it at most
/// once per [`KEY_USE_RESOLUTION`].
#[derive(Debug, Default)]
pub struct KeyUses(HashMap<String, Instant>);

impl KeyUses {
    /// Whether a use of `key_id` at `at` is to be written; if so, it counts as written.
    pub fn due(&mut self, key_id: &str, at: Instant) -> bool {
        if self
            .0
            .get(key_id)
            .is_some_and(|w| at.saturating_duration_since(*w) < KEY_USE_RESOLUTION)
        {
            return false;
        }
        // Bounded by the keys used within the last minute.
        if self.0.len() >= KEY_USES_KEPT {
            self.0
                .retain(|_, w| at.saturating_duration_since(*w) < KEY_USE_RESOLUTION);
        }
        self.0.insert(key_id.to_owned(), at);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_use_is_written_at_most_once_a_minute() {
        let mut uses = KeyUses::default();
        let start = Instant::now();
        assert!(uses.due("key_a", start));
        assert!(!uses.due("key_a", start + Duration::from_secs(59)));
        assert!(uses.due("key_b", start + Duration::from_secs(1)), "per key");
        assert!(uses.due("key_a", start + KEY_USE_RESOLUTION));
        assert!(!uses.due("key_a", start + KEY_USE_RESOLUTION + Duration::from_secs(1)));
    }

    #[test]
    fn old_uses_are_forgotten_when_many_keys_were_used() {
        let mut uses = KeyUses::default();
        let start = Instant::now();
        for i in 0..KEY_USES_KEPT {
            assert!(uses.due(&format!("key_{i}"), start));
        }
        let later = start + KEY_USE_RESOLUTION;
        assert!(uses.due("key_new", later));
        assert_eq!(uses.0.len(), 1, "the old ones went");
    }
}
