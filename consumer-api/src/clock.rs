//! The clock: the current time in the two forms the store keeps (Unix milliseconds for what
//! it compares, RFC 3339 for what it shows), and the conversions between them. A leaf module,
//! so the store, the service layer and the background jobs all read the same clock.

use relay_shared::envelope::rfc3339;
use time::OffsetDateTime;

/// The current time in Unix milliseconds.
pub fn now_ms() -> i64 {
    i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// The current time as RFC 3339 (UTC).
pub fn now() -> String {
    rfc3339(OffsetDateTime::now_utc())
}

/// Unix milliseconds as RFC 3339 (UTC); empty for a time out of range.
pub fn ms_rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map(rfc3339)
        .unwrap_or_default()
}

/// Parses an RFC 3339 time to Unix milliseconds.
pub fn rfc3339_ms(text: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// A duration in whole milliseconds, saturating.
pub fn duration_ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_and_rfc3339_round_trip() {
        let ms = 1_767_225_600_123;
        assert_eq!(ms_rfc3339(ms), "2026-01-01T00:00:00.123Z");
        assert_eq!(rfc3339_ms(&ms_rfc3339(ms)), Some(ms));
        assert_eq!(
            rfc3339_ms("2026-01-01T01:00:00+01:00"),
            Some(1_767_225_600_000)
        );
        assert_eq!(rfc3339_ms("yesterday"), None);
        assert!(rfc3339_ms(&now()).is_some_and(|t| (t - now_ms()).abs() < 60_000));
    }
}
