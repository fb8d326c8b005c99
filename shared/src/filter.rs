//! Event types and the RabbitMQ-style topic filters subscriptions use to select them.
//!
//! An event type is dot-separated segments of `[a-z0-9_-]`. A filter has the same shape,
//! where a segment may also be `*` (exactly one segment) or `#` (zero or more segments).

use std::fmt;

/// The longest event type or filter accepted, in bytes (an AMQP short string).
pub const MAX_TYPE_LEN: usize = 255;

/// Why an event type or filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TypeError(String);

fn valid_word(segment: &str) -> bool {
    !segment.is_empty()
        && segment
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn check_shape(s: &str, what: &str) -> Result<(), TypeError> {
    if s.is_empty() {
        return Err(TypeError(format!("{what} must not be empty")));
    }
    if s.len() > MAX_TYPE_LEN {
        return Err(TypeError(format!(
            "{what} is longer than {MAX_TYPE_LEN} bytes"
        )));
    }
    Ok(())
}

/// Checks an event type such as `order.created`.
///
/// # Errors
/// A [`TypeError`] saying what is wrong with it.
pub fn validate_event_type(event_type: &str) -> Result<(), TypeError> {
    check_shape(event_type, "event type")?;
    match event_type.split('.').find(|s| !valid_word(s)) {
        None => Ok(()),
        Some(bad) => Err(TypeError(format!(
            "event type segment {bad:?} must be non-empty and use only a-z, 0-9, '_' and '-'"
        ))),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Word(String),
    /// `*`: exactly one segment.
    One,
    /// `#`: zero or more segments.
    Any,
}

/// A compiled topic filter such as `order.*` or `invoice.#`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicFilter {
    source: String,
    segments: Vec<Segment>,
}

impl TopicFilter {
    /// Compiles a filter.
    ///
    /// # Errors
    /// A [`TypeError`] naming the bad segment.
    pub fn parse(filter: &str) -> Result<Self, TypeError> {
        check_shape(filter, "filter")?;
        let segments = filter
            .split('.')
            .map(|s| match s {
                "*" => Ok(Segment::One),
                "#" => Ok(Segment::Any),
                w if valid_word(w) => Ok(Segment::Word(w.to_owned())),
                bad => Err(TypeError(format!(
                    "filter segment {bad:?} must be '*', '#', or non-empty a-z, 0-9, '_' and '-'"
                ))),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            source: filter.to_owned(),
            segments,
        })
    }

    /// Whether an event type, already split on `.`, matches this filter.
    pub fn matches(&self, type_segments: &[&str]) -> bool {
        matches_from(&self.segments, type_segments)
    }

    /// The filter as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

fn matches_from(pattern: &[Segment], words: &[&str]) -> bool {
    match pattern.split_first() {
        None => words.is_empty(),
        Some((Segment::Any, rest)) => {
            // Consecutive `#` collapse, and a trailing `#` matches whatever is left.
            if rest.is_empty() {
                return true;
            }
            (0..=words.len()).any(|skip| matches_from(rest, &words[skip..]))
        }
        Some((Segment::One, rest)) => !words.is_empty() && matches_from(rest, &words[1..]),
        Some((Segment::Word(w), rest)) => {
            words.first() == Some(&w.as_str()) && matches_from(rest, &words[1..])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(filter: &str, event_type: &str) -> bool {
        let words: Vec<&str> = event_type.split('.').collect();
        TopicFilter::parse(filter).unwrap().matches(&words)
    }

    #[test]
    fn topic_semantics_follow_rabbitmq() {
        assert!(m("order.created", "order.created"));
        assert!(!m("order.created", "order.updated"));
        assert!(m("order.*", "order.created"));
        assert!(!m("order.*", "order.created.v2"));
        assert!(!m("order.*", "order"));
        assert!(m("order.#", "order"));
        assert!(m("order.#", "order.created.v2"));
        assert!(m("#", "anything.at.all"));
        assert!(m("*.created", "invoice.created"));
        assert!(m("#.created", "a.b.created"));
        assert!(!m("#.created", "a.b.updated"));
        assert!(m("a.#.z", "a.z"));
        assert!(m("a.#.z", "a.b.c.z"));
        assert!(m("#.#", "x"));
    }

    #[test]
    fn bad_types_and_filters_are_refused_with_reason() {
        assert!(validate_event_type("order.created").is_ok());
        assert!(validate_event_type("a-b_c.d9").is_ok());
        for bad in [
            "",
            "Order.created",
            "order..created",
            ".order",
            "order.",
            "order created",
            "order.*",
        ] {
            assert!(validate_event_type(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_event_type(&"a".repeat(256)).is_err());
        for bad in ["", "order.**", "order.#x", "order..x", "ORDER"] {
            assert!(TopicFilter::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
