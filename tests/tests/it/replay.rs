//! Replay, redrive and rotation: targeted deliveries through the dispatchers' `redeliver`
//! queue, and the double signature during a rotation's grace period.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use tests::{
    broker::shared_amqp_url,
    receiver::{self, Behaviour, Receiver},
    system::{ADMIN_KEY, Options, System},
};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::{
    consumer_api::{WAIT, call, wait_recorded},
    system,
};

fn now() -> String {
    OffsetDateTime::now_utc().format(&Rfc3339).unwrap()
}

#[tokio::test]
async fn replay_re_delivers_exactly_the_chosen_window_to_that_subscription() {
    let relay = system().await;
    let other = Receiver::start().await;
    relay.subscribe(&other.url(), &["#"], None).await;

    let mut before = Vec::new();
    for i in 0..3 {
        before.push(
            relay
                .publish_ok(&json!({"type": "replay.before", "data": i}))
                .await,
        );
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    let since = now();
    let mut inside = Vec::new();
    for i in 0..4 {
        inside.push(
            relay
                .publish_ok(&json!({"type": "replay.inside", "data": i}))
                .await,
        );
    }
    relay
        .publish_ok(&json!({"type": "unrelated.inside", "data": 0}))
        .await;
    relay
        .publish_ok(&json!({"type": "replay.inside", "consumer": "globex", "data": 0}))
        .await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let until = now();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let last = relay
        .publish_ok(&json!({"type": "replay.after", "data": 0}))
        .await;
    wait_recorded(&relay, &last).await;
    // Every unnamed event (the one naming globex goes to globex's subscriptions only).
    other.wait_for(9, WAIT).await;

    // Subscribed after the fact: it got nothing live, and gets exactly the window.
    let hook = Receiver::start().await;
    let sub = relay.subscribe(&hook.url(), &["replay.*"], None).await;
    let id = sub["id"].as_str().unwrap();
    let (status, answer) = call(
        &relay,
        ADMIN_KEY,
        Method::POST,
        &format!("/v1/subscriptions/{id}/replay"),
        Some(json!({"since": since, "until": until})),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["replayed"], 4);
    let got = hook.wait_for(4, WAIT).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(hook.count(), 4, "only the window, once");
    let mut delivered: Vec<String> = got
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_owned())
        .collect();
    delivered.sort();
    inside.sort();
    assert_eq!(delivered, inside);
    assert!(
        got.iter()
            .all(|r| receiver::verify(r, sub["secret"].as_str().unwrap()))
    );
    assert_eq!(other.count(), 9, "the other subscription got nothing more");

    let (status, problem) = call(
        &relay,
        ADMIN_KEY,
        Method::POST,
        &format!("/v1/subscriptions/{id}/replay"),
        Some(json!({"since": until, "until": since})),
    )
    .await;
    assert_eq!((status, problem["field"].as_str()), (400, Some("until")));
    relay.stop().await;
}

