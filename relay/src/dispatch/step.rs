//! The decision after a delivery was tried: a pure function from what happened (admission
//! refused it, or the request's result), how many attempts were made and the retry policy, to
//! the one next step. No I/O, no clock: the worker executes the step, and the table below is
//! the whole delivery policy.
//!
//! | what happened | step |
//! | --- | --- |
//! | 2xx | done |
//! | 410 Gone | disable the subscription (if that fails: as any other failure) |
//! | 3xx (redirects are not followed), 4xx, 5xx, timeout, connection or TLS failure | retry from the schedule's tier, or dead after the last attempt |
//! | 429 / 502 / 503 / 504 with `Retry-After` | retry from the shortest tier at least that long |
//! | destination refused (SSRF) | dead at once: it stays refused |
//! | circuit open; at the cap and failing, stalled or with a full queue | deferred to the first tier, not an attempt |
//! | its rate-limit slot is further away than the wait allowed in memory | deferred to the first tier, not an attempt |
//! | refused, but no tier is configured | sent anyway (there is nowhere to defer to) |

use std::time::Duration;

use super::{
    client::AttemptError,
    retry::{NextStep, RetryPolicy},
};

/// Why a delivery was not sent now (admission's answer, as a value; see
/// [`super::admission`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The subscription's circuit is open.
    CircuitOpen,
    /// At its in-flight cap, and its last attempt failed.
    Failing,
    /// At its in-flight cap, and it completed nothing within a bound derived from its own
    /// latency (a hanging endpoint).
    Stalled,
    /// At its in-flight cap, with its queue full.
    QueueFull,
    /// Its rate (limit, slow-down or `Retry-After`) has no slot within the wait allowed.
    RateLimited,
}

impl Refusal {
    /// The reason, as logged and counted in `relay_deliveries_deferred_total{reason}`.
    pub fn label(self) -> &'static str {
        match self {
            Self::CircuitOpen => "circuit_open",
            Self::Failing => "failing",
            Self::Stalled => "stalled",
            Self::QueueFull => "queue_full",
            Self::RateLimited => "rate_limited",
        }
    }
}

/// What an attempt's result says about the endpoint's capacity, for its pacing
/// ([`super::pacing`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// 2xx: the rate may recover.
    Succeeded,
    /// 429 or 503: slow down, and with `Retry-After` pause the whole subscription.
    SlowDown {
        /// `Retry-After`, when sent.
        retry_after: Option<Duration>,
    },
    /// Anything else says nothing about the rate.
    Neutral,
}

/// The pacing signal of an attempt's result.
pub fn signal(result: &Result<u16, AttemptError>) -> Signal {
    match result {
        Ok(_) => Signal::Succeeded,
        Err(error) if matches!(error.status(), Some(429 | 503)) => Signal::SlowDown {
            retry_after: error.retry_after().map(Duration::from_secs),
        },
        Err(_) => Signal::Neutral,
    }
}

/// What happened to one delivery.
#[derive(Debug, Clone, Copy)]
pub enum Tried<'a> {
    /// Admission refused it: no request was made.
    Refused(Refusal),
    /// A request was made (or refused at connect time): its result.
    Sent(&'a Result<u16, AttemptError>),
}

/// Why a delivery will not be attempted again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadReason {
    /// Every attempt of the schedule failed.
    Exhausted,
    /// The destination is not allowed, and will not be on a later try either.
    DestinationRefused,
    /// An `ordering: key` delivery still failing after holding its key for
    /// `dispatch.ordered_hold` (the key's next event goes now).
    HeldTooLong,
}

/// A failed attempt's next step, when it is not a 410 or the disable did not work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Wait in the tier of this delay, then try again.
    Retry {
        /// The tier.
        tier: Duration,
    },
    /// No more attempts.
    Dead(DeadReason),
}

/// The next step of one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Delivered.
    Done,
    /// Not attempted; handed to `tier` without counting an attempt.
    Defer {
        /// The tier (the schedule's first).
        tier: Duration,
        /// Why.
        reason: Refusal,
    },
    /// Admission refused it but there is no tier to defer to: make the request anyway.
    SendAnyway,
    /// The attempt failed.
    Failed(Failure),
    /// 410 Gone: disable the subscription; if that cannot be done, `otherwise`.
    Disable {
        /// The step when the subscription could not be disabled.
        otherwise: Failure,
    },
}

/// The next step after attempt number `attempt` (1-based; for a refusal, the number the
/// attempt would have had) was tried as `tried`.
pub fn decide(tried: Tried<'_>, attempt: u32, policy: &RetryPolicy) -> Step {
    let error = match tried {
        Tried::Refused(reason) => {
            return match policy.defer_tier() {
                Some(tier) => Step::Defer { tier, reason },
                None => Step::SendAnyway,
            };
        }
        Tried::Sent(Ok(_)) => return Step::Done,
        Tried::Sent(Err(error)) => error,
    };
    let failure = match error {
        AttemptError::Refused(_) => Failure::Dead(DeadReason::DestinationRefused),
        _ => match policy.after_failure(attempt, error.retry_after()) {
            NextStep::Retry { tier, .. } => Failure::Retry { tier },
            NextStep::Dead => Failure::Dead(DeadReason::Exhausted),
        },
    };
    if error.is_gone() {
        Step::Disable { otherwise: failure }
    } else {
        Step::Failed(failure)
    }
}

