//! A scene's transaction: its observations appended past the committed
//! lengths of their chunks under the collection's writer, made durable,
//! then committed by one catalog log record (or undone when dropped).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{ArrayRef, BooleanArray};
use arrow_schema::SchemaRef;

use super::catalog::ChunkKey;
use super::local::{self, fs_sync, CatalogLog, Syncs, SYNC_BATCH};
use super::log::{Appended, PixelStats, Record, Rewritten};
use super::paths::Month;
use super::remote::{CatalogRow, Commit, LogEntry, RemoteCatalog, RewriteKind};
use super::{chunk, lock, read, CollectionStore, RewriteOutcome, SceneStatus};
use crate::collection::Collection;
use crate::counters::Counters;
use crate::error::{Error, Result};
use crate::grid::TileId;

/// One (tile, band) of a scene, resampled onto the grid.
pub struct Observation {
    pub tile: TileId,
    pub band: String,
    pub pixels: ArrayRef,
    pub mask: BooleanArray,
}

/// An observation as the bytes its chunk gets (IPC stream: the schema
/// message, then the observation's) and its statistics: the costly part of
/// an append, done before the collection's writer is taken (ingest does it
/// on the warp pool while the rows still stream in).
pub struct Encoded {
    pub tile: TileId,
    pub band: String,
    scene_id: String,
    time_ms: i64,
    stats: PixelStats,
    /// Schema message length and the bytes ([`chunk::encode`]).
    bytes: (usize, Vec<u8>),
}

impl Encoded {
    /// Encodes `obs` of scene `scene_id`, acquired at `time_ms`, for a chunk of collection `meta`.
    pub fn new(meta: &Collection, scene_id: &str, time_ms: i64, obs: Observation) -> Result<Self> {
        let band = meta.band(&obs.band).ok_or_else(|| Error::Internal(format!("band {} vanished", obs.band)))?;
        let schema: SchemaRef = Arc::new(chunk::schema(band.dtype, chunk_metadata(meta, obs.tile, &obs.band)));
        let stats = chunk::pixel_stats(&obs.pixels, &obs.mask, meta.grid.tile_px as usize);
        let batch = chunk::observation_batch(schema, &obs.tile.to_string(), &obs.band, time_ms, scene_id, obs.pixels, obs.mask)?;
        let bytes = chunk::encode(&batch, &meta.ipc_options()?)?;
        Ok(Self { tile: obs.tile, band: obs.band, scene_id: scene_id.to_string(), time_ms, stats, bytes })
    }

    /// An observation as the catalog table names it, with its stored bytes.
    fn stored(row: &CatalogRow, bytes: &[u8]) -> Result<Self> {
        let tile = row.tile.parse().map_err(|_| Error::Unavailable(format!("catalog table names a bad tile {:?}", row.tile)))?;
        let schema_len = usize::try_from(row.schema_len).ok().filter(|n| *n <= bytes.len());
        let schema_len = schema_len.ok_or_else(|| Error::Unavailable(format!("catalog table names a bad schema length for {}", row.object)))?;
        let (scene_id, time_ms, stats) = (row.scene_id.clone(), row.time_ms, row.stats);
        Ok(Self { tile, band: row.band.clone(), scene_id, time_ms, stats, bytes: (schema_len, bytes.to_vec()) })
    }
}

/// Schema metadata of a chunk file: where its pixels sit.
pub fn chunk_metadata(meta: &Collection, tile: TileId, band: &str) -> HashMap<String, String> {
    let grid = meta.grid_spec();
    let b = meta.band(band);
    let mut m = HashMap::from([
        ("collection".to_string(), meta.name.clone()),
        ("tile_id".to_string(), tile.to_string()),
        ("band".to_string(), band.to_string()),
        ("crs".to_string(), meta.grid.crs_wkt.clone()),
        ("geotransform".to_string(), serde_json::to_string(&grid.tile_geotransform(tile)).unwrap_or_default()),
        ("tile_px".to_string(), grid.tile_px.to_string()),
    ]);
    if let Some(nd) = b.and_then(|b| b.nodata) {
        m.insert("nodata".to_string(), nd.to_string());
    }
    if let Some(b) = b {
        m.insert("dtype".to_string(), b.dtype.name().to_string());
    }
    m
}

/// What appending a scene did.
#[derive(Debug, Clone, Default)]
pub struct AppendOutcome {
    pub duplicate: bool,
    pub observations: u64,
    pub bytes: u64,
    pub tiles: Vec<TileId>,
}

impl CollectionStore {
    /// Appends one scene durably and atomically (see the module docs). A
    /// scene id already present adds nothing (`duplicate`). Blocking.
    pub fn append_scene(&self, scene_id: &str, time_ms: i64, observations: Vec<Observation>) -> Result<AppendOutcome> {
        match self.begin_scene(scene_id, time_ms, None, false)? {
            None => Ok(AppendOutcome { duplicate: true, ..Default::default() }),
            Some(mut scene) => {
                let encoded = observations.into_iter().map(|o| Encoded::new(&self.meta, scene_id, time_ms, o)).collect::<Result<Vec<_>>>()?;
                scene.append(&encoded)?;
                scene.commit()
            }
        }
    }

