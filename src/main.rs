//! The `pixelquery` binary: parse the command line, set up logging, bind,
//! and hand over to `server::run`.

use anyhow::Context;
use clap::Parser;
use pixelquery::cli::{Cli, Command};
use pixelquery::server;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Serve(args) => {
            let config = args.into_config();
            let cfg = config.clone();
            let state = tokio::task::spawn_blocking(move || server::open_state(&cfg)).await?.context("opening the warehouse")?;
            let listener = tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
            let addr = listener.local_addr()?;
            // Tests and scripts read this line to find a port-0 server.
            println!("pixelquery listening on {addr}");
            tracing::info!(%addr, warehouse = %config.warehouse.display(), "serving");
            let shutdown = async {
                let _ = tokio::signal::ctrl_c().await;
                tracing::info!("shutting down");
            };
            server::run(listener, state, &config, shutdown).await.context("serving")?;
        }
    }
    Ok(())
}
