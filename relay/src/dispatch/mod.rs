//! `relay dispatch`: consumes `ingress` as one of any number of competing consumers and
//! delivers each event, signed, to every matching subscription.

mod attempt_log;
mod client;
pub mod config;
mod directory;
mod isolation;
mod metrics;
mod parking;
mod resolver;
mod retry;
mod sync;
mod worker;

use std::sync::Arc;

use anyhow::Context;
use prometheus::Registry;
use relay_shared::{config::Settings, ops::Readiness, shutdown::Shutdown, topology::Topology};
use tokio::sync::Notify;

pub use client::{AttemptError, WebhookClient};
pub use config::DispatchSettings;
pub use directory::{Directory, Route};
pub use metrics::DispatchMetrics;

use relay_shared::session as broker;

/// Runs a dispatcher, serving `/metrics`, `/healthz` and `/readyz` on `listener`, until
/// `shutdown`; in-flight events are finished (or left unacked for redelivery) before it returns.
///
/// # Errors
/// Metrics could not be registered, the HTTP client could not be built, or the ops server failed.
pub async fn run(
    settings: Settings<DispatchSettings>,
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
    let directory_client = sync::DirectoryClient::new(
        &settings.process.directory_url,
        &settings.process.directory_key,
    )
    .context("building the directory client")?;
    tokio::spawn(sync::refresh_loop(
        directory_client.clone(),
        directory.clone(),
        settings.process.directory_refresh,
        reload.clone(),
        readiness.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    let applied = directory.clone();
    let loaded = metrics.subscriptions_loaded.clone();
    tokio::spawn(crate::control_feed::follow(
        sessions.clone(),
        topology.clone(),
        "relay-dispatch-control",
        move || reload.notify_one(),
        move |message| {
            applied.apply(message);
            loaded.set(i64::try_from(applied.len()).unwrap_or(i64::MAX));
        },
        readiness.clone(),
        shutdown.clone(),
    ));

    relay_shared::queue_metrics::QueueSampler::register(
        &registry,
        &topology,
        &settings.process.retry_schedule,
        settings.process.queue_sample_interval,
    )
    .context("registering queue metrics")?
    .spawn(sessions.clone(), shutdown.clone());
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
    let policy = settings
        .security
        .policy()
        .map_err(|bad| anyhow::anyhow!("security.allowed_networks: {bad:?} is not a CIDR"))?;
    let dispatch = &settings.process;
    let attempts = attempt_log::AttemptLog::start(
        relay_shared::session::confirm_channels(sessions.clone(), shutdown.clone()),
        topology.attempts.clone(),
        metrics.attempt_records_dropped.clone(),
        shutdown.clone(),
    );
    let worker = Arc::new(worker::Worker {
        directory,
        directory_client,
        client: WebhookClient::new(dispatch, policy).context("building the webhook client")?,
        isolation: isolation::Isolation::new(
            dispatch.max_inflight_per_subscription,
            dispatch.inflight_wait,
            dispatch.breaker_failures,
            dispatch.breaker_cooldown,
            metrics.circuit_open.clone(),
        ),
        inflight: Arc::new(tokio::sync::Semaphore::new(dispatch.max_inflight)),
        retry: retry::RetryPolicy::new(
            dispatch.retry_schedule.clone(),
            dispatch.retry_jitter,
            dispatch.max_retry_after,
        ),
        attempts,
        metrics,
        topology,
        prefetch: dispatch.prefetch,
        grace: dispatch.shutdown_grace,
    });
    worker.run(sessions, shutdown).await;
    server
        .await
        .context("ops server task")?
        .context("ops server")?;
    Ok(())
}
