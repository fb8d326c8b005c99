//! HTTP handlers of the ingest API. Every rejection is an `application/problem+json` body.
//!
//! An event whose type has a schema in the catalogue is checked against it: a violation is a
//! 422 naming the JSON pointer and the rule. In a batch each event is checked on its own; the
//! valid ones are still accepted (207 with a result per event), and when none is, the answer
//! is a 422 carrying the same results.

use std::sync::Arc;

use axum::{
    Json, Router,
    body::Body,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use futures_util::future::join_all;
use relay_shared::{
    envelope::{Envelope, EnvelopeError, IncomingEvent, parse_json},
    event_schema::SchemaCache,
    ids::new_id,
    operational,
    problem::{Problem, bearer_matches, is_json, read_body},
    trace::{TraceParent, child_traceparent},
};
use serde_json::{Value, json, value::RawValue};
use time::OffsetDateTime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument as _;

use super::{IngestMetrics, IngestSettings, PublishError, Publisher};
use crate::catalogue::{self, Checked};

#[derive(Debug)]
struct Ingest {
    keys: Vec<String>,
    max_event_bytes: usize,
    max_batch: usize,
    publisher: Publisher,
    metrics: IngestMetrics,
    /// Compiled schemas of the event-type catalogue.
    schemas: Arc<SchemaCache>,
    /// Requests being handled; bounds memory under overload (a full house answers 503).
    slots: Arc<Semaphore>,
}

type Shared = State<Arc<Ingest>>;

/// The ingest routes.
pub fn router(
    settings: &IngestSettings,
    publisher: Publisher,
    metrics: IngestMetrics,
    schemas: Arc<SchemaCache>,
) -> Router {
    let state = Arc::new(Ingest {
        keys: settings.publisher_keys.clone(),
        max_event_bytes: settings.max_event_bytes,
        max_batch: settings.max_batch,
        publisher,
        metrics,
        schemas,
        slots: Arc::new(Semaphore::new(settings.max_inflight)),
    });
    Router::new()
        .route("/v1/events", post(publish_one))
        .route("/v1/events/batch", post(publish_batch))
        .fallback(|| async { Problem::not_found("route") })
        .method_not_allowed_fallback(|| async {
            Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
                "this route accepts POST",
            )
        })
        .with_state(state)
}

impl Ingest {
    /// Auth, media type and size checks shared by both routes.
    async fn admit(
        &self,
        headers: &HeaderMap,
        body: Body,
        limit: usize,
    ) -> Result<(OwnedSemaphorePermit, bytes::Bytes), Problem> {
        if !bearer_matches(headers, self.keys.iter().map(String::as_str)) {
            self.metrics.reject("auth");
            return Err(Problem::unauthorized());
        }
        // Taken before the body is read, so overload cannot pile up request bodies in memory.
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            self.metrics.reject("overloaded");
            return Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "Too many requests in progress",
                "ingest is handling as many requests as it is configured for (ingest.max_inflight); retry shortly",
            )
            .with_retry_after(1));
        };
        if !is_json(headers) {
            self.metrics.reject("media_type");
            return Err(Problem::unsupported_media_type());
        }
        let bytes = read_body(body, limit).await.inspect_err(|p| {
            self.metrics.reject(if p.status == 413 {
                "too_large"
            } else {
                "invalid"
            });
        })?;
        Ok((slot, bytes))
    }

    fn invalid(&self, problem: Problem) -> Problem {
        self.metrics.reject("invalid");
        problem
    }

    /// The event's type schema, if any: `Ok(deprecated)` or the 422 (counted).
    fn check_schema(&self, envelope: &Envelope) -> Result<bool, Problem> {
        match catalogue::check(&self.schemas, envelope) {
            Checked::Valid { deprecated } => Ok(deprecated),
            Checked::Invalid(violation) => {
                self.metrics.reject("schema");
                Err(Problem::schema_violation(&envelope.event_type, &violation))
            }
        }
    }

    /// The 503 for events that were not accepted. `outcome` says whether they may exist all
    /// the same: `not_accepted` (the broker does not hold them) or `unknown` (the connection
    /// failed after they were sent, or part of a batch was confirmed). `ids` are the ids tried:
    /// a retry with those ids gives any copy that does exist the same `webhook-id`.
    fn unavailable(&self, err: &PublishError, unknown: bool, ids: &[&str]) -> Problem {
        self.metrics.reject("broker_unavailable");
        let outcome = if unknown { "unknown" } else { "not_accepted" };
        tracing::warn!(error = %err, outcome, "event not accepted: broker unavailable");
        let detail = if unknown {
            format!(
                "the event was not accepted ({err}), but the broker may hold it: retry with the same id"
            )
        } else {
            format!("the event was not accepted ({err}); retry later")
        };
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "broker-unavailable",
            "The broker is unavailable",
            detail,
        )
        .with_extension("outcome", outcome)
        .with_extension("ids", ids)
        .with_retry_after(1)
    }
}

