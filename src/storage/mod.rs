//! The warehouse: collections, their chunk files and their catalogs
//! (the design is explained in `docs/storage.md`).
//!
//! This is the storage seam: ingest hands it whole scenes, queries ask it
//! which chunks exist and read them, actions delete and compact. Each
//! collection's catalog lives in memory and in its catalog log, which is
//! replayed at start; queries never walk directories.
//!
//! Write path of a scene, under the collection's writer lock:
//! 1. append one batch to each touched chunk at its committed length;
//! 2. make those files and any new directory durable: an fdatasync each
//!    (in parallel), or for commits of many files one sync of the
//!    warehouse's whole file system (`local::fs_sync`);
//! 3. append one record to the catalog log and fsync it: the commit point;
//! 4. publish the new lengths to readers at once.
//!
//! Rewrites (delete, compaction) write a new generation of a chunk file
//! beside the old one and commit it the same way; the old file is removed
//! when the last reader holding it lets go.
//!
//! Every file system call is made in `local/` (the local directory
//! backend); the files here speak of paths, byte ranges and records.

mod catalog;
pub mod chunk;
pub mod local;
pub mod log;
pub mod paths;
mod read;
pub mod remote;
mod rewrite;
pub mod snapshot;
mod transaction;

pub use catalog::{ChunkEntry, ChunkKey, StoredScene};

/// What a scene about to be written is to the collection ([`CollectionStore::check_scene`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SceneStatus {
    /// No scene is stored under its id.
    New,
    /// The stored scene under its id is this one: nothing to write.
    Retry,
    /// Another scene is stored under its id, and this one replaces it.
    Replaces,
}
pub use read::PixelRows;
pub use rewrite::{sorted_rows, RewriteOutcome};
pub use transaction::{chunk_metadata, AppendOutcome, Encoded, Observation, SceneCommit, SceneWriter, Step, TILE_GROUP};

pub use local::{ChunkFile, SyncMode, WriteOptions};

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::collection::Collection;
use crate::error::{Error, Result};
use crate::grid::TileId;
use catalog::Index;
use local::{fs_sync, CatalogLog};
use log::Record;
pub use paths::{Month, WarehousePaths};

/// The GeoParquet catalog snapshot is rewritten in the background after
/// this many commits. (Chunks are not compacted automatically: reads pick
/// the batches they need by offset whatever the order, and a rewrite costs
/// the whole chunk; the load test saw automatic compaction every 64 appends
/// take the server from 0.4 to 3.3 GiB resident.)
pub const SNAPSHOT_EVERY: u64 = 64;

