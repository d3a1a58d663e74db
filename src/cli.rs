//! Command line: every flag has a long name, an environment variable and a
//! documented default.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{default_threads, Config};
use crate::ingest::IngestOptions;

#[derive(Debug, Parser)]
#[command(name = "pixelquery", version, about = "Arrow Flight server for satellite raster time-series cubes")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve a warehouse directory over Arrow Flight.
    Serve(ServeArgs),
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Warehouse directory (created if missing).
    #[arg(long, env = "PIXELQUERY_WAREHOUSE", default_value = "./warehouse")]
    pub warehouse: PathBuf,
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, env = "PIXELQUERY_LISTEN", default_value = "127.0.0.1:8815")]
    pub listen: SocketAddr,
    /// gRPC message size limit in MiB, both directions.
    #[arg(long, env = "PIXELQUERY_MAX_MESSAGE_MB", default_value_t = 64, value_parser = clap::value_parser!(u32).range(4..=2047))]
    pub max_message_mb: u32,
    /// Largest raster one DoPut may carry, in MiB of pixel data (all bands).
    #[arg(long, env = "PIXELQUERY_MAX_RASTER_MB", default_value_t = 4096)]
    pub max_raster_mb: u64,
    /// Most tiles one raster may touch.
    #[arg(long, env = "PIXELQUERY_MAX_TILES", default_value_t = 250_000)]
    pub max_tiles: u64,
    /// Threads warping one scene's tiles (default: one per core).
    #[arg(long, env = "PIXELQUERY_WARP_THREADS")]
    pub warp_threads: Option<usize>,
    /// Seconds calls in flight may take to finish after SIGINT/SIGTERM.
    #[arg(long, env = "PIXELQUERY_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,
}

impl ServeArgs {
    pub fn into_config(self) -> Config {
        Config {
            warehouse: self.warehouse,
            listen: self.listen,
            max_message_bytes: (self.max_message_mb as usize) << 20,
            ingest: IngestOptions {
                max_raster_bytes: self.max_raster_mb.saturating_mul(1 << 20),
                max_tiles: self.max_tiles,
                warp_threads: self.warp_threads.unwrap_or_else(default_threads).max(1),
            },
        }
    }
}
