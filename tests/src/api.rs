//! consumer-api alone, in-process on a port-0 listener with its own SQLite file, for the
//! tests of its HTTP surface. The broker is down unless the test names one (nothing listens
//! on port 1), which also shows that the API works without it.

use std::{path::PathBuf, time::Duration};

use consumer_api::ApiSettings;
use relay_shared::{
    config::Settings,
    shutdown::{self, ShutdownTrigger},
};
use serde_json::Value;

use crate::system::ADMIN_KEY;

/// A broker URL nothing listens on.
pub const NO_BROKER: &str = "amqp://guest:guest@127.0.0.1:1/%2f";

/// A running consumer-api.
#[derive(Debug)]
pub struct Api {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// A client for the test's calls.
    pub http: reqwest::Client,
    /// The settings it runs with.
    pub settings: Settings<ApiSettings>,
    trigger: ShutdownTrigger,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    dir: PathBuf,
}

/// An answer: status, headers, and the body as JSON (`Null` when empty, a string when not
/// JSON).
#[derive(Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The headers.
    pub headers: reqwest::header::HeaderMap,
    /// The body.
    pub body: Value,
}

impl Answer {
    /// The problem `type`, if the body is a problem.
    pub fn problem_type(&self) -> &str {
        self.body["type"].as_str().unwrap_or_default()
    }

    /// The `content-type` header.
    pub fn content_type(&self) -> &str {
        self.headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Asserts that `body`, answered with `status`, is Relay's problem `slug` (its `type` is
/// `urn:relay:problem:{slug}`) with status `expected`, in the status line and in the body.
///
/// # Panics
/// When it is not, with the body.
#[track_caller]
pub fn assert_problem(status: u16, body: &Value, expected: u16, slug: &str) {
    let problem_type = format!("urn:relay:problem:{slug}");
    assert_eq!(
        (status, body["type"].as_str(), body["status"].as_u64()),
        (
            expected,
            Some(problem_type.as_str()),
            Some(u64::from(expected))
        ),
        "{body}"
    );
}

impl Answer {
    /// Asserts that this is Relay's problem `slug` with `status`, as
    /// `application/problem+json`; returns the body for further checks (`field`, …).
    ///
    /// # Panics
    /// When it is not, with the body.
    #[track_caller]
    pub fn assert_problem(&self, status: u16, slug: &str) -> &Value {
        assert_eq!(self.content_type(), PROBLEM_JSON, "{}", self.body);
        assert_problem(self.status, &self.body, status, slug);
        &self.body
    }
}

/// Reads a response that must be Relay's problem `slug` with `status`; returns its body.
///
/// # Panics
/// When it is not.
pub async fn problem(response: reqwest::Response, status: u16, slug: &str) -> Value {
    let answer = answer(response).await;
    answer.assert_problem(status, slug);
    answer.body
}

/// Reads a response into an [`Answer`].
///
/// # Panics
/// When the body cannot be read.
pub async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.expect("read the body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    Answer {
        status,
        headers,
        body,
    }
}

impl Api {
    /// consumer-api with the broker down, loopback destinations allowed, and `env`
    /// (`RELAY__…` pairs) on top.
    ///
    /// # Panics
    /// When it cannot start.
    pub async fn start(env: &[(&str, &str)]) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "consumer-api-http-{}",
            relay_shared::ids::new_id("t")
        ));
        std::fs::create_dir_all(&dir).expect("create the test directory");
        let mut vars: Vec<(String, String)> = vec![
            ("RELAY__AMQP__URL".into(), NO_BROKER.into()),
            ("RELAY__API__ADMIN_KEY".into(), ADMIN_KEY.into()),
            ("RELAY__LOG__LEVEL".into(), "warn".into()),
            (
                "RELAY__SECURITY__ALLOWED_NETWORKS".into(),
                "127.0.0.0/8".into(),
            ),
            ("RELAY__SECURITY__ALLOW_HTTP".into(), "true".into()),
            (
                "RELAY__API__DATABASE_URL".into(),
                format!("sqlite://{}", dir.join("api.db").display()),
            ),
        ];
        vars.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        let settings: Settings<ApiSettings> =
            Settings::load_with_env(None, Some(vars.into_iter().collect()))
                .expect("valid settings");
        relay_shared::telemetry::init(&settings.log);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let base = format!("http://{}", listener.local_addr().expect("local addr"));
        let (trigger, shutdown) = shutdown::channel();
        let task = tokio::spawn(consumer_api::run(
            settings.clone(),
            listener,
            prometheus::Registry::new(),
            shutdown,
        ));
        Self {
            base,
            http: reqwest::Client::new(),
            settings,
            trigger,
            task,
            dir,
        }
    }

    /// A request to `path` with `key`.
    pub fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
    ) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(key)
    }

    /// A call with the admin key and an optional JSON body.
    ///
    /// # Panics
    /// When consumer-api does not answer.
    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Answer {
        self.call_as(ADMIN_KEY, method, path, body).await
    }

    /// A call with `key` and an optional JSON body.
    ///
    /// # Panics
    /// When consumer-api does not answer.
    pub async fn call_as(
        &self,
        key: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Answer {
        let mut request = self.request(method, path, key);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        answer(request.send().await.expect("consumer-api answers")).await
    }

    /// Stops it and checks that it stopped promptly and cleanly.
    ///
    /// # Panics
    /// When it does not stop within 5 s or stops with an error.
    pub async fn stop(self) {
        self.trigger.trigger();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("run returns promptly after shutdown")
            .expect("no panic")
            .expect("no error");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
