//! The warehouse on object storage (`docs/storage.md`, "Object storage").
//!
//! Layout under the warehouse URL (`s3://bucket/prefix`):
//! - `<collection>/collection.json`: the collection, created put-if-absent;
//! - `<collection>/tiles/<tile>/<YYYY-MM>/<band>/<uuid>.arrows`: one
//!   observation each, an Arrow IPC stream (schema message and one batch),
//!   written once under a fresh name and never changed;
//! - `<collection>/_catalog/`: a Delta Lake table, one row per observation
//!   naming its object. A scene is one Delta commit (one Parquet file of
//!   rows and an application transaction whose id is the scene id), made
//!   with `deltalake`'s put-if-absent of the next log entry: the commit
//!   point, and what makes a scene id committed twice stored once.
//!
//! Every server keeps a local copy of what it serves (a warehouse directory
//! of its own, see `CollectionStore::catch_up`), applying the Delta log's
//! commits in version order, so chunk bytes are the same on every server.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use bytes::Bytes;
use deltalake_core::kernel::transaction::{CommitBuilder, CommitProperties, TransactionError};
use deltalake_core::kernel::{Action, Add, Transaction};
use deltalake_core::logstore::{default_logstore, LogStoreRef, StorageConfig};
use deltalake_core::protocol::{DeltaOperation, SaveMode};
use deltalake_core::{DeltaTable, DeltaTableError};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::collection::Collection;
use crate::error::{Error, Result};
use crate::storage::log::PixelStats;
use crate::storage::{ChunkEntry, ChunkKey};

/// Objects fetched at once when applying a commit.
const FETCHES_AT_ONCE: usize = 16;

/// The object store behind a warehouse URL, and the URL as errors show it.
pub struct Remote {
    url: url::Url,
    root: Arc<dyn ObjectStore>,
    prefix: ObjPath,
    runtime: tokio::runtime::Handle,
}

/// What committing a scene came to.
pub enum Commit {
    /// Committed at this version.
    At(i64),
    /// The scene id was committed already; nothing names this attempt's
    /// objects.
    Duplicate,
    /// Not committed; nothing names this attempt's objects.
    Failed(Error),
    /// Whether it was committed could not be learnt: its objects stay (the
    /// next refresh applies it, or gc removes them).
    Unknown(Error),
}

/// One commit of the catalog table as a server applies it.
pub struct LogEntry {
    pub version: i64,
    /// Table files added, each with its rows.
    pub added: Vec<(String, Vec<CatalogRow>)>,
    /// Table files removed, each with the rows it held: rows not added
    /// again leave (a delete).
    pub removed: Vec<(String, Vec<CatalogRow>)>,
    /// A compaction: the tiles whose chunks every server compacts when it
    /// applies this commit (empty: all).
    pub compacted: Option<Vec<String>>,
}

/// What a rewrite of the catalog table is for.
pub enum RewriteKind {
    /// Rows leave; scenes left without rows are deleted (they can be
    /// ingested again). `predicate` describes the rows, for the log.
    Delete { predicate: String },
    /// Rows stay; their table files become one, and every server compacts
    /// the chunks of `tiles` (empty: all) when it applies the commit.
    Compact { tiles: Vec<String> },
}

/// The commit field naming a compaction's tiles.
const COMPACT_TILES: &str = "pixelqueryCompactTiles";

/// One observation as the catalog table holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogRow {
    pub scene_id: String,
    pub time_ms: i64,
    pub tile: String,
    pub month: String,
    pub band: String,
    /// Object key below the collection.
    pub object: String,
    pub bytes: u64,
    pub schema_len: u64,
    pub crc: u32,
    pub stats: PixelStats,
    pub fingerprint: Option<String>,
    pub baseline: Option<String>,
}

impl CatalogRow {
    /// The chunk the row belongs to; `None` if it names a bad tile or month.
    pub fn key(&self) -> Option<ChunkKey> {
        Some(ChunkKey { tile: self.tile.parse().ok()?, month: crate::storage::Month::parse(&self.month)?, band: self.band.clone() })
    }
}

