//! Broker connections with bounded attempts, reconnect backoff and confirmed publishing.

use std::time::Duration;

use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Queue,
    options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, ShortString},
};

use crate::config::AmqpSettings;

/// Why talking to the broker failed.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    /// No answer within the configured bound (a TCP connect to a black hole can hang).
    #[error("broker did not answer within {0:?}")]
    Timeout(Duration),
    /// The broker or the connection reported an error.
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
    /// The broker refused to take responsibility for a message.
    #[error("broker refused the message (nack)")]
    Nack,
    /// The broker returned a mandatory message: no queue is bound for it.
    #[error("broker returned the message: no queue is bound for it (unroutable)")]
    Unroutable,
    /// The message was sent, but the connection failed before the broker confirmed it: the
    /// broker may or may not hold it.
    #[error("no confirm before the connection failed: {0}")]
    Unconfirmed(lapin::Error),
    /// None of a cluster's nodes could be reached; each node with its error.
    #[error("no broker node reachable ({0})")]
    NoNode(String),
    /// The session a message came on is closed: the broker holds the message again.
    #[error("the session the message came on is closed")]
    SessionClosed,
}

impl AmqpError {
    /// Whether the broker may hold the message although this publish failed: the message had
    /// left (or was leaving) when the confirm failed to come.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, Self::Timeout(_) | Self::Unconfirmed(_))
    }
}

/// Opens a connection to the node at `url`, named `name` (shown in the broker's management
/// UI), bounded by `amqp.connect_timeout`.
///
/// # Errors
/// [`AmqpError::Timeout`] or [`AmqpError::Broker`].
pub async fn connect(
    settings: &AmqpSettings,
    url: &str,
    name: &str,
) -> Result<Connection, AmqpError> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    tokio::time::timeout(settings.connect_timeout, Connection::connect(url, props))
        .await
        .map_err(|_| AmqpError::Timeout(settings.connect_timeout))?
        .map_err(AmqpError::from)
}

/// How long a close or a consumer cancel may wait for the broker's answer: it is the last
/// word to a node that may have gone away, and lapin would wait for it forever.
pub const CLOSE_BOUND: Duration = Duration::from_secs(2);

/// Closes `channel`, waiting at most [`CLOSE_BOUND`] for the broker (an error or no answer
/// leaves nothing to do: the channel is gone with its connection either way).
pub async fn close_channel(channel: &Channel, reason: &str) {
    let _ = tokio::time::timeout(CLOSE_BOUND, channel.close(200, reason.into())).await;
}

/// Closes `connection`, waiting at most [`CLOSE_BOUND`] for the broker.
pub async fn close_connection(connection: &Connection, reason: &str) {
    let _ = tokio::time::timeout(CLOSE_BOUND, connection.close(200, reason.into())).await;
}

/// A channel in publisher-confirm mode.
///
/// # Errors
/// [`AmqpError::Broker`].
pub async fn confirm_channel(connection: &Connection) -> Result<Channel, AmqpError> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// The queue named `queue` as the broker holds it now (its ready messages and consumers),
/// without creating it: a passive `queue.declare`.
///
/// # Errors
/// The queue does not exist (the broker then closes `channel`: 404) or the channel failed.
pub async fn passive_declare(channel: &Channel, queue: &str) -> Result<Queue, lapin::Error> {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::default().passive(),
            FieldTable::default(),
        )
        .await
}

/// A message ready to publish: body and properties, as [`crate::wire`] encodes them.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The body.
    pub body: Vec<u8>,
    /// Its properties (persistence, ids, headers, expiry).
    pub properties: BasicProperties,
    /// Published `mandatory`: a message no queue takes (its queue was deleted by hand, or
    /// a binding is missing) comes back and the publish fails, instead of being confirmed and
    /// dropped. Every message Relay must not lose is; a control notification, which no
    /// process may be listening for, is not.
    pub mandatory: bool,
}

/// Properties of a persistent JSON message.
pub fn persistent_json() -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
}

/// Adds a string header.
pub fn header(headers: &mut FieldTable, key: &str, value: impl Into<String>) {
    headers.insert(
        ShortString::from(key),
        AMQPValue::LongString(value.into().into()),
    );
}

/// A header's value as text: strings as they are, integers in decimal.
pub fn header_text(headers: Option<&FieldTable>, name: &str) -> Option<String> {
    match headers?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        AMQPValue::LongLongInt(n) => Some(n.to_string()),
        AMQPValue::LongInt(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A header's value as an integer (an integer field, or a string of one).
pub fn header_i64(headers: Option<&FieldTable>, name: &str) -> Option<i64> {
    match headers?.inner().get(name)? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        _ => header_text(headers, name)?.parse().ok(),
    }
}

/// Whether a header is present as boolean true.
pub fn header_bool(headers: Option<&FieldTable>, name: &str) -> bool {
    matches!(
        headers.and_then(|h| h.inner().get(name)),
        Some(AMQPValue::Boolean(true))
    )
}

/// Publishes and waits for the broker's confirm, bounded by `timeout`.
///
/// # Errors
/// [`AmqpError::Broker`] (not sent), [`AmqpError::Nack`] (refused) or
/// [`AmqpError::Unroutable`] (returned): the broker does not
/// hold the message. [`AmqpError::Timeout`] or [`AmqpError::Unconfirmed`]: it may (see
/// [`AmqpError::outcome_unknown`]). In every case the publish is not accepted. After a nack
/// the channel is closed (see [`retire_refusing`]).
pub async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    message: Outgoing,
    timeout: Duration,
) -> Result<(), AmqpError> {
    let confirm = async {
        let confirm = send(channel, exchange, routing_key, message).await?;
        settle(confirm.await)
    };
    let result = tokio::time::timeout(timeout, confirm)
        .await
        .unwrap_or(Err(AmqpError::Timeout(timeout)));
    if matches!(result, Err(AmqpError::Nack)) {
        retire_refusing(channel).await;
    }
    result
}

