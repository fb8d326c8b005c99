//! `consumer-api [--config FILE]`: loads and validates the configuration, sets up logging,
//! binds the listener and hands over to [`consumer_api::run`] until SIGTERM or SIGINT.
#![forbid(unsafe_code)]

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use consumer_api::ApiSettings;
use relay_shared::config::Settings;

/// Relay's consumer API: subscriptions, their secrets and the dispatchers' directory.
#[derive(Debug, Parser)]
#[command(name = "consumer-api", version)]
struct Cli {
    /// TOML configuration file; `RELAY__SECTION__KEY` environment variables override it.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::<ApiSettings>::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("consumer-api: {e}");
            return ExitCode::from(2);
        }
    };
    relay_shared::telemetry::init(&settings.log);
    let addr = settings.process.listen;
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("consumer-api: cannot listen on {addr}: {e}");
            return ExitCode::from(1);
        }
    };
    let registry = prometheus::Registry::new();
    let shutdown = relay_shared::shutdown::on_os_signal();
    match consumer_api::run(settings, listener, registry, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "consumer-api stopped with an error");
            ExitCode::FAILURE
        }
    }
}
