//! The dispatcher's delivery capacity (`dispatch.max_inflight` requests at once) in two lanes:
//! first attempts of fresh events (from `ingress`, or deferred by their subscription's rate
//! limit or breaker), and the rest of what comes through `redeliver` (retries, replays,
//! redrives, test pings).
//!
//! `dispatch.first_attempt_share` of the capacity is kept for first attempts and the rest for
//! the other lane, while that lane has work: requests waiting or in flight, or one started
//! within the last [`LINGER`]. A lane without work lends its part: the other lane may then
//! take every slot. Once work comes back, the borrower takes no slot beyond its own part, so
//! the slots it holds come back as its requests finish. A replay of thousands of events then
//! holds a steady flow of fresh events back by nothing, and a flow that resumes after a pause
//! by at most the replay's requests already in flight; nor can a flood of fresh events starve
//! the retries.
//!
//! Slots alone do not keep a replay from crowding fresh events out when the machine is short
//! of processor rather than of slots: requests to a fast endpoint give their slots back at
//! once, so one slot is a thousand requests a second, each of which costs the broker and
//! consumer-api more than the dispatcher. A replay of 10,000 events to one took 70 % of the
//! deliveries while fresh events' median latency went from 10 ms to 200–330 ms in its queue for
//! the processor; halving the replay's slots on saturation still left it one slot, a thousand
//! requests a second. So while first attempts have work, the other lane is a scavenger whose
//! **pace** (starts a second) [`Lanes::regulate`] sets every [`TICK`]: on a tick on which the
//! dispatcher's runtime answered late (by more than [`LAG_TARGET`]: it is saturated) or fresh
//! events arrived more than [`QUEUE_TARGET`] later after their acceptance than the quickest of
//! the last minute ([`FreshQueueing`]: the broker or the machine is saturated, which the
//! dispatcher's own runtime may not feel), the pace becomes half of what the lane started
//! lately (at least [`MIN_PACE`], so that a replay always progresses); after each other tick
//! it rises by [`PACE_RISE`] and one start a second, up to twice what the lane starts (a pace
//! the lane does not use is not raised). Background work so takes what the processor has to
//! spare and gives it back as soon as fresh work would wait for it. Without fresh work the
//! lane is not paced.
//!
//! No lock on the delivery path: taking a slot is one compare-and-swap on both lanes' counts.
//! A request that has to wait queues in its lane and is woken in turn (the oldest first) as
//! slots come back; while a lane has waiters, newcomers queue behind them.

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use prometheus::{IntGauge, IntGaugeVec};
use tokio::sync::Notify;

/// Which lane a request goes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// The first attempt of a fresh event.
    First,
    /// A retry, replay, redrive or test ping.
    Other,
}

impl Lane {
    fn index(self) -> usize {
        match self {
            Self::First => 0,
            Self::Other => 1,
        }
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::First => "first",
            Self::Other => "other",
        }
    }
}

/// A lane that started a request this recently still has work: its part is not lent.
pub const LINGER: Duration = Duration::from_secs(5);

/// How often [`Lanes::regulate`] looks at the runtime.
const TICK: Duration = Duration::from_millis(50);
/// A tick later than this means the runtime is saturated: fresh work waits for the processor.
/// Above the timer's own millisecond rounding and a busy runtime's usual few milliseconds.
pub const LAG_TARGET: Duration = Duration::from_millis(10);

/// Fresh events taking longer than this beyond the least age of the window are queueing
/// somewhere (the broker, the machine): fresh work is waiting.
pub const QUEUE_TARGET: Duration = Duration::from_millis(10);

/// The slowest pace of the other lane while first attempts have work, in starts a second:
/// a replay beside them always progresses.
pub const MIN_PACE: f64 = 20.0;
/// How much the pace rises after each tick on which nothing was saturated (and by one start a
/// second more): slowly (doubling in about 7 s), as each return to saturation delays a few
/// fresh events.
const PACE_RISE: f64 = 0.005;

