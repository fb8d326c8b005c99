//! `relay dispatch`: consumes `ingress` as one of any number of competing consumers and
//! delivers each event, signed, to every matching subscription.

mod client;
mod directory;
mod metrics;
mod parking;
mod sync;
mod worker;

use std::sync::Arc;

use anyhow::Context;
use prometheus::Registry;
use relay_shared::{config::Settings, ops::Readiness, shutdown::Shutdown, topology::Topology};
use tokio::sync::Notify;

pub use client::{AttemptError, WebhookClient};
pub use directory::{Directory, Route};
pub use metrics::DispatchMetrics;

use relay_shared::session as broker;

/// Runs a dispatcher, serving `/metrics`, `/healthz` and `/readyz` on `listener`, until
/// `shutdown`; in-flight events are finished (or left unacked for redelivery) before it returns.
///
/// # Errors
/// Metrics could not be registered, the HTTP client could not be built, or the ops server failed.
pub async fn run(
    settings: Settings,
    listener: tokio::net::TcpListener,
    registry: Registry,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let metrics = DispatchMetrics::register(&registry).context("registering dispatch metrics")?;
    let readiness = Readiness::default();
    let topology = Topology::new(&settings.amqp.prefix);
    let directory = Arc::new(Directory::default());
    let reload = Arc::new(Notify::new());

    let sessions = broker::keep_connected(
        settings.amqp.clone(),
        "relay-dispatch",
        readiness.clone(),
        metrics.amqp_connected.clone(),
        shutdown.clone(),
    );
    let loader =
        sync::SnapshotLoader::new(&settings.dispatch.directory_url, &settings.api.admin_key)
            .context("building the directory client")?;
    tokio::spawn(sync::refresh_loop(
        loader,
        directory.clone(),
        settings.dispatch.directory_refresh,
        reload.clone(),
        readiness.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(sync::control_loop(
        sessions.clone(),
        topology.clone(),
        directory.clone(),
        reload,
        metrics.clone(),
        shutdown.clone(),
    ));

    let ops = relay_shared::ops::router(registry, readiness.clone());
    tracing::info!(addr = %listener.local_addr()?, "dispatcher ops listening");
    let mut stop = shutdown.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, ops)
            .with_graceful_shutdown(async move { stop.wait().await })
            .await
    });

    // Deliver only with a directory: an event matched against an empty one would be acked
    // without reaching its subscribers.
    let mut waiting = shutdown.clone();
    while readiness
        .check()
        .is_err_and(|reasons| reasons.iter().any(|r| r.starts_with(sync::READY_DIRECTORY)))
    {
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
            () = waiting.wait() => break,
        }
    }
    let worker = Arc::new(worker::Worker {
        directory,
        client: WebhookClient::new(&settings.dispatch).context("building the webhook client")?,
        metrics,
        topology,
        prefetch: settings.dispatch.prefetch,
    });
    worker.run(sessions, shutdown).await;
    server
        .await
        .context("ops server task")?
        .context("ops server")?;
    Ok(())
}