    /// The collection's writer, counted as waited for while it is busy.
    pub(super) fn take_writer(&self) -> std::sync::MutexGuard<'_, CatalogLog> {
        if let Ok(log) = self.writer.try_lock() {
            return log;
        }
        self.writers_waiting.fetch_add(1, Ordering::AcqRel);
        let log = lock(&self.writer);
        self.writers_waiting.fetch_sub(1, Ordering::AcqRel);
        log
    }

    /// [`CollectionStore::begin_scene`] if the writer is free right now;
    /// `None` if it is busy or the scene is there already (a later
    /// `begin_scene` tells which). For writing a scene while its rows still
    /// stream in: such a writer lets go when [`SceneWriter::contended`].
    pub fn try_begin_scene(&self, scene_id: &str, time_ms: i64, fingerprint: Option<&str>, replace: bool) -> Result<Option<SceneWriter<'_>>> {
        self.scene_writer(scene_id, time_ms, fingerprint, replace, || match self.writer.try_lock() {
            Ok(log) => Some(log),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        })
    }

    /// Starts writing a scene whose observations come in parts (so a large
    /// scene need not be held whole); `None` if the scene is already there.
    /// Holds the collection's writer until committed or dropped; dropping it
    /// uncommitted undoes its appends (see [`SceneWriter`]'s `Drop`).
    /// Blocking.
    pub fn begin_scene(&self, scene_id: &str, time_ms: i64, fingerprint: Option<&str>, replace: bool) -> Result<Option<SceneWriter<'_>>> {
        self.scene_writer(scene_id, time_ms, fingerprint, replace, || Some(self.take_writer()))
    }

    /// A writer for scene `scene_id` with the lock `take` gives; `None` if it
    /// gives none or the scene is there already.
    fn scene_writer<'s>(
        &'s self,
        scene_id: &str,
        time_ms: i64,
        fingerprint: Option<&str>,
        replace: bool,
        take: impl FnOnce() -> Option<std::sync::MutexGuard<'s, CatalogLog>>,
    ) -> Result<Option<SceneWriter<'s>>> {
        let month = Month::of_ms(time_ms).ok_or_else(|| Error::invalid("acquired_at", time_ms, "out of the representable range"))?;
        let Some(log) = take() else { return Ok(None) };
        let replacing = match self.check_scene(scene_id, time_ms, fingerprint, replace)? {
            SceneStatus::Retry => return Ok(None),
            SceneStatus::New => false,
            SceneStatus::Replaces => true,
        };
        let mut writer = SceneWriter::new(self, log, scene_id, time_ms, month);
        writer.fingerprint = fingerprint.map(str::to_string);
        if replacing {
            // The stored scene's rows leave in the same commit as this
            // scene's arrive: its chunks are rewritten without them now, and
            // this scene appends to those new generations.
            let mut touched = std::collections::HashSet::new();
            let (_, rewritten, files) = self.without_rows(|_| true, |_, _, s| s == scene_id, &mut touched)?;
            for r in &rewritten {
                let key = ChunkKey::from_ref(&r.chunk)?;
                writer.overlay.insert(key, (r.gen, r.len));
            }
            writer.dirs.extend(files.iter().map(|(p, _)| p.parent().unwrap_or(self.paths.root()).to_path_buf()));
            writer.replaced_files = files.into_iter().map(|(p, _)| p).collect();
            writer.replaces = rewritten;
        }
        Ok(Some(writer))
    }
}

/// A scene being written: observations are appended (uncommitted) as they
/// come, then [`SceneWriter::commit`] syncs everything and writes the one
/// log record that makes the scene visible.
pub struct SceneWriter<'a> {
    store: &'a CollectionStore,
    log: std::sync::MutexGuard<'a, CatalogLog>,
    scene_id: String,
    time_ms: i64,
    /// The client's fingerprint of the scene's content, if it gave one.
    fingerprint: Option<String>,
    /// The product's processing baseline, if known.
    baseline: Option<String>,
    /// Replacing a stored scene: its chunks rewritten without it (committed
    /// with this scene), each chunk's new generation and length (appends go
    /// there), and the files written for them (removed if uncommitted).
    replaces: Vec<Rewritten>,
    overlay: HashMap<ChunkKey, (u32, u64)>,
    replaced_files: Vec<PathBuf>,
    month: Month,
    appended: Vec<Appended>,
    /// Appended files not synced yet.
    files: Vec<(PathBuf, File)>,
    /// Syncs started in the background ([`SceneWriter::start_sync`]).
    syncs: Syncs,
    /// Each appended file and its committed length before: what dropping
    /// the writer uncommitted puts back.
    undo: Vec<(PathBuf, u64)>,
    /// Directories this scene created, parents first.
    created: Vec<PathBuf>,
    committed: bool,
    /// Refuse the scene past the collection's quota (not when applying a
    /// scene the shared catalog committed already).
    enforce_quota: bool,
    /// Directories that gained entries: synced at the commit.
    dirs: Vec<PathBuf>,
    outcome: AppendOutcome,
}

