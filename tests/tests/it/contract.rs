//! The event contract end to end: `v1a` deliveries verified by an independent ed25519
//! implementation (Python `cryptography`) with the keys of the consumer's JWKS, through a
//! rotation; payload filters; static headers and credentials; Relay's operational events at
//! an operator subscription; an AMQP event failing its schema parked in `relay.invalid`.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tests::{
    amqp,
    api::assert_problem,
    ed25519_check::{self, Message},
    receiver::{Behaviour, Received, Receiver, verify},
    system::{Options, System},
};

use crate::system;

const WAIT: Duration = Duration::from_secs(20);

async fn call(relay: &System, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = relay.api(method, path);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The consumer's JWKS, fetched without a key.
async fn jwks(relay: &System, consumer: &str) -> reqwest::Response {
    relay
        .http
        .get(format!(
            "{}/v1/consumers/{consumer}/jwks.json",
            relay.api_url
        ))
        .send()
        .await
        .unwrap()
}

fn message(received: &Received) -> Message {
    Message {
        id: received.header("webhook-id").unwrap().to_owned(),
        timestamp: received
            .header("webhook-timestamp")
            .unwrap()
            .parse()
            .unwrap(),
        body: received.body.to_vec(),
        signature: received.header("webhook-signature").unwrap().to_owned(),
    }
}

fn v1a_count(received: &Received) -> usize {
    received
        .header("webhook-signature")
        .unwrap_or_default()
        .split(' ')
        .filter(|s| s.starts_with("v1a,"))
        .count()
}

/// Publishes `order.created` events until a delivery at `hook` carries `signatures` `v1a`
/// signatures (a key change reaches the dispatcher through `relay.control`); returns it.
async fn until_signed_by(relay: &System, hook: &Receiver, signatures: usize) -> Received {
    let deadline = Instant::now() + WAIT;
    loop {
        let before = hook.count();
        relay
            .publish_ok(&json!({"type": "order.created", "data": {"n": before}}))
            .await;
        let got = hook.wait_for(before + 1, WAIT).await;
        assert!(got.len() > before, "the event was not delivered");
        let last = got.last().unwrap().clone();
        if v1a_count(&last) == signatures {
            return last;
        }
        assert!(
            Instant::now() < deadline,
            "deliveries still carry {} v1a signatures, not {signatures}",
            v1a_count(&last)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn v1a_deliveries_verify_with_the_jwks_through_a_rotation() {
    // Rotation grace periods end at the next upkeep: a short interval keeps the test short.
    let relay = System::start_with(
        Options::new(tests::broker::shared_amqp_url())
            .set("RELAY__API__MAINTENANCE_INTERVAL", "200ms"),
    )
    .await;
    let hook = Receiver::start().await;
    let sub = relay
        .subscribe_with(json!({
            "url": hook.url(), "event_types": ["order.*"], "consumer": "acme",
            "signature_scheme": "both",
        }))
        .await;
    assert_eq!(sub["signature_scheme"], "both");
    let first_kid = sub["signing_keys"][0]["kid"].as_str().unwrap().to_owned();
    assert!(
        sub["signing_keys"][0]["public_key"]
            .as_str()
            .unwrap()
            .starts_with("whpk_")
    );
    let secret = sub["secret"].as_str().unwrap().to_owned();

    // The JWKS: public, cacheable, revalidated with its ETag.
    let response = jwks(&relay, "acme").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/jwk-set+json"
    );
    assert_eq!(response.headers()["cache-control"], "public, max-age=300");
    let etag = response.headers()["etag"].to_str().unwrap().to_owned();
    let set: Value = response.json().await.unwrap();
    let again = relay
        .http
        .get(format!("{}/v1/consumers/acme/jwks.json", relay.api_url))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    let empty: Value = jwks(&relay, "nobody").await.json().await.unwrap();
    assert_eq!(empty, json!({"keys": []}));

    // `both`: a v1 signature with the secret and a v1a one with the key the JWKS publishes.
    let delivered = until_signed_by(&relay, &hook, 1).await;
    assert!(verify(&delivered, &secret), "the v1 signature verifies");
    assert_eq!(delivered.header("webhook-key-id"), Some(first_kid.as_str()));
    let found = ed25519_check::check(&set, &[], &[], &[message(&delivered)]).await;
    assert_eq!(
        found.thumbprints,
        std::slice::from_ref(&first_kid),
        "kid is the RFC 7638 thumbprint"
    );
    assert_eq!(found.verified, [vec![first_kid.clone()]]);

    // Rotation: during the grace both keys sign, both are published, the new one first.
    let (status, rotated) = call(
        &relay,
        Method::POST,
        &format!(
            "/v1/subscriptions/{}/rotate-signing-key",
            sub["id"].as_str().unwrap()
        ),
        Some(json!({"grace": "3s"})),
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    let new_kid = rotated["signing_keys"][0]["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(rotated["signing_keys"][1]["kid"], first_kid.as_str());
    assert!(rotated["signing_keys"][1]["expires_at"].is_string());
    let during = until_signed_by(&relay, &hook, 2).await;
    let set: Value = jwks(&relay, "acme").await.json().await.unwrap();
    let found = ed25519_check::check(&set, &[], &[], &[message(&during)]).await;
    assert_eq!(found.verified, [vec![new_kid.clone(), first_kid.clone()]]);
    assert_eq!(
        during.header("webhook-key-id"),
        Some(format!("{new_kid} {first_kid}").as_str())
    );
    assert!(verify(&during, &secret));

    // After the grace only the new key signs, and only it is published.
    let after = until_signed_by(&relay, &hook, 1).await;
    let set: Value = jwks(&relay, "acme").await.json().await.unwrap();
    assert_eq!(set["keys"].as_array().unwrap().len(), 1, "{set}");
    let found = ed25519_check::check(&set, &[], &[], &[message(&after)]).await;
    assert_eq!(found.verified, [vec![new_kid.clone()]]);
    assert_eq!(after.header("webhook-key-id"), Some(new_kid.as_str()));

    // `v1a` alone: no v1 signature.
    let (status, _) = call(
        &relay,
        Method::PATCH,
        &format!("/v1/subscriptions/{}", sub["id"].as_str().unwrap()),
        Some(json!({"signature_scheme": "v1a"})),
    )
    .await;
    assert_eq!(status, 200);
    let deadline = Instant::now() + WAIT;
    loop {
        let last = until_signed_by(&relay, &hook, 1).await;
        if !verify(&last, &secret) {
            assert!(!last.header("webhook-signature").unwrap().contains("v1,"));
            let found = ed25519_check::check(&set, &[], &[], &[message(&last)]).await;
            assert_eq!(found.verified, [vec![new_kid.clone()]]);
            break;
        }
        assert!(Instant::now() < deadline, "still signed with v1");
    }
    relay.stop().await;
}

#[tokio::test]
async fn payload_filters_select_after_the_type_and_bad_ones_are_refused_at_save() {
    let relay = system().await;
    let filtered = Receiver::start().await;
    let every = Receiver::start().await;
    relay
        .subscribe_with(json!({
            "url": filtered.url(), "event_types": ["order.*"],
            "filter": {"$or": [
                {"data.total": {"$gt": 100}, "data.currency": {"$in": ["EUR", "CHF"]}},
                {"data.tags": {"$exists": true}, "type": {"$prefix": "order.refund"}}
            ]},
        }))
        .await;
    relay.subscribe(&every.url(), &["order.*"], None).await;

    let events = [
        (
            json!({"total": 500, "currency": "EUR"}),
            "order.created",
            true,
        ),
        (
            json!({"total": 500, "currency": "USD"}),
            "order.created",
            false,
        ),
        (
            json!({"total": 5, "currency": "EUR"}),
            "order.created",
            false,
        ),
        (json!({"tags": []}), "order.refunded", true),
        (json!({"tags": []}), "order.created", false),
        (json!("not an object"), "order.created", false),
    ];
    let mut expected = Vec::new();
    for (i, (data, event_type, matches)) in events.iter().enumerate() {
        let id = format!("f-{i}");
        relay
            .publish_ok(&json!({"id": id, "type": event_type, "data": data}))
            .await;
        if *matches {
            expected.push(id);
        }
    }
    // Every event was handled once the unfiltered subscription has them all and the
    // dispatcher counted every success (the filtered deliveries included).
    assert_eq!(every.wait_for(events.len(), WAIT).await.len(), events.len());
    let successes = (events.len() + expected.len()) as f64;
    relay
        .wait_for_metric(&relay.dispatcher_urls[0], "relay_deliveries_total", |v| {
            v >= successes
        })
        .await;
    let mut got: Vec<String> = filtered
        .received()
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_owned())
        .collect();
    got.sort();
    assert_eq!(got, expected);

    // Refused at save, naming the operator or path at fault.
    let deep = (0..40).fold(json!({"data.a": 1}), |inner, _| json!({"$not": inner}));
    let huge: Vec<u32> = (0..100).collect();
    let cases = [
        (json!({"data.total": {"$regex": "x"}}), "$regex"),
        (json!({"data.total": {"$gt": true}}), "$gt"),
        (json!({"$or": {"data.a": 1}}), "$or"),
        (json!({"data.a": {"$in": huge}}), "$in"),
        (deep, "filter"),
        (json!({"nope.a": 1}), "nope.a"),
        (json!(["data.a"]), "filter"),
    ];
    for (filter, named) in cases {
        let (status, problem) = call(
            &relay,
            Method::POST,
            "/v1/subscriptions",
            Some(json!({"url": every.url(), "event_types": ["order.*"], "filter": filter})),
        )
        .await;
        // Not an object: malformed (400); an object breaking the grammar: 422.
        let expected = if filter.is_object() { 422 } else { 400 };
        assert_problem(status, &problem, expected, "invalid-field");
        let field = problem["field"].as_str().unwrap_or_default();
        assert!(field.starts_with("filter"), "{problem}");
        assert!(
            field.contains(named) || problem["detail"].as_str().unwrap().contains(named),
            "{named} not named: {problem}"
        );
    }
    relay.stop().await;
}

#[tokio::test]
async fn static_headers_and_credentials_are_sent_and_credentials_never_shown() {
    let relay = system().await;
    let hook = Receiver::start().await;
    let basic = Receiver::start().await;
    let sub = relay
        .subscribe_with(json!({
            "url": hook.url(), "event_types": ["order.*"],
            "headers": {"X-Tenant": "acme", "X-Route": "eu-1"},
            "credentials": {"type": "bearer", "token": "t0ken-secret"},
        }))
        .await;
    relay
        .subscribe_with(json!({
            "url": basic.url(), "event_types": ["order.*"],
            "credentials": {"type": "basic", "username": "relay", "password": "pa55-secret"},
        }))
        .await;
    relay
        .publish_ok(&json!({"type": "order.created", "data": {}}))
        .await;
    let got = hook.wait_for(1, WAIT).await;
    assert_eq!(got[0].header("x-tenant"), Some("acme"));
    assert_eq!(got[0].header("x-route"), Some("eu-1"));
    assert_eq!(got[0].header("authorization"), Some("Bearer t0ken-secret"));
    assert!(verify(&got[0], sub["secret"].as_str().unwrap()));
    let got = basic.wait_for(1, WAIT).await;
    // base64("relay:pa55-secret")
    assert_eq!(
        got[0].header("authorization"),
        Some("Basic cmVsYXk6cGE1NS1zZWNyZXQ=")
    );

    // Never shown: not in the creation's answer, a read, or a list.
    let id = sub["id"].as_str().unwrap();
    let (_, read) = call(
        &relay,
        Method::GET,
        &format!("/v1/subscriptions/{id}"),
        None,
    )
    .await;
    let (_, list) = call(&relay, Method::GET, "/v1/subscriptions", None).await;
    for shown in [&sub, &read, &list] {
        let text = shown.to_string();
        assert!(
            !text.contains("t0ken-secret") && !text.contains("pa55-secret"),
            "{text}"
        );
    }
    assert_eq!(read["credentials"], json!({"type": "bearer"}));
    assert_eq!(read["headers"]["X-Tenant"], "acme");
    assert!(
        list.to_string()
            .contains(r#"{"type":"basic","username":"relay"}"#),
        "{list}"
    );

    // Names Relay sets, hop-by-hop ones and oversized sets are refused.
    let long = "x".repeat(9000);
    for (headers, named) in [
        (json!({"Host": "x"}), "Host"),
        (json!({"webhook-id": "x"}), "webhook-id"),
        (json!({"Content-Type": "text/plain"}), "Content-Type"),
        (json!({"Connection": "close"}), "Connection"),
        (json!({"Authorization": "Bearer x"}), "Authorization"),
        (json!({"X-Big": long}), "headers"),
        (json!({"Bad Name": "x"}), "Bad Name"),
    ] {
        let (status, problem) = call(
            &relay,
            Method::POST,
            "/v1/subscriptions",
            Some(json!({"url": hook.url(), "event_types": ["x"], "headers": headers})),
        )
        .await;
        // An object of strings, as the document says, refused for what it holds.
        assert_problem(status, &problem, 422, "invalid-field");
        assert!(
            problem["field"]
                .as_str()
                .unwrap_or_default()
                .contains(named),
            "{named}: {problem}"
        );
    }
    let (status, problem) = call(
        &relay,
        Method::POST,
        "/v1/subscriptions",
        Some(json!({"url": hook.url(), "event_types": ["x"],
                    "credentials": {"type": "bearer", "token": "has space-secret"}})),
    )
    .await;
    assert_eq!(status, 400, "{problem}");
    assert!(!problem.to_string().contains("space-secret"), "{problem}");
    relay.stop().await;
}

/// Waits until `hook` has received an event of `event_type`; returns its envelope.
async fn event_of(hook: &Receiver, event_type: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(found) = hook
            .received()
            .iter()
            .map(Received::json)
            .find(|e| e["type"] == event_type)
        {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "no {event_type} arrived; got {:?}",
            hook.received()
                .iter()
                .map(Received::json)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn operational_events_reach_an_operator_subscription_with_their_documented_payload() {
    let relay = System::start_with(
        Options::new(tests::broker::shared_amqp_url())
            .set("RELAY__DISPATCH__BREAKER_FAILURES", "2")
            .set("RELAY__DISPATCH__BREAKER_COOLDOWN", "1s")
            .set(
                "RELAY__DISPATCH__RETRY_SCHEDULE",
                "300ms,300ms,300ms,300ms,300ms,300ms,300ms,300ms,300ms,300ms",
            ),
    )
    .await;
    let operator = Receiver::start().await;
    relay.subscribe(&operator.url(), &["relay.#"], None).await;
    // Another tenant's subscription to Relay's events sees none of acme's.
    let other = Receiver::start().await;
    relay
        .subscribe(&other.url(), &["relay.#"], Some("globex"))
        .await;

    // 410: disabled.
    let gone = Receiver::start_with(Behaviour::Status(410)).await;
    let gone_sub = relay
        .subscribe(&gone.url(), &["gone.*"], Some("acme"))
        .await;
    relay
        .publish_ok(&json!({"type": "gone.x", "consumer": "acme", "data": {}}))
        .await;
    let disabled = event_of(&operator, "relay.endpoint.disabled").await;
    assert_eq!(disabled["consumer"], "acme");
    assert_eq!(disabled["data"]["subscription_id"], gone_sub["id"]);
    assert_eq!(disabled["data"]["url"], gone.url());
    assert!(disabled["data"]["reason"].as_str().unwrap().contains("410"));
    // The former name, still sent for one release.
    let former = event_of(&operator, "relay.subscription.disabled").await;
    assert_eq!(former["data"], disabled["data"]);

    // Two failures open the circuit, a later success closes it: recovered.
    let flaky = Receiver::start_with(Behaviour::FailFirst(2, 503)).await;
    let flaky_sub = relay
        .subscribe(&flaky.url(), &["flaky.*"], Some("acme"))
        .await;
    relay
        .publish_ok(&json!({"type": "flaky.x", "consumer": "acme", "data": {}}))
        .await;
    let recovered = event_of(&operator, "relay.endpoint.recovered").await;
    assert_eq!(recovered["data"]["subscription_id"], flaky_sub["id"]);
    assert_eq!(recovered["consumer"], "acme");
    assert!(recovered["data"]["circuit_opened_at"].is_string());
    assert!(recovered["data"]["recovered_at"].is_string());

    // A schedule used up: exhausted, naming the dead letter.
    let failing = Receiver::start_with(Behaviour::Status(500)).await;
    let failing_sub = relay
        .subscribe_with(json!({"url": failing.url(), "event_types": ["fail.*"],
                               "consumer": "acme"}))
        .await;
    let event_id = relay
        .publish_ok(&json!({"type": "fail.x", "consumer": "acme", "data": {}}))
        .await;
    let exhausted = event_of(&operator, "relay.message.exhausted").await;
    let data = &exhausted["data"];
    assert_eq!(data["event_id"], event_id.as_str());
    assert_eq!(data["event_type"], "fail.x");
    assert_eq!(data["subscription_id"], failing_sub["id"]);
    assert!(data["dead_letter_id"].as_str().unwrap().starts_with("dl_"));
    assert!(data["attempts"].as_u64().unwrap() >= 2);
    assert!(data["last_error"].as_str().unwrap().contains("500"));

    // Each payload matches the schema the catalogue publishes for its type.
    for event in [&disabled, &recovered, &exhausted] {
        let name = event["type"].as_str().unwrap();
        let (status, listed) = call(
            &relay,
            Method::GET,
            &format!("/v1/event-types/{name}"),
            None,
        )
        .await;
        assert_eq!(status, 200);
        let schema = jsonschema::validator_for(&listed["schema"]).unwrap();
        assert!(schema.is_valid(&event["data"]), "{name}: {}", event["data"]);
    }
    assert!(
        other.received().is_empty(),
        "globex saw acme's operational events"
    );
    relay.stop().await;
}

#[tokio::test]
async fn an_amqp_event_failing_its_schema_is_parked_with_the_reason_ingest_gives() {
    let relay = system().await;
    let hook = Receiver::start().await;
    relay.subscribe(&hook.url(), &["order.*"], None).await;
    let (status, _) = call(
        &relay,
        Method::POST,
        "/v1/event-types",
        Some(json!({"name": "order.created", "schema": {
            "type": "object", "required": ["total"],
            "properties": {"total": {"type": "number", "minimum": 0}}
        }})),
    )
    .await;
    assert_eq!(status, 201);
    let url = relay.settings.amqp.url.clone();
    let exchange = format!("{}events", relay.settings.amqp.prefix);
    let invalid_queue = format!("{}invalid", relay.settings.amqp.prefix);
    let bad_data = json!({"total": -1});
    let publish = |id: String, data: Value| {
        let (url, exchange) = (url.clone(), exchange.clone());
        async move {
            let body = json!({"id": id, "type": "order.created", "data": data});
            amqp::publish(
                &url,
                &exchange,
                body.to_string().as_bytes(),
                lapin::BasicProperties::default().with_delivery_mode(2),
            )
            .await;
        }
    };

    // The schema reaches the dispatcher through relay.control: until it has, an invalid
    // event is still delivered; from then on every one is parked.
    let deadline = Instant::now() + WAIT;
    let mut n = 0;
    let parked = loop {
        n += 1;
        publish(format!("bad-{n}"), bad_data.clone()).await;
        if let Some(parked) = amqp::get_one(&url, &invalid_queue, Duration::from_millis(500)).await
        {
            break parked;
        }
        assert!(Instant::now() < deadline, "no invalid event was parked");
    };
    let reason = parked.header("x-relay-invalid-reason").unwrap();
    // The same detail as ingest's 422 for the same data.
    let response = relay
        .publish(&json!({"type": "order.created", "data": bad_data}))
        .await;
    assert_eq!(response.status(), 422);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(reason, problem["detail"].as_str().unwrap());
    assert!(
        reason.contains("/data/total") && reason.contains("minimum"),
        "{reason}"
    );

    // A valid event still flows, an invalid one after it is parked, not delivered.
    publish(String::from("bad-last"), json!({"total": "x"})).await;
    publish(String::from("good"), json!({"total": 3})).await;
    let deadline = Instant::now() + WAIT;
    while !hook
        .received()
        .iter()
        .any(|r| r.header("webhook-id") == Some("good"))
    {
        assert!(
            Instant::now() < deadline,
            "the valid event was not delivered"
        );
        hook.wait_for(hook.count() + 1, Duration::from_millis(200))
            .await;
    }
    let parked = amqp::get_one(&url, &invalid_queue, WAIT).await.unwrap();
    let body: Value = serde_json::from_slice(&parked.body).unwrap();
    assert_eq!(body["id"], "bad-last");
    assert!(
        parked
            .header("x-relay-invalid-reason")
            .unwrap()
            .contains("/data/total"),
    );
    assert!(
        hook.received()
            .iter()
            .all(|r| r.header("webhook-id") != Some("bad-last"))
    );

    // Relay's own types cannot be published over AMQP either.
    amqp::publish(
        &url,
        &exchange,
        json!({"id": "forged", "type": "relay.endpoint.disabled", "data": {}})
            .to_string()
            .as_bytes(),
        lapin::BasicProperties::default(),
    )
    .await;
    let parked = amqp::get_one(&url, &invalid_queue, WAIT).await.unwrap();
    assert!(
        parked
            .header("x-relay-invalid-reason")
            .unwrap()
            .contains("Relay's own")
    );
    relay.stop().await;
}
