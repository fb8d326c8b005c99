//! Rate limits enforced by all dispatchers together, and the adaptive slow-down: every
//! subscription's [`Throttle`] on this dispatcher, the dispatchers alive ([`Members`]), and
//! what is told to the others over `relay.control`. Called by [`super::admission`], which
//! admits a delivery through its rate first, then its in-flight cap, then a window token.
//!
//! **Membership.** Every dispatcher announces itself on `relay.control` every
//! `dispatch.member_heartbeat` (`Dispatcher { id, members, settled_for, .. }`); each takes
//! `1 / n` of every subscription's limits, with the rules in [`super::members`] so that the
//! parts never add up to more than the whole while dispatchers join and leave.
//!
//! **Waiting.** A delivery whose reserved start is at most `dispatch.rate_limit_wait` away
//! waits for it in memory (holding at most `prefetch / 2` events and as many redeliveries,
//! [`super::waiting_room`], so waiting deliveries never fill the prefetch window of the other
//! subscriptions' messages); otherwise it is deferred to
//! the first retry tier, not as an attempt, and comes back about when its subscription has a
//! start free ([`Pacing::comeback`]), not one tier later with everything deferred with it. So
//! is one that finds no window token within that wait, or that finds this dispatcher not yet
//! settled for.
//!
//! **Slow-down.** A 429 or 503 is applied here and sent to the others as `SlowDown` (the new
//! total rate and the `Retry-After` pause), so the whole subscription slows down and pauses.
//!
//! **Unlimited costs nothing.** Only limited subscriptions, and unlimited ones slowed down or
//! paused after a 429/503, have a [`Throttle`]. The ids of the latter are a set read without a
//! lock ([`ArcSwap`]), replaced when one is slowed or recovers: a delivery of any other
//! subscription takes no lock, no wait and no window token here.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwap;
use lapin::Channel;
use prometheus::{GaugeVec, IntCounterVec, IntGauge, Opts, Registry};
use relay_shared::{
    amqp,
    control::{ControlMessage, HOLDING_REPORTED, Held, Holding},
    ids::new_id,
    shutdown::Shutdown,
    subscription::Limits,
};
use tokio::sync::{Notify, mpsc, watch};

use super::{
    members::Members,
    step::Signal,
    throttle::{Metered, Pace, Slot, Throttle, WINDOW},
    waiting_room::{Pin, WaitingRoom},
};

/// At most this many subscriptions get an effective-rate gauge (the most slowed first), so
/// the label's cardinality stays bounded however many subscriptions are limited.
pub const RATE_GAUGES: usize = 20;

/// Longest wait for the broker's confirm of a heartbeat or a slow-down.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);

/// How often a delivery waiting for this dispatcher to be settled for looks again.
const READY_POLL: Duration = Duration::from_millis(50);

/// The pacing of this dispatcher.
#[derive(Debug)]
pub struct Pacing {
    throttles: Mutex<HashMap<String, Throttle>>,
    /// The unlimited subscriptions among `throttles` (slowed down or paused): the only
    /// unlimited ones paced here. Replaced under the `throttles` lock, read without one.
    unlimited: ArcSwap<HashSet<String>>,
    /// Subscriptions whose circuit breaker is open here (for the status report).
    breakers: Mutex<HashSet<String>>,
    members: Mutex<Members>,
    /// The count this dispatcher last announced it has settled for.
    settled_for: AtomicUsize,
    /// A window token came back.
    released: Notify,
    /// How long a token is held after its request's answer: [`WINDOW`].
    hold: Duration,
    heartbeat: Duration,
    max_wait: Duration,
    max_retry_after: Duration,
    waiting: WaitingRoom,
    outbox: mpsc::Sender<ControlMessage>,
    metrics: PacingMetrics,
}

#[derive(Debug, Clone)]
struct PacingMetrics {
    /// `outcome` = `waited` | `deferred`.
    rate_limited: IntCounterVec,
    effective_rate: GaugeVec,
    alive: IntGauge,
    settled: IntGauge,
    slowed: IntGauge,
}