/// The context the event carries on: a child of the producer's valid `traceparent`, else a
/// new trace (an invalid header is ignored, as W3C Trace Context asks).
fn incoming_trace(headers: &HeaderMap) -> TraceParent {
    child_traceparent(
        headers
            .get(relay_shared::trace::HEADER)
            .and_then(|v| v.to_str().ok()),
    )
}

/// Parses and normalises one event; the `relay.` types are Relay's own and refused.
fn normalise(raw: &[u8], now: OffsetDateTime) -> Result<Envelope, EnvelopeError> {
    let envelope = parse_json::<IncomingEvent>(raw)?.normalise(now, || new_id("evt"))?;
    operational::check_publishable(&envelope.event_type)?;
    Ok(envelope)
}

/// `{"id": …}`, with `"deprecated": true` when the event's type is deprecated.
fn accepted_body(id: &str, deprecated: bool) -> Value {
    let mut body = json!({ "id": id });
    if deprecated {
        body["deprecated"] = Value::Bool(true);
    }
    body
}

async fn publish_one(State(ingest): Shared, headers: HeaderMap, body: Body) -> Response {
    let (_slot, bytes) = match ingest.admit(&headers, body, ingest.max_event_bytes).await {
        Ok(admitted) => admitted,
        Err(problem) => return problem.into_response(),
    };
    let envelope = match normalise(&bytes, OffsetDateTime::now_utc()) {
        Ok(envelope) => envelope,
        Err(e) => return ingest.invalid(Problem::from_envelope(e)).into_response(),
    };
    let deprecated = match ingest.check_schema(&envelope) {
        Ok(deprecated) => deprecated,
        Err(problem) => return problem.into_response(),
    };
    let trace = incoming_trace(&headers);
    let span =
        tracing::info_span!("ingest", event_id = %envelope.id, trace_id = %trace.trace_id_hex());
    match ingest
        .publisher
        .publish(&envelope, &trace)
        .instrument(span)
        .await
    {
        Ok(()) => {
            ingest.metrics.ingested.with_label_values(&["http"]).inc();
            (
                StatusCode::ACCEPTED,
                Json(accepted_body(&envelope.id, deprecated)),
            )
                .into_response()
        }
        Err(e) => ingest
            .unavailable(&e, e.outcome_unknown(), &[envelope.id.as_str()])
            .into_response(),
    }
}

