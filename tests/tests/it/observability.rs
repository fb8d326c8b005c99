//! Operating Relay: a real Prometheus server scrapes ingest, two dispatchers and consumer-api
//! and its query API agrees with what the receivers saw; `/readyz` follows the broker; the
//! W3C `traceparent` a producer sends is carried on the event.
//!
//! Prometheus is the Debian `prometheus` binary (`apt-get install prometheus`; `.ci/run` and
//! `deploy/local/test.sh` install it). Without it these tests fail: they never skip.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use serde_json::{Value, json};
use tests::{
    amqp,
    broker::{PrivateBroker, shared_amqp_url},
    receiver::{Behaviour, Receiver},
    system::{Options, System},
};
use tokio::process::{Child, Command};

/// Environment variable naming the Prometheus binary (default: `prometheus` on `PATH`).
const PROMETHEUS_BIN_ENV: &str = "RELAY_TEST_PROMETHEUS";

/// A Prometheus server on a free loopback port, scraping every second; killed on drop.
struct Prometheus {
    url: String,
    http: reqwest::Client,
    child: Child,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus with one scrape job per `(job, [base URL])` and waits until it is ready.
    async fn start(jobs: &[(&str, Vec<String>)]) -> Prometheus {
        let dir = std::env::temp_dir().join(format!(
            "relay-prometheus-{}",
            relay_shared::ids::new_id("t").to_lowercase()
        ));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n",
        );
        for (job, urls) in jobs {
            let targets: Vec<String> = urls
                .iter()
                .map(|u| format!("'{}'", u.trim_start_matches("http://")))
                .collect();
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ));
        }
        std::fs::write(dir.join("prometheus.yml"), &config).unwrap();

        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let bin = std::env::var_os(PROMETHEUS_BIN_ENV).unwrap_or_else(|| "prometheus".into());
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(&bin)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {bin:?}: {e}. The observability tests need a real Prometheus: \
                     apt-get install prometheus (deploy/local/test.sh and .ci/run install it), \
                     or set {PROMETHEUS_BIN_ENV}"
                )
            });
        let prometheus = Prometheus {
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            child,
            dir,
        };
        prometheus.wait_ready().await;
        prometheus
    }

    async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let answer = self.http.get(format!("{}/-/ready", self.url)).send().await;
            if answer.is_ok_and(|r| r.status() == 200) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "Prometheus not ready after 30 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// Runs an instant query; the value of each series, with its labels.
    async fn query(&self, promql: &str) -> Vec<(Value, f64)> {
        let answer: Value = self
            .http
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", promql)])
            .send()
            .await
            .expect("Prometheus answers")
            .json()
            .await
            .expect("a JSON answer");
        assert_eq!(answer["status"], "success", "{promql}: {answer}");
        answer["data"]["result"]
            .as_array()
            .expect("a vector result")
            .iter()
            .map(|series| {
                let value = series["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .expect("a numeric sample");
                (series["metric"].clone(), value)
            })
            .collect()
    }

    /// The single value of `promql` (an aggregation), `None` while it has no data.
    async fn value(&self, promql: &str) -> Option<f64> {
        let series = self.query(promql).await;
        assert!(series.len() <= 1, "{promql} has several series: {series:?}");
        series.first().map(|(_, v)| *v)
    }

    /// Waits (up to 30 s, scrapes are every second) until `promql` equals `expected`.
    async fn assert_eventually(&self, promql: &str, expected: f64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.value(promql).await;
            if got == Some(expected) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "Prometheus: {promql} = {got:?}, expected {expected}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = remove_dir_eventually(&self.dir);
    }
}

/// Prometheus may still be writing as it dies; a second try finds it gone.
fn remove_dir_eventually(dir: &Path) -> std::io::Result<()> {
    std::fs::remove_dir_all(dir).or_else(|_| {
        std::thread::yield_now();
        std::fs::remove_dir_all(dir)
    })
}