/// How long the least age of fresh events is remembered as the path's own delay.
pub const BASE_WINDOW: Duration = Duration::from_secs(60);
#[allow(clippy::cast_possible_truncation)]
const BASE_TICKS: usize = (BASE_WINDOW.as_millis() / TICK.as_millis()) as usize;

/// How much longer than usual fresh events take from acceptance to the dispatcher: the least
/// age of one tick's fresh events, less the least age of the last [`BASE_WINDOW`]. One tick,
/// not two in a row: what first attempts are promised is their p99, and waiting for a second
/// late tick let a replay double the fresh p99 from publish to delivery (2.3x) while their
/// median barely moved. A lone late event (a process descheduled a moment) now also halves the
/// pace; the replay then goes slower while fresh events flow (README "Protecting endpoints").
#[derive(Debug, Default)]
struct FreshQueueing {
    least: std::collections::VecDeque<i64>,
}

impl FreshQueueing {
    /// One tick's least age (`i64::MAX`: no fresh event).
    fn tick(&mut self, least: i64) -> Duration {
        if self.least.len() == BASE_TICKS {
            self.least.pop_front();
        }
        self.least.push_back(least);
        if least == i64::MAX {
            return Duration::ZERO;
        }
        let base = self.least.iter().copied().min().unwrap_or(i64::MAX);
        Duration::from_millis(u64::try_from(least.saturating_sub(base)).unwrap_or(0))
    }
}

/// Both lanes' slots in use in one word (first in the low half), so that checking the
/// parts and taking a slot is one compare-and-swap: no lock on the delivery path.
const SHIFT: u32 = 32;

fn unpack(used: u64) -> [u64; 2] {
    [used & u64::from(u32::MAX), used >> SHIFT]
}

fn one(lane: usize) -> u64 {
    1 << (SHIFT * u32::from(lane == 1))
}

/// The two lanes of one dispatcher.
#[derive(Debug)]
pub struct Lanes {
    total: u64,
    /// Each lane's own part.
    own: [u64; 2],
    /// The least gap between the other lane's starts while first attempts have work, in
    /// nanoseconds (0: not paced), and when it may start next (as [`Lanes::now`]).
    other_gap: AtomicU64,
    other_next: AtomicU64,
    /// The other lane's starts since the last tick.
    other_starts: AtomicU64,
    used: AtomicU64,
    waiting: [AtomicUsize; 2],
    /// When each lane last took a slot: nanoseconds after `epoch`, plus one (0: never).
    last: [AtomicU64; 2],
    epoch: Instant,
    /// Per lane: a slot came back (one waiter woken, the oldest).
    freed: [Notify; 2],
    occupancy: [IntGauge; 2],
    pace_gauge: IntGauge,
    /// The least age (milliseconds from acceptance) of the fresh events received since the
    /// last tick; `i64::MAX` when none came.
    fresh_age: AtomicI64,
}

/// A slot in a lane, given back when dropped.
#[derive(Debug)]
pub struct LaneSlot {
    lanes: Arc<Lanes>,
    lane: usize,
}

impl Drop for LaneSlot {
    fn drop(&mut self) {
        let lanes = &self.lanes;
        lanes.used.fetch_sub(one(self.lane), Ordering::SeqCst);
        lanes.occupancy[self.lane].dec();
        // Only a waiter needs waking, the oldest of each lane that has one (read after the
        // slot came back: a waiter either counted itself before, or sees the slot free when
        // it looks). One per lane, not all: a full dispatcher gives back hundreds of slots a
        // second, and each would otherwise wake every waiter.
        for (waiting, freed) in lanes.waiting.iter().zip(&lanes.freed) {
            if waiting.load(Ordering::SeqCst) > 0 {
                freed.notify_one();
            }
        }
    }
}

/// Counts a waiting request for as long as it waits (also when the wait is cancelled).
struct Waiting<'a>(&'a Lanes, usize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting[self.1].fetch_sub(1, Ordering::SeqCst);
    }
}

