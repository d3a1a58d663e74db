//! Rewrites: compaction and delete write a new generation of a chunk file
//! beside the old one and commit it as a scene is committed; readers keep
//! the generation they hold.

use std::collections::HashSet;
use std::path::PathBuf;

use arrow_array::cast::AsArray;
use arrow_array::{RecordBatch, UInt32Array};

use super::catalog::ChunkKey;
use super::local;
use super::log::{PixelStats, Record, Rewritten, RowStats};
use super::{chunk, read, CollectionStore};
use crate::error::{Error, Result};
use crate::grid::TileId;

/// What a delete or compaction did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RewriteOutcome {
    pub chunks_rewritten: usize,
    pub chunks_removed: usize,
    pub rows_removed: usize,
    pub scenes_removed: Vec<String>,
}

/// What [`CollectionStore::without_rows`] did: the counts, the rewrites and
/// the files written with their lengths.
pub(super) type Rows = (RewriteOutcome, Vec<Rewritten>, Vec<(PathBuf, u64)>);

impl CollectionStore {
    /// Chunks that would profit from compaction (more than one batch).
    pub fn needs_compaction(&self) -> Vec<ChunkKey> {
        read(&self.index).chunks.iter().filter(|(_, e)| e.appends > 1).map(|(k, _)| k.clone()).collect()
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
        let (mut len, mut sums) = local::chunk_file::write_new(&tmp, &sorted, &self.meta.ipc_options()?)?;
        let mut log = self.take_writer();
        let current = read(&self.index).chunks.get(key).cloned().filter(|cur| cur.file.gen == snap.file.gen);
        let Some(cur) = current else {
            let _ = local::remove_file(&tmp);
            return Ok(false);
        };
        if cur.len > snap.len {
            // The copied batches keep their checksums: their bytes move as they are.
            let shift = len;
            len = local::chunk_file::copy_tail(&cur.file.path, snap.len, cur.len, &tmp)?;
            let tail = cur.sums.iter().filter(|s| s.end > snap.len);
            sums.extend(tail.map(|s| (s.end - snap.len + shift, s.crc.unwrap_or_default())));
            if cur.sums.iter().any(|s| s.end > snap.len && s.crc.is_none()) {
                sums.clear();
            }
        }
        local::rename(&tmp, &path)?;
        local::sync_dir(path.parent().unwrap_or(self.paths.root()))?;
        let mut rows: Vec<(i64, String)> = order.iter().map(|&i| (snap.times[i], snap.scenes[i].to_string())).collect();
        rows.extend((snap.times.len()..cur.times.len()).map(|i| (cur.times[i], cur.scenes[i].to_string())));
        let row_stats = known_row_stats(order.iter().copied().chain(snap.times.len()..cur.times.len()).map(|i| cur.row_stats.get(i).copied().flatten()));
        let record = Record::Rewrite {
            reason: "compact".into(),
            chunks: vec![Rewritten { chunk: key.to_ref(), gen, len, rows, stats: cur.stats, sums, row_stats }],
            removed_scenes: vec![],
        };
        self.commit(&mut log, record)?;
        drop(log);
        self.drop_rewritten(&[(path, len)]);
        Ok(true)
    }

