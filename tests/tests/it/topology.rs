//! The first start on a broker creates the topology and waits `amqp.new_topology_settle`
//! before taking traffic (a quorum queue killed within about 2 s of its creation can come back
//! empty); later starts find it and do not wait. A message Relay must not lose is refused when
//! no queue takes it.

use std::time::{Duration, Instant};

use lapin::{
    ExchangeKind,
    options::{ExchangeDeclareOptions, QueueDeclareOptions},
    types::FieldTable,
};
use relay_shared::{
    amqp::{self, AmqpError},
    attempt::AttemptRecord,
    control::ControlMessage,
};
use tests::system::{Options, System};

use crate::shared_amqp_url;

#[tokio::test]
async fn a_new_topology_settles_before_traffic_and_an_existing_one_does_not_wait() {
    let prefix = format!(
        "settle{}.",
        relay_shared::ids::new_id("")
            .to_lowercase()
            .replace('_', "")
    );
    let started = Instant::now();
    let first = System::start_with(
        Options::new(shared_amqp_url())
            .set("RELAY__AMQP__PREFIX", &prefix)
            .set("RELAY__AMQP__NEW_TOPOLOGY_SETTLE", "2s"),
    )
    .await;
    let first_ready = started.elapsed();
    assert!(
        first_ready >= Duration::from_secs(2),
        "ready {first_ready:?} after creating the topology, before the 2 s settle"
    );
    first.stop().await;

    // The topology exists now: a wait of a minute would exceed System's 30 s readiness bound.
    let second = System::start_with(
        Options::new(shared_amqp_url())
            .set("RELAY__AMQP__PREFIX", &prefix)
            .set("RELAY__AMQP__NEW_TOPOLOGY_SETTLE", "60s"),
    )
    .await;
    second.stop().await;
}

/// A queue deleted by hand (or a binding missing) must not turn a hand-off, an attempt record
/// or an event into a confirmed publish that nothing holds: such messages are published
/// `mandatory`, come back, and the publish fails. A control notification, which no process may
/// be listening for, is confirmed either way.
#[tokio::test]
async fn a_message_no_queue_takes_is_refused_and_a_control_notification_is_not() {
    let connection =
        lapin::Connection::connect(&shared_amqp_url(), lapin::ConnectionProperties::default())
            .await
            .unwrap();
    let channel = amqp::confirm_channel(&connection).await.unwrap();
    let name = format!("mandatory-{}", relay_shared::ids::new_id(""));
    let publish = |queue: String, message: amqp::Outgoing| {
        let channel = channel.clone();
        async move {
            amqp::publish_confirmed(&channel, "", &queue, message, Duration::from_secs(30)).await
        }
    };

    let refused = publish(name.clone(), AttemptRecord::encode_batch(&[])).await;
    assert!(
        matches!(refused, Err(AmqpError::Unroutable)),
        "a record for a missing queue was {refused:?}"
    );
    channel
        .queue_declare(
            name.as_str().into(),
            QueueDeclareOptions {
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    publish(name.clone(), AttemptRecord::encode_batch(&[]))
        .await
        .expect("the queue exists now");

    // A fanout exchange with no queue bound: nobody is listening, which is no error.
    let control = format!("{name}.control");
    channel
        .exchange_declare(
            control.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                auto_delete: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let message = ControlMessage::Delete {
        id: String::from("sub_nobody"),
    }
    .encode();
    amqp::publish_confirmed(&channel, &control, "", message, Duration::from_secs(30))
        .await
        .expect("a control notification nobody listens to is confirmed");
    let _ = connection.close(200, "done".into()).await;
}