impl Lanes {
    /// `total` slots, `first_share` of them (rounded, at least one each when `total` allows)
    /// kept for first attempts; `occupancy` gets each lane's slots in use, `pace` the other
    /// lane's pace while first attempts have work (0: not paced).
    pub fn new(
        total: usize,
        first_share: f64,
        occupancy: &IntGaugeVec,
        pace: IntGauge,
    ) -> Arc<Self> {
        let total = u64::try_from(total.clamp(1, u32::MAX as usize)).unwrap_or(1);
        // A share in [0, 1] of at most a few thousand slots.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let first = ((total as f64 * first_share).round() as u64).min(total);
        let first = if total >= 2 {
            first.clamp(1, total - 1)
        } else {
            first
        };
        Arc::new(Self {
            total,
            own: [first, total - first],
            other_gap: AtomicU64::new(0),
            other_next: AtomicU64::new(0),
            other_starts: AtomicU64::new(0),
            used: AtomicU64::new(0),
            waiting: [AtomicUsize::new(0), AtomicUsize::new(0)],
            last: [AtomicU64::new(0), AtomicU64::new(0)],
            epoch: Instant::now(),
            freed: [Notify::new(), Notify::new()],
            occupancy: [Lane::First, Lane::Other]
                .map(|lane| occupancy.with_label_values(&[lane.label()])),
            pace_gauge: pace,
            fresh_age: AtomicI64::new(i64::MAX),
        })
    }

    /// Sets the other lane's pace after a tick (module documentation), the lane having
    /// lately started `recent` requests a second.
    #[allow(clippy::cast_precision_loss)]
    fn adapt(&self, saturated: bool, recent: f64, first_busy: bool) {
        let gap = self.other_gap.load(Ordering::Relaxed);
        let pace = (gap > 0).then(|| 1e9 / gap as f64);
        let next = match pace {
            // Nothing to protect, or nothing to slow down.
            _ if !first_busy => None,
            None if !saturated || recent < MIN_PACE => None,
            _ if saturated => Some((pace.unwrap_or(f64::INFINITY).min(recent) / 2.0).max(MIN_PACE)),
            Some(pace) if pace < 2.0 * recent => {
                Some((pace * (1.0 + PACE_RISE) + 1.0).min(2.0 * recent))
            }
            unused => unused,
        };
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let (gap, shown) = next.map_or((0, 0), |pace| ((1e9 / pace) as u64, pace.round() as i64));
        self.other_gap.store(gap, Ordering::Relaxed);
        self.pace_gauge.set(shown);
    }

    /// A fresh event `age_ms` after its acceptance reached the dispatcher.
    pub fn observe_fresh(&self, age_ms: i64) {
        self.fresh_age.fetch_min(age_ms, Ordering::Relaxed);
    }

