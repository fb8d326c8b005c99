//! The event-type catalogue end to end: schemas saved through consumer-api, checked by ingest
//! (422 with the pointer and the rule; per-event results in a batch), changes applied within a
//! second through `relay.control`, invalid schemas refused, deprecated types flagged.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use tests::{
    stalls::Stalls,
    system::{PUBLISHER_KEY, System},
};

use crate::system;

async fn send(relay: &System, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = relay.api(method, path);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn publish(relay: &System, event: Value) -> (u16, Value) {
    let response = relay.publish(&event).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn publish_batch(relay: &System, events: Value) -> (u16, Value) {
    let response = relay
        .http
        .post(format!("{}/v1/events/batch", relay.ingest_url))
        .bearer_auth(PUBLISHER_KEY)
        .json(&events)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn order_schema(minimum: u32) -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["order", "total"],
        "properties": {
            "order": {"type": "integer"},
            "total": {"type": "number", "minimum": minimum}
        }
    })
}

/// Publishes `event` every 10 ms until ingest answers `status`; returns how long that took.
async fn until_status(relay: &System, event: &Value, status: u16) -> Duration {
    let started = Instant::now();
    loop {
        let (got, _) = publish(relay, event.clone()).await;
        if got == status {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "ingest still answers {got}, not {status}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn ingest_checks_events_against_their_types_schema_and_follows_changes_within_a_second() {
    let relay = system().await;
    let stalls = Stalls::start();
    let (status, created) = send(
        &relay,
        Method::POST,
        "/v1/event-types",
        Some(json!({
            "name": "order.created",
            "description": "An order was placed.",
            "schema": order_schema(0),
            "examples": [{"order": 1, "total": 9.5}]
        })),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["builtin"], false);
    let revision = created["revision"].as_i64().unwrap();

    // The creation reaches ingest through relay.control.
    let invalid = json!({"type": "order.created", "data": {"order": 1, "total": -1}});
    let applied = until_status(&relay, &invalid, 422).await;
    println!("FIGURE schema_create_applied_ms={}", applied.as_millis());

    let (status, problem) = publish(&relay, invalid.clone()).await;
    assert_eq!(status, 422);
    assert_eq!(problem["type"], "urn:relay:problem:schema-violation");
    assert_eq!(problem["pointer"], "/data/total");
    assert_eq!(problem["rule"], "minimum");
    assert_eq!(problem["field"], "data");
    let (status, problem) = publish(
        &relay,
        json!({"type": "order.created", "data": {"total": 1}}),
    )
    .await;
    assert_eq!((status, problem["pointer"].as_str()), (422, Some("/data")));
    assert_eq!(problem["rule"], "required");
    let (status, body) = publish(
        &relay,
        json!({"type": "order.created", "data": {"order": 2, "total": 3}}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert!(body.get("deprecated").is_none());
    // Types without a schema take any data.
    let (status, _) = publish(&relay, json!({"type": "order.shipped", "data": [1]})).await;
    assert_eq!(status, 202);

    // A schema change applies within a second.
    let (status, changed) = send(
        &relay,
        Method::PATCH,
        "/v1/event-types/order.created",
        Some(json!({"schema": order_schema(10), "examples": []})),
    )
    .await;
    assert_eq!(status, 200, "{changed}");
    assert!(changed["revision"].as_i64().unwrap() > revision);
    let small = json!({"type": "order.created", "data": {"order": 3, "total": 5}});
    let asked = Instant::now();
    let applied = until_status(&relay, &small, 422).await;
    // Less whatever a loaded box kept this process from asking meanwhile.
    let stalled = stalls.within(asked, Instant::now());
    println!(
        "FIGURE schema_change_applied_ms={} stalled_ms={}",
        applied.as_millis(),
        stalled.as_millis()
    );
    assert!(
        applied < Duration::from_secs(1) + stalled,
        "the schema change took {applied:?} to apply ({stalled:?} of stalls)"
    );

    // Deprecated: still accepted, and flagged.
    let (status, _) = send(
        &relay,
        Method::PATCH,
        "/v1/event-types/order.created",
        Some(json!({"deprecated": true, "schema": null})),
    )
    .await;
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = publish(&relay, small.clone()).await;
        if status == 202 && body["deprecated"] == true {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never flagged deprecated: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Deleted: anything goes again.
    let (status, _) = send(
        &relay,
        Method::DELETE,
        "/v1/event-types/order.created",
        None,
    )
    .await;
    assert_eq!(status, 204);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = publish(&relay, small.clone()).await;
        if status == 202 && body.get("deprecated").is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "{status} {body}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    relay.stop().await;
}

#[tokio::test]
async fn a_batch_gets_a_result_per_event_and_its_valid_events_are_accepted() {
    let relay = system().await;
    let (status, _) = send(
        &relay,
        Method::POST,
        "/v1/event-types",
        Some(json!({"name": "order.created", "schema": order_schema(0)})),
    )
    .await;
    assert_eq!(status, 201);
    let bad = json!({"type": "order.created", "data": {"order": 1, "total": -1}});
    until_status(&relay, &bad, 422).await;

    let (status, body) = publish_batch(
        &relay,
        json!([
            {"id": "ok-1", "type": "order.created", "data": {"order": 1, "total": 1}},
            {"id": "bad-1", "type": "order.created", "data": {"order": "x", "total": 1}},
            {"id": "ok-2", "type": "order.other", "data": null},
        ]),
    )
    .await;
    assert_eq!(status, 207, "{body}");
    assert_eq!(body["ids"], json!(["ok-1", null, "ok-2"]));
    assert_eq!(
        (body["accepted"].as_u64(), body["refused"].as_u64()),
        (Some(2), Some(1))
    );
    let refused = &body["results"][1];
    assert_eq!(refused["status"], 422);
    assert_eq!(refused["problem"]["pointer"], "/data/order");
    assert_eq!(refused["problem"]["rule"], "type");
    assert_eq!(refused["problem"]["field"], "[1].data");
    assert_eq!(body["results"][0]["status"], 202);

    // The accepted ones were really accepted: the pull API has them.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, ok1) = send(&relay, Method::GET, "/v1/events/ok-1", None).await;
        let (_, ok2) = send(&relay, Method::GET, "/v1/events/ok-2", None).await;
        if ok1["event"]["id"] == "ok-1" && ok2["event"]["id"] == "ok-2" {
            break;
        }
        assert!(Instant::now() < deadline, "accepted events not recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, missing) = send(&relay, Method::GET, "/v1/events/bad-1", None).await;
    assert_eq!(status, 404, "{missing}");

    // None valid: 422, with the same results.
    let (status, body) = publish_batch(&relay, json!([bad.clone(), bad])).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["type"], "urn:relay:problem:schema-violation");
    assert_eq!(body["results"].as_array().unwrap().len(), 2);
    // All valid: 202, as before.
    let (status, body) = publish_batch(
        &relay,
        json!([{"type": "order.created", "data": {"order": 1, "total": 0}}]),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["ids"].as_array().unwrap().len(), 1);
    relay.stop().await;
}

#[tokio::test]
async fn the_catalogue_refuses_bad_schemas_and_examples_and_keeps_relay_types_read_only() {
    let relay = system().await;
    let cases = [
        (
            json!({"name": "a.b", "schema": {"type": "integr"}}),
            "schema/type",
        ),
        (
            json!({"name": "a.b", "schema": {"$ref": "https://example.com/s.json"}}),
            "schema",
        ),
        (
            json!({"name": "a.b", "schema": {"$schema": "http://json-schema.org/draft-07/schema#"}}),
            "schema",
        ),
        (
            json!({"name": "a.b", "schema": order_schema(0), "examples": [{"order": 1}]}),
            "examples[0]",
        ),
        (json!({"name": "Bad Name"}), "name"),
        (json!({"name": "relay.mine"}), "name"),
    ];
    for (body, field) in cases {
        let (status, problem) =
            send(&relay, Method::POST, "/v1/event-types", Some(body.clone())).await;
        // A name the document rules out is malformed (400); a schema that does not compile,
        // or an example that fails it, is refused for what it means (422).
        let expected = if field == "name" { 400 } else { 422 };
        assert_eq!(status, expected, "{body}: {problem}");
        let at = problem["field"].as_str().unwrap_or_default();
        assert!(at.starts_with(field), "{body}: {problem}");
    }
    // Producers cannot send Relay's own types.
    let (status, problem) = publish(&relay, json!({"type": "relay.endpoint.disabled"})).await;
    assert_eq!((status, problem["field"].as_str()), (400, Some("type")));

    // The built-in types are listed with their schemas, and cannot be changed.
    let (status, list) = send(&relay, Method::GET, "/v1/event-types", None).await;
    assert_eq!(status, 200);
    assert!(list["catalogue_revision"].is_i64());
    let builtin: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["builtin"] == true)
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    for name in [
        "relay.endpoint.disabled",
        "relay.endpoint.recovered",
        "relay.message.exhausted",
        "relay.subscription.disabled",
    ] {
        assert!(builtin.contains(&name), "{name} not listed: {builtin:?}");
    }
    let (status, _) = send(
        &relay,
        Method::PATCH,
        "/v1/event-types/relay.endpoint.disabled",
        Some(json!({"deprecated": true})),
    )
    .await;
    assert_eq!(status, 403);
    let (status, old) = send(
        &relay,
        Method::GET,
        "/v1/event-types/relay.subscription.disabled",
        None,
    )
    .await;
    assert_eq!((status, &old["deprecated"]), (200, &json!(true)));
    let (status, _) = send(&relay, Method::GET, "/v1/event-types/no.such", None).await;
    assert_eq!(status, 404);
    relay.stop().await;
}
