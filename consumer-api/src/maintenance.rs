//! Background upkeep, every `api.maintenance_interval`: ends secret rotations whose grace
//! period is over (new revision, control notification, so dispatchers stop signing with the
//! old secret), disables subscriptions that have been failing without a success for
//! `api.disable_after_failing_for`, and prunes records older than `api.retention`.
//!
//! Safe with several instances on one database: each step is a single conditional
//! statement, so a change is made (and announced) once.

use std::time::Duration;

use relay_shared::{control::ControlMessage, shutdown::Shutdown};

use crate::{
    http::AppState,
    store::now_ms,
    subscriptions::{disable_subscription, ms_rfc3339, now},
};

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

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Runs the upkeep until `shutdown`.
pub fn spawn(state: AppState, upkeep: Upkeep, mut shutdown: Shutdown) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(upkeep.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.wait() => return,
            }
            run_once(&state, &upkeep).await;
        }
    });
}

async fn run_once(state: &AppState, upkeep: &Upkeep) {
    let now_ms = now_ms();
    match state.store.expire_rotations(now_ms, &now()).await {
        Ok(ended) => {
            for subscription in ended {
                tracing::info!(subscription_id = %subscription.id, "rotation grace period over");
                state
                    .control
                    .notify(ControlMessage::Upsert {
                        subscription: subscription.directory_entry(),
                    })
                    .await;
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot end rotation grace periods"),
    }
    match state
        .store
        .failing_since(now_ms.saturating_sub(ms(upkeep.disable_after)))
        .await
    {
        Ok(failing) => {
            for (id, since) in failing {
                let reason = format!("failing since {}", ms_rfc3339(since));
                if let Err(e) = disable_subscription(state, &id, &reason).await {
                    tracing::warn!(subscription_id = %id, error = %e, "cannot disable a failing subscription");
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot look for failing subscriptions"),
    }
    match state
        .store
        .prune(now_ms.saturating_sub(ms(upkeep.retention)))
        .await
    {
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
}
