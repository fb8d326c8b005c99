//! The consumer portal in a real browser (headless Chromium over WebDriver) against a whole
//! Relay: consumer-api, a dispatcher, ingest and RabbitMQ, with real receivers on loopback.
//!
//! Each test also saves a screenshot of the pages it visits, to `RELAY_PORTAL_SCREENSHOTS`
//! when set (the README's pictures come from there: `docs/portal/`), else to a temporary
//! directory.

use std::{path::PathBuf, time::Duration};

use reqwest::Method;
use serde_json::{Value, json};
use tests::{
    browser::Browser,
    receiver::{Behaviour, Receiver, verify},
    system::System,
};

use crate::system;

fn shots() -> PathBuf {
    std::env::var("RELAY_PORTAL_SCREENSHOTS").map_or_else(
        |_| std::env::temp_dir().join("relay-portal-screenshots"),
        PathBuf::from,
    )
}

/// Checks the current page's accessibility basics, then saves its screenshot as `name`.
pub(crate) async fn shot(browser: &Browser, name: &str) {
    let problems = browser.accessibility_problems().await;
    assert!(problems.is_empty(), "page {name}: {problems:#?}");
    browser.screenshot(&shots(), name).await;
}

pub(crate) fn portal(system: &System, path: &str) -> String {
    format!("{}/portal{path}", system.api_url)
}

/// Creates consumer `id` (admin).
pub(crate) async fn consumer(system: &System, id: &str) {
    let answer = system
        .api(Method::POST, "/v1/consumers")
        .json(&json!({ "id": id, "name": format!("{id} Inc.") }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 201);
}

/// Mints a link for `consumer` with `key` (admin when `None`); returns the answer.
async fn mint(system: &System, consumer: &str, key: Option<&str>, body: Value) -> (u16, Value) {
    let mut request = system
        .http
        .post(format!(
            "{}/v1/consumers/{consumer}/portal-sessions",
            system.api_url
        ))
        .json(&body);
    request = request.bearer_auth(key.unwrap_or(tests::system::ADMIN_KEY));
    let answer = request.send().await.unwrap();
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or(Value::Null))
}

/// Mints a link (admin) and opens it: the browser lands on the endpoints page.
pub(crate) async fn sign_in(
    system: &System,
    browser: &Browser,
    consumer: &str,
    body: Value,
) -> Value {
    let (status, link) = mint(system, consumer, None, body).await;
    assert_eq!(status, 201, "{link}");
    browser.goto(link["url"].as_str().unwrap()).await;
    browser.wait_page("endpoints").await;
    link
}

/// Waits until every dispatcher has loaded `n` subscriptions.
async fn dispatchers_know(system: &System, n: usize) {
    for dispatcher in &system.dispatcher_urls {
        system
            .wait_for_metric(dispatcher, "relay_subscriptions_loaded", |v| v >= n as f64)
            .await;
    }
}