impl<'a> SceneWriter<'a> {
    fn new(store: &'a CollectionStore, log: std::sync::MutexGuard<'a, CatalogLog>, scene_id: &str, time_ms: i64, month: Month) -> Self {
        Self {
            store,
            log,
            scene_id: scene_id.to_string(),
            time_ms,
            fingerprint: None,
            baseline: None,
            replaces: Vec::new(),
            overlay: HashMap::new(),
            replaced_files: Vec::new(),
            month,
            appended: Vec::new(),
            files: Vec::new(),
            syncs: Syncs::new(),
            undo: Vec::new(),
            created: Vec::new(),
            committed: false,
            enforce_quota: true,
            dirs: Vec::new(),
            outcome: AppendOutcome::default(),
        }
    }

    /// Whether another writer of the collection waits for this one.
    pub fn contended(&self) -> bool {
        self.store.writers_waiting.load(Ordering::Acquire) > 0
    }

    /// Starts syncing the files appended so far on the sync threads (a
    /// scene's files get no more writes once appended); the commit waits
    /// for them. Lets the disk work while the rest still arrives. At most
    /// about [`SYNC_BATCH`] files are held open meanwhile.
    pub fn start_sync(&mut self) -> Result<()> {
        if self.store.fs_sync.available() {
            // Written back since its append; the commit syncs.
            return Ok(());
        }
        if self.syncs.pending >= SYNC_BATCH {
            self.syncs.wait()?;
        }
        self.syncs.start(std::mem::take(&mut self.files));
        Ok(())
    }

    /// Appends encoded observations past the chunks' committed lengths (a
    /// scene has at most one observation per chunk).
    pub fn append(&mut self, observations: &[Encoded]) -> Result<()> {
        let store = self.store;
        for obs in observations {
            if obs.scene_id != self.scene_id || obs.time_ms != self.time_ms {
                return Err(Error::Internal(format!(
                    "an observation of scene {} ({}) appended to scene {} ({})",
                    obs.scene_id, obs.time_ms, self.scene_id, self.time_ms
                )));
            }
            let key = ChunkKey { tile: obs.tile, month: self.month, band: obs.band.clone() };
            let (gen, committed) = match self.overlay.get(&key) {
                Some(&at) => at,
                None => {
                    let idx = read(&store.index);
                    idx.chunks.get(&key).map_or_else(|| (idx.retired.get(&key).copied().unwrap_or(0), 0), |e| (e.file.gen, e.len))
                }
            };
            let path = store.paths.chunk(&store.meta.name, key.tile, self.month, &key.band, gen);
            if committed == 0 {
                if let Some(parent) = path.parent() {
                    local::create_dirs(parent, store.paths.root(), &mut self.dirs, Some(&mut self.created))?;
                }
            }
            // Nothing is committed yet: after a failure here the writer's
            // drop cuts the file back (a crash: the next start does).
            self.undo.push((path.clone(), committed));
            let (len, crc, file) = local::chunk_file::append(&path, committed, &obs.bytes)?;
            if committed == 0 {
                self.dirs.push(path.parent().unwrap_or(store.paths.root()).to_path_buf());
            }
            self.outcome.bytes += len - committed;
            self.outcome.observations += 1;
            if !self.outcome.tiles.contains(&key.tile) {
                self.outcome.tiles.push(key.tile);
            }
            if store.fs_sync.available() {
                // Submitting the writes takes CPU: the sync threads do it,
                // not the scene's writer.
                local::start_writeback(&file);
            }
            self.files.push((path, file));
            self.appended.push(Appended { chunk: key.to_ref(), gen, len, stats: obs.stats, crc: Some(crc) });
            // A large scene touches thousands of chunks: sync and close them
            // as it goes rather than hold a descriptor for each (the usual
            // limit is 1024 per process). Its commit syncs the file system
            // where it can: then they are closed unsynced but the last.
            if self.files.len() >= SYNC_BATCH {
                if store.fs_sync.available() {
                    self.files.drain(..self.files.len() - 1);
                } else {
                    local::sync_files(std::mem::take(&mut self.files))?;
                }
            }
        }
        Ok(())
    }