impl PacingMetrics {
    fn register(registry: &Registry) -> prometheus::Result<Self> {
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "relay_subscription_rate_limited_total",
                "Deliveries held back by a subscription's rate (limit, slow-down or Retry-After): waited in memory, or deferred to the first retry tier (not an attempt).",
            ),
            &["outcome"],
        )?;
        let effective_rate = GaugeVec::new(
            Opts::new(
                "relay_subscription_effective_rate",
                "Total requests per second a subscription may receive now (all dispatchers), for at most 20 limited or slowed-down subscriptions, the most slowed first.",
            ),
            &["subscription_id"],
        )?;
        let alive = IntGauge::new(
            "relay_dispatchers_alive",
            "Dispatchers every limit is shared by (the most this one or any it hears counts); it takes 1/alive of every limit.",
        )?;
        let settled = IntGauge::new(
            "relay_dispatcher_rate_limits_ready",
            "1 when this dispatcher may send to rate-limited subscriptions: it hears itself on relay.control and every dispatcher it hears has settled for its count.",
        )?;
        let slowed = IntGauge::new(
            "relay_subscriptions_slowed",
            "Subscriptions slowed down or paused after 429/503 (on this dispatcher).",
        )?;
        registry.register(Box::new(rate_limited.clone()))?;
        registry.register(Box::new(effective_rate.clone()))?;
        registry.register(Box::new(alive.clone()))?;
        registry.register(Box::new(settled.clone()))?;
        registry.register(Box::new(slowed.clone()))?;
        Ok(Self {
            rate_limited,
            effective_rate,
            alive,
            settled,
            slowed,
        })
    }
}

/// Whether a delivery may be sent as far as its rate goes (after waiting for its slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paced {
    /// Not paced at all (unlimited, and not slowed down here): send it, no window token.
    Free,
    /// Send it, with a window token ([`Pacing::take`]).
    Go,
    /// Its slot is further away than the wait allowed: defer it.
    Defer,
}

/// A window token: dropped after its request's answer, it comes back a [`WINDOW`] later.
#[derive(Debug)]
pub struct Ticket {
    pacing: Arc<Pacing>,
    subscription_id: String,
    /// Counted against a budget (the subscription had a rate when it was taken).
    counted: bool,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.counted {
            return;
        }
        let pacing = self.pacing.clone();
        let id = std::mem::take(&mut self.subscription_id);
        let hold = pacing.hold;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    tokio::time::sleep(hold).await;
                    pacing.give_back(&id);
                });
            }
            Err(_) => pacing.give_back(&id),
        }
    }
}

/// What [`Pacing::new`] needs.
#[derive(Debug, Clone, Copy)]
pub struct PacingSettings {
    /// How often this dispatcher announces itself.
    pub heartbeat: Duration,
    /// Longest wait in memory for a reserved slot or a window token.
    pub max_wait: Duration,
    /// Most events, and most redeliveries, held by deliveries waiting in memory at once.
    pub max_waiting: usize,
    /// Longest `Retry-After` honoured.
    pub max_retry_after: Duration,
}

impl Pacing {
    /// The pacing of a new dispatcher, and the receiver of what it must tell the others
    /// (give it to [`Pacing::announce`]).
    ///
    /// # Errors
    /// A metric is already registered.
    pub fn new(
        settings: PacingSettings,
        registry: &Registry,
    ) -> prometheus::Result<(Arc<Self>, mpsc::Receiver<ControlMessage>)> {
        let (outbox, told) = mpsc::channel(256);
        let pacing = Self {
            throttles: Mutex::new(HashMap::new()),
            unlimited: ArcSwap::from_pointee(HashSet::new()),
            breakers: Mutex::new(HashSet::new()),
            members: Mutex::new(Members::new(
                new_id("dsp"),
                settings.heartbeat,
                Instant::now(),
            )),
            settled_for: AtomicUsize::new(0),
            released: Notify::new(),
            hold: WINDOW,
            heartbeat: settings.heartbeat,
            max_wait: settings.max_wait,
            max_retry_after: settings.max_retry_after,
            waiting: WaitingRoom::new(settings.max_waiting),
            outbox,
            metrics: PacingMetrics::register(registry)?,
        };
        pacing.metrics.alive.set(1);
        Ok((Arc::new(pacing), told))
    }

