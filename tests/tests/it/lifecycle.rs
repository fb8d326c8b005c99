//! Fault tests of the dispatcher's lifecycle on a real broker: a connection blip does not
//! wait for slow requests in flight, readiness tells the truth meanwhile, and every webhook
//! request has its attempt record across a blip and a SIGTERM, and a broker that stops
//! answering does not hold a shutdown.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use reqwest::Method;
use serde_json::{Value, json};
use tests::{
    broker::PrivateBroker,
    freeze::FreezingProxy,
    process::DispatcherProcess,
    receiver::{Behaviour, Receiver},
    stalls::Stalls,
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

/// The broker's own cost of a reconnect at this moment: a fresh connection that declares
/// the topology, as every Relay process does when it reconnects.
async fn bare_reconnect(relay: &System, url: &str) -> Duration {
    let prefix = relay
        .env
        .iter()
        .find_map(|(k, v)| (k == "RELAY__AMQP__PREFIX").then_some(v.as_str()))
        .unwrap();
    let started = Instant::now();
    let connection = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    relay_shared::topology::Topology::new(prefix)
        .declare(&channel)
        .await
        .unwrap();
    let took = started.elapsed();
    let _ = connection.close(200, "measured".into()).await;
    took
}

#[tokio::test]
async fn after_a_connection_blip_delivery_resumes_without_waiting_for_slow_requests() {
    let broker = PrivateBroker::start().await;
    let url = broker.amqp_url();
    let relay = System::start_with(
        Options::new(broker.amqp_url()).set("RELAY__DISPATCH__REQUEST_TIMEOUT", "30s"),
    )
    .await;
    let stalls = Stalls::start();
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

    // Watch the dispatcher's readiness throughout: when it went down (it lost its consumers).
    let ready_url = format!("{}/readyz", relay.dispatcher_urls[0]);
    let went_down = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let watcher = tokio::spawn({
        let (http, down) = (relay.http.clone(), went_down.clone());
        async move {
            loop {
                let status = http.get(&ready_url).send().await.map(|r| r.status());
                if !matches!(status, Ok(s) if s == 200) {
                    down.lock().unwrap().get_or_insert_with(Instant::now);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    // rabbitmqctl takes seconds to start on a loaded machine and closes the connections
    // somewhere in that time: publish all along, and take the events sent after the
    // dispatcher went down.
    let blip = tokio::spawn(async move {
        broker.ctl(&["close_all_connections", "fault test"]).await;
        broker
    });
    let mut after_down = std::collections::HashSet::new();
    let started = Instant::now();
    let (down_at, resumed) = loop {
        let down = *went_down.lock().unwrap();
        let id = publish_retrying(&relay, &json!({"type": "fast.event"})).await;
        if let Some(down) = down {
            after_down.insert(id);
            let first = fast
                .received()
                .iter()
                .filter(|r| {
                    r.header("webhook-id")
                        .is_some_and(|id| after_down.contains(id))
                })
                .map(|r| r.at)
                .min();
            if let Some(at) = first {
                break (down, at);
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no delivery for 60 s after the blip (readyz went down at {:?})",
            *went_down.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    watcher.abort();
    let broker = blip.await.unwrap();
    let bare = bare_reconnect(&relay, &url).await;
    let resumed_after = resumed.saturating_duration_since(down_at);
    // Within 1 s of the broker being reachable again, the reconnect itself (connect and
    // declare, measured just now on the same broker) and what a loaded box kept this process
    // (publisher and receiver) from running meanwhile aside; the slow requests take 10 s.
    let stalled = stalls.within(down_at, resumed);
    let bound = Duration::from_secs(1) + bare + stalled;
    println!(
        "FIGURE blip_resume resumed_after_ms={} bare_reconnect_ms={} stalled_ms={} bound_ms={}",
        resumed_after.as_millis(),
        bare.as_millis(),
        stalled.as_millis(),
        bound.as_millis()
    );
    assert!(
        resumed_after <= bound,
        "delivery resumed {resumed_after:?} after the consumers went down (bound {bound:?})"
    );
    drop(broker);
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
    let events: Vec<Value> = (0..n)
        .map(|i| json!({"type": "rec.event", "data": {"i": i}}))
        .collect();
    let mut accepted = Vec::new();
    for chunk in events.chunks(50) {
        accepted.extend(relay.publish_batch_ok(chunk).await);
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

/// A node that hangs (or a network that drops packets) leaves connections that look open and
/// never answer; lapin waits for the answers to a consumer cancel or a channel close as long
/// as that. Every process must still stop within its documented bounds.
#[tokio::test]
async fn every_process_stops_when_the_broker_stops_answering() {
    let broker = PrivateBroker::start().await;
    let proxy = FreezingProxy::start(&broker.amqp_url()).await;
    let relay = System::start(proxy.url()).await;
    let receiver = Receiver::start().await;
    relay.subscribe(&receiver.url(), &["frozen.*"], None).await;
    relay.publish_ok(&json!({"type": "frozen.event"})).await;
    assert_eq!(
        receiver.wait_for(1, Duration::from_secs(10)).await.len(),
        1,
        "delivery works through the relay before it freezes"
    );

    proxy.freeze();
    // The broker no longer answers: a publish gets no confirm.
    let response = relay.publish(&json!({"type": "frozen.event"})).await;
    assert_eq!(response.status(), 503, "no confirm, no 202");
    let started = Instant::now();
    // Panics naming the component that does not stop within 30 s.
    relay.stop().await;
    println!(
        "stopped {:?} after the broker went silent",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_clean_start_logs_no_error() {
    // A fresh node, and no dispatcher yet: the retry tiers are not declared when it starts.
    let broker = PrivateBroker::start().await;
    let relay = System::start_with(Options {
        dispatchers: 0,
        ..Options::new(broker.amqp_url())
    })
    .await;
    let log = std::env::temp_dir().join(format!("relay-clean-start-{}.log", std::process::id()));
    let dispatcher = DispatcherProcess::start_logged(
        &relay,
        &[
            ("RELAY__DISPATCH__QUEUE_SAMPLE_INTERVAL", "100ms"),
            ("RELAY__LOG__LEVEL", "info"),
        ],
        &log,
    )
    .await;
    // Ready, and the queue sampler has sampled every queue, the tiers included, several times.
    let metrics = format!("{}/metrics", dispatcher.ops_url);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut rounds = 0;
    while rounds < 5 {
        let text = relay
            .http
            .get(&metrics)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains("relay_queue_messages{queue=\"retry.") {
            rounds += 1;
        }
        assert!(
            Instant::now() < deadline,
            "the queue sampler never sampled the tiers"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logged = std::fs::read_to_string(&log).unwrap();
    drop(dispatcher);
    let _ = std::fs::remove_file(&log);
    assert!(
        logged.contains("consuming ingress and redeliver"),
        "{logged}"
    );
    let errors: Vec<&str> = logged.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(
        errors.is_empty(),
        "ERROR lines at a clean start: {errors:#?}"
    );
    relay.stop().await;
}
