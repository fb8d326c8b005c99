//! The retry schedule: after a failed attempt, which delay tier the next one waits in.
//!
//! Delays live in per-tier queues (one TTL per queue), so the schedule costs no broker plugin.
//! Jitter is a per-message TTL of up to `retry_jitter` × the tier's delay *shorter* than the
//! delay, never shorter than the endpoint's `Retry-After`: RabbitMQ applies the lower of the
//! queue's TTL and the message's, so jitter on top of the delay would never apply. Since a
//! queue expires messages from its head, a message can wait behind another's longer TTL, so
//! jitter spreads failures that were spread a little, not one burst (which comes back as the
//! burst it was, one delay later): the breaker and the rate limits are what shield an
//! endpoint from it. Never longer than the tier's delay either way.

use std::time::Duration;

/// The schedule of one dispatcher.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    schedule: Vec<Duration>,
    jitter: f64,
    max_retry_after: Duration,
}

/// Where a failed delivery goes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    /// Wait in the tier of this delay, then make attempt number `attempt`.
    Retry {
        /// The tier (one of the schedule's delays).
        tier: Duration,
        /// The number of the next attempt.
        attempt: u32,
    },
    /// Attempts exhausted.
    Dead,
}

impl RetryPolicy {
    /// A policy with `schedule` (delays after the first try), jitter fraction and the
    /// longest `Retry-After` honoured.
    pub fn new(schedule: Vec<Duration>, jitter: f64, max_retry_after: Duration) -> Self {
        Self {
            schedule,
            jitter,
            max_retry_after,
        }
    }

    /// Every distinct tier delay, for declaring the tier queues.
    pub fn tiers(&self) -> Vec<Duration> {
        let mut tiers = self.schedule.clone();
        tiers.sort();
        tiers.dedup();
        tiers
    }

    /// The first tier, where deferred deliveries (cap full, circuit open) wait.
    pub fn defer_tier(&self) -> Option<Duration> {
        self.schedule.first().copied()
    }

    /// After attempt number `attempt` (1-based) failed, with the endpoint's `Retry-After`
    /// in seconds if it sent one on a 429/502/503/504.
    pub fn after_failure(&self, attempt: u32, retry_after: Option<u64>) -> NextStep {
        let Some(&scheduled) = self.schedule.get(attempt.saturating_sub(1) as usize) else {
            return NextStep::Dead;
        };
        let wanted = self.asked(retry_after);
        // Honour Retry-After by waiting in the shortest tier that is at least as long (never
        // shorter than the schedule asks); beyond the largest tier, the largest.
        let tier = if wanted > scheduled {
            let tiers = self.tiers();
            tiers
                .iter()
                .copied()
                .find(|t| *t >= wanted)
                .or_else(|| tiers.last().copied())
                .unwrap_or(scheduled)
        } else {
            scheduled
        };
        NextStep::Retry {
            tier,
            attempt: attempt + 1,
        }
    }

    /// The wait an endpoint's `Retry-After` (seconds) asks for, within `max_retry_after`.
    pub fn asked(&self, retry_after: Option<u64>) -> Duration {
        retry_after
            .map(|s| Duration::from_secs(s).min(self.max_retry_after))
            .unwrap_or_default()
    }

    /// The per-message TTL for a wait in `tier`: the delay less random jitter, but not less
    /// than `at_least` (what the endpoint asked for, see [`RetryPolicy::asked`]).
    pub fn ttl_with_jitter(&self, tier: Duration, at_least: Duration) -> Duration {
        let unit = f64::from(u32::from_le_bytes(relay_shared::ids::random_bytes::<4>()))
            / f64::from(u32::MAX);
        tier.saturating_sub(tier.mul_f64(self.jitter * unit))
            .max(at_least.min(tier))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn policy() -> RetryPolicy {
        RetryPolicy::new(
            vec![secs(5), secs(300), secs(1800), secs(7200)],
            0.1,
            secs(3600),
        )
    }

    #[test]
    fn each_failure_moves_one_step_down_the_schedule_then_dead() {
        let p = policy();
        assert_eq!(
            p.after_failure(1, None),
            NextStep::Retry {
                tier: secs(5),
                attempt: 2
            }
        );
        assert_eq!(
            p.after_failure(2, None),
            NextStep::Retry {
                tier: secs(300),
                attempt: 3
            }
        );
        assert_eq!(
            p.after_failure(4, None),
            NextStep::Retry {
                tier: secs(7200),
                attempt: 5
            }
        );
        assert_eq!(p.after_failure(5, None), NextStep::Dead);
    }

    #[test]
    fn retry_after_picks_a_tier_at_least_that_long_within_bounds() {
        let p = policy();
        assert_eq!(
            p.after_failure(1, Some(60)),
            NextStep::Retry {
                tier: secs(300),
                attempt: 2
            }
        );
        assert_eq!(
            p.after_failure(1, Some(2)),
            NextStep::Retry {
                tier: secs(5),
                attempt: 2
            }
        );
        // Beyond max_retry_after (1 h) the request is bounded: the 2 h tier covers 1 h.
        assert_eq!(
            p.after_failure(1, Some(86_400)),
            NextStep::Retry {
                tier: secs(7200),
                attempt: 2
            }
        );
    }

    #[test]
    fn jitter_shortens_within_its_fraction_and_never_below_retry_after() {
        let p = policy();
        let ttls: Vec<Duration> = (0..1000)
            .map(|_| p.ttl_with_jitter(secs(100), Duration::ZERO))
            .collect();
        assert!(ttls.iter().all(|ttl| *ttl >= secs(90) && *ttl <= secs(100)));
        // Really jittered: not all the same (1000 draws of a 10 s range).
        assert!(
            ttls.iter()
                .max()
                .unwrap()
                .saturating_sub(*ttls.iter().min().unwrap())
                > secs(5)
        );
        // Retry-After: 99 s in the 100 s tier waits at least 99 s.
        let asked = p.asked(Some(99));
        assert!((0..1000).all(|_| p.ttl_with_jitter(secs(100), asked) >= secs(99)));
        // Never beyond the tier (the queue's own TTL), and max_retry_after bounds what is asked.
        assert_eq!(p.ttl_with_jitter(secs(5), p.asked(Some(60))), secs(5));
        assert_eq!(p.asked(Some(86_400)), secs(3600));
        assert_eq!(p.asked(None), Duration::ZERO);
    }

    #[test]
    fn an_empty_schedule_means_one_attempt() {
        let p = RetryPolicy::new(vec![], 0.0, secs(1));
        assert_eq!(p.after_failure(1, None), NextStep::Dead);
        assert_eq!(p.defer_tier(), None);
    }
}
