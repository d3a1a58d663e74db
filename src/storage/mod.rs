//! The warehouse: collections, their chunk files and their catalogs
//! (DESIGN §2; the design is explained in `docs/storage.md`).
//!
//! This is the storage seam: ingest hands it whole scenes, queries ask it
//! which chunks exist and read them, actions delete and compact. Each
//! collection's catalog lives in memory and in its catalog log, which is
//! replayed at start; queries never walk directories.
//!
//! Write path of a scene, under the collection's writer lock:
//! 1. append one batch to each touched chunk at its committed length;
//! 2. make those files and any new directory durable: an fdatasync each
//!    (in parallel), or for commits of many files one `syncfs` of the
//!    warehouse's file system (`fs_sync`);
//! 3. append one record to the catalog log and fsync it: the commit point;
//! 4. publish the new lengths to readers at once.
//!
//! Rewrites (delete, compaction) write a new generation of a chunk file
//! beside the old one and commit it the same way; the old file is removed
//! when the last reader holding it lets go.

pub mod chunk;
pub mod fs_sync;
pub mod log;
pub mod paths;
pub mod snapshot;

pub use fs_sync::{SyncMode, WriteOptions};

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use arrow_array::cast::AsArray;
use arrow_array::{ArrayRef, BooleanArray, RecordBatch, UInt32Array};
use arrow_schema::SchemaRef;

use crate::collection::{Collection, DType};
use crate::error::{Error, Result};
use crate::grid::TileId;
use log::{Appended, CatalogLog, ChunkRef, PixelStats, Record, Rewritten};
pub use paths::{Month, WarehousePaths};

/// The GeoParquet catalog snapshot is rewritten in the background after
/// this many commits. (Chunks are not compacted automatically: reads pick
/// the batches they need by offset whatever the order, and a rewrite costs
/// the whole chunk; the load test saw automatic compaction every 64 appends
/// take the server from 0.4 to 3.3 GiB resident.)
pub const SNAPSHOT_EVERY: u64 = 64;

/// One chunk: (tile, month, band) of a collection.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkKey {
    pub tile: TileId,
    pub month: Month,
    pub band: String,
}

impl ChunkKey {
    fn to_ref(&self) -> ChunkRef {
        ChunkRef { tile: self.tile.to_string(), month: self.month.to_string(), band: self.band.clone() }
    }

    fn from_ref(r: &ChunkRef) -> Result<Self> {
        let bad = |what: &str| Error::Internal(format!("catalog log names a bad {what}: {r:?}"));
        Ok(ChunkKey { tile: r.tile.parse().map_err(|_| bad("tile"))?, month: Month::parse(&r.month).ok_or_else(|| bad("month"))?, band: r.band.clone() })
    }
}

/// A chunk file generation. Readers hold it while they read; once a rewrite
/// supersedes it, the last holder to let go removes the file.
#[derive(Debug)]
pub struct ChunkFile {
    pub path: PathBuf,
    pub gen: u32,
    obsolete: AtomicBool,
    /// Where its batches sit, scanned from the message headers as far as
    /// readers needed (a generation's committed prefix never changes).
    index: Mutex<FileIndex>,
    /// The file mapped into memory for point reads (remapped when readers
    /// need a longer prefix); let go when newer ones fill [`KEPT_POINT_MAPS`].
    map: Arc<MapSlot>,
    /// The same for DoGet ranges ([`KEPT_RANGE_MAPS`]).
    range_map: Arc<MapSlot>,
}

type MapSlot = Mutex<Option<Arc<memmap2::Mmap>>>;

/// Chunk-file mappings kept between reads, across the server. Each mapping
/// is one kernel memory area and a process gets 65 530 of them
/// (`vm.max_map_count`), while a warehouse easily holds more chunk files
/// (1 000 tiles x 12 months x 6 bands): kept for ever, mappings would make
/// every later mmap fail once reads had touched that many files. Point
/// reads and DoGet ranges keep separate mappings (below), up to this many
/// each.
const KEPT_MAPS: usize = 4096;

/// Mappings point reads keep: they touch one page per observation, so the
/// count bounds them.
static KEPT_POINT_MAPS: Mutex<KeptMaps> = Mutex::new(KeptMaps::new(KEPT_MAPS, u64::MAX, None));

/// Bytes of chunk files kept mapped for DoGet ranges, at most. A range is
/// read whole, and its pages stay in the server's resident set while the
/// mapping is kept (page cache shared with the kernel's, not the server's
/// own memory), so this bounds what these mappings add to it.
const KEPT_RANGE_BYTES: u64 = 128 << 20;

/// How long DoGet ranges keep a mapping: long enough for repeated reads of
/// a chunk to share it, short enough that an idle server lets its pages go
/// (a thread sweeps every second; a chunk read all the time is mapped again
/// this often, which costs nothing measurable).
const KEPT_RANGE_AGE: std::time::Duration = std::time::Duration::from_secs(5);

/// Mappings DoGet ranges keep.
static KEPT_RANGE_MAPS: Mutex<KeptMaps> = Mutex::new(KeptMaps::new(KEPT_MAPS, KEPT_RANGE_BYTES, Some(KEPT_RANGE_AGE)));

/// Starts (once) the thread that lets go of range mappings older than
/// [`KEPT_RANGE_AGE`]; without it (it could not start) they go only when
/// pushed out.
fn sweep_range_maps() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let sweep = || loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
            KEPT_RANGE_MAPS.lock().unwrap_or_else(|p| p.into_inner()).let_go(std::time::Instant::now());
        };
        if let Err(e) = std::thread::Builder::new().name("unmap".into()).spawn(sweep) {
            tracing::warn!(error = %e, "cannot start the thread that lets go of idle chunk mappings");
        }
    });
}

/// Slots given a mapping, oldest first, with the mapping's length; past
/// `limit` slots or `budget` bytes the oldest slot is emptied (readers that
/// hold its mapping keep it until they finish, and the next read maps the
/// file again).
struct KeptMaps {
    limit: usize,
    budget: u64,
    /// How long a mapping is kept at most; `None`: until pushed out.
    max_age: Option<std::time::Duration>,
    /// Sum of the lengths in `slots`.
    bytes: u64,
    /// Each slot, the length it was given and when.
    slots: VecDeque<(Weak<MapSlot>, u64, std::time::Instant)>,
}

impl KeptMaps {
    const fn new(limit: usize, budget: u64, max_age: Option<std::time::Duration>) -> Self {
        Self { limit, budget, max_age, bytes: 0, slots: VecDeque::new() }
    }