#[cfg(test)]
mod tests {
    use relay_shared::ssrf::SsrfError;

    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn policy() -> RetryPolicy {
        RetryPolicy::new(vec![secs(5), secs(300), secs(1800)], 0.1, secs(3600))
    }

    fn status(status: u16, retry_after: Option<u64>) -> Result<u16, AttemptError> {
        if (200..300).contains(&status) {
            return Ok(status);
        }
        Err(AttemptError::Status {
            status,
            body_excerpt: String::new(),
            retry_after,
        })
    }

    const RETRY_FIRST: Step = Step::Failed(Failure::Retry {
        tier: Duration::from_secs(5),
    });

    #[test]
    fn every_class_of_result_has_its_step() {
        let p = policy();
        let table: Vec<(&str, Result<u16, AttemptError>, u32, Step)> = vec![
            ("200", status(200, None), 1, Step::Done),
            ("204", status(204, None), 2, Step::Done),
            (
                "301: redirects are not followed",
                status(301, None),
                1,
                RETRY_FIRST,
            ),
            ("400", status(400, None), 1, RETRY_FIRST),
            ("408", status(408, None), 1, RETRY_FIRST),
            ("409", status(409, None), 1, RETRY_FIRST),
            (
                "410",
                status(410, None),
                1,
                Step::Disable {
                    otherwise: Failure::Retry { tier: secs(5) },
                },
            ),
            ("413", status(413, None), 1, RETRY_FIRST),
            ("429 without Retry-After", status(429, None), 1, RETRY_FIRST),
            (
                "429 with Retry-After: the shortest tier at least that long",
                status(429, Some(60)),
                1,
                Step::Failed(Failure::Retry { tier: secs(300) }),
            ),
            (
                "503 with a Retry-After shorter than the schedule",
                status(503, Some(1)),
                2,
                Step::Failed(Failure::Retry { tier: secs(300) }),
            ),
            ("404", status(404, None), 1, RETRY_FIRST),
            ("500", status(500, None), 1, RETRY_FIRST),
            (
                "502 second attempt",
                status(502, None),
                2,
                Step::Failed(Failure::Retry { tier: secs(300) }),
            ),
            (
                "timeout",
                Err(AttemptError::Timeout(secs(15))),
                1,
                RETRY_FIRST,
            ),
            (
                "connection refused",
                Err(AttemptError::Connect("connection refused".into())),
                1,
                RETRY_FIRST,
            ),
            (
                "TLS failure",
                Err(AttemptError::Connect("invalid peer certificate".into())),
                1,
                RETRY_FIRST,
            ),
            (
                "reset mid-response",
                Err(AttemptError::Request("connection reset".into())),
                1,
                RETRY_FIRST,
            ),
            (
                "SSRF refusal: dead at once",
                Err(AttemptError::Refused(SsrfError::HttpNotAllowed)),
                1,
                Step::Failed(Failure::Dead(DeadReason::DestinationRefused)),
            ),
            (
                "last attempt",
                status(500, None),
                4,
                Step::Failed(Failure::Dead(DeadReason::Exhausted)),
            ),
            (
                "410 on the last attempt",
                status(410, None),
                4,
                Step::Disable {
                    otherwise: Failure::Dead(DeadReason::Exhausted),
                },
            ),
        ];
        for (class, result, attempt, expected) in &table {
            assert_eq!(
                decide(Tried::Sent(result), *attempt, &p),
                *expected,
                "{class}"
            );
        }
    }

    #[test]
    fn refusals_are_deferred_to_the_first_tier_without_an_attempt() {
        let p = policy();
        for reason in [
            Refusal::CircuitOpen,
            Refusal::Failing,
            Refusal::Stalled,
            Refusal::QueueFull,
            Refusal::RateLimited,
        ] {
            assert_eq!(
                decide(Tried::Refused(reason), 3, &p),
                Step::Defer {
                    tier: secs(5),
                    reason
                },
                "{reason:?}"
            );
        }
    }

    #[test]
    fn only_429_and_503_ask_to_slow_down() {
        assert_eq!(signal(&status(200, None)), Signal::Succeeded);
        assert_eq!(
            signal(&status(429, Some(2))),
            Signal::SlowDown {
                retry_after: Some(secs(2))
            }
        );
        assert_eq!(
            signal(&status(503, None)),
            Signal::SlowDown { retry_after: None }
        );
        for other in [500, 502, 504, 404, 410] {
            assert_eq!(signal(&status(other, Some(2))), Signal::Neutral, "{other}");
        }
        assert_eq!(
            signal(&Err(AttemptError::Timeout(secs(15)))),
            Signal::Neutral
        );
    }

    #[test]
    fn with_no_tier_a_refusal_is_sent_and_a_failure_is_dead() {
        let p = RetryPolicy::new(vec![], 0.0, secs(1));
        assert_eq!(
            decide(Tried::Refused(Refusal::CircuitOpen), 1, &p),
            Step::SendAnyway
        );
        assert_eq!(
            decide(Tried::Sent(&status(500, None)), 1, &p),
            Step::Failed(Failure::Dead(DeadReason::Exhausted))
        );
    }
}