/// Polls `check` until it is true or `timeout` passes.
async fn eventually(timeout: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn prometheus_scrapes_every_process_and_agrees_with_the_receivers() {
    let relay = System::start_with(Options {
        dispatchers: 2,
        ..Options::new(shared_amqp_url())
            // Two quick retries, then dead; a circuit that never opens within the test.
            .set("RELAY__DISPATCH__RETRY_SCHEDULE", "100ms,100ms")
            .set("RELAY__DISPATCH__BREAKER_FAILURES", "1000")
            .set("RELAY__DISPATCH__QUEUE_SAMPLE_INTERVAL", "500ms")
    })
    .await;
    let prometheus = Prometheus::start(&[
        ("relay-ingest", vec![relay.ingest_url.clone()]),
        ("relay-dispatch", relay.dispatcher_urls.clone()),
        ("relay-consumer-api", vec![relay.api_url.clone()]),
    ])
    .await;
    prometheus.assert_eventually("sum(up)", 4.0).await;

    let healthy = Receiver::start().await;
    let failing = Receiver::start_with(Behaviour::Status(500)).await;
    relay.subscribe(&healthy.url(), &["obs.#"], None).await;
    relay.subscribe(&failing.url(), &["obs.fail"], None).await;

    const OK_EVENTS: usize = 16;
    const FAILING_EVENTS: usize = 4;
    const ATTEMPTS_PER_FAILING_EVENT: usize = 3; // the first try and two retries
    for i in 0..OK_EVENTS + FAILING_EVENTS {
        let kind = if i < FAILING_EVENTS {
            "obs.fail"
        } else {
            "obs.ok"
        };
        relay
            .publish_ok(&json!({"type": kind, "data": {"i": i}}))
            .await;
    }

    // Every event reaches the healthy endpoint; each failing one is tried three times, then dead.
    let total = OK_EVENTS + FAILING_EVENTS;
    let got = healthy.wait_for(total, Duration::from_secs(30)).await;
    assert_eq!(got.len(), total, "healthy endpoint deliveries");
    let failed_attempts = FAILING_EVENTS * ATTEMPTS_PER_FAILING_EVENT;
    let got = failing
        .wait_for(failed_attempts, Duration::from_secs(30))
        .await;
    assert_eq!(got.len(), failed_attempts, "failing endpoint attempts");
    eventually(
        Duration::from_secs(30),
        "every failing event dead",
        async || {
            let mut dead = 0.0;
            for url in &relay.dispatcher_urls {
                dead += dead_count(&relay, url).await;
            }
            dead >= FAILING_EVENTS as f64
        },
    )
    .await;
    // Nothing more arrives later (no duplicate attempts past the schedule).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let delivered = healthy.count();
    let attempted = failing.count();
    assert_eq!(delivered, total);
    assert_eq!(attempted, failed_attempts);

    // What Prometheus scraped agrees with what the endpoints saw.
    let outcome = |o: &str| format!(r#"sum(relay_deliveries_total{{outcome="{o}"}})"#);
    prometheus
        .assert_eventually(&outcome("success"), delivered as f64)
        .await;
    prometheus
        .assert_eventually(&outcome("failed"), attempted as f64)
        .await;
    prometheus
        .assert_eventually(
            &outcome("retry_scheduled"),
            (FAILING_EVENTS * (ATTEMPTS_PER_FAILING_EVENT - 1)) as f64,
        )
        .await;
    prometheus
        .assert_eventually(&outcome("dead"), FAILING_EVENTS as f64)
        .await;
    prometheus
        .assert_eventually(
            "sum(relay_retries_scheduled_total)",
            (FAILING_EVENTS * (ATTEMPTS_PER_FAILING_EVENT - 1)) as f64,
        )
        .await;
    let tiers = prometheus
        .query("sum by (tier) (relay_retries_scheduled_total)")
        .await;
    assert!(
        tiers.iter().all(|(labels, _)| labels["tier"] == "100ms"),
        "{tiers:?}"
    );
    prometheus
        .assert_eventually("max(relay_circuit_open_subscriptions)", 0.0)
        .await;
    // One duration sample per HTTP attempt, successful or not.
    prometheus
        .assert_eventually(
            "sum(relay_delivery_attempt_seconds_count)",
            (delivered + attempted) as f64,
        )
        .await;
    prometheus
        .assert_eventually(
            "sum(relay_events_ingested_total{job=\"relay-ingest\",source=\"http\"})",
            total as f64,
        )
        .await;
    // Both dispatchers took part (competing consumers) and were scraped as two targets.
    let per_dispatcher = prometheus
        .query(r#"sum by (instance) (relay_deliveries_total{job="relay-dispatch"})"#)
        .await;
    assert_eq!(per_dispatcher.len(), 2, "{per_dispatcher:?}");
    // Every successful delivery's latency from acceptance was observed.
    prometheus
        .assert_eventually(
            "sum(relay_event_to_delivery_seconds_count)",
            delivered as f64,
        )
        .await;

    // HTTP metrics: route patterns as labels, on ingest and consumer-api.
    prometheus
        .assert_eventually(
            r#"sum(relay_http_requests_total{job="relay-ingest",route="/v1/events",status="202"})"#,
            total as f64,
        )
        .await;
    prometheus
        .assert_eventually(
            r#"sum(relay_http_requests_total{job="relay-consumer-api",route="/v1/subscriptions",status="201"})"#,
            2.0,
        )
        .await;
    let routes = prometheus
        .query(r#"count by (route) (relay_http_request_duration_seconds_count)"#)
        .await;
    assert!(
        routes.iter().all(|(labels, _)| {
            let route = labels["route"].as_str().unwrap_or_default();
            route.starts_with('/') || route == "unmatched"
        }),
        "{routes:?}"
    );

    // Queue sampling without the management plugin: both dispatchers consume ingress, the
    // backlog drained, and the dead letters are counted in the dead queue or taken by the
    // recorder.
    prometheus
        .assert_eventually(
            r#"max(relay_queue_consumers{job="relay-dispatch",queue="ingress"})"#,
            2.0,
        )
        .await;
    prometheus
        .assert_eventually(
            r#"max(relay_queue_messages{job="relay-dispatch",queue="ingress"})"#,
            0.0,
        )
        .await;
    let sampled = prometheus
        .query(r#"count by (queue) (relay_queue_messages{job="relay-dispatch"})"#)
        .await;
    let queues: Vec<&str> = sampled
        .iter()
        .filter_map(|(labels, _)| labels["queue"].as_str())
        .collect();
    for queue in [
        "ingress",
        "redeliver",
        "dead",
        "invalid",
        "attempts",
        "archive",
        "retry.100ms",
    ] {
        assert!(queues.contains(&queue), "{queue} not sampled: {queues:?}");
    }
    prometheus
        .assert_eventually("min(relay_amqp_connected)", 1.0)
        .await;

    drop(prometheus);
    relay.stop().await;
}

/// `relay_deliveries_total{outcome="dead"}` on one dispatcher.
async fn dead_count(relay: &System, base_url: &str) -> f64 {
    let text = relay
        .http
        .get(format!("{base_url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(r#"relay_deliveries_total{outcome="dead"}"#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn readyz_is_not_ready_while_the_broker_is_down_and_ready_after() {
    let broker = PrivateBroker::start().await;
    let relay = System::start(&broker.amqp_url()).await;
    let mut processes = vec![relay.ingest_url.clone(), relay.api_url.clone()];
    processes.extend(relay.dispatcher_urls.iter().cloned());

    broker.stop_app().await;
    for base in &processes {
        let mut last = Value::Null;
        eventually(
            Duration::from_secs(15),
            &format!("{base}/readyz reports the broker down"),
            async || {
                let response = relay
                    .http
                    .get(format!("{base}/readyz"))
                    .send()
                    .await
                    .unwrap();
                let status = response.status();
                last = response.json().await.unwrap_or(Value::Null);
                status == 503
            },
        )
        .await;
        let reasons = last["reasons"].as_array().cloned().unwrap_or_default();
        assert!(
            reasons
                .iter()
                .any(|r| r.as_str().is_some_and(|r| r.starts_with("broker:"))),
            "{base}/readyz does not name the broker: {last}"
        );
        // Alive all the same: liveness must not restart a process for a broker outage.
        let health = relay
            .http
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), 200, "{base}/healthz");
    }

    broker.start_app().await;
    relay.wait_ready(Duration::from_secs(60)).await;
    relay.stop().await;
}

#[tokio::test]
async fn ingest_carries_the_producers_traceparent_on_the_event() {
    // No dispatcher: the events stay in the ingress queue to be read back.
    let relay = System::start_with(Options {
        dispatchers: 0,
        ..Options::new(shared_amqp_url())
    })
    .await;
    let ingress = format!("{}ingress", relay.settings.amqp.prefix);
    let url = relay.settings.amqp.url.clone();
    let producer = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    let publish = |traceparent: &'static str| {
        relay
            .http
            .post(format!("{}/v1/events", relay.ingest_url))
            .bearer_auth(tests::system::PUBLISHER_KEY)
            .header("traceparent", traceparent)
            .json(&json!({"type": "trace.test"}))
            .send()
    };
    assert_eq!(publish(producer).await.unwrap().status(), 202);
    let message = amqp::get_one(&url, &ingress, Duration::from_secs(10))
        .await
        .expect("the event is in ingress");
    let stored = message
        .header(relay_shared::trace::HEADER)
        .expect("a traceparent header on the event");
    let stored = relay_shared::trace::parse_traceparent(&stored).expect("a valid traceparent");
    let sent = relay_shared::trace::parse_traceparent(producer).unwrap();
    assert_eq!(stored.trace_id, sent.trace_id, "same trace");
    assert_ne!(stored.parent_id, sent.parent_id, "ingest's own span");

    // An invalid header is ignored (W3C): the event starts a trace of its own.
    assert_eq!(
        publish("00-NOT-A-TRACE-01").await.unwrap().status(),
        202,
        "an invalid traceparent must not refuse the event"
    );
    let message = amqp::get_one(&url, &ingress, Duration::from_secs(10))
        .await
        .expect("the event is in ingress");
    let stored = message
        .header(relay_shared::trace::HEADER)
        .and_then(|t| relay_shared::trace::parse_traceparent(&t))
        .expect("a fresh valid traceparent");
    assert_ne!(stored.trace_id, sent.trace_id);
    relay.stop().await;
}

#[tokio::test]
async fn the_webhook_request_carries_the_producers_trace() {
    let relay = crate::system().await;
    let hook = Receiver::start().await;
    relay.subscribe(&hook.url(), &["trace.*"], None).await;
    let response = relay
        .http
        .post(format!("{}/v1/events", relay.ingest_url))
        .bearer_auth(tests::system::PUBLISHER_KEY)
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .json(&json!({"type": "trace.delivered"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let got = hook.wait_for(1, Duration::from_secs(10)).await;
    let header = got[0]
        .header("traceparent")
        .expect("a traceparent on the webhook request");
    let trace = relay_shared::trace::parse_traceparent(header).expect("a valid traceparent");
    assert_eq!(trace.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert!(
        !header.contains("00f067aa0ba902b7"),
        "the span id must be a new child span"
    );
    relay.stop().await;
}
