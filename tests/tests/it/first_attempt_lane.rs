//! The lane for first attempts at the size: a replay of 50,000 events to one
//! subscription runs while fresh events flow at a steady rate to ten other subscriptions, and
//! the fresh deliveries' publish→delivery latency is compared with the same flow's just
//! before the replay, in the same run.
//!
//! Asserted, from the start of each publish to its delivery (the whole path, ingest's broker
//! confirm included): the p99 beside the replay within 2x of the flow alone or within the
//! scavenger's queueing target (10 ms) of it, whichever is larger, and the median within 4x or
//! 10 ms likewise; the same for the part from the publish's answer to the delivery. The 10 ms
//! floor is what the scavenger promises (it slows the other lane whenever fresh events reach
//! the dispatcher 10 ms later than their quickest), and 2x alone is luck when a p99 is a few
//! milliseconds.
//!
//! Measured (debug build, dependencies optimized, 2026-12-01): with the scavenger reacting to
//! two late ticks in a row, the whole-path p99 went from 13.7 ms alone to 30.9 ms beside the
//! replay (2.3x; ingest's confirms waited for a broker that also carried the replay) while the
//! median barely moved; reacting to one late tick, 18.4–19.3 ms (four runs). The flow alone
//! often meets the broker's stalls of 100–500 ms in the first seconds after the 50,000 events
//! were loaded, which only makes the bound looser; the 5 s warm-up leaves some of them out.
//!
//! The test runs alone (`.config/nextest.toml` gives it every test thread): another test's
//! load in one phase and not the other would be what the ratio measured.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use reqwest::Method;
use serde_json::{Value, json};
use tests::{
    receiver::{Received, Receiver},
    system::{Options, PUBLISHER_KEY, System},
};

use crate::{
    consumer_api::wait_recorded,
    reliability::{percentile, publish_batches_to},
    shared_amqp_url,
    throttle::rfc3339_now,
};

/// Events recorded before anyone subscribed to them, then replayed.
const REPLAYED: usize = 50_000;
/// Subscriptions to the fresh events, each its own endpoint.
const FRESH_SUBSCRIPTIONS: usize = 10;
/// One fresh event every 50 ms: 20 events/s, 200 deliveries/s.
const PERIOD: Duration = Duration::from_millis(50);
/// How long the flow runs alone before the replay starts, after [`WARM_UP`].
const ALONE: Duration = Duration::from_secs(15);
/// The flow's first seconds, not measured: connections open, and the broker settles after
/// taking the 50,000 events.
const WARM_UP: Duration = Duration::from_secs(5);

/// Fresh events published at a fixed rate, each on its own task (an open loop: a slow answer
/// does not delay the next event), with the instant each publish started.
struct Flow {
    published: Arc<Mutex<Vec<(String, Instant, Instant)>>>,
    pacer: tokio::task::JoinHandle<()>,
}

impl Flow {
    fn start(relay: &System) -> Self {
        let published = Arc::new(Mutex::new(Vec::new()));
        let (http, url) = (
            relay.http.clone(),
            format!("{}/v1/events", relay.ingest_url),
        );
        let record = Arc::clone(&published);
        let pacer = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(PERIOD);
            loop {
                ticks.tick().await;
                let (http, url, record) = (http.clone(), url.clone(), Arc::clone(&record));
                tokio::spawn(async move {
                    let at = Instant::now();
                    let answer = http
                        .post(url)
                        .bearer_auth(PUBLISHER_KEY)
                        .json(&json!({"type": "fresh.tick", "data": {}}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(answer.status(), 202, "a fresh event was refused");
                    let body: Value = answer.json().await.unwrap();
                    let id = body["id"].as_str().unwrap().to_owned();
                    record.lock().unwrap().push((id, at, Instant::now()));
                });
            }
        });
        Self { published, pacer }
    }

    /// Stops publishing and returns every event published, with when its publish started
    /// and when it was answered.
    async fn stop(self) -> HashMap<String, (Instant, Instant)> {
        self.pacer.abort();
        // Publishes already started finish: wait for their answers.
        tokio::time::sleep(Duration::from_secs(2)).await;
        self.published
            .lock()
            .unwrap()
            .iter()
            .map(|(id, at, answered)| (id.clone(), (*at, *answered)))
            .collect()
    }
}

/// The latencies of the fresh deliveries whose event was published in `[from, to)`, sorted:
/// from the publish (`answered` false) or from its answer (true) to the delivery.
fn latencies(
    delivered: &[Received],
    published: &HashMap<String, (Instant, Instant)>,
    (from, to): (Instant, Instant),
    answered: bool,
) -> Vec<Duration> {
    let mut latencies: Vec<Duration> = delivered
        .iter()
        .filter_map(|r| {
            let (at, answer) = *published.get(r.header("webhook-id")?)?;
            let since = if answered { answer } else { at };
            (at >= from && at < to).then(|| r.at.saturating_duration_since(since))
        })
        .collect();
    latencies.sort();
    latencies
}