    fn throttles(&self) -> MutexGuard<'_, HashMap<String, Throttle>> {
        self.throttles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn members(&self) -> MutexGuard<'_, Members> {
        self.members.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// This dispatcher's part of every limit: `1 / n`.
    pub fn share(&self) -> f64 {
        self.members().share(Instant::now())
    }

    /// This dispatcher's part of a subscription's in-flight cap: `⌊max_in_flight / n⌋`, at
    /// least one, and at most `ceiling` (each dispatcher's own
    /// `dispatch.max_inflight_per_subscription`, also the cap when the subscription sets none).
    pub fn cap(&self, limits: &Limits, ceiling: usize) -> usize {
        limits.max_in_flight.map_or(ceiling, |cap| {
            let count = self.members().count(Instant::now()).max(1);
            (usize::try_from(cap).unwrap_or(usize::MAX) / count).clamp(1, ceiling.max(1))
        })
    }

    fn defer(&self) -> Paced {
        self.metrics
            .rate_limited
            .with_label_values(&["deferred"])
            .inc();
        Paced::Defer
    }

    /// Whether a subscription with `limits` is paced here: limited, or slowed down or paused.
    /// Takes no lock.
    fn paced(&self, subscription_id: &str, limits: &Limits) -> bool {
        limits.rate_limit.is_some() || {
            let unlimited = self.unlimited.load();
            !unlimited.is_empty() && unlimited.contains(subscription_id)
        }
    }

    /// Publishes which unlimited subscriptions are paced, after `throttles` changed.
    fn publish(&self, throttles: &HashMap<String, Throttle>) {
        self.unlimited.store(Arc::new(
            throttles
                .iter()
                .filter(|(_, throttle)| !throttle.limited())
                .map(|(id, _)| id.clone())
                .collect(),
        ));
    }

    /// Waits for this delivery's slot (holding `pin`'s message meanwhile), or says to defer it.
    pub async fn reserve(&self, subscription_id: &str, limits: &Limits, pin: Pin<'_>) -> Paced {
        if !self.paced(subscription_id, limits) {
            return Paced::Free;
        }
        let asked = Instant::now();
        let limited = {
            let mut throttles = self.throttles();
            if !throttles.contains_key(subscription_id) {
                if limits.rate_limit.is_none() {
                    // Recovered since the set was read.
                    return Paced::Free;
                }
                throttles.insert(
                    subscription_id.to_owned(),
                    Throttle::new(limits.rate_limit, asked),
                );
            }
            let Some(throttle) = throttles.get_mut(subscription_id) else {
                return Paced::Free;
            };
            let was = throttle.limited();
            throttle.configure(limits.rate_limit, asked);
            let limited = throttle.rate().is_some() || throttle.pace(asked) != Pace::Active;
            if was != throttle.limited() {
                self.publish(&throttles);
            }
            limited
        };
        if !limited {
            return Paced::Free;
        }
        // Not before the others have settled for this dispatcher (a newcomer, or one that
        // could not hear itself).
        let deadline = asked + self.max_wait;
        while !self.members().ready(Instant::now()) {
            if Instant::now() + READY_POLL > deadline {
                return self.defer();
            }
            tokio::time::sleep(READY_POLL).await;
        }
        let share = self.share();
        let mut in_room = None;
        loop {
            let now = Instant::now();
            let reserved = {
                // With the waiting room full, only a slot free now is taken.
                let full = in_room.is_none() && !self.waiting.admits(pin);
                let wait = if full {
                    Duration::ZERO
                } else {
                    deadline.saturating_duration_since(now)
                };
                self.throttles().get_mut(subscription_id).map(|throttle| {
                    let slot = throttle.reserve(now, share, wait);
                    if slot != Slot::Now {
                        throttle.held_back(now);
                    }
                    (slot, throttle.epoch())
                })
            };
            match reserved {
                None | Some((Slot::Now, _)) => break,
                Some((Slot::Later, _)) => return self.defer(),
                Some((Slot::At(start), epoch)) => {
                    if in_room.is_none() {
                        self.metrics
                            .rate_limited
                            .with_label_values(&["waited"])
                            .inc();
                        in_room = Some(self.waiting.enter(pin));
                    }
                    tokio::time::sleep_until(start.into()).await;
                    // The pace went down meanwhile (a slow-down, a pause): reserve again
                    // rather than go at the old pace.
                    let now_epoch = self.throttles().get(subscription_id).map(Throttle::epoch);
                    if now_epoch.is_none_or(|now_epoch| now_epoch == epoch) {
                        break;
                    }
                }
            }
        }
        self.gate(subscription_id, share).await;
        drop(in_room);
        Paced::Go
    }

