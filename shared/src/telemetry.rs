//! Tracing setup: structured logs to stderr, `pretty` or `json`, filtered by `log.level`.
//!
//! Spans carry the identifiers of the work in hand (`event_id`, `subscription_id`, `attempt`,
//! `trace_id`): `pretty` prints them before the message, `json` as a `span` object and the
//! `spans` list on every line, so a log shipper can follow one event or one W3C trace
//! ([`crate::trace`]) across processes.

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `log.level`.
/// Calling it again (tests) keeps the first one.
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match settings.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
}
