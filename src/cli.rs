//! Command line: every flag has a long name, an environment variable and a
//! documented default.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::auth::Auth;
use crate::config::{default_threads, Config, Limits, TlsPem};
use crate::error::{Error, Result};
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
    /// Create, list, describe or delete a server's collections.
    Collection(CollectionArgs),
    /// Export a collection as a STAC 1.0 Collection and one Item per scene.
    Stac(StacArgs),
}

#[derive(Debug, clap::Args)]
pub struct StacArgs {
    /// The collection to export.
    pub collection: String,
    /// Write `collection.json` and `items/<scene>.json` under this folder
    /// (a static STAC catalog); without it the JSON goes to stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub server: ServerArgs,
}

impl StacArgs {
    /// Runs the export; what was written, or the STAC JSON itself.
    pub async fn run(&self) -> Result<serde_json::Value> {
        let opts = self.server.options();
        let mut client = crate::cog::send::connect(&opts).await?;
        let stac = client
            .action("stac", &serde_json::json!({"collection": self.collection}))
            .await
            .map_err(|e| crate::cog::send::call_error(&opts, "collection", e))?;
        let Some(out) = &self.out else { return Ok(stac) };
        let items = out.join("items");
        std::fs::create_dir_all(&items).map_err(Error::io(&items))?;
        let write = |path: PathBuf, v: &serde_json::Value| std::fs::write(&path, serde_json::to_vec_pretty(v).unwrap_or_default()).map_err(Error::io(path));
        write(out.join("collection.json"), &stac["collection"])?;
        let list = stac["items"].as_array().cloned().unwrap_or_default();
        for item in &list {
            let id = item["id"].as_str().unwrap_or_default();
            // Scene ids may hold characters a file name cannot.
            let name: String = id.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
            write(items.join(format!("{name}.json")), item)?;
        }
        Ok(serde_json::json!({"collection": out.join("collection.json"), "items": list.len()}))
    }
}

/// Where a client command connects.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// Server to talk to.
    #[arg(long, global = true, env = "PIXELQUERY_SERVER", default_value = "grpc://127.0.0.1:8815")]
    pub server: String,
    /// Bearer token for a server with auth (a `write` token).
    #[arg(long, global = true, env = "PIXELQUERY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// User of the server's access file: traded with `--password` for a
    /// session token (Flight Handshake).
    #[arg(long, global = true, env = "PIXELQUERY_USER", conflicts_with = "token", requires = "password")]
    pub user: Option<String>,
    #[arg(long, global = true, env = "PIXELQUERY_PASSWORD", hide_env_values = true, requires = "user")]
    pub password: Option<String>,
    /// PEM file of the CA that signed the server's certificate (for
    /// `grpc+tls://` servers whose certificate is not publicly trusted).
    #[arg(long, global = true, env = "PIXELQUERY_TLS_ROOT_CERT")]
    pub tls_root_cert: Option<PathBuf>,
}

