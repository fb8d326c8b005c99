//! A real subscriber endpoint for tests: an HTTP server on a free loopback port that records
//! every request and answers as its [`Behaviour`] says.
//!
//! Connections are served on tasks owned by the server task, so dropping the [`Receiver`]
//! closes every open connection, including requests held by [`Behaviour::Hang`].

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use axum::{Router, extract::State, http::StatusCode};
use bytes::Bytes;
use http::HeaderMap;
use hyper_util::{rt::TokioIo, service::TowerToHyperService};
use tokio::{net::TcpListener, sync::watch, task::JoinSet};

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
pub struct Received {
    /// The request target as it arrived (path and query).
    pub target: String,
    /// Request headers (`webhook-id`, `webhook-timestamp`, `webhook-signature`, …).
    pub headers: HeaderMap,
    /// Request body, exactly as sent.
    pub body: Bytes,
    /// When the request arrived.
    pub at: Instant,
    /// Answered with 429 by [`Behaviour::RateLimited`] (every other behaviour leaves it
    /// `false`).
    pub refused: bool,
}

impl Received {
    /// A header as text, if present and valid UTF-8.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body parsed as JSON.
    ///
    /// # Panics
    /// When the body is not JSON.
    #[must_use]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("the request body is JSON")
    }
}

/// How the receiver answers. Requests are counted from when the behaviour was set.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// Always answer with this status.
    Status(u16),
    /// Answer the first `n` requests with `status`, then 200.
    FailFirst(usize, u16),
    /// Answer request `i` with `statuses[i]`, and 200 once they run out.
    Sequence(Vec<u16>),
    /// Answer this status with this `Retry-After` header value (seconds).
    RetryAfter(u16, u64),
    /// Wait this long, then answer 200 (a slow endpoint).
    Delay(Duration),
    /// Never answer; the connection stays open until the receiver is dropped.
    Hang,
    /// Answer this status with this body, as `text/html` (the worst case for a page that
    /// shows it).
    Body(u16, String),
    /// Answer 500 to the first request of every `n`th event (chosen by a hash of its
    /// `webhook-id`, so the same events whatever the arrival order; see [`fails_first_try`]),
    /// 200 otherwise.
    FailFirstTryOf(u64),
    /// Answer 500 to every request whose body's `ordering_key` is this, 200 otherwise.
    FailKey(String),
    /// Answer this status with these headers, in order.
    Headers(u16, Vec<(String, String)>),
    /// Answer 200 to at most `per_second` requests in any second (sliding), and 429 with
    /// `Retry-After: retry_after` to the others.
    RateLimited {
        /// Requests accepted per second.
        per_second: usize,
        /// The `Retry-After` value, seconds.
        retry_after: u64,
    },
}

/// Whether [`Behaviour::FailFirstTryOf`]`(n)` fails the first request of the event `id`.
#[must_use]
pub fn fails_first_try(id: &str, n: u64) -> bool {
    // FNV-1a: fixed across runs and platforms, unlike the standard library's hasher.
    let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    hash % n == 0
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour::Status(200)
    }
}

/// A running receiver; stops serving (and closes its connections) when dropped.
#[derive(Debug)]
pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    count: watch::Receiver<usize>,
    server: tokio::task::JoinHandle<()>,
}

/// What the request handler and the [`Receiver`] share.
#[derive(Debug)]
struct Shared {
    received: Mutex<Vec<Received>>,
    /// The behaviour and how many requests it has answered so far.
    behaviour: Mutex<(Behaviour, usize)>,
    /// Every `webhook-id` seen, for [`Behaviour::FailFirstTryOf`].
    ids: Mutex<std::collections::HashSet<String>>,
    count: watch::Sender<usize>,
}

impl Receiver {
    /// Starts a receiver that answers 200 to everything.
    pub async fn start() -> Receiver {
        Self::start_with(Behaviour::default()).await
    }

