//! Test fixture: a real server on 127.0.0.1:0 over a temporary warehouse,
//! stopped through a channel; plus raster helpers shared by the tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, UInt16Array};
use pixelquery::config::Config;
use pixelquery::server;
use pixelquery_client::{proto, Client};

/// A running server. Call [`TestServer::shutdown`] at the end of a test.
pub struct TestServer {
    pub uri: String,
    pub dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_in(dir).await
    }

    /// Starts a server over an existing warehouse directory.
    pub async fn start_in(dir: tempfile::TempDir) -> Self {
        Self::start_with(dir, |_| {}).await
    }

    /// Starts a server after `adjust` changed its settings.
    pub async fn start_with(dir: tempfile::TempDir, adjust: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config::for_warehouse(dir.path().join("warehouse"));
        adjust(&mut config);
        let cfg = config.clone();
        let state = tokio::task::spawn_blocking(move || server::open_state(&cfg)).await.unwrap().expect("open warehouse");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().unwrap().port();
        // A TLS server's test certificate names `localhost`.
        let uri = if config.tls.is_some() { format!("grpc+tls://localhost:{port}") } else { format!("grpc://127.0.0.1:{port}") };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            server::run(listener, state, &config, async {
                let _ = rx.await;
            })
            .await
            .expect("server");
        });
        Self { uri, dir, stop: Some(tx), handle: Some(handle) }
    }

    pub fn warehouse(&self) -> PathBuf {
        self.dir.path().join("warehouse")
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.uri).await.expect("connect")
    }

    /// A client sending `token` on every call.
    pub async fn client_with_token(&self, token: &str) -> Client {
        let opts = pixelquery_client::ConnectOptions { token: Some(token.into()), tls_root_cert: None };
        Client::connect_with(&self.uri, &opts).await.expect("connect")
    }

    /// Stops the server and returns its (still existing) directory.
    pub async fn shutdown(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.expect("server task");
        }
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if self.stop.is_some() {
            eprintln!("warning: TestServer dropped without shutdown()");
            if let Some(tx) = self.stop.take() {
                let _ = tx.send(());
            }
        }
    }
}

/// Every file of a directory with its bytes (to prove nothing changed).
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.insert(p.clone(), Vec::new());
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// UTM zone 52N easting/northing of a lon/lat.
pub fn utm52(lon: f64, lat: f64) -> (f64, f64) {
    let from = pixelquery::crs::spatial_ref("t", "EPSG:4326").unwrap();
    let to = pixelquery::crs::spatial_ref("t", "EPSG:32652").unwrap();
    let t = pixelquery::crs::Transformer::new(&from, &to).unwrap();
    let (mut x, mut y) = ([lon], [lat]);
    t.transform(&mut x, &mut y);
    (x[0], y[0])
}

/// A 10 m UTM 52N geotransform whose raster of `size` px is centred near
/// lon 127.05, lat 37.55.
pub fn utm_geotransform(size: usize) -> [f64; 6] {
    let (e, n) = utm52(127.05, 37.55);
    let half = size as f64 * 5.0;
    [(e / 10.0).floor() * 10.0 - half, 10.0, 0.0, (n / 10.0).floor() * 10.0 + half, 0.0, -10.0]
}

/// The test pattern: distinct-ish values, never 0 (the nodata value).
pub fn pattern(row: usize, col: usize, offset: u16) -> u16 {
    (((row * 1031 + col * 7) % 60000) as u16).wrapping_add(1 + offset)
}

/// A `size x size` uint16 raster with the pattern and a nodata (0) hole at
/// rows 400..480, cols 300..420 (for sizes above 480).
pub fn raster(size: usize, offset: u16) -> Vec<u16> {
    let mut v = Vec::with_capacity(size * size);
    for r in 0..size {
        for c in 0..size {
            let hole = (400..480).contains(&r) && (300..420).contains(&c);
            v.push(if hole { 0 } else { pattern(r, c, offset) });
        }
    }
    v
}