    /// Counts `slot`, which has just been given a mapping of `len` bytes (a
    /// longer remap is counted again; its shorter one's entry then leaves
    /// the slot alone). Called with no slot locked (it locks the slots it
    /// empties).
    fn keep(&mut self, slot: &Arc<MapSlot>, len: u64) {
        let now = std::time::Instant::now();
        self.slots.push_back((Arc::downgrade(slot), len, now));
        self.bytes += len;
        self.let_go(now);
    }

    /// Empties the oldest slots while there are more than `limit`, more than
    /// `budget` bytes (the newest stays even alone over it), or older ones
    /// than `max_age` at `now`.
    fn let_go(&mut self, now: std::time::Instant) {
        let expired = |kept_at: std::time::Instant| self.max_age.is_some_and(|age| now.saturating_duration_since(kept_at) > age);
        while let Some(&(_, _, kept_at)) = self.slots.front() {
            if !(self.slots.len() > self.limit || (self.bytes > self.budget && self.slots.len() > 1) || expired(kept_at)) {
                break;
            }
            let Some((old, old_len, _)) = self.slots.pop_front() else { break };
            self.bytes -= old_len;
            if let Some(old) = old.upgrade() {
                let mut map = old.lock().unwrap_or_else(|p| p.into_inner());
                if map.as_ref().is_some_and(|m| m.len() as u64 == old_len) {
                    *map = None;
                }
            }
        }
    }
}

#[derive(Debug, Default)]
struct FileIndex {
    schema_end: Option<u64>,
    scanned: u64,
    batches: Vec<chunk::BatchLoc>,
}

impl ChunkFile {
    fn new(path: PathBuf, gen: u32) -> Arc<Self> {
        Arc::new(Self { path, gen, obsolete: AtomicBool::new(false), index: Mutex::new(FileIndex::default()), map: Arc::default(), range_map: Arc::default() })
    }

    /// The file, opened for mapping its first `len` bytes: a file found
    /// shorter (cut by something else than this server) is an error here,
    /// not a SIGBUS when the mapping is read.
    fn open_at_least(&self, len: u64) -> Result<File> {
        let f = File::open(&self.path).map_err(Error::io(&self.path))?;
        let size = f.metadata().map_err(Error::io(&self.path))?.len();
        if size < len {
            return Err(Error::Corrupt { path: self.path.clone(), reason: format!("{size} bytes on disk, {len} committed") });
        }
        Ok(f)
    }

    /// The file's first `len` bytes or more, mapped into memory for point
    /// reads.
    pub fn mapped(&self, len: u64) -> Result<Arc<memmap2::Mmap>> {
        // Point reads touch one page per observation: no read-ahead.
        self.kept_map(&self.map, &KEPT_POINT_MAPS, len, memmap2::Advice::Random)
    }

    /// The file's first `len` bytes or more from `slot`'s mapping, or from
    /// a new one (given `advice` and counted in `kept`).
    fn kept_map(&self, slot: &Arc<MapSlot>, kept: &Mutex<KeptMaps>, len: u64, advice: memmap2::Advice) -> Result<Arc<memmap2::Mmap>> {
        let mut map = slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = map.as_ref().filter(|m| m.len() as u64 >= len) {
            // A file cut behind the server's back since it was mapped is an
            // error here, not a SIGBUS when the pages are read (one stat).
            let size = fs::metadata(&self.path).map_err(Error::io(&self.path))?.len();
            if size < len {
                return Err(Error::Corrupt { path: self.path.clone(), reason: format!("{size} bytes on disk, {len} committed") });
            }
            return Ok(m.clone());
        }
        let f = self.open_at_least(len)?;
        // SAFETY: only this server writes warehouse files. A generation's
        // committed prefix is never rewritten or cut while the server runs
        // (appends go past it, rollbacks cut only past it, rewrites make a
        // new generation); only `len` committed bytes are mapped.
        let m = unsafe { memmap2::MmapOptions::new().len(len as usize).map(&f) }.map_err(Error::io(&self.path))?;
        if let Err(e) = m.advise(advice) {
            tracing::debug!(error = %e, ?advice, "madvise failed");
        }
        let m = Arc::new(m);
        *map = Some(m.clone());
        drop(map);
        kept.lock().unwrap_or_else(|p| p.into_inner()).keep(slot, len);
        Ok(m)
    }

    /// Bytes `from..to` of the committed prefix `len`, served from the
    /// file's kept range mapping (no read copy); the kernel is asked to
    /// read the range ahead. A mapping per call instead cost the server a
    /// third more CPU per DoGet (setting up and tearing down the pages'
    /// table entries: 54.5-64.0 against 40.0-47.5 ms per 107 MB, rounds
    /// 83-89 against 73-81 ms, side by side on 2026-12-02). The pages read
    /// stay in the resident set while the mapping is kept
    /// ([`KEPT_RANGE_BYTES`]).
    pub fn range(&self, len: u64, from: u64, to: u64) -> Result<bytes::Bytes> {
        struct Kept(Arc<memmap2::Mmap>, std::ops::Range<usize>);
        impl AsRef<[u8]> for Kept {
            fn as_ref(&self) -> &[u8] {
                &self.0[self.1.clone()]
            }
        }
        if from > to || to > len {
            return Err(Error::Corrupt { path: self.path.clone(), reason: format!("range {from}..{to} past the committed {len} bytes") });
        }
        if from == to {
            return Ok(bytes::Bytes::new());
        }
        sweep_range_maps();
        let map = self.kept_map(&self.range_map, &KEPT_RANGE_MAPS, len, memmap2::Advice::Normal)?;
        if let Err(e) = map.advise_range(memmap2::Advice::WillNeed, from as usize, (to - from) as usize) {
            tracing::debug!(error = %e, "madvise(MADV_WILLNEED) failed");
        }
        Ok(bytes::Bytes::from_owner(Kept(map, from as usize..to as usize)))
    }

    /// The end of the schema message and the batches of the committed
    /// prefix `len`; only bytes not scanned before are scanned.
    pub fn batches(&self, len: u64) -> Result<(u64, Vec<chunk::BatchLoc>)> {
        let mut ix = self.index.lock().unwrap_or_else(|p| p.into_inner());
        if ix.scanned < len {
            let (schema_end, more) = chunk::scan(&self.path, ix.scanned, len)?;
            ix.schema_end = ix.schema_end.or(schema_end);
            ix.batches.extend(more);
            ix.scanned = len;
        }
        let schema_end = ix.schema_end.ok_or_else(|| Error::Corrupt { path: self.path.clone(), reason: "no schema message".into() })?;
        let n = ix.batches.partition_point(|b| b.end <= len);
        Ok((schema_end, ix.batches[..n].to_vec()))
    }

