//! `pixelquery ingest`: sends planned scenes to a server with DoPut, several
//! at once, reading each file in strips on a blocking thread while it is
//! sent, with a progress line (or log lines when stderr is not a terminal).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_flight::error::FlightError;
use futures::StreamExt;
use pixelquery_client::Client;
use serde::Serialize;

use super::{Failure, ScenePlan};

/// One scene's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct SceneResult {
    pub scene_id: String,
    pub files: Vec<String>,
    pub acquired_at: String,
    pub time_source: String,
    pub observations: u64,
    pub bytes: u64,
    pub duplicate: bool,
}

/// The result of ingesting files: the same shape from the CLI and from the
/// `ingest_path` action.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IngestReport {
    pub files: usize,
    pub scenes: Vec<SceneResult>,
    pub failures: Vec<FailureJson>,
    pub elapsed_ms: u64,
    pub megabytes: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailureJson {
    pub path: String,
    pub reason: String,
}

impl From<Failure> for FailureJson {
    fn from(f: Failure) -> Self {
        Self { path: f.path, reason: f.reason }
    }
}

impl SceneResult {
    pub fn new(plan: &ScenePlan, put: &pixelquery_proto::json::PutSummary) -> Self {
        Self {
            scene_id: put.scene_id.clone(),
            files: plan.files.clone(),
            acquired_at: crate::wire::format_time(plan.request.acquired_at_ms),
            time_source: plan.time_source.clone(),
            observations: put.observations,
            bytes: plan.bytes,
            duplicate: put.duplicate,
        }
    }
}

/// Progress shared by the senders and the reporter.
struct Progress {
    files_total: usize,
    bytes_total: u64,
    files_done: AtomicUsize,
    bytes_done: AtomicU64,
    started: Instant,
    tty: bool,
}

impl Progress {
    fn line(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let done = self.bytes_done.load(Ordering::Relaxed) as f64;
        let rate = done / secs;
        let eta = if rate > 0.0 { (self.bytes_total as f64 - done).max(0.0) / rate } else { f64::NAN };
        format!(
            "[{}/{} files] {:.1}/{:.1} MB  {:.1} MB/s  ETA {}",
            self.files_done.load(Ordering::Relaxed),
            self.files_total,
            done / 1e6,
            self.bytes_total as f64 / 1e6,
            rate / 1e6,
            if eta.is_finite() { format!("{eta:.0}s") } else { "-".into() }
        )
    }
}