/// The catalog table's columns (Delta types: string, timestamp, long, double).
fn catalog_schema() -> SchemaRef {
    let s = |n: &str, null: bool| Field::new(n, DataType::Utf8, null);
    let l = |n: &str| Field::new(n, DataType::Int64, false);
    let d = |n: &str| Field::new(n, DataType::Float64, false);
    Arc::new(Schema::new(vec![
        s("scene_id", false),
        Field::new("acquired_at", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
        s("tile_id", false),
        s("month", false),
        s("band", false),
        s("object", false),
        l("bytes"),
        l("schema_bytes"),
        l("crc32"),
        l("valid_pixels"),
        d("min"),
        d("max"),
        d("sum"),
        l("bbox_col0"),
        l("bbox_row0"),
        l("bbox_col1"),
        l("bbox_row1"),
        s("fingerprint", true),
        s("baseline", true),
    ]))
}

fn rows_to_batch(rows: &[CatalogRow]) -> Result<RecordBatch> {
    let text = |f: fn(&CatalogRow) -> &str| Arc::new(StringArray::from_iter_values(rows.iter().map(f))) as ArrayRef;
    let long = |f: fn(&CatalogRow) -> i64| Arc::new(Int64Array::from_iter_values(rows.iter().map(f))) as ArrayRef;
    let double = |f: fn(&CatalogRow) -> f64| Arc::new(Float64Array::from_iter_values(rows.iter().map(f))) as ArrayRef;
    let opt = |f: fn(&CatalogRow) -> Option<&str>| Arc::new(StringArray::from_iter(rows.iter().map(f))) as ArrayRef;
    let time = TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.time_ms * 1000)).with_timezone("UTC");
    let columns = vec![
        text(|r| &r.scene_id),
        Arc::new(time) as ArrayRef,
        text(|r| &r.tile),
        text(|r| &r.month),
        text(|r| &r.band),
        text(|r| &r.object),
        long(|r| r.bytes as i64),
        long(|r| r.schema_len as i64),
        long(|r| r.crc as i64),
        long(|r| r.stats.valid as i64),
        double(|r| r.stats.min),
        double(|r| r.stats.max),
        double(|r| r.stats.sum),
        long(|r| r.stats.bbox[0] as i64),
        long(|r| r.stats.bbox[1] as i64),
        long(|r| r.stats.bbox[2] as i64),
        long(|r| r.stats.bbox[3] as i64),
        opt(|r| r.fingerprint.as_deref()),
        opt(|r| r.baseline.as_deref()),
    ];
    RecordBatch::try_new(catalog_schema(), columns).map_err(Error::arrow("building catalog rows"))
}

fn batch_to_rows(b: &RecordBatch, out: &mut Vec<CatalogRow>) -> Result<()> {
    let bad = |name: &str| Error::Internal(format!("catalog table file lacks column {name} of the expected type"));
    let text = |name: &str| b.column_by_name(name).and_then(|c| c.as_string_opt::<i32>()).ok_or_else(|| bad(name));
    let long = |name: &str| b.column_by_name(name).and_then(|c| c.as_primitive_opt::<Int64Type>()).ok_or_else(|| bad(name));
    let double = |name: &str| b.column_by_name(name).and_then(|c| c.as_primitive_opt::<Float64Type>()).ok_or_else(|| bad(name));
    let time = b.column_by_name("acquired_at").and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>()).ok_or_else(|| bad("acquired_at"))?;
    let (scene, tile, month, band, object) = (text("scene_id")?, text("tile_id")?, text("month")?, text("band")?, text("object")?);
    let (bytes, schema_len, crc, valid) = (long("bytes")?, long("schema_bytes")?, long("crc32")?, long("valid_pixels")?);
    let (min, max, sum) = (double("min")?, double("max")?, double("sum")?);
    let bbox = [long("bbox_col0")?, long("bbox_row0")?, long("bbox_col1")?, long("bbox_row1")?];
    let (fingerprint, baseline) = (text("fingerprint")?, text("baseline")?);
    let opt = |a: &arrow_array::StringArray, i: usize| arrow_array::Array::is_valid(a, i).then(|| a.value(i).to_string());
    for i in 0..b.num_rows() {
        out.push(CatalogRow {
            scene_id: scene.value(i).to_string(),
            time_ms: time.value(i).div_euclid(1000),
            tile: tile.value(i).to_string(),
            month: month.value(i).to_string(),
            band: band.value(i).to_string(),
            object: object.value(i).to_string(),
            bytes: bytes.value(i) as u64,
            schema_len: schema_len.value(i) as u64,
            crc: crc.value(i) as u32,
            stats: PixelStats { valid: valid.value(i) as u64, min: min.value(i), max: max.value(i), sum: sum.value(i), bbox: bbox.map(|c| c.value(i) as u32) },
            fingerprint: opt(fingerprint, i),
            baseline: opt(baseline, i),
        });
    }
    Ok(())
}

/// An object store error as the client sees it: what failed and why,
/// never a credential (object_store's messages carry neither keys nor
/// signed URLs, only the object path).
fn unavailable(what: &str) -> impl FnOnce(object_store::Error) -> Error + '_ {
    move |e| Error::Unavailable(format!("object store: {what}: {e}"))
}

fn delta_error(what: &str) -> impl FnOnce(DeltaTableError) -> Error + '_ {
    move |e| Error::Unavailable(format!("catalog table: {what}: {e}"))
}

