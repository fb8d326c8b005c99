//! Ordered lanes for `ordering: key` subscriptions: per (subscription, ordering key), one
//! delivery at a time, in the order the worker received the events.
//!
//! The worker takes a [`Ticket`] for each ordered subscription of an event as it receives the
//! message, in the consumer's order (a shard queue is FIFO and, single-active-consumer, read by
//! one dispatcher at a time, so that is the publish order of each key). A ticket waits for the
//! ticket ahead of it in its lane to be dropped, i.e. for that delivery to have succeeded or to
//! be dead-lettered. Waiting deliveries keep their messages unacked on the broker: the lanes
//! hold at most what the prefetch lets in, and a crash hands the messages back in order.
//! Other keys, other subscriptions and unordered subscriptions never wait on a lane.
//!
//! Cost: while no loaded subscription is ordered, an event costs one atomic load
//! ([`super::directory::Directory::has_ordered`]) and is decoded in its own task as before.
//! While one is, the consume loop decodes and routes each `ingress` event itself (once: the
//! task reuses it), and each ordered route of the event takes one lock of the lane table, a
//! lane key and a oneshot channel.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use relay_shared::subscription::Ordering;
use tokio::sync::oneshot;

use super::directory::Route;

/// (subscription id, ordering key).
type LaneKey = (String, String);

/// The last ticket of each busy lane.
#[derive(Debug, Default)]
pub struct OrderedLanes {
    tails: Mutex<Tails>,
}

#[derive(Debug, Default)]
struct Tails {
    next: u64,
    /// Per busy lane: the number of its last ticket and what resolves when that one is done.
    last: HashMap<LaneKey, (u64, oneshot::Receiver<()>)>,
}

impl OrderedLanes {
    /// A place at the end of the lane of (`subscription_id`, `key`). Must be called in the
    /// order the events were received.
    pub fn ticket(self: &Arc<Self>, subscription_id: &str, key: &str) -> Ticket {
        let lane = (subscription_id.to_owned(), key.to_owned());
        let (done, behind) = oneshot::channel();
        let mut tails = self.tails.lock().unwrap_or_else(PoisonError::into_inner);
        tails.next += 1;
        let number = tails.next;
        let ahead = tails
            .last
            .insert(lane.clone(), (number, behind))
            .map(|(_, ahead)| ahead);
        Ticket {
            lanes: Arc::clone(self),
            lane,
            number,
            ahead,
            done: Some(done),
        }
    }

    /// The tickets of an event with ordering key `key` going to `routes`: one per
    /// `ordering: key` route, in its lane. No lock and no allocation when none is ordered.
    pub fn tickets(self: &Arc<Self>, routes: &[Arc<Route>], key: &str) -> Tickets {
        Tickets(
            routes
                .iter()
                .enumerate()
                .filter(|(_, route)| route.ordering == Ordering::Key)
                .map(|(i, route)| (i, self.ticket(&route.id, key)))
                .collect(),
        )
    }

    /// How many lanes have a delivery in flight or waiting.
    #[cfg(test)]
    fn busy(&self) -> usize {
        self.tails
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last
            .len()
    }
}

/// One event's tickets, by the position of their route in the event's routes.
#[derive(Debug, Default)]
pub struct Tickets(Vec<(usize, Ticket)>);

impl Tickets {
    /// The ticket of the route at `position`, if it is ordered.
    pub fn take(&mut self, position: usize) -> Option<Ticket> {
        let at = self.0.iter().position(|(i, _)| *i == position)?;
        Some(self.0.swap_remove(at).1)
    }
}

/// One delivery's place in its lane; dropping it lets the next one go.
#[derive(Debug)]
pub struct Ticket {
    lanes: Arc<OrderedLanes>,
    lane: LaneKey,
    number: u64,
    ahead: Option<oneshot::Receiver<()>>,
    done: Option<oneshot::Sender<()>>,
}

impl Ticket {
    /// Waits until every delivery ahead in the lane is done. Cancel-safe: a wait given up
    /// keeps the ticket's place.
    pub async fn wait(&mut self) {
        if let Some(ahead) = self.ahead.as_mut() {
            // Resolves (as an error) when the ticket ahead is dropped: nothing is ever sent.
            let _ = ahead.await;
            self.ahead = None;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let release = Release {
            lanes: Arc::clone(&self.lanes),
            lane: std::mem::take(&mut self.lane),
            number: self.number,
            done: self.done.take(),
        };
        match (self.ahead.take(), tokio::runtime::Handle::try_current()) {
            // Dropped before its turn (its delivery was abandoned): the turn passes on only
            // once the delivery ahead is done, or the one behind would overtake it.
            (Some(ahead), Ok(runtime)) => {
                runtime.spawn(async move {
                    let _ = ahead.await;
                    release.now();
                });
            }
            _ => release.now(),
        }
    }
}

/// What a finished ticket gives back.
struct Release {
    lanes: Arc<OrderedLanes>,
    lane: LaneKey,
    number: u64,
    done: Option<oneshot::Sender<()>>,
}

impl Release {
    fn now(mut self) {
        let mut tails = self
            .lanes
            .tails
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // The last in its lane: the lane is idle now, and its entry goes (bounded memory).
        if tails
            .last
            .get(&self.lane)
            .is_some_and(|(number, _)| *number == self.number)
        {
            tails.last.remove(&self.lane);
        }
        drop(tails);
        // Dropping the sender resolves the next ticket's wait.
        drop(self.done.take());
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_lane_goes_one_at_a_time_in_ticket_order_and_others_do_not_wait() {
        let lanes = Arc::new(OrderedLanes::default());
        let mut first = lanes.ticket("s", "k");
        let mut second = lanes.ticket("s", "k");
        let mut third = lanes.ticket("s", "k");
        let mut other_key = lanes.ticket("s", "j");
        let mut other_subscription = lanes.ticket("t", "k");
        assert_eq!(lanes.busy(), 3);
        first.wait().await;
        other_key.wait().await;
        other_subscription.wait().await;
        // The second waits for the first, the third for the second.
        let (tx, mut order) = tokio::sync::mpsc::unbounded_channel();
        let third = tokio::spawn({
            let tx = tx.clone();
            async move {
                third.wait().await;
                tx.send(3).unwrap();
            }
        });
        let second = tokio::spawn(async move {
            second.wait().await;
            tx.send(2).unwrap();
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            order.try_recv().is_err(),
            "a ticket went before the first was done"
        );
        drop(first);
        assert_eq!(order.recv().await, Some(2));
        assert_eq!(order.recv().await, Some(3));
        second.await.unwrap();
        third.await.unwrap();
        drop((other_key, other_subscription));
        assert_eq!(lanes.busy(), 0, "idle lanes are forgotten");
    }

    #[tokio::test]
    async fn a_ticket_dropped_before_its_turn_passes_it_on_after_the_one_ahead() {
        let lanes = Arc::new(OrderedLanes::default());
        let first = lanes.ticket("s", "k");
        let abandoned = lanes.ticket("s", "k");
        let mut last = lanes.ticket("s", "k");
        drop(abandoned);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), last.wait())
                .await
                .is_err(),
            "the last overtook the first"
        );
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), last.wait())
            .await
            .expect("the last ticket goes");
        drop(last);
        assert_eq!(lanes.busy(), 0);
    }
}
