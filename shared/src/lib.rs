//! Pieces every Relay process shares: the event envelope and its validation, topic filters,
//! the event contract (payload filters, event-type schemas, endpoint headers and credentials),
//! Standard Webhooks signing (`v1` and `v1a`), the RabbitMQ topology, layered configuration,
//! tracing, metrics and the operational HTTP routes (`/metrics`, `/healthz`, `/readyz`).
#![forbid(unsafe_code)]

pub mod amqp;
pub mod attempt;
pub mod config;
pub mod control;
pub mod control_feed;
pub mod endpoint;
pub mod envelope;
pub mod event_schema;
pub mod filter;
pub mod http_metrics;
pub mod ids;
pub mod metrics;
pub mod operational;
pub mod ops;
pub mod payload_filter;
pub mod problem;
pub mod session;
pub mod shutdown;
pub mod signing;
pub mod ssrf;
pub mod subscription;
pub mod telemetry;
pub mod topology;
pub mod trace;
pub mod wire;
