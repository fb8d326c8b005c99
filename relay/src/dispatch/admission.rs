//! Back-pressure and rate limits, before anything goes to the endpoint or to a retry tier: a
//! subscription's rate ([`super::pacing`]), a per-subscription cap on requests in flight, a
//! bounded FIFO queue in front of it, and a per-subscription circuit breaker.
//!
//! A delivery first waits for its rate's slot (deferred when it is further away than
//! `dispatch.rate_limit_wait`). Then, finding its subscription at the cap, it waits in that
//! subscription's queue for a slot (back-pressure: waiting deliveries hold their events
//! unacked, so the broker stops sending once the prefetch is taken). It is deferred to the
//! first retry tier, without an attempt, only when waiting would not be reasonable:
//!
//! - the endpoint is **failing** (its last attempt failed), or its circuit is open;
//! - it is **stalled**: nothing completed within a bound derived from its own latency,
//!   `max(dispatch.inflight_wait, 4 × its average request time)` (a hanging endpoint), while
//!   requests to other endpoints did complete in that time. When nothing completes anywhere,
//!   the dispatcher is starved or cold (a loaded machine, connections being opened), not the
//!   endpoint hanging: its deliveries wait on, and a hanging endpoint alone shows as failing
//!   once its requests time out;
//! - its **queue is full**: it holds `4 × dispatch.max_inflight_per_subscription` deliveries,
//!   in flight and waiting (`3 ×` that cap waiting, when the subscription's own cap is the
//!   dispatcher's), and the endpoint is slow (its average request time is at least
//!   `dispatch.inflight_wait`) or has not completed a request yet. A lower cap of the
//!   subscription's own (its `max_in_flight` shared by the dispatchers) queues more rather
//!   than deferring a healthy endpoint's deliveries; a fast endpoint's queue is bounded by
//!   the prefetch alone: waiting a few of its request times costs less than the 5 s tier.
//!
//! A waiting delivery gives up (and is deferred) as soon as the endpoint stalls or fails.
//!
//! Last, a rate-limited delivery takes a window token (see [`super::throttle`]).
//!
//! The cap is the subscription's `max_in_flight` shared by the dispatchers alive
//! (`⌊max_in_flight / n⌋`, at least one each), or each dispatcher's
//! `dispatch.max_inflight_per_subscription` when it sets none. Breakers are per dispatcher:
//! each learns on its own, which needs no coordination.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use prometheus::IntGauge;
use relay_shared::subscription::Limits;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{
    client::AttemptError,
    pacing::{Paced, Pacing, Ticket},
    step::{self, Signal},
    throttle::Metered,
    waiting_room::Pin,
};

/// Deliveries that may wait per slow subscription, in caps: the expected wait of the last is
/// then `(QUEUE_CAPS + 1)` × the endpoint's average request time.
const QUEUE_CAPS: usize = 3;
/// A stall is this many average request times without a completion.
const STALL_FACTOR: u32 = 4;

/// Admission decision for one delivery.
#[derive(Debug)]
pub enum Admission {
    /// Go ahead; drop the pass once the request is answered.
    Go(Pass),
    /// Its rate has no slot (or window token) within the wait allowed.
    RateLimited,
    /// The subscription's circuit is open.
    CircuitOpen,
    /// At the cap, and the endpoint's last attempt failed.
    Failing,
    /// At the cap, and nothing completed within the stall bound.
    Stalled,
    /// At the cap, and its queue is full.
    QueueFull,
}

/// A request's in-flight slot and, when rate-limited, its window token: both come back when
/// it is dropped (the slot at once, the token a window later).
#[derive(Debug)]
pub struct Pass {
    permit: Option<OwnedSemaphorePermit>,
    /// Slots to drop rather than give back, after the cap was lowered.
    owed: Arc<AtomicUsize>,
    ticket: Option<Ticket>,
}

impl Pass {
    fn with(mut self, ticket: Ticket) -> Self {
        self.ticket = Some(ticket);
        self
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        let owed = self
            .owed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |owed| {
                owed.checked_sub(1)
            });
        if let (Ok(_), Some(permit)) = (owed, self.permit.take()) {
            permit.forget();
        }
    }
}

#[derive(Debug)]
struct Entry {
    slots: Arc<Semaphore>,
    /// The cap `slots` was made for.
    cap: usize,
    owed: Arc<AtomicUsize>,
    consecutive_failures: u32,
    open_until: Option<Instant>,
    probing: bool,
    /// Moving average of request durations; `None` until one completed.
    average: Option<Duration>,
    /// When the last request completed, or else when the first was admitted.
    last_progress: Option<Instant>,
    /// Deliveries waiting for a slot.
    waiting: usize,
    /// Requests completed lately, for the rate a first 429/503 slows down from.
    metered: Metered,
}

