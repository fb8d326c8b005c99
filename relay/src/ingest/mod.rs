//! `relay ingest`: `POST /v1/events` and `POST /v1/events/batch`. An event is answered 202 only
//! after RabbitMQ confirmed its persistent publish; while the broker is unreachable the answer
//! is 503 with `Retry-After`, never a 202. An event whose type has a schema in the event-type
//! catalogue is checked against it first (422 naming the JSON pointer and the rule).

pub mod config;
mod metrics;
mod publisher;
mod routes;

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use prometheus::Registry;
use relay_shared::{
    config::Settings, control::ControlMessage, control_feed, event_schema::SchemaCache,
    ops::Readiness, shutdown::Shutdown, topology::Topology,
};
use tokio::sync::Notify;

use crate::catalogue;

pub use config::IngestSettings;

pub use metrics::IngestMetrics;
pub use publisher::{PublishError, Publisher};

/// Readiness condition: the confirm channel events are published on is open.
pub const READY_PUBLISHER: &str = "publisher";

/// How long requests in flight at shutdown may take to finish (each is bounded by
/// `ingest.publish_timeout` already; this bounds a slow client's body too).
const DRAIN_GRACE: Duration = Duration::from_secs(15);

/// Serves the ingest API on `listener` until `shutdown`, then drains in order: stop accepting
/// connections → let requests in flight finish (their confirms still arrive) → close the
/// broker session → exit.
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
    readiness.not_ready(READY_PUBLISHER, "connecting");
    let (close_broker, broker_open) = relay_shared::shutdown::channel();
    let publisher = Publisher::start(
        &settings,
        readiness.clone(),
        metrics.clone(),
        broker_open.clone(),
    );
    let schemas = Arc::new(SchemaCache::default());
    follow_catalogue(&settings, &publisher, &schemas, &readiness, &shutdown)?;
    tokio::spawn(relay_shared::session::follow_channel(
        publisher.channels(),
        readiness.clone(),
        READY_PUBLISHER,
        shutdown.clone(),
    ));
    let http_metrics = relay_shared::http_metrics::HttpMetrics::register(&registry)
        .context("registering HTTP metrics")?;
    let app = http_metrics.instrument(
        routes::router(&settings.process, publisher, metrics, schemas)
            .merge(relay_shared::ops::router(registry, readiness)),
    );
    tracing::info!(addr = %listener.local_addr()?, "ingest listening");
    let mut stop = shutdown.clone();
    let mut draining = shutdown.clone();
    let served =
        axum::serve(listener, app).with_graceful_shutdown(async move { stop.wait().await });
    let served = async {
        tokio::select! {
            served = served => Some(served),
            () = async { draining.wait().await; tokio::time::sleep(DRAIN_GRACE).await } => None,
        }
    }
    .await;
    close_broker.trigger();
    match served {
        Some(served) => served.context("ingest HTTP server")?,
        None => tracing::warn!("requests still in flight after the drain grace; stopping"),
    }
    tracing::info!("ingest stopped");
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
    let resync = reload.clone();
    tokio::spawn(control_feed::follow(
        publisher.sessions(),
        Topology::from_settings(&settings.amqp),
        "relay-ingest-control",
        move || reload.notify_one(),
        move |message| {
            if message == ControlMessage::Resync {
                resync.notify_one();
            } else {
                catalogue::apply(&applied, &message);
            }
        },
        readiness.clone(),
        shutdown.clone(),
    ));
    Ok(())
}
