//! `relay ingest`: `POST /v1/events` and `POST /v1/events/batch`. An event is answered 202 only
//! after RabbitMQ confirmed its persistent publish; while the broker is unreachable the answer
//! is 503 with `Retry-After`, never a 202. An event whose type has a schema in the event-type
//! catalogue is checked against it first (422 naming the JSON pointer and the rule).

pub mod config;
mod metrics;
mod publisher;
mod routes;

use std::sync::Arc;

use anyhow::Context;
use prometheus::Registry;
use relay_shared::{
    config::Settings, event_schema::SchemaCache, ops::Readiness, shutdown::Shutdown,
    topology::Topology,
};
use tokio::sync::Notify;

use crate::{catalogue, control_feed};

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
    let schemas = Arc::new(SchemaCache::default());
    follow_catalogue(&settings, &publisher, &schemas, &readiness, &shutdown)?;
    let http_metrics = relay_shared::http_metrics::HttpMetrics::register(&registry)
        .context("registering HTTP metrics")?;
    let app = http_metrics.instrument(
        routes::router(&settings.process, publisher, metrics, schemas)
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

/// Loads the event-type catalogue and keeps it current through `relay.control`.
fn follow_catalogue(
    settings: &Settings<IngestSettings>,
    publisher: &Publisher,
    schemas: &Arc<SchemaCache>,
    readiness: &Readiness,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let client = catalogue::CatalogueClient::new(
        &settings.process.catalogue_url,
        &settings.process.catalogue_key,
    )
    .context("building the catalogue client")?;
    let reload = Arc::new(Notify::new());
    tokio::spawn(catalogue::refresh_loop(
        client,
        schemas.clone(),
        settings.process.catalogue_refresh,
        reload.clone(),
        readiness.clone(),
        shutdown.clone(),
    ));
    let applied = schemas.clone();
    tokio::spawn(control_feed::follow(
        publisher.sessions(),
        Topology::new(&settings.amqp.prefix),
        "relay-ingest-control",
        move || reload.notify_one(),
        move |message| catalogue::apply(&applied, &message),
        readiness.clone(),
        shutdown.clone(),
    ));
    Ok(())
}
