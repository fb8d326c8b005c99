//! Direct AMQP access for tests: publish as a producer would, read what Relay parked.

use std::time::Duration;

use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions},
};

/// A message read from a queue.
#[derive(Debug, Clone)]
pub struct Message {
    /// Body.
    pub body: Vec<u8>,
    /// Properties, headers included.
    pub properties: BasicProperties,
}

impl Message {
    /// A header as text, if present.
    pub fn header(&self, name: &str) -> Option<String> {
        let headers = self.properties.headers().as_ref();
        relay_shared::amqp::header_text(headers, name)
            .or_else(|| headers?.inner().get(name).map(|other| format!("{other:?}")))
    }
}

async fn connect(url: &str) -> Connection {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("test connection to the broker")
}

/// Publishes `body` to `exchange` as a plain AMQP producer would, waiting for the confirm.
pub async fn publish(url: &str, exchange: &str, body: &[u8], properties: BasicProperties) {
    let connection = connect(url).await;
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    let confirm = channel
        .basic_publish(
            exchange.into(),
            "".into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(confirm.is_ack(), "broker did not confirm the test publish");
    let _ = connection.close(200, "done".into()).await;
}

/// Takes (and acks) one message from `queue`, polling until `timeout`; `None` if none came.
pub async fn get_one(url: &str, queue: &str, timeout: Duration) -> Option<Message> {
    let connection = connect(url).await;
    let channel = connection.create_channel().await.expect("channel");
    let deadline = tokio::time::Instant::now() + timeout;
    let found = loop {
        match channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .expect("basic.get")
        {
            Some(got) => {
                let delivery = got.delivery;
                delivery
                    .acker
                    .ack(BasicAckOptions::default())
                    .await
                    .expect("ack");
                break Some(Message {
                    body: delivery.data,
                    properties: delivery.properties,
                });
            }
            None if tokio::time::Instant::now() > deadline => break None,
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let _ = connection.close(200, "done".into()).await;
    found
}

/// Takes (and acks) every message `queue` holds now, on one channel, until it answers empty.
pub async fn drain(url: &str, queue: &str) -> Vec<Message> {
    let connection = connect(url).await;
    let channel = connection.create_channel().await.expect("channel");
    let mut messages = Vec::new();
    while let Some(got) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        messages.push(Message {
            body: got.delivery.data,
            properties: got.delivery.properties,
        });
    }
    let _ = connection.close(200, "done".into()).await;
    messages
}

/// Publishes every `(id, body)` to `exchange` with publisher confirms, `window` at a time, as
/// a careful producer on a cluster would: through the first node of `urls` that answers, and,
/// when a connection fails or a window is not wholly confirmed in time, through the next node,
/// publishing the unconfirmed window again (with the same ids: duplicates, never losses).
/// `confirmed` counts the messages confirmed so far. Returns how many windows were re-sent.
///
/// # Panics
/// When `urls` is empty.
pub async fn publish_with_failover(
    urls: &[String],
    exchange: &str,
    messages: Vec<(String, Vec<u8>)>,
    window: usize,
    confirmed: &std::sync::atomic::AtomicUsize,
) -> usize {
    use std::sync::atomic::Ordering;
    assert!(!urls.is_empty(), "no broker URL");
    let mut pending: std::collections::VecDeque<(String, Vec<u8>)> = messages.into();
    let mut node = 0;
    let mut resent = 0;
    while !pending.is_empty() {
        let url = &urls[node % urls.len()];
        let connect = async {
            let connection = Connection::connect(url, ConnectionProperties::default()).await?;
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            Ok::<_, lapin::Error>((connection, channel))
        };
        let Ok(Ok((connection, channel))) =
            tokio::time::timeout(Duration::from_secs(5), connect).await
        else {
            node += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        while !pending.is_empty() {
            let batch: Vec<(String, Vec<u8>)> = pending.iter().take(window).cloned().collect();
            let mut confirms = Vec::with_capacity(batch.len());
            for (id, body) in &batch {
                let properties = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into())
                    .with_message_id(id.as_str().into());
                match channel
                    .basic_publish(
                        exchange.into(),
                        "".into(),
                        BasicPublishOptions::default(),
                        body,
                        properties,
                    )
                    .await
                {
                    Ok(confirm) => confirms.push(confirm),
                    Err(_) => break,
                }
            }
            let sent = confirms.len();
            let all = futures_util::future::join_all(confirms);
            let acked = match tokio::time::timeout(Duration::from_secs(10), all).await {
                Ok(results) => results
                    .into_iter()
                    .all(|r| r.is_ok_and(|c| c.is_ack() && c.take_message().is_none())),
                Err(_) => false,
            };
            if acked && sent == batch.len() {
                pending.drain(..sent);
                confirmed.fetch_add(sent, Ordering::SeqCst);
            } else {
                resent += 1;
                node += 1;
                break;
            }
        }
        let _ = connection.close(200, "done".into()).await;
    }
    resent
}