pub fn ingest_request(collection: &str, scene: &str, time_ms: i64, gt: [f64; 6], size: usize, resampling: &str) -> proto::IngestRequest {
    proto::IngestRequest {
        collection: collection.into(),
        scene_id: scene.into(),
        acquired_at_ms: time_ms,
        crs: "EPSG:32652".into(),
        geotransform: gt.to_vec(),
        width: size as u32,
        height: size as u32,
        bands: vec![proto::BandSpec { name: "red".into(), dtype: "uint16".into(), nodata: Some(0.0), ..Default::default() }],
        resampling: resampling.into(),
        resampling_by_band: Default::default(),
        ..Default::default()
    }
}

pub fn red_batches(values: Vec<u16>, width: usize) -> Vec<RecordBatch> {
    let a: ArrayRef = Arc::new(UInt16Array::from(values));
    pixelquery_client::raster_batches(vec![("red".into(), a)], None, width).unwrap()
}

/// Creates the 10 m single-band test collection `name`.
pub async fn create_red_collection(client: &mut Client, name: &str) {
    client
        .create_collection(&serde_json::json!({
            "name": name,
            "bands": [{"name": "red", "dtype": "uint16", "nodata": 0}],
            "grid": {"resolution": 10}
        }))
        .await
        .expect("create collection");
}

/// Tokens of [`ACCESS_FILE`], one per role.
pub const READ_TOKEN: &str = "read-token-0123456789abcdef";
pub const WRITE_TOKEN: &str = "write-token-0123456789abcdef";
pub const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";

/// An access file with one token per role and the user `alice` (write).
pub const ACCESS_FILE: &str = "# test access file\nread read-token-0123456789abcdef\nwrite write-token-0123456789abcdef\nadmin admin-token-0123456789abcdef\nwrite alice:alice-password-0123\n";

/// Turns auth on with [`ACCESS_FILE`].
pub fn with_auth(config: &mut Config) {
    config.auth = Some(Arc::new(pixelquery::auth::Auth::parse(ACCESS_FILE).unwrap()));
}

/// `pixelquery serve` over `warehouse` on a free loopback port; add flags,
/// then start it with [`spawn_server`].
pub fn serve_command(warehouse: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pixelquery"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--warehouse"]).arg(warehouse);
    cmd
}

/// Starts a server command (the binary, or a shell that execs it) and reads
/// the address it prints first: the child and its `grpc://` URI.
pub fn spawn_server(cmd: &mut Command) -> (Child, String) {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("start the server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read the address line");
    let addr = line.trim().strip_prefix("pixelquery listening on ").unwrap_or_else(|| panic!("unexpected first line {line:?}")).to_string();
    (child, format!("grpc://{addr}"))
}

/// The status code and message of a call that must fail.
pub fn code_of<T: std::fmt::Debug>(r: Result<T, pixelquery_client::ClientError>) -> (tonic::Code, String) {
    let err = r.expect_err("the call should fail");
    let status = err.status().unwrap_or_else(|| panic!("not a status: {err}"));
    (status.code(), status.message().to_string())
}

/// A DoPut of `req` whose raster batches the caller sends (and holds back)
/// through the returned sender; the put ends when the sender is dropped.
pub fn held_ingest(
    client: &Client,
    req: proto::IngestRequest,
) -> (tokio::sync::mpsc::Sender<RecordBatch>, tokio::task::JoinHandle<pixelquery_client::Result<pixelquery_client::PutSummary>>) {
    use futures::StreamExt;
    let (tx, rx) = tokio::sync::mpsc::channel::<RecordBatch>(64);
    let mut c = client.try_clone();
    let handle = tokio::spawn(async move {
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, arrow_flight::error::FlightError>);
        c.ingest_stream(&req, stream).await
    });
    (tx, handle)
}
