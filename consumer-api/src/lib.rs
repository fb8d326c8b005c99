//! consumer-api: the consumer-facing side of Relay. Tenants (consumers) and their API keys;
//! subscriptions (endpoint, topic filters, owner, signing secrets and their rotation); the
//! recorder that stores every event, attempt and dead letter from the broker; the pull API,
//! delivery log, replay and redrive on top of it; the dispatchers' directory, kept current
//! through the control exchange; and `/openapi.json` describing all of it.
//!
//! [`run`] takes its configuration, a bound listener, a metrics registry and a shutdown
//! signal, so `main` and the end-to-end tests start the very same code.
#![forbid(unsafe_code)]

pub mod attempts;
pub mod auth;
pub mod config;
pub mod control;
pub mod dead_letters;
pub mod directory;
pub mod error;
pub mod events;
pub mod http;
pub mod maintenance;
pub mod metrics;
pub mod openapi;
pub mod publisher;
pub mod recorder;
pub mod replay;
pub mod store;
pub mod subscriptions;
pub mod tenants;
pub mod validation;

use anyhow::Context as _;
use relay_shared::{config::Settings, ops::Readiness, shutdown::Shutdown, topology::Topology};

pub use crate::config::ApiSettings;
use crate::{
    control::ControlPublisher, http::AppState, maintenance::Upkeep, metrics::ApiMetrics,
    publisher::Publisher, store::Store,
};

/// Readiness condition name for the store.
pub const READY_STORE: &str = "store";
/// Readiness condition name for the publishing channel (control notifications, replays).
pub const READY_PUBLISHER: &str = "publisher";

/// Opens the store (creating and migrating it as needed), keeps a broker connection for
/// control notifications, and serves the consumer API on `listener` until `shutdown`;
/// in-flight requests finish first.
///
/// # Errors
/// The metrics cannot be registered, the store cannot be opened or migrated, or the server
/// fails. A broker that is down is not an error: the API works without it.
pub async fn run(
    settings: Settings<ApiSettings>,
    listener: tokio::net::TcpListener,
    registry: prometheus::Registry,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let metrics =
        ApiMetrics::register(&registry).context("cannot register consumer-api metrics")?;
    let policy = settings
        .security
        .policy()
        .map_err(|bad| anyhow::anyhow!("security.allowed_networks: {bad:?} is not a CIDR"))?;
    let readiness = Readiness::default();
    readiness.not_ready(READY_STORE, "opening");
    let store = Store::open(&settings.process.database_url)
        .await
        .with_context(|| format!("cannot open the store at {}", settings.process.database_url))?;
    readiness.ready(READY_STORE);

    let sessions = relay_shared::session::keep_connected(
        settings.amqp.clone(),
        "consumer-api",
        readiness.clone(),
        metrics.amqp_connected.clone(),
        shutdown.clone(),
    );
    let topology = Topology::new(&settings.amqp.prefix);
    recorder::spawn(
        store.clone(),
        sessions.clone(),
        &topology,
        settings.process.recorder_prefetch,
        metrics.recorded.clone(),
        metrics.recorder_batch_seconds.clone(),
        shutdown.clone(),
    );
    sample_store_rows(store.clone(), metrics.store_rows.clone(), shutdown.clone());
    let channel = relay_shared::session::confirm_channels(sessions, shutdown.clone());
    follow_publisher(channel.clone(), readiness.clone());
    let control = ControlPublisher::new(
        channel.clone(),
        &topology.control,
        metrics.control_notifications.clone(),
    );
    let state = AppState::new(
        store.clone(),
        control,
        Publisher::new(channel, topology),
        policy,
        &settings.process,
    );
    maintenance::spawn(
        state.clone(),
        Upkeep {
            interval: settings.process.maintenance_interval,
            retention: settings.process.retention,
            disable_after: settings.process.disable_after_failing_for,
        },
        shutdown.clone(),
    );
    let http_metrics = relay_shared::http_metrics::HttpMetrics::register(&registry)?;
    let app = http::router(
        state,
        relay_shared::ops::router(registry, readiness),
        metrics,
    );
    let app = http_metrics.instrument(app);

    match listener.local_addr() {
        Ok(addr) => tracing::info!(%addr, "consumer-api listening"),
        Err(e) => tracing::warn!(error = %e, "consumer-api listening on an unknown address"),
    }
    let mut stop = shutdown.clone();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.wait().await })
        .await;

    store.close().await;
    served.context("the consumer API server failed")?;
    tracing::info!("consumer-api stopped");
    Ok(())
}

