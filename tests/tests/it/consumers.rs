//! Consumers and their keys over their whole life: when a key was last used, and what
//! deleting a consumer takes with it.

use reqwest::Method;
use serde_json::Value;
use tests::system::ADMIN_KEY;

use crate::{
    consumer_api::{WAIT, call, tenant},
    system,
};

/// The `last_used_at` of `consumer`'s only key, read with the admin key.
async fn last_used(relay: &tests::system::System, consumer: &str) -> Value {
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
