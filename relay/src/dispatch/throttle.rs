//! One subscription's pace on one dispatcher, as a value: the rate limit, the adaptive
//! slow-down (AIMD) after 429/503, and a `Retry-After` pause. Pure: every method takes the
//! time, so the rules are tested as tables without a clock or a broker.
//!
//! - **The window** is what the limit promises: over any [`WINDOW`] the endpoint receives at
//!   most `rate × WINDOW` requests. A request holds one of the dispatcher's
//!   `⌊rate × WINDOW × share⌋` tokens (at least one) from its start until [`WINDOW`] after its
//!   answer. A request reaches the endpoint between the two, so every request the endpoint
//!   receives within a window `[t, t + WINDOW)` still holds its token at `t + WINDOW`: the
//!   tokens held at one moment, by all dispatchers together, bound every window, however late
//!   a request travels or a machine stalls.
//! - **Pacing** is GCRA (a token bucket of depth one, kept as the time the next request may
//!   start): each dispatcher sends at `rate × share`, where `share` is its part of the
//!   dispatchers alive ([`super::members`]), so the window's tokens are spread out evenly.
//!   A request reserves its start time; when that is further away than the wait allowed in
//!   memory, the delivery is deferred instead (it is not an attempt), to come back at the
//!   pace after the deliveries deferred before it ([`Throttle::comeback`]). The next start
//!   advances by exactly one interval from the reserved time, not from when the request
//!   really went out, so timer slack does not lower the rate.
//! - **Slow-down**: a 429 or 503 lowers the effective rate to `DECREASE ×` the lower of the
//!   current rate and the rate the endpoint accepted over the last second or two (a
//!   subscription without a limit slows down from what really got through); at most once per
//!   [`HOLDOFF`] (or per pause, once one lowered it: an unlimited subscription whose first
//!   refusal came before a rate could be told slows down on a later refusal of the same
//!   burst), so a burst of refusals counts as one signal. Successes then add back a constant step per
//!   second: [`RECOVERY`] × the rate of the *episode's first* decrease. An episode runs from a
//!   decrease while not slowed until the subscription is no longer slowed; further decreases
//!   within it (an endpoint refusing for a while, or again during recovery) lower the rate but
//!   keep its step. So one decrease recovers from half the rate back to all of it in 20 s, and
//!   from any depth the rate is back where the episode began (the rate it halved) within
//!   `1 / (RECOVERY × DECREASE)` = 40 s of successes at the slowed pace (plus a `Retry-After`
//!   pause, during which nothing is sent). A step in proportion to the decreased rate would
//!   shrink with every decrease (from the floor, minutes). The cost: an endpoint that takes far
//!   less than where the episode began is probed as fast, so it refuses again sooner (taking
//!   `c` req/s after an episode that began at `b`, about every `20 × c / b` seconds, at most
//!   once per [`HOLDOFF`]). Back at the configured rate the subscription is no longer slowed.
//!   Without a configured limit the
//!   probing goes on past the rate before the decrease until the traffic stays under half the
//!   slowed rate: going back to unlimited with a backlog would send all of it at once.
//! - **A changed rate** (limit changed, slow-down, recovery) rescales the requests already
//!   reserved: the next free start moves so that, from now on, the average is the new rate.
//! - **`Retry-After`** pauses the whole subscription until then, on every dispatcher (the
//!   dispatcher that was told tells the others over `relay.control`).

use std::time::{Duration, Instant};

use super::step::Signal;

/// Real starts may run this many intervals ahead of their pace (a late wake-up's slack).
const START_TOLERANCE: u32 = 2;

/// The window every limit is kept over (and a token is held after its request's answer).
pub const WINDOW: Duration = Duration::from_secs(10);

/// The effective rate after a slow-down is this fraction of the rate before it.
pub const DECREASE: f64 = 0.5;
/// Recovery: each second of successes adds this fraction of the rate of the slow-down
/// episode's first decrease.
pub const RECOVERY: f64 = 0.05;
/// The lowest effective rate a slow-down goes to, requests per second.
pub const FLOOR: f64 = 0.1;
/// At most one decrease per this long (refusals of requests already in flight are the same
/// signal).
pub const HOLDOFF: Duration = Duration::from_secs(1);

/// When a request may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Now.
    Now,
    /// At this time (reserved: wait for it, then send).
    At(Instant),
    /// Not within the wait allowed: defer the delivery.
    Later,
}

/// What the API shows about a subscription's pace (the dispatchers' view).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// Sending as fast as the configured limit allows (or unlimited).
    Active,
    /// Slowed down below its limit after 429/503, at this total rate.
    Throttled(f64),
    /// Paused by `Retry-After` until then.
    BackingOff(Instant),
}