    /// How long a delivery of `subscription_id` deferred for its rate waits in the tier of
    /// `tier`: see [`Throttle::comeback`] (the whole tier when it is not paced here).
    pub fn comeback(&self, subscription_id: &str, tier: Duration) -> Duration {
        let share = self.share();
        self.throttles()
            .get_mut(subscription_id)
            .map_or(tier, |throttle| {
                throttle.comeback(Instant::now(), share, tier)
            })
    }

    /// Keeps the real starts at least one interval apart: deliveries that woke late (a busy
    /// machine) go one by one instead of all at once, so a stall never turns into a burst.
    async fn gate(&self, subscription_id: &str, share: f64) {
        loop {
            let now = Instant::now();
            let ready = self
                .throttles()
                .get_mut(subscription_id)
                .map_or(Ok(()), |t| t.start(now, share));
            match ready {
                Ok(()) => return,
                Err(at) => tokio::time::sleep_until(at.into()).await,
            }
        }
    }

    /// Takes a window token for a request about to start, waiting at most
    /// `dispatch.rate_limit_wait` for one to come back; `None`: defer the delivery.
    pub async fn take(self: &Arc<Self>, subscription_id: &str) -> Option<Ticket> {
        let deadline = tokio::time::Instant::now() + self.max_wait;
        loop {
            let released = self.released.notified();
            let mut released = std::pin::pin!(released);
            // Registered before looking, so a token given back in between is not missed.
            released.as_mut().enable();
            let share = self.share();
            let taken = self.throttles().get_mut(subscription_id).map(|throttle| {
                // Paused since its start was reserved: nothing goes out before the pause ends.
                if throttle.paused(Instant::now()) {
                    return None;
                }
                let counted = throttle.rate().is_some();
                let taken = !counted || throttle.take(share);
                if !taken {
                    throttle.held_back(Instant::now());
                }
                Some((counted, taken))
            });
            match taken {
                Some(None) => {
                    self.defer();
                    return None;
                }
                Some(Some((counted, true))) => {
                    return Some(Ticket {
                        pacing: self.clone(),
                        subscription_id: subscription_id.to_owned(),
                        counted,
                    });
                }
                None => {
                    return Some(Ticket {
                        pacing: self.clone(),
                        subscription_id: String::new(),
                        counted: false,
                    });
                }
                Some(Some((_, false))) => {
                    if tokio::time::timeout_at(deadline, released).await.is_err() {
                        self.defer();
                        return None;
                    }
                }
            }
        }
    }

    fn give_back(&self, subscription_id: &str) {
        if let Some(throttle) = self.throttles().get_mut(subscription_id) {
            throttle.give_back();
        }
        self.released.notify_waiters();
    }

