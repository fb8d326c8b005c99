//! The consumer API as a product: tenants and their keys with isolation on every route,
//! SSRF refusals, disabling (with its operational event), test pings, and the OpenAPI
//! document validated as OpenAPI 3. Also the helpers the pull, replay, dead-letter,
//! rotation and PostgreSQL modules share.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tests::{
    api::{PROBLEM_JSON, answer, assert_problem},
    broker::shared_amqp_url,
    receiver::Receiver,
    system::{ADMIN_KEY, Options, System},
};

use crate::system;

pub(crate) const WAIT: Duration = Duration::from_secs(15);

/// A call to consumer-api at `base` with `key`; the status and the JSON body (`Null` if none),
/// checked to be `application/problem+json` for an error.
pub(crate) async fn call_at(
    relay: &System,
    base: &str,
    key: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = relay
        .http
        .request(method, format!("{base}{path}"))
        .bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let answer = answer(request.send().await.expect("consumer-api answers")).await;
    // Every error consumer-api answers is a problem, whichever test reads it.
    if answer.status >= 400 {
        assert_eq!(
            answer.content_type(),
            PROBLEM_JSON,
            "{path}: {:?}",
            answer.body
        );
    }
    (answer.status, answer.body)
}

/// A call to the system's consumer-api with `key`.
pub(crate) async fn call(
    relay: &System,
    key: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    call_at(relay, &relay.api_url, key, method, path, body).await
}

