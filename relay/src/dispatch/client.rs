//! The webhook HTTP client: one signed POST per delivery attempt (with the subscription's
//! static headers and credentials), classified into success or a typed failure the worker
//! decides on (retry, dead-letter, disable).

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use relay_shared::{
    signing::KEY_ID_HEADER,
    ssrf::{NetworkPolicy, SsrfError},
    trace::{self, TraceParent},
};
use reqwest::{StatusCode, header};

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
    /// continuing the producer's trace `parent` (W3C `traceparent`). Returns the 2xx status.
    ///
    /// # Errors
    /// An [`AttemptError`] for anything but a 2xx answer.
    pub async fn deliver(
        &self,
        route: &Route,
        msg_id: &str,
        body: Bytes,
        parent: Option<&TraceParent>,
    ) -> Result<u16, AttemptError> {
        // Literal addresses never reach the resolver; hostnames are checked when resolved.
        self.policy
            .check_url(&route.url)
            .map_err(AttemptError::Refused)?;
        let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
        let signed = route.signer.sign(msg_id, timestamp, &body);
        let mut request = self.http.post(route.url.clone());
        // Checked at save: none of these names is one Relay sets below.
        for (name, value) in route.headers.iter() {
            request = request.header(name, value);
        }
        if let Some(authorization) = &route.authorization {
            request = request.header(header::AUTHORIZATION, authorization);
        }
        if let Some(key_ids) = signed.key_ids {
            request = request.header(KEY_ID_HEADER, key_ids);
        }
        let response = request
            .header(header::CONTENT_TYPE, "application/json")
            .header("webhook-id", msg_id)
            .header("webhook-timestamp", timestamp)
            .header("webhook-signature", signed.signature)
            // The producer's trace continues at the endpoint (a new one when it sent none).
            .header(
                trace::HEADER,
                parent
                    .map_or_else(TraceParent::new_root, TraceParent::child)
                    .to_string(),
            )
            .body(body)
            .send()
            .await
            .map_err(|e| self.classify(&e))?;
        let status = response.status();
        let retry_after = retry_after(&response);
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
