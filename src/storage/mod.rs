//! The warehouse: collections, their chunk files and the in-memory catalog.
//!
//! This is the storage seam: ingest hands it whole scenes, queries ask it
//! which chunks exist and read them. The catalog is rebuilt from the chunk
//! files at start (cutting torn tails), then kept in memory, so queries never
//! walk directories.

pub mod chunk;
pub mod paths;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use arrow_array::{ArrayRef, BooleanArray, RecordBatch};
use arrow_schema::SchemaRef;

use crate::collection::Collection;
use crate::error::{Error, Result};
use crate::grid::TileId;
pub use paths::{Month, WarehousePaths};

/// One chunk: (tile, month, band) of a collection.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkKey {
    pub tile: TileId,
    pub month: Month,
    pub band: String,
}

/// What the catalog knows of a chunk.
#[derive(Debug, Clone)]
pub struct ChunkEntry {
    /// Committed byte length: readers read this prefix, writers append here.
    pub len: u64,
    /// Acquisition times of its observations, in file order.
    pub times: Vec<i64>,
}

impl ChunkEntry {
    pub fn count_in(&self, start: Option<i64>, end: Option<i64>) -> usize {
        self.times.iter().filter(|t| start.is_none_or(|s| **t >= s) && end.is_none_or(|e| **t < e)).count()
    }
}

/// One (tile, band) of a scene, resampled onto the grid.
pub struct Observation {
    pub tile: TileId,
    pub band: String,
    pub pixels: ArrayRef,
    pub mask: BooleanArray,
}

/// What appending a scene did.
#[derive(Debug, Clone, Default)]
pub struct AppendOutcome {
    pub duplicate: bool,
    pub observations: u64,
    pub bytes: u64,
    pub tiles: Vec<TileId>,
}

#[derive(Default)]
struct Index {
    chunks: BTreeMap<ChunkKey, ChunkEntry>,
    scenes: HashSet<String>,
}

/// A collection and its catalog.
pub struct CollectionStore {
    pub meta: Collection,
    paths: WarehousePaths,
    /// Serialises this collection's writers: an append must start at the
    /// committed length, and a scene that fails half-way rolls its files back
    /// before the next writer touches them. Held only inside blocking tasks.
    write: Mutex<()>,
    /// The catalog. Readers clone what they need and let go; a scene's
    /// entries are published under one write lock, so readers see all of a
    /// scene or none of it.
    index: RwLock<Index>,
}

/// A read lock that survives a panicked holder (the data stays consistent
/// because every update is a single insert under the lock).
fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

impl CollectionStore {
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
    pub fn read_chunk(&self, key: &ChunkKey, entry: &ChunkEntry) -> Result<Vec<RecordBatch>> {
        chunk::read(&self.paths.chunk(&self.meta.name, key.tile, key.month, &key.band), entry.len)
    }

