//! The webhook HTTP client: one signed POST per delivery attempt (with the subscription's
//! static headers and credentials), classified into success or a typed failure the worker
//! decides on (retry, dead-letter, disable).

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use relay_shared::{
    attempt::{Headers, REDACTED},
    signing::KEY_ID_HEADER,
    ssrf::{NetworkPolicy, SsrfError},
    trace::{self, TraceParent},
};
use reqwest::{
    Method, StatusCode,
    header::{self, HeaderName, HeaderValue},
};

use super::{config::DispatchSettings, directory::Route, resolver::GuardedResolver};

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttemptError {
    /// The endpoint answered with a non-2xx status (redirects are not followed).
    #[error("endpoint answered HTTP {status}")]
    Status {
        /// The status code.
        status: u16,
        /// The start of the response body, for the delivery log.
        body_excerpt: String,
        /// `Retry-After` in seconds, when the endpoint sent one.
        retry_after: Option<u64>,
    },
    /// No complete answer within the request timeout.
    #[error("request timed out after {0:?}")]
    Timeout(Duration),
    /// The connection could not be made (refused, DNS, TLS…).
    #[error("connection failed: {0}")]
    Connect(String),
    /// Anything else that broke the exchange (reset mid-response…).
    #[error("request failed: {0}")]
    Request(String),
    /// The destination is not allowed (SSRF protection); no request was sent.
    #[error("destination refused: {0}")]
    Refused(SsrfError),
}

impl AttemptError {
    /// The HTTP status, when the endpoint answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// A 410 Gone: the endpoint asks never to be called again.
    pub fn is_gone(&self) -> bool {
        self.status() == Some(410)
    }

    /// `Retry-After` seconds sent with a 429/502/503/504.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The response body excerpt, when the endpoint answered.
    pub fn excerpt(&self) -> Option<&str> {
        match self {
            Self::Status { body_excerpt, .. } if !body_excerpt.is_empty() => Some(body_excerpt),
            _ => None,
        }
    }
}

const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");
const KEY_ID: HeaderName = HeaderName::from_static(KEY_ID_HEADER);
const TRACEPARENT: HeaderName = HeaderName::from_static(trace::HEADER);

/// What one attempt put on the wire and got back, for the delivery log.
#[derive(Debug, Clone, Default)]
pub struct Exchange {
    /// The request's headers as sent, credentials redacted; empty when no request was made.
    pub sent: Headers,
    /// The response's headers, bounded ([`Headers::bounded`]); empty without an answer.
    pub received: Headers,
    /// How many response headers the bounds left out.
    pub omitted: u32,
}

/// A header value Relay makes; one that cannot be (a control character in an event id) fails
/// the attempt as the HTTP stack would have.
fn value<V>(text: V) -> Result<HeaderValue, AttemptError>
where
    HeaderValue: TryFrom<V, Error = header::InvalidHeaderValue>,
{
    HeaderValue::try_from(text).map_err(|e| AttemptError::Request(format!("builder error: {e}")))
}

/// A pooled client shared by every delivery of a dispatcher.
#[derive(Debug, Clone)]
pub struct WebhookClient {
    http: reqwest::Client,
    policy: Arc<NetworkPolicy>,
    timeout: Duration,
    body_limit: usize,
}