    /// Syncs what is left and the new directories, then writes the scene's
    /// log record and publishes it (readers see all of it or none).
    pub fn commit(mut self) -> Result<AppendOutcome> {
        if self.enforce_quota {
            // Dropping `self` on this error undoes the appends.
            self.store.check_quota(self.outcome.bytes)?;
        }
        self.syncs.wait()?;
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.sort();
        dirs.dedup();
        let mut files = std::mem::take(&mut self.files);
        let fs = &self.store.fs_sync;
        let whole_fs = fs.available() && self.appended.len() + dirs.len() >= fs_sync::FS_SYNC_MIN_FILES;
        match files.last() {
            // One sync of the file system covers the files and directories.
            Some((path, barrier)) if whole_fs => fs.sync(barrier).map_err(Error::io(path))?,
            _ => {
                for d in dirs {
                    let f = local::open_dir(&d)?;
                    files.push((d, f));
                    if files.len() >= SYNC_BATCH {
                        local::sync_files(std::mem::take(&mut files))?;
                    }
                }
                local::sync_files(files)?;
            }
        }
        // What this scene wrote (each file and range), to drop from the
        // page cache once committed: `undo` and `appended` gain one entry
        // per append, in the same order.
        debug_assert_eq!(self.undo.len(), self.appended.len(), "one undo entry per append");
        let written: Vec<(PathBuf, u64, u64)> =
            if fs.drop_written { self.undo.iter().zip(&self.appended).map(|((path, from), a)| (path.clone(), *from, a.len)).collect() } else { Vec::new() };
        let record = Record::Scene {
            scene_id: std::mem::take(&mut self.scene_id),
            time_ms: self.time_ms,
            fingerprint: self.fingerprint.take(),
            baseline: self.baseline.take(),
            replaces: std::mem::take(&mut self.replaces),
            chunks: std::mem::take(&mut self.appended),
        };
        self.store.commit(&mut self.log, record)?;
        self.committed = true;
        if !written.is_empty() {
            // Off the acknowledgement's path, on the sync threads.
            let job = move || local::drop_written_ranges(&written);
            match local::sync_pool() {
                Some(pool) => pool.spawn(job),
                None => job(),
            }
        }
        Ok(std::mem::take(&mut self.outcome))
    }
}

/// An uncommitted scene (failed, abandoned, or letting another writer go
/// first) puts the files back as they were: appended bytes cut to the
/// committed lengths, new chunk files and directories removed. It runs
/// while the writer is still held (the guard drops after this). What a
/// crash leaves instead, the next start cuts off.
impl Drop for SceneWriter<'_> {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        for (path, len) in self.undo.drain(..).rev() {
            if let Err(e) = local::undo_append(&path, len) {
                tracing::warn!(path = %crate::error::shown(&path), error = %e, "could not undo an uncommitted append (a restart cuts it off)");
            }
        }
        for path in self.replaced_files.drain(..) {
            if let Err(e) = local::remove_file(&path) {
                tracing::warn!(path = %crate::error::shown(&path), error = %e, "could not remove an uncommitted rewrite (a restart does)");
            }
        }
        for dir in self.created.drain(..).rev() {
            // Stays if something else put an entry there.
            local::remove_empty_dir(&dir);
        }
    }
}

/// Tiles a scene touches at most to be kept whole until its commit; larger
/// scenes are appended this many tiles at a time as they come, so the
/// server holds one group of tiles, not every one.
pub const TILE_GROUP: usize = 256;

/// Encoded bytes a scene holds before its commit at most: past them it is
/// appended group by group as a large scene is (a very fine grid makes a
/// few tiles many bytes).
pub const MAX_PENDING_BYTES: usize = 256 << 20;

/// How often a scene holding the collection's writer while its rows stream
/// in checks whether another writer waits for it (a stalled client sends
/// no tiles to wake it).
const YIELD_CHECK: Duration = Duration::from_millis(20);

/// What the caller of a [`SceneCommit`] does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Go on sending tiles.
    Continue,
    /// The scene is committed already: stop, nothing is written.
    Duplicate,
}

/// A scene committed as its tiles arrive (in any order), with the writer
/// policy of a streaming ingest.
///
/// A scene of up to [`TILE_GROUP`] tiles keeps them all. If the collection's
/// writer is free it takes it at once and appends (and starts syncing) each
/// tile as it comes, so the disk works while rows still arrive; when
/// another writer waits (checked at least every [`YIELD_CHECK`], see
/// [`SceneCommit::wait_limit`]) it lets go for good (its appends undone),
/// and at [`SceneCommit::commit`] takes the writer again and appends
/// everything anew. A larger scene takes the writer at its first full group
/// and appends group by group (other writers of the collection wait at
/// their append step).
pub struct SceneCommit<'s> {
    store: &'s CollectionStore,
    scene_id: String,
    time_ms: i64,
    fingerprint: Option<String>,
    baseline: Option<String>,
    /// Replace a scene stored under this id with another time or content.
    replace: bool,
    small: bool,
    /// Tiles received and not yet appended by `writer`, with their position
    /// in the scene's plan: all of a small scene; a large one's next group.
    pending: Vec<(usize, Vec<Encoded>)>,
    /// Encoded bytes in `pending`, and the most held before appending.
    pending_bytes: usize,
    pending_limit: usize,
    /// A small scene's writer taken early, and how many of `pending` it has
    /// appended; once it let go it is not taken early again.
    early: Option<SceneWriter<'s>>,
    appended: usize,
    yielded: bool,
    /// The writer appending group by group (and a small scene's at the end).
    writer: Option<SceneWriter<'s>>,
    counters: Arc<Counters>,
    /// On object storage: the scene's stored objects, committed to the
    /// catalog table instead of the local files.
    remote: Option<RemotePut>,
}