impl Entry {
    /// Moves the cap to `cap`: slots are added, or taken away (those in use once given back).
    fn resize(&mut self, cap: usize) {
        if cap > self.cap {
            let grow = cap - self.cap;
            let cancelled = self
                .owed
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |owed| {
                    Some(owed - owed.min(grow))
                })
                .map_or(0, |owed| owed.min(grow));
            self.slots.add_permits(grow - cancelled);
        } else if cap < self.cap {
            let shrink = self.cap - cap;
            let forgotten = self.slots.forget_permits(shrink);
            self.owed.fetch_add(shrink - forgotten, Ordering::AcqRel);
        }
        self.cap = cap;
    }

    fn pass(&self, permit: OwnedSemaphorePermit) -> Pass {
        Pass {
            permit: Some(permit),
            owed: self.owed.clone(),
            ticket: None,
        }
    }

    /// How long the endpoint may go without completing a request before it counts as stalled.
    fn stall_bound(&self, floor: Duration) -> Duration {
        self.average
            .map_or(floor, |average| (average * STALL_FACTOR).max(floor))
    }

    /// Stalled: no completion within the bound, while some other request of the dispatcher
    /// completed after this endpoint's last progress (`last_completion`).
    fn stalled(&self, floor: Duration, last_completion: Option<Instant>) -> bool {
        self.last_progress.is_some_and(|at| {
            at.elapsed() > self.stall_bound(floor) && last_completion.is_some_and(|any| any > at)
        })
    }

    /// Whether the queue is full: `4 × cap` (the dispatcher's cap) in flight and waiting,
    /// and the endpoint is not known to be fast (its average request time is unknown or at
    /// least `floor`). A fast endpoint's queue is bounded by the prefetch alone: `waiting`
    /// also counts deliveries that were handed a slot but have not run yet, which a starved
    /// dispatcher makes many, and deferring a fast endpoint's delivery costs the 5 s tier to
    /// save a wait of a few of its requests.
    fn queue_full(&self, cap: usize, floor: Duration) -> bool {
        self.waiting + self.cap >= (QUEUE_CAPS + 1) * cap
            && self.average.is_none_or(|average| average >= floor)
    }
}

/// A place in a subscription's queue, given up when dropped (also if the wait is cancelled).
struct Waiting<'a>(&'a AdmissionControl, &'a str);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.with_entry(self.1, |entry| entry.waiting -= 1);
    }
}

/// Per-subscription rates, caps, queues and breakers.
#[derive(Debug)]
pub struct AdmissionControl {
    entries: Mutex<HashMap<String, Entry>>,
    pacing: Arc<Pacing>,
    cap: usize,
    stall_floor: Duration,
    threshold: u32,
    cooldown: Duration,
    open_gauge: IntGauge,
    /// When the last request of any subscription completed, as nanoseconds after `epoch`
    /// (0: none yet). Written by every completion, so an atomic rather than the map's lock.
    last_completion: AtomicU64,
    epoch: Instant,
}

