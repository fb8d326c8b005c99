//! Control notifications: after every committed subscription change, a
//! [`ControlMessage`] on the control exchange tells every dispatcher at once.
//!
//! They are an optimisation, not the source of truth: dispatchers also reload the whole
//! directory periodically. So a change is committed and acknowledged to the client even when
//! the broker is down; the notification is then logged and counted as failed, and once the
//! broker takes messages again one [`ControlMessage::Resync`] tells every dispatcher and
//! ingest to reload at once ([`ControlPublisher::resync_after_misses`]) rather than at their
//! next refresh (a minute by default).

use std::{sync::Arc, time::Duration};

use lapin::Channel;
use prometheus::IntCounterVec;
use relay_shared::shutdown::Shutdown;
use relay_shared::{
    amqp::{self, AmqpError},
    control::ControlMessage,
};
use tokio::sync::{Notify, watch};

/// Longest a request waits for the broker's confirm of its notification.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between attempts to publish a resync while the broker is away.
const RESYNC_RETRY: Duration = Duration::from_secs(1);

/// Why a notification was not published.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No broker connection right now (connecting or reconnecting).
    #[error("not connected to the broker")]
    NotConnected,
    /// The broker did not confirm the message.
    #[error(transparent)]
    Amqp(#[from] AmqpError),
}

/// Publishes control notifications on the current broker channel.
#[derive(Debug, Clone)]
pub struct ControlPublisher {
    channel: watch::Receiver<Option<Channel>>,
    exchange: Arc<str>,
    /// `outcome` = `published` | `failed`.
    notifications: IntCounterVec,
    /// A notification failed since the last resync (a stored permit).
    missed: Arc<Notify>,
}

impl ControlPublisher {
    /// A publisher to `exchange` over whichever channel `channel` currently holds.
    pub fn new(
        channel: watch::Receiver<Option<Channel>>,
        exchange: &str,
        notifications: IntCounterVec,
    ) -> Self {
        Self {
            channel,
            exchange: exchange.into(),
            notifications,
            missed: Arc::default(),
        }
    }

    /// Until `shutdown`: after a notification failed, publishes [`ControlMessage::Resync`] as
    /// soon as the broker confirms it (trying every [`RESYNC_RETRY`]).
    pub async fn resync_after_misses(self, mut shutdown: Shutdown) {
        loop {
            tokio::select! {
                () = self.missed.notified() => {}
                () = shutdown.wait() => return,
            }
            while let Err(e) = self.publish(&ControlMessage::Resync).await {
                tracing::debug!(error = %e, "resync not published yet");
                tokio::select! {
                    () = tokio::time::sleep(RESYNC_RETRY) => {}
                    () = shutdown.wait() => return,
                }
            }
            self.notifications.with_label_values(&["published"]).inc();
            tracing::info!(
                "resync published: dispatchers and ingest reload the changes whose notifications failed"
            );
        }
    }

    /// Publishes `message` and waits for the broker's confirm, at most [`PUBLISH_TIMEOUT`].
    ///
    /// # Errors
    /// [`ControlError::NotConnected`] at once while there is no connection, else
    /// [`ControlError::Amqp`] when the broker did not confirm in time.
    pub async fn publish(&self, message: &ControlMessage) -> Result<(), ControlError> {
        let channel = self
            .channel
            .borrow()
            .clone()
            .ok_or(ControlError::NotConnected)?;
        amqp::publish_confirmed(
            &channel,
            &self.exchange,
            "",
            message.encode(),
            PUBLISH_TIMEOUT,
        )
        .await?;
        Ok(())
    }

    /// Publishes `message` after a committed change; a failure is logged and counted, never
    /// returned, because the change itself has succeeded.
    ///
    /// The publish runs in its own task, so a client that hangs up mid-request does not
    /// cancel the notification of a change that was already committed.
    pub async fn notify(&self, message: ControlMessage) {
        let publisher = self.clone();
        let task = tokio::spawn(async move {
            let subject = message.subject().to_owned();
            match publisher.publish(&message).await {
                Ok(()) => {
                    publisher
                        .notifications
                        .with_label_values(&["published"])
                        .inc();
                    tracing::debug!(subject, "control notification published");
                }
                Err(e) => {
                    publisher.notifications.with_label_values(&["failed"]).inc();
                    publisher.missed.notify_one();
                    tracing::warn!(
                        subject,
                        error = %e,
                        "control notification not published; dispatchers and ingest will reload once the broker takes a resync, or at their next refresh"
                    );
                }
            }
        });
        // The task only logs; a panic in it has nothing more to report here.
        let _ = task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_a_connection_publishing_fails_at_once_and_notify_counts_it() {
        let (_tx, rx) = watch::channel(None);
        let counter = IntCounterVec::new(prometheus::Opts::new("n", "n"), &["outcome"]).unwrap();
        let publisher = ControlPublisher::new(rx, "relay.control", counter.clone());
        let message = ControlMessage::Delete { id: "sub_1".into() };
        let started = std::time::Instant::now();
        assert!(matches!(
            publisher.publish(&message).await,
            Err(ControlError::NotConnected)
        ));
        publisher.notify(message).await;
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(counter.with_label_values(&["failed"]).get(), 1);
        assert_eq!(counter.with_label_values(&["published"]).get(), 0);
        // The miss is remembered for the resync.
        let marked = tokio::time::timeout(Duration::from_millis(100), publisher.missed.notified());
        assert!(
            marked.await.is_ok(),
            "a failed notification asks for a resync"
        );
    }
}
