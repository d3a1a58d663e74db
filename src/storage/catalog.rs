//! The catalog in memory: what chunks exist (each with its committed
//! length, times, scenes and statistics) and which scenes are present,
//! rebuilt from the catalog log's records at start and updated by each
//! commit.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow_array::RecordBatch;

use super::chunk;
use super::local::{self, ChunkFile};
use super::log::{ChunkRef, PixelStats, Record, Rewritten, RowStats};
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

    /// The chunk as errors name it.
    pub fn label(&self, collection: &str) -> String {
        format!("collection {collection}, tile {}, band {}, month {}", self.tile, self.band, self.month)
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
    /// Each row's statistics, in file order (`None`: committed by a
    /// server that did not keep them).
    pub row_stats: Vec<Option<RowStats>>,
    pub stats: PixelStats,
    /// Batches appended since the file was last written whole.
    pub appends: u32,
    /// The committed bytes as checksummed segments, in order from byte 0.
    pub sums: Vec<Sum>,
}

/// A checksummed segment of a chunk file: it ends at `end` and starts where
/// the one before it ends (the first at byte 0). Each holds whole record
/// batch messages (the first also the schema message); `crc` is the CRC-32
/// of its bytes, `None` for bytes written before checksums existed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sum {
    pub end: u64,
    pub crc: Option<u32>,
}