/// Publishes `messages` in order without waiting between them, then waits for their confirms,
/// all bounded by `timeout`: one round trip for the lot instead of one per message. Returns
/// how many, from the first, the broker confirmed, and the error that stopped the rest (the
/// errors of [`publish_confirmed`]); a message after the first unconfirmed one may be held
/// too (its confirm is not waited for). After a nack the channel is closed (see
/// [`retire_refusing`]).
pub async fn publish_all_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    messages: Vec<Outgoing>,
    timeout: Duration,
) -> (usize, Option<AmqpError>) {
    let mut confirmed = 0;
    let all = async {
        let mut confirms = Vec::with_capacity(messages.len());
        for message in messages {
            confirms.push(send(channel, exchange, routing_key, message).await?);
        }
        for confirm in confirms {
            settle(confirm.await)?;
            confirmed += 1;
        }
        Ok(())
    };
    let error = match tokio::time::timeout(timeout, all).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(_) => Some(AmqpError::Timeout(timeout)),
    };
    if matches!(error, Some(AmqpError::Nack)) {
        retire_refusing(channel).await;
    }
    (confirmed, error)
}

/// Closes a channel the broker nacked a publish on. A channel that published to a quorum
/// queue while the queue elected a new leader can go on refusing every message (RabbitMQ 3.10,
/// after a node loss: for minutes, in `tests/tests/it/cluster.rs`); a new channel does not.
/// Every publisher holds its channel through [`crate::session::confirm_channels`], which opens
/// the next one within 250 ms; the publishes still in flight on this one fail unconfirmed.
async fn retire_refusing(channel: &Channel) {
    tracing::warn!(
        channel = channel.id(),
        "the broker refused a message; reopening the publishing channel"
    );
    close_channel(channel, "reopened after a nack").await;
}

async fn send(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    message: Outgoing,
) -> Result<lapin::PublisherConfirm, AmqpError> {
    Ok(channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory: message.mandatory,
                ..BasicPublishOptions::default()
            },
            &message.body,
            message.properties,
        )
        .await?)
}

fn settle(confirm: Result<Confirmation, lapin::Error>) -> Result<(), AmqpError> {
    match confirm.map_err(AmqpError::Unconfirmed)? {
        Confirmation::Ack(None) => Ok(()),
        // Acked but returned, or nacked: the broker does not hold it. Which one is told
        // apart, as they have different remedies (a binding, or the queue's state).
        Confirmation::Ack(Some(_)) | Confirmation::Nack(Some(_)) => Err(AmqpError::Unroutable),
        Confirmation::Nack(None) | Confirmation::NotRequested => Err(AmqpError::Nack),
    }
}

/// `host:port` of an AMQP URI, for logs and readiness reasons (never the credentials).
pub fn node_label(url: &str) -> String {
    match url.parse::<lapin::uri::AMQPUri>() {
        Ok(uri) => format!("{}:{}", uri.authority.host, uri.authority.port),
        Err(_) => String::from("(invalid URI)"),
    }
}

/// Exponential backoff between reconnection attempts: 100 ms doubling up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at 100 ms.
    pub fn new(max: Duration) -> Self {
        Self {
            next: Duration::from_millis(100).min(max),
            max,
        }
    }

    /// The wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// Back to the shortest wait, after a success.
    pub fn reset(&mut self) {
        self.next = Duration::from_millis(100).min(self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_read_as_text_or_integers() {
        let mut headers = FieldTable::default();
        header(&mut headers, "s", "42");
        headers.insert(ShortString::from("n"), AMQPValue::LongLongInt(7));
        let h = Some(&headers);
        assert_eq!(header_text(h, "s").as_deref(), Some("42"));
        assert_eq!(header_text(h, "n").as_deref(), Some("7"));
        assert_eq!(header_i64(h, "s"), Some(42));
        assert_eq!(header_i64(h, "n"), Some(7));
        assert_eq!(header_text(h, "missing"), None);
        assert_eq!(header_i64(None, "n"), None);
    }

    #[test]
    fn node_labels_leave_credentials_out() {
        assert_eq!(
            node_label("amqp://user:secret@rabbit-1:5673/%2f"),
            "rabbit-1:5673"
        );
        assert_eq!(node_label("amqp://rabbit-2"), "rabbit-2:5672");
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500));
        let delays: Vec<_> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next_delay().as_millis(), 100);
    }
}