    /// Starts a receiver on `127.0.0.1:0` that answers as `behaviour` says.
    ///
    /// # Panics
    /// When no loopback port can be bound.
    pub async fn start_with(behaviour: Behaviour) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver on 127.0.0.1:0");
        let addr = listener.local_addr().expect("receiver address");
        let (count_tx, count) = watch::channel(0);
        let shared = Arc::new(Shared {
            received: Mutex::new(Vec::new()),
            behaviour: Mutex::new((behaviour, 0)),
            ids: Mutex::default(),
            count: count_tx,
        });
        let app = Router::new()
            .fallback(record)
            .with_state(Arc::clone(&shared));
        let server = tokio::spawn(serve(listener, app));
        Receiver {
            addr,
            shared,
            count,
            server,
        }
    }

    /// `http://127.0.0.1:PORT/hook` (any path is accepted and recorded).
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// The address the receiver listens on.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes how later requests are answered; the new behaviour counts from zero.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *lock(&self.shared.behaviour) = (behaviour, 0);
    }

    /// Every request so far, in arrival order.
    #[must_use]
    pub fn received(&self) -> Vec<Received> {
        lock(&self.shared.received).clone()
    }

    /// The requests from the `from`th on (0-based), in arrival order: a poll that keeps its
    /// place copies only what is new.
    #[must_use]
    pub fn received_from(&self, from: usize) -> Vec<Received> {
        lock(&self.shared.received)
            .get(from..)
            .map(<[Received]>::to_vec)
            .unwrap_or_default()
    }

    /// The distinct `webhook-id`s of the requests that arrived at or after `since`.
    #[must_use]
    pub fn ids_since(&self, since: Instant) -> HashSet<String> {
        lock(&self.shared.received)
            .iter()
            .filter(|r| r.at >= since)
            .filter_map(|r| r.header("webhook-id").map(str::to_owned))
            .collect()
    }

    /// How many requests arrived so far.
    #[must_use]
    pub fn count(&self) -> usize {
        lock(&self.shared.received).len()
    }

    /// Waits until at least `n` requests arrived or `timeout` passes; returns what arrived
    /// (check its length: fewer than `n` means the timeout passed).
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let mut count = self.count.clone();
        let _ = tokio::time::timeout(timeout, count.wait_for(|c| *c >= n)).await;
        self.received()
    }

    /// Waits until every id in `expected` arrived (as `webhook-id`) or `timeout` passes;
    /// returns the distinct ids seen and the number of requests. Counting requests is not
    /// enough where a redelivery is allowed: a duplicate can make up the count while an
    /// event is still on its way. Woken by each arrival, it reads only what is new.
    pub async fn wait_for_ids(
        &self,
        expected: &[String],
        timeout: Duration,
    ) -> (HashSet<String>, usize) {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut count = self.count.clone();
        let mut missing: HashSet<&str> = expected.iter().map(String::as_str).collect();
        let (mut seen, mut requests) = (HashSet::new(), 0);
        let mut timed_out = false;
        loop {
            let new = self.received_from(requests);
            requests += new.len();
            for id in new.iter().filter_map(|r| r.header("webhook-id")) {
                missing.remove(id);
                seen.insert(id.to_owned());
            }
            if missing.is_empty() || timed_out {
                return (seen, requests);
            }
            // The count is sent after its request is stored, so nothing is missed.
            let arrived = tokio::time::timeout_at(deadline, count.changed()).await;
            timed_out = !matches!(arrived, Ok(Ok(())));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        // Aborting the server task drops its JoinSet, which aborts every connection task.
        self.server.abort();
    }
}

