//! The `pixelquery` binary: parse the command line, set up logging, bind,
//! and hand over to `server::run`.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use pixelquery::cli::{Cli, Command};
use pixelquery::server;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Serve(args) => {
            let grace = std::time::Duration::from_secs(args.shutdown_grace_secs);
            let config = args.into_config().context("checking the settings")?;
            let cfg = config.clone();
            let state = tokio::task::spawn_blocking(move || server::open_state(&cfg)).await?.context("opening the warehouse")?;
            let listener = tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
            let addr = listener.local_addr()?;
            // Tests and scripts read this line to find a port-0 server.
            println!("pixelquery listening on {addr}");
            tracing::info!(%addr, warehouse = %config.warehouse.display(), auth = config.auth.is_some(), tls = config.tls.is_some(), "serving");
            // On SIGINT/SIGTERM stop accepting and let calls in flight finish,
            // for at most the grace period.
            let stopping = std::sync::Arc::new(tokio::sync::Notify::new());
            let signalled = stopping.clone();
            let shutdown = async move {
                wait_for_signal().await;
                tracing::info!(grace_secs = grace.as_secs(), "shutting down");
                signalled.notify_one();
            };
            tokio::select! {
                r = server::run(listener, state, &config, shutdown) => r.context("serving")?,
                _ = async { stopping.notified().await; tokio::time::sleep(grace).await } => {
                    tracing::warn!("grace period over; exiting with calls still in flight");
                }
            }
        }
        Command::Ingest(args) => {
            let report = pixelquery::cog::send::run_cli(args).await?;
            return Ok(if report.failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE });
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