/// A scene on its way to object storage: each tile's observations stored
/// as they come, one catalog table commit at the end. Objects of a scene
/// that is not committed are removed (what a crash leaves, `gc` removes).
struct RemotePut {
    catalog: Arc<RemoteCatalog>,
    rows: Vec<CatalogRow>,
    /// The stored bytes, by object key, while they fit in
    /// [`MAX_PENDING_BYTES`]: applied here without fetching them back.
    held: HashMap<String, bytes::Bytes>,
    held_bytes: usize,
    checked: bool,
    /// The scene replaces the one stored under its id (`replace`).
    replacing: bool,
    committed: bool,
}

impl Drop for RemotePut {
    fn drop(&mut self) {
        if !self.committed && !self.rows.is_empty() {
            let keys: Vec<String> = self.rows.iter().map(|r| r.object.clone()).collect();
            self.catalog.remove_objects(&keys);
        }
    }
}

impl<'s> SceneCommit<'s> {
    /// A commit of scene `scene_id` at `time_ms` (with the client's
    /// `fingerprint` of its content, if any) touching `tiles` tiles; yields
    /// are counted in `counters`.
    pub fn new(
        store: &'s CollectionStore,
        scene_id: &str,
        time_ms: i64,
        fingerprint: Option<&str>,
        replace: bool,
        tiles: usize,
        counters: Arc<Counters>,
    ) -> Self {
        Self {
            store,
            scene_id: scene_id.to_string(),
            time_ms,
            fingerprint: fingerprint.map(str::to_string),
            baseline: None,
            replace,
            small: tiles <= TILE_GROUP,
            pending: Vec::new(),
            pending_bytes: 0,
            pending_limit: MAX_PENDING_BYTES,
            early: None,
            appended: 0,
            yielded: false,
            writer: None,
            counters,
            remote: store.remote.get().map(|catalog| RemotePut {
                catalog: catalog.clone(),
                rows: Vec::new(),
                held: HashMap::new(),
                held_bytes: 0,
                checked: false,
                replacing: false,
                committed: false,
            }),
        }
    }

    /// Records the product's processing baseline with the scene.
    pub fn with_baseline(mut self, baseline: Option<String>) -> Self {
        self.baseline = baseline;
        self
    }

    /// Holds at most `bytes` of encoded tiles before appending them (default
    /// [`MAX_PENDING_BYTES`]).
    pub fn with_pending_limit(mut self, bytes: usize) -> Self {
        self.pending_limit = bytes;
        self
    }

    /// Encoded bytes held until they are appended or committed.
    pub fn held_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// How long the caller may wait for the next tile before calling
    /// [`SceneCommit::poll`]; `None`: as long as it takes.
    pub fn wait_limit(&self) -> Option<Duration> {
        self.early.is_some().then_some(YIELD_CHECK)
    }

    /// One tile's observations, `k` its position in the scene's plan.
    pub fn add(&mut self, k: usize, observations: Vec<Encoded>) -> Result<Step> {
        if self.remote.is_some() {
            return self.add_remote(observations);
        }
        self.pending_bytes += observations.iter().map(|o| o.bytes.1.len()).sum::<usize>();
        self.pending.push((k, observations));
        let step = self.poll()?;
        if step == Step::Continue && self.pending_bytes > self.pending_limit {
            return self.hold_less();
        }
        Ok(step)
    }

    /// Past [`MAX_PENDING_BYTES`]: the scene goes on as a large one (its
    /// early writer, if any, keeps what it appended and appends the rest).
    fn hold_less(&mut self) -> Result<Step> {
        self.small = false;
        if let Some(w) = self.early.take() {
            self.writer = Some(w);
            (self.appended, self.pending_bytes) = (0, 0);
            self.pending.clear();
            return Ok(Step::Continue);
        }
        if !self.flush()? {
            return Ok(Step::Duplicate);
        }
        Ok(Step::Continue)
    }

