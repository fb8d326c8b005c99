//! An attempt as sent and as answered: the request's headers exactly as the endpoint got them
//! (credentials redacted) and the response's headers (bounded), in the attempts API and on
//! the portal's attempt page, as text.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tests::{
    browser::Browser,
    receiver::{Behaviour, Receiver},
};

use crate::{
    portal::{consumer, portal, shot, sign_in},
    system,
};

const WAIT: Duration = Duration::from_secs(20);
const HOSTILE: &str =
    "<script>window.__pwned = 'header'</script><img src=x onerror=\"window.__pwned = 'img'\">";

/// `[{name, value}, …]` as pairs.
fn pairs(headers: &Value) -> Vec<(String, String)> {
    headers
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["name"].as_str().unwrap().to_owned(),
                h["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn portal_attempts_show_the_headers_sent_and_answered() {
    let system = system().await;
    consumer(&system, "acme").await;
    // 40 headers of its own (the first hostile) besides the ones the HTTP stack adds: more
    // than the 32 a record keeps.
    let answered: Vec<(String, String)> = (0..40)
        .map(|i| {
            let value = if i == 0 {
                HOSTILE.to_owned()
            } else {
                format!("v{i}")
            };
            (format!("x-h-{i:02}"), value)
        })
        .collect();
    let receiver = Receiver::start_with(Behaviour::Headers(200, answered)).await;
    let sub = system
        .subscribe_with(json!({
            "url": receiver.url(), "event_types": ["order.*"], "consumer": "acme",
            "headers": {"X-Tenant": "acme"},
            "credentials": {"type": "bearer", "token": "t0ken-secret"},
        }))
        .await;
    let sub = sub["id"].as_str().unwrap().to_owned();
    system
        .publish_ok(&json!({"type": "order.created", "consumer": "acme", "data": {"n": 1}}))
        .await;
    let got = receiver.wait_for(1, WAIT).await;
    let arrived = &got[0];

    // The attempts API: what the endpoint got, header for header, the token redacted.
    let deadline = tokio::time::Instant::now() + WAIT;
    let attempt = loop {
        let list: Value = system
            .api(Method::GET, &format!("/v1/subscriptions/{sub}/attempts"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(first) = list["data"].as_array().and_then(|a| a.first()) {
            break first.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "no attempt: {list}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!attempt.to_string().contains("t0ken-secret"), "{attempt}");
    let sent = pairs(&attempt["request_headers"]);
    for (name, value) in &sent {
        if name == "authorization" {
            assert_eq!(value, "[redacted]");
            assert_eq!(arrived.header(name), Some("Bearer t0ken-secret"));
        } else {
            assert_eq!(arrived.header(name), Some(value.as_str()), "{name}");
        }
    }
    let names: Vec<&str> = sent.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "x-tenant",
            "authorization",
            "content-type",
            "webhook-id",
            "webhook-timestamp",
            "webhook-signature",
            "traceparent"
        ]
    );
    let received = pairs(&attempt["response_headers"]);
    assert_eq!(received.len(), 32, "{received:?}");
    assert!(received.contains(&("x-h-00".to_owned(), HOSTILE.to_owned())));
    let omitted = attempt["response_headers_omitted"].as_u64().unwrap();
    // 40 of the receiver's and those of the HTTP stack (content-length, date), less the 32 kept.
    assert!(omitted >= 8, "{omitted}");

    // The portal's attempt page: the same headers, as text; nothing runs.
    let browser = Browser::start().await;
    sign_in(&system, &browser, "acme", json!({})).await;
    browser
        .goto(&portal(&system, &format!("/deliveries?endpoint={sub}")))
        .await;
    browser.wait_page("deliveries").await;
    browser.click("td a[href*='/deliveries/']").await;
    browser.wait_page("attempt").await;
    let request = browser.text("#request-headers").await;
    for (name, value) in &sent {
        assert!(request.contains(name.as_str()), "{name} in {request}");
        assert!(request.contains(value.as_str()), "{value} in {request}");
    }
    assert!(!browser.text("main").await.contains("t0ken-secret"));
    let response = browser.text("#response-headers").await;
    assert!(response.contains(HOSTILE), "{response}");
    assert!(
        browser
            .text("#response-headers-omitted")
            .await
            .contains(&format!("{omitted} more"))
    );
    let clean = browser
        .eval(
            "return document.querySelectorAll('script').length === 1 \
             && document.querySelectorAll('[onerror]').length === 0 \
             && window.__pwned === undefined;",
        )
        .await;
    assert_eq!(clean, json!(true));
    shot(&browser, "attempt-headers").await;

    browser.close().await;
    system.stop().await;
}
