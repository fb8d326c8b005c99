//! A whole Relay (consumer-api, N dispatchers, ingest) started in-process on port-0
//! listeners against a real broker, isolated from other tests by a unique topology prefix and
//! its own SQLite file. Each component runs the same `run` function its binary calls.

use std::{
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use consumer_api::ApiSettings;
use relay::{dispatch::DispatchSettings, ingest::IngestSettings};
use relay_shared::{
    config::{AmqpSettings, Settings},
    shutdown::{self, ShutdownTrigger},
};
use serde_json::{Value, json};
use tokio::{net::TcpListener, task::JoinHandle};

use crate::process::ApiProcess;

/// Publisher key every test system accepts.
pub const PUBLISHER_KEY: &str = "pk_test_publisher_key";
/// Admin key of every test system.
pub const ADMIN_KEY: &str = "ak_test_admin_key_0123456789";
/// Directory key of every test system (what dispatchers present to consumer-api).
pub const DIRECTORY_KEY: &str = "dk_test_directory_key_0123456789";

/// Each process's settings, as loaded from one environment.
#[derive(Debug, Clone)]
pub struct AllSettings {
    /// The broker, as every process has it.
    pub amqp: AmqpSettings,
    /// `relay ingest`.
    pub ingest: Settings<IngestSettings>,
    /// `relay dispatch`.
    pub dispatch: Settings<DispatchSettings>,
    /// `consumer-api`.
    pub api: Settings<ApiSettings>,
}

impl AllSettings {
    /// Loads every process's settings from `env`.
    ///
    /// # Panics
    /// A process refuses its settings.
    pub fn load(env: &[(String, String)]) -> Self {
        let env = || Some(env.iter().cloned().collect());
        let api: Settings<ApiSettings> =
            Settings::load_with_env(None, env()).expect("consumer-api settings");
        Self {
            amqp: api.amqp.clone(),
            ingest: Settings::load_with_env(None, env()).expect("ingest settings"),
            dispatch: Settings::load_with_env(None, env()).expect("dispatch settings"),
            api,
        }
    }
}

/// Options for [`System::start_with`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Broker URL.
    pub amqp_url: String,
    /// Number of dispatchers.
    pub dispatchers: usize,
    /// Extra `RELAY__…` settings, e.g. `("RELAY__DISPATCH__REQUEST_TIMEOUT", "1s")`.
    pub env: Vec<(String, String)>,
    /// Run consumer-api as an OS process (which a test can kill) instead of in-process.
    pub api_process: bool,
}

impl Options {
    /// One dispatcher on `amqp_url`.
    pub fn new(amqp_url: impl Into<String>) -> Self {
        Self {
            amqp_url: amqp_url.into(),
            dispatchers: 1,
            env: Vec::new(),
            api_process: false,
        }
    }

    /// Runs consumer-api as an OS process ([`System::api_process`]).
    #[must_use]
    pub fn api_as_process(mut self) -> Self {
        self.api_process = true;
        self
    }

    /// Sets a configuration override.
    #[must_use]
    pub fn set(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }
}

/// A running Relay.
#[derive(Debug)]
pub struct System {
    /// The settings every component was started with.
    pub settings: AllSettings,
    /// The same settings as `RELAY__…` environment variables, to start processes with.
    pub env: Vec<(String, String)>,
    /// `http://127.0.0.1:PORT` of ingest.
    pub ingest_url: String,
    /// `http://127.0.0.1:PORT` of consumer-api.
    pub api_url: String,
    /// `http://127.0.0.1:PORT` of each dispatcher's ops routes.
    pub dispatcher_urls: Vec<String>,
    /// An HTTP client for the test's own calls.
    pub http: reqwest::Client,
    /// consumer-api when it runs as an OS process ([`Options::api_as_process`]).
    pub api_process: Option<ApiProcess>,
    created: AtomicUsize,
    trigger: ShutdownTrigger,
    /// Each component's name (as [`System::stop`] reports it) and task.
    tasks: Vec<(String, JoinHandle<anyhow::Result<()>>)>,
    dir: PathBuf,
}