    /// Deletes rows durably and atomically: every row of the chunks chosen
    /// by `chunk_filter` for which `remove(chunk, time, scene)` holds. Chunks left
    /// empty are removed; scenes left without rows are forgotten (so they
    /// can be ingested again). `forget` names scenes to forget even if they
    /// had no rows (a scene whose pixels were all invalid). Blocking.
    pub fn delete(&self, chunk_filter: impl Fn(&ChunkKey) -> bool, remove: impl Fn(&ChunkKey, i64, &str) -> bool, forget: &[String]) -> Result<RewriteOutcome> {
        let mut log = self.take_writer();
        let mut touched_scenes: HashSet<String> = forget.iter().cloned().collect();
        let (mut out, rewritten, written_paths) = self.without_rows(chunk_filter, remove, &mut touched_scenes)?;
        for (p, _) in &written_paths {
            local::sync_dir(p.parent().unwrap_or(self.paths.root()))?;
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
        let mut gone: Vec<String> = touched_scenes.into_iter().filter(|s| !still.contains(s.as_str()) && idx.scenes.contains_key(s)).collect();
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

    /// Writes the next generation of each chunk chosen by `chunk_filter`
    /// that holds rows for which `remove(chunk, time, scene)` holds, without them
    /// (a chunk left empty gets no file: its `Rewritten` has length 0).
    /// Nothing is committed; the caller holds the writer. Adds the scenes
    /// of removed rows to `touched`; returns the counts, the rewrites and
    /// the files written with their lengths.
    pub(super) fn without_rows(
        &self,
        chunk_filter: impl Fn(&ChunkKey) -> bool,
        remove: impl Fn(&ChunkKey, i64, &str) -> bool,
        touched: &mut HashSet<String>,
    ) -> Result<Rows> {
        let targets = self.chunks(|k| chunk_filter(k));
        let mut out = RewriteOutcome::default();
        let mut rewritten = Vec::new();
        let mut written_paths = Vec::new();
        for (key, entry) in &targets {
            let remove = |t: i64, s: &str| remove(key, t, s);
            let hits: Vec<usize> = (0..entry.times.len()).filter(|&i| remove(entry.times[i], &entry.scenes[i])).collect();
            if hits.is_empty() {
                continue;
            }
            out.rows_removed += hits.len();
            touched.extend(hits.iter().map(|&i| entry.scenes[i].to_string()));
            let gen = entry.file.gen + 1;
            if hits.len() == entry.times.len() {
                out.chunks_removed += 1;
                rewritten.push(Rewritten { chunk: key.to_ref(), gen, len: 0, rows: vec![], stats: PixelStats::default(), sums: vec![], row_stats: vec![] });
                continue;
            }
            let (batches, at) = self.read_rows_at(entry, |i| !remove(entry.times[i], &entry.scenes[i]))?;
            let (batch, order) = sorted_rows(&batches, |t, s| !remove(t, s))?;
            let Some(batch) = batch else { continue };
            let path = self.paths.chunk(&self.meta.name, key.tile, key.month, &key.band, gen);
            let (len, sums) = local::chunk_file::write_new(&path, &batch, &self.meta.ipc_options()?)?;
            written_paths.push((path, len));
            let rows = order.iter().map(|&i| (entry.times[at[i]], entry.scenes[at[i]].to_string())).collect();
            let row_stats = known_row_stats(order.iter().map(|&i| entry.row_stats.get(at[i]).copied().flatten()));
            out.chunks_rewritten += 1;
            let stats = chunk::batch_stats(&batch, self.meta.grid.tile_px as usize);
            rewritten.push(Rewritten { chunk: key.to_ref(), gen, len, rows, stats, sums, row_stats });
        }
        Ok((out, rewritten, written_paths))
    }

    /// Drops committed rewrites (each file and its length) from the page
    /// cache, as a scene's commit drops what it appended, unless the
    /// warehouse keeps written pages.
    pub(super) fn drop_rewritten(&self, files: &[(PathBuf, u64)]) {
        if self.fs_sync.drop_written {
            local::drop_written_ranges(&files.iter().map(|(path, len)| (path.clone(), 0, *len)).collect::<Vec<_>>());
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
    if order.len() == all.num_rows() && order.iter().enumerate().all(|(k, &i)| k == i) {
        return Ok((Some(all), order));
    }
    let take = UInt32Array::from(order.iter().map(|&i| i as u32).collect::<Vec<_>>());
    let batch = arrow_select::take::take_record_batch(&all, &take).map_err(Error::arrow("ordering chunk rows"))?;
    Ok((Some(batch), order))
}

/// Rows' statistics for a rewrite record: all of them, or none if any row's
/// are unknown (a record holds a statistic for every row or for none).
fn known_row_stats(rows: impl Iterator<Item = Option<RowStats>>) -> Vec<RowStats> {
    rows.collect::<Option<Vec<_>>>().unwrap_or_default()
}