/// A URL as logs and errors show it: without user or password.
fn without_secrets(url: &url::Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

/// A unique object name: time and randomness, so that retries and losing
/// writers never reuse one.
fn unique_name() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

impl Remote {
    /// Connects to the warehouse at `url` (`s3://bucket/prefix`,
    /// `file:///dir`): S3 settings (endpoint, credentials, region) come from
    /// the usual `AWS_*` environment variables. Fails with the URL and the
    /// reason when the store cannot be listed.
    pub fn connect(url: &str, runtime: tokio::runtime::Handle) -> Result<Self> {
        let parsed = url::Url::parse(url).map_err(|e| Error::invalid("--warehouse", "(not a URL)", &e.to_string()))?;
        let shown = without_secrets(&parsed);
        let bad = |reason: &str| Error::invalid("--warehouse", &shown, reason);
        let prefix_text = parsed.path().trim_matches('/').to_string();
        let retry = object_store::RetryConfig { max_retries: 3, retry_timeout: std::time::Duration::from_secs(15), ..Default::default() };
        let built = |r: object_store::Result<Arc<dyn ObjectStore>>| r.map_err(|e| bad(&format!("cannot configure the store client: {e}")));
        let root: Arc<dyn ObjectStore> = match parsed.scheme() {
            "s3" | "s3a" => {
                let bucket = parsed.host_str().filter(|b| b.len() >= 3).ok_or_else(|| bad("names no bucket (s3://bucket/prefix)"))?;
                let mut builder = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket).with_retry(retry);
                let endpoint = std::env::var("AWS_ENDPOINT_URL").or_else(|_| std::env::var("AWS_ENDPOINT")).unwrap_or_default();
                if endpoint.starts_with("http://") && std::env::var_os("AWS_ALLOW_HTTP").is_none() {
                    // A local S3-compatible server (SeaweedFS, MinIO) said so.
                    builder = builder.with_allow_http(true);
                }
                built(builder.build().map(|s| Arc::new(s) as _))?
            }
            "gs" => {
                let bucket = parsed.host_str().filter(|b| b.len() >= 3).ok_or_else(|| bad("names no bucket (gs://bucket/prefix)"))?;
                built(object_store::gcp::GoogleCloudStorageBuilder::from_env().with_bucket_name(bucket).with_retry(retry).build().map(|s| Arc::new(s) as _))?
            }
            "az" | "azure" | "abfs" | "abfss" => {
                // The container (and account, in the abfss form) from the URL;
                // the account, key or token from the AZURE_* variables.
                let mut base = parsed.clone();
                base.set_path("");
                let builder = object_store::azure::MicrosoftAzureBuilder::from_env().with_url(base.as_str()).with_retry(retry);
                built(builder.build().map(|s| Arc::new(s) as _))?
            }
            "file" => Arc::new(object_store::local::LocalFileSystem::new()),
            other => return Err(bad(&format!("scheme {other}:// is not built in; use s3:// (any S3-compatible store), gs://, az:// or file://"))),
        };
        let prefix = ObjPath::from(prefix_text.as_str());
        let remote = Self { url: parsed, root, prefix, runtime };
        // Fail at start, not at the first ingest.
        remote
            .block_on(remote.root.list_with_delimiter(Some(&remote.prefix)))
            .map_err(|e| Error::Unavailable(format!("warehouse {} cannot be listed: {e}", remote.shown_url())))?;
        Ok(remote)
    }

    /// The URL without user or password.
    pub fn shown_url(&self) -> String {
        without_secrets(&self.url)
    }

    /// Runs `f` on the server's runtime from a blocking thread.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    fn path(&self, parts: &[&str]) -> ObjPath {
        let mut p = self.prefix.clone();
        for part in parts {
            for piece in part.split('/') {
                p = p.clone().join(piece);
            }
        }
        p
    }

    /// Names of the collections stored (each with a `collection.json`).
    pub fn collection_names(&self) -> Result<Vec<String>> {
        let listed = self.block_on(self.root.list_with_delimiter(Some(&self.prefix))).map_err(unavailable("listing collections"))?;
        Ok(listed.common_prefixes.iter().filter_map(|p| p.filename().map(str::to_string)).collect())
    }

    /// The collection stored under `name`, if its `collection.json` is there.
    pub fn read_collection(&self, name: &str) -> Result<Option<Collection>> {
        let path = self.path(&[name, "collection.json"]);
        match self.block_on(async { self.root.get(&path).await?.bytes().await }) {
            Ok(bytes) => {
                let meta =
                    serde_json::from_slice(&bytes).map_err(|e| Error::Unavailable(format!("collection {name:?}: collection.json does not parse: {e}")))?;
                Ok(Some(meta))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(unavailable("reading a collection")(e)),
        }
    }

    /// Stores `meta` put-if-absent: `false` if another server created the
    /// collection first.
    pub fn create_collection(&self, meta: &Collection) -> Result<bool> {
        let json = serde_json::to_vec_pretty(meta).map_err(|e| Error::Internal(e.to_string()))?;
        let path = self.path(&[&meta.name, "collection.json"]);
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.block_on(self.root.put_opts(&path, PutPayload::from(json), opts)) {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(unavailable("creating a collection")(e)),
        }
    }

    /// Opens (creating if needed) the catalog table of collection `name`.
    pub fn open_catalog(self: &Arc<Self>, name: &str) -> Result<RemoteCatalog> {
        let mut url = self.url.clone();
        url.set_path(&format!("/{}", self.path(&[name, "_catalog"])));
        let config = StorageConfig::default();
        let prefixed = config.decorate_store(self.root.clone(), &url).map_err(delta_error("opening"))?;
        let log_store: LogStoreRef = default_logstore(Arc::from(prefixed), self.root.clone(), &url, &config);
        let table = self.block_on(open_or_create(log_store)).map_err(delta_error("opening"))?;
        Ok(RemoteCatalog {
            remote: self.clone(),
            name: name.to_string(),
            table: tokio::sync::Mutex::new(table),
            applied: Mutex::new(-1),
            seen: Mutex::default(),
            current: std::sync::atomic::AtomicI64::new(-1),
        })
    }
}