    /// The batches holding at least one row that `keep` (row index in file
    /// order) selects, with the index of their first row.
    pub fn batches_with(&self, len: u64, keep: impl Fn(usize) -> bool) -> Result<(u64, Vec<(usize, chunk::BatchLoc)>)> {
        let (schema_end, all) = self.batches(len)?;
        let mut first = 0;
        let mut out = Vec::new();
        for b in all {
            if (first..first + b.rows).any(&keep) {
                out.push((first, b));
            }
            first += b.rows;
        }
        Ok((schema_end, out))
    }
}

impl Drop for ChunkFile {
    fn drop(&mut self) {
        if self.obsolete.load(Ordering::Acquire) {
            if let Err(e) = fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "removing a superseded chunk file");
            }
        }
    }
}

/// What the catalog knows of a chunk.
#[derive(Debug, Clone)]
pub struct ChunkEntry {
    pub file: Arc<ChunkFile>,
    /// Committed byte length: readers read this prefix, writers append here.
    pub len: u64,
    /// Acquisition time and scene of every row, in file order.
    pub times: Vec<i64>,
    pub scenes: Vec<Arc<str>>,
    pub stats: PixelStats,
    /// Batches appended since the file was last written whole.
    pub appends: u32,
}

impl ChunkEntry {
    pub fn count_in(&self, start: Option<i64>, end: Option<i64>) -> usize {
        self.times.iter().filter(|t| start.is_none_or(|s| **t >= s) && end.is_none_or(|e| **t < e)).count()
    }

    /// The end of the schema message and the committed batches holding at
    /// least one row that `keep` (row index in file order) selects, with
    /// the index of their first row.
    pub fn batches_with(&self, keep: impl Fn(usize) -> bool) -> Result<(u64, Vec<(usize, chunk::BatchLoc)>)> {
        self.file.batches_with(self.len, keep)
    }

    /// The committed batches at `locs`, decoded.
    pub fn read_batches(&self, schema_end: u64, locs: &[chunk::BatchLoc]) -> Result<Vec<RecordBatch>> {
        chunk::read_batches(&self.file.path, schema_end, locs)
    }

    /// Committed bytes `from..to` as stored, for sending without a copy.
    pub fn range(&self, from: u64, to: u64) -> Result<bytes::Bytes> {
        self.file.range(self.len, from, to)
    }

    /// The error for stored bytes that are not what was written.
    pub fn corrupt(&self, reason: String) -> Error {
        Error::Corrupt { path: self.file.path.clone(), reason }
    }
}

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
        let bytes = chunk::encode(&batch)?;
        Ok(Self { tile: obs.tile, band: obs.band, scene_id: scene_id.to_string(), time_ms, stats, bytes })
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

/// One pixel of chosen chunk rows: row indices (file order), their values
/// as one array, and their validity.
pub type PixelRows = (Vec<usize>, ArrayRef, Vec<bool>);

/// What appending a scene did.
#[derive(Debug, Clone, Default)]
pub struct AppendOutcome {
    pub duplicate: bool,
    pub observations: u64,
    pub bytes: u64,
    pub tiles: Vec<TileId>,
}

/// What a delete or compaction did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RewriteOutcome {
    pub chunks_rewritten: usize,
    pub chunks_removed: usize,
    pub rows_removed: usize,
    pub scenes_removed: Vec<String>,
}

#[derive(Default)]
struct Index {
    chunks: BTreeMap<ChunkKey, ChunkEntry>,
    scenes: HashSet<String>,
    /// Chunks a delete emptied, with the generation a new chunk of the same
    /// key must start from: a generation's file name is never reused, so a
    /// reader still holding a removed generation cannot delete (or read) a
    /// newer file.
    retired: HashMap<ChunkKey, u32>,
}

impl Index {
    /// Applies one committed record (replay and live commits share this).
    fn apply(&mut self, record: &Record, paths: &WarehousePaths, collection: &str) -> Result<Vec<Arc<ChunkFile>>> {
        let mut superseded = Vec::new();
        match record {
            Record::Scene { scene_id, time_ms, chunks } => {
                self.scenes.insert(scene_id.clone());
                let scene: Arc<str> = Arc::from(scene_id.as_str());
                for a in chunks {
                    let key = ChunkKey::from_ref(&a.chunk)?;
                    let e = self.chunks.entry(key.clone()).or_insert_with(|| ChunkEntry {
                        file: ChunkFile::new(paths.chunk(collection, key.tile, key.month, &key.band, a.gen), a.gen),
                        len: 0,
                        times: Vec::new(),
                        scenes: Vec::new(),
                        stats: PixelStats::default(),
                        appends: 0,
                    });
                    e.len = a.len;
                    e.times.push(*time_ms);
                    e.scenes.push(scene.clone());
                    e.stats.merge(&a.stats);
                    e.appends += 1;
                }
            }
            Record::Rewrite { chunks, removed_scenes, .. } => {
                for r in chunks {
                    let key = ChunkKey::from_ref(&r.chunk)?;
                    let old = if r.len == 0 {
                        self.retired.insert(key.clone(), r.gen);
                        self.chunks.remove(&key)
                    } else {
                        let entry = ChunkEntry {
                            file: ChunkFile::new(paths.chunk(collection, key.tile, key.month, &key.band, r.gen), r.gen),
                            len: r.len,
                            times: r.rows.iter().map(|(t, _)| *t).collect(),
                            scenes: r.rows.iter().map(|(_, s)| Arc::from(s.as_str())).collect(),
                            stats: r.stats,
                            appends: 0,
                        };
                        self.chunks.insert(key, entry)
                    };
                    if let Some(old) = old {
                        if old.file.gen != r.gen || r.len == 0 {
                            superseded.push(old.file);
                        }
                    }
                }
                for s in removed_scenes {
                    self.scenes.remove(s);
                }
            }
        }
        Ok(superseded)
    }
}

/// A collection and its catalog.
pub struct CollectionStore {
    pub meta: Collection,
    paths: WarehousePaths,
    /// The writer: serialises commits of this collection (an append must
    /// start at the committed length; the log is appended in commit order).
    /// Held only inside blocking tasks, never across `.await`.
    writer: Mutex<CatalogLog>,
    /// The warehouse's file system, synced whole for large commits.
    fs_sync: Arc<fs_sync::FsSync>,
    /// How many are waiting for the writer: a scene that took it early,
    /// while its rows still stream in, lets go when someone waits.
    writers_waiting: AtomicUsize,
    /// The catalog. Readers clone the entries they need and let go; a
    /// commit's entries are published under one write lock, so readers see
    /// all of a scene or none of it.
    index: RwLock<Index>,
    /// Set while a background snapshot is written (one at a time).
    snapshotting: AtomicBool,
    /// Commits since the last snapshot.
    since_snapshot: AtomicU64,
}

