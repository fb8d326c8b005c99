//! `relay ingest` and `relay dispatch`.
#![forbid(unsafe_code)]

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use relay_shared::config::{Process, Settings};

/// A webhook relay on RabbitMQ.
#[derive(Debug, Parser)]
#[command(name = "relay", version)]
struct Cli {
    /// TOML configuration file; `RELAY__SECTION__KEY` environment variables override it.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Accept events over HTTP and publish them to RabbitMQ.
    Ingest,
    /// Consume events and deliver them to subscriber endpoints.
    Dispatch,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let process = match cli.command {
        Command::Ingest => Process::Ingest,
        Command::Dispatch => Process::Dispatch,
    };
    let settings =
        match Settings::load(cli.config.as_deref()).and_then(|s| s.validate(process).map(|()| s)) {
            Ok(settings) => settings,
            Err(e) => {
                eprintln!("relay: {e}");
                return ExitCode::from(2);
            }
        };
    relay_shared::telemetry::init(&settings.log);
    let addr = match process {
        Process::Dispatch => settings.dispatch.listen,
        _ => settings.ingest.listen,
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("relay: cannot listen on {addr}: {e}");
            return ExitCode::from(1);
        }
    };
    let registry = prometheus::Registry::new();
    let shutdown = relay_shared::shutdown::on_os_signal();
    let result = match cli.command {
        Command::Ingest => relay::ingest::run(settings, listener, registry, shutdown).await,
        Command::Dispatch => relay::dispatch::run(settings, listener, registry, shutdown).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "relay stopped with an error");
            ExitCode::FAILURE
        }
    }
}
