//! Protecting endpoints: rate limits and in-flight caps enforced by several dispatchers
//! together, a limit changed mid-run, and the adaptive slow-down on 429 with `Retry-After`.
//!
//! Rates are counted at the receiver, per 10 s window, from its own arrival times. The upper
//! bounds are what README "Protecting endpoints" promises, `rate_limit × 10 s` per window
//! (the burst it documents is nil when `rate_limit × 10 s` is at least the number of
//! dispatchers), and hold by construction: a request holds its window token from its start
//! until 10 s after its answer, and reaches the receiver in between, however loaded the
//! machine. The lower bounds (5,000 requests at 50 req/s within 110 s, 90 % of a raised limit
//! over 20 s) hold by construction too: the test keeps the backlog at a few seconds of the
//! limit (enough traffic for every dispatcher, and little to go round the retry tier), and
//! adds the time the test process could not run, which it measures (the pacer never catches
//! up on a stall, so that a stall never becomes a burst).

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use reqwest::Method;
use serde_json::{Value, json};
use tests::{
    receiver::{Behaviour, Received, Receiver},
    stalls::Stalls,
    system::{Options, System},
};

use crate::shared_amqp_url;

/// Three dispatchers that have heard each other.
async fn three_dispatchers() -> System {
    dispatchers(3).await
}

/// `n` dispatchers that have heard each other, with a short first tier (deferred deliveries
/// come back after 1 s) and a wait in memory longer than it.
async fn dispatchers(n: usize) -> System {
    let relay = System::start_with(
        Options {
            dispatchers: n,
            ..Options::new(shared_amqp_url())
        }
        .set("RELAY__DISPATCH__RETRY_SCHEDULE", "1s,2s,2s,2s,2s,2s,2s,2s")
        .set("RELAY__DISPATCH__RATE_LIMIT_WAIT", "3s"),
    )
    .await;
    for url in &relay.dispatcher_urls {
        settled(&relay, url, n).await;
    }
    relay
}