async fn listener() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let url = format!("http://{}", listener.local_addr().expect("local addr"));
    (listener, url)
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        relay_shared::ids::new_id("t")
            .to_lowercase()
            .replace('_', "")
    )
}

/// The body of `POST /v1/subscriptions` for `url`, `event_types` and `consumer`.
fn subscription_body(url: &str, event_types: &[&str], consumer: Option<&str>) -> Value {
    let mut body = json!({ "url": url, "event_types": event_types });
    if let Some(consumer) = consumer {
        body["consumer"] = json!(consumer);
    }
    body
}

impl System {
    /// consumer-api, one dispatcher and ingest on `amqp_url`, all ready.
    pub async fn start(amqp_url: &str) -> Self {
        Self::start_with(Options::new(amqp_url)).await
    }

    /// A system as described by `options`, all ready.
    pub async fn start_with(options: Options) -> Self {
        let dir = std::env::temp_dir().join(unique("relay-test-"));
        std::fs::create_dir_all(&dir).expect("create the test directory");
        let (api_listener, api_url) = listener().await;
        let (ingest_listener, ingest_url) = listener().await;
        let mut env: Vec<(String, String)> = vec![
            ("RELAY__AMQP__URL".into(), options.amqp_url.clone()),
            ("RELAY__AMQP__PREFIX".into(), format!("{}.", unique("t"))),
            ("RELAY__AMQP__RECONNECT_MAX_BACKOFF".into(), "1s".into()),
            // Every test creates its own topology and kills no node in its first seconds.
            ("RELAY__AMQP__NEW_TOPOLOGY_SETTLE".into(), "0s".into()),
            ("RELAY__INGEST__PUBLISHER_KEYS".into(), PUBLISHER_KEY.into()),
            ("RELAY__INGEST__PUBLISH_TIMEOUT".into(), "3s".into()),
            ("RELAY__API__ADMIN_KEY".into(), ADMIN_KEY.into()),
            ("RELAY__API__DIRECTORY_KEYS".into(), DIRECTORY_KEY.into()),
            (
                "RELAY__DISPATCH__DIRECTORY_KEY".into(),
                DIRECTORY_KEY.into(),
            ),
            (
                "RELAY__API__DATABASE_URL".into(),
                format!("sqlite://{}", dir.join("relay.db").display()),
            ),
            ("RELAY__DISPATCH__DIRECTORY_URL".into(), api_url.clone()),
            ("RELAY__INGEST__CATALOGUE_URL".into(), api_url.clone()),
            ("RELAY__INGEST__CATALOGUE_KEY".into(), DIRECTORY_KEY.into()),
            ("RELAY__DISPATCH__REQUEST_TIMEOUT".into(), "5s".into()),
            ("RELAY__LOG__LEVEL".into(), "warn".into()),
            // Receivers are on loopback over plain http: allowed explicitly, as SSRF
            // protection refuses both by default.
            (
                "RELAY__SECURITY__ALLOWED_NETWORKS".into(),
                "127.0.0.0/8,::1/128".into(),
            ),
            ("RELAY__SECURITY__ALLOW_HTTP".into(), "true".into()),
            // A short schedule so failing deliveries reach their end within a test.
            (
                "RELAY__DISPATCH__RETRY_SCHEDULE".into(),
                "200ms,200ms".into(),
            ),
        ];
        env.extend(options.env.iter().cloned());
        let settings = AllSettings::load(&env);
        relay_shared::telemetry::init(&settings.api.log);

        let (trigger, shutdown) = shutdown::channel();
        let mut tasks = Vec::new();
        let api_process = if options.api_process {
            let listen = api_url.trim_start_matches("http://").to_owned();
            drop(api_listener);
            Some(ApiProcess::start(&env, &listen).await)
        } else {
            tasks.push((
                String::from("consumer-api"),
                tokio::spawn(consumer_api::run(
                    settings.api.clone(),
                    api_listener,
                    prometheus::Registry::new(),
                    shutdown.clone(),
                )),
            ));
            None
        };
        let mut dispatcher_urls = Vec::new();
        for n in 0..options.dispatchers {
            let (ops_listener, ops_url) = listener().await;
            dispatcher_urls.push(ops_url);
            tasks.push((
                format!("dispatcher {n}"),
                tokio::spawn(relay::dispatch::run(
                    settings.dispatch.clone(),
                    ops_listener,
                    prometheus::Registry::new(),
                    shutdown.clone(),
                )),
            ));
        }
        tasks.push((
            String::from("ingest"),
            tokio::spawn(relay::ingest::run(
                settings.ingest.clone(),
                ingest_listener,
                prometheus::Registry::new(),
                shutdown.clone(),
            )),
        ));
        let system = Self {
            settings,
            env,
            ingest_url,
            api_url,
            dispatcher_urls,
            http: reqwest::Client::new(),
            api_process,
            created: AtomicUsize::new(0),
            trigger,
            tasks,
            dir,
        };
        system.wait_ready(Duration::from_secs(30)).await;
        system
    }

