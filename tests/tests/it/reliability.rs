//! Fault tests for the delivery guarantees. Each counts what was accepted against what was
//! delivered and prints its figures (`FIGURE …` lines; run with `--no-capture` to see them),
//! which docs/RELIABILITY.md records.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use reqwest::Method;
use serde_json::{Value, json};
use tests::{
    broker::{NodeConfig, PrivateBroker},
    cluster::SHIPPED_ADVANCED_CONFIG,
    process::DispatcherProcess,
    receiver::{Behaviour, Received, Receiver},
    stalls::Stalls,
    system::{Options, PUBLISHER_KEY, System},
};

use crate::shared_amqp_url;

fn ids(received: &[Received]) -> Vec<String> {
    received
        .iter()
        .map(|r| r.header("webhook-id").unwrap_or_default().to_owned())
        .collect()
}

/// Publishes `n` events through the batch endpoint; returns the accepted ids.
async fn publish_batches(relay: &System, n: usize, event_type: &str) -> Vec<String> {
    publish_batches_to(
        relay.http.clone(),
        relay.ingest_url.clone(),
        n,
        event_type.to_owned(),
    )
    .await
}

/// As [`publish_batches`], with owned arguments so it can run in its own task.
pub(crate) async fn publish_batches_to(
    http: reqwest::Client,
    ingest_url: String,
    n: usize,
    event_type: String,
) -> Vec<String> {
    let mut accepted = Vec::with_capacity(n);
    for chunk_start in (0..n).step_by(100) {
        let events: Vec<Value> = (chunk_start..n.min(chunk_start + 100))
            .map(|i| json!({"type": event_type, "data": {"i": i}}))
            .collect();
        let response = http
            .post(format!("{ingest_url}/v1/events/batch"))
            .bearer_auth(PUBLISHER_KEY)
            .json(&events)
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
                .map(|id| id.as_str().unwrap().to_owned()),
        );
    }
    accepted
}

fn missing(expected: &[String], seen: &HashSet<String>) -> usize {
    expected.iter().filter(|id| !seen.contains(*id)).count()
}

