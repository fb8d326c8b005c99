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