    /// Waits until every component's `/readyz` answers 200.
    ///
    /// # Panics
    /// When one is still not ready after `timeout`, with its reasons.
    pub async fn wait_ready(&self, timeout: Duration) {
        let mut urls = vec![self.api_url.clone(), self.ingest_url.clone()];
        urls.extend(self.dispatcher_urls.iter().cloned());
        for url in urls {
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                let answer = self.http.get(format!("{url}/readyz")).send().await;
                match answer {
                    Ok(r) if r.status() == 200 => break,
                    other if tokio::time::Instant::now() > deadline => {
                        let body = match other {
                            Ok(r) => r.text().await.unwrap_or_default(),
                            Err(e) => e.to_string(),
                        };
                        panic!("{url} not ready after {timeout:?}: {body}");
                    }
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }
    }

    /// `POST /v1/events` with the publisher key.
    pub async fn publish(&self, event: &Value) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/events", self.ingest_url))
            .bearer_auth(PUBLISHER_KEY)
            .json(event)
            .send()
            .await
            .expect("ingest answers")
    }

    /// Publishes and asserts 202; returns the event id.
    pub async fn publish_ok(&self, event: &Value) -> String {
        let response = self.publish(event).await;
        let status = response.status();
        let body: Value = response.json().await.expect("JSON answer");
        assert_eq!(status, 202, "publish answered {status}: {body}");
        body["id"].as_str().expect("id in the answer").to_owned()
    }

    /// `POST /v1/events/batch` of `events`, asserting 202; returns the ids in order.
    pub async fn publish_batch_ok(&self, events: &[Value]) -> Vec<String> {
        let response = self
            .http
            .post(format!("{}/v1/events/batch", self.ingest_url))
            .bearer_auth(PUBLISHER_KEY)
            .json(events)
            .send()
            .await
            .expect("ingest answers");
        let status = response.status();
        let body: Value = response.json().await.expect("JSON answer");
        assert_eq!(status, 202, "batch publish answered {status}: {body}");
        body["ids"]
            .as_array()
            .expect("ids in the answer")
            .iter()
            .map(|id| id.as_str().expect("string ids").to_owned())
            .collect()
    }

