//! The store on PostgreSQL end to end: two consumer-api instances on one database serve the
//! same subscriptions and together record the archive (competing consumers) without a gap
//! or a duplicate in the pull API's order.

use std::collections::HashSet;

use reqwest::Method;
use serde_json::{Value, json};
use tests::{
    broker::shared_amqp_url,
    postgres::fresh_database,
    receiver::Receiver,
    system::{ADMIN_KEY, Options, System},
};

use crate::{
    consumer_api::{WAIT, call_at, wait_recorded_at},
    pull::{publish_all, pull_all},
};

#[tokio::test]
async fn two_consumer_api_instances_work_side_by_side_on_one_postgresql() {
    let database = fresh_database().await;
    let relay = System::start_with(
        Options::new(shared_amqp_url()).set("RELAY__API__DATABASE_URL", &database),
    )
    .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let second = format!("http://{}", listener.local_addr().unwrap());
    let (trigger, shutdown) = relay_shared::shutdown::channel();
    let task = tokio::spawn(consumer_api::run(
        relay.settings.api.clone(),
        listener,
        prometheus::Registry::new(),
        shutdown,
    ));

    // Created through the first, seen and changed through the second.
    let hook = Receiver::start().await;
    let sub = relay.subscribe(&hook.url(), &["pg.*"], None).await;
    let id = sub["id"].as_str().unwrap();
    let (status, got) = call_at(
        &relay,
        &second,
        ADMIN_KEY,
        Method::GET,
        &format!("/v1/subscriptions/{id}"),
        None,
    )
    .await;
    assert_eq!(
        (status, got["url"].as_str()),
        (200, Some(hook.url().as_str())),
        "{got}"
    );
    let (status, _) = call_at(
        &relay,
        &second,
        ADMIN_KEY,
        Method::PATCH,
        &format!("/v1/subscriptions/{id}"),
        Some(json!({"description": "via the second"})),
    )
    .await;
    assert_eq!(status, 200);
    let (_, got) = call_at(
        &relay,
        &relay.api_url,
        ADMIN_KEY,
        Method::GET,
        &format!("/v1/subscriptions/{id}"),
        None,
    )
    .await;
    assert_eq!(got["description"], "via the second");

    // Both recorders consume the archive; the pull order has no gap and no duplicate.
    let events: Vec<Value> = (0..300)
        .map(|i| json!({"type": "pg.event", "data": {"i": i}}))
        .collect();
    let ids = publish_all(&relay, &events).await;
    hook.wait_for(300, WAIT).await;
    for base in [&relay.api_url, &second] {
        wait_recorded_at(&relay, base, ids.last().unwrap()).await;
    }
    // Every event recorded (by one instance or the other) before reading.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let all = pull_all(&relay, &second, ADMIN_KEY, "", 1000).await;
        if all.len() == ids.len() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {} recorded",
            all.len(),
            ids.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let first_view = pull_all(&relay, &relay.api_url, ADMIN_KEY, "", 41).await;
    let second_view = pull_all(&relay, &second, ADMIN_KEY, "", 29).await;
    assert_eq!(first_view, second_view);
    assert_eq!(
        first_view.iter().collect::<HashSet<_>>(),
        ids.iter().collect::<HashSet<_>>()
    );
    assert_eq!(first_view.len(), ids.len(), "no duplicate");

    // The delivery log is shared as well.
    let (_, attempts) = call_at(
        &relay,
        &second,
        ADMIN_KEY,
        Method::GET,
        &format!("/v1/subscriptions/{id}/attempts?outcome=success&limit=1000"),
        None,
    )
    .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut count = attempts["data"].as_array().map_or(0, Vec::len);
    while count < 300 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{count} attempts recorded"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let (_, attempts) = call_at(
            &relay,
            &relay.api_url,
            ADMIN_KEY,
            Method::GET,
            &format!("/v1/subscriptions/{id}/attempts?outcome=success&limit=1000"),
            None,
        )
        .await;
        count = attempts["data"].as_array().map_or(0, Vec::len);
    }

    trigger.trigger();
    task.await.unwrap().unwrap();
    relay.stop().await;
}

#[tokio::test]
async fn deleting_a_consumer_on_postgresql_takes_everything_of_its() {
    let database = fresh_database().await;
    crate::consumers::deleting_a_consumer(
        System::start_with(
            Options::new(shared_amqp_url()).set("RELAY__API__DATABASE_URL", &database),
        )
        .await,
    )
    .await;
}