/// Sends every scene, `jobs` at a time. Failures are collected, not fatal.
pub async fn send_all(client: &Client, scenes: Vec<ScenePlan>, mut failures: Vec<Failure>, files: usize, jobs: usize) -> IngestReport {
    let progress = Arc::new(Progress {
        files_total: scenes.iter().map(|s| s.files.len()).sum(),
        bytes_total: scenes.iter().map(|s| s.bytes).sum(),
        files_done: AtomicUsize::new(0),
        bytes_done: AtomicU64::new(0),
        started: Instant::now(),
        tty: std::io::stderr().is_terminal(),
    });
    let ticker = progress.tty.then(|| {
        let p = progress.clone();
        tokio::spawn(async move {
            loop {
                eprint!("\r{}\x1b[K", p.line());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    });
    let results: Vec<Result<SceneResult, (ScenePlan, String)>> = futures::stream::iter(scenes)
        .map(|plan| {
            let mut c = client.try_clone();
            let progress = progress.clone();
            async move {
                let outcome = send_one(&mut c, &plan, &progress).await;
                progress.files_done.fetch_add(plan.files.len(), Ordering::Relaxed);
                match outcome {
                    Ok(put) => {
                        let r = SceneResult::new(&plan, &put);
                        if !progress.tty {
                            eprintln!(
                                "{} {} ({} files, {} observations, {:.1} MB) {}",
                                if r.duplicate { "skipped, already stored:" } else { "ingested" },
                                r.scene_id,
                                r.files.len(),
                                r.observations,
                                r.bytes as f64 / 1e6,
                                progress.line()
                            );
                        }
                        Ok(r)
                    }
                    Err(reason) => Err((plan, reason)),
                }
            }
        })
        .buffer_unordered(jobs.max(1))
        .collect()
        .await;
    if let Some(t) = ticker {
        t.abort();
        eprintln!("\r{}\x1b[K", progress.line());
    }
    let mut report = IngestReport { files, ..Default::default() };
    for r in results {
        match r {
            Ok(s) => report.scenes.push(s),
            Err((plan, reason)) => failures.extend(plan.failures(&reason)),
        }
    }
    report.scenes.sort_by(|a, b| a.scene_id.cmp(&b.scene_id));
    report.failures = failures.into_iter().map(Into::into).collect();
    report.elapsed_ms = progress.started.elapsed().as_millis() as u64;
    report.megabytes = progress.bytes_done.load(Ordering::Relaxed) as f64 / 1e6;
    report
}

/// Sends one planned scene (no progress output).
pub async fn send_scene(client: &mut Client, plan: &ScenePlan) -> Result<pixelquery_proto::json::PutSummary, String> {
    let progress = Arc::new(Progress {
        files_total: plan.files.len(),
        bytes_total: plan.bytes,
        files_done: AtomicUsize::new(0),
        bytes_done: AtomicU64::new(0),
        started: Instant::now(),
        tty: false,
    });
    send_one(client, plan, &progress).await
}

/// Streams one scene through DoPut while it is read (see
/// [`super::stream_scene`]); a read error is reported before the server's.
async fn send_one(client: &mut Client, plan: &ScenePlan, progress: &Arc<Progress>) -> Result<pixelquery_proto::json::PutSummary, String> {
    let p = progress.clone();
    let bytes_per_value = plan.bytes / (plan.request.height as u64 * plan.request.width as u64).max(1);
    let strips = super::stream_scene(plan, move |batch| {
        p.bytes_done.fetch_add(bytes_per_value * batch.num_rows() as u64, Ordering::Relaxed);
    });
    let read_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let seen = read_error.clone();
    let strips = strips.map(move |r| {
        r.map_err(|e| {
            *seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
            FlightError::ExternalError(Box::new(e))
        })
    });
    let sent = client.ingest_stream(&plan.request, strips).await;
    if let Some(e) = read_error.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e);
    }
    sent.map_err(|e| match e.status() {
        Some(s) => format!("server: {}", s.message()),
        None => e.to_string(),
    })
}

/// The server URI's form, checked before connecting.
const SERVER_FORM: &str = "expected grpc://host:port (or grpc+tls://host:port for TLS), such as grpc://127.0.0.1:8815";

/// `--server` as a URI the client can connect to.
fn check_server(uri: &str) -> crate::error::Result<()> {
    let rest = ["grpc://", "grpc+tls://", "http://", "https://"].iter().find_map(|s| uri.strip_prefix(s));
    match rest {
        Some(hostport) if !hostport.is_empty() => Ok(()),
        _ => Err(crate::error::Error::invalid("--server", uri, SERVER_FORM)),
    }
}

/// A server that cannot be reached, named with the form it should have.
fn unreachable(uri: &str, e: impl std::fmt::Display) -> crate::error::Error {
    crate::error::Error::invalid("--server", uri, &format!("cannot connect ({e}): is `pixelquery serve` running there? {SERVER_FORM}"))
}

fn client_error(what: &str) -> impl FnOnce(pixelquery_client::ClientError) -> crate::error::Error + '_ {
    move |e| match e.status() {
        Some(s) if s.code() == tonic::Code::NotFound => crate::error::Error::not_found(s.message().to_string()),
        Some(s) if s.code() == tonic::Code::InvalidArgument => crate::error::Error::invalid(what, "", s.message()),
        _ => crate::error::Error::Internal(format!("{what}: {e}")),
    }
}

/// Which server to talk to and as whom.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// Server URI (`grpc://` or `grpc+tls://`).
    pub server: String,
    pub token: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    /// PEM file of the CA that signed the server's certificate.
    pub tls_root_cert: Option<std::path::PathBuf>,
}

/// A client of the server `opts` names, signed in if it gives a user.
pub async fn connect(opts: &ServerOptions) -> crate::error::Result<Client> {
    use crate::error::Error;
    check_server(&opts.server)?;
    let tls_root_cert = match &opts.tls_root_cert {
        Some(p) => Some(std::fs::read(p).map_err(Error::io(p))?),
        None => None,
    };
    let connect = pixelquery_client::ConnectOptions { token: opts.token.clone(), tls_root_cert };
    let mut client = Client::connect_with(&opts.server, &connect).await.map_err(|e| unreachable(&opts.server, e))?;
    if let (Some(user), Some(password)) = (&opts.user, &opts.password) {
        client.handshake(user, password).await.map_err(|e| call_error(opts, "--user/--password", e))?;
    }
    Ok(client)
}

