//! consumer-api: the consumer-facing side of Relay. Tenants (consumers) and their API keys;
//! subscriptions (endpoint, topic filters, owner, signing secrets and their rotation); the
//! recorder that stores every event, attempt and dead letter from the broker; the pull API,
//! delivery log, replay and redrive on top of it; the dispatchers' directory, kept current
//! through the control exchange; and `/openapi.json` describing all of it.
//!
//! [`run`] takes its configuration, a bound listener, a metrics registry and a shutdown
//! signal, so `main` and the end-to-end tests start the very same code.
//!
//! Layers, each using only those below it (checked by `layering::no_module_imports_in_a_circle`):
//!
//! ```text
//! lib (run: wiring)
//! server (connections), http (route table, the problem fallback)
//! http::* (handlers, views) → extract, auth → state
//! portal (the consumer portal: pages, sessions, assets) → service
//! maintenance (background upkeep)
//! service (ownership, validation, store access, announcements; service::* by resource)
//! validation, control, recorder, metrics, dispatchers (their status reports)
//! announce (Relay's own events), publisher
//! store (store::*), error, clock
//! ```
#![forbid(unsafe_code)]

pub mod announce;
pub mod auth;
pub mod clock;
pub mod config;
pub mod control;
pub mod dispatchers;
pub mod error;
pub mod extract;
pub mod http;
#[cfg(test)]
mod layering;
pub mod maintenance;
pub mod metrics;
pub mod openapi;
pub mod portal;
pub mod publisher;
pub mod recorder;
pub mod server;
pub mod service;
pub mod state;
pub mod store;
pub mod validation;

use anyhow::Context as _;
use relay_shared::{config::Settings, ops::Readiness, shutdown::Shutdown, topology::Topology};

pub use crate::config::ApiSettings;
use crate::{
    announce::Announcer, control::ControlPublisher, maintenance::Upkeep, metrics::ApiMetrics,
    publisher::Publisher, service::Service, state::AppState, store::Store,
};

/// Readiness condition name for the store.
pub const READY_STORE: &str = "store";
/// Readiness condition name for the publishing channel (control notifications, replays).
pub const READY_PUBLISHER: &str = "publisher";

/// Opens the store (creating and migrating it as needed), keeps a broker connection for
/// control notifications, and serves the consumer API on `listener` until `shutdown`;
/// in-flight requests finish first.
///
/// # Errors
/// The metrics cannot be registered, the store cannot be opened or migrated, or the server
/// fails. A broker that is down is not an error: the API works without it.
pub async fn run(
    settings: Settings<ApiSettings>,
    listener: tokio::net::TcpListener,
    registry: prometheus::Registry,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let metrics =
        ApiMetrics::register(&registry).context("cannot register consumer-api metrics")?;
    let policy = settings
        .security
        .policy()
        .map_err(|bad| anyhow::anyhow!("security.allowed_networks: {bad:?} is not a CIDR"))?;
    let readiness = Readiness::default();
    readiness.not_ready(READY_STORE, "opening");
    let store = Store::open(&settings.process.database_url)
        .await
        .with_context(|| format!("cannot open the store at {}", settings.process.database_url))?;
    tokio::spawn(watch_store(
        store.clone(),
        readiness.clone(),
        shutdown.clone(),
    ));

    // The session closes last: after the HTTP drain and the recorder's last batch.
    let (close_broker, broker_open) = relay_shared::shutdown::channel();
    let sessions = relay_shared::session::keep_connected(
        settings.amqp.clone(),
        "consumer-api",
        readiness.clone(),
        metrics.amqp_connected.clone(),
        broker_open.clone(),
    );
    let topology = Topology::from_settings(&settings.amqp);
    // The recorder announces what it records (relay.message.exhausted, …) on this channel.
    let channel = relay_shared::session::confirm_channels(sessions.clone(), broker_open);
    let reports = dispatchers::Reports::default();
    tokio::spawn(
        reports
            .clone()
            .follow(sessions.clone(), topology.clone(), shutdown.clone()),
    );
    let recorders = recorder::spawn(
        store.clone(),
        Announcer::new(
            Publisher::new(channel.clone(), topology.clone()),
            store.clone(),
        ),
        sessions,
        &topology,
        settings.process.recorder_prefetch,
        metrics.recorded.clone(),
        metrics.recorder_batch_seconds.clone(),
        shutdown.clone(),
    );
    sample_store_rows(store.clone(), metrics.store_rows.clone(), shutdown.clone());
    tokio::spawn(relay_shared::session::follow_channel(
        channel.clone(),
        readiness.clone(),
        READY_PUBLISHER,
        shutdown.clone(),
    ));
    let control = ControlPublisher::new(
        channel.clone(),
        &topology.control,
        metrics.control_notifications.clone(),
    );
    tokio::spawn(control.clone().resync_after_misses(shutdown.clone()));
    let service = Service::new(
        store.clone(),
        control,
        Publisher::new(channel, topology),
        policy,
        settings.process.rotation_grace,
    );
    let replays = service::replay_runner::spawn(
        service.clone(),
        settings.process.replay_lease,
        shutdown.clone(),
    );
    let portal = portal::router(service.clone(), &settings.process.portal);
    maintenance::spawn(
        service.clone(),
        Upkeep {
            interval: settings.process.maintenance_interval,
            retention: settings.process.retention,
            disable_after: settings.process.disable_after_failing_for,
        },
        shutdown.clone(),
    );
    let http_metrics = relay_shared::http_metrics::HttpMetrics::register(&registry)?;
    // The portal sits under the problem fallback like the rest; its error pages are HTML,
    // which the fallback leaves as they are.
    let app = http::router(
        AppState::new(service, &settings.process, reports),
        relay_shared::ops::router(registry, readiness).merge(portal),
    );
    let app = http_metrics.instrument(app);

    match listener.local_addr() {
        Ok(addr) => tracing::info!(%addr, "consumer-api listening"),
        Err(e) => tracing::warn!(error = %e, "consumer-api listening on an unknown address"),
    }
    server::serve(listener, app, shutdown.clone()).await;

    // Ordered drain: HTTP requests finished above; the recorders write (or leave unacked)
    // their current batch and replay jobs hand themselves back; then the store and the
    // broker session close.
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        futures_util::future::join(futures_util::future::join_all(recorders), replays),
    )
    .await;
    store.close().await;
    close_broker.trigger();
    tracing::info!("consumer-api stopped");
    Ok(())
}

/// Keeps the `store` readiness condition true to the database: checked every 5 s.
async fn watch_store(store: Store, readiness: Readiness, mut shutdown: Shutdown) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.wait() => return,
        }
        match store.ping().await {
            Ok(()) => readiness.ready(READY_STORE),
            Err(e) => readiness.not_ready(READY_STORE, format!("unreachable: {e}")),
        }
    }
}

/// Keeps `relay_store_rows{table}` current. Counting is a full scan on some databases, so
/// it runs every 30 s rather than per scrape.
fn sample_store_rows(store: Store, rows: prometheus::IntGaugeVec, mut shutdown: Shutdown) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(30));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.wait() => return,
            }
            match store.row_counts().await {
                Ok(counts) => {
                    for (table, count) in counts {
                        rows.with_label_values(&[table]).set(count);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot count store rows"),
            }
        }
    });
}
