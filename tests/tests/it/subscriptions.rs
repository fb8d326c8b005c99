//! Subscription management through consumer-api, and its effect on live dispatchers.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tests::{
    api::{PROBLEM_JSON, answer, problem},
    receiver::Receiver,
};

use crate::system;

#[tokio::test]
async fn subscriptions_can_be_created_read_listed_updated_and_deleted() {
    let relay = system().await;
    let created = relay
        .subscribe("https://example.com/hook", &["order.*"], Some("acme"))
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("sub_"));
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    assert_eq!(created["enabled"], true);

    let got: Value = relay
        .api(Method::GET, &format!("/v1/subscriptions/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["url"], "https://example.com/hook");
    assert_eq!(got["consumer"], "acme");
    assert!(
        got.get("secret").is_none(),
        "the secret is only returned on create and by /secret"
    );
    let fetched: Value = relay
        .api(Method::GET, &format!("/v1/subscriptions/{id}/secret"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fetched["secret"], secret.as_str());

    let patched = relay
        .api(Method::PATCH, &format!("/v1/subscriptions/{id}"))
        .json(&json!({"event_types": ["order.created", "invoice.#"], "enabled": false, "description": "orders"}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    let patched: Value = patched.json().await.unwrap();
    assert_eq!(
        patched["event_types"],
        json!(["order.created", "invoice.#"])
    );
    assert_eq!(patched["enabled"], false);
    assert_eq!(patched["description"], "orders");

    // Cursor pagination walks every subscription once; the cursor is always present.
    for i in 0..4 {
        relay
            .subscribe(&format!("https://example.com/{i}"), &["#"], None)
            .await;
    }
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let path = format!("/v1/subscriptions?limit=2&after={after}");
        let page: Value = relay
            .api(Method::GET, &path)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= 2);
        seen.extend(data.iter().map(|s| s["id"].as_str().unwrap().to_owned()));
        after = page["next_cursor"].as_str().unwrap().to_owned();
        assert_eq!(Some(after.as_str()), seen.last().map(String::as_str));
        if !page["has_more"].as_bool().unwrap() {
            break;
        }
    }
    assert_eq!(seen.len(), 5);
    // Past the end: an empty page that gives the cursor back.
    let page: Value = relay
        .api(Method::GET, &format!("/v1/subscriptions?after={after}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (&page["data"], &page["next_cursor"], &page["has_more"]),
        (&json!([]), &json!(after), &json!(false))
    );
    let mut unique = seen.clone();
    unique.dedup();
    assert_eq!(unique.len(), 5);

    let deleted = relay
        .api(Method::DELETE, &format!("/v1/subscriptions/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let gone = relay
        .api(Method::GET, &format!("/v1/subscriptions/{id}"))
        .send()
        .await
        .unwrap();
    problem(gone, 404, "not-found").await;
    relay.stop().await;
}

#[tokio::test]
async fn limits_are_set_shown_changed_and_given_to_dispatchers() {
    let relay = system().await;
    let created = relay
        .api(Method::POST, "/v1/subscriptions")
        .json(&json!({"url": "https://example.com/limited", "event_types": ["a"], "rate_limit": 12.5}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["rate_limit"], 12.5);
    assert_eq!(created["max_in_flight"], 64, "the default cap");

    let path = format!("/v1/subscriptions/{id}");
    let patched = relay
        .api(Method::PATCH, &path)
        .json(&json!({"rate_limit": 100, "max_in_flight": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    let got: Value = relay
        .api(Method::GET, &path)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (&got["rate_limit"], &got["max_in_flight"]),
        (&json!(100.0), &json!(5))
    );
    let directory: Value = relay
        .api(Method::GET, "/v1/directory")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entry = directory["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == id.as_str())
        .unwrap();
    assert_eq!(
        entry["limits"],
        json!({"rate_limit": 100.0, "max_in_flight": 5})
    );

    let cleared: Value = relay
        .api(Method::PATCH, &path)
        .json(&json!({"rate_limit": null}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (&cleared["rate_limit"], &cleared["max_in_flight"]),
        (&Value::Null, &json!(5))
    );
    relay.stop().await;
}

#[tokio::test]
async fn invalid_subscriptions_are_refused_naming_the_field() {
    let relay = system().await;
    let cases = [
        (json!({"url": "not a url", "event_types": ["a"]}), "url"),
        (
            json!({"url": "ftp://example.com/x", "event_types": ["a"]}),
            "url",
        ),
        (
            json!({"url": "https://example.com", "event_types": []}),
            "event_types",
        ),
        (
            json!({"url": "https://example.com", "event_types": ["order.**"]}),
            "event_types[0]",
        ),
        (json!({"url": "https://example.com"}), "event_types"),
        (
            json!({"url": "https://example.com", "event_types": ["a"], "colour": "red"}),
            "colour",
        ),
        (
            json!({"url": "https://example.com", "event_types": "a"}),
            "event_types",
        ),
    ];
    let limits = [
        (json!({"rate_limit": -1}), "rate_limit"),
        (json!({"rate_limit": 0}), "rate_limit"),
        (json!({"rate_limit": 1e9}), "rate_limit"),
        (json!({"rate_limit": "50"}), "rate_limit"),
        (json!({"max_in_flight": 0}), "max_in_flight"),
        (json!({"max_in_flight": 1001}), "max_in_flight"),
        (json!({"max_in_flight": "8"}), "max_in_flight"),
        (json!({"ordering": "fifo"}), "ordering"),
        (json!({"ordering": "KEY"}), "ordering"),
        (json!({"ordering": 1}), "ordering"),
    ]
    .map(|(mut body, field)| {
        body["url"] = json!("https://example.com");
        body["event_types"] = json!(["a"]);
        (body, field)
    });
    let cases = cases.into_iter().chain(limits);
    for (body, field) in cases {
        let response = relay
            .api(Method::POST, "/v1/subscriptions")
            .json(&body)
            .send()
            .await
            .unwrap();
        let answer = answer(response).await;
        assert!(
            answer.status == 400 || answer.status == 422,
            "{body}: {answer:?}"
        );
        assert_eq!(answer.content_type(), PROBLEM_JSON, "{body}");
        assert_eq!(answer.body["field"], field, "{body}: {answer:?}");
    }
    let unauthorized = relay
        .http
        .get(format!("{}/v1/subscriptions", relay.api_url))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
    relay.stop().await;
}

#[tokio::test]
async fn a_subscription_created_after_start_receives_events_and_a_deleted_one_stops() {
    let relay = system().await;
    let hook = Receiver::start().await;
    let sub = relay
        .create_subscription(&hook.url(), &["live.*"], None)
        .await;
    let id = sub["id"].as_str().unwrap();

    // The dispatcher learns of it through relay.control, well before its periodic refresh.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    relay.publish_ok(&json!({"type": "live.one"})).await;
    assert_eq!(hook.wait_for(1, Duration::from_secs(5)).await.len(), 1);

    let deleted = relay
        .api(Method::DELETE, &format!("/v1/subscriptions/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    relay.publish_ok(&json!({"type": "live.two"})).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        hook.count(),
        1,
        "a deleted subscription still received an event"
    );
    relay.stop().await;
}