/// Accepts connections until aborted; each one is served on a task of `connections`.
async fn serve(listener: TcpListener, app: Router) {
    let service = TowerToHyperService::new(app);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let service = service.clone();
                connections.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            // Reap finished connections so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Records the request, then answers as the current behaviour says.
async fn record(
    State(shared): State<Arc<Shared>>,
    uri: http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;

    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let key = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|body| body["ordering_key"].as_str().map(str::to_owned));
    let behaviour = {
        let mut received = lock(&shared.received);
        let now = Instant::now();
        let refused = match &lock(&shared.behaviour).0 {
            Behaviour::RateLimited { per_second, .. } => {
                let second_ago = now.checked_sub(Duration::from_secs(1));
                let accepted = received
                    .iter()
                    .rev()
                    .take_while(|r| second_ago.is_none_or(|ago| r.at > ago))
                    .filter(|r| !r.refused)
                    .count();
                accepted >= *per_second
            }
            _ => false,
        };
        received.push(Received {
            target: uri
                .path_and_query()
                .map_or_else(|| uri.path().to_owned(), ToString::to_string),
            headers,
            body,
            at: now,
            refused,
        });
        let total = received.len();
        let mut guard = lock(&shared.behaviour);
        let (behaviour, answered) = &mut *guard;
        let index = *answered;
        *answered += 1;
        // Inside the `received` lock so the count never runs ahead of `received()`.
        shared.count.send_replace(total);
        (behaviour.clone(), index, refused)
    };
    let (behaviour, index, refused) = behaviour;
    let behaviour = (behaviour, index);
    let status = |code: u16| StatusCode::from_u16(code).expect("a valid HTTP status code");
    match behaviour {
        (Behaviour::Status(code), _) => status(code).into_response(),
        (Behaviour::FailFirst(n, code), i) if i < n => status(code).into_response(),
        (Behaviour::FailFirst(..), _) => StatusCode::OK.into_response(),
        (Behaviour::Sequence(codes), i) => {
            status(codes.get(i).copied().unwrap_or(200)).into_response()
        }
        (Behaviour::RetryAfter(code, secs), _) => (
            status(code),
            [(http::header::RETRY_AFTER, secs.to_string())],
        )
            .into_response(),
        (Behaviour::Delay(delay), _) => {
            tokio::time::sleep(delay).await;
            StatusCode::OK.into_response()
        }
        (Behaviour::Hang, _) => std::future::pending().await,
        (Behaviour::FailFirstTryOf(n), _) => {
            let first = lock(&shared.ids).insert(id.clone());
            if first && fails_first_try(&id, n) {
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            } else {
                StatusCode::OK.into_response()
            }
        }
        (Behaviour::FailKey(failing), _) if key.as_deref() == Some(failing.as_str()) => {
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
        (Behaviour::FailKey(_), _) => StatusCode::OK.into_response(),
        (Behaviour::Body(code, body), _) => (
            status(code),
            [(
                http::header::CONTENT_TYPE,
                "text/html; charset=utf-8".to_owned(),
            )],
            body,
        )
            .into_response(),
        (Behaviour::Headers(code, headers), _) => {
            let mut response = status(code).into_response();
            for (name, value) in headers {
                response.headers_mut().append(
                    http::HeaderName::try_from(name).expect("a valid header name"),
                    http::HeaderValue::try_from(value).expect("a valid header value"),
                );
            }
            response
        }
        (Behaviour::RateLimited { retry_after, .. }, _) if refused => (
            StatusCode::TOO_MANY_REQUESTS,
            [(http::header::RETRY_AFTER, retry_after.to_string())],
        )
            .into_response(),
        (Behaviour::RateLimited { .. }, _) => StatusCode::OK.into_response(),
    }
}

/// Locks a mutex, ignoring poisoning (a panicking test thread must not hide the records).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether `received` carries a valid Standard Webhooks signature for `secret`
/// (headers `webhook-id`, `webhook-timestamp`, `webhook-signature`).
#[must_use]
pub fn verify(received: &Received, secret: &str) -> bool {
    let (Some(id), Some(timestamp), Some(signature)) = (
        received.header("webhook-id"),
        received.header("webhook-timestamp"),
        received.header("webhook-signature"),
    ) else {
        return false;
    };
    let Ok(timestamp) = timestamp.parse::<i64>() else {
        return false;
    };
    relay_shared::signing::verify(secret, id, timestamp, &received.body, signature)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn records_requests_and_answers_by_behaviour() {
        let receiver = Receiver::start_with(Behaviour::FailFirst(2, 503)).await;
        let client = client();
        let mut statuses = Vec::new();
        for i in 0..3 {
            let response = client
                .post(receiver.url())
                .header("webhook-id", format!("msg_{i}"))
                .body(format!("{{\"n\":{i}}}"))
                .send()
                .await
                .unwrap();
            statuses.push(response.status().as_u16());
        }
        assert_eq!(statuses, [503, 503, 200]);
        let got = receiver.wait_for(3, Duration::from_secs(1)).await;
        assert_eq!(got.len(), 3);
        assert_eq!(got[1].header("webhook-id"), Some("msg_1"));
        assert_eq!(got[2].json()["n"], 2);
        assert_eq!(receiver.count(), 3);

        receiver.set_behaviour(Behaviour::RetryAfter(429, 7));
        let response = client.post(receiver.url()).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 429);
        assert_eq!(response.headers()["retry-after"], "7");
    }

    #[tokio::test]
    async fn wait_for_returns_what_arrived_at_the_timeout() {
        let receiver = Receiver::start().await;
        let started = Instant::now();
        let got = receiver.wait_for(1, Duration::from_millis(200)).await;
        assert!(got.is_empty());
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn hang_holds_the_request_until_the_receiver_is_dropped() {
        let receiver = Receiver::start_with(Behaviour::Hang).await;
        let url = receiver.url();
        let request = tokio::spawn(async move { client().post(url).body("x").send().await });
        let got = receiver.wait_for(1, Duration::from_secs(5)).await;
        assert_eq!(got.len(), 1, "the hanging request is recorded");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!request.is_finished(), "no answer while the receiver lives");
        drop(receiver);
        let outcome = tokio::time::timeout(Duration::from_secs(2), request)
            .await
            .expect("dropping the receiver closes the connection")
            .unwrap();
        assert!(outcome.is_err(), "the request ends without a response");
    }

    #[test]
    fn verify_checks_the_standard_webhooks_signature() {
        let secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
        let mut headers = HeaderMap::new();
        headers.insert(
            "webhook-id",
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk".parse().unwrap(),
        );
        headers.insert("webhook-timestamp", "1649367553".parse().unwrap());
        headers.insert(
            "webhook-signature",
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
                .parse()
                .unwrap(),
        );
        let mut received = Received {
            target: "/hook".into(),
            headers,
            body: Bytes::from_static(br#"{"email":"test@example.com","username":"test_user"}"#),
            at: Instant::now(),
            refused: false,
        };
        assert!(verify(&received, secret));
        received.body = Bytes::from_static(b"{}");
        assert!(!verify(&received, secret));
    }
}
