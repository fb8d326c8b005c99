//! Producers may publish straight to the events exchange over AMQP.

use std::time::Duration;

use serde_json::{Value, json};
use tests::{amqp, receiver::Receiver};

use crate::system;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn an_amqp_published_event_is_delivered_like_an_http_one() {
    let relay = system().await;
    let hook = Receiver::start().await;
    let sub = relay.subscribe(&hook.url(), &["order.*"], None).await;
    let exchange = format!("{}events", relay.settings.amqp.prefix);

    let body = json!({"id": "amqp-1", "type": "order.shipped", "data": {"n": 1}});
    amqp::publish(
        &relay.settings.amqp.url,
        &exchange,
        body.to_string().as_bytes(),
        lapin::BasicProperties::default().with_delivery_mode(2),
    )
    .await;

    let got = hook.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].headers["webhook-id"], "amqp-1");
    assert!(tests::receiver::verify(
        &got[0],
        sub["secret"].as_str().unwrap()
    ));
    let delivered: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(delivered["type"], "order.shipped");
    assert_eq!(delivered["data"], json!({"n": 1}));
    relay.stop().await;
}

#[tokio::test]
async fn an_amqp_event_without_id_keeps_one_id_across_deliveries() {
    let relay = system().await;
    let hook = Receiver::start().await;
    relay.subscribe(&hook.url(), &["#"], None).await;
    let exchange = format!("{}events", relay.settings.amqp.prefix);
    let body = json!({"type": "order.shipped", "data": {}}).to_string();
    let props = lapin::BasicProperties::default().with_message_id("producer-message-7".into());
    amqp::publish(&relay.settings.amqp.url, &exchange, body.as_bytes(), props).await;
    let got = hook.wait_for(1, WAIT).await;
    assert_eq!(got[0].headers["webhook-id"], "producer-message-7");
    relay.stop().await;
}

#[tokio::test]
async fn a_malformed_amqp_message_is_parked_with_its_reason_and_does_not_block_the_queue() {
    let relay = system().await;
    let hook = Receiver::start().await;
    relay.subscribe(&hook.url(), &["#"], None).await;
    let url = relay.settings.amqp.url.clone();
    let exchange = format!("{}events", relay.settings.amqp.prefix);
    let invalid = format!("{}invalid", relay.settings.amqp.prefix);

    amqp::publish(
        &url,
        &exchange,
        b"this is not json",
        lapin::BasicProperties::default(),
    )
    .await;
    amqp::publish(
        &url,
        &exchange,
        br#"{"type":"Not A Type"}"#,
        lapin::BasicProperties::default(),
    )
    .await;
    amqp::publish(
        &url,
        &exchange,
        br#"{"type":"a.b","ordering_key":"not/a key"}"#,
        lapin::BasicProperties::default(),
    )
    .await;
    amqp::publish(
        &url,
        &exchange,
        br#"{"type":"still.flowing","data":1}"#,
        lapin::BasicProperties::default(),
    )
    .await;

    let got = hook.wait_for(1, WAIT).await;
    assert_eq!(
        got.len(),
        1,
        "the valid event after the bad ones was not delivered"
    );

    let first = amqp::get_one(&url, &invalid, WAIT)
        .await
        .expect("first invalid message parked");
    assert_eq!(first.body, b"this is not json");
    assert!(
        first
            .header("x-relay-invalid-reason")
            .unwrap()
            .contains("malformed JSON")
    );
    let second = amqp::get_one(&url, &invalid, WAIT)
        .await
        .expect("second invalid message parked");
    let reason = second.header("x-relay-invalid-reason").unwrap();
    assert!(reason.contains("type"), "{reason}");
    let third = amqp::get_one(&url, &invalid, WAIT)
        .await
        .expect("third invalid message parked");
    let reason = third.header("x-relay-invalid-reason").unwrap();
    assert!(reason.contains("ordering_key"), "{reason}");
    assert!(
        amqp::get_one(&url, &invalid, Duration::from_millis(300))
            .await
            .is_none()
    );

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(hook.count(), 1);
    relay.stop().await;
}