async fn publish_batch(State(ingest): Shared, headers: HeaderMap, body: Body) -> Response {
    let limit = ingest.max_event_bytes.saturating_mul(ingest.max_batch);
    let (_slot, bytes) = match ingest.admit(&headers, body, limit).await {
        Ok(admitted) => admitted,
        Err(problem) => return problem.into_response(),
    };
    let raw_events: Vec<&RawValue> = match parse_json(&bytes) {
        Ok(events) => events,
        Err(e) => return ingest.invalid(Problem::from_envelope(e)).into_response(),
    };
    if raw_events.is_empty() || raw_events.len() > ingest.max_batch {
        let problem = Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-batch-size",
            "Batch size out of range",
            format!(
                "a batch holds 1 to {} events; this one has {}",
                ingest.max_batch,
                raw_events.len()
            ),
        );
        return ingest.invalid(problem).into_response();
    }
    let now = OffsetDateTime::now_utc();
    let mut envelopes = Vec::with_capacity(raw_events.len());
    for (i, raw) in raw_events.iter().enumerate() {
        if raw.get().len() > ingest.max_event_bytes {
            ingest.metrics.reject("too_large");
            return Problem::too_large(ingest.max_event_bytes)
                .with_field(format!("[{i}]"))
                .into_response();
        }
        match normalise(raw.get().as_bytes(), now) {
            Ok(envelope) => envelopes.push(envelope),
            Err(e) => {
                return ingest
                    .invalid(Problem::from_envelope(e.within(&format!("[{i}]"))))
                    .into_response();
            }
        }
    }
    // Each event against its type's schema: the valid ones go on, the others get a result.
    let checked: Vec<Result<bool, Problem>> = envelopes
        .iter()
        .enumerate()
        .map(|(i, e)| {
            ingest.check_schema(e).map_err(|p| {
                let field = format!("[{i}].data");
                p.with_field(field)
            })
        })
        .collect();
    // Publish concurrently on the confirm channel; the valid events are accepted only if every
    // one was confirmed. On a partial failure the producer retries the batch, and the events
    // already accepted are delivered twice with the same id (supply ids to dedupe).
    let parent = incoming_trace(&headers);
    let publisher = &ingest.publisher;
    let to_publish = envelopes
        .iter()
        .zip(&checked)
        .filter(|(_, c)| c.is_ok())
        .map(|(e, _)| e);
    let published = join_all(to_publish.map(|e| {
        let trace = parent.child();
        let span =
            tracing::info_span!("ingest", event_id = %e.id, trace_id = %trace.trace_id_hex());
        async move { publisher.publish(e, &trace).await }.instrument(span)
    }))
    .await;
    if let Some(Err(e)) = published.iter().find(|r| r.is_err()) {
        // Events confirmed before another failed are stored: the batch as a whole is unknown.
        let unknown = published.iter().any(|r| {
            r.as_ref()
                .map_or_else(PublishError::outcome_unknown, |()| true)
        });
        let ids: Vec<&str> = envelopes
            .iter()
            .zip(&checked)
            .filter(|(_, c)| c.is_ok())
            .map(|(e, _)| e.id.as_str())
            .collect();
        return ingest.unavailable(e, unknown, &ids).into_response();
    }
    ingest
        .metrics
        .ingested
        .with_label_values(&["http"])
        .inc_by(published.len() as u64);
    batch_answer(&envelopes, checked)
}

/// 202 when every event was accepted, 207 when some were, 422 when none was; each with
/// `ids` (`null` for a refused event) and one result per event.
fn batch_answer(envelopes: &[Envelope], checked: Vec<Result<bool, Problem>>) -> Response {
    let mut ids = Vec::with_capacity(envelopes.len());
    let mut results = Vec::with_capacity(envelopes.len());
    let mut refused = 0;
    for (envelope, check) in envelopes.iter().zip(checked) {
        match check {
            Ok(deprecated) => {
                ids.push(Value::from(envelope.id.as_str()));
                let mut result = accepted_body(&envelope.id, deprecated);
                result["status"] = Value::from(202);
                results.push(result);
            }
            Err(problem) => {
                refused += 1;
                ids.push(Value::Null);
                results.push(json!({
                    "id": envelope.id,
                    "status": problem.status,
                    "problem": problem,
                }));
            }
        }
    }
    if refused == envelopes.len() {
        return Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "schema-violation",
            "The event does not match its type's schema",
            "no event of the batch matches its type's schema; see results",
        )
        .with_extension("results", results)
        .into_response();
    }
    let status = if refused == 0 {
        StatusCode::ACCEPTED
    } else {
        StatusCode::MULTI_STATUS
    };
    let body = json!({
        "ids": ids,
        "results": results,
        "accepted": envelopes.len() - refused,
        "refused": refused,
    });
    (status, Json(body)).into_response()
}