/// One subscription's pace on this dispatcher.
#[derive(Debug, Clone)]
pub struct Throttle {
    /// The configured total rate (all dispatchers), requests per second.
    configured: Option<f64>,
    /// The slowed-down total rate, while below `configured`.
    slowed: Option<Slowed>,
    /// `Retry-After`: nothing starts before.
    paused_until: Option<Instant>,
    /// The earliest start of the next request (GCRA's theoretical arrival time).
    next: Option<Instant>,
    /// The requests it completed lately, to measure the real rate.
    metered: Metered,
    /// When the next request is due by the real starts (GCRA's theoretical arrival time,
    /// over the starts that really happened).
    last_start: Option<Instant>,
    /// Tokens held: requests started and not yet a [`WINDOW`] past their answer.
    held: usize,
    /// When a request last reserved its start or reported its result.
    touched: Instant,
    /// See [`Throttle::epoch`].
    epoch: u64,
    /// When a delivery last had to wait for its start or token, or was deferred.
    held_back: Option<Instant>,
    /// When the next delivery deferred for its rate should come back: one interval after
    /// the one deferred before it (see [`Throttle::comeback`]).
    comeback: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Slowed {
    rate: f64,
    /// The rate before the episode's first decrease: what recovery goes back to when
    /// unlimited.
    before: f64,
    /// Recovery per second of successes, the same for the whole episode.
    step: f64,
    at: Instant,
}

/// A subscription's requests completed in the current and the previous second: those that
/// asked for a pace (succeeded or refused with 429/503) and those the endpoint accepted. Kept
/// for every subscription by [`super::admission`] (under the lock it already takes per
/// request), so the first 429 of an unlimited one slows it down from what really got through.
#[derive(Debug, Clone, Copy)]
pub struct Metered {
    sent: Meter,
    accepted: Meter,
}

impl Metered {
    /// Nothing counted yet, at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            sent: Meter::new(now),
            accepted: Meter::new(now),
        }
    }

    /// Counts an attempt's signal.
    pub fn observe(&mut self, now: Instant, signal: Signal) {
        match signal {
            Signal::Succeeded => {
                self.sent.count(now);
                self.accepted.count(now);
            }
            Signal::SlowDown { .. } => self.sent.count(now),
            Signal::Neutral => {}
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Meter {
    start: Instant,
    current: u32,
    previous: u32,
    /// `previous` covers no whole second (just started, or after a gap).
    fresh: bool,
}

impl Meter {
    fn count(&mut self, now: Instant) {
        self.roll(now);
        self.current += 1;
    }

    fn roll(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.start);
        if elapsed >= Duration::from_secs(2) {
            *self = Self::new(now);
        } else if elapsed >= Duration::from_secs(1) {
            self.previous = self.current;
            self.current = 0;
            self.start += Duration::from_secs(1);
            self.fresh = false;
        }
    }

    fn new(now: Instant) -> Self {
        Self {
            start: now,
            current: 0,
            previous: 0,
            fresh: true,
        }
    }

    /// Requests per second over the last one to two seconds, however few; `None` until a
    /// whole second is covered.
    fn sparse_rate(&self, now: Instant) -> Option<f64> {
        let elapsed = now.saturating_duration_since(self.start).as_secs_f64();
        (!self.fresh).then(|| f64::from(self.current + self.previous) / (1.0 + elapsed))
    }

    /// Requests per second over the last one to two seconds; `None` with too few to tell.
    /// Counted over a whole second at least: a burst of a fraction of a second (the first
    /// requests, or the first after a pause) says how many got through, not that the endpoint
    /// accepts that many per second, and extrapolating it slowed down to more than the
    /// endpoint takes (refused again after the pause). Counts older than that are not
    /// averaged in: after a lull, they would make the rate look like a fraction of it.
    fn rate(&self, now: Instant) -> Option<f64> {
        let mut recent = *self;
        recent.roll(now);
        let sent = recent.current + recent.previous;
        if sent < 5 {
            return None;
        }
        let elapsed = now.saturating_duration_since(recent.start).as_secs_f64();
        let seconds = if recent.fresh {
            elapsed.max(1.0)
        } else {
            1.0 + elapsed
        };
        (sent > 0).then(|| f64::from(sent) / seconds)
    }
}

impl Throttle {
    /// A subscription limited to `configured` requests per second in total (`None`: unlimited),
    /// whose requests so far are `metered`.
    pub fn metered(configured: Option<f64>, now: Instant, metered: Metered) -> Self {
        Self {
            metered,
            ..Self::new(configured, now)
        }
    }

    /// Whether a limit is configured.
    pub fn limited(&self) -> bool {
        self.configured.is_some()
    }

    /// A subscription limited to `configured` requests per second in total (`None`: unlimited).
    pub fn new(configured: Option<f64>, now: Instant) -> Self {
        Self {
            configured,
            slowed: None,
            paused_until: None,
            next: None,
            metered: Metered::new(now),
            last_start: None,
            held: 0,
            touched: now,
            epoch: 0,
            held_back: None,
            comeback: None,
        }
    }

    /// A changed limit (from the directory).
    pub fn configure(&mut self, configured: Option<f64>, now: Instant) {
        if self.configured != configured {
            let old = self.rate();
            self.configured = configured;
            if let (Some(limit), Some(slowed)) = (configured, self.slowed)
                && slowed.rate >= limit
            {
                self.slowed = None;
            }
            self.rescale(old, now);
        }
    }

    /// After the rate changed from `old`. Up: the `k` starts already reserved ahead took
    /// `k / old` seconds; at the new rate they take `k / new`, and the next free start moves
    /// there, so the average from now on is the new rate. Down: the reservations are
    /// forgotten ([`Throttle::epoch`] moves), and the deliveries waiting for them reserve
    /// again at the new rate when they wake, so none goes out at the old pace.
    fn rescale(&mut self, old: Option<f64>, now: Instant) {
        match (old, self.rate()) {
            (Some(old), Some(new)) if new >= old => {
                if let Some(next) = self.next.filter(|next| *next > now) {
                    self.next = Some(now + next.duration_since(now).mul_f64(old / new));
                }
            }
            (_, Some(_)) => self.forget_reservations(),
            (_, None) => {}
        }
    }

    fn forget_reservations(&mut self) {
        self.next = None;
        self.comeback = None;
        self.epoch += 1;
    }

    /// Moves whenever the pace went down (a lower rate, a pause): a delivery that reserved
    /// its start under another epoch must reserve again before it goes.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    fn completed(&mut self, now: Instant) {
        self.metered.sent.count(now);
    }

    /// The total rate in force: the slowed-down one, else the configured one.
    pub fn rate(&self) -> Option<f64> {
        match (self.slowed, self.configured) {
            (Some(slowed), Some(limit)) => Some(slowed.rate.min(limit)),
            (Some(slowed), None) => Some(slowed.rate),
            (None, limit) => limit,
        }
    }

    /// Tokens a dispatcher taking `share` may hold: `⌊rate × WINDOW × share⌋`, at least
    /// one; `None` when unlimited.
    pub fn budget(&self, share: f64) -> Option<usize> {
        self.rate().map(|rate| {
            // At most 10,000 req/s × 10 s: far within usize and f64's exact integers.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let tokens = (rate * WINDOW.as_secs_f64() * share + 1e-9).floor() as usize;
            tokens.max(1)
        })
    }

    /// Takes a token for a request starting now, when one is free (always when unlimited:
    /// held tokens are still counted, should the subscription be slowed down).
    pub fn take(&mut self, share: f64) -> bool {
        if self.budget(share).is_some_and(|budget| self.held >= budget) {
            return false;
        }
        self.held += 1;
        true
    }

    /// A token comes back ([`WINDOW`] after its request's answer).
    pub fn give_back(&mut self) {
        self.held = self.held.saturating_sub(1);
    }

    /// Whether the tokens held are within the budget of a dispatcher taking `share`.
    pub fn within(&self, share: f64) -> bool {
        self.budget(share).is_none_or(|budget| self.held <= budget)
    }

    /// Reserves the start of one request on a dispatcher taking `share` (0 < share ≤ 1) of
    /// the total rate, waiting at most `max_wait`.
    pub fn reserve(&mut self, now: Instant, share: f64, max_wait: Duration) -> Slot {
        self.touched = now;
        // Unlimited: only a pause holds it back.
        let next = self.rate().and(self.next);
        let earliest = [self.paused_until, next]
            .into_iter()
            .flatten()
            .fold(now, Instant::max);
        if earliest.saturating_duration_since(now) > max_wait {
            return Slot::Later;
        }
        if let Some(rate) = self.rate() {
            self.next = Some(earliest + interval(rate, share));
        }
        if earliest > now {
            Slot::At(earliest)
        } else {
            Slot::Now
        }
    }

    /// How long a delivery deferred for its rate at `now` waits in the tier of `tier` (whose
    /// queue holds nothing longer): until the first start free after the ones reserved and
    /// the deliveries deferred before it, one interval each at this dispatcher's pace. So a
    /// backlog in the tier comes back at the rate, not all of it one tier later, when its
    /// subscription's starts would long have been free. Further away than the tier: the
    /// tier, taking no interval (it is spread when it is back).
    pub fn comeback(&mut self, now: Instant, share: f64, tier: Duration) -> Duration {
        let Some(rate) = self.rate() else {
            // Unlimited and paused: back when the pause ends.
            return self
                .paused_until
                .map_or(tier, |until| until.saturating_duration_since(now).min(tier));
        };
        let at = [self.paused_until, self.next, self.comeback]
            .into_iter()
            .flatten()
            .fold(now, Instant::max);
        let wait = at.duration_since(now);
        if wait >= tier {
            return tier;
        }
        self.comeback = Some(at + interval(rate, share));
        wait
    }

    /// A request is about to start at `now`: `Ok` (and counted) when the real starts keep
    /// the pace within [`START_TOLERANCE`] intervals, else the time to try again.
    /// Reservations keep the average; this keeps late wake-ups (a busy machine) from sending
    /// more than a few at once, without turning each wake-up's lateness into a lower rate.
    pub fn start(&mut self, now: Instant, share: f64) -> Result<(), Instant> {
        let Some(rate) = self.rate() else {
            return Ok(());
        };
        let interval = interval(rate, share);
        let tolerance = interval * START_TOLERANCE;
        let due = self.last_start.map_or(now, |due| due.max(now));
        if due > now + tolerance {
            return Err(due - tolerance);
        }
        self.last_start = Some(due + interval);
        Ok(())
    }

    /// The endpoint answered 429 or 503: lower the rate (once per holdoff) and, with
    /// `Retry-After`, pause until `now + retry_after`. Returns the total rate in force (`None`:
    /// unlimited) and the pause when they changed, for the other dispatchers.
    pub fn slow_down(
        &mut self,
        now: Instant,
        share: f64,
        retry_after: Option<Duration>,
    ) -> Option<(Option<f64>, Option<Instant>)> {
        self.touched = now;
        self.completed(now);
        // Refusals while paused, or within the holdoff, answer requests sent before the last
        // signal was acted on: they may lengthen the pause but do not lower the rate again.
        // Unless nothing lowered it yet: an unlimited subscription's first refusal can come
        // before enough answers to tell a rate (it only pauses), and the refusals of the rest
        // of that burst are then the first signal a rate can be measured from. Skipping them
        // left it unlimited, sending its backlog in a burst after every pause.
        let recent = self.slowed.is_some_and(|s| now < s.at + HOLDOFF)
            || (self.slowed.is_some() && self.paused_until.is_some_and(|p| now < p));
        let until = retry_after.map(|after| now + after);
        let paused = self.pause(until);
        if recent {
            return paused.map(|until| (self.rate(), Some(until)));
        }
        // What the endpoint really accepted (else, with too few to tell, what was sent), all
        // dispatchers together (this one's part of it, scaled): a burst that was mostly
        // refused slows down to what got through, not to half the burst.
        let measured = self
            .metered
            .accepted
            .rate(now)
            .or_else(|| self.metered.sent.rate(now))
            .map(|local| local / share.max(0.001));
        let before = match (self.rate(), measured) {
            (Some(rate), Some(measured)) => rate.min(measured),
            (Some(rate), None) => rate,
            (None, Some(measured)) => measured,
            // Unlimited and too few requests to tell a rate: nothing to slow down from (a
            // pause, if asked, still holds).
            (None, None) => return paused.map(|until| (None, Some(until))),
        };
        let old = self.rate();
        let rate = (before * DECREASE).max(FLOOR);
        // Still slowed: the same episode, whose start and step hold (a step taken from each
        // decreased rate would shrink with every decrease).
        let (before, step) = self.slowed.map_or((before, RECOVERY * rate), |episode| {
            (episode.before, episode.step)
        });
        self.slowed = Some(Slowed {
            rate,
            before,
            step,
            at: now,
        });
        self.rescale(old, now);
        Some((Some(rate), self.paused_until.filter(|p| *p > now)))
    }

    /// The recovery step of the slow-down episode under way, requests per second per second
    /// (for the other dispatchers, so that every copy recovers at the same pace).
    pub fn step(&self) -> Option<f64> {
        self.slowed.map(|slowed| slowed.step)
    }

    /// Another dispatcher slowed the subscription to `rate` (pausing it until `until`), its
    /// episode recovering by `step` (absent from an older dispatcher: this one's episode's,
    /// or a new episode's from `rate`).
    pub fn slowed_elsewhere(
        &mut self,
        now: Instant,
        rate: Option<f64>,
        until: Option<Instant>,
        step: Option<f64>,
    ) {
        self.pause(until);
        let Some(rate) = rate else {
            return;
        };
        let old = self.rate();
        if old.is_none_or(|current| rate < current) {
            let rate = rate.max(FLOOR);
            let (before, own_step) = self.slowed.map_or_else(
                || (old.unwrap_or(rate / DECREASE), RECOVERY * rate),
                |episode| (episode.before, episode.step),
            );
            self.slowed = Some(Slowed {
                rate,
                before: before.max(rate),
                step: step.unwrap_or(own_step),
                at: now,
            });
            self.rescale(old, now);
        }
    }

    /// Extends the pause to `until`; returns it when it moved.
    fn pause(&mut self, until: Option<Instant>) -> Option<Instant> {
        let until = until?;
        if self.paused_until.is_some_and(|p| p >= until) {
            return None;
        }
        self.paused_until = Some(until);
        self.forget_reservations();
        Some(until)
    }

    /// A request succeeded on a dispatcher taking `share`: additive recovery.
    pub fn succeeded(&mut self, now: Instant, share: f64) {
        self.touched = now;
        self.completed(now);
        self.metered.accepted.count(now);
        let old = self.rate();
        let backlog = self.held_back_within(now, WINDOW);
        let Some(slowed) = &mut self.slowed else {
            return;
        };
        // Successes arrive at `rate × share` per second here, so each adds a
        // `1 / (rate × share)` part of a second's step: every dispatcher's copy of the total
        // rate then recovers at the same pace.
        slowed.rate += slowed.step / (slowed.rate * share.max(0.001));
        let done = match self.configured {
            Some(limit) => slowed.rate >= limit,
            // Unlimited: keep probing upwards while the slowed rate is what holds the traffic
            // back (going back to unlimited with a backlog would send it all at once); end it
            // once the traffic, all dispatchers together, stays under half of it and nothing
            // was held back for a window (sparse traffic of a backlog deferred to a retry tier
            // is still a backlog). A meter that covers no whole second (just after a pause)
            // tells nothing.
            None => {
                let measured = self
                    .metered
                    .sent
                    .sparse_rate(now)
                    .map(|local| local / share.max(0.001));
                slowed.rate >= slowed.before
                    && measured.is_some_and(|m| m * 2.0 <= slowed.rate)
                    && !backlog
            }
        };
        if done {
            self.slowed = None;
        }
        self.rescale(old, now);
    }

    /// Whether nothing is left to remember at `now`: no token held, no pause, and no request
    /// for two windows (a limited subscription then starts afresh at its configured rate,
    /// which its empty windows allow; an unlimited one goes back to unlimited).
    pub fn forgettable(&self, now: Instant) -> bool {
        self.held == 0
            && self.paused_until.is_none_or(|until| until <= now)
            && now.saturating_duration_since(self.touched) >= WINDOW * 2
    }

    /// Whether an unlimited subscription has nothing left to pace at `now`: not slowed down,
    /// not paused, no token held.
    pub fn unpaced(&self, now: Instant) -> bool {
        self.configured.is_none()
            && self.slowed.is_none()
            && self.paused_until.is_none_or(|until| until <= now)
            && self.held == 0
    }

    /// A delivery had to wait for its start or token, or was deferred, at `now`.
    pub fn held_back(&mut self, now: Instant) {
        self.held_back = Some(now);
    }

    /// Whether a delivery was held back within `recent` before `now`.
    pub fn held_back_within(&self, now: Instant, recent: Duration) -> bool {
        self.held_back
            .is_some_and(|at| now.saturating_duration_since(at) <= recent)
    }

    /// Whether a `Retry-After` pause holds at `now`.
    pub fn paused(&self, now: Instant) -> bool {
        self.paused_until.is_some_and(|until| until > now)
    }

    /// The subscription's pace at `now`.
    pub fn pace(&self, now: Instant) -> Pace {
        match (self.paused_until, self.slowed) {
            (Some(until), _) if until > now => Pace::BackingOff(until),
            (_, Some(slowed)) => Pace::Throttled(slowed.rate),
            _ => Pace::Active,
        }
    }
}

