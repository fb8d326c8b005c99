//! Keeping one bad endpoint from hurting the others: a per-subscription cap on requests in
//! flight and a per-subscription circuit breaker. When either says no, the delivery is handed
//! to the first retry tier without an HTTP attempt, and the event's ack does not wait for it.
//!
//! State is per dispatcher: with N dispatchers a subscription sees at most N × the cap, and
//! each dispatcher's breaker learns on its own, which needs no coordination.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use prometheus::IntGauge;

/// Admission decision for one delivery.
#[derive(Debug)]
pub enum Admission {
    /// Go ahead; the permit frees the in-flight slot when dropped.
    Go(Permit),
    /// The subscription's cap is full.
    CapFull,
    /// The subscription's circuit is open.
    CircuitOpen,
}

#[derive(Debug, Default)]
struct Entry {
    inflight: usize,
    consecutive_failures: u32,
    open_until: Option<Instant>,
    probing: bool,
}

/// Per-subscription caps and breakers.
#[derive(Debug)]
pub struct Isolation {
    entries: Mutex<HashMap<String, Entry>>,
    cap: usize,
    threshold: u32,
    cooldown: Duration,
    open_gauge: IntGauge,
}

/// Holds one in-flight slot of a subscription.
#[derive(Debug)]
pub struct Permit {
    isolation: Arc<Isolation>,
    subscription_id: String,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut entries = self.isolation.lock();
        if let Some(entry) = entries.get_mut(&self.subscription_id) {
            entry.inflight = entry.inflight.saturating_sub(1);
        }
    }
}

impl Isolation {
    /// Caps of `cap` requests per subscription; `threshold` consecutive failures open a
    /// circuit for `cooldown`.
    pub fn new(cap: usize, threshold: u32, cooldown: Duration, open_gauge: IntGauge) -> Arc<Self> {
        Arc::new(Self {
            entries: Mutex::new(HashMap::new()),
            cap,
            threshold,
            cooldown,
            open_gauge,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// May a request go to `subscription_id` now?
    pub fn admit(self: &Arc<Self>, subscription_id: &str) -> Admission {
        let mut entries = self.lock();
        let entry = entries.entry(subscription_id.to_owned()).or_default();
        if let Some(until) = entry.open_until {
            // Half-open after the cooldown: exactly one probe at a time.
            if Instant::now() < until || entry.probing {
                return Admission::CircuitOpen;
            }
            entry.probing = true;
        }
        if entry.inflight >= self.cap {
            if entry.probing {
                entry.probing = false;
            }
            return Admission::CapFull;
        }
        entry.inflight += 1;
        Admission::Go(Permit {
            isolation: self.clone(),
            subscription_id: subscription_id.to_owned(),
        })
    }

    /// Records an attempt's result: a success closes the circuit, failures past the
    /// threshold open it (again, after a failed probe).
    pub fn record(&self, subscription_id: &str, success: bool) {
        let mut entries = self.lock();
        let entry = entries.entry(subscription_id.to_owned()).or_default();
        let was_open = entry.open_until.is_some();
        if success {
            entry.consecutive_failures = 0;
            entry.open_until = None;
            entry.probing = false;
            if was_open {
                self.open_gauge.dec();
                tracing::info!(subscription_id, "circuit closed");
            }
            return;
        }
        entry.consecutive_failures = entry.consecutive_failures.saturating_add(1);
        if entry.probing || entry.consecutive_failures >= self.threshold {
            entry.probing = false;
            entry.open_until = Some(Instant::now() + self.cooldown);
            if !was_open {
                self.open_gauge.inc();
                tracing::warn!(
                    subscription_id,
                    failures = entry.consecutive_failures,
                    "circuit opened"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn isolation(cap: usize, threshold: u32, cooldown: Duration) -> Arc<Isolation> {
        Isolation::new(cap, threshold, cooldown, IntGauge::new("g", "g").unwrap())
    }

    #[test]
    fn the_cap_bounds_requests_in_flight_and_frees_on_drop() {
        let iso = isolation(2, 10, Duration::from_secs(1));
        let a = iso.admit("s");
        let b = iso.admit("s");
        assert!(matches!((&a, &b), (Admission::Go(_), Admission::Go(_))));
        assert!(matches!(iso.admit("s"), Admission::CapFull));
        assert!(matches!(iso.admit("other"), Admission::Go(_)));
        drop(a);
        assert!(matches!(iso.admit("s"), Admission::Go(_)));
    }

    #[tokio::test]
    async fn failures_open_the_circuit_and_a_successful_probe_closes_it() {
        let iso = isolation(10, 3, Duration::from_millis(30));
        for _ in 0..3 {
            iso.record("s", false);
        }
        assert_eq!(iso.open_gauge.get(), 1);
        assert!(matches!(iso.admit("s"), Admission::CircuitOpen));
        tokio::time::sleep(Duration::from_millis(40)).await;
        // One probe only.
        let probe = iso.admit("s");
        assert!(matches!(probe, Admission::Go(_)));
        assert!(matches!(iso.admit("s"), Admission::CircuitOpen));
        iso.record("s", true);
        drop(probe);
        assert_eq!(iso.open_gauge.get(), 0);
        assert!(matches!(iso.admit("s"), Admission::Go(_)));
    }

    #[tokio::test]
    async fn a_failed_probe_reopens_the_circuit() {
        let iso = isolation(10, 1, Duration::from_millis(20));
        iso.record("s", false);
        tokio::time::sleep(Duration::from_millis(30)).await;
        let _probe = iso.admit("s");
        iso.record("s", false);
        assert!(matches!(iso.admit("s"), Admission::CircuitOpen));
        assert_eq!(iso.open_gauge.get(), 1);
    }
}
