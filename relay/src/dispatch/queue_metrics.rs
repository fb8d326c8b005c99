//! Queue depth and consumer counts from the broker itself, without the management plugin:
//! every `interval`, a passive `queue.declare` of each Relay queue (which answers with its
//! ready-message and consumer counts) sets `relay_queue_messages{queue}` and
//! `relay_queue_consumers{queue}`.
//!
//! The `queue` label is the queue's role, without the configured prefix: `ingress` (or
//! `ingress.<k>` per shard with `amqp.ingress_shards` > 1), `dead`,
//! `invalid`, `redeliver`, `attempts`, `archive` and `retry.<delay>` per retry tier (e.g.
//! `retry.5m`); a bounded set fixed by the configuration. Every dispatcher samples, so an
//! aggregation over processes takes `max by (queue)`. Retry tier queues are sampled with the
//! same (idempotent) declaration the consumers make, so a tier not declared yet reads 0
//! instead of drawing a `NOT_FOUND` channel error (which the AMQP client logs as an ERROR) at
//! every fresh start; a queue that stops answering loses its samples rather than keeping stale
//! ones.

use std::time::Duration;

use lapin::Channel;
use prometheus::{IntGaugeVec, Registry};
use tokio::sync::watch;

use relay_shared::{
    amqp,
    metrics::gauge_vec,
    session::{Session, next_session},
    shutdown::Shutdown,
    topology::{Topology, tier_label},
};

/// The sampler and its two gauges.
#[derive(Debug, Clone)]
pub struct QueueSampler {
    messages: IntGaugeVec,
    consumers: IntGaugeVec,
    /// `(label, queue name)` of every queue sampled.
    queues: Vec<(String, String)>,
    /// The retry tiers, declared rather than passively checked.
    tiers: Vec<(String, Duration)>,
    topology: Topology,
    interval: Duration,
}

impl QueueSampler {
    /// Registers the gauges on `registry` for the queues of `topology` and one tier queue per
    /// distinct delay of `retry_schedule`, sampled every `interval`.
    ///
    /// # Errors
    /// The gauges are already registered there.
    pub fn register(
        registry: &Registry,
        topology: &Topology,
        retry_schedule: &[Duration],
        interval: Duration,
    ) -> prometheus::Result<Self> {
        Ok(Self {
            messages: gauge_vec(
                registry,
                "relay_queue_messages",
                "Messages ready in each Relay queue (passive declare), by queue role.",
                &["queue"],
            )?,
            consumers: gauge_vec(
                registry,
                "relay_queue_consumers",
                "Consumers attached to each Relay queue (passive declare), by queue role.",
                &["queue"],
            )?,
            queues: queues(topology, retry_schedule),
            tiers: retry_schedule
                .iter()
                .map(|delay| (topology.retry_tier(*delay), *delay))
                .collect(),
            topology: topology.clone(),
            interval,
        })
    }