    /// Schema metadata of a chunk file: where its pixels sit.
    pub fn chunk_metadata(&self, tile: TileId, band: &str) -> HashMap<String, String> {
        let grid = self.meta.grid_spec();
        let b = self.meta.band(band);
        let mut m = HashMap::from([
            ("collection".to_string(), self.meta.name.clone()),
            ("tile_id".to_string(), tile.to_string()),
            ("band".to_string(), band.to_string()),
            ("crs".to_string(), self.meta.grid.crs_wkt.clone()),
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

    /// Appends one scene: every observation is written and fsynced, then all
    /// of them are published to the catalog at once. A scene id already
    /// present adds nothing (`duplicate`). If any write fails, the chunks
    /// already written are cut back and nothing is published. Blocking.
    pub fn append_scene(&self, scene_id: &str, time_ms: i64, observations: Vec<Observation>) -> Result<AppendOutcome> {
        let month = Month::of_ms(time_ms).ok_or_else(|| Error::invalid("acquired_at", time_ms, "out of the representable range"))?;
        let _writer = self.write.lock().unwrap_or_else(|e| e.into_inner());
        if self.has_scene(scene_id) {
            return Ok(AppendOutcome { duplicate: true, ..Default::default() });
        }
        let mut written: Vec<(ChunkKey, u64, u64)> = Vec::with_capacity(observations.len());
        let result = (|| -> Result<()> {
            for obs in observations {
                let key = ChunkKey { tile: obs.tile, month, band: obs.band };
                let path = self.paths.chunk(&self.meta.name, key.tile, month, &key.band);
                let committed = read(&self.index).chunks.get(&key).map_or(0, |e| e.len);
                if committed == 0 {
                    if let Some(parent) = path.parent() {
                        ensure_dir(parent, self.paths.root())?;
                    }
                }
                let band = self.meta.band(&key.band).ok_or_else(|| Error::Internal(format!("band {} vanished", key.band)))?;
                let schema: SchemaRef = Arc::new(chunk::schema(band.dtype, self.chunk_metadata(key.tile, &key.band)));
                let batch = chunk::observation_batch(schema, &key.tile.to_string(), &key.band, time_ms, scene_id, obs.pixels, obs.mask)?;
                // Record before writing, so a failed write is rolled back too.
                written.push((key, committed, committed));
                let new_len = chunk::append(&path, committed, &batch)?;
                if committed == 0 {
                    sync_dir(path.parent().unwrap_or(self.paths.root()))?;
                }
                if let Some(last) = written.last_mut() {
                    last.2 = new_len;
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            for (key, committed, _) in &written {
                let path = self.paths.chunk(&self.meta.name, key.tile, key.month, &key.band);
                if let Err(re) = chunk::truncate(&path, *committed) {
                    tracing::error!(path = %path.display(), error = %re, "rolling back a failed append");
                }
            }
            return Err(e);
        }
        let mut outcome = AppendOutcome { duplicate: false, ..Default::default() };
        let mut idx = write(&self.index);
        for (key, old, new) in written {
            outcome.bytes += new - old;
            outcome.observations += 1;
            if outcome.tiles.last() != Some(&key.tile) && !outcome.tiles.contains(&key.tile) {
                outcome.tiles.push(key.tile);
            }
            let e = idx.chunks.entry(key).or_insert(ChunkEntry { len: 0, times: Vec::new() });
            e.len = new;
            e.times.push(time_ms);
        }
        idx.scenes.insert(scene_id.to_string());
        Ok(outcome)
    }
}

/// Creates `dir` and any missing parents below `root`, fsyncing each parent
/// so the new entries survive a crash.
fn ensure_dir(dir: &Path, root: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        if parent != root && parent.starts_with(root) {
            ensure_dir(parent, root)?;
        }
    }
    match fs::create_dir(dir) {
        Ok(()) => sync_dir(dir.parent().unwrap_or(root)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io(dir)(e)),
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|f| f.sync_all()).map_err(Error::io(dir))
}

/// Writes `bytes` to `path` atomically: temp file, fsync, rename, fsync dir.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let io = Error::io(&tmp);
    let mut f = File::create(&tmp).map_err(Error::io(&tmp))?;
    std::io::Write::write_all(&mut f, bytes).and_then(|_| f.sync_all()).map_err(io)?;
    fs::rename(&tmp, path).map_err(Error::io(path))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// All collections of one warehouse directory.
pub struct Warehouse {
    paths: WarehousePaths,
    collections: RwLock<BTreeMap<String, Arc<CollectionStore>>>,
    /// Serialises collection creation (check-then-create).
    create: Mutex<()>,
}

impl Warehouse {
    /// Opens (creating if needed) a warehouse and rebuilds the catalog from
    /// its chunk files, cutting torn tails. Blocking.
    pub fn open(root: &Path) -> Result<Self> {
        fs::create_dir_all(root).map_err(Error::io(root))?;
        let paths = WarehousePaths::new(root);
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
            let index = scan_collection(&paths, &name)?;
            tracing::info!(collection = %name, chunks = index.chunks.len(), scenes = index.scenes.len(), "opened collection");
            collections.insert(name, Arc::new(CollectionStore { meta, paths: paths.clone(), write: Mutex::new(()), index: RwLock::new(index) }));
        }
        Ok(Self { paths, collections: RwLock::new(collections), create: Mutex::new(()) })
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
        let _g = self.create.lock().unwrap_or_else(|e| e.into_inner());
        if read(&self.collections).contains_key(&meta.name) {
            return Err(Error::AlreadyExists { what: format!("collection {:?}", meta.name) });
        }
        let dir = self.paths.collection_dir(&meta.name);
        ensure_dir(&dir, self.paths.root())?;
        let json = serde_json::to_vec_pretty(&meta).map_err(|e| Error::Internal(e.to_string()))?;
        write_atomic(&self.paths.collection_meta(&meta.name), &json)?;
        let store = Arc::new(CollectionStore { meta, paths: self.paths.clone(), write: Mutex::new(()), index: RwLock::new(Index::default()) });
        write(&self.collections).insert(store.meta.name.clone(), store.clone());
        Ok(store)
    }
}

fn scan_collection(paths: &WarehousePaths, name: &str) -> Result<Index> {
    let mut index = Index::default();
    let tiles = paths.tiles_dir(name);
    if !tiles.is_dir() {
        return Ok(index);
    }
    let mut stack = vec![tiles.clone()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).map_err(Error::io(&dir))? {
            let path = entry.map_err(Error::io(&dir))?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let Some((tile, month, band)) = path.strip_prefix(&tiles).ok().and_then(WarehousePaths::parse_chunk) else {
                continue;
            };
            if let Some(s) = chunk::scan(&path)? {
                index.scenes.extend(s.scene_ids);
                index.chunks.insert(ChunkKey { tile, month, band }, ChunkEntry { len: s.len, times: s.times });
            }
        }
    }
    Ok(index)
}
