//! How long the test process was kept from running: a ticker that sleeps a short period and
//! records by how much each wake-up came late.
//!
//! A test's receivers timestamp a request when their process runs. On a loaded 2-core box the
//! process is sometimes not scheduled (or its runtime is busy) for tens of milliseconds, and
//! every request arriving then is stamped late by as much, although the system under test sent
//! it in time. A test that bounds latencies seen by its receivers adds the stalls measured
//! within a delivery's window to that delivery's bound: the allowance is what this run's
//! machine imposed, zero on a quiet one.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::task::JoinHandle;

use crate::receiver::lock;

/// The ticker's period.
const PERIOD: Duration = Duration::from_millis(5);
/// Lateness below this is the timer's own granularity (tokio rounds a sleep up to the next
/// millisecond), not a stall.
const NOISE: Duration = Duration::from_millis(2);

/// Records stalls until dropped.
#[derive(Debug)]
pub struct Stalls {
    /// (wake-up time, lateness beyond the period) of every late wake-up, in time order.
    late: Arc<Mutex<Vec<(Instant, Duration)>>>,
    ticker: JoinHandle<()>,
}

impl Stalls {
    /// Starts the ticker on the current runtime.
    pub fn start() -> Self {
        let late = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&late);
        let ticker = tokio::spawn(async move {
            loop {
                let before = Instant::now();
                tokio::time::sleep(PERIOD).await;
                let now = Instant::now();
                let lateness = now.duration_since(before).saturating_sub(PERIOD);
                if lateness > NOISE {
                    lock(&record).push((now, lateness));
                }
            }
        });
        Self { late, ticker }
    }

    /// The lateness of the wake-ups from `from` to `to`, summed: how long the process was
    /// stalled in that window (a stall is counted in the window where it ends).
    pub fn within(&self, from: Instant, to: Instant) -> Duration {
        self.within_beyond(from, to, Duration::ZERO)
    }

    /// Like [`Stalls::within`], counting of each stall only what is beyond `absorbed`: for a
    /// system that makes up for a wake-up that late by itself (a pacer's start tolerance).
    pub fn within_beyond(&self, from: Instant, to: Instant, absorbed: Duration) -> Duration {
        let late = lock(&self.late);
        late.iter()
            .filter(|(at, _)| *at >= from && *at <= to + PERIOD)
            .map(|(_, lateness)| lateness.saturating_sub(absorbed))
            .sum()
    }

    /// Every stall so far, summed.
    pub fn total(&self) -> Duration {
        lock(&self.late).iter().map(|(_, lateness)| *lateness).sum()
    }

    /// The longest single stall so far.
    pub fn longest(&self) -> Duration {
        lock(&self.late)
            .iter()
            .map(|(_, lateness)| *lateness)
            .max()
            .unwrap_or_default()
    }
}

impl Drop for Stalls {
    fn drop(&mut self) {
        self.ticker.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn a_blocked_runtime_shows_as_a_stall_in_its_window_only() {
        let stalls = Stalls::start();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let before = Instant::now();
        // Blocks the only worker thread on purpose: the ticker cannot run for 100 ms.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(Duration::from_millis(100));
        tokio::time::sleep(Duration::from_millis(20)).await;
        let after = Instant::now();
        assert!(
            stalls.within(before, after) >= Duration::from_millis(90),
            "{:?}",
            stalls.within(before, after)
        );
        assert!(stalls.longest() >= Duration::from_millis(90));
        let later = Instant::now();
        tokio::time::sleep(Duration::from_millis(20)).await;
        // The stall ended before `later`: it is not counted in a window after it.
        assert!(stalls.within(later, Instant::now()) < Duration::from_millis(90));
    }
}
