//! `relay-bench-bare`: the bare baseline process that `relay-bench` starts next to Relay
//! (HTTP front → confirmed publish → quorum queue → consume → POST → ack, nothing else).
//! See [`tests::bench::bare`].
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let options = tests::bench::bare::BareOptions::parse();
    match tests::bench::bare::run(options).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relay-bench-bare: {e:#}");
            ExitCode::FAILURE
        }
    }
}