    /// Learns from an attempt's result: a success recovers the rate, a 429/503 slows the
    /// subscription down here and, through `relay.control`, everywhere. `metered` is what the
    /// subscription completed before this result (see [`Metered`]): an unlimited one slowed
    /// down for the first time slows down from there. Takes no lock for a subscription that
    /// is not paced and did not ask to slow down.
    pub fn observe(
        &self,
        subscription_id: &str,
        limits: &Limits,
        signal: Signal,
        metered: Metered,
    ) {
        let slow_down = matches!(signal, Signal::SlowDown { .. });
        if !slow_down && !self.paced(subscription_id, limits) {
            return;
        }
        let share = self.share();
        let now = Instant::now();
        let mut throttles = self.throttles();
        if !throttles.contains_key(subscription_id) {
            if !slow_down {
                return;
            }
            throttles.insert(
                subscription_id.to_owned(),
                Throttle::metered(limits.rate_limit, now, metered),
            );
        }
        let Some(throttle) = throttles.get_mut(subscription_id) else {
            return;
        };
        match signal {
            Signal::Succeeded => {
                throttle.succeeded(now, share);
                if throttle.unpaced(now) {
                    throttles.remove(subscription_id);
                    self.publish(&throttles);
                }
            }
            Signal::Neutral => {}
            Signal::SlowDown { retry_after } => {
                let retry_after = retry_after.map(|after| after.min(self.max_retry_after));
                if let Some((rate, until)) = throttle.slow_down(now, share, retry_after) {
                    tracing::info!(
                        subscription_id,
                        rate,
                        paused_for_ms = until.map(|u| u.duration_since(now).as_millis()),
                        "endpoint asked to slow down"
                    );
                    let told = ControlMessage::SlowDown {
                        subscription_id: subscription_id.to_owned(),
                        rate_millis: rate.map(millis),
                        paused_until_ms: until.map(|u| unix_ms_in(u.duration_since(now))),
                        step_millis: throttle.step().map(millis),
                    };
                    // Telling the others is best effort: each learns on its own anyway.
                    let _ = self.outbox.try_send(told);
                }
                // Unlimited and too sparse to slow down, not paused: nothing to keep.
                let unpaced = throttle.unpaced(now);
                let listed = !throttle.limited() && !unpaced;
                if unpaced {
                    throttles.remove(subscription_id);
                }
                if listed != self.unlimited.load().contains(subscription_id) {
                    self.publish(&throttles);
                }
            }
        }
    }

    /// Applies a message from `relay.control` (its own included).
    pub fn apply(&self, message: &ControlMessage) {
        match message {
            ControlMessage::Dispatcher {
                id,
                members,
                settled_for,
                ..
            } => {
                self.members().heard(
                    id,
                    usize::try_from(*members).unwrap_or(usize::MAX),
                    usize::try_from(*settled_for).unwrap_or(usize::MAX),
                    Instant::now(),
                );
            }
            ControlMessage::SlowDown {
                subscription_id,
                rate_millis,
                paused_until_ms,
                step_millis,
            } => {
                let now = Instant::now();
                let until = paused_until_ms.map(|ms| now + unix_ms_until(ms));
                #[allow(clippy::cast_precision_loss)]
                let per_second = |millis: &u64| *millis as f64 / 1000.0;
                let rate = rate_millis.as_ref().map(per_second);
                let step = step_millis.as_ref().map(per_second);
                let mut throttles = self.throttles();
                let new = !throttles.contains_key(subscription_id);
                if new {
                    if rate.is_none() && until.is_none_or(|until| until <= now) {
                        return;
                    }
                    // Unlimited until a delivery says otherwise (its limits configure it).
                    throttles.insert(subscription_id.clone(), Throttle::new(None, now));
                }
                if let Some(throttle) = throttles.get_mut(subscription_id) {
                    throttle.slowed_elsewhere(now, rate, until, step);
                }
                if new {
                    self.publish(&throttles);
                }
            }
            _ => {}
        }
    }

    /// This dispatcher's heartbeat: the count it uses and the count it has settled for
    /// (every subscription's tokens within the budget at that count), and the gauges.
    fn heartbeat_message(&self) -> ControlMessage {
        let now = Instant::now();
        let (id, count, ready) = {
            let mut members = self.members();
            (
                members.me().to_owned(),
                members.count(now),
                members.ready(now),
            )
        };
        #[allow(clippy::cast_precision_loss)]
        let share = 1.0 / count.max(1) as f64;
        let within = {
            let mut throttles = self.throttles();
            let before = throttles.len();
            throttles.retain(|_, t| !t.forgettable(now) && !t.unpaced(now));
            if throttles.len() != before {
                self.publish(&throttles);
            }
            throttles.values().all(|t| t.within(share))
        };
        if within {
            self.settled_for.store(count, Ordering::Relaxed);
        }
        self.metrics
            .alive
            .set(i64::try_from(count).unwrap_or(i64::MAX));
        self.metrics.settled.set(i64::from(ready));
        self.refresh_gauges();
        ControlMessage::Dispatcher {
            id,
            members: u32::try_from(count).unwrap_or(u32::MAX),
            settled_for: u32::try_from(self.settled_for.load(Ordering::Relaxed))
                .unwrap_or(u32::MAX),
            heartbeat_ms: u64::try_from(self.heartbeat.as_millis()).unwrap_or(u64::MAX),
            holding: self.holding(now),
        }
    }

