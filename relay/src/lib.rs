//! Relay's two stateless processes: `ingest` takes events over HTTP and publishes them to
//! RabbitMQ with publisher confirms; `dispatch` consumes them and delivers each, signed, to
//! every matching subscription. Both are started through `run` functions that take their
//! configuration, a listener, a metrics registry and a shutdown signal, so tests run the very
//! same code on port 0.
#![forbid(unsafe_code)]

pub mod catalogue;
pub mod dispatch;
pub mod event_data;
pub mod ingest;
