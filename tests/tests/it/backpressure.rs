//! A busy but healthy endpoint is waited for (back-pressure), never sent through a retry
//! tier, and gets every event once: a 200 ms endpoint, 64 concurrent producers, fan-out 1
//! and 10.
//!
//! The latency bound is derived from what the same run measured, so a loaded machine moves
//! it by design and only the dispatcher's own waiting can break it. A probe subscription to
//! an endpoint that answers at once receives the same events: its arrival time `t` is when
//! the dispatcher took the event (the bare path: producer, ingest, broker, dispatcher, one
//! request). With `K` requests allowed in flight per subscription (its cap, within the
//! dispatcher's global cap shared by every subscription) and `L` the slow endpoint's measured
//! request time, a dispatcher that keeps its slots busy starts event j's request by
//! `S(j) = max(t(j), S(j-K) + L)` (FIFO over K slots): the queueing the cap implies. A
//! delivery is within the bound when publish→delivery ≤ (t(j) − published(j)) +
//! (S(j) − t(j)) + 2 L + the test process's own stalls in that window (its receivers stamp a
//! request late by as much when a loaded box does not schedule them; `tests::stalls` measures
//! it, zero on a quiet machine); at least 99 % must be. A deferral, a stall of the dispatcher,
//! a lost place in the queue or an idle slot breaks it.
//!
//! Each (webhook-id, receiver) pair is counted: exactly one request each. The request timeout
//! and the stall floor are set far above anything a loaded machine imposes, so the endpoint
//! is healthy by design: a second request could only come from the dispatcher (a delivery
//! both deferred and sent, a nack or redelivery of a message whose deliveries succeeded).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tests::{
    receiver::{Behaviour, Receiver},
    stalls::Stalls,
    system::{Options, PUBLISHER_KEY, System},
};

use crate::shared_amqp_url;

const LATENCY: Duration = Duration::from_millis(200);
const PRODUCERS: usize = 64;
/// Events each producer sends, one after another.
const EACH: usize = 8;
const CAP: usize = 64;
const MAX_INFLIGHT: usize = 512;

/// When each event id arrived, failing when one arrived more than once.
fn once_each<'a>(got: &'a [tests::receiver::Received], who: &str) -> HashMap<&'a str, Instant> {
    let mut seen: HashMap<&str, Vec<Instant>> = HashMap::new();
    for request in got {
        let id = request.header("webhook-id").expect("webhook-id");
        seen.entry(id).or_default().push(request.at);
    }
    let twice: Vec<_> = seen.iter().filter(|(_, at)| at.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "{who} got {} requests, these ids more than once: {twice:?}",
        got.len()
    );
    seen.into_iter().map(|(id, at)| (id, at[0])).collect()
}