    /// The subscriptions this dispatcher holds back now, for consumer-api's status: with
    /// their breaker open (which wins), paused, slowed down, or held back by their rate
    /// within the last two heartbeats; at most [`HOLDING_REPORTED`].
    fn holding(&self, now: Instant) -> Vec<Holding> {
        let recent = self.heartbeat * 2;
        let mut holding: HashMap<String, Held> = self
            .throttles()
            .iter()
            .filter_map(|(id, throttle)| {
                let throttled = || {
                    throttle.rate().map(|rate| Held::Throttled {
                        rate_millis: millis(rate),
                    })
                };
                let held = match throttle.pace(now) {
                    Pace::BackingOff(until) => Some(Held::BackingOff {
                        until_ms: unix_ms_in(until.saturating_duration_since(now)),
                    }),
                    Pace::Throttled(_) => throttled(),
                    Pace::Active if throttle.held_back_within(now, recent) => throttled(),
                    Pace::Active => None,
                };
                held.map(|held| (id.clone(), held))
            })
            .collect();
        for id in self.breakers().iter() {
            holding.insert(id.clone(), Held::BreakerOpen);
        }
        holding
            .into_iter()
            .take(HOLDING_REPORTED)
            .map(|(subscription_id, held)| Holding {
                subscription_id,
                held,
            })
            .collect()
    }

    /// A subscription's circuit breaker opened (`true`) or closed here.
    pub fn breaker(&self, subscription_id: &str, open: bool) {
        let mut breakers = self.breakers();
        if open {
            breakers.insert(subscription_id.to_owned());
        } else {
            breakers.remove(subscription_id);
        }
    }

    fn breakers(&self) -> MutexGuard<'_, HashSet<String>> {
        self.breakers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Refreshes the gauges (the most slowed subscriptions' rates, at most [`RATE_GAUGES`]).
    fn refresh_gauges(&self) {
        let now = Instant::now();
        let mut rates: Vec<(String, f64)> = Vec::new();
        let mut slowed = 0;
        {
            let throttles = self.throttles();
            for (id, throttle) in throttles.iter() {
                if throttle.pace(now) != Pace::Active {
                    slowed += 1;
                }
                if let Some(rate) = throttle.rate() {
                    rates.push((id.clone(), rate));
                }
            }
        }
        rates.sort_by(|a, b| a.1.total_cmp(&b.1));
        self.metrics.effective_rate.reset();
        for (id, rate) in rates.iter().take(RATE_GAUGES) {
            self.metrics
                .effective_rate
                .with_label_values(&[id.as_str()])
                .set(*rate);
        }
        self.metrics.slowed.set(slowed);
    }

    /// Announces this dispatcher every heartbeat and sends what it must tell the others,
    /// until `shutdown`.
    pub async fn announce(
        self: Arc<Self>,
        channels: watch::Receiver<Option<Channel>>,
        exchange: String,
        mut told: mpsc::Receiver<ControlMessage>,
        mut shutdown: Shutdown,
    ) {
        let mut tick = tokio::time::interval(self.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let message = tokio::select! {
                _ = tick.tick() => self.heartbeat_message(),
                Some(message) = told.recv() => message,
                () = shutdown.wait() => return,
            };
            let channel = channels.borrow().clone();
            let Some(channel) = channel else { continue };
            let exchange = exchange.clone();
            // Not awaited here: a slow confirm must not delay the next heartbeat.
            tokio::spawn(async move {
                let published = amqp::publish_confirmed(
                    &channel,
                    &exchange,
                    "",
                    message.encode(),
                    PUBLISH_TIMEOUT,
                )
                .await;
                if let Err(e) = published {
                    tracing::debug!(error = %e, subject = message.subject(), "control message not published");
                }
            });
        }
    }
}

/// A rate in thousandths of a request per second.
fn millis(rate: f64) -> u64 {
    // Rates are positive and at most 10,000 req/s.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let millis = (rate * 1000.0).round().max(1.0) as u64;
    millis
}

/// Now, in Unix milliseconds.
pub(super) fn unix_ms_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The Unix time `after` from now, in milliseconds.
fn unix_ms_in(after: Duration) -> i64 {
    unix_ms_now().saturating_add(i64::try_from(after.as_millis()).unwrap_or(i64::MAX))
}

/// How long until the Unix time `ms` (zero when past).
fn unix_ms_until(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms.saturating_sub(unix_ms_now())).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use tokio_util::task::AbortOnDropHandle;