#[tokio::test]
async fn a_failing_endpoint_gets_the_event_on_the_fourth_attempt_at_the_scheduled_delays() {
    let schedule = [300u64, 600, 900];
    let relay = System::start_with(
        Options::new(shared_amqp_url())
            .set("RELAY__DISPATCH__RETRY_SCHEDULE", "300ms,600ms,900ms,5s")
            .set("RELAY__DISPATCH__RETRY_JITTER", "0.1"),
    )
    .await;
    let stalls = Stalls::start();
    let hook = Receiver::start_with(Behaviour::FailFirst(3, 503)).await;
    relay.subscribe(&hook.url(), &["flaky.*"], None).await;

    let id = relay.publish_ok(&json!({"type": "flaky.event"})).await;
    let got = hook.wait_for(4, Duration::from_secs(15)).await;
    assert_eq!(got.len(), 4, "expected exactly four attempts");
    assert!(
        ids(&got).iter().all(|got_id| *got_id == id),
        "the webhook-id changed between attempts"
    );
    let mut gaps = Vec::new();
    for (pair, delay_ms) in got.windows(2).zip(schedule) {
        let gap = pair[1].at.duration_since(pair[0].at);
        gaps.push(gap.as_millis());
        // At least the tier's delay less its 10 % jitter; at most the delay + broker and
        // scheduling slack + what a loaded box kept this process (its receiver's clock) from
        // running meanwhile.
        assert!(
            gap >= Duration::from_millis(delay_ms * 9 / 10),
            "retry came early: {gap:?} < 90 % of {delay_ms} ms"
        );
        let stalled = stalls.within(pair[0].at, pair[1].at);
        assert!(
            gap <= Duration::from_millis(delay_ms + 700) + stalled,
            "retry came late: {gap:?} for a {delay_ms} ms tier ({stalled:?} of stalls)"
        );
    }
    println!("FIGURE fault1 attempts=4 gaps_ms={gaps:?} scheduled_ms={schedule:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(hook.count(), 4, "delivered again after a success");
    relay.stop().await;
}

#[tokio::test]
async fn an_always_failing_endpoint_ends_dead_after_the_last_attempt_and_410_disables() {
    let relay = System::start_with(
        Options::new(shared_amqp_url()).set("RELAY__DISPATCH__RETRY_SCHEDULE", "100ms,100ms"),
    )
    .await;
    let failing = Receiver::start_with(Behaviour::Status(500)).await;
    let gone = Receiver::start_with(Behaviour::Status(410)).await;
    relay.subscribe(&failing.url(), &["doomed.*"], None).await;
    let gone_sub = relay.subscribe(&gone.url(), &["doomed.*"], None).await;
    let gone_id = gone_sub["id"].as_str().unwrap();

    relay.publish_ok(&json!({"type": "doomed.one"})).await;
    // Three attempts (first try + two retries), then dead.
    assert_eq!(failing.wait_for(3, Duration::from_secs(10)).await.len(), 3);
    let dispatcher = &relay.dispatcher_urls[0];
    relay
        .wait_for_metric(
            dispatcher,
            "relay_deliveries_total{outcome=\"dead\"}",
            |v| v >= 1.0,
        )
        .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        failing.count(),
        3,
        "attempted after the last scheduled attempt"
    );

    // The 410 endpoint was called once and its subscription is disabled everywhere.
    assert_eq!(gone.count(), 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let sub: Value = relay
            .api(Method::GET, &format!("/v1/subscriptions/{gone_id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if sub["enabled"] == false {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a 410 did not disable the subscription: {sub}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    relay
        .wait_for_metric(
            dispatcher,
            "relay_deliveries_total{outcome=\"disabled\"}",
            |v| v >= 1.0,
        )
        .await;
    relay.publish_ok(&json!({"type": "doomed.two"})).await;
    assert_eq!(failing.wait_for(4, Duration::from_secs(10)).await.len(), 4);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        gone.count(),
        1,
        "a disabled subscription still received an event"
    );
    relay.stop().await;
}

/// Publishes `n` events one by one (concurrency 8) and returns each id's publish instant.
async fn publish_timed(relay: &System, n: usize) -> HashMap<String, Instant> {
    let mut sent = HashMap::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(8) {
        let requests = chunk.iter().map(|i| async move {
            let at = Instant::now();
            (
                relay
                    .publish_ok(&json!({"type": "mixed.event", "data": {"i": i}}))
                    .await,
                at,
            )
        });
        for (id, at) in futures_util::future::join_all(requests).await {
            sent.insert(id, at);
        }
    }
    sent
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

async fn healthy_latencies(with_slow_endpoint: bool) -> (Vec<Duration>, usize) {
    let relay = System::start_with(
        Options::new(shared_amqp_url())
            .set("RELAY__DISPATCH__REQUEST_TIMEOUT", "10s")
            .set("RELAY__DISPATCH__PREFETCH", "64")
            .set("RELAY__DISPATCH__MAX_INFLIGHT_PER_SUBSCRIPTION", "32")
            // A hanging endpoint is told from a slow one after 200 ms without a completion;
            // until then its deliveries queue (back-pressure) and hold their events.
            .set("RELAY__DISPATCH__INFLIGHT_WAIT", "200ms")
            .set("RELAY__DISPATCH__RETRY_SCHEDULE", "500ms,1s,1s"),
    )
    .await;
    let healthy = Receiver::start().await;
    let slow = Receiver::start_with(Behaviour::Hang).await;
    relay.subscribe(&healthy.url(), &["mixed.*"], None).await;
    if with_slow_endpoint {
        relay.subscribe(&slow.url(), &["mixed.*"], None).await;
    }
    let n = 400;
    let sent = publish_timed(&relay, n).await;
    let expected: Vec<String> = sent.keys().cloned().collect();
    let (seen, _) = healthy
        .wait_for_ids(&expected, Duration::from_secs(30))
        .await;
    let lost = missing(&expected, &seen);
    let mut latencies: Vec<Duration> = healthy
        .received()
        .iter()
        .filter_map(|r| Some(r.at.duration_since(*sent.get(r.header("webhook-id")?)?)))
        .collect();
    latencies.sort();
    drop(slow);
    relay.stop().await;
    (latencies, lost)
}

#[tokio::test]
async fn a_hanging_endpoint_does_not_slow_a_healthy_one() {
    let (alone, lost_alone) = healthy_latencies(false).await;
    let (beside_slow, lost_beside) = healthy_latencies(true).await;
    assert_eq!(
        (lost_alone, lost_beside),
        (0, 0),
        "the healthy endpoint missed events"
    );
    let figures = |l: &[Duration]| [0.5, 0.95, 0.99, 1.0].map(|p| percentile(l, p));
    let ([p50_a, p95_a, p99_a, max_a], [p50_b, p95_b, p99_b, max_b]) =
        (figures(&alone), figures(&beside_slow));
    println!(
        "FIGURE fault3 events=400 alone_ms(p50,p95,p99,max)=({},{},{},{}) beside_hanging_ms=({},{},{},{})",
        p50_a.as_millis(),
        p95_a.as_millis(),
        p99_a.as_millis(),
        max_a.as_millis(),
        p50_b.as_millis(),
        p95_b.as_millis(),
        p99_b.as_millis(),
        max_b.as_millis()
    );
    // The stated bound, with a gap that load cannot close: a healthy delivery held behind the
    // hanging endpoint waits for its whole 10 s timeout, so head-of-line blocking puts p95 at
    // 10 s or more. Without it the two runs differ only by noise (two runs on a box at load
    // 20 differed by up to 2.5x at p95): p95 beside the hang stays within 3x alone + 1 s, and
    // no healthy delivery waits as long as the timeout.
    assert!(
        p95_b <= p95_a * 3 + Duration::from_secs(1),
        "healthy p95 {p95_b:?} beside a hanging endpoint vs {p95_a:?} alone"
    );
    assert!(
        max_b < Duration::from_secs(10),
        "a healthy delivery waited {max_b:?}, the hanging endpoint's timeout"
    );
}

#[tokio::test]
async fn a_dispatcher_killed_mid_stream_loses_nothing() {
    let relay = System::start_with(Options {
        dispatchers: 0,
        ..Options::new(shared_amqp_url())
    })
    .await;
    let hook = Receiver::start().await;
    relay
        .create_subscription(&hook.url(), &["bulk.*"], None)
        .await;
    let mut dispatchers = Vec::new();
    for _ in 0..3 {
        dispatchers.push(DispatcherProcess::start(&relay, &[]).await);
    }
    let n = 10_000;
    let publishing = tokio::spawn(publish_batches_to(
        relay.http.clone(),
        relay.ingest_url.clone(),
        n,
        "bulk.event".to_owned(),
    ));
    // Kill one dispatcher once deliveries are well under way.
    while hook.count() < 2_000 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    dispatchers[0].signal("KILL");
    let killed_at = hook.count();
    let accepted = publishing.await.unwrap();
    let started = Instant::now();
    let (seen, total) = hook.wait_for_ids(&accepted, Duration::from_secs(90)).await;
    let lost = missing(&accepted, &seen);
    println!(
        "FIGURE fault4 accepted={} delivered_distinct={} requests={} duplicates={} lost={} killed_after={} drain_ms={}",
        accepted.len(),
        seen.len(),
        total,
        total - seen.len(),
        lost,
        killed_at,
        started.elapsed().as_millis()
    );
    assert_eq!(accepted.len(), n);
    assert_eq!(lost, 0, "{lost} accepted events were never delivered");
    relay.stop().await;
}

/// Publishes one event, retrying 503s (as a producer would) until `deadline`; the id, or the
/// last status.
async fn publish_retrying(relay: &System, event: &Value, deadline: Instant) -> Result<String, u16> {
    loop {
        let response = relay.publish(event).await;
        let status = response.status().as_u16();
        if status == 202 {
            let body: Value = response.json().await.unwrap();
            return Ok(body["id"].as_str().unwrap().to_owned());
        }
        assert_eq!(status, 503, "unexpected status");
        if Instant::now() > deadline {
            return Err(status);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_broker_restart_mid_stream_loses_no_accepted_event() {
    let broker = PrivateBroker::start().await;
    let relay = System::start_with(Options {
        dispatchers: 2,
        ..Options::new(broker.amqp_url())
    })
    .await;
    let hook = Receiver::start().await;
    relay.subscribe(&hook.url(), &["steady.*"], None).await;

    // Before: accepted and delivered as usual.
    let mut accepted = Vec::new();
    for _ in 0..200 {
        accepted.push(relay.publish_ok(&json!({"type": "steady.tick"})).await);
    }
    // While the broker is away: every publish is refused with 503 and Retry-After. These
    // are made once the broker is down, concurrently, so the 503s come by design.
    broker.stop_app().await;
    let tick = json!({"type": "steady.tick"});
    let during: Vec<reqwest::Response> =
        futures_util::future::join_all((0..20).map(|_| relay.publish(&tick))).await;
    let refused = during.len();
    for response in &during {
        assert_eq!(
            response.status(),
            503,
            "an event was answered while the broker was down"
        );
        assert!(response.headers().contains_key("retry-after"));
    }
    broker.start_app().await;
    // After: a producer that retries its 503s gets every event accepted.
    let back = Instant::now();
    let first = publish_retrying(
        &relay,
        &json!({"type": "steady.tick"}),
        back + Duration::from_secs(60),
    )
    .await
    .expect("ingest accepts events again within 60 s of the broker's return");
    let recovered_after = back.elapsed();
    accepted.push(first);
    for _ in 0..199 {
        let deadline = Instant::now() + Duration::from_secs(30);
        accepted.push(
            publish_retrying(&relay, &json!({"type": "steady.tick"}), deadline)
                .await
                .expect("accepted after retries"),
        );
    }
    let (seen, total) = hook.wait_for_ids(&accepted, Duration::from_secs(60)).await;
    let lost = missing(&accepted, &seen);
    println!(
        "FIGURE fault5 accepted={} refused_503={} delivered_distinct={} duplicates={} lost={} ingest_recovered_ms={}",
        accepted.len(),
        refused,
        seen.len(),
        total - seen.len(),
        lost,
        recovered_after.as_millis()
    );
    assert_eq!(lost, 0, "{lost} accepted events were never delivered");
    relay.stop().await;
}

#[tokio::test]
async fn sigterm_drains_in_flight_deliveries_within_the_grace_period() {
    let relay = System::start_with(Options {
        dispatchers: 0,
        ..Options::new(shared_amqp_url())
    })
    .await;
    let stalls = Stalls::start();
    let slow = Receiver::start_with(Behaviour::Delay(Duration::from_millis(1500))).await;
    relay
        .create_subscription(&slow.url(), &["drain.*"], None)
        .await;
    let mut first =
        DispatcherProcess::start(&relay, &[("RELAY__DISPATCH__SHUTDOWN_GRACE", "5s")]).await;
    let accepted = publish_batches(&relay, 20, "drain.event").await;
    // Requests are in flight at the endpoint.
    slow.wait_for(5, Duration::from_secs(10)).await;
    let signalled = Instant::now();
    first.signal("TERM");
    let status = first
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exited");
    let exit_ms = signalled.elapsed().as_millis();
    assert!(status.success(), "dispatcher exited with {status}");
    // The grace, a second to close, and whatever a loaded box stalled this process meanwhile.
    let stalled = stalls.within(signalled, Instant::now());
    assert!(
        signalled.elapsed() < Duration::from_secs(6) + stalled,
        "took {exit_ms} ms, grace is 5 s ({stalled:?} of stalls)"
    );
    let _second = DispatcherProcess::start(&relay, &[]).await;
    let (seen, total) = slow.wait_for_ids(&accepted, Duration::from_secs(30)).await;
    let lost = missing(&accepted, &seen);
    println!(
        "FIGURE fault6 accepted={} delivered_distinct={} duplicates={} lost={} exit_ms={exit_ms}",
        accepted.len(),
        seen.len(),
        total - seen.len(),
        lost
    );
    assert_eq!(lost, 0);
    relay.stop().await;
}

/// Binds `redeliver` to `retry-ready` (where every tier's expired retries go), or unbinds it.
async fn route_expired_retries(
    channel: &lapin::Channel,
    topology: &relay_shared::topology::Topology,
    bound: bool,
) {
    let (queue, exchange) = (
        topology.redeliver.as_str().into(),
        topology.retry_ready.as_str().into(),
    );
    let table = lapin::types::FieldTable::default();
    let done = if bound {
        let options = lapin::options::QueueBindOptions::default();
        channel
            .queue_bind(queue, exchange, "".into(), options, table)
            .await
    } else {
        channel
            .queue_unbind(queue, exchange, "".into(), table)
            .await
    };
    done.expect("redeliver (un)bound");
}

/// Retries RabbitMQ holds in a retry tier without forwarding them, produced by design on one
/// node: with `redeliver` unbound from `retry-ready`, the tier's dead-letter worker has nowhere
/// to forward expired retries, so they stay in the tier, counted in `messages` but neither
/// ready nor unacked, which is what a refused forward after a node loss looks like
/// (tests/tests/it/cluster.rs produces that one). Every retry ends up held, as the endpoint
/// keeps failing; the dispatcher reports all of them (`relay_retry_tier_stranded`, a `/readyz`
/// warning while staying ready) once held for longer than the tier's delay. With the binding
/// back, the shipped `advanced.config` has them forwarded again, every event is delivered,
/// and both signals clear.
#[tokio::test]
async fn retries_stranded_in_a_tier_are_reported_until_forwarded() {
    const EVENTS: usize = 20;
    const DEADLINE: Duration = Duration::from_secs(180);
    let broker = PrivateBroker::start_with(&NodeConfig {
        management: true,
        advanced_config: SHIPPED_ADVANCED_CONFIG.to_owned(),
        ..NodeConfig::default()
    })
    .await;
    let receiver = Receiver::start_with(Behaviour::Status(500)).await;
    let relay = System::start_with(
        Options::new(broker.amqp_url())
            .set("RELAY__DISPATCH__MANAGEMENT_URL", &broker.management_url())
            .set("RELAY__DISPATCH__QUEUE_SAMPLE_INTERVAL", "500ms")
            // Retries keep cycling through the 2 s tier, never exhausted during the test.
            .set("RELAY__DISPATCH__RETRY_SCHEDULE", &["2s"; 200].join(","))
            .set("RELAY__DISPATCH__BREAKER_FAILURES", "1000000"),
    )
    .await;
    let dispatcher = relay.dispatcher_urls[0].clone();
    relay.subscribe(&receiver.url(), &["order.*"], None).await;
    let accepted = publish_batches(&relay, EVENTS, "order.created").await;
    let attempted = || {
        ids(&receiver.received())
            .into_iter()
            .collect::<HashSet<String>>()
    };
    let started = Instant::now();
    while attempted().len() < EVENTS {
        assert!(started.elapsed() < DEADLINE, "not every event attempted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let topology = relay_shared::topology::Topology::from_settings(&relay.settings.amqp);
    let connection =
        lapin::Connection::connect(&broker.amqp_url(), lapin::ConnectionProperties::default())
            .await
            .unwrap();
    let channel = connection.create_channel().await.unwrap();
    route_expired_retries(&channel, &topology, false).await;

    let readyz = || async {
        let response = relay
            .http
            .get(format!("{dispatcher}/readyz"))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.unwrap())
    };
    // Every retry ends up held in the tier, and reported.
    let unbound = Instant::now();
    loop {
        let stranded = relay
            .metric(&dispatcher, "relay_retry_tier_stranded")
            .await
            .unwrap_or(0.0);
        let (status, body) = readyz().await;
        let warned = body["warnings"].as_array().is_some_and(|w| {
            w.iter()
                .any(|w| w.as_str().unwrap().starts_with("retry.2s: "))
        });
        if stranded == EVENTS as f64 && warned {
            assert_eq!(status, 200, "a warning, not unready: {body}");
            break;
        }
        assert!(
            unbound.elapsed() < DEADLINE,
            "stranded {stranded} of {EVENTS}, held {:?}; readyz {status} {body}",
            relay.metric(&dispatcher, "relay_retry_tier_held").await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "FIGURE all {EVENTS} retries reported stranded {:.1?} after the unbind",
        unbound.elapsed()
    );

    receiver.set_behaviour(Behaviour::Status(200));
    let healthy_from = Instant::now();
    route_expired_retries(&channel, &topology, true).await;
    let _ = connection.close(200, "bound again".into()).await;
    let expected: HashSet<String> = accepted.into_iter().collect();
    loop {
        let delivered: HashSet<String> = receiver.ids_since(healthy_from);
        let stranded = relay
            .metric(&dispatcher, "relay_retry_tier_stranded")
            .await
            .unwrap_or(f64::NAN);
        let (status, body) = readyz().await;
        if delivered == expected && stranded == 0.0 && body.get("warnings").is_none() {
            assert_eq!(status, 200, "{body}");
            break;
        }
        assert!(
            healthy_from.elapsed() < DEADLINE,
            "{} of {EVENTS} delivered since the binding is back; stranded {stranded}; readyz {body}",
            delivered.intersection(&expected).count()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "FIGURE all {EVENTS} delivered and the signal cleared {:.1?} after the binding was back",
        healthy_from.elapsed()
    );
    relay.stop().await;
}