async fn open_or_create(log_store: LogStoreRef) -> std::result::Result<DeltaTable, DeltaTableError> {
    let mut table = DeltaTable::new(log_store);
    match table.load().await {
        Ok(()) => return Ok(table),
        Err(DeltaTableError::NotATable(_)) => {}
        Err(e) => return Err(e),
    }
    use deltalake_core::kernel::engine::arrow_conversion::TryFromArrow;
    let schema = deltalake_core::kernel::StructType::try_from_arrow(catalog_schema().as_ref())?;
    let created = table
        .clone()
        .create()
        .with_columns(schema.fields().cloned())
        .with_table_name("pixelquery_catalog")
        .with_save_mode(SaveMode::Ignore)
        .with_commit_properties(CommitProperties::default().with_max_retries(0))
        .await;
    match created {
        Ok(t) => Ok(t),
        // Another server created it first.
        Err(DeltaTableError::Transaction { source: TransactionError::MaxCommitAttempts(_) | TransactionError::VersionAlreadyExists(_) }) => {
            table.load().await?;
            Ok(table)
        }
        Err(e) => Err(e),
    }
}

/// What a server learns from the commits it applies.
#[derive(Default)]
struct Seen {
    /// Every object a committed row names (what `gc` keeps).
    named: HashSet<String>,
    /// The version that committed each scene.
    versions: HashMap<String, i64>,
    /// The table files holding each stored scene's rows.
    files_of: HashMap<String, BTreeSet<String>>,
    /// Every table file ever added, below the collection (a server
    /// replaying the log reads them all).
    files: HashSet<String>,
}

/// One collection's catalog table, and how far this server's local copy
/// has applied it.
pub struct RemoteCatalog {
    remote: Arc<Remote>,
    pub name: String,
    table: tokio::sync::Mutex<DeltaTable>,
    /// The last version applied to the local copy (`-1`: none). Held while
    /// applying: commits are applied one at a time, in order.
    pub applied: Mutex<i64>,
    /// What applying the commits learnt.
    seen: Mutex<Seen>,
    /// The last version applied, for readers (no lock).
    pub current: std::sync::atomic::AtomicI64,
}

impl RemoteCatalog {
    fn object_path(&self, key: &str) -> ObjPath {
        self.remote.path(&[&self.name, key])
    }

    /// Stores many observations at once; keys in the order given.
    pub fn put_observations(&self, items: Vec<(String, String, String, Bytes)>) -> Result<Vec<String>> {
        let puts = items.into_iter().map(|(tile, month, band, bytes)| {
            let key = format!("tiles/{tile}/{month}/{band}/{}.arrows", unique_name());
            let path = self.object_path(&key);
            async move {
                let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
                self.remote.root.put_opts(&path, PutPayload::from(bytes), opts).await.map(|_| key)
            }
        });
        self.remote.block_on(futures::future::try_join_all(puts)).map_err(unavailable("storing pixels"))
    }

    /// Removes objects no commit names (a failed or duplicate scene's).
    pub fn remove_objects(&self, keys: &[String]) {
        let removes = keys.iter().map(|k| {
            let path = self.object_path(k);
            async move { self.remote.root.delete(&path).await }
        });
        if let Err(e) = self.remote.block_on(futures::future::try_join_all(removes)) {
            tracing::warn!(collection = %self.name, error = %e, "removing uncommitted objects failed; gc removes them");
        }
    }

    /// Records what version `version` committed: scene `scene_id` and the
    /// objects its rows name.
    pub fn record(&self, version: i64, scene_id: &str, keys: impl Iterator<Item = String>) {
        let mut seen = self.seen();
        seen.named.extend(keys);
        seen.versions.insert(scene_id.to_string(), version);
    }

