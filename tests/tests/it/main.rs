//! End-to-end tests: real RabbitMQ, real HTTP on loopback, the real Relay components.
//! One binary, one module per area (svix/cargo style).
// Test helpers panic on purpose: a failed call is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod amqp_ingest;
mod api_surface;
mod backpressure;
mod broker_outage;
mod cluster;
mod consumer_api;
mod consumers;
mod contract;
mod delivery;
mod event_types;
mod first_attempt_lane;
mod ingest_errors;
mod lifecycle;
mod observability;
mod ordering;
mod portal;
mod portal_attempt;
mod postgres;
mod pull;
mod reliability;
mod replay;
mod shards;
mod signing;
mod subscriptions;
mod throttle;
mod topology;

use tests::{broker::shared_amqp_url, system::System};

/// A fresh system on the shared test broker.
async fn system() -> System {
    System::start(&shared_amqp_url()).await
}
