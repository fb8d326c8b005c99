//! The deliveries waiting in memory for their rate's start, counted by what they keep from
//! being acknowledged. A waiting delivery holds its message unacknowledged (an `ingress`
//! event, with its deliveries to every other subscription, or one `redeliver` message), so
//! waiting deliveries may hold at most `max` events and `max` redeliveries (half of each
//! consumer's prefetch window): the other half always flows for the other subscriptions.
//!
//! Counted by message, not by delivery: one event's deliveries to twenty limited
//! subscriptions hold one event, not twenty. Counted by delivery, the room filled with a few
//! events' deliveries and the limited subscriptions of a busy fan-out were deferred to a
//! delay tier most of the time, coming back in clumps: they reached about 80 % of their limit
//! (relay-bench (h), docs/BENCHMARKS.md).

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
};

/// The message a waiting delivery holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin<'a> {
    /// An `ingress` event, by id: its deliveries share one place (two messages of the same
    /// event, a producer's duplicate, share it too: one place too few at most).
    Event(&'a str),
    /// A `redeliver` message: one delivery.
    Redelivery,
}

/// Events and redeliveries held by waiting deliveries.
#[derive(Debug)]
pub struct WaitingRoom {
    /// Event id → deliveries of it waiting.
    events: Mutex<HashMap<Arc<str>, usize>>,
    redeliveries: AtomicUsize,
    max: usize,
}

/// A waiting delivery's place; given back when dropped.
#[derive(Debug)]
pub struct Seat<'a> {
    room: &'a WaitingRoom,
    /// The map's own key: one allocation per waiting event, not per waiting delivery.
    event: Option<Arc<str>>,
}

impl WaitingRoom {
    /// A room for `max` events and `max` redeliveries (at least one of each).
    pub fn new(max: usize) -> Self {
        Self {
            events: Mutex::new(HashMap::new()),
            redeliveries: AtomicUsize::new(0),
            max: max.max(1),
        }
    }

    /// Whether a delivery of `pin` may wait: there is room, or its event already waits (it
    /// holds nothing more).
    pub fn admits(&self, pin: Pin<'_>) -> bool {
        match pin {
            Pin::Event(id) => {
                let events = self.events();
                events.len() < self.max || events.contains_key(id)
            }
            Pin::Redelivery => self.redeliveries.load(Ordering::Relaxed) < self.max,
        }
    }

    /// Counts a delivery of `pin` as waiting until the seat is dropped. The bound is what
    /// [`WaitingRoom::admits`] said just before: deliveries that asked at once may pass it
    /// by a few.
    pub fn enter(&self, pin: Pin<'_>) -> Seat<'_> {
        let event = match pin {
            Pin::Event(id) => {
                let mut events = self.events();
                let key = match events.get_key_value(id) {
                    Some((key, _)) => Arc::clone(key),
                    None => Arc::from(id),
                };
                *events.entry(Arc::clone(&key)).or_default() += 1;
                Some(key)
            }
            Pin::Redelivery => {
                self.redeliveries.fetch_add(1, Ordering::Relaxed);
                None
            }
        };
        Seat { room: self, event }
    }

    fn events(&self) -> MutexGuard<'_, HashMap<Arc<str>, usize>> {
        self.events.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Seat<'_> {
    fn drop(&mut self) {
        match self.event.take() {
            Some(id) => {
                let mut events = self.room.events();
                if let Some(waiting) = events.get_mut(&*id) {
                    *waiting -= 1;
                    if *waiting == 0 {
                        events.remove(&*id);
                    }
                }
            }
            None => {
                self.room.redeliveries.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_takes_one_place_however_many_of_its_deliveries_wait() {
        let room = WaitingRoom::new(2);
        let first: Vec<_> = (0..20).map(|_| room.enter(Pin::Event("evt_1"))).collect();
        let _second = room.enter(Pin::Event("evt_2"));
        // Two events wait: a third may not, more deliveries of either may.
        assert!(!room.admits(Pin::Event("evt_3")));
        assert!(room.admits(Pin::Event("evt_1")));
        // Redeliveries have their own places.
        let r1 = room.enter(Pin::Redelivery);
        assert!(room.admits(Pin::Redelivery));
        let _r2 = room.enter(Pin::Redelivery);
        assert!(!room.admits(Pin::Redelivery));
        drop(r1);
        assert!(room.admits(Pin::Redelivery));
        // The first event's place comes back with its last waiting delivery.
        let mut first = first;
        first.truncate(1);
        assert!(!room.admits(Pin::Event("evt_3")));
        drop(first);
        assert!(room.admits(Pin::Event("evt_3")));
    }
}
