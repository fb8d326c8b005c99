//! Which dispatchers are alive, as a value: each one's part of every subscription's limits
//! is `1 / n`, and the rules that keep the parts from adding up to more than the whole while
//! dispatchers join and leave. Pure: every method takes the time.
//!
//! Every dispatcher announces itself on `relay.control` each heartbeat with the count it uses
//! and the count it has *settled for* (it holds, for every subscription, no more than its part
//! at that count). The rules:
//!
//! - **Counting up is immediate, counting down is late.** `n` is the largest of this
//!   dispatcher's own count and the counts its peers announce; a peer stays counted until
//!   [`WINDOW`](super::throttle::WINDOW) + three heartbeats after it was last heard, so what a
//!   dead dispatcher sent has left every 10 s window before the others take its part.
//! - **A newcomer waits to be settled for.** After listening for three heartbeats, a
//!   dispatcher sends to limited subscriptions only once every peer has announced that it has
//!   settled for a count that includes the newcomer; until then the peers may still hold
//!   requests taken at their larger, older part.
//! - **A dispatcher that cannot hear itself stops.** One that has not heard its own heartbeat
//!   for three heartbeats (cut off from `relay.control`, or too slow to read it) may have been
//!   dropped by the others; it sends to limited subscriptions again only once it hears itself
//!   and is settled for again, as a newcomer.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use super::throttle::WINDOW;

/// Heartbeats a dispatcher listens before it trusts its count, and may go without hearing
/// itself.
const LISTEN: u32 = 3;

#[derive(Debug, Clone, Copy)]
struct Peer {
    heard: Instant,
    counted: usize,
    settled_for: usize,
}

/// This dispatcher's view of the dispatchers alive.
#[derive(Debug, Clone)]
pub struct Members {
    me: String,
    heartbeat: Duration,
    started: Instant,
    peers: HashMap<String, Peer>,
    /// When this dispatcher last heard its own heartbeat.
    echoed: Option<Instant>,
    /// Settled for by every peer since it last started or heard itself again.
    ready: bool,
}

impl Members {
    /// A dispatcher `me` starting at `now`, announcing itself every `heartbeat`.
    pub fn new(me: String, heartbeat: Duration, now: Instant) -> Self {
        Self {
            me,
            heartbeat,
            started: now,
            peers: HashMap::new(),
            echoed: None,
            ready: false,
        }
    }

    /// This dispatcher's id.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// How long a peer stays counted after it was last heard.
    fn expiry(&self) -> Duration {
        WINDOW + self.heartbeat * LISTEN
    }

    /// A heartbeat from `id` (this dispatcher's own included), which counts `counted` and has
    /// settled for `settled_for`.
    pub fn heard(&mut self, id: &str, counted: usize, settled_for: usize, now: Instant) {
        if id == self.me {
            self.echoed = Some(now);
            return;
        }
        self.peers.insert(
            id.to_owned(),
            Peer {
                heard: now,
                counted,
                settled_for,
            },
        );
    }

    /// Dispatchers alive, this one included, by its own hearing.
    pub fn alive(&mut self, now: Instant) -> usize {
        let expiry = self.expiry();
        self.peers
            .retain(|_, peer| now.saturating_duration_since(peer.heard) < expiry);
        self.peers.len() + 1
    }

    /// The count every part is taken at: the largest of this dispatcher's and its peers'.
    pub fn count(&mut self, now: Instant) -> usize {
        let alive = self.alive(now);
        self.peers
            .values()
            .map(|peer| peer.counted)
            .fold(alive, usize::max)
    }

    /// This dispatcher's part of every limit.
    pub fn share(&mut self, now: Instant) -> f64 {
        1.0 / f64::from(u32::try_from(self.count(now)).unwrap_or(u32::MAX))
    }

    /// Whether it hears its own heartbeat, recently enough that the others still count it.
    fn hears_itself(&self, now: Instant) -> bool {
        self.echoed
            .is_some_and(|at| now.saturating_duration_since(at) < self.heartbeat * LISTEN)
    }

    /// May this dispatcher send to limited subscriptions at `now`?
    pub fn ready(&mut self, now: Instant) -> bool {
        if !self.hears_itself(now) {
            self.ready = false;
            return false;
        }
        if self.ready {
            return true;
        }
        if now.saturating_duration_since(self.started) < self.heartbeat * LISTEN {
            return false;
        }
        let count = self.count(now);
        self.ready = self.peers.values().all(|peer| peer.settled_for >= count);
        self.ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HB: Duration = Duration::from_secs(1);

    fn s(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    #[test]
    fn a_newcomer_listens_hears_itself_and_waits_to_be_settled_for() {
        let t0 = Instant::now();
        let mut m = Members::new("c".into(), HB, t0);
        m.heard("a", 2, 2, t0 + s(0.5));
        m.heard("b", 2, 2, t0 + s(0.6));
        m.heard("c", 1, 0, t0 + s(0.7));
        assert_eq!(m.count(t0 + s(1.0)), 3);
        // Still listening.
        assert!(!m.ready(t0 + s(2.0)));
        m.heard("c", 3, 0, t0 + s(2.9));
        // a and b have settled for two, not yet for three.
        assert!(!m.ready(t0 + s(3.0)));
        m.heard("a", 3, 3, t0 + s(3.1));
        assert!(!m.ready(t0 + s(3.2)));
        m.heard("b", 3, 3, t0 + s(3.3));
        assert!(m.ready(t0 + s(3.4)));
        assert!((m.share(t0 + s(3.4)) - 1.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn counting_up_is_immediate_and_down_waits_a_window() {
        let t0 = Instant::now();
        let mut m = Members::new("a".into(), HB, t0);
        m.heard("b", 2, 2, t0);
        assert_eq!(m.count(t0), 2);
        // A peer that counts a third one the dispatcher has not heard yet: three it is.
        m.heard("b", 3, 2, t0 + s(1.0));
        assert_eq!(m.count(t0 + s(1.0)), 3);
        m.heard("b", 2, 2, t0 + s(2.0));
        // b falls silent: still counted a window and three heartbeats after it was last heard.
        assert_eq!(m.count(t0 + s(2.0) + WINDOW + s(2.9)), 2);
        assert_eq!(m.count(t0 + s(2.0) + WINDOW + s(3.0)), 1);
    }

    #[test]
    fn a_dispatcher_that_cannot_hear_itself_stops_and_starts_again_as_a_newcomer() {
        let t0 = Instant::now();
        let mut m = Members::new("a".into(), HB, t0);
        for i in 0..4 {
            let at = t0 + s(f64::from(i));
            m.heard("a", 2, 2, at);
            m.heard("b", 2, 2, at);
        }
        assert!(m.ready(t0 + s(3.5)));
        // Its own heartbeats stop arriving.
        assert!(m.ready(t0 + s(5.9)));
        assert!(!m.ready(t0 + s(6.1)));
        // Heard again, but b has meanwhile counted three and not settled for them.
        m.heard("b", 3, 2, t0 + s(6.5));
        m.heard("a", 3, 2, t0 + s(7.0));
        assert!(!m.ready(t0 + s(7.0)));
        m.heard("b", 3, 3, t0 + s(7.5));
        assert!(m.ready(t0 + s(7.5)));
    }

    #[test]
    fn alone_it_is_ready_after_listening() {
        let t0 = Instant::now();
        let mut m = Members::new("a".into(), HB, t0);
        m.heard("a", 1, 1, t0 + s(2.5));
        assert!(!m.ready(t0 + s(2.9)));
        assert!(m.ready(t0 + s(3.0)));
        assert_eq!(m.count(t0 + s(3.0)), 1);
    }
}