impl AdmissionControl {
    /// Rates from `pacing`; caps of `cap` requests per subscription that sets none; a waiting
    /// delivery gives up after `stall_floor` (at least) without a completion; `threshold`
    /// consecutive failures open a circuit for `cooldown`.
    pub fn new(
        pacing: Arc<Pacing>,
        cap: usize,
        stall_floor: Duration,
        threshold: u32,
        cooldown: Duration,
        open_gauge: IntGauge,
    ) -> Arc<Self> {
        Arc::new(Self {
            entries: Mutex::new(HashMap::new()),
            pacing,
            cap,
            stall_floor,
            threshold,
            cooldown,
            open_gauge,
            last_completion: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    fn last_completion(&self) -> Option<Instant> {
        match self.last_completion.load(Ordering::Relaxed) {
            0 => None,
            nanos => Some(self.epoch + Duration::from_nanos(nanos)),
        }
    }

    fn completed(&self, at: Instant) {
        let nanos = u64::try_from(at.duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        self.last_completion
            .fetch_max(nanos.max(1), Ordering::Relaxed);
    }

    /// Why a delivery at the cap should not wait (longer), if it should not.
    fn refusal(&self, entry: &Entry) -> Option<Admission> {
        if entry.consecutive_failures > 0 {
            Some(Admission::Failing)
        } else if entry.stalled(self.stall_floor, self.last_completion()) {
            Some(Admission::Stalled)
        } else {
            None
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `f` on the entry of a subscription, created on first use (the key is only copied
    /// then: this runs several times per delivery).
    fn with_entry<T>(&self, subscription_id: &str, f: impl FnOnce(&mut Entry) -> T) -> T {
        let mut entries = self.lock();
        if let Some(entry) = entries.get_mut(subscription_id) {
            return f(entry);
        }
        let mut entry = Entry {
            slots: Arc::new(Semaphore::new(self.cap)),
            cap: self.cap,
            owed: Arc::new(AtomicUsize::new(0)),
            consecutive_failures: 0,
            open_until: None,
            probing: false,
            average: None,
            last_progress: None,
            waiting: 0,
            metered: Metered::new(Instant::now()),
        };
        let out = f(&mut entry);
        entries.insert(subscription_id.to_owned(), entry);
        out
    }

    /// May a request go to `subscription_id` (with `limits`) now, or after waiting its turn
    /// (holding `pin`'s message meanwhile)?
    ///
    /// An unlimited subscription that is not slowed down costs what the cap and breaker alone
    /// cost: one hold of this lock, no wait unless it is at its cap.
    pub async fn admit(&self, subscription_id: &str, limits: &Limits, pin: Pin<'_>) -> Admission {
        let paced = match self.pacing.reserve(subscription_id, limits, pin).await {
            Paced::Free => false,
            Paced::Go => true,
            Paced::Defer => return Admission::RateLimited,
        };
        let cap = self.pacing.cap(limits, self.cap);
        match self.admit_to(subscription_id, cap).await {
            Admission::Go(pass) if paced => match self.pacing.take(subscription_id).await {
                Some(ticket) => Admission::Go(pass.with(ticket)),
                None => Admission::RateLimited,
            },
            answer => answer,
        }
    }

    /// The cap, queue and breaker part of [`AdmissionControl::admit`], at a cap of `cap`.
    async fn admit_to(&self, subscription_id: &str, cap: usize) -> Admission {
        let floor = self.stall_floor;
        let admitted = self.with_entry(subscription_id, |entry| {
            if entry.cap != cap {
                entry.resize(cap);
            }
            let probe = match entry.open_until {
                // Half-open after the cooldown: exactly one probe at a time.
                Some(until) if Instant::now() < until || entry.probing => {
                    return Err(Admission::CircuitOpen);
                }
                Some(_) => {
                    entry.probing = true;
                    true
                }
                None => false,
            };
            entry.last_progress.get_or_insert_with(Instant::now);
            if let Ok(permit) = entry.slots.clone().try_acquire_owned() {
                return Err(Admission::Go(entry.pass(permit)));
            }
            if probe {
                entry.probing = false;
            }
            let refusal = self.refusal(entry).or_else(|| {
                entry
                    .queue_full(self.cap, floor)
                    .then_some(Admission::QueueFull)
            });
            match refusal {
                Some(refusal) => Err(refusal),
                None => {
                    entry.waiting += 1;
                    Ok((entry.slots.clone(), entry.owed.clone()))
                }
            }
        });
        let (slots, owed) = match admitted {
            Ok(slots) => slots,
            Err(answer) => return answer,
        };
        let _waiting = Waiting(self, subscription_id);
        // One acquire for the whole wait: the semaphore is FIFO, and the delivery keeps its
        // place in the queue across the stall checks (a new acquire would go to the back).
        let mut acquire = std::pin::pin!(slots.acquire_owned());
        loop {
            let bound = self.with_entry(subscription_id, |entry| entry.stall_bound(floor));
            match tokio::time::timeout(bound, &mut acquire).await {
                Ok(Ok(permit)) => {
                    return Admission::Go(Pass {
                        permit: Some(permit),
                        owed,
                        ticket: None,
                    });
                }
                // The semaphore is never closed; were it, waiting would be pointless.
                Ok(Err(_)) => return Admission::Stalled,
                // No slot within a stall bound: wait on only while the endpoint is healthy.
                Err(_) => {
                    if let Some(refusal) =
                        self.with_entry(subscription_id, |entry| self.refusal(entry))
                    {
                        return refusal;
                    }
                }
            }
        }
    }

    /// How long a delivery deferred for its rate waits in the tier of `tier`: see
    /// [`Pacing::comeback`].
    pub fn comeback(&self, subscription_id: &str, tier: Duration) -> Duration {
        self.pacing.comeback(subscription_id, tier)
    }

    /// Records an attempt's result and the request's duration: a success closes the circuit,
    /// failures past the threshold open it (again, after a failed probe); the rate learns
    /// from it (a 429 or 503 slows the subscription down).
    pub fn record(
        &self,
        subscription_id: &str,
        limits: &Limits,
        result: &Result<u16, AttemptError>,
        took: Duration,
    ) {
        let signal = step::signal(result);
        // A 429 says the endpoint is alive and asks for a slower pace, which the rate gives
        // it: neither a failure towards the breaker nor a success that closes it.
        let success = match result {
            Ok(_) => Some(true),
            Err(error) if error.status() == Some(429) => None,
            Err(_) => Some(false),
        };
        let metered = self.note(subscription_id, success, took, signal);
        self.pacing
            .observe(subscription_id, limits, signal, metered);
    }

    /// Records a result; returns what the subscription completed before it.
    fn note(
        &self,
        subscription_id: &str,
        success: Option<bool>,
        took: Duration,
        signal: Signal,
    ) -> Metered {
        self.with_entry(subscription_id, |entry| {
            let now = Instant::now();
            let metered = entry.metered;
            entry.metered.observe(now, signal);
            // Weight 1/8 for the newest request: smooth, yet a slow spell shows within a few.
            entry.average = Some(
                entry
                    .average
                    .map_or(took, |average| (average * 7 + took) / 8),
            );
            entry.last_progress = Some(now);
            // Any answer, a 429 too, shows the dispatcher is not starved.
            self.completed(now);
            let Some(success) = success else {
                return metered;
            };
            let was_open = entry.open_until.is_some();
            if success {
                entry.consecutive_failures = 0;
                entry.open_until = None;
                entry.probing = false;
                if was_open {
                    self.open_gauge.dec();
                    self.pacing.breaker(subscription_id, false);
                    tracing::info!(subscription_id, "circuit closed");
                }
                return metered;
            }
            entry.consecutive_failures = entry.consecutive_failures.saturating_add(1);
            if entry.probing || entry.consecutive_failures >= self.threshold {
                entry.probing = false;
                entry.open_until = Some(Instant::now() + self.cooldown);
                if !was_open {
                    self.open_gauge.inc();
                    self.pacing.breaker(subscription_id, true);
                    tracing::warn!(
                        subscription_id,
                        failures = entry.consecutive_failures,
                        "circuit opened"
                    );
                }
            }
            metered
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const FLOOR: Duration = Duration::from_millis(50);

    fn isolation(cap: usize, threshold: u32, cooldown: Duration) -> Arc<AdmissionControl> {
        let gauge = IntGauge::new("g", "g").unwrap();
        let settings = super::super::pacing::PacingSettings {
            heartbeat: Duration::from_secs(1),
            max_wait: Duration::from_secs(1),
            max_waiting: 10,
            max_retry_after: Duration::from_secs(1),
        };
        let (pacing, _) = Pacing::new(settings, &prometheus::Registry::new()).unwrap();
        AdmissionControl::new(pacing, cap, FLOOR, threshold, cooldown, gauge)
    }

    impl AdmissionControl {
        async fn admit_to_cap(&self, subscription_id: &str) -> Admission {
            self.admit_to(subscription_id, self.cap).await
        }
    }

    #[tokio::test]
    async fn a_lowered_cap_takes_slots_away_as_they_come_back() {
        let iso = isolation(3, 10, Duration::from_secs(1));
        let held: Vec<_> = (0..3).map(|_| iso.admit_to("s", 3)).collect();
        let held = futures_util::future::join_all(held).await;
        assert!(held.iter().all(|a| matches!(a, Admission::Go(_))));
        // Down to one: two of the three slots in use go away when given back.
        iso.note("s", Some(false), MS, Signal::Neutral);
        assert!(matches!(iso.admit_to("s", 1).await, Admission::Failing));
        drop(held);
        iso.note("s", Some(true), MS, Signal::Succeeded);
        let one = iso.admit_to("s", 1).await;
        assert!(matches!(one, Admission::Go(_)));
        iso.note("s", Some(false), MS, Signal::Neutral);
        assert!(matches!(iso.admit_to("s", 1).await, Admission::Failing));
        // Up to two: one more.
        let two = iso.admit_to("s", 2).await;
        assert!(matches!(two, Admission::Go(_)));
        assert!(matches!(iso.admit_to("s", 2).await, Admission::Failing));
        drop((one, two));
    }

    #[tokio::test]
    async fn a_subscriptions_max_in_flight_is_its_cap() {
        let iso = isolation(64, 10, Duration::from_secs(1));
        let limits = Limits {
            rate_limit: None,
            max_in_flight: Some(2),
        };
        let a = iso.admit("s", &limits, Pin::Redelivery).await;
        let b = iso.admit("s", &limits, Pin::Redelivery).await;
        assert!(matches!((&a, &b), (Admission::Go(_), Admission::Go(_))));
        iso.note("s", Some(false), MS, Signal::Neutral);
        assert!(matches!(
            iso.admit("s", &limits, Pin::Redelivery).await,
            Admission::Failing
        ));
    }

    #[tokio::test]
    async fn the_cap_bounds_requests_in_flight_and_a_healthy_endpoint_is_waited_for() {
        let iso = isolation(2, 10, Duration::from_secs(1));
        iso.note(
            "s",
            Some(true),
            Duration::from_millis(30),
            Signal::Succeeded,
        );
        let a = iso.admit_to_cap("s").await;
        let b = iso.admit_to_cap("s").await;
        assert!(matches!((&a, &b), (Admission::Go(_), Admission::Go(_))));
        assert!(matches!(iso.admit_to_cap("other").await, Admission::Go(_)));
        // At the cap: the third waits its turn (longer than the floor: the endpoint completes).
        let waiter = tokio::spawn({
            let iso = iso.clone();
            async move { matches!(iso.admit_to_cap("s").await, Admission::Go(_)) }
        });
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(40)).await;
            iso.note(
                "s",
                Some(true),
                Duration::from_millis(30),
                Signal::Succeeded,
            );
        }
        drop(a);
        assert!(
            waiter.await.unwrap(),
            "a healthy endpoint's delivery was not waited for"
        );
        drop(b);
    }

    #[tokio::test]
    async fn a_waiting_delivery_keeps_its_place_across_stall_checks() {
        let iso = isolation(1, 10, Duration::from_secs(1));
        // Stall bound 4 x 100 ms: the first waiter's first check (at 400 ms) comes after the
        // second queued (at 200 ms) and before the slot frees (at 480 ms).
        iso.note(
            "s",
            Some(true),
            Duration::from_millis(100),
            Signal::Succeeded,
        );
        let held = iso.admit_to_cap("s").await;
        let (tx, mut order) = tokio::sync::mpsc::unbounded_channel();
        let mut waiters = Vec::new();
        for (name, after) in [("first", 0), ("second", 200)] {
            let (iso, tx) = (iso.clone(), tx.clone());
            waiters.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(after)).await;
                if let Admission::Go(permit) = iso.admit_to_cap("s").await {
                    tx.send(name).unwrap();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    drop(permit);
                }
            }));
        }
        // The endpoint keeps completing (not stalled) while both wait.
        for _ in 0..12 {
            tokio::time::sleep(Duration::from_millis(40)).await;
            iso.note(
                "s",
                Some(true),
                Duration::from_millis(100),
                Signal::Succeeded,
            );
        }
        drop(held);
        assert_eq!(order.recv().await, Some("first"));
        assert_eq!(order.recv().await, Some("second"));
    }

    #[tokio::test]
    async fn a_failing_or_stalled_endpoint_at_its_cap_is_deferred() {
        let iso = isolation(1, 10, Duration::from_secs(1));
        iso.note("failing", Some(false), MS, Signal::Neutral);
        let _held = iso.admit_to_cap("failing").await;
        let asked = Instant::now();
        assert!(matches!(
            iso.admit_to_cap("failing").await,
            Admission::Failing
        ));
        assert!(
            asked.elapsed() < Duration::from_millis(20),
            "waited on a failing endpoint"
        );

        // A first request that hangs while another endpoint completes: a later delivery waits
        // the floor, then gives up.
        let _hung = iso.admit_to_cap("hung").await;
        iso.note("other", Some(true), MS, Signal::Succeeded);
        let asked = Instant::now();
        assert!(matches!(iso.admit_to_cap("hung").await, Admission::Stalled));
        assert!(asked.elapsed() >= FLOOR, "gave up before the stall bound");
        // Once stalled, at once.
        let asked = Instant::now();
        assert!(matches!(iso.admit_to_cap("hung").await, Admission::Stalled));
        assert!(asked.elapsed() < Duration::from_millis(20));
    }

    #[tokio::test]
    async fn with_nothing_completing_anywhere_a_delivery_waits_until_the_endpoint_fails() {
        let iso = isolation(1, 10, Duration::from_secs(1));
        let held = iso.admit_to_cap("cold").await;
        let waiter = tokio::spawn({
            let iso = iso.clone();
            async move { iso.admit_to_cap("cold").await }
        });
        // Several stall bounds without a completion anywhere: starved or cold, not stalled.
        tokio::time::sleep(FLOOR * 4).await;
        assert!(
            !waiter.is_finished(),
            "deferred while nothing completed anywhere"
        );
        // The first request fails (say it timed out): the waiter gives up at its next check,
        // before any slot frees.
        iso.note("cold", Some(false), MS, Signal::Neutral);
        let answer = tokio::time::timeout(FLOOR * 4, waiter)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(answer, Admission::Failing), "{answer:?}");
        drop(held);
    }

    #[tokio::test]
    async fn a_fast_endpoint_queues_more_than_three_caps() {
        let iso = isolation(1, 10, Duration::from_secs(1));
        iso.note("fast", Some(true), MS, Signal::Succeeded);
        let held = iso.admit_to_cap("fast").await;
        // Ten ahead at 1 ms each (more than three caps): an 11 ms wait.
        let waiters: Vec<_> = (0..10)
            .map(|_| {
                let iso = iso.clone();
                tokio::spawn(async move { iso.admit_to_cap("fast").await })
            })
            .collect();
        let queued = async {
            while iso.with_entry("fast", |e| e.waiting) < 10 {
                tokio::time::sleep(MS).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), queued)
            .await
            .expect("the fast endpoint's deliveries were not all queued");
        assert!(
            !iso.with_entry("fast", |e| e.queue_full(1, FLOOR)),
            "a fast endpoint's eleventh delivery would be deferred"
        );
        drop(held);
        for waiter in waiters {
            // Each goes in turn as the one before it finishes.
            let answer = waiter.await.unwrap();
            assert!(matches!(answer, Admission::Go(_)), "{answer:?}");
            iso.note("fast", Some(true), MS, Signal::Succeeded);
        }
    }

    #[tokio::test]
    async fn the_queue_holds_three_caps_of_deliveries() {
        let iso = isolation(1, 10, Duration::from_secs(1));
        iso.note("s", Some(true), Duration::from_secs(1), Signal::Succeeded);
        let _held = iso.admit_to_cap("s").await;
        let waiters: Vec<_> = (0..QUEUE_CAPS)
            .map(|_| {
                let iso = iso.clone();
                tokio::spawn(async move { iso.admit_to_cap("s").await })
            })
            .collect();
        while iso.with_entry("s", |e| e.waiting) < QUEUE_CAPS {
            tokio::time::sleep(MS).await;
        }
        assert!(matches!(iso.admit_to_cap("s").await, Admission::QueueFull));
        for waiter in waiters {
            waiter.abort();
        }
    }

    #[tokio::test]
    async fn failures_open_the_circuit_and_a_successful_probe_closes_it() {
        let iso = isolation(10, 3, Duration::from_millis(30));
        for _ in 0..3 {
            iso.note("s", Some(false), MS, Signal::Neutral);
        }
        assert_eq!(iso.open_gauge.get(), 1);
        assert!(matches!(
            iso.admit_to_cap("s").await,
            Admission::CircuitOpen
        ));
        tokio::time::sleep(Duration::from_millis(40)).await;
        // One probe only.
        let probe = iso.admit_to_cap("s").await;
        assert!(matches!(probe, Admission::Go(_)));
        assert!(matches!(
            iso.admit_to_cap("s").await,
            Admission::CircuitOpen
        ));
        iso.note("s", Some(true), MS, Signal::Succeeded);
        drop(probe);
        assert_eq!(iso.open_gauge.get(), 0);
        assert!(matches!(iso.admit_to_cap("s").await, Admission::Go(_)));
    }

    #[tokio::test]
    async fn a_failed_probe_reopens_the_circuit() {
        let iso = isolation(10, 1, Duration::from_millis(20));
        iso.note("s", Some(false), MS, Signal::Neutral);
        tokio::time::sleep(Duration::from_millis(30)).await;
        let _probe = iso.admit_to_cap("s").await;
        iso.note("s", Some(false), MS, Signal::Neutral);
        assert!(matches!(
            iso.admit_to_cap("s").await,
            Admission::CircuitOpen
        ));
        assert_eq!(iso.open_gauge.get(), 1);
    }
}
