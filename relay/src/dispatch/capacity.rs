//! The dispatcher's delivery capacity (`dispatch.max_inflight` requests at once) in two lanes:
//! first attempts of fresh events (from `ingress`), and everything that comes back through
//! `redeliver` (retries, replays, redrives, test pings).
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
//! Slots alone do not keep a replay from crowding fresh events out when the dispatcher is short
//! of CPU rather than of slots: requests to a fast endpoint give their slots back at once, and
//! a replay of 10,000 events to one took 70 % of the deliveries while fresh events' median
//! latency went from 10 ms to 200–330 ms in its queue for the processor. So while first
//! attempts have work, the other lane is a scavenger: it holds at most a **limit** of slots
//! (from one to its own part) that [`Lanes::regulate`] halves after every tick on which the
//! dispatcher's runtime answered late (by more than [`LAG_TARGET`]: it is saturated), or on
//! which a fresh event arrived more than [`QUEUE_TARGET`] later after its acceptance than the
//! quickest of the last minute (the broker or the machine is saturated, which the dispatcher's
//! own runtime may not feel), and raises by one after each other tick. Background work so
//! takes what the processor has to spare and gives it back as soon as fresh work would wait
//! for it.
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

/// How long the least age of fresh events is remembered as the path's own delay.
pub const BASE_WINDOW: Duration = Duration::from_secs(60);
#[allow(clippy::cast_possible_truncation)]
const BASE_TICKS: usize = (BASE_WINDOW.as_millis() / TICK.as_millis()) as usize;

/// How much longer than usual fresh events take from acceptance to the dispatcher: the
/// greatest age of a tick less the least age of the last [`BASE_WINDOW`].
#[derive(Debug, Default)]
struct FreshQueueing {
    least: std::collections::VecDeque<i64>,
}

