//! While the broker is away, ingest answers 503 with Retry-After, never 202; it recovers
//! without a restart.

use std::time::Duration;

use serde_json::json;
use tests::{broker::PrivateBroker, receiver::Receiver, system::System};

#[tokio::test]
async fn ingest_answers_503_while_the_broker_is_down_and_202_after_it_returns() {
    let broker = PrivateBroker::start().await;
    let relay = System::start(&broker.amqp_url()).await;
    let hook = Receiver::start().await;
    relay.subscribe(&hook.url(), &["#"], None).await;
    let before = relay.publish_ok(&json!({"type": "outage.before"})).await;

    broker.stop_app().await;
    let response = relay.publish(&json!({"type": "outage.during"})).await;
    assert_eq!(
        response.status(),
        503,
        "an event was accepted while the broker was stopped"
    );
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let ready = relay
        .http
        .get(format!("{}/readyz", relay.ingest_url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        ready.status(),
        503,
        "ingest claims readiness without a broker"
    );

    broker.start_app().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let after = loop {
        let response = relay.publish(&json!({"type": "outage.after"})).await;
        if response.status() == 202 {
            let body: serde_json::Value = response.json().await.unwrap();
            break body["id"].as_str().unwrap().to_owned();
        }
        assert_eq!(response.status(), 503);
        assert!(
            tokio::time::Instant::now() < deadline,
            "ingest did not recover"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // Both accepted events reach the subscriber; the dispatcher recovered too.
    let got = hook.wait_for(2, Duration::from_secs(30)).await;
    let ids: Vec<String> = got
        .iter()
        .map(|r| r.headers["webhook-id"].to_str().unwrap().to_owned())
        .collect();
    assert!(ids.contains(&before) && ids.contains(&after), "{ids:?}");
    relay.stop().await;
}
