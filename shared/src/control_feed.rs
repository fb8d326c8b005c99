//! Following `relay.control`: an exclusive, auto-deleted queue per process bound to the
//! fanout exchange, consumed without acks (a notification missed while disconnected is made
//! up by the full reload asked for after every bind). Ready only while the consumer runs.

use futures_util::StreamExt;
use lapin::{
    options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};
use tokio::sync::watch;

use crate::{
    control::ControlMessage,
    ops::Readiness,
    session::{self as broker, Session},
    shutdown::Shutdown,
    topology::Topology,
};

/// Readiness condition name for the control-notification consumer.
pub const READY_CONTROL: &str = "control";

/// Follows `relay.control` for each broker session until `shutdown`: calls `on_bound` once the
/// queue is bound (reload snapshots then: no change can fall between snapshot and
/// notification) and `on_message` for each notification.
pub async fn follow(
    mut sessions: watch::Receiver<Option<Session>>,
    topology: Topology,
    consumer_tag: &'static str,
    on_bound: impl Fn(),
    on_message: impl Fn(ControlMessage),
    readiness: Readiness,
    mut shutdown: Shutdown,
) {
    readiness.not_ready(READY_CONTROL, "waiting for the broker");
    while let Some(session) = broker::next_session(&mut sessions, &mut shutdown).await {
        let mut stopping = shutdown.clone();
        let followed = stopping
            .unless_stopped(follow_session(
                &session,
                &topology,
                consumer_tag,
                &on_bound,
                &on_message,
                &readiness,
                &mut shutdown,
            ))
            .await;
        readiness.not_ready(READY_CONTROL, "consumer stopped");
        match followed {
            None => return,
            Some(Err(e)) => tracing::warn!(error = %e, "control notifications interrupted"),
            Some(Ok(())) => {}
        }
        if !broker::await_replacement(&mut sessions, &mut shutdown).await {
            return;
        }
    }
}

async fn follow_session(
    session: &Session,
    topology: &Topology,
    consumer_tag: &'static str,
    on_bound: &impl Fn(),
    on_message: &impl Fn(ControlMessage),
    readiness: &Readiness,
    shutdown: &mut Shutdown,
) -> lapin::Result<()> {
    let channel = session.create_channel().await?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.name().clone(),
            topology.control.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue.name().clone(),
            consumer_tag.into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    on_bound();
    readiness.ready(READY_CONTROL);
    loop {
        let delivery = tokio::select! {
            delivery = consumer.next() => delivery,
            () = shutdown.wait() => return Ok(()),
        };
        match delivery {
            Some(Ok(delivery)) => {
                match ControlMessage::decode(&delivery.data, &delivery.properties) {
                    Ok(message) => {
                        tracing::debug!(?message, "control notification");
                        on_message(message);
                    }
                    Err(e) => tracing::error!(error = %e, "unreadable control message ignored"),
                }
            }
            Some(Err(e)) => return Err(e),
            None => return Ok(()),
        }
    }
}
