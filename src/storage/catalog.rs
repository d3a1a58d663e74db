//! The catalog in memory: what chunks exist (each with its committed
//! length, times, scenes and statistics) and which scenes are present,
//! rebuilt from the catalog log's records at start and updated by each
//! commit.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow_array::RecordBatch;

use super::chunk;
use super::local::{self, ChunkFile};
use super::log::{ChunkRef, PixelStats, Record, Rewritten};
use super::paths::{Month, WarehousePaths};
use crate::error::{Error, Result};
use crate::grid::TileId;

/// One chunk: (tile, month, band) of a collection.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkKey {
    pub tile: TileId,
    pub month: Month,
    pub band: String,
}

impl ChunkKey {
    pub(super) fn to_ref(&self) -> ChunkRef {
        ChunkRef { tile: self.tile.to_string(), month: self.month.to_string(), band: self.band.clone() }
    }

    pub(super) fn from_ref(r: &ChunkRef) -> Result<Self> {
        let bad = |what: &str| Error::Internal(format!("catalog log names a bad {what}: {r:?}"));
        Ok(ChunkKey { tile: r.tile.parse().map_err(|_| bad("tile"))?, month: Month::parse(&r.month).ok_or_else(|| bad("month"))?, band: r.band.clone() })
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
        local::chunk_file::read_batches(&self.file.path, schema_end, locs)
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

/// What the catalog keeps of a stored scene, to tell a retry of it (the
/// same time and content: nothing to do) from another scene under its id.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredScene {
    pub time_ms: i64,
    /// The client's fingerprint of the content, if it gave one.
    pub fingerprint: Option<String>,
}

#[derive(Default)]
pub(super) struct Index {
    pub(super) chunks: BTreeMap<ChunkKey, ChunkEntry>,
    pub(super) scenes: HashMap<String, StoredScene>,
    /// Chunks a delete emptied, with the generation a new chunk of the same
    /// key must start from: a generation's file name is never reused, so a
    /// reader still holding a removed generation cannot delete (or read) a
    /// newer file.
    pub(super) retired: HashMap<ChunkKey, u32>,
}

impl Index {
    /// Applies one committed record (replay and live commits share this).
    pub(super) fn apply(&mut self, record: &Record, paths: &WarehousePaths, collection: &str) -> Result<Vec<Arc<ChunkFile>>> {
        let mut superseded = Vec::new();
        match record {
            Record::Scene { scene_id, time_ms, fingerprint, replaces, chunks } => {
                self.rewrite(replaces, paths, collection, &mut superseded)?;
                self.scenes.insert(scene_id.clone(), StoredScene { time_ms: *time_ms, fingerprint: fingerprint.clone() });
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
                self.rewrite(chunks, paths, collection, &mut superseded)?;
                for s in removed_scenes {
                    self.scenes.remove(s);
                }
            }
        }
        Ok(superseded)
    }

    /// Puts rewritten chunk generations in place of their entries (length 0:
    /// the chunk is gone); the generations they supersede go to `superseded`.
    fn rewrite(&mut self, chunks: &[Rewritten], paths: &WarehousePaths, collection: &str, superseded: &mut Vec<Arc<ChunkFile>>) -> Result<()> {
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
        Ok(())
    }
}