    /// Applies the writer policy: takes, uses or lets go of the early
    /// writer, or appends a full group of a large scene.
    pub fn poll(&mut self) -> Result<Step> {
        if self.remote.is_some() {
            return Ok(Step::Continue);
        }
        if self.small && !self.yielded {
            if self.early.as_ref().is_some_and(|w| w.contended()) {
                // Counted first: the waiting writer may commit and answer
                // (and its client ask `health`) as soon as the lock is free.
                self.counters.early_writers_yielded.fetch_add(1, Ordering::Relaxed);
                // Dropping the writer undoes its appends before the waiting
                // writer gets the lock.
                (self.early, self.appended, self.yielded) = (None, 0, true);
                return Ok(Step::Continue);
            }
            if self.early.is_none() {
                self.early = self.store.try_begin_scene(&self.scene_id, self.time_ms, self.fingerprint.as_deref(), self.replace)?;
                if let Some(w) = self.early.as_mut() {
                    w.baseline = self.baseline.clone();
                }
            }
            if let Some(w) = self.early.as_mut() {
                for (_, obs) in &self.pending[self.appended..] {
                    w.append(obs)?;
                }
                if self.appended < self.pending.len() {
                    w.start_sync()?;
                }
                self.appended = self.pending.len();
            }
        } else if !self.small && self.pending.len() >= TILE_GROUP && !self.flush()? {
            return Ok(Step::Duplicate);
        }
        Ok(Step::Continue)
    }

    /// Appends the pending tiles in plan order; false if the scene turned
    /// out to be committed already.
    fn flush(&mut self) -> Result<bool> {
        self.pending.sort_by_key(|(k, _)| *k);
        self.pending_bytes = 0;
        let observations: Vec<Encoded> = self.pending.drain(..).flat_map(|(_, o)| o).collect();
        let w = match &mut self.writer {
            Some(w) => w,
            None => match self.store.begin_scene(&self.scene_id, self.time_ms, self.fingerprint.as_deref(), self.replace)? {
                Some(mut w) => {
                    w.baseline = self.baseline.clone();
                    self.writer.insert(w)
                }
                None => return Ok(false),
            },
        };
        w.append(&observations)?;
        Ok(true)
    }

    /// Appends what is left and commits the scene (see
    /// [`SceneWriter::commit`]); `duplicate` if it was there already.
    pub fn commit(mut self) -> Result<AppendOutcome> {
        if let Some(put) = self.remote.take() {
            return self.commit_remote(put);
        }
        let done = match self.early.take() {
            Some(w) => {
                debug_assert_eq!(self.appended, self.pending.len(), "an early writer appends every tile as it comes");
                w
            }
            None => {
                if !self.flush()? {
                    return Ok(AppendOutcome { duplicate: true, ..Default::default() });
                }
                self.writer.take().ok_or_else(|| Error::Internal("no scene writer".into()))?
            }
        };
        done.commit()
    }
}

impl SceneCommit<'_> {
    /// Stores a tile's observations as new objects (object storage).
    fn add_remote(&mut self, observations: Vec<Encoded>) -> Result<Step> {
        let Some(put) = self.remote.as_mut() else { return Err(Error::Internal("no object store".into())) };
        if !put.checked {
            match self.store.check_scene(&self.scene_id, self.time_ms, self.fingerprint.as_deref(), self.replace)? {
                SceneStatus::Retry => return Ok(Step::Duplicate),
                SceneStatus::New => {}
                SceneStatus::Replaces => put.replacing = true,
            }
            put.checked = true;
        }
        let month = Month::of_ms(self.time_ms).ok_or_else(|| Error::invalid("acquired_at", self.time_ms, "out of the representable range"))?;
        let mut rows = Vec::with_capacity(observations.len());
        let mut items = Vec::with_capacity(observations.len());
        for o in observations {
            let (schema_len, bytes) = o.bytes;
            rows.push(CatalogRow {
                scene_id: o.scene_id,
                time_ms: o.time_ms,
                tile: o.tile.to_string(),
                month: month.to_string(),
                band: o.band.clone(),
                object: String::new(),
                bytes: bytes.len() as u64,
                schema_len: schema_len as u64,
                crc: crc32fast::hash(&bytes),
                stats: o.stats,
                fingerprint: self.fingerprint.clone(),
                baseline: self.baseline.clone(),
            });
            items.push((o.tile.to_string(), month.to_string(), o.band, bytes::Bytes::from(bytes)));
        }
        let kept: Vec<bytes::Bytes> = items.iter().map(|i| i.3.clone()).collect();
        let keys = put.catalog.put_observations(items)?;
        for ((mut row, key), bytes) in rows.into_iter().zip(keys).zip(kept) {
            if put.held_bytes + bytes.len() <= MAX_PENDING_BYTES {
                put.held_bytes += bytes.len();
                put.held.insert(key.clone(), bytes);
            }
            row.object = key;
            put.rows.push(row);
        }
        Ok(Step::Continue)
    }

    /// Commits the scene's objects to the catalog table, then applies the
    /// table's new commits (this one included) to the local copy.
    fn commit_remote(self, mut put: RemotePut) -> Result<AppendOutcome> {
        if !put.checked && self.store.has_scene(&self.scene_id) {
            return Ok(AppendOutcome { duplicate: true, ..Default::default() });
        }
        let bytes: u64 = put.rows.iter().map(|r| r.bytes).sum();
        self.store.check_quota(bytes)?;
        let committed =
            if put.replacing { put.catalog.replace_scene(&self.scene_id, &put.rows)? } else { put.catalog.commit_scene(&self.scene_id, &put.rows)? };
        match committed {
            Commit::At(_) => {}
            Commit::Duplicate => return Ok(AppendOutcome { duplicate: true, ..Default::default() }),
            Commit::Failed(e) => return Err(e),
            Commit::Unknown(e) => {
                put.committed = true;
                return Err(e);
            }
        }
        put.committed = true;
        let mut outcome = AppendOutcome { duplicate: false, observations: put.rows.len() as u64, bytes, tiles: Vec::new() };
        for r in &put.rows {
            if let Ok(t) = r.tile.parse::<TileId>() {
                if !outcome.tiles.contains(&t) {
                    outcome.tiles.push(t);
                }
            }
        }
        // Committed and durable: a failure to copy it here now is repaired
        // by the next refresh, and must not make the client send it again.
        if let Err(e) = self.store.catch_up_with(&std::mem::take(&mut put.held)) {
            tracing::warn!(collection = %self.store.meta.name, scene = %self.scene_id, error = %e, "applying committed scenes to the local copy failed; the next refresh retries");
        }
        Ok(outcome)
    }
}

