//! `relay dispatch`: consumes `ingress` as one of any number of competing consumers and
//! delivers each event, signed, to every matching subscription. It holds the subscription
//! directory and the event-type catalogue (to check the events producers publish straight
//! over AMQP), both loaded from consumer-api (`dispatch.directory_url`, with the directory
//! key) and kept current through `relay.control`.

mod admission;
mod attempt_log;
mod capacity;
mod client;
pub mod config;
mod delivery;
mod directory;
mod members;
mod metrics;
mod ordered_lanes;
mod outcome;
mod pacing;
mod parking;
mod queue_metrics;
mod resolver;
mod retry;
mod select;
mod step;
mod sync;
mod throttle;
mod tier_watch;
mod waiting_room;
mod worker;

/// The runtime lag past which the other lane gives way to first attempts (tests bound the
/// fresh events' latency by it).
pub use capacity::{LAG_TARGET, QUEUE_TARGET};

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use prometheus::Registry;
use relay_shared::{
    config::Settings, control::ControlMessage, event_schema::SchemaCache, ops::Readiness,
    shutdown::Shutdown, topology::Topology,
};
use tokio::sync::Notify;
use tokio_util::task::TaskTracker;

pub use client::{AttemptError, WebhookClient};
pub use config::DispatchSettings;
pub use directory::{Directory, Route};
pub use metrics::DispatchMetrics;

use relay_shared::session as broker;

/// How long the attempt log may take to publish what it holds at shutdown, and the
/// background tasks (directory, control feed, queue sampler) to stop.
const FLUSH_BOUND: Duration = Duration::from_secs(5);

