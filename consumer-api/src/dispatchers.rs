//! What the dispatchers say about the subscriptions they hold back, for the status the API
//! shows. Every dispatcher's heartbeat on `relay.control` (each `dispatch.member_heartbeat`)
//! lists the subscriptions it holds back at that moment: by their rate (a limit with a
//! backlog, or a slow-down after 429/503), paused by `Retry-After`, or with their circuit
//! breaker open there. consumer-api follows `relay.control` as the dispatchers do and keeps
//! each dispatcher's latest list for [`KEPT_FOR`] of its heartbeats. Nothing is stored: the
//! status is what the dispatchers alive reported within their last few heartbeats.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use relay_shared::{
    control::{ControlMessage, Held},
    control_feed,
    ops::Readiness,
    session::Session,
    shutdown::Shutdown,
    topology::Topology,
};
use tokio::sync::watch;

/// A dispatcher's list counts for this many of its heartbeats.
pub const KEPT_FOR: u32 = 3;

/// The heartbeat of a dispatcher that does not say its own.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Report {
    heard: Instant,
    kept: Duration,
    held: HashMap<String, Held>,
}

/// The dispatchers' latest reports. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Reports(Arc<Mutex<HashMap<String, Report>>>);

impl Reports {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Report>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes in a message from `relay.control` (only heartbeats matter here).
    pub fn apply(&self, message: &ControlMessage) {
        self.apply_at(message, Instant::now());
    }

    fn apply_at(&self, message: &ControlMessage, now: Instant) {
        let ControlMessage::Dispatcher {
            id,
            heartbeat_ms,
            holding,
            ..
        } = message
        else {
            return;
        };
        let heartbeat = match *heartbeat_ms {
            0 => DEFAULT_HEARTBEAT,
            ms => Duration::from_millis(ms),
        };
        let mut reports = self.lock();
        // Dispatchers that stopped are forgotten here, not only ignored.
        reports.retain(|_, report| now.saturating_duration_since(report.heard) <= report.kept);
        reports.insert(
            id.clone(),
            Report {
                heard: now,
                kept: heartbeat * KEPT_FOR,
                held: holding
                    .iter()
                    .map(|h| (h.subscription_id.clone(), h.held.clone()))
                    .collect(),
            },
        );
    }

    /// How the dispatchers hold `subscription_id` back now, the most telling first: its
    /// breaker open anywhere, else paused (until the latest pause), else held back by its
    /// rate (the lowest rate reported). `None`: no dispatcher reported it.
    pub fn held(&self, subscription_id: &str) -> Option<Held> {
        self.held_at(subscription_id, Instant::now())
    }

    fn held_at(&self, subscription_id: &str, now: Instant) -> Option<Held> {
        self.lock()
            .values()
            .filter(|report| now.saturating_duration_since(report.heard) <= report.kept)
            .filter_map(|report| report.held.get(subscription_id))
            .fold(None, |worst, held| Some(most_telling(worst, held)))
    }

    /// Follows `relay.control` until `shutdown`. Not a readiness condition: the API works
    /// without the broker, and the status then says what it last heard, for as long as it
    /// counts.
    pub async fn follow(
        self,
        sessions: watch::Receiver<Option<Session>>,
        topology: Topology,
        shutdown: Shutdown,
    ) {
        control_feed::follow(
            sessions,
            topology,
            "consumer-api-status",
            || {},
            move |message| self.apply(&message),
            Readiness::default(),
            shutdown,
        )
        .await;
    }
}

fn most_telling(worst: Option<Held>, held: &Held) -> Held {
    match (worst, held) {
        (Some(Held::BreakerOpen), _) | (_, Held::BreakerOpen) => Held::BreakerOpen,
        (Some(Held::BackingOff { until_ms: a }), Held::BackingOff { until_ms: b }) => {
            Held::BackingOff {
                until_ms: a.max(*b),
            }
        }
        (Some(paused @ Held::BackingOff { .. }), _) => paused,
        (_, paused @ Held::BackingOff { .. }) => paused.clone(),
        (Some(Held::Throttled { rate_millis: a }), Held::Throttled { rate_millis: b }) => {
            Held::Throttled {
                rate_millis: a.min(*b),
            }
        }
        (None, throttled @ Held::Throttled { .. }) => throttled.clone(),
    }
}

#[cfg(test)]
mod tests {
    use relay_shared::control::Holding;

    use super::*;

    fn heartbeat(id: &str, heartbeat_ms: u64, holding: &[(&str, Held)]) -> ControlMessage {
        ControlMessage::Dispatcher {
            id: id.into(),
            members: 2,
            settled_for: 2,
            heartbeat_ms,
            holding: holding
                .iter()
                .map(|(s, held)| Holding {
                    subscription_id: (*s).into(),
                    held: held.clone(),
                })
                .collect(),
        }
    }

    #[test]
    fn the_most_telling_report_of_the_dispatchers_alive_counts() {
        let reports = Reports::default();
        let throttled = |rate_millis| Held::Throttled { rate_millis };
        reports.apply(&heartbeat(
            "a",
            1000,
            &[
                ("s1", throttled(5_000)),
                ("s2", throttled(5_000)),
                ("s3", Held::BackingOff { until_ms: 10 }),
            ],
        ));
        reports.apply(&heartbeat(
            "b",
            1000,
            &[
                ("s1", throttled(4_000)),
                ("s2", Held::BackingOff { until_ms: 7 }),
                ("s3", Held::BreakerOpen),
            ],
        ));
        assert_eq!(reports.held("s1"), Some(throttled(4_000)));
        assert_eq!(reports.held("s2"), Some(Held::BackingOff { until_ms: 7 }));
        assert_eq!(reports.held("s3"), Some(Held::BreakerOpen));
        assert_eq!(reports.held("s4"), None);
        // A dispatcher's next heartbeat replaces its list.
        reports.apply(&heartbeat("b", 1000, &[]));
        assert_eq!(reports.held("s3"), Some(Held::BackingOff { until_ms: 10 }));
    }

    #[test]
    fn a_report_counts_for_three_heartbeats() {
        let reports = Reports::default();
        let t0 = Instant::now();
        reports.apply_at(&heartbeat("a", 10, &[("s", Held::BreakerOpen)]), t0);
        assert_eq!(
            reports.held_at("s", t0 + Duration::from_millis(30)),
            Some(Held::BreakerOpen)
        );
        assert_eq!(reports.held_at("s", t0 + Duration::from_millis(31)), None);
    }
}