    use super::*;

    fn pacing(max_wait: Duration) -> Arc<Pacing> {
        Pacing::new(
            PacingSettings {
                heartbeat: Duration::from_millis(20),
                max_wait,
                max_waiting: 100,
                max_retry_after: Duration::from_secs(60),
            },
            &Registry::new(),
        )
        .unwrap()
        .0
    }

    fn limited(rate: f64) -> Limits {
        Limits {
            rate_limit: Some(rate),
            max_in_flight: None,
        }
    }

    /// Heartbeats of this dispatcher (and `others`, settled) every 10 ms, from now until the
    /// handle is dropped; returns once it is ready (a stalled test process is heard again
    /// before a delivery's wait for readiness runs out).
    async fn settle(pacing: &Arc<Pacing>, others: &[&str]) -> AbortOnDropHandle<()> {
        let (p, others): (_, Vec<String>) = (
            pacing.clone(),
            others.iter().map(|&o| o.to_owned()).collect(),
        );
        let beat = AbortOnDropHandle::new(tokio::spawn(async move {
            let me = p.members().me().to_owned();
            let n = u32::try_from(others.len() + 1).unwrap();
            loop {
                for id in others.iter().chain([&me]) {
                    p.apply(&ControlMessage::Dispatcher {
                        id: id.clone(),
                        members: n,
                        settled_for: n,
                        heartbeat_ms: 0,
                        holding: Vec::new(),
                    });
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
        while !pacing.members().ready(Instant::now()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        beat
    }

    #[tokio::test]
    async fn unlimited_goes_at_once_and_limited_waits_to_be_settled_for() {
        let p = pacing(Duration::from_millis(100));
        assert_eq!(
            p.reserve("free", &Limits::default(), Pin::Redelivery).await,
            Paced::Free
        );
        // Never hears itself: deferred after the wait allowed.
        let asked = Instant::now();
        assert_eq!(
            p.reserve("paced", &limited(10.0), Pin::Redelivery).await,
            Paced::Defer
        );
        assert!(asked.elapsed() >= Duration::from_millis(50));
    }

    #[tokio::test]
    async fn window_tokens_bound_the_requests_and_come_back_a_window_after_the_answer() {
        let mut p = pacing(Duration::from_secs(5));
        // A shorter window for the test; the budget is still the 10 s one.
        Arc::get_mut(&mut p).unwrap().hold = Duration::from_millis(400);
        let _beat = settle(&p, &["other"]).await;
        // 1 req/s, half each: 5 tokens per window here.
        assert_eq!(
            p.reserve("s", &limited(1.0), Pin::Redelivery).await,
            Paced::Go
        );
        let mut tickets = Vec::new();
        for _ in 0..5 {
            tickets.push(p.take("s").await.expect("a token"));
        }
        let waiter = tokio::spawn({
            let p = p.clone();
            async move { p.take("s").await.is_some() }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiter.is_finished(), "a sixth token was taken");
        // An answer: its token comes back a window later, not before.
        let answered = Instant::now();
        drop(tickets.pop());
        assert!(waiter.await.unwrap());
        assert!(answered.elapsed() >= Duration::from_millis(400));

        // None within the wait allowed: deferred.
        let mut q = pacing(Duration::from_millis(100));
        Arc::get_mut(&mut q).unwrap().hold = Duration::from_secs(60);
        let _beat = settle(&q, &[]).await;
        assert_eq!(
            q.reserve("s", &limited(0.1), Pin::Redelivery).await,
            Paced::Go
        );
        let _held = q.take("s").await.expect("one token");
        assert!(q.take("s").await.is_none());
    }

    #[tokio::test]
    async fn an_unlimited_subscription_is_paced_only_after_it_asked_to_slow_down() {
        let p = pacing(Duration::from_secs(5));
        let _beat = settle(&p, &[]).await;
        let free = Limits::default();
        let at = Instant::now();
        assert_eq!(p.reserve("u", &free, Pin::Redelivery).await, Paced::Free);
        p.observe("u", &free, Signal::Succeeded, Metered::new(at));
        assert!(
            p.throttles().is_empty(),
            "an unlimited subscription got a throttle"
        );
        // A 429 with Retry-After, too few requests before it to slow down from: paused.
        let pause = Signal::SlowDown {
            retry_after: Some(Duration::from_millis(200)),
        };
        p.observe("u", &free, pause, Metered::new(at));
        assert!(p.unlimited.load().contains("u"));
        let asked = Instant::now();
        assert_eq!(p.reserve("u", &free, Pin::Redelivery).await, Paced::Go);
        assert!(
            asked.elapsed() >= Duration::from_millis(150),
            "the pause did not hold"
        );
        // Nothing left to pace after the pause: free again.
        p.observe("u", &free, Signal::Succeeded, Metered::new(at));
        assert!(!p.unlimited.load().contains("u"));
        assert_eq!(p.reserve("u", &free, Pin::Redelivery).await, Paced::Free);

        // What the subscription completed before its first 429 is what it slows down from.
        let mut metered = Metered::new(at);
        for _ in 0..40 {
            metered.observe(at, Signal::Succeeded);
        }
        let slow = Signal::SlowDown { retry_after: None };
        p.observe("w", &free, slow, metered);
        // Slowed down (to half of what got through), not only paused as without them.
        let rate = p.throttles().get("w").and_then(Throttle::rate);
        assert!(rate.is_some(), "not slowed down");

        // Another dispatcher's slow-down paces an unlimited subscription here too.
        p.apply(&ControlMessage::SlowDown {
            subscription_id: "v".into(),
            rate_millis: Some(5_000),
            paused_until_ms: None,
            step_millis: Some(250),
        });
        assert!(p.unlimited.load().contains("v"));
        assert_eq!(p.reserve("v", &free, Pin::Redelivery).await, Paced::Go);
    }

    #[tokio::test]
    async fn a_pause_holds_back_deliveries_already_waiting_for_their_start() {
        let p = pacing(Duration::from_secs(5));
        let _beat = settle(&p, &[]).await;
        // One start every 500 ms.
        assert_eq!(
            p.reserve("s", &limited(2.0), Pin::Redelivery).await,
            Paced::Go
        );
        let asked = Instant::now();
        let waiter = tokio::spawn({
            let p = p.clone();
            async move { p.reserve("s", &limited(2.0), Pin::Redelivery).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Another dispatcher was told `Retry-After: 1` while this delivery waited.
        p.apply(&ControlMessage::SlowDown {
            subscription_id: "s".into(),
            rate_millis: None,
            paused_until_ms: Some(unix_ms_in(Duration::from_secs(1))),
            step_millis: None,
        });
        assert_eq!(waiter.await.unwrap(), Paced::Go);
        assert!(
            asked.elapsed() >= Duration::from_secs(1),
            "went out during the pause, after {:?}",
            asked.elapsed()
        );
    }

    #[test]
    fn the_in_flight_cap_is_shared() {
        let p = pacing(Duration::from_secs(1));
        let limits = |cap| Limits {
            rate_limit: None,
            max_in_flight: Some(cap),
        };
        assert_eq!(p.cap(&Limits::default(), 64), 64);
        assert_eq!(p.cap(&limits(6), 64), 6);
        // Never above the dispatcher's own cap.
        assert_eq!(p.cap(&limits(64), 32), 32);
        p.apply(&ControlMessage::Dispatcher {
            id: "b".into(),
            members: 3,
            settled_for: 3,
            heartbeat_ms: 0,
            holding: Vec::new(),
        });
        assert_eq!(p.cap(&limits(6), 64), 2);
        assert_eq!(p.cap(&limits(2), 64), 1);
    }
}