impl ServerArgs {
    pub fn options(&self) -> crate::cog::send::ServerOptions {
        crate::cog::send::ServerOptions {
            server: self.server.clone(),
            token: self.token.clone(),
            user: self.user.clone(),
            password: self.password.clone(),
            tls_root_cert: self.tls_root_cert.clone(),
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct CollectionArgs {
    #[command(subcommand)]
    pub command: CollectionCommand,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Subcommand)]
pub enum CollectionCommand {
    /// Create a collection: `NAME --bands red:uint16:0,nir:uint16:0
    /// --resolution 10`, or `NAME --profile sentinel2_l2a`.
    Create {
        name: String,
        /// Bands as `name:dtype[:nodata]`, comma-separated (nodata may be
        /// `nan` for float bands).
        #[arg(long)]
        bands: Option<String>,
        /// A built-in profile instead of --bands.
        #[arg(long)]
        profile: Option<String>,
        /// Pixel size in the grid CRS's units.
        #[arg(long)]
        resolution: Option<f64>,
        /// Grid CRS (EPSG code, WKT or PROJ string); default the sinusoidal grid.
        #[arg(long)]
        crs: Option<String>,
        /// Tile span in CRS units; default grows with the resolution from 2560 m.
        #[arg(long)]
        tile_span: Option<f64>,
        /// Default resampling of the bands.
        #[arg(long)]
        resampling: Option<String>,
    },
    /// Every collection with its bands and counts.
    List,
    /// A collection's bands, grid, time range, footprint and counts.
    Describe { name: String },
    /// Delete a collection with all its scenes.
    Delete { name: String },
}

impl CollectionArgs {
    /// Runs the command; its answer as JSON.
    pub async fn run(&self) -> Result<serde_json::Value> {
        use serde_json::json;
        let opts = self.server.options();
        let mut client = crate::cog::send::connect(&opts).await?;
        let call = |what: &'static str| move |e| crate::cog::send::call_error(&opts, what, e);
        match &self.command {
            CollectionCommand::Create { name, bands, profile, resolution, crs, tile_span, resampling } => {
                let mut body = json!({"name": name});
                if let Some(p) = profile {
                    body["profile"] = p.clone().into();
                }
                if let Some(b) = bands {
                    body["bands"] = parse_band_specs(b)?;
                }
                let mut grid = serde_json::Map::new();
                if let Some(r) = resolution {
                    grid.insert("resolution".into(), (*r).into());
                }
                if let Some(c) = crs {
                    grid.insert("crs".into(), c.clone().into());
                }
                if let Some(t) = tile_span {
                    grid.insert("tile_span".into(), (*t).into());
                }
                if !grid.is_empty() {
                    body["grid"] = grid.into();
                }
                if let Some(r) = resampling {
                    body["resampling"] = r.clone().into();
                }
                client.create_collection(&body).await.map_err(call("create"))
            }
            CollectionCommand::List => client.list_collections().await.map_err(call("list")),
            CollectionCommand::Describe { name } => client.describe(name).await.map_err(call("name")),
            CollectionCommand::Delete { name } => client.action("delete_collection", &json!({"name": name})).await.map_err(call("name")),
        }
    }
}

/// `red:uint16:0,nir:uint16` as `create_collection` bands.
fn parse_band_specs(s: &str) -> Result<serde_json::Value> {
    s.split(',')
        .map(|part| {
            let f: Vec<&str> = part.trim().split(':').collect();
            match f.as_slice() {
                [name, dtype] => Ok(serde_json::json!({"name": name, "dtype": dtype})),
                [name, dtype, nodata] => {
                    let nodata: serde_json::Value = match nodata.parse::<f64>() {
                        Ok(v) if v.is_finite() => v.into(),
                        _ if nodata.eq_ignore_ascii_case("nan") => "nan".into(),
                        _ => return Err(Error::invalid("--bands", part, "nodata must be a number or nan")),
                    };
                    Ok(serde_json::json!({"name": name, "dtype": dtype, "nodata": nodata}))
                }
                _ => Err(Error::invalid("--bands", part, "expected name:dtype or name:dtype:nodata, such as red:uint16:0")),
            }
        })
        .collect::<Result<Vec<_>>>()
        .map(Into::into)
}

#[derive(Debug, clap::Args)]
pub struct IngestArgs {
    /// Files or directories (searched recursively for .tif/.tiff), or STAC
    /// Items with local assets: an ItemCollection or Item `.json` file, or a
    /// folder of Item files.
    #[arg(required = true)]
    pub paths: Vec<String>,
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
    /// Create the collection if it does not exist, with the bands, types,
    /// nodata and pixel size of the first file (band names from --bands,
    /// else the band descriptions, else b1, b2, ...).
    #[arg(long, conflicts_with = "profile")]
    pub create: bool,
    /// Replace a scene stored under the same id with another acquisition
    /// time or content (the old rows leave in the same commit as the new
    /// arrive); without it such a scene is refused.
    #[arg(long)]
    pub replace: bool,
    /// The products' processing baseline (Sentinel-2: 04.00), for files
    /// whose metadata and name do not say it; `scale` applies Sentinel-2's
    /// -0.1 offset from baseline 04.00 on.
    #[arg(long)]
    pub baseline: Option<String>,
    /// Scenes sent at once.
    #[arg(long, env = "PIXELQUERY_JOBS", default_value_t = 2)]
    pub jobs: usize,
    /// Print the report as JSON on stdout (the shape `ingest_path` returns).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

impl IngestArgs {
    /// The library's settings for this command line.
    pub fn send_options(&self) -> crate::cog::send::SendOptions {
        crate::cog::send::SendOptions {
            paths: self.paths.clone(),
            server: self.server.options(),
            collection: self.collection.clone(),
            create: self.create,
            profile: self.profile.clone(),
            bands: self.bands.clone(),
            time: self.time.clone(),
            resampling: self.resampling.clone(),
            replace: self.replace,
            baseline: self.baseline.clone(),
            jobs: self.jobs,
        }
    }

    /// Prints an ingest's report: JSON on stdout with `--json`, else a
    /// summary line; the failures with their reasons on stderr.
    pub fn print_report(&self, report: &crate::cog::send::IngestReport) {
        if self.json {
            println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
        } else {
            let files_ok: usize = report.scenes.iter().map(|s| s.files.len()).sum();
            let skipped = report.scenes.iter().filter(|s| s.duplicate).count();
            let obs: u64 = report.scenes.iter().map(|s| s.observations).sum();
            let secs = report.elapsed_ms as f64 / 1e3;
            println!(
                "ingested {files_ok} of {} files as {} scenes: {} stored, {skipped} skipped (already stored): {obs} observations, {:.1} MB in {secs:.2} s ({:.1} MB/s)",
                report.files,
                report.scenes.len(),
                report.scenes.len() - skipped,
                report.megabytes,
                report.megabytes / secs.max(1e-3)
            );
        }
        if !report.failures.is_empty() {
            eprintln!("{} file(s) failed:", report.failures.len());
            for f in &report.failures {
                eprintln!("  {}: {}", f.path, f.reason);
            }
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Warehouse directory (created if missing), or a warehouse on object
    /// storage shared by any number of servers: `s3://bucket/prefix`
    /// (endpoint and credentials from the `AWS_*` variables), `gs://bucket/prefix`
    /// (`GOOGLE_*`), `az://container/prefix` (`AZURE_*`) or `file:///dir`.
    #[arg(long, env = "PIXELQUERY_WAREHOUSE", default_value = "./warehouse")]
    pub warehouse: PathBuf,
    /// With a warehouse on object storage: the directory of this server's
    /// local copy (default: a new one under the temporary directory).
    #[arg(long, env = "PIXELQUERY_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// This server's address as clients reach it (`grpc://host:port`),
    /// listed as a location of GetFlightInfo's endpoints.
    #[arg(long, env = "PIXELQUERY_ADVERTISE")]
    pub advertise: Option<String>,
    /// Every server of the warehouse (`grpc://host:port`, comma-separated):
    /// each endpoint lists them all as locations, a different one first.
    #[arg(long, env = "PIXELQUERY_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,
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
    /// New ingests are refused while the warehouse's file system has less
    /// than this many MiB free (reads, deletes and health keep working), so
    /// the disk does not fill up under a running ingest.
    #[arg(long, env = "PIXELQUERY_MIN_FREE_MB", default_value_t = 256)]
    pub min_free_mb: u64,
    /// Threads warping one scene's tiles (default: one per core).
    #[arg(long, env = "PIXELQUERY_WARP_THREADS")]
    pub warp_threads: Option<usize>,
    /// Threads serving the connections: gRPC framing and the sockets'
    /// reads and writes (warping, appends and chunk reads have threads of
    /// their own). Default: one per core. On 2 cores, one thread streams a
    /// single client's DoGet faster (a second is woken for each message and
    /// finds nothing to do), but serves many clients' reads more slowly.
    #[arg(long, env = "PIXELQUERY_IO_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    pub io_threads: Option<u16>,
    /// Directories (or GDAL `/vsi...` prefixes) the `ingest_path` action may
    /// read from; repeat the flag or separate with `:` in the env var. None
    /// by default: no client can make the server read files.
    #[arg(long = "ingest-root", env = "PIXELQUERY_INGEST_ROOTS", value_delimiter = ':')]
    pub ingest_roots: Vec<String>,
    /// Seconds calls in flight may take to finish after SIGINT/SIGTERM.
    #[arg(long, env = "PIXELQUERY_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,
    /// Access file: one `<role> <token>` or `<role> <user>:<password>` per
    /// line, roles read/write/admin. Turns auth on.
    #[arg(long, env = "PIXELQUERY_AUTH_FILE")]
    pub auth_file: Option<PathBuf>,
    /// Serve without auth on a non-loopback address (everyone can write).
    #[arg(long)]
    pub insecure_no_auth: bool,
    /// PEM certificate chain; with --tls-key, serve TLS (`grpc+tls://`).
    #[arg(long, env = "PIXELQUERY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "PIXELQUERY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// DoPut calls running at once; more get ResourceExhausted.
    #[arg(long, env = "PIXELQUERY_MAX_CONCURRENT_PUTS", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_puts: u32,
    /// Seconds a call (a whole DoGet stream included) may run.
    #[arg(long, env = "PIXELQUERY_REQUEST_TIMEOUT_SECS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_secs: u64,
    /// Most stored MiB one DoGet ticket may select.
    #[arg(long, env = "PIXELQUERY_MAX_QUERY_MB", default_value_t = 8192)]
    pub max_query_mb: u64,
    /// Connections served at once; more are closed at once. Default: half
    /// the open-file limit, between 64 and 8192.
    #[arg(long, env = "PIXELQUERY_MAX_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: Option<u32>,
    /// Most MiB one collection may hold; a scene past it is refused
    /// (ResourceExhausted) and nothing of it kept. Default: no quota.
    #[arg(long, env = "PIXELQUERY_QUOTA_MB_PER_COLLECTION", value_parser = clap::value_parser!(u64).range(1..))]
    pub quota_mb_per_collection: Option<u64>,
    /// Seconds a connection may stay open with no call in flight.
    #[arg(long, env = "PIXELQUERY_IDLE_TIMEOUT_SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_secs: u64,
    /// How a scene's chunk files are made durable: `fs`, one sync of the
    /// warehouse's whole file system for scenes of 8 files or more (each
    /// file's write-back starts as it is appended); `per-file`, an
    /// `fdatasync` per file (for a disk other programs keep busy, whose
    /// dirty pages a file-system sync would wait for too).
    #[arg(long, env = "PIXELQUERY_SYNC", value_enum, default_value_t = SyncArg::Fs)]
    pub sync: SyncArg,
    /// Keep the pages a commit (or a compaction or delete rewrite) wrote in
    /// the page cache. By default they are dropped once durable: new cached
    /// pages cost a sustained ingest more than reused ones, and ingested
    /// data is seldom read at once (reads of it then come from the disk).
    #[arg(long, env = "PIXELQUERY_KEEP_WRITTEN_PAGES")]
    pub keep_written_pages: bool,
}

/// `--sync` ([`crate::storage::SyncMode`]).
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum SyncArg {
    Fs,
    PerFile,
}

impl ServeArgs {
    /// `--io-threads`, or one per core. On 2 cores one thread streams a
    /// single client's DoGet faster (fewer context switches), but answers
    /// fewer reads under many clients; many clients are what a server is
    /// for, so the default is one per core (`docs/performance.md`).
    pub fn io_threads(&self) -> usize {
        self.io_threads.map_or_else(default_threads, usize::from)
    }

    /// Checks the flags together and reads the files they name.
    pub fn into_config(self) -> Result<Config> {
        let auth = match &self.auth_file {
            Some(path) => Some(std::sync::Arc::new(Auth::from_file(path)?)),
            None => None,
        };
        if auth.is_none() && !self.listen.ip().is_loopback() && !self.insecure_no_auth {
            return Err(Error::invalid(
                "--listen",
                self.listen,
                "serving beyond loopback without auth lets anyone write and delete: give --auth-file, or --insecure-no-auth if that is really wanted",
            ));
        }
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsPem { cert: std::fs::read(cert).map_err(Error::io(cert))?, key: std::fs::read(key).map_err(Error::io(key))? }),
            _ => None,
        };
        let text = self.warehouse.to_string_lossy().to_string();
        let shared = text.contains("://").then_some(text);
        let warehouse = match (&shared, self.cache_dir) {
            (None, _) => self.warehouse,
            (Some(_), Some(dir)) => dir,
            (Some(_), None) => crate::config::default_cache_dir(),
        };
        for (field, url) in self.advertise.iter().map(|a| ("--advertise", a)).chain(self.peers.iter().map(|p| ("--peers", p))) {
            if !(url.starts_with("grpc://") || url.starts_with("grpc+tls://") || url.starts_with("grpc+tcp://")) {
                return Err(Error::invalid(field, url, "must be a Flight URI: grpc://host:port or grpc+tls://host:port"));
            }
        }
        Ok(Config {
            warehouse,
            shared,
            advertise: self.advertise,
            peers: self.peers,
            listen: self.listen,
            max_message_bytes: (self.max_message_mb as usize) << 20,
            ingest: IngestOptions {
                max_raster_bytes: self.max_raster_mb.saturating_mul(1 << 20),
                max_tiles: self.max_tiles,
                min_free_bytes: self.min_free_mb.saturating_mul(1 << 20),
                warp_threads: self.warp_threads.unwrap_or_else(default_threads).max(1),
                dispatch: Default::default(),
            },
            ingest_roots: self.ingest_roots,
            auth,
            tls,
            limits: Limits {
                max_concurrent_puts: self.max_concurrent_puts as usize,
                request_timeout: std::time::Duration::from_secs(self.request_timeout_secs),
                max_query_bytes: self.max_query_mb.saturating_mul(1 << 20),
                max_connections: self.max_connections.map(|n| n as usize),
                idle_timeout: std::time::Duration::from_secs(self.idle_timeout_secs),
                ..Limits::default()
            },
            writes: crate::storage::WriteOptions {
                sync: match self.sync {
                    SyncArg::Fs => crate::storage::SyncMode::FileSystem,
                    SyncArg::PerFile => crate::storage::SyncMode::PerFile,
                },
                keep_written_pages: self.keep_written_pages,
                quota_bytes: self.quota_mb_per_collection.map(|m| m.saturating_mul(1 << 20)),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(args: &[&str]) -> std::result::Result<ServeArgs, clap::Error> {
        let cli = Cli::try_parse_from(["pixelquery", "serve"].iter().chain(args))?;
        match cli.command {
            Command::Serve(a) => Ok(a),
            _ => unreachable!("parsed serve"),
        }
    }

    /// `--advertise` and `--peers` take Flight URIs; a warehouse URL puts
    /// the local copy under the temporary directory unless `--cache-dir`.
    #[test]
    fn shared_warehouse_flags_are_checked() {
        let err = serve(&["--advertise", "http://127.0.0.1:8815"]).unwrap().into_config().unwrap_err().to_string();
        assert!(err.contains("--advertise") && err.contains("http://127.0.0.1:8815"), "{err}");
        let err = serve(&["--peers", "grpc://a:1,b:2"]).unwrap().into_config().unwrap_err().to_string();
        assert!(err.contains("--peers") && err.contains("b:2"), "{err}");
        let c = serve(&["--warehouse", "s3://bucket/w", "--peers", "grpc://a:1,grpc://b:2"]).unwrap().into_config().unwrap();
        assert_eq!((c.shared.as_deref(), c.warehouse), (Some("s3://bucket/w"), crate::config::default_cache_dir()));
        assert_eq!(c.peers, ["grpc://a:1", "grpc://b:2"]);
        let c = serve(&["--warehouse", "s3://bucket/w", "--cache-dir", "/srv/copy"]).unwrap().into_config().unwrap();
        assert_eq!(c.warehouse, PathBuf::from("/srv/copy"));
    }

    /// `--io-threads` sets the connection threads; without it, one per
    /// core; zero is refused.
    #[test]
    fn io_threads_default_to_one_per_core() {
        assert_eq!(serve(&["--io-threads", "3"]).unwrap().io_threads(), 3);
        assert_eq!(serve(&[]).unwrap().io_threads(), default_threads());
        assert!(serve(&["--io-threads", "0"]).is_err());
    }
}
