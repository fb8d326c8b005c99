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

use std::{
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use prometheus::IntGaugeVec;
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

#[derive(Debug, Default)]
struct State {
    used: [usize; 2],
    waiting: [usize; 2],
    /// When each lane last took a slot.
    last: [Option<Instant>; 2],
}

impl State {
    fn busy(&self, lane: usize, now: Instant) -> bool {
        self.waiting[lane] > 0
            || self.used[lane] > 0
            || self.last[lane].is_some_and(|at| now.saturating_duration_since(at) < LINGER)
    }
}

/// The two lanes of one dispatcher.
#[derive(Debug)]
pub struct Lanes {
    total: usize,
    /// Each lane's own part.
    own: [usize; 2],
    state: Mutex<State>,
    freed: Notify,
    occupancy: IntGaugeVec,
}

/// A slot in a lane, given back when dropped.
#[derive(Debug)]
pub struct LaneSlot {
    lanes: Arc<Lanes>,
    lane: Lane,
}

impl Drop for LaneSlot {
    fn drop(&mut self) {
        {
            let mut state = self.lanes.state();
            state.used[self.lane.index()] -= 1;
        }
        self.lanes
            .occupancy
            .with_label_values(&[self.lane.label()])
            .dec();
        self.lanes.freed.notify_waiters();
    }
}

/// Counts a waiting request for as long as it waits (also when the wait is cancelled).
struct Waiting<'a>(&'a Lanes, usize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.state().waiting[self.1] -= 1;
    }
}

impl Lanes {
    /// `total` slots, `first_share` of them (rounded, at least one each when `total` allows)
    /// kept for first attempts; `occupancy` gets each lane's slots in use.
    pub fn new(total: usize, first_share: f64, occupancy: IntGaugeVec) -> Arc<Self> {
        let total = total.max(1);
        // A share in [0, 1] of at most a few thousand slots.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let first = ((total as f64 * first_share).round() as usize).min(total);
        let first = if total >= 2 {
            first.clamp(1, total - 1)
        } else {
            first
        };
        Arc::new(Self {
            total,
            own: [first, total - first],
            state: Mutex::new(State::default()),
            freed: Notify::new(),
            occupancy,
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `lane` may take a slot now: one is free, and it is within its own part or the
    /// other lane has no work.
    fn may_take(&self, state: &State, lane: usize, now: Instant) -> bool {
        let used: usize = state.used.iter().sum();
        used < self.total && (state.used[lane] < self.own[lane] || !state.busy(1 - lane, now))
    }

    /// Waits for a slot in `lane`.
    pub async fn acquire(self: &Arc<Self>, lane: Lane) -> LaneSlot {
        let index = lane.index();
        let mut waiting = None;
        loop {
            let freed = self.freed.notified();
            let mut freed = std::pin::pin!(freed);
            // Registered before looking, so a slot given back in between is not missed.
            freed.as_mut().enable();
            {
                let mut state = self.state();
                let now = Instant::now();
                if self.may_take(&state, index, now) {
                    state.used[index] += 1;
                    state.last[index] = Some(now);
                    drop(state);
                    drop(waiting);
                    self.occupancy.with_label_values(&[lane.label()]).inc();
                    return LaneSlot {
                        lanes: self.clone(),
                        lane,
                    };
                }
                if waiting.is_none() {
                    state.waiting[index] += 1;
                    waiting = Some(Waiting(self, index));
                    // Somebody waits here now: a borrower in the other lane may be blocked
                    // while this one could go; look again at once.
                    continue;
                }
            }
            freed.await;
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
        Lanes::new(total, share, gauge)
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
    fn each_lane_keeps_at_least_one_slot() {
        assert_eq!(lanes(4, 1.0).own, [3, 1]);
        assert_eq!(lanes(4, 0.0).own, [1, 3]);
        assert_eq!(lanes(1, 0.8).own, [1, 0]);
    }
}