/// How long the publishes started in `[from, to)` waited for their answer (ingest's broker
/// confirm, mostly), sorted.
fn answer_waits(
    published: &HashMap<String, (Instant, Instant)>,
    (from, to): (Instant, Instant),
) -> Vec<Duration> {
    let mut waits: Vec<Duration> = published
        .values()
        .filter(|(at, _)| *at >= from && *at < to)
        .map(|(at, answered)| answered.saturating_duration_since(*at))
        .collect();
    waits.sort();
    waits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_of_50000_events_keeps_the_fresh_p99_near_the_flow_alone() {
    // consumer-api, which runs the replay job and records every attempt, in its own process
    // as deployed; the dispatcher and ingest in this one.
    let relay = System::start_with(Options::new(shared_amqp_url()).api_as_process()).await;
    let since = rfc3339_now();
    let replayed = publish_batches_to(
        relay.http.clone(),
        relay.ingest_url.clone(),
        REPLAYED,
        "bulk.tick".to_owned(),
    )
    .await;
    // The recorder stores the archive in order: the last one recorded, all are.
    wait_recorded(&relay, replayed.last().unwrap()).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let until = rfc3339_now();

    let bulk = Receiver::start().await;
    let sub = relay.subscribe(&bulk.url(), &["bulk.*"], None).await;
    let fresh: Vec<Receiver> =
        futures_util::future::join_all((0..FRESH_SUBSCRIPTIONS).map(|_| Receiver::start())).await;
    for receiver in &fresh {
        relay.subscribe(&receiver.url(), &["fresh.*"], None).await;
    }

    let flow = Flow::start(&relay);
    let warm = Instant::now() + WARM_UP;
    tokio::time::sleep(WARM_UP + ALONE).await;
    let replay_asked = Instant::now();
    let answer = relay
        .api(
            Method::POST,
            &format!("/v1/subscriptions/{}/replay", sub["id"].as_str().unwrap()),
        )
        .json(&json!({"since": since, "until": until}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    let job: Value = answer.json().await.unwrap();
    let (seen, requests) = bulk.wait_for_ids(&replayed, Duration::from_secs(600)).await;
    let published = flow.stop().await;

    // Every replayed event once, every fresh event to every fresh endpoint.
    assert_eq!(
        seen.len(),
        REPLAYED,
        "the replay did not deliver every event"
    );
    assert_eq!(requests, REPLAYED, "the replay delivered an event twice");
    let mut delivered = Vec::new();
    for receiver in &fresh {
        let ids: Vec<String> = published.keys().cloned().collect();
        let (seen, _) = receiver.wait_for_ids(&ids, Duration::from_secs(60)).await;
        assert_eq!(seen.len(), ids.len(), "a fresh event was not delivered");
        delivered.extend(receiver.received());
    }
    let job: Value = relay
        .api(
            Method::GET,
            &format!("/v1/replays/{}", job["id"].as_str().unwrap()),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["total"], REPLAYED, "{job}");

    // The flow alone, then the flow while replayed requests arrived.
    let replay_at: Vec<Instant> = bulk.received().iter().map(|r| r.at).collect();
    let (first, last) = (replay_at[0], *replay_at.iter().max().unwrap());
    let (alone, beside) = ((warm, replay_asked), (first, last));
    let figures = |phase: (Instant, Instant), answered: bool| {
        let l = latencies(&delivered, &published, phase, answered);
        (l.len(), percentile(&l, 0.5), percentile(&l, 0.99))
    };
    let (n_alone, p50_alone, p99_alone) = figures(alone, false);
    let (n_beside, p50_beside, p99_beside) = figures(beside, false);
    let (_, p50_after_alone, p99_after_alone) = figures(alone, true);
    let (_, p50_after_beside, p99_after_beside) = figures(beside, true);
    let answers = |phase| {
        let w = answer_waits(&published, phase);
        (percentile(&w, 0.5), percentile(&w, 0.99))
    };
    let ((p50_answer_alone, p99_answer_alone), (p50_answer_beside, p99_answer_beside)) =
        (answers(alone), answers(beside));
    eprintln!(
        "FIGURE publish answered after: alone p50 {p50_answer_alone:?} p99 \
         {p99_answer_alone:?}, beside p50 {p50_answer_beside:?} p99 {p99_answer_beside:?}"
    );
    eprintln!(
        "FIGURE replay of {REPLAYED} in {:.1} s ({:.0}/s); fresh deliveries alone: {n_alone}, \
         p50 {p50_alone:?} p99 {p99_alone:?}; beside the replay: {n_beside}, p50 {p50_beside:?} \
         p99 {p99_beside:?}; of which after the publish was answered: alone p50 \
         {p50_after_alone:?} p99 {p99_after_alone:?}, beside p50 {p50_after_beside:?} p99 \
         {p99_after_beside:?}",
        (last - first).as_secs_f64(),
        REPLAYED as f64 / (last - first).as_secs_f64(),
    );
    assert!(
        n_beside >= 1_000,
        "only {n_beside} fresh deliveries while the replay ran"
    );
    let target = relay::dispatch::QUEUE_TARGET;
    let checks = [
        ("publish", (p50_alone, p99_alone), (p50_beside, p99_beside)),
        (
            "acceptance",
            (p50_after_alone, p99_after_alone),
            (p50_after_beside, p99_after_beside),
        ),
    ];
    for (from, (p50_alone, p99_alone), (p50_beside, p99_beside)) in checks {
        let bound = (p99_alone * 2).max(p99_alone + target);
        assert!(
            p99_beside <= bound,
            "fresh events' p99 from {from} to delivery {p99_beside:?} beside the replay vs \
             {p99_alone:?} alone (bound {bound:?})"
        );
        let bound = (p50_alone * 4).max(p50_alone + target);
        assert!(
            p50_beside <= bound,
            "fresh events' median from {from} to delivery {p50_beside:?} beside the replay vs \
             {p50_alone:?} alone (bound {bound:?})"
        );
    }
    relay.stop().await;
}