    /// Every [`TICK`] until `shutdown`, sets the other lane's pace: fresh work waits when
    /// the runtime woke this task more than [`LAG_TARGET`] late, or fresh events took more
    /// than [`QUEUE_TARGET`] longer than the least of the last [`BASE_WINDOW`] from acceptance
    /// to the dispatcher ([`FreshQueueing`]; a saturated broker or machine delays fresh events
    /// without making this runtime late). The least age is the path's own delay (and any
    /// clock offset between ingest and the dispatcher).
    pub async fn regulate(self: Arc<Self>, mut shutdown: relay_shared::shutdown::Shutdown) {
        let mut queueing = FreshQueueing::default();
        // The other lane's starts a second, smoothed over about half a second.
        let mut smoothed = 0.0;
        loop {
            let asleep = Instant::now();
            tokio::select! {
                () = tokio::time::sleep(TICK) => {}
                () = shutdown.wait() => return,
            }
            let late = asleep.elapsed().saturating_sub(TICK);
            let queued = queueing.tick(self.fresh_age.swap(i64::MAX, Ordering::Relaxed));
            #[allow(clippy::cast_precision_loss)]
            let rate = self.other_starts.swap(0, Ordering::Relaxed) as f64 / TICK.as_secs_f64();
            smoothed += (rate - smoothed) * 0.1;
            let first = unpack(self.used.load(Ordering::SeqCst))[0];
            self.adapt(
                late > LAG_TARGET || queued > QUEUE_TARGET,
                smoothed.max(rate),
                self.busy(0, first, self.now()),
            );
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    /// Whether `lane` has work: requests in flight or waiting, or one started within
    /// [`LINGER`].
    fn busy(&self, lane: usize, used: u64, now: u64) -> bool {
        let last = self.last[lane].load(Ordering::Relaxed);
        used > 0
            || self.waiting[lane].load(Ordering::SeqCst) > 0
            || (last != 0
                && now.saturating_sub(last) < u64::try_from(LINGER.as_nanos()).unwrap_or(u64::MAX))
    }

    /// Takes a slot in `lane` when one is free and it is within its own part or the other
    /// lane has no work.
    fn try_take(&self, lane: usize) -> bool {
        let now = self.now();
        let mut current = self.used.load(Ordering::SeqCst);
        loop {
            let used = unpack(current);
            if used[0] + used[1] >= self.total
                || (used[lane] >= self.own[lane] && self.busy(1 - lane, used[1 - lane], now))
                || (lane == 1 && !self.paced_wait(now).is_zero() && self.busy(0, used[0], now))
            {
                return false;
            }
            match self.used.compare_exchange_weak(
                current,
                current + one(lane),
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
        self.last[lane].fetch_max(now, Ordering::Relaxed);
        self.occupancy[lane].inc();
        if lane == 1 {
            self.other_starts.fetch_add(1, Ordering::Relaxed);
            let gap = self.other_gap.load(Ordering::Relaxed);
            if gap > 0 {
                self.other_next.fetch_max(now + gap, Ordering::Relaxed);
            }
        }
        true
    }

    /// How long the paced other lane must wait from `now` for its next start (zero: it may
    /// start, or it is not paced).
    fn paced_wait(&self, now: u64) -> Duration {
        if self.other_gap.load(Ordering::Relaxed) == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.other_next.load(Ordering::Relaxed).saturating_sub(now))
    }

    /// Waits for a slot in `lane`, first come first served within the lane. A free slot is
    /// taken with one compare-and-swap when nobody waits in the lane; only a request that
    /// must wait touches the notifier.
    pub async fn acquire(self: &Arc<Self>, lane: Lane) -> LaneSlot {
        let index = lane.index();
        let slot = || LaneSlot {
            lanes: self.clone(),
            lane: index,
        };
        // Not past the lane's waiters: a slot that comes back is theirs.
        if self.waiting[index].load(Ordering::SeqCst) == 0 && self.try_take(index) {
            return slot();
        }
        self.waiting[index].fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(self, index);
        loop {
            let freed = self.freed[index].notified();
            let mut freed = std::pin::pin!(freed);
            // Registered before looking, so a slot given back in between is not missed.
            freed.as_mut().enable();
            if self.try_take(index) {
                return slot();
            }
            // A borrow may also become possible when the other lane's work lingers out, and
            // a paced start when its time comes.
            let paced = self.paced_wait(self.now());
            let wait = if index == 1 && !paced.is_zero() {
                paced.min(LINGER)
            } else {
                LINGER
            };
            let _ = tokio::time::timeout(wait, freed).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prometheus::Opts;

    use super::*;

    fn lanes(total: usize, share: f64) -> Arc<Lanes> {
        let gauge = IntGaugeVec::new(Opts::new("g", "g"), &["lane"]).unwrap();
        Lanes::new(total, share, &gauge, IntGauge::new("p", "p").unwrap())
    }

    async fn blocked(lanes: &Arc<Lanes>, lane: Lane) -> bool {
        tokio::time::timeout(Duration::from_millis(50), lanes.acquire(lane))
            .await
            .is_err()
    }

    #[tokio::test]
    async fn an_idle_lane_is_lent_and_comes_back_as_requests_finish() {
        let l = lanes(10, 0.8);
        assert_eq!(l.own, [8, 2]);
        // No fresh work: a replay takes all ten.
        let mut replay: Vec<_> = Vec::new();
        for _ in 0..10 {
            replay.push(l.acquire(Lane::Other).await);
        }
        // Fresh work arrives: it waits for slots to come back, and the replay takes none
        // beyond its own two meanwhile.
        let fresh = tokio::spawn({
            let l = l.clone();
            async move {
                let mut slots = Vec::new();
                for _ in 0..8 {
                    slots.push(l.acquire(Lane::First).await);
                }
                slots
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        replay.truncate(2);
        let fresh = fresh.await.unwrap();
        assert_eq!(fresh.len(), 8);
        assert!(blocked(&l, Lane::Other).await);
        assert!(blocked(&l, Lane::First).await);
    }

    #[tokio::test]
    async fn first_attempts_do_not_starve_the_other_lane_either() {
        let l = lanes(10, 0.8);
        let mut fresh = Vec::new();
        for _ in 0..10 {
            fresh.push(l.acquire(Lane::First).await);
        }
        let retry = tokio::spawn({
            let l = l.clone();
            async move { l.acquire(Lane::Other).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        // A retry waits: the next slot that comes back is its, not a fresh one's.
        fresh.pop();
        let _retry = retry.await.unwrap();
        assert!(blocked(&l, Lane::First).await);
        // With retries in flight, their part is kept for them: fresh ones stay within theirs.
        fresh.pop();
        assert!(blocked(&l, Lane::First).await);
        let _second = l.acquire(Lane::Other).await;
    }

    #[test]
    fn fresh_queueing_is_the_age_beyond_the_least_of_the_window() {
        let mut q = FreshQueueing::default();
        assert_eq!(q.tick(i64::MAX), Duration::ZERO, "no fresh event");
        // A clock offset of 5 s between ingest and the dispatcher is the base, not queueing.
        assert_eq!(q.tick(5_004), Duration::ZERO);
        assert_eq!(q.tick(5_006), Duration::from_millis(2));
        // One late tick counts: the p99 is what first attempts are promised.
        assert_eq!(q.tick(5_090), Duration::from_millis(86));
        assert_eq!(q.tick(i64::MAX), Duration::ZERO, "no fresh event");
        assert_eq!(q.tick(5_004), Duration::ZERO);
        // The least age leaves the window after BASE_WINDOW.
        for _ in 0..BASE_TICKS {
            q.tick(5_020);
        }
        assert_eq!(q.tick(5_035), Duration::from_millis(15));
        assert_eq!(q.tick(5_010), Duration::ZERO, "a new least is the base");
    }

    #[test]
    fn many_threads_never_take_more_than_the_capacity_and_every_waiter_wakes() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            let l = lanes(8, 0.75);
            let now = Arc::new(AtomicUsize::new(0));
            let most = Arc::new(AtomicUsize::new(0));
            let tasks: Vec<_> = (0..64)
                .map(|i| {
                    let (l, now, most) = (l.clone(), now.clone(), most.clone());
                    tokio::spawn(async move {
                        let lane = if i % 4 == 0 { Lane::Other } else { Lane::First };
                        for _ in 0..200 {
                            let slot = l.acquire(lane).await;
                            most.fetch_max(
                                now.fetch_add(1, Ordering::SeqCst) + 1,
                                Ordering::SeqCst,
                            );
                            tokio::task::yield_now().await;
                            now.fetch_sub(1, Ordering::SeqCst);
                            drop(slot);
                        }
                    })
                })
                .collect();
            let all = futures_util::future::join_all(tasks);
            // A lost wake-up would leave a task waiting for ever.
            let done = tokio::time::timeout(Duration::from_secs(60), all).await;
            assert!(done.is_ok_and(|all| all.iter().all(Result::is_ok)));
            assert!(most.load(Ordering::SeqCst) <= 8);
            assert_eq!(l.used.load(Ordering::SeqCst), 0);
        });
    }

    #[tokio::test]
    async fn waiters_in_a_lane_are_served_in_turn() {
        let l = lanes(2, 0.5);
        let mut held = vec![l.acquire(Lane::First).await, l.acquire(Lane::First).await];
        let (tx, mut order) = tokio::sync::mpsc::unbounded_channel();
        for name in ["first", "second", "third"] {
            let (l, tx) = (l.clone(), tx.clone());
            tokio::spawn(async move {
                let slot = l.acquire(Lane::First).await;
                tx.send(name).unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
                drop(slot);
            });
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        held.clear();
        assert_eq!(order.recv().await, Some("first"));
        assert_eq!(order.recv().await, Some("second"));
        assert_eq!(order.recv().await, Some("third"));
    }

    #[tokio::test]
    async fn a_saturated_tick_paces_the_other_lane_while_first_attempts_have_work() {
        let l = lanes(4, 0.5);
        let pace = |l: &Lanes| l.pace_gauge.get();
        // No fresh work: nothing to protect, whatever the signal.
        l.adapt(true, 200.0, false);
        assert_eq!(pace(&l), 0);
        let _fresh = l.acquire(Lane::First).await;
        // Saturated, with nothing in the other lane to slow down: not paced.
        l.adapt(true, 0.0, true);
        assert_eq!(pace(&l), 0);
        // Saturated while the lane starts 200 a second: half of that.
        l.adapt(true, 200.0, true);
        assert_eq!(pace(&l), 100);
        drop(l.acquire(Lane::Other).await);
        // The next start waits for its turn, 10 ms later, although its slot is free.
        let asked = Instant::now();
        drop(l.acquire(Lane::Other).await);
        assert!(
            asked.elapsed() >= Duration::from_millis(9),
            "{:?}",
            asked.elapsed()
        );
        // Saturated again: halved, and never below the least pace.
        l.adapt(true, 100.0, true);
        assert_eq!(pace(&l), 50);
        for _ in 0..10 {
            l.adapt(true, 100.0, true);
        }
        assert_eq!(pace(&l), 20, "MIN_PACE");
        // Ticks on time while the lane uses its pace: a little faster each (0.5 % and 1/s).
        l.adapt(false, 20.0, true);
        assert_eq!(pace(&l), 21);
        for _ in 0..100 {
            l.adapt(false, 1_000.0, true);
        }
        assert_eq!(pace(&l), 164);
        // A pace the lane does not use (a slow endpoint, no backlog) is neither raised nor
        // lowered; raised again, at most to twice what it starts, once the lane uses it.
        l.adapt(false, 50.0, true);
        assert_eq!(pace(&l), 164);
        l.adapt(false, 82.5, true);
        assert_eq!(pace(&l), 165);
        // Fresh work stops: not paced.
        l.adapt(false, 10.0, false);
        assert_eq!(pace(&l), 0);
        assert_eq!(l.paced_wait(l.now()), Duration::ZERO);
    }

    #[tokio::test]
    async fn without_first_attempts_the_other_lane_borrows_everything() {
        let l = lanes(4, 0.5);
        let mut replay = Vec::new();
        for _ in 0..4 {
            replay.push(l.acquire(Lane::Other).await);
        }
        assert!(blocked(&l, Lane::Other).await);
    }

    #[test]
    fn each_lane_keeps_at_least_one_slot() {
        assert_eq!(lanes(4, 1.0).own, [3, 1]);
        assert_eq!(lanes(4, 0.0).own, [1, 3]);
        assert_eq!(lanes(1, 0.8).own, [1, 0]);
    }
}