    /// Records that table file `file` holds rows of `scenes`.
    pub fn record_file<'r>(&self, file: &str, scenes: impl Iterator<Item = &'r str>) {
        let mut seen = self.seen();
        for s in scenes {
            seen.files_of.entry(s.to_string()).or_default().insert(file.to_string());
        }
        seen.files.insert(format!("_catalog/{file}"));
    }

    /// How many table files hold rows of `scenes`.
    pub fn file_count(&self, scenes: &[String]) -> usize {
        let seen = self.seen();
        scenes.iter().filter_map(|s| seen.files_of.get(s)).flatten().collect::<HashSet<_>>().len()
    }

    /// Forgets table file `file` (a commit removed it).
    pub fn forget_file(&self, file: &str) {
        self.seen().files_of.retain(|_, files| {
            files.remove(file);
            !files.is_empty()
        });
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `entry` as it stood at version `as_of`: its rows of scenes committed
    /// up to then (commits are appended in order, so they lead the chunk);
    /// `None` when it held none. `Aborted` when a rewrite since (a
    /// compaction or a delete) mixed later rows among them.
    pub fn pinned(&self, key: &ChunkKey, entry: &ChunkEntry, as_of: i64) -> Result<Option<ChunkEntry>> {
        let versions = &self.seen().versions;
        let visible = |s: &Arc<str>| versions.get(s.as_ref()).is_none_or(|v| *v <= as_of);
        let n = entry.scenes.iter().filter(|s| visible(s)).count();
        if n == entry.scenes.len() {
            return Ok(Some(entry.clone()));
        }
        if n == 0 {
            return Ok(None);
        }
        let prefix = if entry.scenes[..n].iter().all(visible) { entry.prefix(n)? } else { None };
        prefix.map(Some).ok_or_else(|| {
            Error::Aborted(format!(
                "{} was rewritten (compacted or deleted from) after catalog version {as_of}, which this ticket was planned at: plan the query again",
                key.label(&self.name)
            ))
        })
    }

    /// The bytes of `rows`' objects, in order, after their checksums hold;
    /// those in `held` (by key) are not fetched.
    pub fn fetch_all(&self, rows: &[&CatalogRow], held: &HashMap<String, Bytes>) -> Result<Vec<Bytes>> {
        use futures::{StreamExt, TryStreamExt};
        let gets = rows.iter().map(|row| async move {
            let bytes = match held.get(&row.object) {
                Some(b) => b.clone(),
                None => {
                    let path = self.object_path(&row.object);
                    self.remote.root.get(&path).await.map_err(unavailable("reading pixels"))?.bytes().await.map_err(unavailable("reading pixels"))?
                }
            };
            if bytes.len() as u64 != row.bytes || crc32fast::hash(&bytes) != row.crc {
                return Err(Error::DataLoss(format!(
                    "collection {}, scene {}, tile {}, band {}: the stored object fails its checksum",
                    self.name, row.scene_id, row.tile, row.band
                )));
            }
            Ok(bytes)
        });
        self.remote.block_on(futures::stream::iter(gets).buffered(FETCHES_AT_ONCE).try_collect())
    }

    /// Commits one scene: a Parquet file of its rows and the application
    /// transaction `scene_id`.
    pub fn commit_scene(&self, scene_id: &str, rows: &[CatalogRow]) -> Result<Commit> {
        let (file, buf) = table_file(rows)?;
        let size = buf.len() as i64;
        let table_path = self.object_path(&format!("_catalog/{file}"));
        let root = &self.remote.root;
        Ok(self.remote.block_on(async {
            // Removes the table file no commit will name.
            let discard = || async {
                let _ = root.delete(&table_path).await;
            };
            let failed = |e: Error| async {
                discard().await;
                Commit::Failed(e)
            };
            if let Err(e) = root.put(&table_path, PutPayload::from(buf)).await {
                return failed(unavailable("storing catalog rows")(e)).await;
            }
            let mut table = self.table.lock().await;
            if let Err(e) = table.update_state().await {
                return failed(delta_error("refreshing")(e)).await;
            }
            let txn = match scene_txn(&table, scene_id).await {
                Ok(v) if stored(v) => {
                    discard().await;
                    return Commit::Duplicate;
                }
                Ok(v) => v + 1,
                Err(e) => return failed(e).await,
            };
            let now = chrono::Utc::now().timestamp_millis();
            let add = Action::Add(Add { path: file.clone(), size, modification_time: now, data_change: true, ..Default::default() });
            let props = CommitProperties::default()
                .with_application_transaction(Transaction::new_with_last_update(scene_id, txn, Some(now)))
                .with_max_retries(50)
                .with_cleanup_expired_logs(Some(false));
            let snapshot = match table.snapshot() {
                Ok(s) => s.clone(),
                Err(e) => return failed(delta_error("reading")(e)).await,
            };
            let op = DeltaOperation::Write { mode: SaveMode::Append, partition_by: None, predicate: None };
            let error = match CommitBuilder::from(props).with_actions(vec![add]).build(Some(&snapshot), table.log_store(), op).await {
                Ok(done) => return Commit::At(done.version() as i64),
                Err(e) => Error::Unavailable(format!("catalog table: committing scene {scene_id:?}: {e}")),
            };
            // A conflict (the same scene id committed meanwhile), or a
            // failure after our log entry was written (a checkpoint, a lost
            // reply): the log says which. Until it can be read, nothing this
            // scene stored may go.
            if let Err(e) = table.update_state().await {
                tracing::warn!(scene = scene_id, error = %e, "a failed commit's outcome is unknown; its objects stay for gc");
                return Commit::Unknown(error);
            }
            let ours = table.snapshot().map(|s| s.log_data().iter().any(|f| f.path() == file)).unwrap_or(false);
            if ours {
                return Commit::At(table.version().map_or(-1, |v| v as i64));
            }
            match scene_txn(&table, scene_id).await {
                Ok(v) if stored(v) => {
                    discard().await;
                    Commit::Duplicate
                }
                Ok(_) => failed(error).await,
                Err(_) => Commit::Unknown(error),
            }
        }))
    }

    /// Commits scene `scene_id` in place of the scene stored under its id,
    /// in one commit: the table files holding the old scene's rows are
    /// removed, the rows of other scenes they held come back in a new
    /// file, and `rows` come in a file of their own; the scene's
    /// transaction moves on by two (stored before, stored after). If the
    /// scene is no longer stored, it is committed as a new one.
    pub fn replace_scene(&self, scene_id: &str, rows: &[CatalogRow]) -> Result<Commit> {
        let outcome = self.remote.block_on(async {
            let mut table = self.table.lock().await;
            table.update_state().await.map_err(delta_error("refreshing"))?;
            let txn = scene_txn(&table, scene_id).await?;
            if !stored(txn) {
                return Ok(None);
            }
            let (files, old) = self.current_rows(&table, &[scene_id.to_string()]).await?;
            let others: Vec<CatalogRow> = old.into_iter().filter(|r| r.scene_id != scene_id).collect();
            let now = chrono::Utc::now().timestamp_millis();
            let props = CommitProperties::default()
                .with_application_transaction(Transaction::new_with_last_update(scene_id, txn + 2, Some(now)))
                .with_max_retries(50)
                .with_cleanup_expired_logs(Some(false));
            let op = DeltaOperation::Write {
                mode: SaveMode::Overwrite,
                partition_by: None,
                predicate: Some(format!("scene_id = '{}'", scene_id.replace('\'', "''"))),
            };
            let what = format!("replacing scene {scene_id:?}");
            self.commit_files(&mut table, &files, &[others.as_slice(), rows], true, props, op, &what).await.map(Some)
        })?;
        match outcome {
            Some(commit) => Ok(commit),
            None => self.commit_scene(scene_id, rows),
        }
    }

    /// The rows of the table files holding rows of `scenes`, as this
    /// server last applied them, after checking they are still the table's
    /// current files: `(files, rows)`.
    async fn current_rows(&self, table: &DeltaTable, scenes: &[String]) -> Result<(Vec<String>, Vec<CatalogRow>)> {
        let files: BTreeSet<String> = {
            let seen = self.seen();
            scenes.iter().filter_map(|s| seen.files_of.get(s)).flatten().cloned().collect()
        };
        let snapshot = table.snapshot().map_err(delta_error("reading"))?;
        let current: HashSet<String> = snapshot.log_data().iter().map(|f| f.path().to_string()).collect();
        if let Some(gone) = files.iter().find(|f| !current.contains(*f)) {
            return Err(Error::Unavailable(format!("catalog table: file {gone} was rewritten by another server meanwhile; try again")));
        }
        let mut rows = Vec::new();
        for f in &files {
            rows.extend(self.read_table_file(f).await?);
        }
        Ok((files.into_iter().collect(), rows))
    }

    /// Rewrites the table files holding rows of `scenes` in one commit:
    /// they are removed and one file of the rows `keep` keeps is added.
    /// A delete also moves the transaction of every scene it leaves
    /// without rows (and of `scenes` themselves when `whole`) to
    /// "deleted". Returns the version and the scenes deleted; `None` when
    /// a delete found no row to remove.
    pub fn rewrite(&self, scenes: &[String], keep: impl Fn(&CatalogRow) -> bool, whole: bool, kind: RewriteKind) -> Result<Option<(i64, Vec<String>)>> {
        self.remote.block_on(async {
            let mut table = self.table.lock().await;
            table.update_state().await.map_err(delta_error("refreshing"))?;
            let (files, rows) = self.current_rows(&table, scenes).await?;
            let (kept, dropped): (Vec<CatalogRow>, Vec<CatalogRow>) = rows.into_iter().partition(|r| keep(r));
            let deleting = matches!(kind, RewriteKind::Delete { .. });
            if files.is_empty() || (deleting && dropped.is_empty() && !whole) {
                return Ok(None);
            }
            let mut gone: BTreeSet<String> = dropped.iter().map(|r| r.scene_id.clone()).collect();
            gone.extend(scenes.iter().filter(|_| whole).cloned());
            let keeping: HashSet<&str> = kept.iter().map(|r| r.scene_id.as_str()).collect();
            gone.retain(|s| !keeping.contains(s.as_str()));
            let now = chrono::Utc::now().timestamp_millis();
            let mut txns = Vec::new();
            if deleting {
                for s in &gone {
                    let txn = scene_txn(&table, s).await?;
                    if stored(txn) {
                        txns.push(Transaction::new_with_last_update(s, txn + 1, Some(now)));
                    }
                }
            }
            let mut props = CommitProperties::default().with_application_transactions(txns).with_max_retries(50).with_cleanup_expired_logs(Some(false));
            let op = match kind {
                RewriteKind::Delete { predicate } => DeltaOperation::Delete { predicate: Some(predicate) },
                RewriteKind::Compact { tiles } => {
                    props = props.with_metadata([(COMPACT_TILES.to_string(), serde_json::json!(tiles))]);
                    DeltaOperation::Optimize { predicate: None, target_size: 0 }
                }
            };
            let what = format!("rewriting the rows of {} scene(s)", scenes.len());
            match self.commit_files(&mut table, &files, &[kept.as_slice()], deleting, props, op, &what).await? {
                Commit::At(version) => Ok(Some((version, gone.into_iter().collect()))),
                Commit::Failed(e) | Commit::Unknown(e) => Err(e),
                Commit::Duplicate => unreachable!("commit_files never finds a duplicate"),
            }
        })
    }

    /// One commit on the current snapshot: table files `files` are
    /// removed and each non-empty part of `parts` comes back as a new
    /// table file. After an error the log says whether the commit went
    /// through anyway (a lost reply: our last new file is current). New
    /// files no commit names are removed, unless the log cannot be read.
    #[allow(clippy::too_many_arguments)]
    async fn commit_files(
        &self,
        table: &mut DeltaTable,
        files: &[String],
        parts: &[&[CatalogRow]],
        data_change: bool,
        props: CommitProperties,
        op: DeltaOperation,
        what: &str,
    ) -> Result<Commit> {
        let root = &self.remote.root;
        let snapshot = table.snapshot().map_err(delta_error("reading"))?.clone();
        let mut actions: Vec<Action> =
            snapshot.log_data().iter().filter(|f| files.iter().any(|n| n == f.path().as_ref())).map(|f| Action::Remove(f.remove_action(data_change))).collect();
        let now = chrono::Utc::now().timestamp_millis();
        let mut written = Vec::new();
        for part in parts.iter().filter(|p| !p.is_empty()) {
            let (file, buf) = table_file(part)?;
            let size = buf.len() as i64;
            let path = self.object_path(&format!("_catalog/{file}"));
            if let Err(e) = root.put(&path, PutPayload::from(buf)).await {
                for (_, p) in &written {
                    let _ = root.delete(p).await;
                }
                return Err(unavailable("storing catalog rows")(e));
            }
            actions.push(Action::Add(Add { path: file.clone(), size, modification_time: now, data_change, ..Default::default() }));
            written.push((file, path));
        }
        let error = match CommitBuilder::from(props).with_actions(actions).build(Some(&snapshot), table.log_store(), op).await {
            Ok(done) => return Ok(Commit::At(done.version() as i64)),
            Err(e) => Error::Unavailable(format!("catalog table: {what}: {e}; try again")),
        };
        if table.update_state().await.is_err() {
            return Ok(Commit::Unknown(error));
        }
        let current = |file: &str| table.snapshot().map(|s| s.log_data().iter().any(|f| f.path() == file)).unwrap_or(false);
        if written.last().is_some_and(|(file, _)| current(file)) {
            return Ok(Commit::At(table.version().map_or(-1, |v| v as i64)));
        }
        for (_, p) in &written {
            let _ = root.delete(p).await;
        }
        Ok(Commit::Failed(error))
    }

    /// The rows of table file `file`.
    async fn read_table_file(&self, file: &str) -> Result<Vec<CatalogRow>> {
        let path = self.object_path(&format!("_catalog/{file}"));
        let data =
            self.remote.root.get(&path).await.map_err(unavailable("reading catalog rows"))?.bytes().await.map_err(unavailable("reading catalog rows"))?;
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(data)
            .and_then(|b| b.build())
            .map_err(|e| Error::Unavailable(format!("catalog rows {file}: {e}")))?;
        let mut rows = Vec::new();
        for batch in reader {
            batch_to_rows(&batch.map_err(Error::arrow("reading catalog rows"))?, &mut rows)?;
        }
        Ok(rows)
    }

    /// Commits after version `after`, in order: the rows each added (by
    /// table file) and the table files it removed.
    pub fn commits_after(&self, after: i64) -> Result<Vec<LogEntry>> {
        self.remote.block_on(async {
            let mut out = Vec::new();
            let mut version = after + 1;
            loop {
                let log = self.object_path(&format!("_catalog/_delta_log/{version:020}.json"));
                let bytes = match self.remote.root.get(&log).await {
                    Ok(r) => r.bytes().await.map_err(unavailable("reading the catalog log"))?,
                    Err(object_store::Error::NotFound { .. }) => break,
                    Err(e) => return Err(unavailable("reading the catalog log")(e)),
                };
                let mut entry = LogEntry { version, added: Vec::new(), removed: Vec::new(), compacted: None };
                for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    let action: serde_json::Value =
                        serde_json::from_slice(line).map_err(|e| Error::Unavailable(format!("catalog log entry {version} does not parse: {e}")))?;
                    if let Some(tiles) = action.get("commitInfo").and_then(|c| c.get(COMPACT_TILES)).and_then(|t| t.as_array()) {
                        entry.compacted = Some(tiles.iter().filter_map(|t| t.as_str().map(str::to_string)).collect());
                    }
                    let path = |kind: &str| action.get(kind).and_then(|a| a.get("path")).and_then(|p| p.as_str()).map(str::to_string);
                    if let Some(path) = path("remove") {
                        let rows = self.read_table_file(&path).await?;
                        entry.removed.push((path, rows));
                    } else if let Some(path) = path("add") {
                        let rows = self.read_table_file(&path).await?;
                        entry.added.push((path, rows));
                    }
                }
                out.push(entry);
                version += 1;
            }
            Ok(out)
        })
    }

    /// Removes objects below the collection that no committed row or table
    /// file names and that are older than `older_than`: what crashed or
    /// losing writers left. Returns how many and their bytes.
    pub fn gc(&self, older_than: std::time::Duration) -> Result<(u64, u64)> {
        let (named, files) = {
            let seen = self.seen();
            (seen.named.clone(), seen.files.clone())
        };
        let Ok(age) = chrono::Duration::from_std(older_than) else { return Ok((0, 0)) };
        let cutoff = chrono::Utc::now() - age;
        self.remote.block_on(async {
            use futures::TryStreamExt;
            let base = self.remote.path(&[&self.name]);
            let mut gone = (0, 0);
            for dir in ["tiles", "_catalog"] {
                let under = base.clone().join(dir);
                let listed: Vec<_> = self.remote.root.list(Some(&under)).try_collect().await.map_err(unavailable("listing objects"))?;
                for meta in listed {
                    let Some(key) = meta.location.prefix_match(&base).map(|parts| parts.map(|p| p.as_ref().to_string()).collect::<Vec<_>>().join("/")) else {
                        continue;
                    };
                    // Table data files only: the log and its checkpoints are
                    // the table's own.
                    let part = key.strip_prefix("_catalog/").is_some_and(|k| k.starts_with("part-") && k.ends_with(".parquet") && !k.contains('/'));
                    // Every table file any commit added stays: a server
                    // replaying the log from the start reads them all.
                    let orphan = if dir == "tiles" { !named.contains(&key) } else { part && !files.contains(&key) };
                    if orphan && meta.last_modified < cutoff {
                        self.remote.root.delete(&meta.location).await.map_err(unavailable("removing an orphan"))?;
                        gone = (gone.0 + 1, gone.1 + meta.size);
                    }
                }
            }
            Ok(gone)
        })
    }
}