/// A read lock that survives a panicked holder (every update is applied
/// whole under the lock, so the data stays consistent).
fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Appended chunk files a scene holds open before syncing and closing them.
const SYNC_BATCH: usize = 128;

/// Threads that fsync for every writer. The disk, not the CPU, is the
/// limit, so several syncs run at once; made once, they cost no thread
/// start per sync (starting threads per sync was a tenth of a raw put's
/// writer CPU). `None` if they could not be started: syncs run inline.
fn sync_pool() -> Option<&'static crate::pool::Pool> {
    static POOL: std::sync::OnceLock<Option<crate::pool::Pool>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| crate::pool::Pool::try_new("fsync", 8).ok()).as_ref()
}

/// fsyncs handed to the sync threads, waited for together.
struct Syncs {
    tx: std::sync::mpsc::Sender<Result<()>>,
    rx: std::sync::mpsc::Receiver<Result<()>>,
    pending: usize,
}

impl Syncs {
    fn new() -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        Self { tx, rx, pending: 0 }
    }

    /// Starts syncing `files` (each closed once synced).
    fn start(&mut self, files: Vec<(PathBuf, File)>) {
        for (path, file) in files {
            let tx = self.tx.clone();
            let job = move || {
                let _ = tx.send(file.sync_data().map_err(Error::io(path)));
            };
            self.pending += 1;
            match sync_pool() {
                Some(pool) => pool.spawn(job),
                None => job(),
            }
        }
    }

    /// Waits for every sync started; the first failure, if any.
    fn wait(&mut self) -> Result<()> {
        let mut first = Ok(());
        while self.pending > 0 {
            let r = self.rx.recv().map_err(|_| Error::Internal("an fsync thread went away".into()))?;
            self.pending -= 1;
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

/// fsyncs files on the sync threads and waits for them.
fn sync_all(files: Vec<(PathBuf, File)>) -> Result<()> {
    let mut syncs = Syncs::new();
    syncs.start(files);
    syncs.wait()
}

impl CollectionStore {
    fn open(paths: &WarehousePaths, meta: Collection, fs_sync: Arc<fs_sync::FsSync>) -> Result<Self> {
        let name = meta.name.clone();
        let (log, records) = CatalogLog::open(&paths.catalog_log(&name))?;
        let mut index = Index::default();
        for r in &records {
            index.apply(r, paths, &name)?;
        }
        let store = Self {
            meta,
            paths: paths.clone(),
            writer: Mutex::new(log),
            fs_sync,
            writers_waiting: AtomicUsize::new(0),
            index: RwLock::new(index),
            snapshotting: AtomicBool::new(false),
            since_snapshot: AtomicU64::new(0),
        };
        store.recover_files()?;
        store.write_snapshot()?;
        Ok(store)
    }

    /// Makes the chunk files agree with the catalog after a restart: cuts
    /// uncommitted tails, removes files no commit refers to.
    fn recover_files(&self) -> Result<()> {
        let idx = read(&self.index);
        for e in idx.chunks.values() {
            let path = &e.file.path;
            let on_disk = fs::metadata(path).map_err(Error::io(path))?.len();
            if on_disk < e.len {
                return Err(Error::Corrupt { path: path.clone(), reason: format!("holds {on_disk} bytes but {} were committed", e.len) });
            }
            if on_disk > e.len {
                tracing::warn!(path = %path.display(), committed = e.len, found = on_disk, "cutting an uncommitted chunk tail");
                chunk::truncate(path, e.len)?;
            }
        }
        let tiles = self.paths.tiles_dir(&self.meta.name);
        let mut stack = vec![tiles.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = fs::read_dir(&dir) else { continue };
            for entry in entries {
                let path = entry.map_err(Error::io(&dir))?.path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let known = path
                    .strip_prefix(&tiles)
                    .ok()
                    .and_then(WarehousePaths::parse_chunk)
                    .is_some_and(|(tile, month, band, gen)| idx.chunks.get(&ChunkKey { tile, month, band }).is_some_and(|e| e.file.gen == gen));
                if !known {
                    tracing::warn!(path = %path.display(), "removing a file no commit refers to");
                    fs::remove_file(&path).map_err(Error::io(&path))?;
                }
            }
        }
        Ok(())
    }

    pub fn has_scene(&self, scene_id: &str) -> bool {
        read(&self.index).scenes.contains(scene_id)
    }

    /// Chunks matching `keep`, with a snapshot of their entries.
    pub fn chunks(&self, mut keep: impl FnMut(&ChunkKey) -> bool) -> Vec<(ChunkKey, ChunkEntry)> {
        read(&self.index).chunks.iter().filter(|(k, _)| keep(k)).map(|(k, e)| (k.clone(), e.clone())).collect()
    }

    /// Distinct tiles that hold data.
    pub fn tiles(&self) -> Vec<TileId> {
        let idx = read(&self.index);
        let mut t: Vec<TileId> = idx.chunks.keys().map(|k| k.tile).collect();
        t.dedup();
        t
    }

    pub fn scene_count(&self) -> usize {
        read(&self.index).scenes.len()
    }

    /// Reads the committed prefix of a chunk.
    pub fn read_chunk(&self, entry: &ChunkEntry) -> Result<Vec<RecordBatch>> {
        chunk::read(&entry.file.path, entry.len)
    }

    /// The batches of a chunk holding rows `keep` selects (row index in
    /// file order, as `entry.times`); other batches are not read.
    pub fn read_rows(&self, entry: &ChunkEntry, keep: impl Fn(usize) -> bool) -> Result<Vec<RecordBatch>> {
        let (schema_end, picked) = entry.file.batches_with(entry.len, keep)?;
        let locs: Vec<chunk::BatchLoc> = picked.into_iter().map(|(_, b)| b).collect();
        chunk::read_batches(&entry.file.path, schema_end, &locs)
    }

    /// Pixel `index` of the rows `keep` selects: `(row, value, valid)` with
    /// the values as one array, read without decoding the batches. `None`
    /// when the file's layout needs a full decode.
    pub fn read_pixel(&self, entry: &ChunkEntry, dtype: DType, index: usize, keep: impl Fn(usize) -> bool) -> Result<Option<PixelRows>> {
        let (_, picked) = entry.file.batches_with(entry.len, &keep)?;
        let locs: Vec<chunk::BatchLoc> = picked.iter().map(|(_, b)| *b).collect();
        let n = self.meta.grid.tile_px as usize * self.meta.grid.tile_px as usize;
        let data = entry.file.mapped(entry.len)?;
        let Some((bytes, valid)) = chunk::read_pixel(&data[..entry.len as usize], &locs, index, n, dtype.size()) else { return Ok(None) };
        let rows: Vec<usize> = picked.iter().flat_map(|(first, b)| *first..*first + b.rows).collect();
        let values: ArrayRef = crate::with_arrow_type!(dtype, T => Arc::new(arrow_array::PrimitiveArray::<T>::new(
            arrow_buffer::ScalarBuffer::new(arrow_buffer::Buffer::from_slice_ref(&bytes), 0, rows.len()),
            None,
        )));
        // Rows of a picked batch that `keep` does not select are dropped.
        let chosen: Vec<usize> = (0..rows.len()).filter(|&i| keep(rows[i])).collect();
        let take = UInt32Array::from(chosen.iter().map(|&i| i as u32).collect::<Vec<_>>());
        let values = arrow_select::take::take(&values, &take, None).map_err(Error::arrow("selecting point values"))?;
        Ok(Some((chosen.iter().map(|&i| rows[i]).collect(), values, chosen.iter().map(|&i| valid[i]).collect())))
    }

    /// Commits `record` (log append + fsync) and publishes it to readers.
    fn commit(&self, log: &mut CatalogLog, record: Record) -> Result<()> {
        log.append(&record)?;
        let superseded = write(&self.index).apply(&record, &self.paths, &self.meta.name)?;
        for f in superseded {
            f.obsolete.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Appends one scene durably and atomically (see the module docs). A
    /// scene id already present adds nothing (`duplicate`). Blocking.
    pub fn append_scene(&self, scene_id: &str, time_ms: i64, observations: Vec<Observation>) -> Result<AppendOutcome> {
        match self.begin_scene(scene_id, time_ms)? {
            None => Ok(AppendOutcome { duplicate: true, ..Default::default() }),
            Some(mut scene) => {
                let encoded = observations.into_iter().map(|o| Encoded::new(&self.meta, scene_id, time_ms, o)).collect::<Result<Vec<_>>>()?;
                scene.append(&encoded)?;
                scene.commit()
            }
        }
    }

    /// The collection's writer, counted as waited for while it is busy.
    fn take_writer(&self) -> std::sync::MutexGuard<'_, CatalogLog> {
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
    pub fn try_begin_scene(&self, scene_id: &str, time_ms: i64) -> Result<Option<SceneWriter<'_>>> {
        self.scene_writer(scene_id, time_ms, || match self.writer.try_lock() {
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
    pub fn begin_scene(&self, scene_id: &str, time_ms: i64) -> Result<Option<SceneWriter<'_>>> {
        self.scene_writer(scene_id, time_ms, || Some(self.take_writer()))
    }

    /// A writer for scene `scene_id` with the lock `take` gives; `None` if it
    /// gives none or the scene is there already.
    fn scene_writer<'s>(
        &'s self,
        scene_id: &str,
        time_ms: i64,
        take: impl FnOnce() -> Option<std::sync::MutexGuard<'s, CatalogLog>>,
    ) -> Result<Option<SceneWriter<'s>>> {
        let month = Month::of_ms(time_ms).ok_or_else(|| Error::invalid("acquired_at", time_ms, "out of the representable range"))?;
        let Some(log) = take() else { return Ok(None) };
        if self.has_scene(scene_id) {
            return Ok(None);
        }
        Ok(Some(SceneWriter::new(self, log, scene_id, time_ms, month)))
    }

    /// Chunks that would profit from compaction (more than one batch).
    pub fn needs_compaction(&self) -> Vec<ChunkKey> {
        read(&self.index).chunks.iter().filter(|(_, e)| e.appends > 1).map(|(k, _)| k.clone()).collect()
    }

    /// Rewrites the catalog snapshot in a background thread every
    /// [`SNAPSHOT_EVERY`] commits (unless one is being written). Called
    /// after commits.
    pub fn maybe_snapshot_in_background(self: &Arc<Self>) {
        if self.since_snapshot.fetch_add(1, Ordering::AcqRel) + 1 < SNAPSHOT_EVERY || self.snapshotting.swap(true, Ordering::AcqRel) {
            return;
        }
        self.since_snapshot.store(0, Ordering::Release);
        let store = self.clone();
        std::thread::spawn(move || {
            if let Err(e) = store.write_snapshot() {
                tracing::warn!(collection = %store.meta.name, error = %e, "writing the catalog snapshot failed");
            }
            store.snapshotting.store(false, Ordering::Release);
        });
    }

    /// Compacts chunks (all with more than one batch, or those of `tiles`):
    /// each becomes one batch ordered by time. Rows do not change. Then
    /// writes the catalog snapshot.
    pub fn compact(&self, tiles: Option<&HashSet<TileId>>) -> Result<RewriteOutcome> {
        let keys: Vec<ChunkKey> = self.needs_compaction().into_iter().filter(|k| tiles.is_none_or(|t| t.contains(&k.tile))).collect();
        let mut out = RewriteOutcome::default();
        for key in keys {
            if self.compact_chunk(&key)? {
                out.chunks_rewritten += 1;
            }
        }
        self.write_snapshot()?;
        Ok(out)
    }

    /// Writes `catalog.parquet` (GeoParquet) from the current catalog.
    pub fn write_snapshot(&self) -> Result<()> {
        // Hold the writer so the snapshot matches one log position.
        let log = self.take_writer();
        let chunks = self.chunks(|_| true);
        snapshot::write(&self.paths.catalog_snapshot(&self.meta.name), &self.meta, &chunks, log.records())
    }

    /// Rewrites one chunk as a single time-ordered batch without holding the
    /// writer while the bulk is copied: batches appended meanwhile are copied
    /// over as they are under the writer lock, then the new generation is
    /// committed. Returns false if the chunk changed generation meanwhile.
    fn compact_chunk(&self, key: &ChunkKey) -> Result<bool> {
        let Some(snap) = read(&self.index).chunks.get(key).cloned() else { return Ok(false) };
        let gen = snap.file.gen + 1;
        let path = self.paths.chunk(&self.meta.name, key.tile, key.month, &key.band, gen);
        // Written under a name no other writer uses (a delete meanwhile may
        // write generation `gen` itself); renamed once it is known to win.
        // A crash leaves it to the start-up sweep (it is no chunk name).
        let tmp = path.with_extension("compacting");
        let (sorted, order) = sorted_rows(&self.read_chunk(&snap)?, |_, _| true)?;
        let Some(sorted) = sorted else { return Ok(false) };
        let mut len = chunk::write_new(&tmp, &sorted)?;
        let mut log = self.take_writer();
        let current = read(&self.index).chunks.get(key).cloned().filter(|cur| cur.file.gen == snap.file.gen);
        let Some(cur) = current else {
            let _ = fs::remove_file(&tmp);
            return Ok(false);
        };
        if cur.len > snap.len {
            len = chunk::copy_tail(&cur.file.path, snap.len, cur.len, &tmp)?;
        }
        fs::rename(&tmp, &path).map_err(Error::io(&path))?;
        sync_dir(path.parent().unwrap_or(self.paths.root()))?;
        let mut rows: Vec<(i64, String)> = order.iter().map(|&i| (snap.times[i], snap.scenes[i].to_string())).collect();
        rows.extend((snap.times.len()..cur.times.len()).map(|i| (cur.times[i], cur.scenes[i].to_string())));
        let record = Record::Rewrite {
            reason: "compact".into(),
            chunks: vec![Rewritten { chunk: key.to_ref(), gen, len, rows, stats: cur.stats }],
            removed_scenes: vec![],
        };
        self.commit(&mut log, record)?;
        drop(log);
        self.drop_rewritten(&[(path, len)]);
        Ok(true)
    }

    /// Deletes rows durably and atomically: every row of the chunks chosen
    /// by `chunk_filter` for which `remove(time, scene)` holds. Chunks left
    /// empty are removed; scenes left without rows are forgotten (so they
    /// can be ingested again). `forget` names scenes to forget even if they
    /// had no rows (a scene whose pixels were all invalid). Blocking.
    pub fn delete(&self, chunk_filter: impl Fn(&ChunkKey) -> bool, remove: impl Fn(i64, &str) -> bool, forget: &[String]) -> Result<RewriteOutcome> {
        let mut log = self.take_writer();
        let targets = self.chunks(|k| chunk_filter(k));
        let mut out = RewriteOutcome::default();
        let mut rewritten = Vec::new();
        let mut touched_scenes: HashSet<String> = forget.iter().cloned().collect();
        let mut written_paths = Vec::new();
        for (key, entry) in &targets {
            let hits: Vec<usize> = (0..entry.times.len()).filter(|&i| remove(entry.times[i], &entry.scenes[i])).collect();
            if hits.is_empty() {
                continue;
            }
            out.rows_removed += hits.len();
            touched_scenes.extend(hits.iter().map(|&i| entry.scenes[i].to_string()));
            let gen = entry.file.gen + 1;
            if hits.len() == entry.times.len() {
                out.chunks_removed += 1;
                rewritten.push(Rewritten { chunk: key.to_ref(), gen, len: 0, rows: vec![], stats: PixelStats::default() });
                continue;
            }
            let (batch, order) = sorted_rows(&self.read_chunk(entry)?, |t, s| !remove(t, s))?;
            let Some(batch) = batch else { continue };
            let path = self.paths.chunk(&self.meta.name, key.tile, key.month, &key.band, gen);
            let len = chunk::write_new(&path, &batch)?;
            written_paths.push((path, len));
            let rows = order.iter().map(|&i| (entry.times[i], entry.scenes[i].to_string())).collect();
            out.chunks_rewritten += 1;
            rewritten.push(Rewritten { chunk: key.to_ref(), gen, len, rows, stats: chunk::batch_stats(&batch, self.meta.grid.tile_px as usize) });
        }
        for (p, _) in &written_paths {
            sync_dir(p.parent().unwrap_or(self.paths.root()))?;
        }
        // Scenes that keep rows in chunks not rewritten, or in kept rows, stay.
        let idx = read(&self.index);
        let removed_keys: HashSet<ChunkKey> = rewritten.iter().filter_map(|r| ChunkKey::from_ref(&r.chunk).ok()).collect();
        let mut still: HashSet<&str> = HashSet::new();
        for (k, e) in &idx.chunks {
            if !removed_keys.contains(k) {
                still.extend(e.scenes.iter().map(|s| s.as_ref()));
            }
        }
        for r in &rewritten {
            still.extend(r.rows.iter().map(|(_, s)| s.as_str()));
        }
        let mut gone: Vec<String> = touched_scenes.into_iter().filter(|s| !still.contains(s.as_str()) && idx.scenes.contains(s)).collect();
        drop(idx);
        gone.sort();
        out.scenes_removed = gone.clone();
        if rewritten.is_empty() && gone.is_empty() {
            return Ok(out);
        }
        self.commit(&mut log, Record::Rewrite { reason: "delete".into(), chunks: rewritten, removed_scenes: gone })?;
        drop(log);
        self.drop_rewritten(&written_paths);
        Ok(out)
    }

    /// Drops committed rewrites (each file and its length) from the page
    /// cache, as a scene's commit drops what it appended, unless the
    /// warehouse keeps written pages.
    fn drop_rewritten(&self, files: &[(PathBuf, u64)]) {
        if self.fs_sync.drop_written {
            drop_written_ranges(&files.iter().map(|(path, len)| (path.clone(), 0, *len)).collect::<Vec<_>>());
        }
    }
}

/// Drops each file's written range `[from, to)` from the page cache (see
/// [`fs_sync::drop_cached`]: the page holding `to` stays for the next
/// append). A file that cannot be opened is skipped: its pages only cost
/// memory.
fn drop_written_ranges(files: &[(PathBuf, u64, u64)]) {
    for (path, from, to) in files {
        if let Ok(f) = File::open(path) {
            fs_sync::drop_cached(&f, *from, *to);
        }
    }
}

/// The rows of a chunk kept by `keep(time, scene)`, ordered by time, as one
/// batch; with the order (the input row index of each output row).
pub fn sorted_rows(batches: &[RecordBatch], keep: impl Fn(i64, &str) -> bool) -> Result<(Option<RecordBatch>, Vec<usize>)> {
    let Some(first) = batches.first() else { return Ok((None, vec![])) };
    let all = arrow_select::concat::concat_batches(&first.schema(), batches).map_err(Error::arrow("joining chunk batches"))?;
    let times = all.column(2).as_primitive::<arrow_array::types::TimestampMillisecondType>();
    let scenes = all.column(3).as_string::<i32>();
    let kept: Vec<usize> = (0..all.num_rows()).filter(|&i| keep(times.value(i), scenes.value(i))).collect();
    if kept.is_empty() {
        return Ok((None, vec![]));
    }
    let mut order = kept;
    order.sort_by_key(|&i| times.value(i));
    let take = UInt32Array::from(order.iter().map(|&i| i as u32).collect::<Vec<_>>());
    let batch = arrow_select::take::take_record_batch(&all, &take).map_err(Error::arrow("ordering chunk rows"))?;
    Ok((Some(batch), order))
}

/// Creates `dir` and any missing parents below `root`, fsyncing each parent
/// so the new entries survive a crash.
fn ensure_dir(dir: &Path, root: &Path) -> Result<()> {
    let mut parents = Vec::new();
    create_dirs(dir, root, &mut parents, None)?;
    parents.iter().try_for_each(|p| sync_dir(p))
}

/// Creates `dir` and any missing parents below `root`; adds to `to_sync`
/// the directories whose entries changed (they need an fsync before a
/// commit that relies on them) and to `created`, if given, the new ones,
/// parents first.
fn create_dirs(dir: &Path, root: &Path, to_sync: &mut Vec<PathBuf>, mut created: Option<&mut Vec<PathBuf>>) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        if parent != root && parent.starts_with(root) {
            create_dirs(parent, root, to_sync, created.as_deref_mut())?;
        }
    }
    match fs::create_dir(dir) {
        Ok(()) => {
            to_sync.push(dir.parent().unwrap_or(root).to_path_buf());
            if let Some(created) = created {
                created.push(dir.to_path_buf());
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io(dir)(e)),
    }
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|f| f.sync_all()).map_err(Error::io(dir))
}

/// Writes `bytes` to `path` atomically: temp file, fsync, rename, fsync dir.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(Error::io(&tmp))?;
    std::io::Write::write_all(&mut f, bytes).and_then(|_| f.sync_all()).map_err(Error::io(&tmp))?;
    fs::rename(&tmp, path).map_err(Error::io(path))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// A scene being written: observations are appended (uncommitted) as they
/// come, then [`SceneWriter::commit`] syncs everything and writes the one
/// log record that makes the scene visible.
pub struct SceneWriter<'a> {
    store: &'a CollectionStore,
    log: std::sync::MutexGuard<'a, CatalogLog>,
    scene_id: String,
    time_ms: i64,
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
            month,
            appended: Vec::new(),
            files: Vec::new(),
            syncs: Syncs::new(),
            undo: Vec::new(),
            created: Vec::new(),
            committed: false,
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
            let (gen, committed) = {
                let idx = read(&store.index);
                idx.chunks.get(&key).map_or_else(|| (idx.retired.get(&key).copied().unwrap_or(0), 0), |e| (e.file.gen, e.len))
            };
            let path = store.paths.chunk(&store.meta.name, key.tile, self.month, &key.band, gen);
            if committed == 0 {
                if let Some(parent) = path.parent() {
                    create_dirs(parent, store.paths.root(), &mut self.dirs, Some(&mut self.created))?;
                }
            }
            // Nothing is committed yet: after a failure here the writer's
            // drop cuts the file back (a crash: the next start does).
            self.undo.push((path.clone(), committed));
            let (len, file) = chunk::append(&path, committed, &obs.bytes)?;
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
                // not the scene's writer (raw 13 MB put 30.0 -> 28.0 ms).
                match (sync_pool(), file.try_clone()) {
                    (Some(pool), Ok(dup)) => pool.spawn(move || fs_sync::start_writeback(&dup)),
                    _ => fs_sync::start_writeback(&file),
                }
            }
            self.files.push((path, file));
            self.appended.push(Appended { chunk: key.to_ref(), gen, len, stats: obs.stats });
            // A large scene touches thousands of chunks: sync and close them
            // as it goes rather than hold a descriptor for each (the usual
            // limit is 1024 per process). Its commit syncs the file system
            // where it can: then they are closed unsynced but the last.
            if self.files.len() >= SYNC_BATCH {
                if store.fs_sync.available() {
                    self.files.drain(..self.files.len() - 1);
                } else {
                    sync_all(std::mem::take(&mut self.files))?;
                }
            }
        }
        Ok(())
    }

    /// Syncs what is left and the new directories, then writes the scene's
    /// log record and publishes it (readers see all of it or none).
    pub fn commit(mut self) -> Result<AppendOutcome> {
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
                    let f = File::open(&d).map_err(Error::io(&d))?;
                    files.push((d, f));
                    if files.len() >= SYNC_BATCH {
                        sync_all(std::mem::take(&mut files))?;
                    }
                }
                sync_all(files)?;
            }
        }
        // What this scene wrote (each file and range), to drop from the
        // page cache once committed: `undo` and `appended` gain one entry
        // per append, in the same order.
        debug_assert_eq!(self.undo.len(), self.appended.len(), "one undo entry per append");
        let written: Vec<(PathBuf, u64, u64)> =
            if fs.drop_written { self.undo.iter().zip(&self.appended).map(|((path, from), a)| (path.clone(), *from, a.len)).collect() } else { Vec::new() };
        let record = Record::Scene { scene_id: std::mem::take(&mut self.scene_id), time_ms: self.time_ms, chunks: std::mem::take(&mut self.appended) };
        self.store.commit(&mut self.log, record)?;
        self.committed = true;
        if !written.is_empty() {
            // Off the acknowledgement's path, on the sync threads.
            let job = move || drop_written_ranges(&written);
            match sync_pool() {
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
            let undone = if len == 0 { fs::remove_file(&path) } else { fs::OpenOptions::new().write(true).open(&path).and_then(|f| f.set_len(len)) };
            if let Err(e) = undone.or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) }) {
                tracing::warn!(path = %path.display(), error = %e, "could not undo an uncommitted append (a restart cuts it off)");
            }
        }
        for dir in self.created.drain(..).rev() {
            // Fails, and stays, if something else put an entry there.
            let _ = fs::remove_dir(&dir);
        }
    }
}

