//! `relay ingest` and `relay dispatch`.
#![forbid(unsafe_code)]

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{Parser, Subcommand};
use prometheus::Registry;
use relay::{dispatch::DispatchSettings, ingest::IngestSettings};
use relay_shared::config::{ConfigError, Section, Settings};
use tokio::net::TcpListener;

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
    let file = cli.config.as_deref();
    let shutdown = relay_shared::shutdown::on_os_signal;
    let result = match cli.command {
        Command::Ingest => match prepare::<IngestSettings>(file, |s| s.listen).await {
            Ok((settings, listener)) => {
                relay::ingest::run(settings, listener, Registry::new(), shutdown()).await
            }
            Err(code) => return code,
        },
        Command::Dispatch => match prepare::<DispatchSettings>(file, |s| s.listen).await {
            Ok((settings, listener)) => {
                relay::dispatch::run(settings, listener, Registry::new(), shutdown()).await
            }
            Err(code) => return code,
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "relay stopped with an error");
            ExitCode::FAILURE
        }
    }
}

/// Loads and validates the process's settings, sets up logging and binds its listener; on
/// failure prints why and gives the exit code (2: configuration, 1: the address).
async fn prepare<S: Section>(
    file: Option<&Path>,
    listen: impl Fn(&S) -> SocketAddr,
) -> Result<(Settings<S>, TcpListener), ExitCode> {
    let settings = Settings::<S>::load(file).map_err(|e: ConfigError| {
        eprintln!("relay: {e}");
        ExitCode::from(2)
    })?;
    relay_shared::telemetry::init(&settings.log);
    let addr = listen(&settings.process);
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        eprintln!("relay: cannot listen on {addr}: {e}");
        ExitCode::from(1)
    })?;
    Ok((settings, listener))
}
