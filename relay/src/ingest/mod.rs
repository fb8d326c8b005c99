//! `relay ingest`: `POST /v1/events` and `POST /v1/events/batch`. An event is answered 202 only
//! after RabbitMQ confirmed its persistent publish; while the broker is unreachable the answer
//! is 503 with `Retry-After`, never a 202.

pub mod config;
mod metrics;
mod publisher;
mod routes;

use anyhow::Context;
use prometheus::Registry;
use relay_shared::{config::Settings, ops::Readiness, shutdown::Shutdown};

pub use config::IngestSettings;

pub use metrics::IngestMetrics;
pub use publisher::{PublishError, Publisher};

/// Serves the ingest API on `listener` until `shutdown`.
///
/// # Errors
/// Metrics could not be registered or the HTTP server failed.
pub async fn run(
    settings: Settings<IngestSettings>,
    listener: tokio::net::TcpListener,
    registry: Registry,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let metrics = IngestMetrics::register(&registry).context("registering ingest metrics")?;
    let readiness = Readiness::default();
    let publisher = Publisher::start(
        &settings,
        readiness.clone(),
        metrics.clone(),
        shutdown.clone(),
    );
    let http_metrics = relay_shared::http_metrics::HttpMetrics::register(&registry)
        .context("registering HTTP metrics")?;
    let app = http_metrics.instrument(
        routes::router(&settings.process, publisher, metrics)
            .merge(relay_shared::ops::router(registry, readiness)),
    );
    tracing::info!(addr = %listener.local_addr()?, "ingest listening");
    let mut stop = shutdown.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.wait().await })
        .await
        .context("ingest HTTP server")?;
    Ok(())
}
