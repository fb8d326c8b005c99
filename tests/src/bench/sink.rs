//! The benchmark's subscriber endpoint: a bare hyper server on loopback that answers at once,
//! records each delivery's identity (path + `webhook-id`) and publish→arrival latency, and
//! verifies the Standard Webhooks signature on a sample.
//!
//! Paths: `/fail…` answers 500 (the failing endpoint of scenario e); `/slow…` answers 200
//! after [`SLOW`] (a realistic endpoint, scenario l); anything else 200 at once. The arrivals
//! at each `/lim…` path (a rate-limited subscription, scenario h) are also kept apart. Latency is
//! read from `"sent_us":<unix µs>` in the body, stamped by the producer at send, and taken
//! when the request arrives.

use std::{
    collections::{HashMap, HashSet},
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, task::JoinSet};

use super::stats::unix_micros;

/// The path of (g)'s ordered subscription beside the unordered one: its deliveries count as
/// delivered but their latencies are not recorded, so the row's are the unordered ones'.
pub const ORDERED_BESIDE: &str = "/ord0";

/// How long a `/slow…` endpoint takes to answer.
pub const SLOW: Duration = Duration::from_millis(200);

/// What arrived since the last [`Sink::reset`].
#[derive(Debug, Default, Clone)]
pub struct Recording {
    /// Distinct (path, webhook-id) pairs answered 200.
    pub distinct_ok: usize,
    /// Requests answered 200 (duplicates included).
    pub ok: u64,
    /// Requests answered 500 (the failing endpoint).
    pub failed: u64,
    /// Publish→arrival latency of each 200 delivery, in microseconds.
    pub latencies_us: Vec<u64>,
    /// Arrival of each first 200 delivery, in Unix microseconds.
    pub arrivals_us: Vec<u64>,
    /// When the latest 200 delivery arrived.
    pub last_ok: Option<Instant>,
    /// Arrival of each first 200 delivery per `/lim…` path, in Unix microseconds.
    pub limited_arrivals_us: HashMap<String, Vec<u64>>,
    /// When the latest 200 delivery to any other path arrived.
    pub last_unlimited: Option<Instant>,
}

#[derive(Debug, Default)]
struct Record {
    seen: HashSet<Box<str>>,
    ok: u64,
    failed: u64,
    latencies_us: Vec<u64>,
    arrivals_us: Vec<u64>,
    last_ok: Option<Instant>,
    limited_arrivals_us: HashMap<String, Vec<u64>>,
    last_unlimited: Option<Instant>,
}

#[derive(Debug)]
struct State {
    record: Mutex<Record>,
    /// Secret per path, for signature checks.
    secrets: Mutex<HashMap<String, String>>,
    sample_every: u64,
    requests: AtomicU64,
    verified: AtomicU64,
    bad_signatures: AtomicU64,
}

/// A running sink; stops when dropped.
#[derive(Debug)]
pub struct Sink {
    addr: SocketAddr,
    state: Arc<State>,
    server: tokio::task::JoinHandle<()>,
}