    /// A request to consumer-api with the admin key.
    pub fn api(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.api_url))
            .bearer_auth(ADMIN_KEY)
    }

    /// Creates a subscription of `url` to `event_types` and waits until every dispatcher has
    /// it in its directory; returns the created body (with `secret`).
    pub async fn subscribe(
        &self,
        url: &str,
        event_types: &[&str],
        consumer: Option<&str>,
    ) -> Value {
        self.subscribe_with(subscription_body(url, event_types, consumer))
            .await
    }

    /// Creates the subscription `body` describes (any field of `POST /v1/subscriptions`) and
    /// waits until every dispatcher has it in its directory; returns the created body.
    pub async fn subscribe_with(&self, body: Value) -> Value {
        let created = self.create_subscription_with(body).await;
        let expected = self.created.fetch_add(1, Ordering::SeqCst) + 1;
        for dispatcher in &self.dispatcher_urls {
            self.wait_for_metric(dispatcher, "relay_subscriptions_loaded", |v| {
                v >= expected as f64
            })
            .await;
        }
        created
    }

    /// Waits (up to 10 s) until `metric` on the process at `base_url` satisfies `ok`.
    ///
    /// # Panics
    /// When it does not, with the last value seen.
    pub async fn wait_for_metric(&self, base_url: &str, metric: &str, ok: impl Fn(f64) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let value = self.metric(base_url, metric).await;
            if value.is_some_and(&ok) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{metric} at {base_url} stayed at {value:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The sum of every sample of `metric` exposed at `base_url/metrics`.
    pub async fn metric(&self, base_url: &str, metric: &str) -> Option<f64> {
        let text = self
            .http
            .get(format!("{base_url}/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let samples: Vec<f64> = text
            .lines()
            .filter(|line| {
                line.strip_prefix(metric)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
            .collect();
        (!samples.is_empty()).then(|| samples.iter().sum())
    }

    /// Waits (via the API, up to `timeout`) until `GET /v1/dead-letters{query}` lists at least
    /// `n` dead letters; returns them.
    ///
    /// # Panics
    /// When fewer are listed by then, with the last page.
    pub async fn wait_for_dead_letters(
        &self,
        query: &str,
        n: usize,
        timeout: Duration,
    ) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let page: Value = self
                .api(reqwest::Method::GET, &format!("/v1/dead-letters{query}"))
                .send()
                .await
                .expect("consumer-api answers")
                .json()
                .await
                .expect("JSON answer");
            let letters = page["data"].as_array().cloned().unwrap_or_default();
            if letters.len() >= n {
                return letters;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{n} dead letters not listed within {timeout:?}: {page}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Creates a subscription without waiting for the dispatchers to learn of it.
    pub async fn create_subscription(
        &self,
        url: &str,
        event_types: &[&str],
        consumer: Option<&str>,
    ) -> Value {
        self.create_subscription_with(subscription_body(url, event_types, consumer))
            .await
    }

    /// Creates the subscription `body` describes without waiting for the dispatchers.
    ///
    /// # Panics
    /// When consumer-api does not answer 201.
    pub async fn create_subscription_with(&self, body: Value) -> Value {
        let response = self
            .api(reqwest::Method::POST, "/v1/subscriptions")
            .json(&body)
            .send()
            .await
            .expect("consumer-api answers");
        let status = response.status();
        let created: Value = response.json().await.expect("JSON answer");
        assert_eq!(status, 201, "create answered {status}: {created}");
        created
    }

    /// Stops every component and waits for them (bounded).
    pub async fn stop(mut self) {
        self.trigger.trigger();
        // The documented drain: in-flight deliveries get the grace, then the attempt log and
        // the background tasks 5 s each; 10 s more for the rest.
        let bound = self.settings.dispatch.process.shutdown_grace + Duration::from_secs(20);
        for (name, task) in self.tasks.drain(..) {
            match tokio::time::timeout(bound, task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => panic!("{name} failed: {e:#}"),
                Ok(Err(e)) => panic!("{name} panicked: {e}"),
                Err(_) => panic!("{name} did not stop within {bound:?}"),
            }
        }
        if let Some(api) = self.api_process.take() {
            api.stop(bound).await;
        }
    }
}

impl Drop for System {
    fn drop(&mut self) {
        self.trigger.trigger();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
