//! Keeping one bad endpoint from hurting the others: a per-subscription cap on requests in
//! flight and a per-subscription circuit breaker. When the cap stays full for longer than a
//! short wait, or the circuit is open, the delivery is handed to the first retry tier without
//! an HTTP attempt, and the event's ack does not wait for it.
//!
//! The short wait matters for healthy endpoints: a fast endpoint at its cap frees a slot within
//! milliseconds, and deferring it for a whole retry tier would add seconds of latency (and
//! broker work) for nothing. It is only taken when the endpoint's recent requests (a moving
//! average of their durations) were shorter than the wait, or, before any completed, while its
//! first request is younger than the wait: the ack of an event must not wait on a slow
//! endpoint, so a slow one, or one whose first requests hang, is deferred at once.
//!
//! State is per dispatcher: with N dispatchers a subscription sees at most N × the cap, and
//! each dispatcher's breaker learns on its own, which needs no coordination.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use prometheus::IntGauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Admission decision for one delivery.
#[derive(Debug)]
pub enum Admission {
    /// Go ahead; the permit frees the in-flight slot when dropped.
    Go(OwnedSemaphorePermit),
    /// The subscription's cap stayed full for the whole wait.
    CapFull,
    /// The subscription's circuit is open.
    CircuitOpen,
}

#[derive(Debug)]
struct Entry {
    slots: Arc<Semaphore>,
    consecutive_failures: u32,
    open_until: Option<Instant>,
    probing: bool,
    /// Moving average of request durations; `None` until one completed.
    average: Option<Duration>,
    /// When the first delivery was admitted, to judge an endpoint with no completed request yet.
    first_request: Option<Instant>,
}

/// Per-subscription caps and breakers.
#[derive(Debug)]
pub struct Isolation {
    entries: Mutex<HashMap<String, Entry>>,
    cap: usize,
    wait: Duration,
    threshold: u32,
    cooldown: Duration,
    open_gauge: IntGauge,
}