/// Waits until `check` of the current page (re-read after each self-refresh) holds.
async fn wait_for(browser: &Browser, what: &str, script: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if browser.eval(script).await == Value::Bool(true) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited in vain for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (via the API) until `consumer`'s subscription `sub` has `n` dead letters.
async fn dead_letters(system: &System, sub: &str, n: usize) -> Vec<Value> {
    let query = format!("?subscription_id={sub}");
    system
        .wait_for_dead_letters(&query, n, Duration::from_secs(20))
        .await
}

#[tokio::test]
async fn portal_links_open_once_sessions_end_and_only_own_data_is_reachable() {
    let system = system().await;
    let acme_key = crate::consumer_api::tenant(&system, "acme").await;
    consumer(&system, "globex").await;
    let globex_receiver = Receiver::start().await;
    let theirs = system
        .create_subscription(&globex_receiver.url(), &["order.*"], Some("globex"))
        .await;
    let theirs = theirs["id"].as_str().unwrap();
    let browser = Browser::start().await;

    // A consumer key mints for its own consumer only; another's answers 404.
    let (status, _) = mint(&system, "globex", Some(&acme_key), json!({})).await;
    assert_eq!(status, 404);
    let (status, link) = mint(&system, "acme", Some(&acme_key), json!({})).await;
    assert_eq!(status, 201, "{link}");
    let url = link["url"].as_str().unwrap();
    assert!(url.starts_with(&portal(&system, "/login/")), "{url}");

    // Open the link → the consumer's endpoints page.
    browser.goto(url).await;
    browser.wait_page("endpoints").await;
    assert!(browser.text("main").await.contains("No endpoints yet"));
    assert_eq!(browser.text(".who strong").await, "acme");
    shot(&browser, "endpoints-empty").await;

    // Another consumer's ids typed into the URL → the 404 page.
    for path in [
        format!("/endpoints/{theirs}"),
        format!("/endpoints/{theirs}/edit"),
        "/deliveries/1".to_owned(),
    ] {
        browser.goto(&portal(&system, &path)).await;
        browser.wait_page("error-404").await;
    }
    shot(&browser, "not-found").await;

    // A POST without the CSRF token → 403, nothing created.
    browser.goto(&portal(&system, "/endpoints/new")).await;
    browser.wait_page("endpoint-form").await;
    browser.fill("#url", &globex_receiver.url()).await;
    browser.fill("#patterns", "order.*").await;
    browser
        .eval(
            "document.querySelectorAll('input[name=csrf]').forEach(e => e.remove()); return true;",
        )
        .await;
    browser.click("form.card button[type=submit]").await;
    browser.wait_page("error-403").await;
    let status = browser
        .eval(
            "return fetch(location.pathname.replace(/\\/endpoints.*$/, '/endpoints'), {method: 'POST', \
             headers: {'content-type': 'application/x-www-form-urlencoded'}, \
             body: 'url=https%3A%2F%2Fexample.com%2F&patterns=order.*&csrf=forged'}).then(r => r.status);",
        )
        .await;
    assert_eq!(status, json!(403));
    let mine: Value = system
        .http
        .get(format!("{}/v1/subscriptions", system.api_url))
        .bearer_auth(&acme_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(mine["data"], json!([]), "nothing was created");

    // Reusing the link is refused.
    browser.goto(url).await;
    browser.wait_page("link-expired").await;
    assert!(browser.text("main").await.contains("already used"));
    shot(&browser, "link-expired").await;

    // The session still works; revoked (by the product's backend) → the expired page.
    let (_, link) = mint(&system, "acme", None, json!({})).await;
    browser.goto(link["url"].as_str().unwrap()).await;
    browser.wait_page("endpoints").await;
    let revoked = system
        .http
        .delete(format!(
            "{}/v1/consumers/acme/portal-sessions/{}",
            system.api_url,
            link["id"].as_str().unwrap()
        ))
        .bearer_auth(&acme_key)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 204);
    browser.goto(&portal(&system, "/endpoints")).await;
    browser.wait_page("link-expired").await;

    // An expired session → the expired page. The session starts when the link is opened,
    // so once its page is shown, waiting longer than its TTL ends it.
    let (_, link) = mint(&system, "acme", None, json!({ "session_ttl": "1s" })).await;
    browser.goto(link["url"].as_str().unwrap()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !matches!(
        browser.page().await.as_deref(),
        Some("endpoints" | "link-expired")
    ) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the link did not open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    browser.goto(&portal(&system, "/deliveries")).await;
    browser.wait_page("link-expired").await;

    // Signing out ends the session too.
    sign_in(&system, &browser, "acme", json!({})).await;
    browser.click("form.signout button").await;
    browser.wait_page("signed-out").await;
    browser.goto(&portal(&system, "/endpoints")).await;
    browser.wait_page("link-expired").await;

    browser.close().await;
    system.stop().await;
}

#[tokio::test]
async fn portal_creates_an_endpoint_sends_a_test_event_and_rotates_the_secret() {
    let system = system().await;
    consumer(&system, "acme").await;
    let receiver = Receiver::start().await;
    // An event of the consumer's recorded beforehand, so its type is offered in the form.
    system
        .publish_ok(&json!({"type": "order.created", "consumer": "acme", "data": {"order": 1}}))
        .await;
    let browser = Browser::start().await;
    sign_in(
        &system,
        &browser,
        "acme",
        json!({"theme": {"name": "Acme Cloud", "accent": "#0f766e"}}),
    )
    .await;

    // Create an endpoint to the local receiver, choosing the recorded type.
    browser.click("a[href$='/endpoints/new']").await;
    browser.wait_page("endpoint-form").await;
    // The type is offered once the recorder has stored the event.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while browser
        .find_all("input[name=types][value='order.created']")
        .await
        .is_empty()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "order.created not offered"
        );
        browser.client.refresh().await.unwrap();
        browser.wait_page("endpoint-form").await;
    }
    browser.fill("#url", &receiver.url()).await;
    browser
        .click("input[name=types][value='order.created']")
        .await;
    browser.fill("#patterns", "invoice.#").await;
    browser.fill("#description", "Order service").await;
    shot(&browser, "endpoint-form").await;
    browser.click("form.card button[type=submit]").await;
    browser.wait_page("endpoint").await;
    assert!(browser.text(".notice").await.contains("Endpoint created"));
    dispatchers_know(&system, 1).await;

    // A URL the SSRF rules refuse is shown as a field error, nothing saved.
    browser.goto(&portal(&system, "/endpoints/new")).await;
    browser.wait_page("endpoint-form").await;
    browser
        .fill("#url", "http://169.254.169.254/latest/meta-data")
        .await;
    browser.fill("#patterns", "order.*").await;
    browser.click("form.card button[type=submit]").await;
    browser.wait_page("endpoint-form").await;
    assert!(!browser.text("#url-error").await.is_empty());

    // Send a test event and see the attempt and its answer.
    browser.goto(&portal(&system, "/endpoints")).await;
    browser.wait_page("endpoints").await;
    browser.click("td .cell-main a").await;
    browser.wait_page("endpoint").await;
    let endpoint_url = browser.client.current_url().await.unwrap().to_string();
    browser.click("form[action$='/test'] button").await;
    browser.wait_page("test-result").await;
    wait_for(
        &browser,
        "the test result",
        "return document.querySelector('#test-result[data-state=delivered]') !== null;",
    )
    .await;
    assert!(
        browser
            .text("#test-result .notice")
            .await
            .contains("answered 200")
    );
    shot(&browser, "test-result").await;
    let pings = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(pings[0].json()["type"], "relay.ping");
    browser
        .click("#test-result td a[href*='/deliveries/']")
        .await;
    browser.wait_page("attempt").await;
    assert_eq!(browser.text("#response-status").await, "200");

    // Reveal the secret: the test event's signature verifies with it.
    browser.goto(&endpoint_url).await;
    browser.wait_page("endpoint").await;
    browser
        .submit("form[action$='/secret'] button", "endpoint")
        .await;
    let old_secret = browser.text("#secret-value").await;
    assert!(old_secret.starts_with("whsec_"), "{old_secret}");
    assert!(
        verify(&pings[0], &old_secret),
        "the ping verifies with the revealed secret"
    );

    // Rotate (24 h grace): the next delivery carries two signatures, one per secret.
    browser
        .submit("form[action$='/rotate'] button", "endpoint")
        .await;
    let new_secret = browser.text("#secret-value").await;
    assert!(new_secret.starts_with("whsec_") && new_secret != old_secret);
    assert!(
        browser
            .text("main")
            .await
            .contains("previous secret also signs")
    );
    shot(&browser, "endpoint").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let delivery = loop {
        let before = receiver.count();
        system
            .publish_ok(&json!({"type": "order.created", "consumer": "acme", "data": {"order": 2}}))
            .await;
        let got = receiver.wait_for(before + 1, Duration::from_secs(10)).await;
        let last = got.last().unwrap().clone();
        if last
            .header("webhook-signature")
            .unwrap_or("")
            .split(' ')
            .count()
            == 2
        {
            break last;
        }
        // The rotation reaches dispatchers within a second: the next one carries both.
        assert!(
            tokio::time::Instant::now() < deadline,
            "never two signatures"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let signatures: Vec<&str> = delivery
        .header("webhook-signature")
        .unwrap()
        .split(' ')
        .collect();
    for secret in [&old_secret, &new_secret] {
        let key = secret.trim_start_matches("whsec_");
        let one = signatures.iter().any(|s| {
            let mut single = delivery.clone();
            single
                .headers
                .insert("webhook-signature", s.parse().unwrap());
            verify(&single, &format!("whsec_{key}"))
        });
        assert!(one, "a signature verifies with {secret}");
    }

    // The list shows the endpoint healthy with its 24 h figures.
    browser.goto(&portal(&system, "/endpoints")).await;
    browser.wait_page("endpoints").await;
    assert!(browser.text("tbody tr").await.contains("Healthy"));
    shot(&browser, "endpoints").await;

    // The endpoint page names the signature scheme; with v1a it links the consumer's JWKS.
    browser.goto(&endpoint_url).await;
    browser.wait_page("endpoint").await;
    assert_eq!(browser.text("#signature-scheme").await, "v1");
    assert!(browser.find_all("#jwks-link").await.is_empty());
    let both = system
        .create_subscription_with(json!({
            "url": receiver.url(), "event_types": ["order.*"], "consumer": "acme",
            "signature_scheme": "both",
        }))
        .await;
    let both = both["id"].as_str().unwrap();
    browser
        .goto(&portal(&system, &format!("/endpoints/{both}")))
        .await;
    browser.wait_page("endpoint").await;
    assert_eq!(browser.text("#signature-scheme").await, "both");
    let jwks = browser
        .eval("return fetch(document.getElementById('jwks-link').href).then(r => r.json());")
        .await;
    assert!(
        jwks["keys"].as_array().is_some_and(|k| !k.is_empty()),
        "{jwks}"
    );
    shot(&browser, "endpoint-v1a").await;

    browser.close().await;
    system.stop().await;
}

const HOSTILE_PAYLOAD: &str = "<script>window.__pwned = 'script'; fetch('HOOK/script')</script>";
const HOSTILE_IMG: &str = "<img src=x onerror=\"window.__pwned = 'img'; fetch('HOOK/img')\">";
const HOSTILE_LINK: &str = "javascript:window.__pwned='link';fetch('HOOK/link')";

#[tokio::test]
async fn portal_shows_hostile_payloads_responses_and_urls_as_text() {
    let system = system().await;
    consumer(&system, "acme").await;
    // The hook: any script that ran would call it (and set window.__pwned).
    let hook = Receiver::start().await;
    let hook_base = format!("http://{}", hook.addr());
    let hostile = |s: &str| s.replace("HOOK", &hook_base);
    let response_body = format!(
        "<html><body>{}<a href=\"{}\">click</a>{}</body></html>",
        hostile(HOSTILE_PAYLOAD),
        hostile(HOSTILE_LINK),
        hostile(HOSTILE_IMG)
    );
    let receiver = Receiver::start_with(Behaviour::Body(500, response_body)).await;
    let created = system
        .api(Method::POST, "/v1/subscriptions")
        .json(&json!({
            "url": receiver.url(),
            "event_types": ["order.*"],
            "consumer": "acme",
            "description": hostile(HOSTILE_IMG),
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let sub: Value = created.json().await.unwrap();
    let sub = sub["id"].as_str().unwrap().to_owned();
    dispatchers_know(&system, 1).await;
    let event_id = system
        .publish_ok(&json!({
            "type": "order.created",
            "consumer": "acme",
            "data": {
                "note": hostile(HOSTILE_PAYLOAD),
                "image": hostile(HOSTILE_IMG),
                "website": hostile(HOSTILE_LINK),
                "close": "</code></pre><script>window.__pwned='close'</script>",
            },
        }))
        .await;
    dead_letters(&system, &sub, 1).await;

    let browser = Browser::start().await;
    sign_in(&system, &browser, "acme", json!({})).await;
    let checks = "return document.querySelectorAll('script').length === 1 \
        && document.querySelectorAll('[onerror]').length === 0 \
        && document.querySelectorAll('a[href^=\"javascript:\"]').length === 0 \
        && window.__pwned === undefined;";
    // The endpoint's description, on the list.
    assert!(browser.text("main").await.contains("onerror="));
    assert_eq!(browser.eval(checks).await, json!(true), "endpoints");

    // The delivery log: the attempt shows the payload sent and the response, as text.
    browser
        .goto(&portal(
            &system,
            &format!("/deliveries?event_id={event_id}&status=dead"),
        ))
        .await;
    browser.wait_page("deliveries").await;
    shot(&browser, "deliveries").await;
    browser.click("td a[href*='/deliveries/']").await;
    browser.wait_page("attempt").await;
    assert_eq!(browser.eval(checks).await, json!(true), "attempt");
    let request = browser.text("#request-body").await;
    assert!(request.contains(&hostile(HOSTILE_PAYLOAD)), "{request}");
    assert!(request.contains("</code></pre><script>"), "{request}");
    let response = browser.text("#response-body").await;
    assert!(response.contains(&hostile(HOSTILE_PAYLOAD)), "{response}");
    assert!(response.contains(&hostile(HOSTILE_IMG)), "{response}");
    assert!(response.contains("javascript:"), "{response}");
    assert_eq!(browser.text("#response-status").await, "500");
    shot(&browser, "attempt").await;

    // The event types page shows the payload as its example, as text.
    browser.goto(&portal(&system, "/event-types")).await;
    browser.wait_page("event-types").await;
    assert!(
        browser
            .text("main")
            .await
            .contains(&hostile(HOSTILE_PAYLOAD))
    );
    assert_eq!(browser.eval(checks).await, json!(true), "event types");
    shot(&browser, "event-types").await;

    // A javascript: URL is refused as an endpoint.
    browser.goto(&portal(&system, "/endpoints/new")).await;
    browser.wait_page("endpoint-form").await;
    browser.fill("#url", &hostile(HOSTILE_LINK)).await;
    browser.fill("#patterns", "order.*").await;
    browser.click("form.card button[type=submit]").await;
    browser.wait_page("endpoint-form").await;
    assert!(!browser.text("#url-error").await.is_empty());
    assert_eq!(browser.eval(checks).await, json!(true), "form");

    // Nothing ran: the hook was never called.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(hook.count(), 0, "a script ran in the portal");
    browser.close().await;
    system.stop().await;
}

#[tokio::test]
async fn portal_replays_a_window_and_redrives_a_dead_letter() {
    let system = system().await;
    consumer(&system, "acme").await;
    let receiver = Receiver::start_with(Behaviour::Status(503)).await;
    let sub = system
        .subscribe(&receiver.url(), &["order.*"], Some("acme"))
        .await;
    let sub = sub["id"].as_str().unwrap().to_owned();
    let event_id = system
        .publish_ok(&json!({"type": "order.created", "consumer": "acme", "data": {"order": 7}}))
        .await;
    // Three attempts (the test schedule), then a dead letter.
    dead_letters(&system, &sub, 1).await;
    receiver.set_behaviour(Behaviour::Status(200));
    let failed = receiver.count();

    let browser = Browser::start().await;
    sign_in(&system, &browser, "acme", json!({})).await;

    // Redrive the dead letter from the UI → it is delivered.
    browser.click("nav a[href$='/dead-letters']").await;
    browser.wait_page("dead-letters").await;
    shot(&browser, "dead-letters").await;
    browser.click("tr[data-dead-letter] button[name=one]").await;
    browser.wait_page("dead-letters").await;
    assert!(browser.text(".notice").await.starts_with("1 dead letter"));
    let got = receiver.wait_for(failed + 1, Duration::from_secs(20)).await;
    assert!(got.len() > failed, "the redriven delivery arrived");
    assert_eq!(got[failed].header("webhook-id"), Some(event_id.as_str()));
    assert!(browser.text("tbody").await.contains("Redriven"));

    // Replay the last hour from the endpoint's page → delivered again.
    browser
        .goto(&portal(&system, &format!("/endpoints/{sub}")))
        .await;
    browser.wait_page("endpoint").await;
    let since =
        relay_shared::envelope::rfc3339(time::OffsetDateTime::now_utc() - time::Duration::hours(1));
    browser
        .eval(&format!(
            "document.getElementById('since').value = '{}'; return true;",
            &since[..19]
        ))
        .await;
    browser.click("form[action$='/replay'] button").await;
    // The job's page, refreshing itself (no script) until the job is done.
    browser.wait_page("replay").await;
    wait_for(
        &browser,
        "the replay to finish",
        "return document.querySelector('#replay[data-state=done]') !== null;",
    )
    .await;
    assert!(browser.text(".notice").await.contains("1 event(s) re-sent"));
    assert_eq!(
        browser.text("label[for=replay-progress]").await,
        "1 of 1 event(s) re-sent"
    );
    assert_eq!(
        browser
            .eval("return document.getElementById('replay-progress').value;")
            .await,
        json!(1)
    );
    shot(&browser, "replay").await;
    let got = receiver.wait_for(failed + 2, Duration::from_secs(20)).await;
    assert!(got.len() > failed + 1, "the replayed delivery arrived");
    assert_eq!(
        got[failed + 1].header("webhook-id"),
        Some(event_id.as_str())
    );

    // The log shows the deliveries that succeeded (recorded within a moment).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        browser
            .goto(&portal(&system, "/deliveries?status=delivered"))
            .await;
        browser.wait_page("deliveries").await;
        if browser.find_all("tbody tr .badge-ok").await.len() >= 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no delivered attempts shown"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    browser.close().await;
    system.stop().await;
}

/// Processes of group `group` that are still running (zombies, already dead, aside).
fn running_in_group(group: u32) -> Vec<String> {
    let mut running = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid pgrp …`; comm may hold spaces and parentheses.
        let Some((head, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(2) == Some(&group.to_string().as_str()) && fields[0] != "Z" {
            running.push(head.to_owned());
        }
    }
    running
}

#[tokio::test]
async fn a_browser_test_that_panics_leaves_no_browser_running() {
    let (started, group) = tokio::sync::oneshot::channel();
    let failed = tokio::spawn(async move {
        let browser = Browser::start().await;
        browser
            .goto("data:text/html,<title>t</title><p>open</p>")
            .await;
        assert_eq!(browser.text("p").await, "open");
        let group = browser.process_group().unwrap();
        assert!(!running_in_group(group).is_empty());
        started.send(group).unwrap();
        panic!("a browser test fails with its browser open");
    })
    .await;
    assert!(failed.unwrap_err().is_panic());
    let group = group.await.unwrap();
    // Killed on the unwind; gone once the kernel has delivered the signals.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = running_in_group(group);
        if left.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still running: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