impl CollectionStore {
    /// `Exhausted` if a scene of `bytes` would take the collection past
    /// its quota.
    fn check_quota(&self, bytes: u64) -> Result<()> {
        let Some(quota) = self.fs_sync.quota_bytes else { return Ok(()) };
        let total = self.stored_bytes();
        if total.saturating_add(bytes) <= quota {
            return Ok(());
        }
        Err(Error::Exhausted(format!(
            "collection {:?} holds {} MiB and this scene adds {} MiB, past the quota of {} MiB per collection (--quota-mb-per-collection): nothing of it was kept; delete scenes or compact first",
            self.meta.name,
            total >> 20,
            bytes.div_ceil(1 << 20),
            quota >> 20
        )))
    }

    /// On object storage: removes objects no committed entry names, older
    /// than `older_than`, after applying every commit; `(objects, bytes)`.
    pub fn gc(&self, older_than: Duration) -> Result<(u64, u64)> {
        let Some(catalog) = self.remote.get() else { return Ok((0, 0)) };
        self.catch_up()?;
        catalog.gc(older_than)
    }

    /// Deletes rows from a warehouse on object storage, as [`Self::delete`]
    /// does locally: one catalog commit rewriting the table files of the
    /// scenes hit, applied here before it returns. `whole`: the scene
    /// named goes whole. `predicate` describes the rows for the log.
    pub fn delete_shared(
        &self,
        chunk_filter: impl Fn(&ChunkKey) -> bool,
        remove: impl Fn(&ChunkKey, i64, &str) -> bool,
        whole: Option<&str>,
        predicate: String,
    ) -> Result<RewriteOutcome> {
        let catalog = self.shared()?;
        self.catch_up()?;
        // What the delete takes, counted as the local one counts it.
        let mut out = RewriteOutcome::default();
        let mut scenes: BTreeSet<String> = whole.iter().map(|s| s.to_string()).collect();
        self.visit_chunks(|k, e| {
            if !chunk_filter(k) {
                return;
            }
            let hits: Vec<&Arc<str>> = e.scenes.iter().zip(&e.times).filter(|(s, t)| remove(k, **t, s)).map(|(s, _)| s).collect();
            if hits.is_empty() {
                return;
            }
            out.rows_removed += hits.len();
            if hits.len() == e.scenes.len() {
                out.chunks_removed += 1;
            } else {
                out.chunks_rewritten += 1;
            }
            scenes.extend(hits.into_iter().map(|s| s.to_string()));
        });
        let scenes: Vec<String> = scenes.into_iter().collect();
        let keep = |r: &CatalogRow| !r.key().is_some_and(|k| chunk_filter(&k) && remove(&k, r.time_ms, &r.scene_id));
        match catalog.rewrite(&scenes, keep, whole.is_some(), RewriteKind::Delete { predicate })? {
            Some((_, gone)) => out.scenes_removed = gone,
            None => return Ok(RewriteOutcome::default()),
        }
        self.catch_up()?;
        Ok(out)
    }

