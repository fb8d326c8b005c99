//! `relay-bench`: Relay end to end against a bare RabbitMQ→HTTP baseline in one run.
//!
//! ```text
//! cargo build --release --bins
//! cargo run --release -p tests --bin relay-bench -- --quick
//! cargo run --release -p tests --bin relay-bench -- --scenario all
//! ```
//! See [`tests::bench`] for the scenarios and what is measured.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let options = tests::bench::Options::parse();
    let command_line = std::iter::once(String::from(
        "cargo run --release -p tests --bin relay-bench --",
    ))
    .chain(std::env::args().skip(1))
    .collect::<Vec<_>>()
    .join(" ");
    match tests::bench::run(options, command_line).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relay-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