impl FreshQueueing {
    /// One tick's least and greatest ages (`i64::MAX`, `i64::MIN`: no fresh event).
    fn tick(&mut self, least: i64, most: i64) -> Duration {
        if self.least.len() == BASE_TICKS {
            self.least.pop_front();
        }
        self.least.push_back(least);
        let base = self.least.iter().copied().min().unwrap_or(i64::MAX);
        Duration::from_millis(u64::try_from(most.saturating_sub(base)).unwrap_or(0))
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
    /// The other lane's part while first attempts have work, from 1 to `own[1]`: lowered
    /// while the runtime is saturated ([`Lanes::regulate`]).
    other_limit: AtomicU64,
    used: AtomicU64,
    waiting: [AtomicUsize; 2],
    /// When each lane last took a slot: nanoseconds after `epoch`, plus one (0: never).
    last: [AtomicU64; 2],
    epoch: Instant,
    /// Per lane: a slot came back (one waiter woken, the oldest).
    freed: [Notify; 2],
    occupancy: [IntGauge; 2],
    limit_gauge: IntGauge,
    /// The least and the greatest age (milliseconds from acceptance) of the fresh events
    /// received since the last tick; `i64::MAX` and `i64::MIN` when none came.
    fresh_age: [AtomicI64; 2],
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
    /// kept for first attempts; `occupancy` gets each lane's slots in use, `limit` the other
    /// lane's part while first attempts have work.
    pub fn new(
        total: usize,
        first_share: f64,
        occupancy: &IntGaugeVec,
        limit: IntGauge,
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
        limit.set(i64::try_from(total - first).unwrap_or(i64::MAX));
        Arc::new(Self {
            total,
            own: [first, total - first],
            other_limit: AtomicU64::new(total - first),
            used: AtomicU64::new(0),
            waiting: [AtomicUsize::new(0), AtomicUsize::new(0)],
            last: [AtomicU64::new(0), AtomicU64::new(0)],
            epoch: Instant::now(),
            freed: [Notify::new(), Notify::new()],
            occupancy: [Lane::First, Lane::Other]
                .map(|lane| occupancy.with_label_values(&[lane.label()])),
            limit_gauge: limit,
            fresh_age: [AtomicI64::new(i64::MAX), AtomicI64::new(i64::MIN)],
        })
    }

    /// Each lane's part now: the other lane's is its regulated limit.
    fn part(&self, lane: usize) -> u64 {
        if lane == 1 {
            self.other_limit.load(Ordering::Relaxed)
        } else {
            self.own[0]
        }
    }

    /// Adapts the other lane's limit after a tick: halved when fresh work was kept waiting
    /// (`saturated`), one more otherwise, within 1 and its own part.
    fn adapt(&self, saturated: bool) {
        let limit = self.other_limit.load(Ordering::Relaxed);
        let next = if saturated {
            (limit / 2).max(1)
        } else {
            limit + 1
        }
        .min(self.own[1]);
        if next != limit {
            self.other_limit.store(next, Ordering::Relaxed);
            self.limit_gauge
                .set(i64::try_from(next).unwrap_or(i64::MAX));
            if next > limit && self.waiting[1].load(Ordering::SeqCst) > 0 {
                self.freed[1].notify_one();
            }
        }
    }

    /// A fresh event `age_ms` after its acceptance reached the dispatcher.
    pub fn observe_fresh(&self, age_ms: i64) {
        self.fresh_age[0].fetch_min(age_ms, Ordering::Relaxed);
        self.fresh_age[1].fetch_max(age_ms, Ordering::Relaxed);
    }

    /// Every [`TICK`] until `shutdown`, adapts the other lane's limit: fresh work waits when
    /// the runtime woke this task more than [`LAG_TARGET`] late, or a fresh event took more
    /// than [`QUEUE_TARGET`] longer than the least of the last [`BASE_WINDOW`] from acceptance
    /// to the dispatcher (a saturated broker or machine delays fresh events without making
    /// this runtime late). The least age
    /// is the path's own delay (and any clock offset between ingest and the dispatcher).
    pub async fn regulate(self: Arc<Self>, mut shutdown: relay_shared::shutdown::Shutdown) {
        let mut queueing = FreshQueueing::default();
        loop {
            let asleep = Instant::now();
            tokio::select! {
                () = tokio::time::sleep(TICK) => {}
                () = shutdown.wait() => return,
            }
            let late = asleep.elapsed().saturating_sub(TICK);
            let least = self.fresh_age[0].swap(i64::MAX, Ordering::Relaxed);
            let most = self.fresh_age[1].swap(i64::MIN, Ordering::Relaxed);
            let queued = queueing.tick(least, most);
            self.adapt(late > LAG_TARGET || queued > QUEUE_TARGET);
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
                || (used[lane] >= self.part(lane) && self.busy(1 - lane, used[1 - lane], now))
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
        true
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
            // A borrow may also become possible when the other lane's work lingers out.
            let _ = tokio::time::timeout(LINGER, freed).await;
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
        Lanes::new(total, share, &gauge, IntGauge::new("l", "l").unwrap())
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
        assert_eq!(q.tick(i64::MAX, i64::MIN), Duration::ZERO, "no fresh event");
        // A clock offset of 5 s between ingest and the dispatcher is the base, not queueing.
        assert_eq!(q.tick(5_004, 5_006), Duration::from_millis(2));
        assert_eq!(q.tick(5_030, 5_090), Duration::from_millis(86));
        assert_eq!(q.tick(i64::MAX, i64::MIN), Duration::ZERO);
        // The least age leaves the window after BASE_WINDOW.
        for _ in 0..BASE_TICKS {
            q.tick(5_020, 5_020);
        }
        assert_eq!(q.tick(5_020, 5_035), Duration::from_millis(15));
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
    async fn a_saturated_runtime_shrinks_the_other_lane_while_first_attempts_have_work() {
        let l = lanes(10, 0.5);
        let limit = |l: &Lanes| l.other_limit.load(Ordering::Relaxed);
        let _fresh = l.acquire(Lane::First).await;
        // Three late ticks: 5 → 2 → 1, and never below one.
        for _ in 0..3 {
            l.adapt(true);
        }
        assert_eq!(limit(&l), 1);
        let _replayed = l.acquire(Lane::Other).await;
        assert!(blocked(&l, Lane::Other).await);
        // Ticks on time: one more slot each, up to the lane's own part.
        l.adapt(false);
        let _second = l.acquire(Lane::Other).await;
        assert!(blocked(&l, Lane::Other).await);
        for _ in 0..10 {
            l.adapt(false);
        }
        assert_eq!(limit(&l), 5);
    }

    #[tokio::test]
    async fn without_first_attempts_the_other_lane_borrows_everything_whatever_its_limit() {
        let l = lanes(4, 0.5);
        l.adapt(true);
        l.adapt(true);
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