    /// Compacts a warehouse on object storage, as [`Self::compact`] does
    /// locally: one catalog commit merging the table files of the scenes
    /// with rows in `tiles` (all: every scene), on whose application every
    /// server compacts the same chunks. Applied here before it returns.
    pub fn compact_shared(&self, tiles: Option<&HashSet<TileId>>) -> Result<RewriteOutcome> {
        let catalog = self.shared()?;
        self.catch_up()?;
        let chosen = |t: &TileId| tiles.is_none_or(|set| set.contains(t));
        let needs = self.needs_compaction().into_iter().filter(|k| chosen(&k.tile)).count();
        let mut scenes: BTreeSet<String> = BTreeSet::new();
        self.visit_chunks(|k, e| {
            if chosen(&k.tile) {
                scenes.extend(e.scenes.iter().map(|s| s.to_string()));
            }
        });
        let scenes: Vec<String> = scenes.into_iter().collect();
        if needs == 0 && catalog.file_count(&scenes) <= 1 {
            return Ok(RewriteOutcome::default());
        }
        let mut names: Vec<String> = tiles.into_iter().flatten().map(|t| t.to_string()).collect();
        names.sort();
        catalog.rewrite(&scenes, |_| true, false, RewriteKind::Compact { tiles: names })?;
        self.catch_up()?;
        Ok(RewriteOutcome { chunks_rewritten: needs, ..Default::default() })
    }

    fn shared(&self) -> Result<&Arc<RemoteCatalog>> {
        self.remote.get().ok_or_else(|| Error::Internal("not on object storage".into()))
    }

    /// Applies the catalog table's commits this server has not applied yet
    /// to its local copy, one at a time in version order, so that every
    /// server's chunk files hold the same bytes. A no-op for a local
    /// warehouse. Blocking.
    pub fn catch_up(&self) -> Result<()> {
        self.catch_up_with(&HashMap::new())
    }

    /// [`Self::catch_up`] with some objects' bytes at hand (`held`, by
    /// key: what this server just stored), not fetched again.
    fn catch_up_with(&self, held: &HashMap<String, bytes::Bytes>) -> Result<()> {
        let Some(catalog) = self.remote.get() else { return Ok(()) };
        let mut applied = lock(&catalog.applied);
        for entry in catalog.commits_after(*applied)? {
            let LogEntry { version, added, removed, compacted } = entry;
            // Rows of removed table files that no added file names again
            // leave, by the same rewrite a local delete makes (so every
            // copy stays alike); rows named again stay as they are.
            let named_again: HashSet<&str> = added.iter().flat_map(|(_, rows)| rows.iter().map(|r| r.object.as_str())).collect();
            let mut leaving: HashMap<ChunkKey, HashSet<&str>> = HashMap::new();
            for (file, rows) in &removed {
                catalog.forget_file(file);
                for r in rows.iter().filter(|r| !named_again.contains(r.object.as_str())) {
                    let key = r.key().ok_or_else(|| Error::Unavailable(format!("catalog version {version} names a bad chunk: {r:?}")))?;
                    leaving.entry(key).or_default().insert(r.scene_id.as_str());
                }
            }
            if !leaving.is_empty() {
                self.delete(|k| leaving.contains_key(k), |k, _, s| leaving.get(k).is_some_and(|set| set.contains(s)), &[])?;
            }
            let known: HashSet<&str> = removed.iter().flat_map(|(_, rows)| rows.iter().map(|r| r.object.as_str())).collect();
            for (file, rows) in &added {
                catalog.record_file(file, rows.iter().map(|r| r.scene_id.as_str()));
                let mut scenes: Vec<(&str, Vec<&CatalogRow>)> = Vec::new();
                for row in rows.iter().filter(|r| !known.contains(r.object.as_str())) {
                    match scenes.iter_mut().find(|(id, _)| *id == row.scene_id) {
                        Some((_, list)) => list.push(row),
                        None => scenes.push((&row.scene_id, vec![row])),
                    }
                }
                for (scene_id, rows) in scenes {
                    catalog.record(version, scene_id, rows.iter().map(|r| r.object.clone()));
                    let first = rows[0];
                    let Some(mut writer) = self.begin_scene(scene_id, first.time_ms, first.fingerprint.as_deref(), false)? else { continue };
                    writer.baseline = first.baseline.clone();
                    writer.enforce_quota = false;
                    let fetched = catalog.fetch_all(&rows, held)?;
                    let encoded = rows.iter().zip(&fetched).map(|(r, b)| Encoded::stored(r, b)).collect::<Result<Vec<_>>>()?;
                    writer.append(&encoded)?;
                    writer.commit()?;
                }
            }
            if let Some(tiles) = compacted {
                let set: HashSet<TileId> = tiles
                    .iter()
                    .map(|t| t.parse())
                    .collect::<std::result::Result<_, _>>()
                    .map_err(|_| Error::Unavailable(format!("catalog version {version} compacts a bad tile: {tiles:?}")))?;
                self.compact(if set.is_empty() { None } else { Some(&set) })?;
            }
            *applied = version;
            catalog.current.store(version, Ordering::Release);
        }
        Ok(())
    }
}