impl WebhookClient {
    /// Builds the client: request timeout, no redirects, pooled keep-alive connections.
    ///
    /// # Errors
    /// The TLS backend could not be initialised.
    pub fn new(settings: &DispatchSettings, policy: NetworkPolicy) -> reqwest::Result<Self> {
        let policy = Arc::new(policy);
        let http = reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver::new(policy.clone())))
            .timeout(settings.request_timeout)
            .connect_timeout(settings.request_timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("Relay/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            policy,
            timeout: settings.request_timeout,
            body_limit: settings.response_body_limit,
        })
    }

    /// POSTs `body` to the route, signed for message `msg_id` with every key of its scheme
    /// (`webhook-key-id` names the `v1a` keys), with its static headers and credentials,
    /// continuing the producer's trace `parent` (W3C `traceparent`). Returns the 2xx status
    /// (an [`AttemptError`] for anything else) and the headers that went each way.
    pub async fn deliver(
        &self,
        route: &Route,
        msg_id: &str,
        body: Bytes,
        parent: Option<&TraceParent>,
    ) -> (Result<u16, AttemptError>, Exchange) {
        let mut exchange = Exchange::default();
        let result = self
            .exchange(route, msg_id, body, parent, &mut exchange)
            .await;
        (result, exchange)
    }

    async fn exchange(
        &self,
        route: &Route,
        msg_id: &str,
        body: Bytes,
        parent: Option<&TraceParent>,
        exchange: &mut Exchange,
    ) -> Result<u16, AttemptError> {
        // Literal addresses never reach the resolver; hostnames are checked when resolved.
        self.policy
            .check_url(&route.url)
            .map_err(AttemptError::Refused)?;
        let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
        let signed = route.signer.sign(msg_id, timestamp, &body);
        // The headers are made once: the request gets them and the delivery log keeps a
        // copy that shares their bytes, with the credentials redacted.
        let sent = &mut exchange.sent.0;
        sent.reserve(route.headers.iter().size_hint().0 + 8);
        // Checked at save: none of these names is one Relay sets below.
        for (name, value) in route.headers.iter() {
            sent.append(name.clone(), value.clone());
        }
        if route.authorization.is_some() {
            sent.insert(header::AUTHORIZATION, HeaderValue::from_static(REDACTED));
        }
        if let Some(key_ids) = signed.key_ids {
            sent.insert(KEY_ID, value(key_ids)?);
        }
        sent.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        sent.insert(WEBHOOK_ID, value(msg_id)?);
        sent.insert(WEBHOOK_TIMESTAMP, HeaderValue::from(timestamp));
        sent.insert(WEBHOOK_SIGNATURE, value(signed.signature)?);
        // The producer's trace continues at the endpoint (a new one when it sent none).
        let trace = parent.map_or_else(TraceParent::new_root, TraceParent::child);
        sent.insert(TRACEPARENT, value(trace.to_string())?);
        let mut request = reqwest::Request::new(Method::POST, route.url.clone());
        *request.headers_mut() = sent.clone();
        if let Some(authorization) = &route.authorization {
            request
                .headers_mut()
                .insert(header::AUTHORIZATION, authorization.clone());
        }
        *request.body_mut() = Some(body.into());
        let mut response = self
            .http
            .execute(request)
            .await
            .map_err(|e| self.classify(&e))?;
        let status = response.status();
        let retry_after = retry_after(&response);
        (exchange.received, exchange.omitted) =
            Headers::bounded(std::mem::take(response.headers_mut()));
        let excerpt = self.read_excerpt(response).await;
        if status.is_success() {
            Ok(status.as_u16())
        } else {
            Err(AttemptError::Status {
                status: status.as_u16(),
                body_excerpt: excerpt,
                retry_after,
            })
        }
    }

    fn classify(&self, e: &reqwest::Error) -> AttemptError {
        let mut source = std::error::Error::source(e);
        while let Some(cause) = source {
            if let Some(refused) = cause.downcast_ref::<SsrfError>() {
                return AttemptError::Refused(refused.clone());
            }
            source = cause.source();
        }
        if e.is_timeout() {
            AttemptError::Timeout(self.timeout)
        } else if e.is_connect() {
            AttemptError::Connect(error_chain(e))
        } else {
            AttemptError::Request(error_chain(e))
        }
    }

    /// Reads at most `body_limit` bytes of the body; reading it lets the connection be reused.
    async fn read_excerpt(&self, mut response: reqwest::Response) -> String {
        let mut kept = Vec::new();
        while kept.len() < self.body_limit {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = self.body_limit - kept.len();
                    kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                Ok(None) | Err(_) => break,
            }
        }
        String::from_utf8_lossy(&kept).into_owned()
    }
}

fn retry_after(response: &reqwest::Response) -> Option<u64> {
    let honoured = matches!(
        response.status(),
        StatusCode::TOO_MANY_REQUESTS
            | StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT
    );
    if !honoured {
        return None;
    }
    response
        .headers()
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The error and its causes on one line ("error sending request: connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
