//! Replay, redrive and rotation: targeted deliveries through the dispatchers' `redeliver`
//! queue (a replay as a job that survives a consumer-api kill), and the double signature
//! during a rotation's grace period.

use std::{collections::BTreeSet, time::Duration};

use consumer_api::store::{Store, records::NewEvent};
use reqwest::Method;
use serde_json::{Value, json};
use tests::{
    api::{Api, assert_problem},
    broker::shared_amqp_url,
    process::DispatcherProcess,
    receiver::{self, Behaviour, Receiver},
    system::{ADMIN_KEY, Options, System},
};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::{
    consumer_api::{WAIT, call, poll_until, tenant, wait_recorded},
    system,
};

fn now() -> String {
    OffsetDateTime::now_utc().format(&Rfc3339).unwrap()
}

#[tokio::test]
async fn replay_re_delivers_exactly_the_chosen_window_to_that_subscription() {
    let relay = system().await;
    let other = Receiver::start().await;
    relay.subscribe(&other.url(), &["#"], None).await;

    let mut before = Vec::new();
    for i in 0..3 {
        before.push(
            relay
                .publish_ok(&json!({"type": "replay.before", "data": i}))
                .await,
        );
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    let since = now();
    let mut inside = Vec::new();
    for i in 0..4 {
        inside.push(
            relay
                .publish_ok(&json!({"type": "replay.inside", "data": i}))
                .await,
        );
    }
    relay
        .publish_ok(&json!({"type": "unrelated.inside", "data": 0}))
        .await;
    relay
        .publish_ok(&json!({"type": "replay.inside", "consumer": "globex", "data": 0}))
        .await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let until = now();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let last = relay
        .publish_ok(&json!({"type": "replay.after", "data": 0}))
        .await;
    wait_recorded(&relay, &last).await;
    // Every unnamed event (the one naming globex goes to globex's subscriptions only).
    other.wait_for(9, WAIT).await;

    // Subscribed after the fact: it got nothing live, and gets exactly the window.
    let hook = Receiver::start().await;
    let sub = relay.subscribe(&hook.url(), &["replay.*"], None).await;
    let id = sub["id"].as_str().unwrap();
    let (status, answer) = call(
        &relay,
        ADMIN_KEY,
        Method::POST,
        &format!("/v1/subscriptions/{id}/replay"),
        Some(json!({"since": since, "until": until})),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    let job = wait_replay_ended(&relay, ADMIN_KEY, answer["id"].as_str().unwrap(), WAIT).await;
    assert_eq!(
        (
            job["state"].as_str(),
            job["total"].as_i64(),
            job["published"].as_i64()
        ),
        (Some("done"), Some(4), Some(4)),
        "{job}"
    );
    let got = hook.wait_for(4, WAIT).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(hook.count(), 4, "only the window, once");
    let mut delivered: Vec<String> = got
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_owned())
        .collect();
    delivered.sort();
    inside.sort();
    assert_eq!(delivered, inside);
    assert!(
        got.iter()
            .all(|r| receiver::verify(r, sub["secret"].as_str().unwrap()))
    );
    assert_eq!(other.count(), 9, "the other subscription got nothing more");

    let (status, problem) = call(
        &relay,
        ADMIN_KEY,
        Method::POST,
        &format!("/v1/subscriptions/{id}/replay"),
        Some(json!({"since": until, "until": since})),
    )
    .await;
    assert_eq!((status, problem["field"].as_str()), (422, Some("until")));
    relay.stop().await;
}

#[tokio::test]
async fn a_redriven_dead_letter_reaches_the_now_healthy_endpoint() {
    let relay = System::start_with(
        Options::new(shared_amqp_url()).set("RELAY__DISPATCH__RETRY_SCHEDULE", "100ms"),
    )
    .await;
    let hook = Receiver::start_with(Behaviour::Status(500)).await;
    // Not `#`: an operator subscription would also receive (and dead-letter) the
    // relay.message.exhausted about its own dead letter.
    let sub = relay.subscribe(&hook.url(), &["dead.*"], None).await;
    let sub_id = sub["id"].as_str().unwrap();
    let event = relay
        .publish_ok(&json!({"type": "dead.letter", "data": {"n": 1}}))
        .await;

    let deadline = tokio::time::Instant::now() + WAIT;
    let letter = loop {
        let (_, page) = call(
            &relay,
            ADMIN_KEY,
            Method::GET,
            &format!("/v1/dead-letters?subscription_id={sub_id}"),
            None,
        )
        .await;
        if let Some(letter) = page["data"].as_array().and_then(|d| d.first()).cloned() {
            break letter;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no dead letter recorded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(letter["event_id"], event.as_str());
    assert_eq!(letter["last_status"], 500);
    assert_eq!(letter["event"]["id"], event.as_str());
    let failed = hook.count();
    assert!(failed >= 1);

    hook.set_behaviour(Behaviour::Status(200));
    let (status, answer) = call(
        &relay,
        ADMIN_KEY,
        Method::POST,
        "/v1/dead-letters/redrive",
        Some(json!({"ids": [letter["id"]]})),
    )
    .await;
    assert_eq!(
        (status, answer["redriven"].clone()),
        (202, json!(1)),
        "{answer}"
    );
    let got = hook.wait_for(failed + 1, WAIT).await;
    let last = got.last().unwrap();
    assert_eq!(last.header("webhook-id"), Some(event.as_str()));
    assert!(receiver::verify(last, sub["secret"].as_str().unwrap()));

    let (_, page) = call(
        &relay,
        ADMIN_KEY,
        Method::GET,
        &format!("/v1/dead-letters?subscription_id={sub_id}"),
        None,
    )
    .await;
    assert!(
        page["data"][0]["redriven_at"].is_string(),
        "kept as history: {page}"
    );
    // Nothing pending is left to redrive by subscription.
    let (_, answer) = call(
        &relay,
        ADMIN_KEY,
        Method::POST,
        "/v1/dead-letters/redrive",
        Some(json!({"subscription_id": sub_id})),
    )
    .await;
    assert_eq!(answer["redriven"], 0);
    relay.stop().await;
}

/// Follows replay job `id` with `key` until it has ended (done or failed); returns it.
pub(crate) async fn wait_replay_ended(
    relay: &System,
    key: &str,
    id: &str,
    timeout: Duration,
) -> Value {
    poll_until(relay, key, &format!("/v1/replays/{id}"), timeout, |job| {
        matches!(job["state"].as_str(), Some("done" | "failed"))
    })
    .await
}

#[tokio::test]
async fn a_replay_answers_at_once_and_its_job_reports_progress_to_its_owner_only() {
    let relay = system().await;
    let acme = tenant(&relay, "acme").await;
    let globex = tenant(&relay, "globex").await;
    let since = now();
    let mut ids = Vec::new();
    for chunk in 0..3 {
        let batch: Vec<Value> = (0..100)
            .map(
                |n| json!({"type": "job.item", "consumer": "acme", "data": {"n": chunk * 100 + n}}),
            )
            .collect();
        ids.extend(relay.publish_batch_ok(&batch).await);
    }
    wait_recorded(&relay, ids.last().unwrap()).await;
    let hook = Receiver::start().await;
    let sub = relay.subscribe(&hook.url(), &["job.*"], Some("acme")).await;
    let sub_id = sub["id"].as_str().unwrap();
    let replay = format!("/v1/subscriptions/{sub_id}/replay");

    let response = relay
        .http
        .post(format!("{}{replay}", relay.api_url))
        .bearer_auth(&acme)
        .json(&json!({"since": since}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let job: Value = response.json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("rpl_"), "{job}");
    assert_eq!(location, format!("/v1/replays/{id}"));
    assert_eq!(job["subscription_id"], sub_id);
    assert_eq!(job["state"], "queued", "answered before it ran: {job}");
    let (status, problem) = call(&relay, &globex, Method::GET, &location, None).await;
    assert_problem(status, &problem, 404, "not-found");

    let job = wait_replay_ended(&relay, &acme, &id, Duration::from_secs(60)).await;
    assert_eq!(
        (
            job["state"].as_str(),
            job["total"].as_i64(),
            job["published"].as_i64()
        ),
        (Some("done"), Some(300), Some(300)),
        "{job}"
    );
    assert!(job["finished_at"].is_string(), "{job}");
    let got = hook.wait_for(300, Duration::from_secs(60)).await;
    let delivered: BTreeSet<&str> = got.iter().filter_map(|r| r.header("webhook-id")).collect();
    assert_eq!(
        delivered,
        ids.iter().map(String::as_str).collect::<BTreeSet<_>>()
    );

    // Ended: the next one may start.
    let (status, next) = call(
        &relay,
        &acme,
        Method::POST,
        &replay,
        Some(json!({"since": since})),
    )
    .await;
    assert_eq!(status, 202, "{next}");
    wait_replay_ended(
        &relay,
        &acme,
        next["id"].as_str().unwrap(),
        Duration::from_secs(60),
    )
    .await;
    relay.stop().await;
}

#[tokio::test]
async fn one_replay_per_subscription_and_another_consumers_job_is_not_found() {
    // No broker: the job counts its window, then waits for the broker to take the first
    // event, so it stays running for as long as the test needs.
    let api = Api::start(&[]).await;
    let mut keys = Vec::new();
    for consumer in ["acme", "globex"] {
        let created = api
            .call(Method::POST, "/v1/consumers", Some(json!({"id": consumer})))
            .await;
        assert_eq!(created.status, 201, "{:?}", created.body);
        let key = api
            .call(
                Method::POST,
                &format!("/v1/consumers/{consumer}/keys"),
                None,
            )
            .await;
        keys.push(key.body["key"].as_str().unwrap().to_owned());
    }
    let (acme, globex) = (&keys[0], &keys[1]);
    let sub = api
        .call_as(
            acme,
            Method::POST,
            "/v1/subscriptions",
            Some(json!({"url": "http://127.0.0.1:9/hook", "event_types": ["order.*"]})),
        )
        .await;
    assert_eq!(sub.status, 201, "{:?}", sub.body);
    let replay = format!(
        "/v1/subscriptions/{}/replay",
        sub.body["id"].as_str().unwrap()
    );
    // Recorded events, as the recorder would have stored them.
    let store = Store::open(&api.settings.process.database_url)
        .await
        .unwrap();
    let accepted_ms = OffsetDateTime::now_utc().unix_timestamp() * 1000;
    let events: Vec<NewEvent> = (0..3)
        .map(|n| {
            let id = format!("evt_replay_{n}");
            NewEvent {
                body: json!({"id": id, "type": "order.created", "consumer": "acme", "data": {}, "occurred_at": now()}).to_string(),
                id,
                event_type: "order.created".into(),
                consumer: Some("acme".into()),
                accepted_ms,
            }
        })
        .collect();
    store.insert_events(&events).await.unwrap();
    store.close().await;

    let window = json!({"since": "2020-01-01T00:00:00Z"});
    let first = api
        .call_as(acme, Method::POST, &replay, Some(window.clone()))
        .await;
    assert_eq!(first.status, 202, "{:?}", first.body);
    let id = first.body["id"].as_str().unwrap();
    let second = api
        .call_as(acme, Method::POST, &replay, Some(window.clone()))
        .await;
    let running = second.assert_problem(409, "replay-running");
    assert_eq!(
        running["replay_id"], id,
        "the problem names the running job"
    );

    let path = format!("/v1/replays/{id}");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let job = api.call_as(acme, Method::GET, &path, None).await;
        assert_eq!(job.status, 200, "{:?}", job.body);
        if job.body["state"] == "running" && job.body["total"] == 3 {
            assert_eq!(job.body["published"], 0, "nothing without a broker");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{:?}", job.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Another consumer: not found, like its subscriptions; the admin sees it.
    for (key, status) in [(globex.as_str(), 404), (ADMIN_KEY, 200)] {
        assert_eq!(
            api.call_as(key, Method::GET, &path, None).await.status,
            status
        );
    }
    api.call_as(acme, Method::GET, "/v1/replays/%FF", None)
        .await
        .assert_problem(404, "not-found");
    // A stop hands the running job back (checked: stop returns promptly and cleanly).
    api.stop().await;
}

#[tokio::test]
async fn a_replay_publishes_no_further_ahead_of_the_dispatchers_than_its_backlog() {
    // No dispatcher at first: whatever the job publishes waits in `redeliver`.
    let mut options = Options::new(shared_amqp_url());
    options.dispatchers = 0;
    let relay = System::start_with(options).await;
    // Recorded events, as the recorder would have stored them: published through ingest,
    // they would also wait in `ingress` and reach the subscription a second time, fresh.
    const EVENTS: usize = 2_500;
    let ids: Vec<String> = (0..EVENTS).map(|n| format!("evt_backlog_{n:05}")).collect();
    let accepted_ms = OffsetDateTime::now_utc().unix_timestamp() * 1000;
    let events: Vec<NewEvent> = ids
        .iter()
        .map(|id| NewEvent {
            body: json!({"id": id, "type": "bulk.item", "data": {}, "occurred_at": now()})
                .to_string(),
            id: id.clone(),
            event_type: "bulk.item".into(),
            consumer: None,
            accepted_ms,
        })
        .collect();
    let store = Store::open(&relay.settings.api.process.database_url)
        .await
        .unwrap();
    store.insert_events(&events).await.unwrap();
    store.close().await;
    let hook = Receiver::start().await;
    let sub = relay.subscribe(&hook.url(), &["bulk.*"], None).await;
    let (status, job) = call(
        &relay,
        ADMIN_KEY,
        Method::POST,
        &format!("/v1/subscriptions/{}/replay", sub["id"].as_str().unwrap()),
        Some(json!({"since": "2020-01-01T00:00:00Z"})),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/replays/{id}");

    // It fills the backlog (1,000 waiting, consumer-api's `replay_runner::BACKLOG`, plus the
    // burst of 100 that crossed it), then waits for the dispatchers.
    let filled = poll_until(&relay, ADMIN_KEY, &path, WAIT, |job| {
        job["published"].as_i64().is_some_and(|p| p >= 1_000)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, held) = call(&relay, ADMIN_KEY, Method::GET, &path, None).await;
    assert_eq!(held["state"], "running", "{held}");
    assert!(
        held["published"].as_i64().is_some_and(|p| p <= 1_100),
        "published past its backlog with no dispatcher: {filled} then {held}"
    );

    // A dispatcher comes: the job goes on at its pace, to the end, each event once.
    let _dispatcher = DispatcherProcess::start(&relay, &[]).await;
    let job = wait_replay_ended(&relay, ADMIN_KEY, &id, Duration::from_secs(120)).await;
    assert_eq!(
        (job["state"].as_str(), job["published"].as_i64()),
        (Some("done"), Some(EVENTS as i64)),
        "{job}"
    );
    let (delivered, requests) = hook.wait_for_ids(&ids, Duration::from_secs(60)).await;
    assert_eq!((delivered.len(), requests), (EVENTS, EVENTS));
    relay.stop().await;
}

#[tokio::test]
async fn a_replay_job_survives_a_consumer_api_kill_and_loses_nothing_it_claimed() {
    // consumer-api as a process, so that it can be killed mid-job; the shortest lease, so the
    // restarted instance takes the dead one's job over soon.
    let mut relay = System::start_with(
        Options::new(shared_amqp_url())
            .api_as_process()
            .set("RELAY__API__REPLAY_LEASE", "10s"),
    )
    .await;
    let since = now();
    const EVENTS: usize = 10_000;
    let mut ids = Vec::new();
    for chunk in 0..EVENTS / 100 {
        let batch: Vec<Value> = (0..100)
            .map(|n| json!({"type": "bulk.item", "data": {"n": chunk * 100 + n}}))
            .collect();
        ids.extend(relay.publish_batch_ok(&batch).await);
    }
    wait_recorded(&relay, ids.last().unwrap()).await;
    let hook = Receiver::start().await;
    let sub = relay.subscribe(&hook.url(), &["bulk.*"], None).await;
    let sub_id = sub["id"].as_str().unwrap();
    let (status, job) = call(
        &relay,
        ADMIN_KEY,
        Method::POST,
        &format!("/v1/subscriptions/{sub_id}/replay"),
        Some(json!({"since": since})),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();

    // Mid-job: counted, some published, not all. Each burst of 100 waits for its broker
    // confirms and a store write, so the 100 bursts cannot all pass between this look and the
    // kill (milliseconds).
    let before = poll_until(
        &relay,
        ADMIN_KEY,
        &format!("/v1/replays/{id}"),
        Duration::from_secs(60),
        |job| job["published"].as_i64().is_some_and(|p| p >= 1),
    )
    .await;
    relay.api_process.as_mut().unwrap().kill_and_restart().await;
    assert_eq!(before["total"].as_i64(), Some(EVENTS as i64), "{before}");
    assert_eq!(before["state"], "running", "{before}");

    let job = wait_replay_ended(&relay, ADMIN_KEY, &id, Duration::from_secs(120)).await;
    assert_eq!(
        (
            job["state"].as_str(),
            job["total"].as_i64(),
            job["published"].as_i64()
        ),
        (Some("done"), Some(EVENTS as i64), Some(EVENTS as i64)),
        "resumed and finished: {job}"
    );
    // Every event claimed published reached the receiver; what was confirmed and written
    // before the kill was not sent again (at most the burst of 100 in flight at the kill,
    // confirmed before its progress was written: consumer-api's `replay_runner::BURST`).
    // Waited for by id: an allowed duplicate can make up the count while the last event is
    // still on its way (a clean-clone CI run failed so).
    let (delivered, _) = hook.wait_for_ids(&ids, Duration::from_secs(120)).await;
    assert_eq!(
        delivered.into_iter().collect::<BTreeSet<_>>(),
        ids.iter().cloned().collect::<BTreeSet<_>>()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        hook.count() <= EVENTS + 100,
        "{} deliveries of {EVENTS} events: the resumed job re-sent what was confirmed",
        hook.count()
    );
    relay.stop().await;
}

fn signatures(r: &receiver::Received) -> usize {
    r.header("webhook-signature")
        .unwrap_or_default()
        .split(' ')
        .count()
}

#[tokio::test]
async fn during_a_rotation_either_secret_verifies_and_afterwards_only_the_new_one() {
    let relay = System::start_with(
        Options::new(shared_amqp_url()).set("RELAY__API__MAINTENANCE_INTERVAL", "100ms"),
    )
    .await;
    let hook = Receiver::start().await;
    let sub = relay.subscribe(&hook.url(), &["rot.*"], None).await;
    let id = sub["id"].as_str().unwrap();
    let old = sub["secret"].as_str().unwrap().to_owned();
    let (status, rotated) = call(
        &relay,
        ADMIN_KEY,
        Method::POST,
        &format!("/v1/subscriptions/{id}/rotate-secret"),
        Some(json!({"grace": "4s"})),
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    let new = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new, old);

    // Until the dispatchers hear of the rotation, deliveries carry the old signature only.
    let deadline = tokio::time::Instant::now() + WAIT;
    let during = loop {
        let seen = hook.count();
        relay
            .publish_ok(&json!({"type": "rot.during", "data": {}}))
            .await;
        let got = hook.wait_for(seen + 1, WAIT).await;
        let last = got.last().unwrap().clone();
        if signatures(&last) == 2 {
            break last;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never signed with both secrets"
        );
    };
    assert!(
        receiver::verify(&during, &old),
        "a receiver holding the old secret verifies"
    );
    assert!(
        receiver::verify(&during, &new),
        "a receiver holding the new secret verifies"
    );

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let after = loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let seen = hook.count();
        relay
            .publish_ok(&json!({"type": "rot.after", "data": {}}))
            .await;
        let got = hook.wait_for(seen + 1, WAIT).await;
        let last = got.last().unwrap().clone();
        if signatures(&last) == 1 {
            break last;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the old secret kept signing after the grace period"
        );
    };
    assert!(receiver::verify(&after, &new));
    assert!(!receiver::verify(&after, &old));
    let (_, secret) = call(
        &relay,
        ADMIN_KEY,
        Method::GET,
        &format!("/v1/subscriptions/{id}/secret"),
        None,
    )
    .await;
    assert_eq!(secret["secret"], new.as_str());
    relay.stop().await;
}