/// Creates the consumer `id` and one API key for it; returns the key.
pub(crate) async fn tenant(relay: &System, id: &str) -> String {
    let (status, body) = call(
        relay,
        ADMIN_KEY,
        Method::POST,
        "/v1/consumers",
        Some(json!({"id": id, "name": id})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, key) = call(
        relay,
        ADMIN_KEY,
        Method::POST,
        &format!("/v1/consumers/{id}/keys"),
        None,
    )
    .await;
    assert_eq!(status, 201, "{key}");
    key["key"].as_str().unwrap().to_owned()
}

/// Waits until the recorder has stored event `id`.
pub(crate) async fn wait_recorded_at(relay: &System, base: &str, id: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, _) = call_at(
            relay,
            base,
            ADMIN_KEY,
            Method::GET,
            &format!("/v1/events/{id}"),
            None,
        )
        .await;
        if status == 200 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "event {id} was not recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the recorder has stored event `id` (the system's consumer-api).
pub(crate) async fn wait_recorded(relay: &System, id: &str) {
    wait_recorded_at(relay, &relay.api_url, id).await;
}

#[tokio::test]
async fn a_consumer_key_reaches_only_its_own_resources_on_every_route() {
    let relay = system().await;
    let acme = tenant(&relay, "acme").await;
    let globex = tenant(&relay, "globex").await;
    let hook = Receiver::start().await;

    // A consumer key creates subscriptions for itself only.
    let (status, sub) = call(
        &relay,
        &acme,
        Method::POST,
        "/v1/subscriptions",
        Some(json!({"url": hook.url(), "event_types": ["iso.*"]})),
    )
    .await;
    assert_eq!(status, 201, "{sub}");
    assert_eq!(sub["consumer"], "acme");
    let (status, body) = call(
        &relay,
        &acme,
        Method::POST,
        "/v1/subscriptions",
        Some(json!({"url": hook.url(), "event_types": ["iso.*"], "consumer": "globex"})),
    )
    .await;
    assert_problem(status, &body, 403, "forbidden");
    assert_eq!(body["field"], "consumer");
    let id = sub["id"].as_str().unwrap();

    let event = relay
        .publish_ok(&json!({"type": "iso.created", "consumer": "acme", "data": {}}))
        .await;
    hook.wait_for(1, WAIT).await;
    wait_recorded(&relay, &event).await;

    // Every route naming acme's resources answers 404 to globex.
    let foreign: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, format!("/v1/subscriptions/{id}"), None),
        (
            Method::PATCH,
            format!("/v1/subscriptions/{id}"),
            Some(json!({"description": "x"})),
        ),
        (Method::GET, format!("/v1/subscriptions/{id}/secret"), None),
        (
            Method::POST,
            format!("/v1/subscriptions/{id}/rotate-secret"),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!("/v1/subscriptions/{id}/disable"),
            Some(json!({"reason": "x"})),
        ),
        (Method::POST, format!("/v1/subscriptions/{id}/test"), None),
        (
            Method::POST,
            format!("/v1/subscriptions/{id}/replay"),
            Some(json!({"since": "2020-01-01T00:00:00Z"})),
        ),
        (
            Method::GET,
            format!("/v1/subscriptions/{id}/attempts"),
            None,
        ),
        (Method::GET, format!("/v1/events/{event}"), None),
        (
            Method::POST,
            "/v1/dead-letters/redrive".into(),
            Some(json!({"subscription_id": id})),
        ),
        (Method::DELETE, format!("/v1/subscriptions/{id}"), None),
    ];
    for (method, path, body) in foreign {
        let (status, problem) = call(&relay, &globex, method.clone(), &path, body).await;
        assert_problem(status, &problem, 404, "not-found");
    }
    // Lists show only the caller's own.
    let (_, list) = call(&relay, &globex, Method::GET, "/v1/subscriptions", None).await;
    assert_eq!(list["data"], json!([]));
    let (status, _) = call(
        &relay,
        &globex,
        Method::GET,
        "/v1/subscriptions?consumer=acme",
        None,
    )
    .await;
    assert_eq!(status, 403);
    let (_, events) = call(&relay, &globex, Method::GET, "/v1/events", None).await;
    assert_eq!(events["data"], json!([]));
    let (_, dead) = call(
        &relay,
        &globex,
        Method::GET,
        &format!("/v1/dead-letters?subscription_id={id}"),
        None,
    )
    .await;
    assert_eq!(dead["data"], json!([]));

    // The owner sees them all; the subscription is untouched by globex's attempts.
    let (status, got) = call(
        &relay,
        &acme,
        Method::GET,
        &format!("/v1/subscriptions/{id}"),
        None,
    )
    .await;
    assert_eq!(
        (status, got["enabled"].clone(), got["description"].clone()),
        (200, json!(true), Value::Null)
    );
    let (_, list) = call(&relay, &acme, Method::GET, "/v1/subscriptions", None).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    let (status, detail) = call(
        &relay,
        &acme,
        Method::GET,
        &format!("/v1/events/{event}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["event"]["id"], event.as_str());
    let (_, events) = call(&relay, &acme, Method::GET, "/v1/events", None).await;
    assert_eq!(events["data"][0]["event"]["id"], event.as_str());

    // Admin routes refuse consumer keys; the admin sees everything and can filter.
    for path in ["/v1/consumers", "/v1/directory", "/v1/consumers/acme/keys"] {
        let (status, problem) = call(&relay, &acme, Method::GET, path, None).await;
        assert_problem(status, &problem, 403, "forbidden");
    }
    let (_, list) = call(
        &relay,
        ADMIN_KEY,
        Method::GET,
        "/v1/subscriptions?consumer=acme",
        None,
    )
    .await;
    assert_eq!(list["data"][0]["id"], id);
    let (_, consumers) = call(&relay, ADMIN_KEY, Method::GET, "/v1/consumers", None).await;
    assert_eq!(consumers["data"].as_array().unwrap().len(), 2);
    let (status, _) = call(
        &relay,
        ADMIN_KEY,
        Method::POST,
        "/v1/consumers",
        Some(json!({"id": "acme"})),
    )
    .await;
    assert_eq!(status, 409);

    // A revoked key stops working at once; keys are listed without the key.
    let (_, keys) = call(
        &relay,
        ADMIN_KEY,
        Method::GET,
        "/v1/consumers/globex/keys",
        None,
    )
    .await;
    assert!(keys["data"][0].get("key").is_none());
    assert!(globex.starts_with(keys["data"][0]["prefix"].as_str().unwrap()));
    let key_id = keys["data"][0]["id"].as_str().unwrap();
    let (status, _) = call(
        &relay,
        ADMIN_KEY,
        Method::DELETE,
        &format!("/v1/consumers/globex/keys/{key_id}"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (status, problem) = call(&relay, &globex, Method::GET, "/v1/subscriptions", None).await;
    assert_problem(status, &problem, 401, "unauthorized");
    relay.stop().await;
}

#[tokio::test]
async fn internal_destinations_are_refused_unless_allowed() {
    let relay = System::start_with(
        Options::new(shared_amqp_url())
            .set("RELAY__SECURITY__ALLOWED_NETWORKS", "192.0.2.0/24")
            .set("RELAY__SECURITY__ALLOW_HTTP", "false"),
    )
    .await;
    for url in [
        "https://127.0.0.1/hook",
        "https://10.0.0.1/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://localhost:8443/hook",
    ] {
        let (status, problem) = call(
            &relay,
            ADMIN_KEY,
            Method::POST,
            "/v1/subscriptions",
            Some(json!({"url": url, "event_types": ["#"]})),
        )
        .await;
        assert_problem(status, &problem, 422, "destination-not-allowed");
        assert_eq!(problem["field"], "url", "{url}");
    }
    let (status, problem) = call(
        &relay,
        ADMIN_KEY,
        Method::POST,
        "/v1/subscriptions",
        Some(json!({"url": "http://example.com/hook", "event_types": ["#"]})),
    )
    .await;
    assert_eq!(
        (status, problem["field"].as_str()),
        (400, Some("url")),
        "http is refused: {problem}"
    );

    // An allowed network is accepted, and a change to a refused one is refused too.
    let (status, sub) = call(
        &relay,
        ADMIN_KEY,
        Method::POST,
        "/v1/subscriptions",
        Some(json!({"url": "https://192.0.2.10/hook", "event_types": ["#"]})),
    )
    .await;
    assert_eq!(status, 201, "{sub}");
    let (status, problem) = call(
        &relay,
        ADMIN_KEY,
        Method::PATCH,
        &format!("/v1/subscriptions/{}", sub["id"].as_str().unwrap()),
        Some(json!({"url": "https://[::ffff:10.1.2.3]/x"})),
    )
    .await;
    assert_eq!((status, problem["field"].as_str()), (422, Some("url")));
    relay.stop().await;
}

#[tokio::test]
async fn metadata_and_internal_names_are_refused_whatever_they_resolve_to() {
    // Every address is allowed here, so only the name rules can refuse.
    let relay = System::start_with(
        Options::new(shared_amqp_url())
            .set("RELAY__SECURITY__ALLOWED_NETWORKS", "0.0.0.0/0,::/0")
            .set(
                "RELAY__SECURITY__ALLOWED_HOSTS",
                "hooks.corp.internal,*.svc.cluster.local",
            ),
    )
    .await;
    for url in [
        "https://metadata.google.internal/computeMetadata/v1/",
        "https://METADATA.Google.Internal./computeMetadata/v1/",
        "https://metadata.goog/",
        "https://metadata/",
        "https://instance-data/latest/",
        "https://instance-data.ec2.internal/latest/",
        "https://anything.internal/",
        "https://printer.local/",
        "https://localhost:8443/",
        "https://api.localhost/",
        "https://box.localdomain/",
        "https://redis.svc/",
        "https://kubernetes/",
        "https://other.corp.internal/",
    ] {
        let (status, problem) = call(
            &relay,
            ADMIN_KEY,
            Method::POST,
            "/v1/subscriptions",
            Some(json!({"url": url, "event_types": ["#"]})),
        )
        .await;
        assert_problem(status, &problem, 422, "destination-not-allowed");
        assert_eq!(problem["field"], "url", "{url}");
    }
    for (url, stored) in [
        (
            "https://hooks.corp.internal/x",
            "https://hooks.corp.internal/x",
        ),
        (
            "https://Web.Shop.svc.cluster.local:8443/x",
            "https://web.shop.svc.cluster.local:8443/x",
        ),
    ] {
        let (status, sub) = call(
            &relay,
            ADMIN_KEY,
            Method::POST,
            "/v1/subscriptions",
            Some(json!({"url": url, "event_types": ["#"]})),
        )
        .await;
        assert_eq!((status, sub["url"].as_str()), (201, Some(stored)), "{sub}");
    }
    relay.stop().await;
}

#[tokio::test]
async fn the_url_shown_is_exactly_where_deliveries_go() {
    let relay = system().await;
    for (url, reason) in [
        ("https://example.com/\nX-Injected: 1", "U+000A"),
        ("https://exa\tmple.com/hook", "U+0009"),
        ("https:///hook", "host"),
        ("https://user:pw@example.com/", "credentials"),
        ("https://example.com/#frag", "fragment"),
    ] {
        let (status, problem) = call(
            &relay,
            ADMIN_KEY,
            Method::POST,
            "/v1/subscriptions",
            Some(json!({"url": url, "event_types": ["#"]})),
        )
        .await;
        assert_eq!(
            (status, problem["field"].as_str()),
            (400, Some("url")),
            "{url:?}"
        );
        assert!(
            problem["detail"].as_str().unwrap().contains(reason),
            "{url:?}: {problem}"
        );
    }

    // Written loosely, stored as the parser normalises it: the same URL the dispatcher calls.
    let hook = Receiver::start().await;
    let port = hook.addr().port();
    let given = format!("HTTP://127.0.0.1:{port}/a/../hook/./x?q='quoted'");
    let expected_target = "/hook/x?q=%27quoted%27";
    let created = relay.subscribe(&given, &["norm.*"], None).await;
    assert_eq!(
        created["url"],
        format!("http://127.0.0.1:{port}{expected_target}").as_str()
    );
    let (_, shown) = call(
        &relay,
        ADMIN_KEY,
        Method::GET,
        &format!("/v1/subscriptions/{}", created["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(shown["url"], created["url"]);
    relay
        .publish_ok(&json!({"type": "norm.check", "data": {}}))
        .await;
    let got = hook.wait_for(1, WAIT).await;
    assert_eq!(got[0].target, expected_target);
    relay.stop().await;
}

#[tokio::test]
async fn disabling_announces_it_through_relay_and_a_test_ping_reaches_one_subscription() {
    let relay = system().await;
    let watcher = Receiver::start().await;
    let operator = Receiver::start().await;
    let (a, b) = (Receiver::start().await, Receiver::start().await);
    relay
        .subscribe(
            &watcher.url(),
            &["relay.subscription.disabled"],
            Some("acme"),
        )
        .await;
    relay
        .subscribe(&operator.url(), &["relay.endpoint.*"], Some("acme"))
        .await;
    let sub_a = relay.subscribe(&a.url(), &["thing.*"], Some("acme")).await;
    relay.subscribe(&b.url(), &["#"], None).await;
    let id = sub_a["id"].as_str().unwrap();

    let (status, ping) = call(
        &relay,
        ADMIN_KEY,
        Method::POST,
        &format!("/v1/subscriptions/{id}/test"),
        None,
    )
    .await;
    assert_eq!(status, 202, "{ping}");
    let got = a.wait_for(1, WAIT).await;
    assert_eq!(got[0].json()["type"], "relay.ping");
    assert_eq!(got[0].header("webhook-id"), ping["event_id"].as_str());
    assert!(tests::receiver::verify(
        &got[0],
        sub_a["secret"].as_str().unwrap()
    ));

    let (status, disabled) = call(
        &relay,
        ADMIN_KEY,
        Method::POST,
        &format!("/v1/subscriptions/{id}/disable"),
        Some(json!({"reason": "endpoint answered 410 Gone"})),
    )
    .await;
    assert_eq!(status, 200, "{disabled}");
    assert_eq!(
        (
            disabled["enabled"].clone(),
            disabled["disabled_reason"].clone()
        ),
        (json!(false), json!("endpoint answered 410 Gone"))
    );
    // The new name, and the former one for one release, with the same documented data.
    let expected = json!({"subscription_id": id, "consumer": "acme",
                          "reason": "endpoint answered 410 Gone", "url": a.url()});
    for (receiver, event_type) in [
        (&watcher, "relay.subscription.disabled"),
        (&operator, "relay.endpoint.disabled"),
    ] {
        let announced = receiver.wait_for(1, WAIT).await;
        let body = announced[0].json();
        assert_eq!(body["type"], event_type);
        assert_eq!(body["consumer"], "acme");
        assert_eq!(body["data"], expected);
    }
    // The ping went to one subscription only; disabling twice announces once.
    let (status, _) = call(
        &relay,
        ADMIN_KEY,
        Method::POST,
        &format!("/v1/subscriptions/{id}/disable"),
        Some(json!({"reason": "again"})),
    )
    .await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!((watcher.count(), operator.count()), (1, 1));
    // b is an operator's subscription (no consumer) to `#`: it receives every consumer's
    // operational events (both names of the disabling), never the ping.
    b.wait_for(2, WAIT).await;
    let mut seen: Vec<String> = b
        .received()
        .iter()
        .map(|r| r.json()["type"].as_str().unwrap().to_owned())
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        ["relay.endpoint.disabled", "relay.subscription.disabled"]
    );

    let (_, enabled) = call(
        &relay,
        ADMIN_KEY,
        Method::PATCH,
        &format!("/v1/subscriptions/{id}"),
        Some(json!({"enabled": true})),
    )
    .await;
    assert_eq!(enabled["disabled_reason"], Value::Null);
    relay.stop().await;
}

#[tokio::test]
async fn openapi_json_describes_every_route_and_validates_as_openapi_3() {
    let relay = system().await;
    let response = relay
        .http
        .get(format!("{}/openapi.json", relay.api_url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let doc: Value = response.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/consumers",
        "/v1/consumers/{id}",
        "/v1/consumers/{id}/keys",
        "/v1/consumers/{id}/keys/{key_id}",
        "/v1/directory",
        "/v1/subscriptions",
        "/v1/subscriptions/{id}",
        "/v1/subscriptions/{id}/secret",
        "/v1/subscriptions/{id}/rotate-secret",
        "/v1/subscriptions/{id}/disable",
        "/v1/subscriptions/{id}/test",
        "/v1/subscriptions/{id}/replay",
        "/v1/replays/{id}",
        "/v1/subscriptions/{id}/attempts",
        "/v1/events",
        "/v1/events/{id}",
        "/v1/dead-letters",
        "/v1/dead-letters/redrive",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is not documented");
    }
    let file = std::env::temp_dir().join(format!("relay-openapi-{}.json", std::process::id()));
    std::fs::write(&file, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let output = tokio::process::Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .await
        .expect("python3 runs (deploy/local/test.sh installs openapi-spec-validator)");
    let _ = std::fs::remove_file(&file);
    assert!(
        output.status.success(),
        "openapi-spec-validator refused the document:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    relay.stop().await;
}

/// Reads `path` with `key` until `done` holds for its 200 body (up to `timeout`); returns it.
pub(crate) async fn poll_until(
    relay: &System,
    key: &str,
    path: &str,
    timeout: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let (status, body) = call(relay, key, Method::GET, path, None).await;
        assert_eq!(status, 200, "{path}: {body}");
        if done(&body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} not as awaited after {timeout:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls the subscription until it is disabled; returns it.
async fn wait_disabled(relay: &System, id: &str) -> Value {
    poll_until(
        relay,
        ADMIN_KEY,
        &format!("/v1/subscriptions/{id}"),
        WAIT,
        |sub| sub["enabled"] == json!(false),
    )
    .await
}

#[tokio::test]
async fn gone_endpoints_and_endpoints_failing_too_long_are_disabled() {
    let relay = System::start_with(
        Options::new(shared_amqp_url())
            .set(
                "RELAY__DISPATCH__RETRY_SCHEDULE",
                "300ms,300ms,300ms,300ms,300ms,300ms,300ms,300ms",
            )
            .set("RELAY__API__DISABLE_AFTER_FAILING_FOR", "1s")
            .set("RELAY__API__MAINTENANCE_INTERVAL", "100ms"),
    )
    .await;
    let gone = Receiver::start_with(tests::receiver::Behaviour::Status(410)).await;
    let failing = Receiver::start_with(tests::receiver::Behaviour::Status(503)).await;
    let healthy = Receiver::start().await;
    let sub_gone = relay.subscribe(&gone.url(), &["fail.*"], None).await;
    let sub_failing = relay.subscribe(&failing.url(), &["fail.*"], None).await;
    let sub_healthy = relay.subscribe(&healthy.url(), &["fail.*"], None).await;
    relay
        .publish_ok(&json!({"type": "fail.now", "data": {}}))
        .await;

    let disabled = wait_disabled(&relay, sub_gone["id"].as_str().unwrap()).await;
    assert!(
        disabled["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("410"),
        "{disabled}"
    );
    let disabled = wait_disabled(&relay, sub_failing["id"].as_str().unwrap()).await;
    assert!(
        disabled["disabled_reason"]
            .as_str()
            .unwrap()
            .starts_with("failing since "),
        "{disabled}"
    );
    // The delivery log shows why.
    let (_, log) = call(
        &relay,
        ADMIN_KEY,
        Method::GET,
        &format!(
            "/v1/subscriptions/{}/attempts?outcome=retry_scheduled",
            sub_failing["id"].as_str().unwrap()
        ),
        None,
    )
    .await;
    assert_eq!(log["data"][0]["status"], 503, "{log}");
    assert_eq!(log["data"][0]["attempt"], 1);
    let (_, sub) = call(
        &relay,
        ADMIN_KEY,
        Method::GET,
        &format!("/v1/subscriptions/{}", sub_healthy["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(sub["enabled"], true);
    relay.stop().await;
}
