//! HTTP-ingested events reach exactly the subscriptions that match them, signed.

use std::time::Duration;

use serde_json::{Value, json};
use tests::receiver::{self, Behaviour, Receiver};

use crate::system;

const WAIT: Duration = Duration::from_secs(10);
/// How long to keep watching for a delivery that must not happen (or a duplicate).
const QUIET: Duration = Duration::from_millis(700);

#[tokio::test]
async fn an_event_is_delivered_once_signed_to_each_matching_subscription_only() {
    let relay = system().await;
    let (a, b, c) = (
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    );
    let sub_a = relay.subscribe(&a.url(), &["order.*"], None).await;
    let sub_b = relay
        .subscribe(&b.url(), &["order.created", "invoice.#"], None)
        .await;
    relay.subscribe(&c.url(), &["invoice.paid"], None).await;

    let id = relay
        .publish_ok(&json!({"type": "order.created", "data": {"order": 42}}))
        .await;

    for (receiver, sub) in [(&a, &sub_a), (&b, &sub_b)] {
        let got = receiver.wait_for(1, WAIT).await;
        assert_eq!(got.len(), 1);
        let request = &got[0];
        assert_eq!(request.headers["webhook-id"], id.as_str());
        assert!(
            receiver::verify(request, sub["secret"].as_str().unwrap()),
            "signature does not verify with the subscription's secret"
        );
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(body["id"], id.as_str());
        assert_eq!(body["type"], "order.created");
        assert_eq!(body["data"], json!({"order": 42}));
        assert!(body["occurred_at"].as_str().unwrap().ends_with('Z'));
    }
    // The other subscription's secret does not verify a delivery that was not for it.
    assert!(!receiver::verify(
        &a.received()[0],
        sub_b["secret"].as_str().unwrap()
    ));

    tokio::time::sleep(QUIET).await;
    assert_eq!(
        (a.count(), b.count(), c.count()),
        (1, 1, 0),
        "duplicates or a non-matching delivery"
    );
    relay.stop().await;
}

#[tokio::test]
async fn consumer_targeting_restricts_delivery_to_that_consumers_subscriptions() {
    let relay = system().await;
    let (acme, globex) = (Receiver::start().await, Receiver::start().await);
    relay.subscribe(&acme.url(), &["#"], Some("acme")).await;
    relay.subscribe(&globex.url(), &["#"], Some("globex")).await;

    relay
        .publish_ok(&json!({"type": "user.created", "consumer": "acme", "data": {}}))
        .await;
    acme.wait_for(1, WAIT).await;
    tokio::time::sleep(QUIET).await;
    assert_eq!((acme.count(), globex.count()), (1, 0));

    relay
        .publish_ok(&json!({"type": "user.created", "data": {}}))
        .await;
    acme.wait_for(2, WAIT).await;
    globex.wait_for(1, WAIT).await;
    assert_eq!((acme.count(), globex.count()), (2, 1));
    relay.stop().await;
}

#[tokio::test]
async fn a_producer_id_becomes_the_webhook_id_and_batches_keep_their_order() {
    let relay = system().await;
    let hook = Receiver::start().await;
    relay.subscribe(&hook.url(), &["batch.*"], None).await;

    let response = relay
        .http
        .post(format!("{}/v1/events/batch", relay.ingest_url))
        .bearer_auth(tests::system::PUBLISHER_KEY)
        .json(&json!([
            {"id": "ord-1", "type": "batch.one", "data": 1},
            {"type": "batch.two", "data": 2},
            {"id": "ord-3", "type": "batch.three", "data": 3}
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let ids: Vec<String> =
        serde_json::from_value(response.json::<Value>().await.unwrap()["ids"].clone()).unwrap();
    assert_eq!(ids.len(), 3);
    assert_eq!((ids[0].as_str(), ids[2].as_str()), ("ord-1", "ord-3"));
    assert!(ids[1].starts_with("evt_"));

    let got = hook.wait_for(3, WAIT).await;
    let mut delivered: Vec<String> = got
        .iter()
        .map(|r| r.headers["webhook-id"].to_str().unwrap().to_owned())
        .collect();
    delivered.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(delivered, expected);
    relay.stop().await;
}

#[tokio::test]
async fn a_failed_delivery_is_dead_lettered_with_its_reason_and_others_still_succeed() {
    // One short retry, then the dead letter, which the recorder lists at /v1/dead-letters.
    let relay = tests::system::System::start_with(
        tests::system::Options::new(tests::broker::shared_amqp_url())
            .set("RELAY__DISPATCH__RETRY_SCHEDULE", "100ms"),
    )
    .await;
    let broken = Receiver::start_with(Behaviour::Status(500)).await;
    let healthy = Receiver::start().await;
    let sub_broken = relay.subscribe(&broken.url(), &["#"], None).await;
    relay.subscribe(&healthy.url(), &["#"], None).await;

    let id = relay
        .publish_ok(&json!({"type": "thing.happened", "data": {}}))
        .await;
    healthy.wait_for(1, WAIT).await;
    broken.wait_for(1, WAIT).await;

    let deadline = tokio::time::Instant::now() + WAIT;
    let dead = loop {
        let page: Value = relay
            .api(reqwest::Method::GET, "/v1/dead-letters")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(dead) = page["data"].as_array().and_then(|d| d.first()).cloned() {
            break dead;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no dead letter: {page}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(dead["event_id"], id.as_str());
    assert_eq!(dead["subscription_id"], sub_broken["id"]);
    assert_eq!(dead["last_status"], 500);
    assert!(
        dead["last_error"].as_str().unwrap().contains("500"),
        "{dead}"
    );
    assert_eq!(dead["event"]["id"], id.as_str());
    relay.stop().await;
}