async fn healthy_endpoint_is_waited_for(fan_out: usize) {
    let relay = System::start_with(
        Options::new(shared_amqp_url())
            .set(
                "RELAY__DISPATCH__MAX_INFLIGHT_PER_SUBSCRIPTION",
                &CAP.to_string(),
            )
            .set("RELAY__DISPATCH__MAX_INFLIGHT", &MAX_INFLIGHT.to_string())
            // A retry tier that would show: any deferral waits 30 s.
            .set("RELAY__DISPATCH__RETRY_SCHEDULE", "30s")
            // The endpoint is healthy by design, however loaded the machine: no request may
            // time out (the receiver would then see the retry as a second request) and no
            // endpoint may pass for hanging. What is left to fail is the dispatcher's waiting.
            .set("RELAY__DISPATCH__REQUEST_TIMEOUT", "60s")
            .set("RELAY__DISPATCH__INFLIGHT_WAIT", "60s"),
    )
    .await;
    let stalls = Stalls::start();
    let probe = Receiver::start().await;
    relay.subscribe(&probe.url(), &["busy.*"], None).await;
    let mut hooks = Vec::new();
    for _ in 0..fan_out {
        let hook = Receiver::start_with(Behaviour::Delay(LATENCY)).await;
        relay.subscribe(&hook.url(), &["busy.*"], None).await;
        hooks.push(hook);
    }
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let (http, url) = (relay.http.clone(), relay.ingest_url.clone());
            tokio::spawn(async move {
                let mut sent = Vec::with_capacity(EACH);
                for i in 0..EACH {
                    let at = Instant::now();
                    let response = http
                        .post(format!("{url}/v1/events"))
                        .bearer_auth(PUBLISHER_KEY)
                        .json(&json!({"type": "busy.event", "data": {"p": p, "i": i}}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), 202);
                    let body: Value = response.json().await.unwrap();
                    sent.push((body["id"].as_str().unwrap().to_owned(), at));
                    // Paced at about the endpoint's latency: 64 producers offer ~64 events
                    // at a time, as in the reported load.
                    tokio::time::sleep(LATENCY).await;
                }
                sent
            })
        })
        .collect();
    let mut published = HashMap::new();
    for producer in producers {
        published.extend(producer.await.unwrap());
    }
    let events = PRODUCERS * EACH;
    let routes = fan_out + 1;
    // Every delivery made, then quiet: a duplicate (redelivery, a second send) would show
    // in the receivers and in the dispatcher's outcome count.
    let dispatcher = &relay.dispatcher_urls[0];
    let deadline = Instant::now() + Duration::from_secs(120);
    for hook in hooks.iter().chain([&probe]) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert_eq!(hook.wait_for(events, left).await.len().min(events), events);
    }
    relay
        .wait_for_metric(dispatcher, "relay_deliveries_total", |n| {
            n >= (events * routes) as f64
        })
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let outcomes = relay.metric(dispatcher, "relay_deliveries_total").await;
    let deferred = relay
        .metric(dispatcher, "relay_deliveries_deferred_total")
        .await
        .unwrap_or(0.0);
    let retried = relay
        .metric(dispatcher, "relay_retries_scheduled_total")
        .await
        .unwrap_or(0.0);
    let failed = relay
        .metric(dispatcher, "relay_deliveries_total{outcome=\"failed\"}")
        .await
        .unwrap_or(0.0);
    let request_seconds = relay
        .metric(dispatcher, "relay_delivery_attempt_seconds_sum")
        .await
        .unwrap();

    let probed = probe.received();
    let bare = once_each(&probed, "the probe");
    assert_eq!(bare.len(), events, "the probe missed events");
    // L: the slow requests' mean, as the dispatcher measured them (the probe's few ms are
    // counted in too: a slightly longer L, never a shorter one).
    let l = Duration::from_secs_f64(request_seconds / (events * fan_out) as f64).max(LATENCY);
    let k = CAP.min(MAX_INFLIGHT / routes);
    let mut order: Vec<(&str, Instant)> = bare.iter().map(|(id, at)| (*id, *at)).collect();
    order.sort_by_key(|(_, at)| *at);
    let mut starts: Vec<Instant> = Vec::with_capacity(events);
    let mut bound = HashMap::with_capacity(events);
    let mut queueing_max = Duration::ZERO;
    for (j, (id, t)) in order.iter().enumerate() {
        let start = match j.checked_sub(k) {
            Some(before) => (*t).max(starts[before] + l),
            None => *t,
        };
        starts.push(start);
        queueing_max = queueing_max.max(start - *t);
        bound.insert(*id, start.duration_since(published[*id]) + l * 2);
    }

    let mut delays = Vec::with_capacity(events * fan_out);
    let mut over = 0;
    let mut over_without_stalls = 0;
    for (n, hook) in hooks.iter().enumerate() {
        let received = hook.received();
        let got = once_each(&received, &format!("receiver {n}"));
        assert_eq!(got.len(), events, "receiver {n} missed events");
        for (id, at) in got {
            let delay = at.duration_since(published[id]);
            if delay > bound[id] {
                over_without_stalls += 1;
                if delay > bound[id] + stalls.within(published[id], at) {
                    over += 1;
                }
            }
            delays.push(delay);
        }
    }
    delays.sort();
    let mut bare_delays: Vec<_> = bare
        .iter()
        .map(|(id, at)| at.duration_since(published[*id]))
        .collect();
    bare_delays.sort();
    let ms = |d: Duration| d.as_millis();
    println!(
        "FIGURE backpressure fan_out={fan_out} deliveries={} p50_ms={} p99_ms={} bare_p50_ms={} bare_p99_ms={} L_ms={} K={k} queueing_max_ms={} stalls_total_ms={} stalls_longest_ms={} over_bound={over} over_bound_without_stalls={over_without_stalls} failed={failed} deferred={deferred} retries={retried}",
        delays.len(),
        ms(delays[delays.len() / 2]),
        ms(delays[delays.len() * 99 / 100]),
        ms(bare_delays[events / 2]),
        ms(bare_delays[events * 99 / 100]),
        ms(l),
        ms(queueing_max),
        ms(stalls.total()),
        ms(stalls.longest()),
    );
    assert_eq!(failed, 0.0, "an attempt failed");
    assert_eq!(deferred, 0.0, "a healthy endpoint's delivery was deferred");
    assert_eq!(
        retried, 0.0,
        "a healthy endpoint's delivery went through a retry tier"
    );
    assert_eq!(
        outcomes,
        Some((events * routes) as f64),
        "the dispatcher settled a delivery twice"
    );
    assert!(
        over * 100 <= delays.len(),
        "{over} of {} deliveries over their bound",
        delays.len()
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_healthy_endpoint_is_waited_for_at_fan_out_1() {
    healthy_endpoint_is_waited_for(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_healthy_endpoint_is_waited_for_at_fan_out_10() {
    healthy_endpoint_is_waited_for(10).await;
}