impl Isolation {
    /// Caps of `cap` requests per subscription, waited for at most `wait`; `threshold`
    /// consecutive failures open a circuit for `cooldown`.
    pub fn new(
        cap: usize,
        wait: Duration,
        threshold: u32,
        cooldown: Duration,
        open_gauge: IntGauge,
    ) -> Arc<Self> {
        Arc::new(Self {
            entries: Mutex::new(HashMap::new()),
            cap,
            wait,
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

    /// The entry of a subscription, created on first use (the key is only copied then: this
    /// runs twice per delivery).
    fn entry<'a>(
        &self,
        entries: &'a mut HashMap<String, Entry>,
        subscription_id: &str,
    ) -> &'a mut Entry {
        if !entries.contains_key(subscription_id) {
            entries.insert(
                subscription_id.to_owned(),
                Entry {
                    slots: Arc::new(Semaphore::new(self.cap)),
                    consecutive_failures: 0,
                    open_until: None,
                    probing: false,
                    average: None,
                    first_request: None,
                },
            );
        }
        #[allow(clippy::expect_used)]
        entries
            .get_mut(subscription_id)
            .expect("inserted above when missing")
    }

    /// May a request go to `subscription_id` now (or within the wait)?
    pub async fn admit(&self, subscription_id: &str) -> Admission {
        let (slots, probe, fast) = {
            let mut entries = self.lock();
            let entry = self.entry(&mut entries, subscription_id);
            let probe = match entry.open_until {
                // Half-open after the cooldown: exactly one probe at a time.
                Some(until) if Instant::now() < until || entry.probing => {
                    return Admission::CircuitOpen;
                }
                Some(_) => {
                    entry.probing = true;
                    true
                }
                None => false,
            };
            // Fast: recent requests were shorter than the wait; or none has completed yet but
            // the first went out less than the wait ago (a cold start, not a hanging endpoint).
            let fast = match (entry.average, entry.first_request) {
                (Some(average), _) => average < self.wait,
                (None, Some(first)) => first.elapsed() < self.wait,
                (None, None) => true,
            };
            entry.first_request.get_or_insert_with(Instant::now);
            (entry.slots.clone(), probe, fast)
        };
        let permit = match slots.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) if fast => tokio::time::timeout(self.wait, slots.acquire_owned())
                .await
                .ok()
                .and_then(Result::ok),
            Err(_) => None,
        };
        match permit {
            Some(permit) => Admission::Go(permit),
            None => {
                if probe {
                    self.entry(&mut self.lock(), subscription_id).probing = false;
                }
                Admission::CapFull
            }
        }
    }

    /// Records an attempt's result and duration: a success closes the circuit, failures past
    /// the threshold open it (again, after a failed probe).
    pub fn record(&self, subscription_id: &str, success: bool, took: Duration) {
        let mut entries = self.lock();
        let entry = self.entry(&mut entries, subscription_id);
        // Weight 1/8 for the newest request: smooth, yet a slow spell shows within a few.
        entry.average = Some(
            entry
                .average
                .map_or(took, |average| (average * 7 + took) / 8),
        );
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
        let gauge = IntGauge::new("g", "g").unwrap();
        Isolation::new(cap, Duration::from_millis(50), threshold, cooldown, gauge)
    }

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test]
    async fn the_cap_bounds_requests_in_flight_and_frees_on_drop() {
        let iso = isolation(2, 10, Duration::from_secs(1));
        iso.record("s", true, MS);
        let a = iso.admit("s").await;
        let b = iso.admit("s").await;
        assert!(matches!((&a, &b), (Admission::Go(_), Admission::Go(_))));
        let waited = Instant::now();
        assert!(matches!(iso.admit("s").await, Admission::CapFull));
        assert!(
            waited.elapsed() >= Duration::from_millis(50),
            "deferred without waiting"
        );
        assert!(matches!(iso.admit("other").await, Admission::Go(_)));
        drop(a);
        assert!(matches!(iso.admit("s").await, Admission::Go(_)));
    }

    #[tokio::test]
    async fn a_fast_endpoint_waits_for_a_freed_slot_and_a_slow_one_is_deferred_at_once() {
        let iso = isolation(1, 10, Duration::from_secs(1));
        iso.record("s", true, MS);
        let held = iso.admit("s").await;
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            drop(held);
        });
        assert!(matches!(iso.admit("s").await, Admission::Go(_)));
        release.await.unwrap();

        // Cold start: nothing completed yet, the first request is young: worth waiting.
        let _first = iso.admit("cold").await;
        let cold = tokio::spawn({
            let iso = iso.clone();
            async move { matches!(iso.admit("cold").await, Admission::Go(_)) }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(_first);
        assert!(
            cold.await.unwrap(),
            "a cold endpoint's freed slot was not waited for"
        );

        // A first request that hangs past the wait: later deliveries are deferred at once.
        let _hung = iso.admit("hung").await;
        tokio::time::sleep(Duration::from_millis(60)).await;
        let asked = Instant::now();
        assert!(matches!(iso.admit("hung").await, Admission::CapFull));
        assert!(
            asked.elapsed() < Duration::from_millis(20),
            "waited on a hanging endpoint"
        );

        iso.record("slow", false, Duration::from_secs(2));
        let _held = iso.admit("slow").await;
        let asked = Instant::now();
        assert!(matches!(iso.admit("slow").await, Admission::CapFull));
        assert!(
            asked.elapsed() < Duration::from_millis(20),
            "waited on a slow endpoint"
        );
    }

    #[tokio::test]
    async fn failures_open_the_circuit_and_a_successful_probe_closes_it() {
        let iso = isolation(10, 3, Duration::from_millis(30));
        for _ in 0..3 {
            iso.record("s", false, MS);
        }
        assert_eq!(iso.open_gauge.get(), 1);
        assert!(matches!(iso.admit("s").await, Admission::CircuitOpen));
        tokio::time::sleep(Duration::from_millis(40)).await;
        // One probe only.
        let probe = iso.admit("s").await;
        assert!(matches!(probe, Admission::Go(_)));
        assert!(matches!(iso.admit("s").await, Admission::CircuitOpen));
        iso.record("s", true, MS);
        drop(probe);
        assert_eq!(iso.open_gauge.get(), 0);
        assert!(matches!(iso.admit("s").await, Admission::Go(_)));
    }

    #[tokio::test]
    async fn a_failed_probe_reopens_the_circuit() {
        let iso = isolation(10, 1, Duration::from_millis(20));
        iso.record("s", false, MS);
        tokio::time::sleep(Duration::from_millis(30)).await;
        let _probe = iso.admit("s").await;
        iso.record("s", false, MS);
        assert!(matches!(iso.admit("s").await, Admission::CircuitOpen));
        assert_eq!(iso.open_gauge.get(), 1);
    }
}
