//! The bare baseline, run as its own process (`relay-bench-bare`) so that its CPU time is
//! counted apart from the load generator's: the fastest this design could be with none of
//! Relay's features.
//!
//! - an HTTP front (hyper): `POST /v1/events` and `POST /v1/events/batch` publish each event,
//!   persistent, to a quorum queue on one confirm channel and answer 202 once the broker
//!   confirmed: no envelope validation, no auth, no metrics, no archive copy;
//! - a lapin consumer of that queue with Relay's prefetch that POSTs each message to every
//!   sink URL with a pooled reqwest client and acks once every POST answered: no signing,
//!   no directory, no attempt records.
//!
//! Producers may also publish to the queue straight over AMQP (the AMQP baseline).

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use super::sink::status;

use bytes::Bytes;
use futures_util::{StreamExt, future::join_all};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable, ShortString},
};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::TcpListener;

/// Command-line options of `relay-bench-bare`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "relay-bench-bare",
    about = "The bare baseline of relay-bench: HTTP front → quorum queue → POST → ack."
)]
pub struct BareOptions {
    /// Broker URL.
    #[arg(long)]
    pub amqp_url: String,
    /// Queue to declare (quorum), publish to and consume.
    #[arg(long)]
    pub queue: String,
    /// Consumer prefetch.
    #[arg(long, default_value_t = 256)]
    pub prefetch: u16,
    /// A sink URL every message is POSTed to; repeat for fan-out.
    #[arg(long = "sink", required = true)]
    pub sinks: Vec<String>,
    /// Where the HTTP front listens (it answers `/readyz` once consuming).
    #[arg(long)]
    pub listen: SocketAddr,
}

/// Only the id is read from an event: it becomes the message id, hence the `webhook-id`.
#[derive(Deserialize)]
struct IdOnly<'a> {
    #[serde(borrow)]
    id: &'a str,
}

/// Declares the queue, starts consuming and serves the HTTP front until killed.
///
/// # Errors
/// The broker or the listen address could not be reached.
pub async fn run(opts: BareOptions) -> anyhow::Result<()> {
    let connection = Connection::connect(&opts.amqp_url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(
            opts.queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await?;
    channel
        .basic_qos(opts.prefetch, BasicQosOptions::default())
        .await?;
    let consumer = channel
        .basic_consume(
            opts.queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let publisher = connection.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(60))
        .build()?;
    tokio::spawn(consume(consumer, http, opts.sinks.clone()));
    let listener = TcpListener::bind(opts.listen).await?;
    let front = Arc::new(Front {
        channel: publisher,
        queue: opts.queue,
    });
    super::sink::serve_http1(listener, front, handle).await;
    drop(connection);
    Ok(())
}

async fn consume(mut consumer: lapin::Consumer, http: reqwest::Client, sinks: Vec<String>) {
    let sinks: Arc<[String]> = sinks.into();
    while let Some(Ok(delivery)) = consumer.next().await {
        let http = http.clone();
        let sinks = Arc::clone(&sinks);
        tokio::spawn(async move {
            let id = delivery
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default();
            let body = Bytes::from(delivery.data);
            join_all(sinks.iter().map(|url| {
                http.post(url.as_str())
                    .header("content-type", "application/json")
                    .header("webhook-id", id.as_str())
                    .body(body.clone())
                    .send()
            }))
            .await;
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
        });
    }
}

struct Front {
    channel: Channel,
    queue: String,
}

impl Front {
    async fn publish(&self, event: &[u8]) -> bool {
        let Ok(IdOnly { id }) = serde_json::from_slice::<IdOnly<'_>>(event) else {
            return false;
        };
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(id.into());
        let Ok(confirm) = self
            .channel
            .basic_publish(
                "".into(),
                self.queue.as_str().into(),
                BasicPublishOptions::default(),
                event,
                properties,
            )
            .await
        else {
            return false;
        };
        matches!(confirm.await, Ok(Confirmation::Ack(None)))
    }
}

async fn handle(
    front: Arc<Front>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    if parts.uri.path() == "/readyz" {
        return Ok(status(StatusCode::OK));
    }
    let Ok(body) = body
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
    else {
        return Ok(status(StatusCode::BAD_REQUEST));
    };
    let accepted = match parts.uri.path() {
        "/v1/events" => front.publish(&body).await,
        "/v1/events/batch" => match serde_json::from_slice::<Vec<&RawValue>>(&body) {
            Ok(events) => join_all(events.iter().map(|e| front.publish(e.get().as_bytes())))
                .await
                .into_iter()
                .all(|ok| ok),
            Err(_) => false,
        },
        _ => return Ok(status(StatusCode::NOT_FOUND)),
    };
    Ok(status(if accepted {
        StatusCode::ACCEPTED
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }))
}