/// Ready only while a publishing channel is open: a change acknowledged before the channel
/// exists would reach dispatchers only at their next full refresh.
fn follow_publisher(
    mut channel: tokio::sync::watch::Receiver<Option<lapin::Channel>>,
    readiness: Readiness,
) {
    tokio::spawn(async move {
        loop {
            if channel.borrow_and_update().is_some() {
                readiness.ready(READY_PUBLISHER);
            } else {
                readiness.not_ready(READY_PUBLISHER, "no publishing channel");
            }
            if channel.changed().await.is_err() {
                return;
            }
        }
    });
}

/// Keeps `relay_store_rows{table}` current. Counting is a full scan on some databases, so
/// it runs every 30 s rather than per scrape.
fn sample_store_rows(store: Store, rows: prometheus::IntGaugeVec, mut shutdown: Shutdown) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(30));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.wait() => return,
            }
            match store.row_counts().await {
                Ok(counts) => {
                    for (table, count) in counts {
                        rows.with_label_values(&[table]).set(count);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot count store rows"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    //! The HTTP surface through [`run`] itself, with the broker down (nothing listens on port 1),
    //! which also shows that changes succeed without it.

    use std::time::{Duration, Instant};

    use relay_shared::shutdown;
    use serde_json::{Value, json};

    use super::*;

    const KEY: &str = "test-admin-key-0123456789";

    struct Api {
        base: String,
        client: reqwest::Client,
        trigger: shutdown::ShutdownTrigger,
        task: tokio::task::JoinHandle<anyhow::Result<()>>,
        dir: std::path::PathBuf,
    }

    async fn start() -> Api {
        // Nothing listens on port 1: the broker is down for the whole test.
        start_with_broker("amqp://guest:guest@127.0.0.1:1/%2f", "relay.").await
    }

    async fn start_with_broker(amqp_url: &str, prefix: &str) -> Api {
        let dir = std::env::temp_dir().join(format!(
            "consumer-api-http-{}",
            relay_shared::ids::new_id("t")
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let env = [
            ("RELAY__AMQP__URL", amqp_url.to_owned()),
            ("RELAY__AMQP__PREFIX", prefix.to_owned()),
            ("RELAY__API__ADMIN_KEY", KEY.to_owned()),
            (
                "RELAY__SECURITY__ALLOWED_NETWORKS",
                "127.0.0.0/8".to_owned(),
            ),
            ("RELAY__SECURITY__ALLOW_HTTP", "true".to_owned()),
            (
                "RELAY__API__DATABASE_URL",
                format!("sqlite://{}", dir.join("api.db").display()),
            ),
        ];
        let settings = Settings::<ApiSettings>::load_with_env(
            None,
            Some(env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()),
        )
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (trigger, shutdown) = shutdown::channel();
        let task = tokio::spawn(run(
            settings,
            listener,
            prometheus::Registry::new(),
            shutdown,
        ));
        Api {
            base,
            client: reqwest::Client::new(),
            trigger,
            task,
            dir,
        }
    }

    impl Api {
        async fn call(
            &self,
            method: reqwest::Method,
            path: &str,
            body: Option<Value>,
        ) -> (u16, reqwest::header::HeaderMap, Value) {
            let mut request = self
                .client
                .request(method, format!("{}{path}", self.base))
                .bearer_auth(KEY);
            if let Some(body) = body {
                request = request
                    .header("content-type", "application/json")
                    .body(body.to_string());
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let bytes = response.bytes().await.unwrap();
            let value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
            };
            (status, headers, value)
        }

        async fn stop(self) {
            self.trigger.trigger();
            let started = Instant::now();
            tokio::time::timeout(Duration::from_secs(5), self.task)
                .await
                .expect("run returns promptly after shutdown")
                .unwrap()
                .unwrap();
            assert!(started.elapsed() < Duration::from_secs(5));
            std::fs::remove_dir_all(self.dir).unwrap();
        }
    }

    fn problem_type(body: &Value) -> &str {
        body["type"].as_str().unwrap_or_default()
    }

    #[tokio::test]
    async fn subscriptions_lifecycle_without_a_broker() {
        use reqwest::Method;
        let api = start().await;

        let started = Instant::now();
        let (status, headers, created) = api
            .call(
                Method::POST,
                "/v1/subscriptions",
                Some(json!({"url": "https://example.com/hook", "event_types": ["order.*"], "consumer": "acme"})),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a down broker must not hold the request"
        );
        let id = created["id"].as_str().unwrap().to_owned();
        assert!(id.starts_with("sub_"));
        assert_eq!(
            headers["location"],
            format!("/v1/subscriptions/{id}").as_str()
        );
        assert!(created["secret"].as_str().unwrap().starts_with("whsec_"));
        assert_eq!(created["enabled"], true);
        assert_eq!(created["description"], Value::Null);

        let (status, _, got) = api
            .call(Method::GET, &format!("/v1/subscriptions/{id}"), None)
            .await;
        assert_eq!(status, 200);
        assert!(got.get("secret").is_none());
        assert_eq!(got["consumer"], "acme");

        let (status, _, secret) = api
            .call(Method::GET, &format!("/v1/subscriptions/{id}/secret"), None)
            .await;
        assert_eq!((status, &secret["secret"]), (200, &created["secret"]));

        let (status, _, updated) = api
            .call(
                Method::PATCH,
                &format!("/v1/subscriptions/{id}"),
                Some(json!({"enabled": false, "consumer": null})),
            )
            .await;
        assert_eq!(status, 200, "{updated}");
        assert_eq!(
            (updated["enabled"].clone(), updated["consumer"].clone()),
            (json!(false), Value::Null)
        );

        // ULIDs are ordered across milliseconds only.
        tokio::time::sleep(Duration::from_millis(2)).await;
        let (status, _, second) = api
            .call(
                Method::POST,
                "/v1/subscriptions",
                Some(json!({"url": "http://127.0.0.1:9/x", "event_types": ["#"]})),
            )
            .await;
        assert_eq!(status, 201);

        let (status, _, page) = api
            .call(Method::GET, "/v1/subscriptions?limit=1", None)
            .await;
        assert_eq!(status, 200);
        assert_eq!(page["data"][0]["id"], id.as_str());
        assert_eq!(page["next_cursor"], id.as_str());
        let (_, _, page) = api
            .call(
                Method::GET,
                &format!("/v1/subscriptions?limit=1&after={id}"),
                None,
            )
            .await;
        assert_eq!(page["data"][0]["id"], second["id"]);
        assert_eq!(page["next_cursor"], Value::Null);

        let (status, _, directory) = api.call(Method::GET, "/v1/directory", None).await;
        assert_eq!(status, 200);
        let entries = directory["data"].as_array().unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0]["revision"], 2);
        assert_eq!(entries[0]["enabled"], false);
        assert_eq!(entries[0]["secrets"], json!([created["secret"]]));
        assert_eq!(directory["next_cursor"], Value::Null);

        let (status, _, _) = api
            .call(Method::DELETE, &format!("/v1/subscriptions/{id}"), None)
            .await;
        assert_eq!(status, 204);
        let (status, headers, body) = api
            .call(Method::GET, &format!("/v1/subscriptions/{id}"), None)
            .await;
        assert_eq!(
            (status, problem_type(&body)),
            (404, "urn:relay:problem:not-found")
        );
        assert_eq!(headers["content-type"], "application/problem+json");
        let (status, _, _) = api
            .call(Method::DELETE, &format!("/v1/subscriptions/{id}"), None)
            .await;
        assert_eq!(status, 404);

        let metrics = api
            .client
            .get(format!("{}/metrics", api.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains(r#"relay_api_control_notifications_total{outcome="failed"} 4"#),
            "{metrics}"
        );
        assert!(metrics.contains("relay_amqp_connected 0"), "{metrics}");
        api.stop().await;
    }

    #[tokio::test]
    async fn every_rejection_is_a_problem() {
        use reqwest::Method;
        let api = start().await;
        let url = |path: &str| format!("{}{path}", api.base);

        let response = api
            .client
            .get(url("/v1/subscriptions"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 401);
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let response = api
            .client
            .get(url("/v1/directory"))
            .bearer_auth("wrong-key")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 401);

        let response = api.client.get(url("/healthz")).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let response = api.client.get(url("/readyz")).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 503, "the broker is down");
        let body: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        assert!(
            body["reasons"][0].as_str().unwrap().starts_with("broker:"),
            "{body}"
        );

        let response = api
            .client
            .post(url("/v1/subscriptions"))
            .bearer_auth(KEY)
            .header("content-type", "text/plain")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 415);

        let response = api
            .client
            .post(url("/v1/subscriptions"))
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body("{\"url\":")
            .send()
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        assert_eq!(problem_type(&body), "urn:relay:problem:malformed-json");

        let response = api
            .client
            .post(url("/v1/subscriptions"))
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body(vec![b' '; http::MAX_BODY_BYTES + 1])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 413);

        let cases = [
            (json!({"url": "ftp://x", "event_types": ["a"]}), "url"),
            (
                json!({"url": "https://x", "event_types": ["a", "B"]}),
                "event_types[1]",
            ),
            (
                json!({"url": "https://x", "event_types": ["a"], "extra": 1}),
                "extra",
            ),
            (json!({"url": "https://x"}), "event_types"),
        ];
        for (body, field) in cases {
            let (status, _, problem) = api
                .call(Method::POST, "/v1/subscriptions", Some(body))
                .await;
            assert_eq!(status, 400, "{problem}");
            assert_eq!(problem_type(&problem), "urn:relay:problem:invalid-field");
            assert_eq!(problem["field"], field);
        }

        let (status, _, problem) = api
            .call(Method::GET, "/v1/subscriptions?limit=501", None)
            .await;
        assert_eq!((status, problem["field"].as_str()), (400, Some("limit")));
        let (status, _, problem) = api
            .call(Method::GET, "/v1/directory?limit=5001", None)
            .await;
        assert_eq!((status, problem["field"].as_str()), (400, Some("limit")));
        let (status, _, _) = api
            .call(Method::GET, "/v1/directory?limit=5000", None)
            .await;
        assert_eq!(status, 200);

        let (status, _, problem) = api
            .call(
                Method::PATCH,
                "/v1/subscriptions/sub_nope",
                Some(json!({"enabled": true})),
            )
            .await;
        assert_eq!(
            (status, problem_type(&problem)),
            (404, "urn:relay:problem:not-found")
        );

        let (status, _, problem) = api.call(Method::GET, "/v2/nothing", None).await;
        assert_eq!(
            (status, problem_type(&problem)),
            (404, "urn:relay:problem:not-found")
        );
        let (status, _, problem) = api.call(Method::PUT, "/v1/subscriptions", None).await;
        assert_eq!(
            (status, problem_type(&problem)),
            (405, "urn:relay:problem:method-not-allowed")
        );
        api.stop().await;
    }
}
