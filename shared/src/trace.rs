//! W3C Trace Context (`traceparent`) propagation, without a tracing backend.
//!
//! Ingest accepts a producer's `traceparent` header (validated; an invalid one is ignored, as
//! the specification asks, and a new trace is started) and stores a child of it in the
//! [`HEADER`] AMQP header of the event. The dispatcher sends a child of that on every webhook
//! request, so a subscriber's request joins the producer's trace:
//!
//! ```text
//! producer ──traceparent: 00-T-P-01──► ingest ──AMQP header traceparent: 00-T-I-01──►
//!   dispatcher ──traceparent: 00-T-D-01──► subscriber      (T: one trace id throughout)
//! ```
//!
//! Format (version `00`): `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, lowercase,
//! neither id all zeros. Versions above `00` are parsed by their first four fields, as the
//! specification requires of a version-00 reader.

use std::fmt;

/// The HTTP header and the AMQP message header that carry the trace context.
pub const HEADER: &str = "traceparent";

/// A parsed `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// 16 bytes identifying the whole trace.
    pub trace_id: [u8; 16],
    /// 8 bytes identifying the caller's span.
    pub parent_id: [u8; 8],
    /// Trace flags (`01`: sampled).
    pub flags: u8,
}

impl TraceParent {
    /// A new trace (random trace and span ids), sampled.
    pub fn new_root() -> Self {
        let mut trace_id = [0_u8; 16];
        random_nonzero(&mut trace_id);
        let mut parent_id = [0_u8; 8];
        random_nonzero(&mut parent_id);
        Self {
            trace_id,
            parent_id,
            flags: 0x01,
        }
    }

    /// The context to send downstream: the same trace and flags, a new span id.
    #[must_use]
    pub fn child(&self) -> Self {
        let mut parent_id = [0_u8; 8];
        random_nonzero(&mut parent_id);
        Self {
            trace_id: self.trace_id,
            parent_id,
            flags: self.flags,
        }
    }

    /// The trace id as 32 lowercase hex digits (for log fields).
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.parent_id),
            self.flags
        )
    }
}

/// Parses a `traceparent` value; `None` when it is not valid.
pub fn parse_traceparent(value: &str) -> Option<TraceParent> {
    let value = value.trim();
    let mut parts = value.split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let parent = parts.next()?;
    let flags = parts.next()?;
    let rest = parts.next();
    if version.len() != 2 || trace.len() != 32 || parent.len() != 16 || flags.len() != 2 {
        return None;
    }
    let version = from_hex::<1>(version)?[0];
    // ff is forbidden; version 00 has exactly four fields; later versions may append more.
    if version == 0xff || (version == 0 && rest.is_some()) {
        return None;
    }
    let trace_id = from_hex::<16>(trace)?;
    let parent_id = from_hex::<8>(parent)?;
    let flags = from_hex::<1>(flags)?[0];
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(TraceParent {
        trace_id,
        parent_id,
        flags,
    })
}

/// The `traceparent` to send on an outgoing request (or store on a message) given the incoming
/// one, if any: a child of a valid `incoming`, else the root of a new trace.
pub fn child_traceparent(incoming: Option<&str>) -> TraceParent {
    incoming
        .and_then(parse_traceparent)
        .map_or_else(TraceParent::new_root, |parent| parent.child())
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Lowercase hex only, as the specification requires.
fn from_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits = text.as_bytes();
    if digits.len() != 2 * N {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0_u8; N];
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

fn random_nonzero(bytes: &mut [u8]) {
    loop {
        if getrandom::fill(bytes).is_err() {
            // No OS randomness (never expected): fall back to the clock, still non-zero.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos());
            for (i, b) in bytes.iter_mut().enumerate() {
                *b = nanos.to_le_bytes()[i % 16] ^ (i as u8);
            }
        }
        if bytes.iter().any(|b| *b != 0) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_renders_the_specification_example() {
        let t = parse_traceparent(EXAMPLE).unwrap();
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.flags, 1);
        assert_eq!(t.to_string(), EXAMPLE);
    }

    #[test]
    fn refuses_invalid_values() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?} was accepted");
        }
        // A later version may append fields.
        assert!(
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz")
                .is_some()
        );
    }

    #[test]
    fn a_child_keeps_the_trace_and_changes_the_span() {
        let parent = parse_traceparent(EXAMPLE).unwrap();
        let child = child_traceparent(Some(EXAMPLE));
        assert_eq!(child.trace_id, parent.trace_id);
        assert_ne!(child.parent_id, parent.parent_id);
        assert_eq!(child.flags, parent.flags);
        assert!(parse_traceparent(&child.to_string()).is_some());

        let root = child_traceparent(Some("garbage"));
        assert_ne!(root.trace_id, parent.trace_id);
        assert!(parse_traceparent(&root.to_string()).is_some());
    }
}
