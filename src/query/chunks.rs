//! The answer of stored chunks: one endpoint per chunk (one tile, band and
//! month), rows as stored wherever they lie wholly in the time range.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;

use super::{common_dtype, emit_rows, Piece, Selection};
use crate::error::{Error, Result};
use crate::grid::TileId;
use crate::storage::{self, chunk};
use crate::wire::{self, Area, QuerySpec};

/// Most bytes of stored messages read at once when serving them as stored.
const RAW_READ: u64 = 8 << 20;

/// Stored chunks of tiles.
pub struct ChunkAnswer {
    pub selection: Selection,
}

impl ChunkAnswer {
    /// Chunk rows with the grid's metadata.
    pub fn schema(&self) -> Result<SchemaRef> {
        let dtype = common_dtype(&self.selection.bands)?;
        Ok(Arc::new(chunk::schema(dtype, self.stream_metadata())))
    }

    /// Grid metadata, so a client can put coordinates on every pixel.
    fn stream_metadata(&self) -> HashMap<String, String> {
        let s = &self.selection;
        let g = &s.store.meta.grid;
        let mut m = HashMap::from([
            ("collection".to_string(), s.store.meta.name.clone()),
            ("crs".to_string(), g.crs_wkt.clone()),
            ("tile_span".to_string(), g.tile_span.to_string()),
            ("tile_px".to_string(), g.tile_px.to_string()),
            ("pixel_size".to_string(), g.pixel_size.to_string()),
        ]);
        let tiles: HashSet<TileId> = s.chunks.iter().map(|(k, _)| k.tile).collect();
        if tiles.len() == 1 {
            let t = *tiles.iter().next().unwrap_or(&TileId::new(0, 0));
            m.insert("geotransform".to_string(), serde_json::to_string(&s.store.meta.grid_spec().tile_geotransform(t)).unwrap_or_default());
        }
        m
    }

    /// One plan per chunk with its ticket: the query narrowed to that chunk
    /// (one tile, one band, the month's part of the time range), as JSON.
    pub fn per_chunk(&self) -> Vec<(Vec<u8>, ChunkAnswer)> {
        let s = &self.selection;
        s.chunks
            .iter()
            .map(|(k, e)| {
                let start = Some(s.spec.start_ms.map_or(k.month.start_ms(), |s| s.max(k.month.start_ms())));
                let end = Some(s.spec.end_ms.map_or(k.month.end_ms(), |e| e.min(k.month.end_ms())));
                let tiles = [k.tile.to_string()];
                let bands = [k.band.clone()];
                let ticket = wire::query_json(&s.store.meta.name, &tiles, &bands, (start, end), s.spec.decompress, s.spec.as_of);
                let spec = QuerySpec {
                    collection: s.store.meta.name.clone(),
                    area: Area::Tiles(vec![k.tile]),
                    start_ms: start,
                    end_ms: end,
                    bands: bands.to_vec(),
                    load: None,
                    steps: s.spec.steps.clone(),
                    decompress: s.spec.decompress,
                    as_of: s.spec.as_of,
                };
                let band = s.bands.iter().filter(|b| b.name == k.band).cloned().collect();
                let one = ChunkAnswer { selection: Selection { store: s.store.clone(), spec, bands: band, chunks: vec![(k.clone(), e.clone())] } };
                (ticket, one)
            })
            .collect()
    }

    /// Batches that lie wholly in the time range of a chunk stored in time
    /// order go as the bytes stored, without decoding or re-encoding; the
    /// rest is decoded, filtered, sorted and sent as batches of about a MiB
    /// of pixels. Blocking (file IO).
    pub fn write(&self, emit: &mut dyn FnMut(Piece) -> bool) -> Result<()> {
        let schema = self.schema()?;
        let s = &self.selection;
        let send = |batch: &RecordBatch, emit: &mut dyn FnMut(Piece) -> bool| -> Result<bool> {
            let batch = RecordBatch::try_new(schema.clone(), batch.columns().to_vec()).map_err(Error::arrow("re-labelling a chunk batch"))?;
            Ok(emit_rows(&batch, chunk::rows_per_message(&batch), emit))
        };
        for (_, entry) in &s.chunks {
            let keep = |i: usize| s.spec.time_matches(entry.times[i]);
            if !entry.times.is_sorted() {
                if let Some(batch) = s.read_sorted(entry)? {
                    if !send(&batch, emit)? {
                        return Ok(());
                    }
                }
                continue;
            }
            let (schema_end, picked) = entry.batches_with(keep)?;
            let mut i = 0;
            while i < picked.len() {
                let (first, loc) = picked[i];
                if s.spec.decompress && loc.compressed {
                    // Decoded and sent as plain batches, as asked.
                    for batch in entry.read_batches(schema_end, &[loc])? {
                        if !send(&batch, emit)? {
                            return Ok(());
                        }
                    }
                    i += 1;
                    continue;
                }
                if !(first..first + loc.rows).all(keep) {
                    // A batch straddling the range's edge: decode and cut.
                    let batches = entry.read_batches(schema_end, &[loc])?;
                    let (cut, _) = storage::sorted_rows(&batches, |t, _| s.spec.time_matches(t))?;
                    if let Some(cut) = cut {
                        if !send(&cut, emit)? {
                            return Ok(());
                        }
                    }
                    i += 1;
                    continue;
                }
                // A run of whole, adjacent batches, read in one go (up to
                // RAW_READ bytes) and sent as stored.
                let mut j = i;
                while j + 1 < picked.len() && picked[j + 1].1.start == picked[j].1.end && picked[j + 1].1.end - loc.start <= RAW_READ {
                    let (f, l) = picked[j + 1];
                    if !(f..f + l.rows).all(keep) {
                        break;
                    }
                    j += 1;
                }
                let bytes = entry.range(loc.start, picked[j].1.end)?;
                for (_, l) in &picked[i..=j] {
                    let message = bytes.slice((l.start - loc.start) as usize..(l.end - loc.start) as usize);
                    let (header, body) = chunk::split_message(&message).ok_or_else(|| entry.corrupt(format!("message at byte {}", l.start)))?;
                    if !emit(Piece::Stored { header, body }) {
                        return Ok(());
                    }
                }
                i = j + 1;
            }
        }
        Ok(())
    }
}
