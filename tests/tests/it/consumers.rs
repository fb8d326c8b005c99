//! Consumers and their keys over their whole life: when a key was last used, and what
//! deleting a consumer takes with it.

use reqwest::Method;
use serde_json::{Value, json};
use tests::{
    api::assert_problem,
    receiver::Receiver,
    system::{ADMIN_KEY, System},
};

use crate::{
    consumer_api::{WAIT, call, tenant, wait_recorded},
    system,
};

/// The `last_used_at` of `consumer`'s only key, read with the admin key.
async fn last_used(relay: &System, consumer: &str) -> Value {
    let (status, keys) = call(
        relay,
        ADMIN_KEY,
        Method::GET,
        &format!("/v1/consumers/{consumer}/keys"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{keys}");
    keys["data"][0]["last_used_at"].clone()
}

#[tokio::test]
async fn a_key_records_when_it_was_last_used_at_most_once_a_minute() {
    let relay = system().await;
    let key = tenant(&relay, "acme").await;
    assert_eq!(last_used(&relay, "acme").await, Value::Null, "not used yet");

    let (status, _) = call(&relay, &key, Method::GET, "/v1/subscriptions", None).await;
    assert_eq!(status, 200);
    // Written off the request's path: wait for it.
    let deadline = tokio::time::Instant::now() + WAIT;
    let first = loop {
        let at = last_used(&relay, "acme").await;
        if let Some(at) = at.as_str() {
            break at.to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "last_used_at never set"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(
        time::OffsetDateTime::parse(&first, &time::format_description::well_known::Rfc3339).is_ok(),
        "{first}"
    );

    // More uses within the minute write nothing more; a failed authentication is no use.
    for _ in 0..5 {
        let (status, _) = call(&relay, &key, Method::GET, "/v1/subscriptions", None).await;
        assert_eq!(status, 200);
    }
    let (status, _) = call(&relay, "rk_wrong", Method::GET, "/v1/subscriptions", None).await;
    assert_eq!(status, 401);
    // (Which uses are written is unit-tested with a clock of its own in consumer-api's
    // service::tenants; here: the time shown stays the first use's.)
    assert_eq!(last_used(&relay, "acme").await, Value::String(first));
    relay.stop().await;
}

#[tokio::test]
async fn deleting_a_consumer_takes_its_subscriptions_keys_and_records_or_refuses_without_force() {
    deleting_a_consumer(system().await).await;
}

/// Deleting a consumer against `relay` (its store SQLite or PostgreSQL): `force=false` refuses
/// and keeps everything; the default deletes its subscriptions (the dispatchers drop them),
/// keys, portal links and records.
pub(crate) async fn deleting_a_consumer(relay: System) {
    let key = tenant(&relay, "acme").await;
    let receiver = Receiver::start().await;
    let sub = relay
        .create_subscription(&receiver.url(), &["order.*"], Some("acme"))
        .await;
    let sub = sub["id"].as_str().unwrap().to_owned();
    for dispatcher in &relay.dispatcher_urls {
        relay
            .wait_for_metric(dispatcher, "relay_subscriptions_loaded", |v| v >= 1.0)
            .await;
    }
    let event_id = relay
        .publish_ok(&json!({"type": "order.created", "consumer": "acme", "data": {"n": 1}}))
        .await;
    receiver.wait_for(1, WAIT).await;
    wait_recorded(&relay, &event_id).await;
    let (status, link) = call(
        &relay,
        ADMIN_KEY,
        Method::POST,
        "/v1/consumers/acme/portal-sessions",
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 201, "{link}");

    // Refused while it has subscriptions when not forced; a bad value is a 400.
    let (status, body) = call(
        &relay,
        ADMIN_KEY,
        Method::DELETE,
        "/v1/consumers/acme?force=false",
        None,
    )
    .await;
    assert_problem(status, &body, 409, "in-use");
    let (status, body) = call(
        &relay,
        ADMIN_KEY,
        Method::DELETE,
        "/v1/consumers/acme?force=maybe",
        None,
    )
    .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("force")),
        "{body}"
    );
    let (status, _) = call(
        &relay,
        &key,
        Method::GET,
        &format!("/v1/subscriptions/{sub}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "nothing was deleted");

    // Deleted (force is the default): with its subscription, key, portal link and records.
    let (status, body) = call(
        &relay,
        ADMIN_KEY,
        Method::DELETE,
        "/v1/consumers/acme",
        None,
    )
    .await;
    assert_eq!(status, 204, "{body}");
    let (status, _) = call(&relay, &key, Method::GET, "/v1/subscriptions", None).await;
    assert_eq!(status, 401, "its key is revoked");
    for path in [
        "/v1/consumers/acme".to_owned(),
        format!("/v1/subscriptions/{sub}"),
        format!("/v1/subscriptions/{sub}/attempts"),
        format!("/v1/events/{event_id}"),
    ] {
        let (status, body) = call(&relay, ADMIN_KEY, Method::GET, &path, None).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    let (status, page) = call(&relay, ADMIN_KEY, Method::GET, "/v1/subscriptions", None).await;
    assert_eq!((status, page["data"].clone()), (200, json!([])), "{page}");
    // The link's landing page posts its token to `…/login`: as a browser would.
    let (portal, token) = link["url"].as_str().unwrap().split_once("/login/").unwrap();
    let opened = relay
        .http
        .post(format!("{portal}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(opened.status(), 410, "its portal link no longer opens");
    assert!(opened.text().await.unwrap().contains("not valid"));
    // The dispatchers were told: they drop the subscription.
    for dispatcher in &relay.dispatcher_urls {
        relay
            .wait_for_metric(dispatcher, "relay_subscriptions_loaded", |v| v == 0.0)
            .await;
    }
    let (status, _) = call(
        &relay,
        ADMIN_KEY,
        Method::DELETE,
        "/v1/consumers/acme",
        None,
    )
    .await;
    assert_eq!(status, 404);
    relay.stop().await;
}