/// The time between two starts on a dispatcher taking `share` of a total `rate` (at most an
/// hour, however low the rate).
fn interval(rate: f64, share: f64) -> Duration {
    let local = (rate * share).max(f64::MIN_POSITIVE);
    Duration::from_secs_f64((1.0 / local).min(3600.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    const WAIT: Duration = Duration::from_secs(5);

    /// Starts of `n` reservations made at `at`, as offsets from `t0` in ms.
    fn starts(t: &mut Throttle, t0: Instant, at: Instant, share: f64, n: usize) -> Vec<u128> {
        (0..n)
            .map(|_| match t.reserve(at, share, WAIT) {
                Slot::Now => at.duration_since(t0).as_millis(),
                Slot::At(start) => start.duration_since(t0).as_millis(),
                Slot::Later => u128::MAX,
            })
            .collect()
    }

    #[test]
    fn tokens_are_the_windows_share_and_at_least_one() {
        let t0 = Instant::now();
        let mut t = Throttle::new(Some(20.0), t0);
        // 200 per window, a third each: 66.
        assert_eq!(t.budget(1.0 / 3.0), Some(66));
        assert_eq!(t.budget(1.0), Some(200));
        let taken = (0..100).take_while(|_| t.take(1.0 / 3.0)).count();
        assert_eq!(taken, 66);
        t.give_back();
        assert!(t.take(1.0 / 3.0));
        assert!(!t.take(1.0 / 3.0));
        // A larger count (a newcomer): over the budget until tokens come back.
        assert!(t.within(1.0 / 3.0));
        assert!(!t.within(0.25));
        // 0.1 req/s is one request per window: one token per dispatcher at least.
        assert_eq!(Throttle::new(Some(0.1), t0).budget(1.0 / 3.0), Some(1));
        // Unlimited: always, still counted.
        let mut u = Throttle::new(None, t0);
        assert!((0..1000).all(|_| u.take(0.5)));
        assert_eq!(u.budget(0.5), None);
    }

    #[test]
    fn unlimited_always_goes_now() {
        let t0 = Instant::now();
        let mut t = Throttle::new(None, t0);
        assert!((0..1000).all(|_| t.reserve(t0, 1.0, WAIT) == Slot::Now));
        assert_eq!(t.pace(t0), Pace::Active);
    }

    #[test]
    fn a_share_of_the_rate_is_spaced_evenly_and_the_excess_is_deferred() {
        let t0 = Instant::now();
        // 30 req/s for all, a third here: one every 100 ms.
        let mut t = Throttle::new(Some(30.0), t0);
        assert_eq!(starts(&mut t, t0, t0, 1.0 / 3.0, 4), [0, 100, 200, 300]);
        // Up to the wait allowed (5 s) and no further: 51 reserved in all, then deferred.
        let reserved = (0..100)
            .take_while(|_| t.reserve(t0, 1.0 / 3.0, WAIT) != Slot::Later)
            .count();
        assert_eq!(reserved + 4, 51);
        // Idle time is not banked: after a pause the pace starts again from now.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(starts(&mut t, t0, later, 1.0 / 3.0, 2), [60_000, 60_100]);
    }

    #[test]
    fn deferred_deliveries_come_back_at_the_pace_after_the_reserved_ones() {
        let t0 = Instant::now();
        let tier = Duration::from_secs(5);
        // 20 req/s for all, half here: one every 100 ms; one second reserved ahead.
        let mut t = Throttle::new(Some(20.0), t0);
        assert_eq!(starts(&mut t, t0, t0, 0.5, 10).last(), Some(&900));
        // Deferred ones come back one interval apart from the first free start (1 s)...
        let back: Vec<u128> = (0..4)
            .map(|_| t.comeback(t0, 0.5, tier).as_millis())
            .collect();
        assert_eq!(back, [1000, 1100, 1200, 1300]);
        // ...up to the tier: 36 more fit within 5 s, the rest wait the whole tier and take
        // no interval, so the next deferred later still fills the gap they left.
        let spread = (0..100)
            .map(|_| t.comeback(t0, 0.5, tier))
            .take_while(|wait| *wait < tier)
            .count();
        assert_eq!(spread, 36);
        assert_eq!(t.comeback(t0, 0.5, tier), tier);
        assert_eq!(t.comeback(t0 + ms(500), 0.5, tier), ms(4500));
        // Nothing deferred for a while: back as soon as a start is free.
        assert_eq!(t.comeback(t0 + ms(60_000), 0.5, tier), Duration::ZERO);
        // Paused by Retry-After: not before the pause ends, limited or not.
        let mut u = Throttle::new(None, t0);
        assert_eq!(u.comeback(t0, 1.0, tier), tier);
        u.slow_down(t0, 1.0, Some(ms(2000)));
        assert_eq!(u.comeback(t0, 1.0, tier), ms(2000));
    }

    #[test]
    fn any_window_holds_at_most_its_share_plus_one() {
        let t0 = Instant::now();
        let mut t = Throttle::new(Some(50.0), t0);
        let mut all = Vec::new();
        // Requests arrive in bursts every 250 ms for 30 s.
        for step in 0..120 {
            let now = t0 + ms(step * 250);
            for _ in 0..20 {
                match t.reserve(now, 0.5, ms(1000)) {
                    Slot::Now => all.push(now),
                    Slot::At(start) => all.push(start),
                    Slot::Later => {}
                }
            }
        }
        all.sort();
        for (i, start) in all.iter().enumerate() {
            let in_window = all[i..]
                .iter()
                .take_while(|s| s.duration_since(*start) < Duration::from_secs(10))
                .count();
            assert!(
                in_window <= 251,
                "{in_window} in 10 s at a share of 25 req/s"
            );
        }
        // And the pace is kept: the last start is 30 s of 25 req/s in.
        assert!(all.len() >= 740, "{}", all.len());
    }

    #[test]
    fn a_changed_limit_applies_to_the_next_reservation() {
        let t0 = Instant::now();
        let mut t = Throttle::new(Some(10.0), t0);
        assert_eq!(starts(&mut t, t0, t0, 1.0, 2), [0, 100]);
        // The 200 ms reserved at 10 req/s take 20 ms at 100 req/s.
        t.configure(Some(100.0), t0);
        assert_eq!(starts(&mut t, t0, t0, 1.0, 3), [20, 30, 40]);
        // Down again: the reservations are forgotten; their deliveries reserve again.
        let epoch = t.epoch();
        t.configure(Some(10.0), t0);
        assert!(t.epoch() > epoch);
        assert_eq!(starts(&mut t, t0, t0, 1.0, 2), [0, 100]);
        t.configure(None, t0);
        assert_eq!(t.reserve(t0 + ms(300), 1.0, WAIT), Slot::Now);
    }

    #[test]
    fn an_unlimited_burst_refused_before_a_rate_shows_slows_down_within_its_pause() {
        let t0 = Instant::now();
        // Unlimited, nothing completed yet: the first refusal (Retry-After 2 s) only pauses.
        let mut t = Throttle::metered(None, t0, Metered::new(t0));
        let (rate, paused) = t.slow_down(t0, 1.0, Some(ms(2000))).unwrap();
        assert_eq!((rate, paused), (None, Some(t0 + ms(2000))));
        // The rest of the burst answers within the pause: accepted and refused, 30 in 1.2 s.
        // Once they tell a rate, one of them lowers it (once: the later ones are the same
        // signal, and successes then recover it), and the pause holds.
        let mut decreases = Vec::new();
        for i in 1..=30 {
            let at = t0 + ms(40 * i);
            if i % 3 == 0 {
                t.succeeded(at, 1.0);
            } else {
                let before = t.rate();
                t.slow_down(at, 1.0, Some(ms(2000)));
                if t.rate() != before {
                    decreases.push((i, t.rate()));
                }
            }
        }
        // At the fifth answer (160 ms in, too few accepted to tell: what was sent, counted
        // over a whole second, 5 req/s) the rate is halved from that.
        assert_eq!(decreases, [(4, Some(2.5))]);
        assert!(t.paused(t0 + ms(1900)));
    }

    #[test]
    fn a_refusal_halves_the_rate_once_per_holdoff_and_successes_bring_it_back() {
        let t0 = Instant::now();
        let mut t = Throttle::new(Some(40.0), t0);
        let (rate, paused) = t.slow_down(t0, 1.0, None).unwrap();
        assert_eq!((rate, paused), (Some(20.0), None));
        assert_eq!(t.pace(t0), Pace::Throttled(20.0));
        // More refusals of requests already in flight: the same signal.
        assert_eq!(t.slow_down(t0 + ms(500), 1.0, None), None);
        assert_eq!(t.rate(), Some(20.0));
        // After the holdoff, a new signal halves again.
        let mut again = t.clone();
        assert_eq!(
            again.slow_down(t0 + ms(1500), 1.0, None).unwrap().0,
            Some(10.0)
        );
        // Additive increase: RECOVERY × 20 = 1 req/s per second of successes, 20 → 40 in 20 s.
        let mut seconds = 0.0;
        while t.rate() != Some(40.0) {
            let rate = t.rate().unwrap();
            seconds += 1.0 / rate;
            t.succeeded(t0 + Duration::from_secs_f64(seconds), 1.0);
        }
        assert!((19.0..21.0).contains(&seconds), "{seconds}");
        assert_eq!(t.pace(t0 + ms(20_000)), Pace::Active);
    }

    /// Successes at the pace in force from `from` on a dispatcher taking `share` (each one
    /// interval of that dispatcher's part of the rate after the last), until the rate is
    /// `target` or more; returns how long they took.
    fn recover(t: &mut Throttle, from: Instant, share: f64, target: f64) -> f64 {
        let mut seconds = 0.0;
        while let Some(rate) = t.rate().filter(|rate| *rate < target) {
            seconds += 1.0 / (rate * share);
            t.succeeded(from + Duration::from_secs_f64(seconds), share);
            assert!(seconds < 3600.0, "stuck at {rate}");
        }
        seconds
    }

    /// `n` decreases, each 1.5 s (more than the holdoff) after the last, from `t0`, on a
    /// dispatcher taking `share`; returns when the last was.
    fn refused(t: &mut Throttle, t0: Instant, share: f64, n: u32) -> Instant {
        let mut at = t0;
        for i in 0..n {
            at = t0 + ms(1500) * i;
            assert!(
                t.slow_down(at, share, None).is_some(),
                "decrease {i} ignored"
            );
        }
        at
    }

    /// From any depth, back where the episode began within 40 s of successes.
    const BOUND: f64 = 1.0 / (RECOVERY * DECREASE);

    #[test]
    fn a_deep_decrease_recovers_within_the_bound() {
        // (configured, decreases, share, rate at the bottom, seconds back to the configured).
        let table = [
            (40.0, 4, 1.0, 2.5, 37.5),
            (40.0, 4, 1.0 / 3.0, 2.5, 37.5),
            (50.0, 4, 1.0, 3.125, 37.5),
            (1000.0, 4, 0.5, 62.5, 37.5),
            // Down to the floor: 50 / 2^12 is below 0.1 req/s.
            (50.0, 12, 1.0, FLOOR, 39.92),
        ];
        for (configured, n, share, bottom, expected) in table {
            let t0 = Instant::now();
            let mut t = Throttle::new(Some(configured), t0);
            let last = refused(&mut t, t0, share, n);
            assert_eq!(t.rate(), Some(bottom), "{configured} after {n}");
            // The step of the first decrease, to the configured rate's half.
            assert_eq!(t.step(), Some(RECOVERY * configured * DECREASE));
            let took = recover(&mut t, last, share, configured);
            assert!(
                took <= BOUND && (took - expected).abs() < 0.1,
                "{configured} after {n} decreases at a share of {share}: back in {took} s"
            );
            assert_eq!(t.pace(last + Duration::from_secs(41)), Pace::Active);
        }
    }

    #[test]
    fn one_decrease_recovers_from_half_to_all_in_20_s() {
        for (configured, share) in [(40.0, 1.0), (50.0, 1.0 / 3.0), (0.2, 1.0), (10_000.0, 0.5)] {
            let t0 = Instant::now();
            let mut t = Throttle::new(Some(configured), t0);
            refused(&mut t, t0, share, 1);
            assert_eq!(t.rate(), Some(configured * DECREASE));
            assert_eq!(t.step(), Some(RECOVERY * configured * DECREASE));
            let took = recover(&mut t, t0, share, configured);
            // Within one interval at the slowed pace (the last success crosses the limit).
            let interval = 1.0 / (configured * DECREASE * share);
            assert!(
                took >= 20.0 - 1e-6 && took < 20.0 + interval,
                "{configured} at a share of {share}: back in {took} s"
            );
            assert_eq!(t.step(), None, "still slowed at {configured}");
        }
    }

    #[test]
    fn a_decrease_during_recovery_keeps_the_episodes_step() {
        let t0 = Instant::now();
        let mut t = Throttle::new(Some(40.0), t0);
        refused(&mut t, t0, 1.0, 1);
        // 10 s of successes at 1 req/s per second: 20 → 30.
        let half_way = recover(&mut t, t0, 1.0, 30.0);
        assert!((10.0..10.1).contains(&half_way), "{half_way}");
        // Refused again: half of 30 or of what got through over the last second or two.
        let again = t0 + Duration::from_secs_f64(half_way);
        let (rate, _) = t.slow_down(again, 1.0, None).unwrap();
        let rate = rate.unwrap();
        assert!((14.0..=15.0).contains(&rate), "{rate}");
        // The episode's step (1 req/s per second), not 5 % of the decreased rate: about 25 s
        // back to 40, not 34 s.
        assert_eq!(t.step(), Some(1.0));
        let took = recover(&mut t, again, 1.0, 40.0);
        assert!((took - (40.0 - rate)).abs() < 0.1, "{took}");
        assert_eq!(t.pace(again + Duration::from_secs(26)), Pace::Active);
        // Over: the next decrease starts an episode with its own step (a lower limit since).
        let later = again + Duration::from_secs(60);
        t.configure(Some(20.0), later);
        refused(&mut t, later, 1.0, 1);
        assert_eq!((t.rate(), t.step()), (Some(10.0), Some(0.5)));
    }

    #[test]
    fn every_dispatchers_copy_recovers_at_the_same_pace() {
        // (the message carries the step, the other dispatcher was slowed from the first
        // decrease): told every step; an older dispatcher's message without it, after the
        // episode's first; a dispatcher that missed the first messages (it joined later).
        for (with_step, first_told) in [(true, 0), (false, 0), (true, 3)] {
            let t0 = Instant::now();
            let (mut here, mut there) =
                (Throttle::new(Some(40.0), t0), Throttle::new(Some(40.0), t0));
            let mut last = t0;
            for i in 0..4 {
                last = t0 + ms(1500) * i;
                let (rate, until) = here.slow_down(last, 0.5, None).unwrap();
                if i >= first_told {
                    let step = here.step().filter(|_| with_step);
                    there.slowed_elsewhere(last, rate, until, step);
                }
            }
            assert_eq!(there.rate(), here.rate());
            let took_here = recover(&mut here, last, 0.5, 40.0);
            let took_there = recover(&mut there, last, 0.5, 40.0);
            assert!(
                (took_here - took_there).abs() < 0.1 && took_there <= BOUND,
                "told the step: {with_step}, from decrease {first_told}: here {took_here} s, \
                 there {took_there} s"
            );
        }
    }

    #[test]
    fn an_unlimited_subscription_slows_down_from_what_it_really_sent() {
        let t0 = Instant::now();
        let mut t = Throttle::new(None, t0);
        // 100 requests in the last second on a dispatcher with half the traffic: 200 req/s.
        for i in 0..100 {
            t.reserve(t0 + ms(i * 10), 0.5, WAIT);
            t.succeeded(t0 + ms(i * 10), 0.5);
        }
        let rate = t.slow_down(t0 + ms(1000), 0.5, None).unwrap().0.unwrap();
        assert!((95.0..=105.0).contains(&rate), "{rate}");
        // Now it is paced: one every 1 / (rate × share).
        let now = t0 + ms(1000);
        assert_eq!(t.reserve(now, 0.5, WAIT), Slot::Now);
        assert!(matches!(t.reserve(now, 0.5, WAIT), Slot::At(_)));
    }

    #[test]
    fn an_unlimited_subscription_stays_paced_after_a_pause_until_its_traffic_is_sparse() {
        let t0 = Instant::now();
        let mut t = Throttle::new(None, t0);
        for i in 0..40 {
            t.succeeded(t0 + ms(i * 25), 1.0);
        }
        let rate = t
            .slow_down(t0 + ms(1000), 1.0, Some(Duration::from_secs(2)))
            .unwrap()
            .0
            .unwrap();
        assert!((19.0..=21.0).contains(&rate), "{rate}");
        // Back at the rate before the decrease just after the pause: still paced.
        let mut at = t0 + ms(3000);
        while t.rate().is_some_and(|r| r < 40.0) {
            at += ms(1);
            t.succeeded(at, 1.0);
        }
        assert!(t.rate().is_some(), "went unlimited right after a pause");
        // Sparse traffic while deliveries are held back (a backlog deferred to a retry tier):
        // still paced.
        let mut held = t.clone();
        for i in 1..=4 {
            held.held_back(at + ms(i * 1000 - 500));
            held.succeeded(at + ms(i * 1000), 1.0);
        }
        assert!(held.rate().is_some(), "went unlimited with a backlog");
        // Sparse traffic for a few seconds, nothing held back: unlimited again.
        for i in 1..=4 {
            t.succeeded(at + ms(i * 1000), 1.0);
        }
        assert_eq!(t.rate(), None);
    }

    #[test]
    fn a_refusal_after_a_lull_slows_down_from_the_limit_not_from_an_average_over_the_lull() {
        let t0 = Instant::now();
        let mut t = Throttle::new(Some(40.0), t0);
        // 40 req/s for 2 s, then nothing for a minute, then a 429 first.
        for i in 0..80 {
            t.succeeded(t0 + ms(i * 25), 1.0);
        }
        let after = t0 + Duration::from_secs(62);
        assert_eq!(t.slow_down(after, 1.0, None).unwrap().0, Some(20.0));
        assert_eq!(t.step(), Some(1.0));
    }

    #[test]
    fn a_sparse_unlimited_subscription_is_not_slowed_by_one_refusal() {
        let t0 = Instant::now();
        let mut t = Throttle::new(None, t0);
        assert_eq!(t.slow_down(t0, 1.0, None), None);
        assert_eq!(t.rate(), None);
        assert_eq!(t.pace(t0), Pace::Active);
    }

    #[test]
    fn a_burst_mostly_refused_slows_down_to_what_got_through() {
        let t0 = Instant::now();
        let mut t = Throttle::new(None, t0);
        // 200 sent in the last second, 20 accepted, on a dispatcher alone.
        for i in 0..200 {
            let at = t0 + ms(i * 5);
            if i % 10 == 0 {
                t.succeeded(at, 1.0);
            } else {
                t.completed(at);
            }
        }
        let rate = t.slow_down(t0 + ms(1000), 1.0, None).unwrap().0.unwrap();
        assert!((9.0..=11.0).contains(&rate), "{rate}");
    }

    #[test]
    fn retry_after_pauses_the_whole_subscription() {
        let t0 = Instant::now();
        let mut t = Throttle::new(Some(10.0), t0);
        let (_, until) = t.slow_down(t0, 1.0, Some(Duration::from_secs(2))).unwrap();
        assert_eq!(until, Some(t0 + Duration::from_secs(2)));
        assert_eq!(t.pace(t0), Pace::BackingOff(t0 + Duration::from_secs(2)));
        assert_eq!(
            t.reserve(t0 + ms(10), 1.0, WAIT),
            Slot::At(t0 + Duration::from_secs(2))
        );
        // Beyond the wait allowed in memory: deferred.
        assert_eq!(t.reserve(t0 + ms(10), 1.0, ms(500)), Slot::Later);
        // A longer Retry-After within the holdoff still extends the pause.
        let (_, until) = t
            .slow_down(t0 + ms(100), 1.0, Some(Duration::from_secs(4)))
            .unwrap();
        assert_eq!(until, Some(t0 + ms(4100)));
        assert_eq!(t.pace(t0 + ms(5000)), Pace::Throttled(5.0));
    }

    #[test]
    fn late_wake_ups_go_at_most_three_at_once_and_lateness_is_not_lost() {
        let t0 = Instant::now();
        let mut t = Throttle::new(Some(10.0), t0);
        // Every wake-up 30 ms late: the pace stays one per 100 ms.
        for i in 0..10 {
            assert_eq!(t.start(t0 + ms(i * 100 + 30), 1.0), Ok(()), "{i}");
        }
        // Five woke together 1 s late: three go, the next 100 ms later.
        let late = t0 + ms(2000);
        for _ in 0..3 {
            assert_eq!(t.start(late, 1.0), Ok(()));
        }
        assert_eq!(t.start(late, 1.0), Err(late + ms(100)));
        assert_eq!(t.start(late + ms(100), 1.0), Ok(()));
    }

    #[test]
    fn refusals_while_paused_do_not_lower_the_rate_again() {
        let t0 = Instant::now();
        let mut t = Throttle::new(Some(40.0), t0);
        t.slow_down(t0, 1.0, Some(Duration::from_secs(2)));
        assert_eq!(t.rate(), Some(20.0));
        // Sent before the pause, refused during it: the pause grows, the rate stays.
        let (rate, until) = t
            .slow_down(t0 + ms(1500), 1.0, Some(Duration::from_secs(2)))
            .unwrap();
        assert_eq!((rate, until), (Some(20.0), Some(t0 + ms(3500))));
        assert_eq!(t.rate(), Some(20.0));
    }

    #[test]
    fn another_dispatchers_signal_is_applied_once() {
        let t0 = Instant::now();
        let mut t = Throttle::new(Some(50.0), t0);
        t.slowed_elsewhere(t0, Some(25.0), Some(t0 + ms(1000)), None);
        assert_eq!(t.rate(), Some(25.0));
        assert_eq!(t.pace(t0), Pace::BackingOff(t0 + ms(1000)));
        // A stale or higher rate does not raise it.
        t.slowed_elsewhere(t0, Some(40.0), None, None);
        assert_eq!(t.rate(), Some(25.0));
        // Raising the configured limit above the slowed rate keeps the slow-down; lowering it
        // below ends it.
        t.configure(Some(20.0), t0);
        assert_eq!(t.rate(), Some(20.0));
        assert_eq!(t.pace(t0 + ms(2000)), Pace::Active);
    }
}
