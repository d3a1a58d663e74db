//! The `pixelquery` binary: parse the command line, set up logging, bind,
//! and hand over to `server::run`.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use pixelquery::cli::{Cli, Command};
use pixelquery::server;

/// Errors go to stderr as one line of causes; the backtrace only when asked
/// for with `RUST_BACKTRACE=full` (a person reads the line, not the stack).
fn main() -> ExitCode {
    match start() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if std::env::var("RUST_BACKTRACE").is_ok_and(|v| v == "full") {
                eprintln!("{}", e.backtrace());
            }
            ExitCode::FAILURE
        }
    }
}

fn start() -> anyhow::Result<ExitCode> {
    // Before any thread exists: a thread takes its malloc arena at its
    // first allocation.
    pixelquery::pool::tune_malloc();
    raise_open_file_limit();
    // PROJ fetches transformation grids from the network when allowed; a
    // server connects nowhere unless its operator says so.
    if std::env::var_os("PROJ_NETWORK").is_none() {
        std::env::set_var("PROJ_NETWORK", "OFF");
    }
    let cli = Cli::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Command::Serve(args) = &cli.command {
        runtime.worker_threads(args.io_threads());
    }
    runtime.enable_all().build().context("starting the runtime")?.block_on(run(cli))
}

/// glibc gives each thread that meets a locked arena a new one, up to eight
/// per core, and keeps what is freed in them. The server runs tens of
/// blocking threads (one per call in flight); under the 32-client load test
/// heaptrack saw a 33 MB live heap at peak while resident anonymous memory
/// sat at 300-430 MiB in 16 arenas and rose whenever a late burst opened
/// another. One arena per core (the tcache still keeps small allocations
/// thread-local) held it at 200-220 MiB, flat. `MALLOC_ARENA_MAX` or a
/// `GLIBC_TUNABLES` arena setting in the environment wins.
/// Raises the soft limit of open files to the hard one: each connection,
/// and each chunk file a scene or a read holds, is a descriptor, and the
/// usual soft limit of 1024 is soon reached by a busy server.
fn raise_open_file_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid resource and a pointer to
    // an rlimit this function owns.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,buoyant_kernel=warn,deltalake_core=warn".into()))
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log file or pipe gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
            if config.shared.is_some() && config.warehouse == pixelquery::config::default_cache_dir() {
                // The default local copy is this process's alone (the next
                // start makes its own): it goes with the server.
                if let Err(e) = std::fs::remove_dir_all(&config.warehouse) {
                    tracing::warn!(dir = %config.warehouse.display(), error = %e, "removing the local copy of the shared warehouse failed");
                }
            }
        }
        Command::Collection(args) => {
            let answer = args.run().await?;
            println!("{}", serde_json::to_string_pretty(&answer).unwrap_or_default());
        }
        Command::Stac(args) => {
            let answer = args.run().await?;
            println!("{}", serde_json::to_string_pretty(&answer).unwrap_or_default());
        }
        Command::Ingest(args) => {
            let report = pixelquery::cog::send::ingest_files(args.send_options()).await?;
            args.print_report(&report);
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