/// What the catalog holds of one scene, gathered from its chunks.
#[derive(Debug, Clone, Default)]
pub struct SceneSummary {
    pub time_ms: i64,
    pub tiles: std::collections::BTreeSet<TileId>,
    pub bands: std::collections::BTreeSet<String>,
    /// Observations: one per (tile, band).
    pub observations: u64,
    /// Bytes its appends wrote (`None`: some were committed by a server
    /// that did not keep them).
    pub bytes: Option<u64>,
    pub baseline: Option<String>,
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
    /// On object storage: the catalog table this local copy follows.
    pub(crate) remote: std::sync::OnceLock<Arc<remote::RemoteCatalog>>,
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
            remote: std::sync::OnceLock::new(),
        };
        store.recover_files()?;
        // The snapshot is derived from the log: a full disk must not keep
        // the warehouse from opening (its deletes are how space is freed).
        if let Err(e) = store.write_snapshot() {
            tracing::warn!(collection = %store.meta.name, error = %e, "writing the catalog snapshot failed; the log keeps the catalog");
        }
        Ok(store)
    }

    /// Makes the chunk files agree with the catalog after a restart: cuts
    /// uncommitted tails, removes files no commit refers to.
    fn recover_files(&self) -> Result<()> {
        let idx = read(&self.index);
        for e in idx.chunks.values() {
            let path = &e.file.path;
            let on_disk = local::file_len(path)?;
            if on_disk < e.len {
                return Err(Error::Corrupt { path: path.clone(), reason: format!("holds {on_disk} bytes but {} were committed", e.len) });
            }
            if on_disk > e.len {
                tracing::warn!(path = %crate::error::shown(path), committed = e.len, found = on_disk, "cutting an uncommitted chunk tail");
                local::chunk_file::truncate(path, e.len)?;
            }
        }
        let tiles = self.paths.tiles_dir(&self.meta.name);
        for path in local::files_below(&tiles)? {
            let known = path
                .strip_prefix(&tiles)
                .ok()
                .and_then(WarehousePaths::parse_chunk)
                .is_some_and(|(tile, month, band, gen)| idx.chunks.get(&ChunkKey { tile, month, band }).is_some_and(|e| e.file.gen == gen));
            if !known {
                tracing::warn!(path = %crate::error::shown(&path), "removing a file no commit refers to");
                local::remove_file(&path)?;
            }
        }
        Ok(())
    }

    pub fn has_scene(&self, scene_id: &str) -> bool {
        read(&self.index).scenes.contains_key(scene_id)
    }

    /// The stored scene `scene_id`, if any.
    pub fn scene(&self, scene_id: &str) -> Option<StoredScene> {
        read(&self.index).scenes.get(scene_id).cloned()
    }

    /// What writing scene `scene_id` at `time_ms` (with `fingerprint`)
    /// means against what is stored: a new scene, a retry of the stored one
    /// (nothing to write), or, with `replace`, a replacement of another
    /// scene stored under its id; without `replace` that is `AlreadyExists`.
    pub fn check_scene(&self, scene_id: &str, time_ms: i64, fingerprint: Option<&str>, replace: bool) -> Result<SceneStatus> {
        let Some(stored) = self.scene(scene_id) else { return Ok(SceneStatus::New) };
        let other_time = stored.time_ms != time_ms;
        let other_content = matches!((stored.fingerprint.as_deref(), fingerprint), (Some(a), Some(b)) if a != b);
        if !other_time && !other_content {
            return Ok(SceneStatus::Retry);
        }
        if replace {
            return Ok(SceneStatus::Replaces);
        }
        let what = if other_time {
            format!("stored with acquisition time {}, this put says {}", crate::wire::format_time(stored.time_ms), crate::wire::format_time(time_ms))
        } else {
            format!("stored with content fingerprint {}, this put's is {}", stored.fingerprint.unwrap_or_default(), fingerprint.unwrap_or_default())
        };
        Err(Error::AlreadyExists {
            what: format!("scene {scene_id:?} of collection {:?}", self.meta.name),
            detail: format!(": {what}; to store this one instead, ingest it with replace (CLI --replace) or delete the scene first"),
        })
    }

    /// Chunks matching `keep`, with a snapshot of their entries.
    pub fn chunks(&self, mut keep: impl FnMut(&ChunkKey) -> bool) -> Vec<(ChunkKey, ChunkEntry)> {
        read(&self.index).chunks.iter().filter(|(k, _)| keep(k)).map(|(k, e)| (k.clone(), e.clone())).collect()
    }

    /// [`Self::chunks`] as they stood at catalog version `as_of` (a
    /// warehouse on object storage; elsewhere the version is ignored).
    pub fn chunks_at(&self, as_of: Option<i64>, keep: impl FnMut(&ChunkKey) -> bool) -> Result<Vec<(ChunkKey, ChunkEntry)>> {
        let chunks = self.chunks(keep);
        let (Some(v), Some(catalog)) = (as_of, self.remote.get()) else { return Ok(chunks) };
        let mut pinned = Vec::with_capacity(chunks.len());
        for (k, e) in chunks {
            if let Some(e) = catalog.pinned(&k, &e, v)? {
                pinned.push((k, e));
            }
        }
        Ok(pinned)
    }

    /// Calls `f` with every chunk under one read lock: one consistent state
    /// of the catalog, nothing cloned. `f` must not call back into the
    /// store.
    pub fn visit_chunks(&self, mut f: impl FnMut(&ChunkKey, &ChunkEntry)) {
        for (k, e) in &read(&self.index).chunks {
            f(k, e);
        }
    }

    /// Distinct tiles that hold data.
    pub fn tiles(&self) -> Vec<TileId> {
        let idx = read(&self.index);
        let mut t: Vec<TileId> = idx.chunks.keys().map(|k| k.tile).collect();
        t.dedup();
        t
    }

    /// How many scenes of each processing baseline (`unknown`: none
    /// recorded).
    pub fn baselines(&self) -> std::collections::BTreeMap<String, usize> {
        let mut out = std::collections::BTreeMap::new();
        for s in read(&self.index).scenes.values() {
            *out.entry(s.baseline.clone().unwrap_or_else(|| "unknown".into())).or_insert(0) += 1;
        }
        out
    }

    /// Every stored scene as its chunks hold it: time, tiles, bands,
    /// observations and bytes, by scene id.
    pub fn scene_summaries(&self) -> BTreeMap<String, SceneSummary> {
        let idx = read(&self.index);
        let mut out: BTreeMap<String, SceneSummary> = BTreeMap::new();
        for (k, e) in &idx.chunks {
            for (i, (t, s)) in e.times.iter().zip(&e.scenes).enumerate() {
                let scene = out.entry(s.to_string()).or_insert_with(|| SceneSummary { bytes: Some(0), ..Default::default() });
                scene.time_ms = *t;
                scene.tiles.insert(k.tile);
                scene.bands.insert(k.band.clone());
                scene.observations += 1;
                scene.bytes = scene.bytes.zip(e.row_stats.get(i).copied().flatten()).map(|(b, r)| b + r.bytes);
            }
        }
        for (id, scene) in &mut out {
            scene.baseline = idx.scenes.get(id).and_then(|s| s.baseline.clone());
        }
        out
    }

    pub fn scene_count(&self) -> usize {
        read(&self.index).scenes.len()
    }

    /// Committed bytes of every chunk of the collection.
    pub fn stored_bytes(&self) -> u64 {
        read(&self.index).chunks.values().map(|e| e.len).sum()
    }

    /// Commits `record` (log append + fsync) and publishes it to readers.
    fn commit(&self, log: &mut CatalogLog, record: Record) -> Result<()> {
        log.append(&record)?;
        let superseded = write(&self.index).apply(&record, &self.paths, &self.meta.name)?;
        for f in superseded {
            f.retire();
        }
        Ok(())
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

    /// Writes `catalog.parquet` (GeoParquet) from the current catalog.
    pub fn write_snapshot(&self) -> Result<()> {
        // Hold the writer so the snapshot matches one log position.
        let log = self.take_writer();
        let chunks = self.chunks(|_| true);
        snapshot::write(&self.paths.catalog_snapshot(&self.meta.name), &self.meta, &chunks, log.records())
    }
}

