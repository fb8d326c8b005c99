//! Fault tests of the dispatcher's lifecycle on a real broker: a connection blip does not
//! wait for slow requests in flight, readiness tells the truth meanwhile, and every webhook
//! request has its attempt record across a blip and a SIGTERM.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use reqwest::Method;
use serde_json::{Value, json};
use tests::{
    broker::PrivateBroker,
    process::DispatcherProcess,
    receiver::{Behaviour, Receiver},
    system::{Options, System},
};

/// Publishes `event`, retrying 503s for up to 30 s; the accepted id.
async fn publish_retrying(relay: &System, event: &Value) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = relay.publish(event).await;
        if response.status() == 202 {
            let body: Value = response.json().await.unwrap();
            return body["id"].as_str().unwrap().to_owned();
        }
        assert_eq!(response.status(), 503);
        assert!(Instant::now() < deadline, "ingest refused for 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn after_a_connection_blip_delivery_resumes_without_waiting_for_slow_requests() {
    let broker = PrivateBroker::start().await;
    let relay = System::start_with(
        Options::new(broker.amqp_url()).set("RELAY__DISPATCH__REQUEST_TIMEOUT", "30s"),
    )
    .await;
    let slow = Receiver::start_with(Behaviour::Delay(Duration::from_secs(10))).await;
    let fast = Receiver::start().await;
    relay.subscribe(&slow.url(), &["slow.*"], None).await;
    relay.subscribe(&fast.url(), &["fast.*"], None).await;
    for _ in 0..3 {
        relay.publish_ok(&json!({"type": "slow.event"})).await;
    }
    assert_eq!(
        slow.wait_for(3, Duration::from_secs(10)).await.len(),
        3,
        "the slow requests are in flight"
    );
    relay.publish_ok(&json!({"type": "fast.event"})).await;
    assert_eq!(fast.wait_for(1, Duration::from_secs(10)).await.len(), 1);

    // Watch the dispatcher's readiness throughout.
    let ready_url = format!("{}/readyz", relay.dispatcher_urls[0]);
    let saw_not_ready = Arc::new(AtomicBool::new(false));
    let went_down = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let watcher = tokio::spawn({
        let (http, saw, down) = (relay.http.clone(), saw_not_ready.clone(), went_down.clone());
        async move {
            loop {
                let status = http.get(&ready_url).send().await.map(|r| r.status());
                if !matches!(status, Ok(s) if s == 200) && !saw.swap(true, Ordering::SeqCst) {
                    *down.lock().unwrap() = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let blip = Instant::now();
    broker.ctl(&["close_all_connections", "fault test"]).await;
    // A fresh fast event every 50 ms until one is delivered.
    let before = fast.count();
    let resumed = loop {
        publish_retrying(&relay, &json!({"type": "fast.event"})).await;
        if fast.count() > before {
            break Instant::now();
        }
        assert!(
            blip.elapsed() < Duration::from_secs(30),
            "no delivery for 30 s after the blip"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    watcher.abort();
    let down_at = (*went_down.lock().unwrap()).unwrap_or(blip);
    let resumed_after = resumed.duration_since(down_at);
    println!(
        "FIGURE blip_resume resumed_after_ms={} since_ctl_ms={}",
        resumed_after.as_millis(),
        resumed.duration_since(blip).as_millis()
    );
    assert!(
        saw_not_ready.load(Ordering::SeqCst),
        "readyz stayed 200 while the consumers were down"
    );
    // The slow requests take 10 s: resuming well before shows nothing waited for them.
    assert!(
        resumed_after < Duration::from_secs(5),
        "delivery resumed only after {resumed_after:?}"
    );
    relay.stop().await;
}

/// Successful attempt records of `subscription` in consumer-api.
async fn successes(relay: &System, subscription: &str) -> usize {
    let mut count = 0;
    let mut after: Option<String> = None;
    loop {
        let mut path =
            format!("/v1/subscriptions/{subscription}/attempts?outcome=success&limit=1000");
        if let Some(cursor) = &after {
            path.push_str(&format!("&after={cursor}"));
        }
        let page: Value = relay
            .api(Method::GET, &path)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        count += page["data"].as_array().map_or(0, Vec::len);
        // `next_cursor` is always present; `has_more` says whether there is more now.
        if page["has_more"] != Value::Bool(true) {
            return count;
        }
        after = page["next_cursor"].as_str().map(str::to_owned);
    }
}

#[tokio::test]
async fn every_webhook_request_has_its_attempt_record_across_a_blip_and_a_sigterm() {
    let broker = PrivateBroker::start().await;
    let relay = System::start_with(Options {
        dispatchers: 0,
        ..Options::new(broker.amqp_url())
    })
    .await;
    let hook = Receiver::start_with(Behaviour::Delay(Duration::from_millis(20))).await;
    let sub = relay
        .create_subscription(&hook.url(), &["rec.*"], None)
        .await;
    let id = sub["id"].as_str().unwrap().to_owned();
    let grace = [("RELAY__DISPATCH__SHUTDOWN_GRACE", "10s")];
    let mut first = DispatcherProcess::start(&relay, &grace).await;

    let n = 600;
    let publishing = {
        let relay_events: Vec<Value> = (0..n)
            .map(|i| json!({"type": "rec.event", "data": {"i": i}}))
            .collect();
        relay_events
    };
    let mut accepted = Vec::new();
    for chunk in publishing.chunks(50) {
        let response = relay
            .http
            .post(format!("{}/v1/events/batch", relay.ingest_url))
            .bearer_auth(tests::system::PUBLISHER_KEY)
            .json(&chunk)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.unwrap();
        accepted.extend(
            body["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_owned()),
        );
    }
    // A blip mid-stream, then a SIGTERM mid-stream; a second dispatcher finishes the work.
    hook.wait_for(100, Duration::from_secs(30)).await;
    broker.ctl(&["close_all_connections", "fault test"]).await;
    let at_blip = hook.count();
    hook.wait_for(at_blip + 100, Duration::from_secs(30)).await;
    first.signal("TERM");
    let status = first
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("exited");
    assert!(status.success(), "dispatcher exited with {status}");
    let _second = DispatcherProcess::start(&relay, &[]).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let seen = loop {
        let seen: std::collections::HashSet<String> = hook
            .received()
            .iter()
            .filter_map(|r| r.header("webhook-id").map(str::to_owned))
            .collect();
        if accepted.iter().all(|id| seen.contains(id)) || Instant::now() > deadline {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        accepted.iter().all(|id| seen.contains(id)),
        "an event was lost"
    );
    // Every request the receiver saw has its record: wait until the counts meet, then check
    // they stay equal (a record too many would show as well).
    let requests = hook.count();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut records = successes(&relay, &id).await;
    while records < requests && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        records = successes(&relay, &id).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (requests, records) = (hook.count(), successes(&relay, &id).await);
    println!(
        "FIGURE records accepted={} requests={} records={} duplicates={}",
        accepted.len(),
        requests,
        records,
        requests - seen.len()
    );
    assert_eq!(
        records, requests,
        "attempt records differ from webhook requests"
    );
    relay.stop().await;
}
