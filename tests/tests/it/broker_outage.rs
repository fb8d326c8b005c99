//! While the broker is away, ingest answers 503 with Retry-After, never 202; it recovers
//! without a restart. A 503 whose event may exist all the same says so.

use std::time::Duration;

use serde_json::json;
use tests::{
    api::answer, broker::PrivateBroker, freeze::FreezingProxy, process::ApiProcess,
    receiver::Receiver, system::System,
};

#[tokio::test]
async fn ingest_answers_503_while_the_broker_is_down_and_202_after_it_returns() {
    let broker = PrivateBroker::start().await;
    let relay = System::start(&broker.amqp_url()).await;
    let hook = Receiver::start().await;
    relay.subscribe(&hook.url(), &["#"], None).await;
    let before = relay.publish_ok(&json!({"type": "outage.before"})).await;

    broker.stop_app().await;
    // Not accepted while the broker is stopped.
    let refused = answer(relay.publish(&json!({"type": "outage.during"})).await).await;
    refused.assert_problem(503, "broker-unavailable");
    assert_eq!(refused.headers["retry-after"], "1");
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

#[tokio::test]
async fn a_503_whose_event_may_be_stored_says_so_and_a_retry_keeps_the_webhook_id() {
    let relay = System::start(&tests::broker::shared_amqp_url()).await;
    let hook = Receiver::start().await;
    relay.subscribe(&hook.url(), &["maybe.*"], None).await;
    // A second ingest whose connection goes through a relay that, once told, passes its frames
    // to the broker (which stores and routes the event) but none of the broker's back: the
    // confirm never comes. That is the connection-lost-mid-publish case, produced by design
    // (a zero publish timeout was not: a confirm within the timer's first tick still came).
    let proxy = FreezingProxy::start(&tests::broker::shared_amqp_url()).await;
    let mut impatient = relay.settings.ingest.clone();
    impatient.amqp.url = proxy.url().to_owned();
    impatient.process.publish_timeout = Duration::from_secs(1);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (trigger, shutdown) = relay_shared::shutdown::channel();
    let task = tokio::spawn(relay::ingest::run(
        impatient,
        listener,
        prometheus::Registry::new(),
        shutdown,
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while relay
        .http
        .get(format!("{url}/readyz"))
        .send()
        .await
        .map_or(true, |r| r.status() != 200)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "second ingest not ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    proxy.hold_answers();
    let response = relay
        .http
        .post(format!("{url}/v1/events"))
        .bearer_auth(tests::system::PUBLISHER_KEY)
        .json(&json!({"type": "maybe.stored"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        problem["type"], "urn:relay:problem:broker-unavailable",
        "{problem}"
    );
    assert_eq!(problem["outcome"], "unknown", "{problem}");
    let id = problem["ids"][0].as_str().expect("the tried id").to_owned();

    // The producer retries with that id (through the usual ingest): accepted.
    let retried = relay
        .publish_ok(&json!({"id": id, "type": "maybe.stored"}))
        .await;
    assert_eq!(retried, id);
    // Both copies exist, and the receiver sees one webhook-id.
    let got = hook.wait_for(2, Duration::from_secs(30)).await;
    assert_eq!(
        got.len(),
        2,
        "the stored copy or the retry was not delivered"
    );
    assert!(
        got.iter()
            .all(|r| r.header("webhook-id") == Some(id.as_str())),
        "a retry changed the webhook-id"
    );
    // Closing the relay's connections lets the second ingest stop without waiting for answers.
    drop(proxy);
    trigger.trigger();
    task.await.unwrap().unwrap();
    relay.stop().await;
}

/// A subscription created while consumer-api has no broker connection reaches the dispatchers
/// as soon as consumer-api is connected again (its resync), not at their next directory
/// refresh a minute later.
#[tokio::test]
async fn a_change_committed_while_consumer_api_had_no_broker_reaches_the_dispatchers_when_it_returns()
 {
    let relay = System::start(&tests::broker::shared_amqp_url()).await;
    // A second consumer-api on the same store whose broker connection goes through a relay.
    let proxy = FreezingProxy::start(&tests::broker::shared_amqp_url()).await;
    let mut env = relay.env.clone();
    for (key, value) in &mut env {
        if key == "RELAY__AMQP__URL" {
            proxy.url().clone_into(value);
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listen = listener.local_addr().unwrap().to_string();
    drop(listener);
    let _second = ApiProcess::start(&env, &listen).await;
    let dispatcher = &relay.dispatcher_urls[0];
    let loaded = || relay.metric(dispatcher, "relay_subscriptions_loaded");
    assert_eq!(loaded().await, Some(0.0));

    // The broker goes away for the second consumer-api; a subscription is created through it.
    proxy.refuse();
    let hook = Receiver::start().await;
    let created = relay
        .http
        .post(format!("http://{listen}/v1/subscriptions"))
        .bearer_auth(tests::system::ADMIN_KEY)
        .json(&json!({"url": hook.url(), "event_types": ["resync.*"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201, "committed without a broker");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        loaded().await,
        Some(0.0),
        "the dispatcher heard of a change nobody could tell it"
    );

    // Back: the dispatcher loads it within seconds (its own refresh is a minute away).
    proxy.accept();
    let back = tokio::time::Instant::now();
    relay
        .wait_for_metric(dispatcher, "relay_subscriptions_loaded", |v| v >= 1.0)
        .await;
    assert!(back.elapsed() < Duration::from_secs(10));
    relay.publish_ok(&json!({"type": "resync.done"})).await;
    assert_eq!(hook.wait_for(1, Duration::from_secs(30)).await.len(), 1);
    relay.stop().await;
}