impl Sink {
    /// Starts on `127.0.0.1:0`; one request in `sample_every` with a known secret is verified.
    ///
    /// # Errors
    /// No loopback port could be bound.
    pub async fn start(sample_every: u64) -> std::io::Result<Sink> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            record: Mutex::new(Record::default()),
            secrets: Mutex::new(HashMap::new()),
            sample_every: sample_every.max(1),
            requests: AtomicU64::new(0),
            verified: AtomicU64::new(0),
            bad_signatures: AtomicU64::new(0),
        });
        let server = tokio::spawn(serve_http1(listener, Arc::clone(&state), handle));
        Ok(Sink {
            addr,
            state,
            server,
        })
    }

    /// `http://127.0.0.1:PORT{path}`.
    #[must_use]
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Verifies sampled requests to `path` against `secret` from now on.
    pub fn set_secret(&self, path: &str, secret: &str) {
        lock(&self.state.secrets).insert(path.to_owned(), secret.to_owned());
    }

    /// Forgets every recorded delivery and secret (between runs).
    pub fn reset(&self) {
        *lock(&self.state.record) = Record::default();
        lock(&self.state.secrets).clear();
    }

    /// Distinct deliveries answered 200 so far (cheap; for progress and completion).
    #[must_use]
    pub fn distinct_ok(&self) -> usize {
        lock(&self.state.record).seen.len()
    }

    /// A copy of what arrived.
    #[must_use]
    pub fn snapshot(&self) -> Recording {
        let record = lock(&self.state.record);
        Recording {
            distinct_ok: record.seen.len(),
            ok: record.ok,
            failed: record.failed,
            latencies_us: record.latencies_us.clone(),
            arrivals_us: record.arrivals_us.clone(),
            last_ok: record.last_ok,
            limited_arrivals_us: record.limited_arrivals_us.clone(),
            last_unlimited: record.last_unlimited,
        }
    }

    /// A cheap reader of how many requests arrived since the start (for progress lines).
    pub fn requests_counter(&self) -> impl Fn() -> u64 + Send + 'static {
        let state = Arc::clone(&self.state);
        move || state.requests.load(Ordering::Relaxed)
    }

    /// (signatures verified, signatures that failed verification) since the start.
    #[must_use]
    pub fn signatures(&self) -> (u64, u64) {
        (
            self.state.verified.load(Ordering::Relaxed),
            self.state.bad_signatures.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Serves HTTP/1 on `listener` until dropped, answering each request with `handle(state,
/// request)` (the sink's and the bare baseline's front).
pub(super) async fn serve_http1<S, F, Fut>(listener: TcpListener, state: Arc<S>, handle: F)
where
    S: Send + Sync + 'static,
    F: Fn(Arc<S>, Request<Incoming>) -> Fut + Copy + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let state = Arc::clone(&state);
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        handle(Arc::clone(&state), request)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn handle(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Ok(status(StatusCode::BAD_REQUEST)),
    };
    let arrived = Instant::now();
    let arrived_us = unix_micros();
    let path = parts.uri.path();
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let id = header("webhook-id").unwrap_or("");

    let n = state.requests.fetch_add(1, Ordering::Relaxed);
    if n.is_multiple_of(state.sample_every) {
        let secret = lock(&state.secrets).get(path).cloned();
        if let Some(secret) = secret {
            let ok = match (header("webhook-timestamp"), header("webhook-signature")) {
                (Some(ts), Some(sig)) => ts
                    .parse::<i64>()
                    .is_ok_and(|ts| relay_shared::signing::verify(&secret, id, ts, &body, sig)),
                _ => false,
            };
            let counter = if ok {
                &state.verified
            } else {
                &state.bad_signatures
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    if path.starts_with("/fail") {
        lock(&state.record).failed += 1;
        return Ok(status(StatusCode::INTERNAL_SERVER_ERROR));
    }
    let latency = sent_us(&body).map(|sent| arrived_us.saturating_sub(sent));
    let key: Box<str> = format!("{path} {id}").into_boxed_str();
    {
        let mut record = lock(&state.record);
        record.ok += 1;
        if record.seen.insert(key) {
            record.arrivals_us.push(arrived_us);
            if path.starts_with("/lim") {
                record
                    .limited_arrivals_us
                    .entry(path.to_owned())
                    .or_default()
                    .push(arrived_us);
            }
        }
        if !path.starts_with("/lim") {
            record.last_unlimited = Some(arrived);
        }
        if let Some(latency) = latency.filter(|_| path != ORDERED_BESIDE) {
            record.latencies_us.push(latency);
        }
        record.last_ok = Some(arrived);
    }
    if path.starts_with("/slow") {
        tokio::time::sleep(SLOW).await;
    }
    Ok(status(StatusCode::OK))
}

/// An empty response with `code`.
pub(super) fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = code;
    response
}

/// The producer's send time, from `"sent_us":<digits>` in the body.
fn sent_us(body: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"sent_us\":";
    let at = body.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits = body[at..].iter().take_while(|b| b.is_ascii_digit());
    let mut value: u64 = 0;
    let mut any = false;
    for d in digits {
        value = value.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        any = true;
    }
    any.then_some(value)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_send_time() {
        assert_eq!(
            sent_us(br#"{"data":{"sent_us":1234,"pad":"x"}}"#),
            Some(1234)
        );
        assert_eq!(sent_us(br#"{"data":{}}"#), None);
    }
}