/// All collections of one warehouse directory.
pub struct Warehouse {
    paths: WarehousePaths,
    collections: RwLock<BTreeMap<String, Arc<CollectionStore>>>,
    /// Serialises collection creation (check-then-create).
    create: Mutex<()>,
    /// The warehouse's file system, for commits that sync it whole.
    fs_sync: Arc<fs_sync::FsSync>,
    /// Ingest activity since start (the health action reports it).
    pub counters: Arc<crate::counters::Counters>,
}

impl Warehouse {
    /// Opens (creating if needed) a warehouse: replays every collection's
    /// catalog log and brings its chunk files in line. Blocking.
    pub fn open(root: &Path) -> Result<Self> {
        Self::open_with(root, WriteOptions::default())
    }

    /// [`Warehouse::open`] with commits made durable (and their pages
    /// cached or not) as `options` say.
    pub fn open_with(root: &Path, options: WriteOptions) -> Result<Self> {
        fs::create_dir_all(root).map_err(Error::io(root))?;
        let paths = WarehousePaths::new(root);
        // Opened before any write (see `FsSync`).
        let fs_sync = Arc::new(fs_sync::FsSync::open(root, options));
        let mut collections = BTreeMap::new();
        for entry in fs::read_dir(root).map_err(Error::io(root))? {
            let entry = entry.map_err(Error::io(root))?;
            let name = entry.file_name().to_string_lossy().to_string();
            let meta_path = paths.collection_meta(&name);
            if !meta_path.is_file() {
                continue;
            }
            let bytes = fs::read(&meta_path).map_err(Error::io(&meta_path))?;
            let meta: Collection = serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt { path: meta_path.clone(), reason: e.to_string() })?;
            let store = CollectionStore::open(&paths, meta, fs_sync.clone())?;
            tracing::info!(collection = %name, chunks = read(&store.index).chunks.len(), scenes = store.scene_count(), "opened collection");
            collections.insert(name, Arc::new(store));
        }
        Ok(Self { paths, collections: RwLock::new(collections), create: Mutex::new(()), fs_sync, counters: Arc::default() })
    }

    pub fn root(&self) -> &Path {
        self.paths.root()
    }

    pub fn collection(&self, name: &str) -> Result<Arc<CollectionStore>> {
        read(&self.collections).get(name).cloned().ok_or_else(|| Error::not_found(format!("collection {name:?}")))
    }

    pub fn collections(&self) -> Vec<Arc<CollectionStore>> {
        read(&self.collections).values().cloned().collect()
    }

    /// Creates a collection durably. Blocking.
    pub fn create_collection(&self, meta: Collection) -> Result<Arc<CollectionStore>> {
        let _g = lock(&self.create);
        if read(&self.collections).contains_key(&meta.name) {
            return Err(Error::AlreadyExists { what: format!("collection {:?}", meta.name) });
        }
        let dir = self.paths.collection_dir(&meta.name);
        ensure_dir(&dir, self.paths.root())?;
        let json = serde_json::to_vec_pretty(&meta).map_err(|e| Error::Internal(e.to_string()))?;
        write_atomic(&self.paths.collection_meta(&meta.name), &json)?;
        let store = Arc::new(CollectionStore::open(&self.paths, meta, self.fs_sync.clone())?);
        write(&self.collections).insert(store.meta.name.clone(), store.clone());
        Ok(store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test file of `len` bytes of `i`, mapped.
    fn map_file(dir: &Path, i: u8, len: usize) -> Arc<memmap2::Mmap> {
        let path = dir.join(format!("f{i}"));
        fs::write(&path, vec![i; len]).unwrap();
        // SAFETY: a test file nothing else writes.
        Arc::new(unsafe { memmap2::Mmap::map(&File::open(&path).unwrap()) }.unwrap())
    }

    #[test]
    fn past_the_limit_the_oldest_kept_mapping_is_let_go_and_its_readers_keep_theirs() {
        let dir = tempfile::tempdir().unwrap();
        let mut kept = KeptMaps::new(2, u64::MAX, None);
        let slots: Vec<Arc<MapSlot>> = (0..3).map(|_| Arc::default()).collect();
        let reader = map_file(dir.path(), 0, 64);
        for (i, slot) in slots.iter().enumerate() {
            *slot.lock().unwrap() = Some(if i == 0 { reader.clone() } else { map_file(dir.path(), i as u8, 64) });
            kept.keep(slot, 64);
        }
        let held = |i: usize| slots[i].lock().unwrap().is_some();
        assert!(!held(0) && held(1) && held(2));
        assert_eq!(reader[63], 0, "a reader's mapping outlives its slot");
        // A slot dropped with its file counts until it leaves the queue.
        drop(slots);
        let fresh: Arc<MapSlot> = Arc::new(Mutex::new(Some(map_file(dir.path(), 9, 64))));
        kept.keep(&fresh, 64);
        assert_eq!(kept.slots.len(), 2);
        assert!(fresh.lock().unwrap().is_some());
    }

    /// Past the byte budget the oldest mappings go (the newest stays even
    /// alone over it); a slot remapped longer is counted again, and its
    /// shorter entry leaving the queue does not empty it.
    #[test]
    fn kept_mappings_stay_within_their_byte_budget() {
        let dir = tempfile::tempdir().unwrap();
        let mut kept = KeptMaps::new(100, 10_000, None);
        let slots: Vec<Arc<MapSlot>> = (0..3).map(|_| Arc::default()).collect();
        let held = |i: usize| slots[i].lock().unwrap().is_some();
        for (i, slot) in slots.iter().enumerate().take(2) {
            *slot.lock().unwrap() = Some(map_file(dir.path(), i as u8, 4096));
            kept.keep(slot, 4096);
        }
        assert!(held(0) && held(1) && kept.bytes == 8192);
        *slots[2].lock().unwrap() = Some(map_file(dir.path(), 2, 4096));
        kept.keep(&slots[2], 4096);
        assert!(!held(0) && held(1) && held(2), "the oldest went");
        assert_eq!(kept.bytes, 8192);
        *slots[1].lock().unwrap() = Some(map_file(dir.path(), 7, 6000));
        kept.keep(&slots[1], 6000);
        assert!(held(1), "its shorter entry left the queue without emptying it");
        assert_eq!(kept.bytes, 6000, "{} bytes kept", kept.bytes);
        assert!(!held(2), "the third went to make room");
        let huge: Arc<MapSlot> = Arc::new(Mutex::new(Some(map_file(dir.path(), 8, 20_000))));
        kept.keep(&huge, 20_000);
        assert!(huge.lock().unwrap().is_some() && !held(1));
        assert_eq!(kept.slots.len(), 1);
    }

    /// With a maximum age, mappings older than it are let go at the next
    /// sweep; younger ones stay.
    #[test]
    fn kept_mappings_past_their_age_are_let_go() {
        let dir = tempfile::tempdir().unwrap();
        let age = std::time::Duration::from_secs(5);
        let mut kept = KeptMaps::new(100, u64::MAX, Some(age));
        let slots: Vec<Arc<MapSlot>> = (0..2).map(|_| Arc::default()).collect();
        for (i, slot) in slots.iter().enumerate() {
            *slot.lock().unwrap() = Some(map_file(dir.path(), i as u8, 4096));
            kept.keep(slot, 4096);
        }
        let held = |i: usize| slots[i].lock().unwrap().is_some();
        let kept_at = kept.slots[0].2;
        kept.let_go(kept_at + age / 2);
        assert!(held(0) && held(1), "young mappings stay");
        kept.slots[1].2 = kept_at + age;
        kept.let_go(kept_at + age + std::time::Duration::from_secs(1));
        assert!(!held(0) && held(1), "the one past its age went");
        assert_eq!((kept.slots.len(), kept.bytes), (1, 4096));
    }
}