    /// The sampling loop on the sessions of `keep_connected` until `shutdown`, to spawn;
    /// `None` when the interval is zero.
    pub fn run(
        self,
        sessions: watch::Receiver<Option<Session>>,
        shutdown: Shutdown,
    ) -> Option<impl Future<Output = ()> + Send + 'static> {
        (!self.interval.is_zero()).then(|| self.sample_until(sessions, shutdown))
    }

    async fn sample_until(
        self,
        mut sessions: watch::Receiver<Option<Session>>,
        mut shutdown: Shutdown,
    ) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while let Some(session) = next_session(&mut sessions, &mut shutdown).await {
            let mut channel: Option<Channel> = None;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = sessions.changed() => break,
                    () = shutdown.wait() => return,
                }
                if !session.status().connected() {
                    break;
                }
                if shutdown
                    .unless_stopped(self.sample(&session, &mut channel))
                    .await
                    .is_none()
                {
                    return;
                }
            }
            if let Some(channel) = channel.take() {
                amqp::close_channel(&channel, "sampler done").await;
            }
            self.forget_all();
        }
    }

    /// One round over every queue. A passive declare of a missing queue closes the channel
    /// (404), so a fresh one is opened for the next queue.
    async fn sample(&self, session: &Session, channel: &mut Option<Channel>) {
        for (label, name) in &self.queues {
            let open = match channel.take() {
                Some(c) if c.status().connected() => c,
                _ => match session.create_channel().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(error = %e, "queue sampler cannot open a channel");
                        return;
                    }
                },
            };
            let tier = self.tiers.iter().find(|(tier, _)| tier == name);
            let declare = async {
                match tier {
                    Some((_, delay)) => self.topology.declare_retry_tier(&open, *delay).await,
                    None => amqp::passive_declare(&open, name).await,
                }
            };
            let declared = tokio::time::timeout(Duration::from_secs(5), declare).await;
            match declared {
                Ok(Ok(queue)) => {
                    self.messages
                        .with_label_values(&[label.as_str()])
                        .set(i64::from(queue.message_count()));
                    self.consumers
                        .with_label_values(&[label.as_str()])
                        .set(i64::from(queue.consumer_count()));
                    *channel = Some(open);
                }
                Ok(Err(e)) => {
                    // The broker closed the channel (e.g. a queue deleted by hand).
                    tracing::debug!(queue = %name, error = %e, "queue not sampled");
                    self.forget(label);
                }
                Err(_) => {
                    tracing::debug!(queue = %name, "queue sample timed out");
                    self.forget(label);
                    amqp::close_channel(&open, "sample timed out").await;
                }
            }
        }
    }

    fn forget(&self, label: &str) {
        let _ = self.messages.remove_label_values(&[label]);
        let _ = self.consumers.remove_label_values(&[label]);
    }

    fn forget_all(&self) {
        for (label, _) in &self.queues {
            self.forget(label);
        }
    }
}

/// `(label, name)` of every queue a Relay with this topology and schedule uses.
fn queues(topology: &Topology, retry_schedule: &[Duration]) -> Vec<(String, String)> {
    let prefix_len = topology.ingress.len() - "ingress".len();
    let mut queues: Vec<(String, String)> = topology
        .ingress_queues()
        .into_iter()
        .map(|name| (name[prefix_len..].to_owned(), name))
        .collect();
    queues.extend(
        [
            ("redeliver", &topology.redeliver),
            ("dead", &topology.dead),
            ("invalid", &topology.invalid),
            ("attempts", &topology.attempts),
            ("archive", &topology.archive),
        ]
        .into_iter()
        .map(|(label, name)| (label.to_owned(), name.clone())),
    );
    for delay in retry_schedule {
        let entry = (
            format!("retry.{}", tier_label(*delay)),
            topology.retry_tier(*delay),
        );
        if !queues.contains(&entry) {
            queues.push(entry);
        }
    }
    queues
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_drop_the_prefix_and_tiers_are_distinct() {
        let topology = Topology::new("acme.");
        let schedule = [
            Duration::from_secs(5),
            Duration::from_secs(300),
            Duration::from_secs(36_000),
            Duration::from_secs(36_000),
        ];
        let q = queues(&topology, &schedule);
        let labels: Vec<&str> = q.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(
            labels,
            [
                "ingress",
                "redeliver",
                "dead",
                "invalid",
                "attempts",
                "archive",
                "retry.5s",
                "retry.5m",
                "retry.10h"
            ]
        );
        assert_eq!(q[0].1, "acme.ingress");
        assert_eq!(q[7].1, "acme.retry.5m");
    }

    #[test]
    fn each_shard_has_its_label() {
        let q = queues(&Topology::new("acme.").with_ingress_shards(2), &[]);
        assert_eq!(q[0], ("ingress.0".to_owned(), "acme.ingress.0".to_owned()));
        assert_eq!(q[1], ("ingress.1".to_owned(), "acme.ingress.1".to_owned()));
        assert_eq!(q[2].0, "redeliver");
    }
}
