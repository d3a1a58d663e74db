//! The validated settings of a server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::Auth;
use crate::ingest::IngestOptions;

/// Everything `run` needs to know, already checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// The warehouse directory; on object storage, this server's local copy.
    pub warehouse: PathBuf,
    /// The warehouse on object storage (`s3://bucket/prefix`), if there.
    pub shared: Option<String>,
    /// This server's address as clients reach it, and every server of the
    /// warehouse (this one included): GetFlightInfo's endpoint locations.
    pub advertise: Option<String>,
    pub peers: Vec<String>,
    pub listen: SocketAddr,
    /// gRPC message limit, both directions. DoPut batches of a few MiB and
    /// DoGet messages of up to 4 MiB need more than tonic's 4 MiB default.
    pub max_message_bytes: usize,
    pub ingest: IngestOptions,
    /// Where `ingest_path` may read files (empty: nowhere).
    pub ingest_roots: Vec<String>,
    /// Credentials; `None` serves everyone (allowed on loopback only, unless
    /// the operator said `--insecure-no-auth`).
    pub auth: Option<Arc<Auth>>,
    /// PEM certificate chain and private key; `None` serves plain gRPC.
    pub tls: Option<TlsPem>,
    /// Limits on calls (concurrency, time, result size).
    pub limits: Limits,
    /// How commits are made durable and what they leave cached.
    pub writes: crate::storage::WriteOptions,
}

/// A server certificate chain and its key, PEM.
#[derive(Clone)]
pub struct TlsPem {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

impl std::fmt::Debug for TlsPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsPem { .. }")
    }
}

/// Per-call limits; past them a call fails fast instead of queueing.
#[derive(Debug, Clone)]
pub struct Limits {
    /// DoPut calls running at once; one more gets `ResourceExhausted`.
    pub max_concurrent_puts: usize,
    /// Longest a call may run (a DoGet stream included) before it fails
    /// with `DeadlineExceeded`. A client's shorter `grpc-timeout` wins.
    pub request_timeout: Duration,
    /// Most bytes one DoGet ticket may select (stored chunk bytes); larger
    /// queries get `ResourceExhausted` and should fetch GetFlightInfo's
    /// endpoints one by one.
    pub max_query_bytes: u64,
    /// Connections served at once; past it new ones are closed at once.
    /// `None`: half the process's open-file limit (at least 64, at most
    /// 8192), so connections cannot take the descriptors chunk files need.
    pub max_connections: Option<usize>,
    /// Longest a DoGet reader waits for its client to take more: past it
    /// the stream ends with `DeadlineExceeded` and its thread is free.
    pub write_stall: Duration,
    /// A connection with no call in flight for this long is closed
    /// (HTTP/2 GOAWAY; a client reconnects when it next calls).
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_concurrent_puts: 16,
            request_timeout: Duration::from_secs(600),
            max_query_bytes: 8 << 30,
            max_connections: None,
            write_stall: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

impl Limits {
    /// The connection cap: as given, or derived from `RLIMIT_NOFILE`.
    pub fn connection_cap(&self) -> usize {
        self.max_connections.unwrap_or_else(|| {
            let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            // SAFETY: getrlimit writes the struct it is given.
            let files = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 { lim.rlim_cur } else { 1024 };
            (files / 2).clamp(64, 8192) as usize
        })
    }
}

impl Config {
    /// Settings for tests and embedding: a warehouse, loopback port 0.
    pub fn for_warehouse(warehouse: impl Into<PathBuf>) -> Self {
        Self {
            warehouse: warehouse.into(),
            shared: None,
            advertise: None,
            peers: Vec::new(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            max_message_bytes: 64 << 20,
            ingest: IngestOptions {
                max_raster_bytes: 4 << 30,
                max_tiles: 250_000,
                // The command line's default is 256 MiB (`--min-free-mb`);
                // embedded servers and tests opt in.
                min_free_bytes: 0,
                warp_threads: default_threads(),
                dispatch: Default::default(),
            },
            ingest_roots: Vec::new(),
            auth: None,
            tls: None,
            limits: Limits::default(),
            writes: crate::storage::WriteOptions::default(),
        }
    }
}

/// The local copy of a warehouse on object storage when none is given:
/// one per process, under the temporary directory.
pub fn default_cache_dir() -> PathBuf {
    std::env::temp_dir().join(format!("pixelquery-cache-{}", std::process::id()))
}

/// One warp thread per core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
}