#[tokio::test]
async fn a_redriven_dead_letter_reaches_the_now_healthy_endpoint() {
    let relay = System::start_with(
        Options::new(shared_amqp_url()).set("RELAY__DISPATCH__RETRY_SCHEDULE", "100ms"),
    )
    .await;
    let hook = Receiver::start_with(Behaviour::Status(500)).await;
    // Not `#`: an operator subscription would also receive (and dead-letter) the
    // relay.message.exhausted about its own dead letter.
    let sub = relay.subscribe(&hook.url(), &["dead.*"], None).await;
    let sub_id = sub["id"].as_str().unwrap();
    let event = relay
        .publish_ok(&json!({"type": "dead.letter", "data": {"n": 1}}))
        .await;

    let deadline = tokio::time::Instant::now() + WAIT;
    let letter = loop {
        let (_, page) = call(
            &relay,
            ADMIN_KEY,
            Method::GET,
            &format!("/v1/dead-letters?subscription_id={sub_id}"),
            None,
        )
        .await;
        if let Some(letter) = page["data"].as_array().and_then(|d| d.first()).cloned() {
            break letter;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no dead letter recorded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(letter["event_id"], event.as_str());
    assert_eq!(letter["last_status"], 500);
    assert_eq!(letter["event"]["id"], event.as_str());
    let failed = hook.count();
    assert!(failed >= 1);

    hook.set_behaviour(Behaviour::Status(200));
    let (status, answer) = call(
        &relay,
        ADMIN_KEY,
        Method::POST,
        "/v1/dead-letters/redrive",
        Some(json!({"ids": [letter["id"]]})),
    )
    .await;
    assert_eq!(
        (status, answer["redriven"].clone()),
        (202, json!(1)),
        "{answer}"
    );
    let got = hook.wait_for(failed + 1, WAIT).await;
    let last = got.last().unwrap();
    assert_eq!(last.header("webhook-id"), Some(event.as_str()));
    assert!(receiver::verify(last, sub["secret"].as_str().unwrap()));

    let (_, page) = call(
        &relay,
        ADMIN_KEY,
        Method::GET,
        &format!("/v1/dead-letters?subscription_id={sub_id}"),
        None,
    )
    .await;
    assert!(
        page["data"][0]["redriven_at"].is_string(),
        "kept as history: {page}"
    );
    // Nothing pending is left to redrive by subscription.
    let (_, answer) = call(
        &relay,
        ADMIN_KEY,
        Method::POST,
        "/v1/dead-letters/redrive",
        Some(json!({"subscription_id": sub_id})),
    )
    .await;
    assert_eq!(answer["redriven"], 0);
    relay.stop().await;
}

fn signatures(r: &receiver::Received) -> usize {
    r.header("webhook-signature")
        .unwrap_or_default()
        .split(' ')
        .count()
}

#[tokio::test]
async fn during_a_rotation_either_secret_verifies_and_afterwards_only_the_new_one() {
    let relay = System::start_with(
        Options::new(shared_amqp_url()).set("RELAY__API__MAINTENANCE_INTERVAL", "100ms"),
    )
    .await;
    let hook = Receiver::start().await;
    let sub = relay.subscribe(&hook.url(), &["rot.*"], None).await;
    let id = sub["id"].as_str().unwrap();
    let old = sub["secret"].as_str().unwrap().to_owned();
    let (status, rotated) = call(
        &relay,
        ADMIN_KEY,
        Method::POST,
        &format!("/v1/subscriptions/{id}/rotate-secret"),
        Some(json!({"grace": "4s"})),
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    let new = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new, old);

    // Until the dispatchers hear of the rotation, deliveries carry the old signature only.
    let deadline = tokio::time::Instant::now() + WAIT;
    let during = loop {
        let seen = hook.count();
        relay
            .publish_ok(&json!({"type": "rot.during", "data": {}}))
            .await;
        let got = hook.wait_for(seen + 1, WAIT).await;
        let last = got.last().unwrap().clone();
        if signatures(&last) == 2 {
            break last;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never signed with both secrets"
        );
    };
    assert!(
        receiver::verify(&during, &old),
        "a receiver holding the old secret verifies"
    );
    assert!(
        receiver::verify(&during, &new),
        "a receiver holding the new secret verifies"
    );

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let after = loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let seen = hook.count();
        relay
            .publish_ok(&json!({"type": "rot.after", "data": {}}))
            .await;
        let got = hook.wait_for(seen + 1, WAIT).await;
        let last = got.last().unwrap().clone();
        if signatures(&last) == 1 {
            break last;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the old secret kept signing after the grace period"
        );
    };
    assert!(receiver::verify(&after, &new));
    assert!(!receiver::verify(&after, &old));
    let (_, secret) = call(
        &relay,
        ADMIN_KEY,
        Method::GET,
        &format!("/v1/subscriptions/{id}/secret"),
        None,
    )
    .await;
    assert_eq!(secret["secret"], new.as_str());
    relay.stop().await;
}
