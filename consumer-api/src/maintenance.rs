//! Background upkeep, every `api.maintenance_interval`: ends secret rotations whose grace
//! period is over (new revision, control notification, so dispatchers stop signing with the
//! old secret), disables subscriptions that have been failing without a success for
//! `api.disable_after_failing_for`, and prunes records (and ended replay jobs) older than
//! `api.retention`.
//!
//! Safe with several instances on one database: each step is a single conditional
//! statement, so a change is made (and announced) once.

use std::time::Duration;

use relay_shared::shutdown::Shutdown;

use crate::service::Service;

/// What the upkeep needs to know.
#[derive(Debug, Clone)]
pub struct Upkeep {
    /// How often.
    pub interval: Duration,
    /// Records older than this are pruned.
    pub retention: Duration,
    /// Failing this long without a success disables a subscription.
    pub disable_after: Duration,
}

/// Runs the upkeep until `shutdown`.
pub fn spawn(service: Service, upkeep: Upkeep, mut shutdown: Shutdown) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(upkeep.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.wait() => return,
            }
            run_once(&service, &upkeep).await;
        }
    });
}

async fn run_once(service: &Service, upkeep: &Upkeep) {
    if let Err(e) = service.expire_rotations().await {
        tracing::warn!(error = %e, "cannot end rotation grace periods");
    }
    if let Err(e) = service.disable_failing(upkeep.disable_after).await {
        tracing::warn!(error = %e, "cannot look for failing subscriptions");
    }
    match service.prune(upkeep.retention).await {
        Ok(p) if p.events + p.attempts + p.dead_letters > 0 => {
            tracing::info!(
                events = p.events,
                attempts = p.attempts,
                dead_letters = p.dead_letters,
                "pruned past the retention"
            );
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot prune past the retention"),
    }
    if let Err(e) = service.prune_replays(upkeep.retention).await {
        tracing::warn!(error = %e, "cannot prune ended replay jobs");
    }
    if let Err(e) = service.prune_portal_sessions().await {
        tracing::warn!(error = %e, "cannot prune ended portal sessions");
    }
}
