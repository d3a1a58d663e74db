//! The validated settings of a server.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::ingest::IngestOptions;

/// Everything `run` needs to know, already checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub warehouse: PathBuf,
    pub listen: SocketAddr,
    /// gRPC message limit, both directions. DoPut batches of a few MiB and
    /// DoGet messages of up to 4 MiB need more than tonic's 4 MiB default.
    pub max_message_bytes: usize,
    pub ingest: IngestOptions,
    /// Where `ingest_path` may read files (empty: nowhere).
    pub ingest_roots: Vec<String>,
}

impl Config {
    /// Settings for tests and embedding: a warehouse, loopback port 0.
    pub fn for_warehouse(warehouse: impl Into<PathBuf>) -> Self {
        Self {
            warehouse: warehouse.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            max_message_bytes: 64 << 20,
            ingest: IngestOptions { max_raster_bytes: 4 << 30, max_tiles: 250_000, warp_threads: default_threads() },
            ingest_roots: Vec::new(),
        }
    }
}

/// One warp thread per core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
}
