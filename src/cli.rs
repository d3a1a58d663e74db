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
    /// Ingest GeoTIFF/COG files (directories recursively) into a server.
    Ingest(IngestArgs),
}

#[derive(Debug, clap::Args)]
pub struct IngestArgs {
    /// Files or directories (searched recursively for .tif/.tiff).
    #[arg(required = true)]
    pub paths: Vec<String>,
    /// Server to send to.
    #[arg(long, env = "PIXELQUERY_SERVER", default_value = "grpc://127.0.0.1:8815")]
    pub server: String,
    /// Collection to ingest into.
    #[arg(long, env = "PIXELQUERY_COLLECTION")]
    pub collection: String,
    /// Create the collection from this built-in profile if it does not exist.
    #[arg(long)]
    pub profile: Option<String>,
    /// Band mapping of multi-band files, e.g. `1:blue,2:green,3:red,4:nir`
    /// (default: band descriptions, else the collection's band order).
    #[arg(long)]
    pub bands: Option<String>,
    /// Acquisition time for every file (RFC 3339 or YYYY-MM-DD); default:
    /// from metadata, then from the file name.
    #[arg(long)]
    pub time: Option<String>,
    /// Resampling for every band (nearest or bilinear); default: the
    /// collection's per band.
    #[arg(long)]
    pub resampling: Option<String>,
    /// Scenes sent at once.
    #[arg(long, env = "PIXELQUERY_JOBS", default_value_t = 2)]
    pub jobs: usize,
    /// Print the report as JSON on stdout (the shape `ingest_path` returns).
    #[arg(long)]
    pub json: bool,
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
    /// Directories (or GDAL `/vsi...` prefixes) the `ingest_path` action may
    /// read from; repeat the flag or separate with `:` in the env var. None
    /// by default: no client can make the server read files.
    #[arg(long = "ingest-root", env = "PIXELQUERY_INGEST_ROOTS", value_delimiter = ':')]
    pub ingest_roots: Vec<String>,
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
            ingest_roots: self.ingest_roots,
        }
    }
}
