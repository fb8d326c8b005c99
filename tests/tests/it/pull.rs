//! The pull API: a consumer reads every event it may see, in order of acceptance, with a
//! stable cursor — over 1,000 events, no gap and no duplicate.

use std::collections::HashSet;

use reqwest::Method;
use serde_json::{Value, json};
use tests::system::{ADMIN_KEY, PUBLISHER_KEY, System};

use crate::{
    consumer_api::{call_at, tenant, wait_recorded_at},
    system,
};

/// Publishes `events` in batches of 100; returns their ids in order.
pub(crate) async fn publish_all(relay: &System, events: &[Value]) -> Vec<String> {
    let mut ids = Vec::with_capacity(events.len());
    for chunk in events.chunks(100) {
        let response = relay
            .http
            .post(format!("{}/v1/events/batch", relay.ingest_url))
            .bearer_auth(PUBLISHER_KEY)
            .json(&chunk)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.unwrap();
        ids.extend(
            body["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|id| id.as_str().unwrap().to_owned()),
        );
    }
    ids
}

/// Pages through `/v1/events` at `base` with `key`; returns the ids in the order read.
pub(crate) async fn pull_all(
    relay: &System,
    base: &str,
    key: &str,
    query: &str,
    limit: u32,
) -> Vec<String> {
    let mut ids = Vec::new();
    let mut after = String::new();
    let mut last_sequence = 0;
    loop {
        let (status, page) = call_at(
            relay,
            base,
            key,
            Method::GET,
            &format!("/v1/events?limit={limit}&after={after}{query}"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{page}");
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= limit as usize);
        for item in data {
            let sequence = item["sequence"].as_i64().unwrap();
            assert!(sequence > last_sequence, "sequences increase");
            last_sequence = sequence;
            ids.push(item["event"]["id"].as_str().unwrap().to_owned());
        }
        after = page["next_cursor"].as_str().unwrap().to_owned();
        if !page["has_more"].as_bool().unwrap() {
            // Asking again from the returned cursor gives nothing new: the end is stable.
            let (_, again) = call_at(
                relay,
                base,
                key,
                Method::GET,
                &format!("/v1/events?after={after}{query}"),
                None,
            )
            .await;
            assert_eq!(again["data"], json!([]));
            assert_eq!(again["next_cursor"], after.as_str());
            return ids;
        }
    }
}

#[tokio::test]
async fn a_consumer_pulls_1000_events_in_order_without_gap_or_duplicate() {
    let relay = system().await;
    let acme = tenant(&relay, "acme").await;
    // A disabled subscription is enough to say which unnamed events acme wants.
    let (status, _) = call_at(
        &relay,
        &relay.api_url,
        &acme,
        Method::POST,
        "/v1/subscriptions",
        Some(
            json!({"url": "http://127.0.0.1:9/pull", "event_types": ["pull.*"], "enabled": false}),
        ),
    )
    .await;
    assert_eq!(status, 201);

    let events: Vec<Value> = (0..1000)
        .map(|i| match i % 5 {
            0 | 1 => json!({"type": "pull.unnamed", "data": {"i": i}}),
            2 => json!({"type": "pull.named", "consumer": "acme", "data": {"i": i}}),
            3 => json!({"type": "other.named", "consumer": "acme", "data": {"i": i}}),
            _ => json!({"type": "pull.foreign", "consumer": "globex", "data": {"i": i}}),
        })
        .collect();
    let ids = publish_all(&relay, &events).await;
    wait_recorded_at(&relay, &relay.api_url, ids.last().unwrap()).await;

    let expected: Vec<String> = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 5 != 4)
        .map(|(_, id)| id.clone())
        .collect();
    let pulled = pull_all(&relay, &relay.api_url, &acme, "", 37).await;
    assert_eq!(pulled.len(), 800);
    assert_eq!(
        pulled.iter().collect::<HashSet<_>>().len(),
        800,
        "duplicates"
    );
    assert_eq!(
        pulled, expected,
        "every visible event once, in order of acceptance"
    );

    // The admin sees everything; `types` filters.
    let all = pull_all(&relay, &relay.api_url, ADMIN_KEY, "", 1000).await;
    assert_eq!(all, ids);
    let named = pull_all(
        &relay,
        &relay.api_url,
        &acme,
        "&types=other.*,pull.named",
        100,
    )
    .await;
    assert_eq!(named.len(), 400);
    let (status, problem) = call_at(
        &relay,
        &relay.api_url,
        &acme,
        Method::GET,
        "/v1/events?limit=1001",
        None,
    )
    .await;
    assert_eq!((status, problem["field"].as_str()), (400, Some("limit")));
    let (status, problem) = call_at(
        &relay,
        &relay.api_url,
        &acme,
        Method::GET,
        "/v1/events?after=evt_x",
        None,
    )
    .await;
    assert_eq!((status, problem["field"].as_str()), (400, Some("after")));
    relay.stop().await;
}

#[tokio::test]
async fn events_published_over_amqp_are_recorded_and_invalid_ones_skipped() {
    let relay = system().await;
    let exchange = format!("{}events", relay.settings.amqp.prefix);
    let url = &relay.settings.amqp.url;
    tests::amqp::publish(
        url,
        &exchange,
        b"not an envelope",
        lapin::BasicProperties::default(),
    )
    .await;
    let body = br#"{"type": "amqp.direct", "data": {"n": 1}}"#;
    tests::amqp::publish(url, &exchange, body, lapin::BasicProperties::default()).await;
    // Without an id, the event gets the id every Relay process derives from its content.
    let id = relay_shared::envelope::content_id(body, None);
    wait_recorded_at(&relay, &relay.api_url, &id).await;
    let (_, page) = call_at(
        &relay,
        &relay.api_url,
        ADMIN_KEY,
        Method::GET,
        "/v1/events",
        None,
    )
    .await;
    let data = page["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "the invalid message is not recorded: {page}");
    assert_eq!(data[0]["event"]["type"], "amqp.direct");
    assert_eq!(data[0]["event"]["id"], id.as_str());
    relay
        .wait_for_metric(
            &relay.api_url,
            "relay_api_recorded_total{feed=\"archive\",outcome=\"unreadable\"}",
            |v| v >= 1.0,
        )
        .await;
    relay.stop().await;
}