/// Waits (up to 60 s) until the dispatcher at `url` counts `n` and may send to limited
/// subscriptions.
async fn settled(relay: &System, url: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    #[allow(clippy::cast_precision_loss)]
    let n = n as f64;
    loop {
        let alive = relay.metric(url, "relay_dispatchers_alive").await;
        let ready = relay
            .metric(url, "relay_dispatcher_rate_limits_ready")
            .await;
        if alive == Some(n) && ready == Some(1.0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url}: {alive:?} dispatchers alive, ready {ready:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Creates a subscription with `limits` and waits until every dispatcher holds it.
async fn limited(relay: &System, receiver: &Receiver, limits: Value) -> String {
    let mut body = json!({"url": receiver.url(), "event_types": ["paced.*"]});
    body.as_object_mut()
        .unwrap()
        .extend(limits.as_object().unwrap().clone());
    let created = relay
        .api(Method::POST, "/v1/subscriptions")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    for url in &relay.dispatcher_urls {
        relay
            .wait_for_metric(url, "relay_subscriptions_loaded", |n| n >= 1.0)
            .await;
    }
    created["id"].as_str().unwrap().to_owned()
}

/// Publishes `n` events over HTTP, in batches of 50.
async fn publish(relay: &System, n: usize) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(50) {
        let events: Vec<Value> = chunk
            .iter()
            .map(|i| json!({"type": "paced.tick", "data": {"i": i}}))
            .collect();
        relay.publish_batch_ok(&events).await;
    }
}

/// Arrivals in `[from, to)`.
fn count(at: &[Instant], from: Instant, to: Instant) -> usize {
    at.iter().filter(|t| **t >= from && **t < to).count()
}

/// Waits for `n` requests and asserts they are `n` distinct events.
async fn all_delivered(receiver: &Receiver, n: usize, timeout: Duration) -> Vec<Received> {
    let received = receiver.wait_for(n, timeout).await;
    let ids: HashSet<&str> = received
        .iter()
        .filter_map(|r| r.header("webhook-id"))
        .collect();
    assert_eq!(ids.len(), n, "every event delivered");
    received
}

/// No attempt failed: none was scheduled for a retry (nor, so, dead-lettered).
async fn no_failed_attempts(relay: &System) {
    for url in &relay.dispatcher_urls {
        let retries = relay
            .metric(url, "relay_retries_scheduled_total")
            .await
            .unwrap_or(0.0);
        assert_eq!(retries, 0.0, "failed attempts at {url}");
    }
}

/// No attempt failed, and the limit held some back.
async fn held_back_never_failed(relay: &System) {
    no_failed_attempts(relay).await;
    let (mut waited, mut deferred) = (0.0, 0.0);
    for url in &relay.dispatcher_urls {
        for (sum, outcome) in [(&mut waited, "waited"), (&mut deferred, "deferred")] {
            *sum += relay
                .metric(
                    url,
                    &format!("relay_subscription_rate_limited_total{{outcome=\"{outcome}\"}}"),
                )
                .await
                .unwrap_or(0.0);
        }
    }
    eprintln!("held back by the limit: {waited} waited in memory, {deferred} deferred");
    assert!(
        waited + deferred > 0.0,
        "nothing was held back by the limit"
    );
}

/// The most arrivals in any 10 s window (each window starts at an arrival) that
/// `considered(start, end)` selects.
fn worst_window(arrivals: &[Instant], considered: impl Fn(Instant, Instant) -> bool) -> usize {
    arrivals
        .iter()
        .enumerate()
        .filter_map(|(i, start)| {
            let end = *start + WINDOW;
            considered(*start, end)
                .then(|| arrivals[i..].iter().take_while(|at| **at < end).count())
        })
        .max()
        .unwrap_or(0)
}

const WINDOW: Duration = Duration::from_secs(10);

fn arrivals(received: &[Received]) -> Vec<Instant> {
    let mut at: Vec<Instant> = received.iter().map(|r| r.at).collect();
    at.sort();
    at
}

/// Keeps the receiver's backlog at about `seconds` of `rate` (published, not yet received),
/// publishing at most `total` events in all; returns how many are published. Called often, so
/// the dispatchers always have work (the "enough traffic" of the lower bounds) while the part
/// beyond their wait in memory, which goes round the first retry tier, stays small.
async fn feed(
    relay: &System,
    receiver: &Receiver,
    published: usize,
    total: usize,
    rate: f64,
    seconds: f64,
) -> usize {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let target = (rate * seconds).ceil() as usize;
    let backlog = published.saturating_sub(receiver.count());
    let n = target.saturating_sub(backlog).min(total - published);
    if n > 0 {
        let events: Vec<Value> = (published..published + n)
            .map(|i| json!({"type": "paced.tick", "data": {"i": i}}))
            .collect();
        for chunk in events.chunks(50) {
            relay.publish_batch_ok(chunk).await;
        }
    }
    published + n
}

/// Polls every dispatcher's effective-rate gauge for subscription `id` until all show
/// `rate` (up to 30 s); returns when.
async fn applied_everywhere(relay: &System, id: &str, rate: f64) -> Instant {
    let metric = format!("relay_subscription_effective_rate{{subscription_id=\"{id}\"}}");
    let deadline = Instant::now() + Duration::from_secs(30);
    for url in &relay.dispatcher_urls {
        while relay.metric(url, &metric).await != Some(rate) {
            assert!(Instant::now() < deadline, "{url} never applied {rate}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Instant::now()
}

/// The sizes: 5,000 requests at 50 req/s over three dispatchers take 100 s (±10 %),
/// no 10 s window over 500 (the promise; the issue asks for 550); then the limit goes to 100
/// via the API mid-run and applies within 2 s, no window over 1,000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_dispatchers_keep_50_req_s_for_5000_events_and_a_change_to_100_applies_within_2_s() {
    const LIMIT: f64 = 50.0;
    const RAISED: f64 = 100.0;
    /// Timed at `LIMIT`: 100 s of it.
    const TIMED: usize = 5_000;
    /// In all: the timed ones, then enough for 2 s and 20 s at `RAISED` with a backlog.
    const EVENTS: usize = 8_000;
    // The backlog kept, in seconds of the limit: more than the wait in memory (3 s).
    const BACKLOG: f64 = 5.0;
    // A wake-up up to two intervals late costs a dispatcher nothing (its start tolerance): at
    // 50 req/s over three dispatchers an interval is 60 ms, at 100 req/s 30 ms.
    const ABSORBED: Duration = Duration::from_millis(120);
    const ABSORBED_RAISED: Duration = Duration::from_millis(60);
    let relay = three_dispatchers().await;
    let receiver = Receiver::start().await;
    let id = limited(&relay, &receiver, json!({"rate_limit": LIMIT})).await;
    let stalls = Stalls::start();

    // 5,000 requests at 50 req/s (the limit allows 500 per window)...
    let mut published = 0;
    let mut throttled = None;
    while receiver.count() < TIMED {
        published = feed(&relay, &receiver, published, EVENTS, LIMIT, BACKLOG).await;
        // With a backlog, the API shows the limit holding deliveries back (within a few
        // heartbeats: read once a round, so the backlog is kept up meanwhile).
        if throttled.is_none() && receiver.count() >= TIMED / 10 {
            throttled = Some(status_of(&relay, &id).await).filter(|s| s["state"] == "throttled");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = throttled.expect("the API never showed the subscription throttled");
    assert_eq!(status["rate"], LIMIT, "{status}");
    // ...then the limit goes to 100, the backlog kept up meanwhile: a busy store may take
    // long to answer, or answer 503 (try again); the change counts from its 200.
    let patch_sent = Instant::now();
    let change = tokio::spawn({
        let patch = relay
            .api(Method::PATCH, &format!("/v1/subscriptions/{id}"))
            .json(&json!({"rate_limit": RAISED}));
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let changed = patch.try_clone().unwrap().send().await.unwrap();
                if changed.status() == 200 {
                    return Instant::now();
                }
                assert_eq!(changed.status(), 503);
                assert!(Instant::now() < deadline, "the change was refused for 30 s");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    while !change.is_finished() {
        published = feed(&relay, &receiver, published, EVENTS, LIMIT, BACKLOG).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let changed_at = change.await.unwrap();
    let applied = async { applied_everywhere(&relay, &id, RAISED).await };
    let feeding = async {
        while published < EVENTS {
            published = feed(&relay, &receiver, published, EVENTS, RAISED, BACKLOG).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (applied_at, ()) = tokio::join!(applied, feeding);
    let received = all_delivered(&receiver, EVENTS, Duration::from_secs(240)).await;

    let at = arrivals(&received);
    // The promise: windows that end before the change was asked for see at most 50 × 10,
    // every window at most 100 × 10.
    let before = worst_window(&at, |_, end| end <= patch_sent);
    let overall = worst_window(&at, |_, _| true);
    // Reached: the 5,000 took 100 s (the windows make it at least that), and at most 110 s
    // plus the time the process could not run (the pacer does not catch up on a stall, so
    // that it never turns into a burst); 90 % of the new limit over 20 s from 2 s after the
    // change's answer, likewise. 20 s: the receiver's clock is the test process's, which moves
    // arrivals across a window's edge when it stalls.
    let first = at[0];
    let timed_end = at[TIMED - 1];
    let took = timed_end - first;
    let timed_lost = stalls.within_beyond(first, timed_end, ABSORBED);
    let took_at_most = Duration::from_secs(110) + timed_lost;
    let from = changed_at + Duration::from_secs(2);
    let late = count(&at, from, from + 2 * WINDOW);
    let late_lost = stalls.within_beyond(from, from + 2 * WINDOW, ABSORBED_RAISED);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let late_floor =
        (0.9 * RAISED * (2 * WINDOW).saturating_sub(late_lost).as_secs_f64()).floor() as usize;
    // Per second around the change, to tell a late change from a slow supply.
    let seconds: Vec<usize> = (0..16)
        .map(|i| {
            let from = changed_at - Duration::from_secs(2) + Duration::from_secs(i);
            count(&at, from, from + Duration::from_secs(1))
        })
        .collect();
    eprintln!(
        "the first {TIMED} at {LIMIT} req/s took {took:?} (100 s ± 10 %, at most {took_at_most:?} \
         with the process's stalls, {timed_lost:?}); worst 10 s window before the change: \
         {before} (limit 500, the issue's bound 550), overall {overall} (limit 1000); 20 s from \
         2 s after the change: {late} (limit 2000, floor {late_floor}, stalled {late_lost:?}); \
         per second from 2 s before the change: {seconds:?}; the change took {:?} to answer, \
         every dispatcher showed it {:?} after its answer; the process stalled {:?} in all, \
         {:?} at most at once",
        changed_at - patch_sent,
        applied_at.saturating_duration_since(changed_at),
        stalls.total(),
        stalls.longest()
    );
    assert!(
        before <= 500,
        "{before} requests in a 10 s window at {LIMIT} req/s"
    );
    assert!(
        overall <= 1000,
        "{overall} requests in a 10 s window at {RAISED} req/s"
    );
    assert!(
        took >= Duration::from_secs(90) && took <= took_at_most,
        "{TIMED} requests at {LIMIT} req/s took {took:?} (at most {took_at_most:?})"
    );
    assert!(
        late >= late_floor,
        "{late} in 20 s at {RAISED} req/s, from 2 s after the change (floor {late_floor})"
    );
    held_back_never_failed(&relay).await;
    relay.stop().await;
}

#[tokio::test]
async fn three_dispatchers_keep_a_max_in_flight_together() {
    const EVENTS: usize = 90;
    const CAP: usize = 6;
    const DELAY: Duration = Duration::from_millis(300);
    let relay = three_dispatchers().await;
    let receiver = Receiver::start_with(Behaviour::Delay(DELAY)).await;
    limited(&relay, &receiver, json!({"max_in_flight": CAP})).await;
    publish(&relay, EVENTS).await;
    let received = all_delivered(&receiver, EVENTS, Duration::from_secs(180)).await;
    // The dispatchers had every request at the receiver in flight.
    let at = arrivals(&received);
    let most = most_at_once(&at, DELAY, Instant::now());
    eprintln!("at most {most} requests at the receiver at once (max_in_flight {CAP})");
    assert!(
        most <= CAP,
        "{most} requests in flight with max_in_flight {CAP}"
    );
    assert!(most >= 2, "the requests went one at a time");
    no_failed_attempts(&relay).await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_slows_the_whole_subscription_down() {
    const EVENTS: usize = 400;
    const ENDPOINT_RATE: usize = 20;
    let relay = three_dispatchers().await;
    let receiver = Receiver::start_with(Behaviour::RateLimited {
        per_second: ENDPOINT_RATE,
        retry_after: 2,
    })
    .await;
    // No configured limit: the endpoint's 429s alone set the pace.
    let id = limited(&relay, &receiver, json!({})).await;
    let started = Instant::now();
    publish(&relay, EVENTS).await;

    // Every event accepted once, however many 429s it took.
    let deadline = Instant::now() + Duration::from_secs(240);
    let received = loop {
        let received = receiver.received();
        let accepted: HashSet<&str> = received
            .iter()
            .filter(|r| !r.refused)
            .filter_map(|r| r.header("webhook-id"))
            .collect();
        if accepted.len() >= EVENTS {
            break received;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {EVENTS} accepted",
            accepted.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // After settling (10 s after the first request), fewer than 5 % of requests were refused.
    let first = received.iter().map(|r| r.at).min().unwrap();
    let settled = first + Duration::from_secs(10);
    let after: Vec<&Received> = received.iter().filter(|r| r.at >= settled).collect();
    let refused = after.iter().filter(|r| r.refused).count();
    #[allow(clippy::cast_precision_loss)]
    let ratio = refused as f64 / after.len().max(1) as f64;
    let total_refused = received.iter().filter(|r| r.refused).count();
    // Per second from the first request: (accepted, refused).
    let mut seconds =
        vec![(0, 0); 1 + (received.iter().map(|r| r.at).max().unwrap() - first).as_secs() as usize];
    for r in &received {
        let second = &mut seconds[(r.at - first).as_secs() as usize];
        if r.refused {
            second.1 += 1;
        } else {
            second.0 += 1;
        }
    }
    // Requests after settling, refused ones included, in the worst 10 s window.
    let after_at: Vec<Instant> = arrivals(&after.iter().map(|r| (*r).clone()).collect::<Vec<_>>());
    let worst = worst_window(&after_at, |_, _| true);
    eprintln!(
        "{} requests, {total_refused} refused in all; after settling {} requests, {refused} refused ({:.1} %), at most {worst} in a 10 s window; took {:?}; per second (accepted, refused): {seconds:?}",
        received.len(),
        after.len(),
        ratio * 100.0,
        started.elapsed()
    );
    assert!(
        after.len() >= EVENTS / 2,
        "the test must measure after settling"
    );
    assert!(
        ratio < 0.05,
        "{:.1} % refused after settling",
        ratio * 100.0
    );
    // And settled at or below the endpoint's rate: every 10 s window after settling holds at
    // most 20 × 10 requests, refused ones included.
    assert!(
        worst <= ENDPOINT_RATE * 10,
        "{worst} requests in a 10 s window after settling, at {ENDPOINT_RATE} req/s"
    );
    // The slow-down outlives the backlog (for 20 s without requests): the API shows it.
    let status = status_becomes(&relay, &id, |s| {
        s["state"] == "throttled" || s["state"] == "backing_off"
    })
    .await;
    eprintln!("status after the backlog: {status}");
    relay.stop().await;
}

/// Subscription `id`'s status as the API shows it (null when the read fails).
async fn status_of(relay: &System, id: &str) -> Value {
    let read = relay
        .api(Method::GET, &format!("/v1/subscriptions/{id}"))
        .send()
        .await
        .unwrap();
    if read.status() == 200 {
        read.json::<Value>().await.unwrap()["status"].clone()
    } else {
        Value::Null
    }
}

/// Waits (up to 30 s: three dispatcher heartbeats and more) until the API shows subscription
/// `id` with a status that `ok` accepts, and returns it.
async fn status_becomes(relay: &System, id: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = status_of(relay, id).await;
        if ok(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "status stayed {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn the_api_shows_an_open_breaker_and_a_disabled_subscription() {
    let relay = System::start_with(
        Options::new(shared_amqp_url()).set("RELAY__DISPATCH__BREAKER_FAILURES", "2"),
    )
    .await;
    let receiver = Receiver::start_with(Behaviour::Status(500)).await;
    let id = limited(&relay, &receiver, json!({})).await;
    let listed = |relay: &System| {
        let request = relay.api(Method::GET, "/v1/subscriptions");
        async move {
            let list: Value = request.send().await.unwrap().json().await.unwrap();
            list["data"][0]["status"].clone()
        }
    };
    assert_eq!(listed(&relay).await, json!({"state": "active"}));
    publish(&relay, 3).await;
    status_becomes(&relay, &id, |s| *s == json!({"state": "breaker_open"})).await;
    assert_eq!(listed(&relay).await, json!({"state": "breaker_open"}));
    let disabled = relay
        .api(Method::POST, &format!("/v1/subscriptions/{id}/disable"))
        .json(&json!({"reason": "maintenance"}))
        .send()
        .await
        .unwrap();
    assert_eq!(disabled.status(), 200);
    let disabled: Value = disabled.json().await.unwrap();
    assert_eq!(
        disabled["status"],
        json!({"state": "disabled", "reason": "maintenance"})
    );
    status_becomes(&relay, &id, |s| s["state"] == "disabled").await;
    relay.stop().await;
}

/// Requests at the receiver at once, at most, among those that arrived before `until`: each
/// stays there for at least `delay` from its arrival (its answer's delay), so those that
/// arrived within `delay` before an arrival were all still there.
fn most_at_once(at: &[Instant], delay: Duration, until: Instant) -> usize {
    at.iter()
        .enumerate()
        .filter(|(_, t)| **t < until)
        .map(|(i, t)| {
            at[..=i]
                .iter()
                .filter(|a| t.duration_since(**a) < delay)
                .count()
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test]
async fn a_replay_to_a_slow_endpoint_does_not_hold_fresh_events_back() {
    // A dispatcher with 10 slots: 8 kept for first attempts while they flow, 2 for the rest.
    const SLOW: Duration = Duration::from_secs(4);
    const REPLAYED: usize = 40;
    let relay = System::start_with(
        Options::new(shared_amqp_url())
            .set("RELAY__DISPATCH__MAX_INFLIGHT", "10")
            .set("RELAY__DISPATCH__FIRST_ATTEMPT_SHARE", "0.8")
            .set("RELAY__DISPATCH__REQUEST_TIMEOUT", "15s"),
    )
    .await;
    // The events to replay, recorded before anyone subscribed to them.
    let since = rfc3339_now();
    let events: Vec<Value> = (0..REPLAYED)
        .map(|i| json!({"type": "bulk.tick", "data": {"i": i}}))
        .collect();
    let ids = relay.publish_batch_ok(&events).await;
    crate::consumer_api::wait_recorded(&relay, ids.last().unwrap()).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let until = rfc3339_now();

    let fresh = Receiver::start().await;
    relay.subscribe(&fresh.url(), &["fresh.*"], None).await;
    let slow = Receiver::start_with(Behaviour::Delay(SLOW)).await;
    let sub = relay.subscribe(&slow.url(), &["bulk.*"], None).await;
    let replay = relay
        .api(
            Method::POST,
            &format!("/v1/subscriptions/{}/replay", sub["id"].as_str().unwrap()),
        )
        .json(&json!({"since": since, "until": until}));

    // Fresh events every 100 ms for 10 s; the replay starts after the first second.
    let stalls = Stalls::start();
    let mut published = Vec::new();
    let mut replay = Some(replay);
    let flow_started = Instant::now();
    while flow_started.elapsed() < Duration::from_secs(10) {
        if flow_started.elapsed() >= Duration::from_secs(1)
            && let Some(replay) = replay.take()
        {
            let answer = replay.send().await.unwrap();
            assert_eq!(answer.status(), 202);
        }
        let at = Instant::now();
        let id = relay
            .publish_ok(&json!({"type": "fresh.tick", "data": {}}))
            .await;
        published.push((id, at));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let flow_ended = Instant::now();
    let delivered = fresh
        .wait_for(published.len(), Duration::from_secs(60))
        .await;
    let slow_at = arrivals(&slow.received());
    assert!(
        slow_at.len() >= 2,
        "the replay was under way during the flow"
    );

    // While fresh events flow, the replay holds at most its own two slots.
    let most = most_at_once(&slow_at, SLOW, flow_ended);
    // Fresh events published while the replay ran were never held behind its requests: each
    // one's latency, less the time the test process was measured not to run meanwhile (its
    // receiver stamps arrivals late by as much; zero on a quiet box).
    let replaying = slow_at[0];
    let mut stalled = Duration::ZERO;
    let mut latencies: Vec<Duration> = published
        .iter()
        .filter(|(_, at)| *at >= replaying)
        .map(|(id, at)| {
            let arrived = delivered
                .iter()
                .find(|r| r.header("webhook-id") == Some(id.as_str()))
                .expect("every fresh event delivered")
                .at;
            let lost = stalls.within(*at, arrived);
            stalled = stalled.max(lost);
            arrived.saturating_duration_since(*at).saturating_sub(lost)
        })
        .collect();
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    eprintln!(
        "replay: at most {most} requests at once during the flow; fresh p99 {p99:?} over {} events \
         less the process's stalls meanwhile (at most {stalled:?}; the slow endpoint answers in {SLOW:?})",
        latencies.len()
    );
    assert!(
        most <= 2,
        "the replay held {most} slots while fresh events flowed"
    );
    assert!(latencies.len() >= 30, "the flow ran alongside the replay");
    assert!(
        p99 < SLOW / 2,
        "fresh p99 {p99:?}: held behind replayed requests that take {SLOW:?}"
    );
    relay.stop().await;
}

pub(crate) fn rfc3339_now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

#[tokio::test]
async fn a_dispatcher_joining_and_leaving_mid_run_never_pushes_a_window_over_the_limit() {
    const EVENTS: usize = 900;
    const LIMIT: usize = 20;
    let relay = dispatchers(2).await;
    let receiver = Receiver::start().await;
    limited(&relay, &receiver, json!({"rate_limit": LIMIT})).await;
    publish(&relay, EVENTS).await;
    receiver.wait_for(100, Duration::from_secs(120)).await;

    // A third dispatcher joins while the backlog drains...
    let (leave, shutdown) = relay_shared::shutdown::channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let third = format!("http://{}", listener.local_addr().unwrap());
    let running = tokio::spawn(relay::dispatch::run(
        relay.settings.dispatch.clone(),
        listener,
        prometheus::Registry::new(),
        shutdown,
    ));
    settled(&relay, &third, 3).await;
    for url in &relay.dispatcher_urls {
        settled(&relay, url, 3).await;
    }
    // ...takes its part for 15 s...
    let joined = receiver.count();
    receiver
        .wait_for(joined + 15 * LIMIT, Duration::from_secs(120))
        .await;
    let sent = relay
        .metric(&third, "relay_delivery_attempt_seconds_count")
        .await
        .unwrap_or(0.0);
    // ...and leaves (the others take its part back once what it sent is a window old).
    leave.trigger();
    running.await.unwrap().unwrap();

    let received = all_delivered(&receiver, EVENTS, Duration::from_secs(300)).await;
    let worst = worst_window(&arrivals(&received), |_, _| true);
    eprintln!(
        "a dispatcher joined and left: worst 10 s window {worst} (limit {}), the third sent {sent}",
        LIMIT * 10
    );
    assert!(
        worst <= LIMIT * 10,
        "{worst} requests in a 10 s window at {LIMIT} req/s"
    );
    assert!(sent > 0.0, "the third dispatcher took no part");
    no_failed_attempts(&relay).await;
    relay.stop().await;
}