/// An error of a call to the server: one it could not be reached for names
/// the server; the others keep their status.
pub fn call_error(opts: &ServerOptions, what: &str, e: pixelquery_client::ClientError) -> crate::error::Error {
    match e.status() {
        None => unreachable(&opts.server, e),
        Some(s) if s.code() == tonic::Code::Unavailable => unreachable(&opts.server, e),
        Some(_) => client_error(what)(e),
    }
}

/// What to ingest and where: the settings of `pixelquery ingest`, given by
/// the command line (or any other caller) without the library knowing it.
#[derive(Debug, Clone)]
pub struct SendOptions {
    /// Files or directories (searched recursively for .tif/.tiff).
    pub paths: Vec<String>,
    pub server: ServerOptions,
    pub collection: String,
    /// Create the collection from the first file if it does not exist.
    pub create: bool,
    /// Built-in profile to create the collection from if it does not exist.
    pub profile: Option<String>,
    /// Band mapping of multi-band files (`1:blue,2:green,...`).
    pub bands: Option<String>,
    /// Acquisition time for every file (RFC 3339 or YYYY-MM-DD).
    pub time: Option<String>,
    /// Resampling for every band.
    pub resampling: Option<String>,
    /// Replace scenes stored under the same id with another time or content.
    pub replace: bool,
    /// The processing baseline of every file (`--baseline`).
    pub baseline: Option<String>,
    /// Scenes sent at once.
    pub jobs: usize,
}

/// Plans the files and sends the scenes (what `pixelquery ingest` does);
/// the report holds the failures with their reasons.
pub async fn ingest_files(args: SendOptions) -> crate::error::Result<IngestReport> {
    use crate::error::Error;
    let client = connect(&args.server).await?;
    let server = &args.server.server;
    let band_map = args.bands.as_deref().map(super::parse_band_map).transpose()?.unwrap_or_default();
    let (stac_paths, paths): (Vec<String>, Vec<String>) = args.paths.iter().cloned().partition(|p| super::stac::is_stac(p));
    let ((files, mut discovered), (items, unread)) = tokio::task::spawn_blocking(move || (super::discover(&paths), super::stac::read_items(&stac_paths)))
        .await
        .map_err(|e| Error::Internal(e.to_string()))?;
    discovered.extend(unread);
    let mut c = client.try_clone();
    let desc = match c.describe(&args.collection).await {
        Ok(d) => d,
        Err(e) if e.status().is_some_and(|s| s.code() == tonic::Code::NotFound) => {
            let body = match (&args.profile, args.create) {
                (Some(p), _) => serde_json::json!({"name": args.collection, "profile": p}),
                (None, true) => {
                    let first = files
                        .first()
                        .cloned()
                        .or_else(|| super::stac::first_asset(&items))
                        .ok_or_else(|| Error::invalid("paths", &args.paths, "no .tif/.tiff file to create the collection from"))?;
                    let (name, band_map) = (args.collection.clone(), band_map.clone());
                    tokio::task::spawn_blocking(move || super::collection_for_file(&first, &name, &band_map))
                        .await
                        .map_err(|e| Error::Internal(e.to_string()))??
                }
                (None, false) => {
                    return Err(Error::not_found(format!(
                        "collection {:?} on {server} (give --profile to create it from a built-in profile, or --create to make it from the first file)",
                        args.collection
                    )))
                }
            };
            let what = if args.create { "--create" } else { "--profile" };
            c.create_collection(&body).await.map_err(|e| call_error(&args.server, what, e))?
        }
        Err(e) => return Err(call_error(&args.server, "--collection", e)),
    };
    let collection_bands: Vec<String> =
        desc["bands"].as_array().map(|a| a.iter().filter_map(|b| b["name"].as_str().map(String::from)).collect()).unwrap_or_default();
    let opts = super::CogOptions {
        collection: args.collection.clone(),
        collection_bands,
        band_map,
        time_ms: args.time.as_deref().map(|t| crate::wire::parse_time("--time", t)).transpose()?,
        resampling: args.resampling.clone().unwrap_or_default(),
        replace: args.replace,
        baseline: args.baseline.clone(),
        profile: desc["profile"].as_str().map(str::to_string),
    };
    let count = files.len() + items.len();
    let (scenes, failures) = tokio::task::spawn_blocking(move || {
        let (mut scenes, more) = super::plan(&files, &opts);
        let (from_items, item_failures) = super::stac::plan_items(&items, &opts);
        scenes.extend(from_items);
        (scenes, discovered.into_iter().chain(more).chain(item_failures).collect())
    })
    .await
    .map_err(|e| Error::Internal(e.to_string()))?;
    Ok(send_all(&client, scenes, failures, count, args.jobs).await)
}