/// All collections of one warehouse directory.
pub struct Warehouse {
    paths: WarehousePaths,
    collections: RwLock<BTreeMap<String, Arc<CollectionStore>>>,
    /// Collections still being written whole: hidden from readers.
    pending: RwLock<std::collections::HashSet<String>>,
    /// Serialises collection creation (check-then-create).
    create: Mutex<()>,
    /// The warehouse's file system, for commits that sync it whole.
    fs_sync: Arc<fs_sync::FsSync>,
    /// Ingest activity since start (the health action reports it).
    pub counters: Arc<crate::counters::Counters>,
    /// This process's exclusive hold on the directory.
    _lock: local::RootLock,
    /// On object storage: the shared warehouse; the directory is then this
    /// server's local copy of it.
    remote: Option<Arc<remote::Remote>>,
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
        let names = local::open_root(root)?;
        let lock = local::lock_root(root)?;
        crate::error::hide_warehouse_root(root);
        let paths = WarehousePaths::new(root);
        // Opened before any write (see `FsSync`).
        let fs_sync = Arc::new(fs_sync::FsSync::open(root, options));
        let mut collections = BTreeMap::new();
        let mut pending = std::collections::HashSet::new();
        for name in names {
            if name.starts_with(paths::DELETED_PREFIX) {
                // A delete the server died in: finish it.
                let dir = paths.root().join(&name);
                tracing::warn!(dir = %crate::error::shown(&dir), "removing a deleted collection's directory");
                local::remove_dir_all(&dir)?;
                continue;
            }
            let meta_path = paths.collection_meta(&name);
            if !meta_path.is_file() {
                continue;
            }
            let bytes = local::read_file(&meta_path)?;
            let meta: Collection = serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt { path: meta_path.clone(), reason: e.to_string() })?;
            let store = CollectionStore::open(&paths, meta, fs_sync.clone())?;
            tracing::info!(collection = %name, chunks = read(&store.index).chunks.len(), scenes = store.scene_count(), "opened collection");
            if paths.collection_pending(&name).exists() {
                pending.insert(name.clone());
            }
            collections.insert(name, Arc::new(store));
        }
        Ok(Self {
            paths,
            collections: RwLock::new(collections),
            pending: RwLock::new(pending),
            create: Mutex::new(()),
            fs_sync,
            counters: Arc::default(),
            _lock: lock,
            remote: None,
        })
    }

    /// Opens the warehouse at `url` on object storage, with `cache` (a
    /// directory of this server's own) as its local copy, and applies what
    /// the shared catalog holds. Blocking; `runtime` runs the store's calls.
    pub fn open_remote(url: &str, cache: &Path, options: WriteOptions, runtime: tokio::runtime::Handle) -> Result<Self> {
        let remote = Arc::new(remote::Remote::connect(url, runtime)?);
        let mut warehouse = Self::open_with(cache, options)?;
        warehouse.remote = Some(remote);
        for store in warehouse.collections() {
            warehouse.attach(&store)?;
        }
        warehouse.refresh()?;
        Ok(warehouse)
    }

    /// Whether the warehouse lives on object storage (shared by servers).
    pub fn remote(&self) -> Option<&Arc<remote::Remote>> {
        self.remote.as_ref()
    }

    fn attach(&self, store: &CollectionStore) -> Result<()> {
        if let (Some(remote), None) = (&self.remote, store.remote.get()) {
            let _ = store.remote.set(Arc::new(remote.open_catalog(&store.meta.name)?));
        }
        Ok(())
    }

    /// Brings the local copy up to the shared warehouse: collections other
    /// servers created, scenes they committed. A no-op for a local
    /// warehouse. Blocking.
    pub fn refresh(&self) -> Result<()> {
        let Some(remote) = &self.remote else { return Ok(()) };
        for name in remote.collection_names()? {
            if self.any_collection(&name).is_some() {
                continue;
            }
            let Some(meta) = remote.read_collection(&name)? else { continue };
            match self.create(meta, false) {
                Ok(_) | Err(Error::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        for store in self.collections() {
            store.catch_up()?;
        }
        Ok(())
    }

    /// The catalog version answers of `collection` are pinned to (object
    /// storage): the last one this server applied.
    pub fn version(&self, collection: &str) -> Option<i64> {
        let store = self.any_collection(collection)?.0;
        let catalog = store.remote.get()?;
        Some(catalog.current.load(Ordering::Acquire))
    }

    /// Refuses what is not built for warehouses on object storage yet.
    pub fn local_only(&self, what: &str) -> Result<()> {
        match self.remote {
            Some(_) => Err(Error::Unimplemented(format!("{what} is not built for warehouses on object storage yet"))),
            None => Ok(()),
        }
    }

    pub fn root(&self) -> &Path {
        self.paths.root()
    }

    /// Free bytes of the warehouse's file system, where known.
    pub fn free_bytes(&self) -> Option<u64> {
        local::free_bytes(self.paths.root())
    }

    pub fn collection(&self, name: &str) -> Result<Arc<CollectionStore>> {
        match self.any_collection(name) {
            Some((store, false)) => Ok(store),
            _ => Err(Error::not_found(format!("collection {name:?}"))),
        }
    }

    /// A collection, visible or still being written whole (`true`).
    pub fn any_collection(&self, name: &str) -> Option<(Arc<CollectionStore>, bool)> {
        let store = read(&self.collections).get(name).cloned()?;
        Some((store, read(&self.pending).contains(name)))
    }

    pub fn collections(&self) -> Vec<Arc<CollectionStore>> {
        let pending = read(&self.pending);
        read(&self.collections).values().filter(|c| !pending.contains(&c.meta.name)).cloned().collect()
    }

    /// Creates a collection durably. Blocking.
    pub fn create_collection(&self, meta: Collection) -> Result<Arc<CollectionStore>> {
        if let Some(remote) = &self.remote {
            if !remote.create_collection(&meta)? {
                self.refresh()?;
                return Err(Error::AlreadyExists { what: format!("collection {:?}", meta.name), detail: String::new() });
            }
            // Created: a refresh may have brought it here meanwhile.
            let name = meta.name.clone();
            return match self.create(meta, false) {
                Err(Error::AlreadyExists { .. }) => self.collection(&name),
                other => other,
            };
        }
        self.create(meta, false)
    }

    /// Creates a collection that stays hidden until [`Warehouse::publish`]
    /// (after a crash too): one written whole, as a reduce `into` does.
    /// Blocking.
    pub fn create_pending_collection(&self, meta: Collection) -> Result<Arc<CollectionStore>> {
        self.local_only("storing a query's answer (into)")?;
        self.create(meta, true)
    }

    /// Makes a pending collection visible, durably. Blocking.
    pub fn publish(&self, name: &str) -> Result<()> {
        let marker = self.paths.collection_pending(name);
        local::remove_file(&marker)?;
        local::sync_dir(&self.paths.collection_dir(name))?;
        write(&self.pending).remove(name);
        Ok(())
    }

    fn create(&self, meta: Collection, pending: bool) -> Result<Arc<CollectionStore>> {
        let _g = lock(&self.create);
        if read(&self.collections).contains_key(&meta.name) {
            let detail = if read(&self.pending).contains(&meta.name) { "a reduce into is writing it; run that reduce again to finish it" } else { "" };
            return Err(Error::AlreadyExists { what: format!("collection {:?}", meta.name), detail: detail.to_string() });
        }
        let dir = self.paths.collection_dir(&meta.name);
        local::ensure_dir(&dir, self.paths.root())?;
        if pending {
            local::write_atomic(&self.paths.collection_pending(&meta.name), "tmp", b"")?;
            write(&self.pending).insert(meta.name.clone());
        }
        let json = serde_json::to_vec_pretty(&meta).map_err(|e| Error::Internal(e.to_string()))?;
        local::write_atomic(&self.paths.collection_meta(&meta.name), "tmp", &json)?;
        let store = Arc::new(CollectionStore::open(&self.paths, meta, self.fs_sync.clone())?);
        self.attach(&store)?;
        write(&self.collections).insert(store.meta.name.clone(), store.clone());
        Ok(store)
    }

    /// Deletes a collection durably: its directory is renamed out of the
    /// way (the commit point: a renamed directory is never opened again),
    /// then removed. Commits under way finish first; readers holding its
    /// chunks keep reading what they hold. Blocking.
    pub fn delete_collection(&self, name: &str) -> Result<()> {
        self.local_only("deleting a collection")?;
        let _g = lock(&self.create);
        let store = read(&self.collections).get(name).cloned().ok_or_else(|| Error::not_found(format!("collection {name:?}")))?;
        let _writer = store.take_writer();
        write(&self.pending).remove(name);
        let (dir, gone) = (self.paths.collection_dir(name), self.paths.deleted_collection_dir(name));
        // A delete of this name that could not remove its files.
        local::remove_dir_all_if_present(&gone)?;
        local::rename(&dir, &gone)?;
        local::sync_dir(self.paths.root())?;
        write(&self.collections).remove(name);
        if let Err(e) = local::remove_dir_all(&gone) {
            tracing::warn!(collection = name, error = %e, "removing a deleted collection's files (the next start does)");
        }
        Ok(())
    }
}
