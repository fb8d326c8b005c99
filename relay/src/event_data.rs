//! An event's `data` as a JSON value, parsed from the envelope's raw JSON at most once: the
//! schema check and every payload filter of one event share that one parse, and an event
//! that needs neither is never parsed.

use std::cell::OnceCell;

use relay_shared::envelope::Envelope;
use serde_json::{Value, value::RawValue};

/// The `data` of one event, parsed on first use.
#[derive(Debug)]
pub struct EventData<'a> {
    raw: &'a RawValue,
    parsed: OnceCell<Value>,
}

impl<'a> EventData<'a> {
    /// The `data` of `envelope`, not parsed yet.
    pub fn new(envelope: &'a Envelope) -> Self {
        Self {
            raw: &envelope.data,
            parsed: OnceCell::new(),
        }
    }

    /// The value, parsed now if it was not yet.
    pub fn value(&self) -> &Value {
        // The envelope was validated, so `data` is JSON; `null` only if that ever breaks.
        self.parsed
            .get_or_init(|| serde_json::from_str(self.raw.get()).unwrap_or_default())
    }

    /// Whether it has been parsed (for tests of the parse-once rule).
    pub fn is_parsed(&self) -> bool {
        self.parsed.get().is_some()
    }
}