/// A Parquet table file of `rows` under a fresh name: `(name, bytes)`.
fn table_file(rows: &[CatalogRow]) -> Result<(String, Vec<u8>)> {
    let batch = rows_to_batch(rows)?;
    let mut buf = Vec::new();
    let mut writer = parquet::arrow::ArrowWriter::try_new(&mut buf, batch.schema(), None).map_err(|e| Error::Internal(format!("writing catalog rows: {e}")))?;
    writer.write(&batch).and_then(|_| writer.close().map(|_| ())).map_err(|e| Error::Internal(format!("writing catalog rows: {e}")))?;
    Ok((format!("part-{}.parquet", unique_name()), buf))
}

/// The version of scene `scene_id`'s application transaction: odd while
/// the scene is stored, even once deleted (a new ingest takes the next).
async fn scene_txn(table: &DeltaTable, scene_id: &str) -> Result<i64> {
    let snapshot = table.snapshot().map_err(delta_error("reading"))?;
    let v = snapshot.transaction_version(table.log_store().as_ref(), scene_id).await.map_err(delta_error("reading transactions"))?;
    Ok(v.unwrap_or(0))
}

/// Whether a scene whose transaction is at version `txn` is stored (odd).
fn stored(txn: i64) -> bool {
    txn % 2 == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A warehouse URL the server cannot use is refused with the flag, the
    /// URL without its password, and the reason.
    #[test]
    fn bad_warehouse_urls_are_refused_at_start() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let refused = |url: &str| Remote::connect(url, rt.handle().clone()).err().map(|e| e.to_string()).unwrap_or_default();
        let err = refused("hdfs://bucket/prefix");
        assert!(err.contains("--warehouse") && err.contains("hdfs://bucket/prefix") && err.contains("not built in"), "{err}");
        let err = refused("s3://ab/prefix");
        assert!(err.contains("names no bucket"), "{err}");
        let err = refused("hdfs://user:hunter2@bucket/prefix");
        assert!(err.contains("--warehouse") && !err.contains("hunter2"), "{err}");
    }
}