/// Runs a dispatcher, serving `/metrics`, `/healthz` and `/readyz` on `listener`, until
/// `shutdown`, then drains in order: stop consuming → finish in-flight deliveries within
/// `dispatch.shutdown_grace` (what is left goes back to the broker unacked) → flush the
/// attempt log → close the broker session → stop the ops server.
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
    let topology = Topology::from_settings(&settings.amqp);
    let directory = Arc::new(Directory::default());
    let schemas = Arc::new(SchemaCache::default());
    let reload = Arc::new(Notify::new());
    let reload_catalogue = Arc::new(Notify::new());
    let dispatch = &settings.process;
    let policy = settings
        .security
        .policy()
        .map_err(|bad| anyhow::anyhow!("security.allowed_networks: {bad:?} is not a CIDR"))?;
    let client = WebhookClient::new(dispatch, policy).context("building the webhook client")?;

    // The session outlives the signal: it closes last, once deliveries and records are settled.
    let (close_broker, broker_open) = relay_shared::shutdown::channel();
    let sessions = broker::keep_connected(
        settings.amqp.clone(),
        "relay-dispatch",
        readiness.clone(),
        metrics.amqp_connected.clone(),
        broker_open.clone(),
    );
    let directory_client =
        sync::DirectoryClient::new(&dispatch.directory_url, &dispatch.directory_key)
            .context("building the directory client")?;
    let background = TaskTracker::new();
    background.spawn(sync::refresh_loop(
        directory_client.clone(),
        directory.clone(),
        dispatch.directory_refresh,
        reload.clone(),
        readiness.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    // The directory key reads the catalogue too; it refreshes with the directory.
    background.spawn(crate::catalogue::refresh_loop(
        crate::catalogue::CatalogueClient::new(&dispatch.directory_url, &dispatch.directory_key)
            .context("building the catalogue client")?,
        schemas.clone(),
        dispatch.directory_refresh,
        reload_catalogue.clone(),
        readiness.clone(),
        shutdown.clone(),
    ));
    let (pacing, told) = pacing::Pacing::new(
        pacing::PacingSettings {
            heartbeat: dispatch.member_heartbeat,
            max_wait: dispatch.rate_limit_wait,
            max_waiting: usize::from(dispatch.prefetch).div_ceil(2),
            max_retry_after: dispatch.max_retry_after,
        },
        &registry,
    )
    .context("registering pacing metrics")?;
    background.spawn(pacing.clone().announce(
        broker::confirm_channels(sessions.clone(), broker_open.clone()),
        topology.control.clone(),
        told,
        shutdown.clone(),
    ));
    let applied = directory.clone();
    let compiled = schemas.clone();
    let paced = pacing.clone();
    let loaded = metrics.subscriptions_loaded.clone();
    let reload_all = move || {
        reload.notify_one();
        reload_catalogue.notify_one();
    };
    let resync = reload_all.clone();
    background.spawn(relay_shared::control_feed::follow(
        sessions.clone(),
        topology.clone(),
        "relay-dispatch-control",
        reload_all,
        move |message| {
            if message == ControlMessage::Resync {
                resync();
                return;
            }
            crate::catalogue::apply(&compiled, &message);
            paced.apply(&message);
            applied.apply(message);
            loaded.set(i64::try_from(applied.len()).unwrap_or(i64::MAX));
        },
        readiness.clone(),
        shutdown.clone(),
    ));
    let sampler = queue_metrics::QueueSampler::register(
        &registry,
        &topology,
        &dispatch.retry_schedule,
        dispatch.queue_sample_interval,
    )
    .context("registering queue metrics")?;
    if let Some(sampling) = sampler.run(sessions.clone(), shutdown.clone()) {
        background.spawn(sampling);
    }
    if let Some(watch) = tier_watch::TierWatch::register(
        &registry,
        &dispatch.management_url,
        settings.amqp.node_urls()[0],
        &topology,
        &dispatch.retry_schedule,
        dispatch.queue_sample_interval,
        readiness.clone(),
    )? {
        background.spawn(watch.run(shutdown.clone()));
    }
    let ops = relay_shared::ops::router(registry, readiness.clone());
    tracing::info!(addr = %listener.local_addr()?, "dispatcher ops listening");
    let mut stop = broker_open.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, ops)
            .with_graceful_shutdown(async move { stop.wait().await })
            .await
    });

    // Deliver only with a directory and a catalogue: an event matched against an empty
    // directory would be acked without reaching its subscribers, and one checked against an
    // empty catalogue would skip its schema.
    let mut waiting = shutdown.clone();
    while readiness.check().is_err_and(|reasons| {
        reasons.iter().any(|r| {
            r.starts_with(sync::READY_DIRECTORY) || r.starts_with(crate::catalogue::READY_CATALOGUE)
        })
    }) {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
            () = waiting.wait() => break,
        }
    }
    let (attempts, flusher) = attempt_log::AttemptLog::start(
        broker::confirm_channels(sessions.clone(), broker_open.clone()),
        topology.attempts.clone(),
        metrics.attempt_records_dropped.clone(),
    );
    let deliveries = TaskTracker::new();
    let lanes = capacity::Lanes::new(
        dispatch.max_inflight,
        dispatch.first_attempt_share,
        &metrics.lane_inflight,
        metrics.lane_other_pace.clone(),
    );
    background.spawn(lanes.clone().regulate(shutdown.clone()));
    let worker = Arc::new(worker::Worker {
        directory,
        schemas,
        directory_client,
        client,
        admission: admission::AdmissionControl::new(
            pacing,
            dispatch.max_inflight_per_subscription,
            dispatch.inflight_wait,
            dispatch.breaker_failures,
            dispatch.breaker_cooldown,
            metrics.circuit_open.clone(),
        ),
        lanes: lanes.clone(),
        retry: retry::RetryPolicy::new(
            dispatch.retry_schedule.clone(),
            dispatch.retry_jitter,
            dispatch.max_retry_after,
        ),
        attempts,
        metrics,
        topology,
        prefetch: dispatch.prefetch,
        handoff_channels: broker::confirm_channels(sessions.clone(), broker_open.clone()),
        tasks: deliveries.clone(),
        readiness,
        ordered_lanes: Arc::default(),
        ordered_hold: dispatch.ordered_hold,
    });
    worker.run(sessions, shutdown).await;
    deliveries.close();
    if tokio::time::timeout(dispatch.shutdown_grace, deliveries.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = deliveries.len(),
            "grace period over; unfinished events go back to the queue"
        );
    }
    flusher.finish(FLUSH_BOUND).await;
    close_broker.trigger();
    background.close();
    if tokio::time::timeout(FLUSH_BOUND, background.wait())
        .await
        .is_err()
    {
        tracing::warn!("background tasks still busy at shutdown; stopping without them");
    }
    server
        .await
        .context("ops server task")?
        .context("ops server")?;
    tracing::info!("dispatcher stopped");
    Ok(())
}
