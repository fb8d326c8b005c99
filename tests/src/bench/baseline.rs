//! The bare baseline: the fastest this design could be with none of Relay's features. A
//! quorum queue (as Relay's ingress), a lapin consumer with the same prefetch that POSTs each
//! message to `fanout` sink URLs with a pooled reqwest client and acks once every POST
//! answered. No envelope parsing, no signing, no directory, no metrics, no archive copy.

use std::time::Duration;

use futures_util::{StreamExt, future::join_all};
use lapin::{
    Connection, ConnectionProperties,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions,
        QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable, ShortString},
};

/// A running baseline consumer.
#[derive(Debug)]
pub struct Baseline {
    /// The queue producers publish to (default exchange, routing key = queue name).
    pub queue: String,
    connection: Connection,
    task: tokio::task::JoinHandle<()>,
}

impl Baseline {
    /// Declares `queue` (quorum, durable) and starts consuming it.
    ///
    /// # Errors
    /// The broker refused.
    pub async fn start(
        amqp_url: &str,
        queue: &str,
        sink_urls: Vec<String>,
        prefetch: u16,
    ) -> lapin::Result<Baseline> {
        let connection = Connection::connect(amqp_url, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        let mut args = FieldTable::default();
        args.insert(
            ShortString::from("x-queue-type"),
            AMQPValue::LongString("quorum".into()),
        );
        channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                args,
            )
            .await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| lapin::Error::from(std::io::Error::other(e)))?;
        let task = tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let http = http.clone();
                let urls = sink_urls.clone();
                tokio::spawn(async move {
                    let id = delivery
                        .properties
                        .message_id()
                        .as_ref()
                        .map(|s| s.as_str().to_owned())
                        .unwrap_or_default();
                    let body = bytes::Bytes::from(delivery.data);
                    join_all(urls.into_iter().map(|url| {
                        http.post(url)
                            .header("content-type", "application/json")
                            .header("webhook-id", id.as_str())
                            .body(body.clone())
                            .send()
                    }))
                    .await;
                    let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                });
            }
        });
        Ok(Baseline {
            queue: queue.to_owned(),
            connection,
            task,
        })
    }

    /// Stops consuming and deletes the queue.
    pub async fn stop(self) {
        self.task.abort();
        if let Ok(channel) = self.connection.create_channel().await {
            let _ = channel
                .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = self.connection.close(200, "done".into()).await;
    }
}