/// Epoch milliseconds as RFC 3339 text.
fn time_text(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(|| ms.to_string(), |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// Rows of a chunk whose bytes fail their checksum: `(first row, rows)` in
/// file order.
pub type Damaged = Vec<(usize, usize)>;

impl ChunkEntry {
    /// The chunk's first `n` rows (`0 < n < rows`) as they stood when they
    /// were all it held; `None` unless a batch, and a checksummed segment,
    /// end right after row `n - 1` (rows appended after a rewrite can be
    /// cut off, rows of one batch cannot).
    pub fn prefix(&self, n: usize) -> Result<Option<ChunkEntry>> {
        if n == 0 || n >= self.times.len() {
            return Ok(None);
        }
        let (_, batches) = self.batches_with(|_| true)?;
        let Some(b) = batches.iter().position(|(first, loc)| first + loc.rows == n) else { return Ok(None) };
        let len = batches[b].1.end;
        let Some(k) = self.sums.iter().position(|s| s.end == len) else { return Ok(None) };
        let mut stats = PixelStats::default();
        for r in self.row_stats.iter().take(n).flatten() {
            stats.merge(&PixelStats { valid: r.valid, min: r.min, max: r.max, sum: r.sum, bbox: self.stats.bbox });
        }
        Ok(Some(ChunkEntry {
            file: self.file.clone(),
            len,
            times: self.times[..n].to_vec(),
            scenes: self.scenes[..n].to_vec(),
            row_stats: self.row_stats.iter().take(n).copied().collect(),
            stats,
            appends: self.appends.min(b as u32 + 1),
            sums: self.sums[..=k].to_vec(),
        }))
    }

    pub fn count_in(&self, start: Option<i64>, end: Option<i64>) -> usize {
        self.times.iter().filter(|t| start.is_none_or(|s| **t >= s) && end.is_none_or(|e| **t < e)).count()
    }

    /// The end of the schema message and the committed batches holding at
    /// least one row that `keep` (row index in file order) selects, with
    /// the index of their first row.
    pub fn batches_with(&self, keep: impl Fn(usize) -> bool) -> Result<(u64, Vec<(usize, chunk::BatchLoc)>)> {
        self.file.batches_with(self.len, keep)
    }

    /// The committed batches at `locs`, decoded, after their checksums hold.
    pub fn read_batches(&self, schema_end: u64, locs: &[chunk::BatchLoc]) -> Result<Vec<RecordBatch>> {
        for l in locs {
            self.check(l.start, l.end, false)?;
        }
        local::chunk_file::read_batches(&self.file.path, schema_end, locs)
    }

    /// Committed bytes `from..to` as stored, for sending without a copy,
    /// after the checksums of the segments they lie in hold.
    pub fn range(&self, from: u64, to: u64) -> Result<bytes::Bytes> {
        self.check(from, to, false)?;
        self.file.range(self.len, from, to)
    }

    /// Checks the segments overlapping committed bytes `from..to` against
    /// their checksums; with `once`, segments a point read found intact
    /// before since the server started are trusted (a whole segment read
    /// for one pixel per row would cost far more than the read). A mismatch is
    /// [`Error::DataLoss`] naming the observations.
    pub fn check(&self, from: u64, to: u64, once: bool) -> Result<()> {
        let first = self.sums.partition_point(|s| s.end <= from);
        for k in first..self.sums.len() {
            let start = if k == 0 { 0 } else { self.sums[k - 1].end };
            if start >= to {
                break;
            }
            let Sum { end, crc: Some(crc) } = self.sums[k] else { continue };
            if once && self.file.was_verified(end) {
                continue;
            }
            if crc32fast::hash(&self.file.range(self.len, start, end)?) != crc {
                return Err(self.data_loss(&self.damaged_rows(start, end)?));
            }
            if once {
                self.file.mark_verified(end);
            }
        }
        Ok(())
    }

    /// Every row of the chunk whose bytes fail their checksum, read afresh.
    pub fn scrub(&self) -> Result<Damaged> {
        let mut damaged = Vec::new();
        let mut start = 0;
        for s in &self.sums {
            if let Some(crc) = s.crc {
                if crc32fast::hash(&self.file.range(self.len, start, s.end)?) != crc {
                    damaged.extend(self.damaged_rows(start, s.end)?);
                }
            }
            start = s.end;
        }
        Ok(damaged)
    }

    /// The rows of the batches within committed bytes `start..end`.
    fn damaged_rows(&self, start: u64, end: u64) -> Result<Damaged> {
        let (_, locs) = self.file.batches(self.len)?;
        let mut first = 0;
        let mut out = Vec::new();
        for l in locs {
            if l.start >= start && l.end <= end {
                out.push((first, l.rows));
            }
            first += l.rows;
        }
        Ok(out)
    }

    /// The error for `rows` whose stored bytes fail their checksum.
    pub fn data_loss(&self, rows: &[(usize, usize)]) -> Error {
        let named: Vec<String> = rows
            .iter()
            .flat_map(|&(first, n)| first..first + n)
            .filter_map(|i| Some(format!("{} (scene {})", time_text(*self.times.get(i)?), self.scenes.get(i)?)))
            .take(8)
            .collect();
        Error::DataLoss(format!(
            "{}: stored observations fail their checksum: {}",
            self.file.label,
            if named.is_empty() { "?".into() } else { named.join(", ") }
        ))
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
    /// The product's processing baseline, if known.
    pub baseline: Option<String>,
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
            Record::Scene { scene_id, time_ms, fingerprint, baseline, replaces, chunks } => {
                self.rewrite(replaces, paths, collection, &mut superseded)?;
                self.scenes.insert(scene_id.clone(), StoredScene { time_ms: *time_ms, fingerprint: fingerprint.clone(), baseline: baseline.clone() });
                let scene: Arc<str> = Arc::from(scene_id.as_str());
                for a in chunks {
                    let key = ChunkKey::from_ref(&a.chunk)?;
                    let e = self.chunks.entry(key.clone()).or_insert_with(|| ChunkEntry {
                        file: ChunkFile::new(paths.chunk(collection, key.tile, key.month, &key.band, a.gen), a.gen, key.label(collection)),
                        len: 0,
                        times: Vec::new(),
                        scenes: Vec::new(),
                        row_stats: Vec::new(),
                        stats: PixelStats::default(),
                        appends: 0,
                        sums: Vec::new(),
                    });
                    e.row_stats.push(Some(RowStats::new(&a.stats, a.len.saturating_sub(e.len))));
                    e.len = a.len;
                    e.sums.push(Sum { end: a.len, crc: a.crc });
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
                let sums = if r.sums.is_empty() {
                    vec![Sum { end: r.len, crc: None }]
                } else {
                    r.sums.iter().map(|&(end, crc)| Sum { end, crc: Some(crc) }).collect()
                };
                let entry = ChunkEntry {
                    file: ChunkFile::new(paths.chunk(collection, key.tile, key.month, &key.band, r.gen), r.gen, key.label(collection)),
                    len: r.len,
                    times: r.rows.iter().map(|(t, _)| *t).collect(),
                    scenes: r.rows.iter().map(|(_, s)| Arc::from(s.as_str())).collect(),
                    row_stats: if r.row_stats.len() == r.rows.len() { r.row_stats.iter().copied().map(Some).collect() } else { vec![None; r.rows.len()] },
                    stats: r.stats,
                    // Written whole: one batch, as far as compaction goes.
                    appends: 1,
                    sums,
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
