//! Reads of committed chunk rows: whole chunks, the batches holding chosen
//! rows, and one pixel of chosen rows without decoding.

use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, UInt32Array};

use super::catalog::ChunkEntry;
use super::{chunk, local, CollectionStore};
use crate::collection::DType;
use crate::error::{Error, Result};

/// One pixel of chosen chunk rows: row indices (file order), their values
/// as one array, and their validity.
pub type PixelRows = (Vec<usize>, ArrayRef, Vec<bool>);

impl CollectionStore {
    /// Reads the committed prefix of a chunk, after its checksums hold.
    pub fn read_chunk(&self, entry: &ChunkEntry) -> Result<Vec<RecordBatch>> {
        entry.check(0, entry.len, false)?;
        local::chunk_file::read(&entry.file.path, entry.len)
    }

    /// The batches of a chunk holding rows `keep` selects (row index in
    /// file order, as `entry.times`); other batches are not read.
    pub fn read_rows(&self, entry: &ChunkEntry, keep: impl Fn(usize) -> bool) -> Result<Vec<RecordBatch>> {
        Ok(self.read_rows_at(entry, keep)?.0)
    }

    /// [`Self::read_rows`] with the file-order index of every row read (a
    /// delete reads only the batches of the rows it keeps, so that damaged
    /// rows it drops cannot stop it).
    pub fn read_rows_at(&self, entry: &ChunkEntry, keep: impl Fn(usize) -> bool) -> Result<(Vec<RecordBatch>, Vec<usize>)> {
        let (schema_end, picked) = entry.file.batches_with(entry.len, keep)?;
        let rows = picked.iter().flat_map(|(first, b)| *first..*first + b.rows).collect();
        let locs: Vec<chunk::BatchLoc> = picked.into_iter().map(|(_, b)| b).collect();
        Ok((entry.read_batches(schema_end, &locs)?, rows))
    }

    /// Pixel `index` of the rows `keep` selects: `(row, value, valid)` with
    /// the values as one array, read without decoding the batches. `None`
    /// when the file's layout needs a full decode.
    pub fn read_pixel(&self, entry: &ChunkEntry, dtype: DType, index: usize, keep: impl Fn(usize) -> bool) -> Result<Option<PixelRows>> {
        let (_, picked) = entry.file.batches_with(entry.len, &keep)?;
        let locs: Vec<chunk::BatchLoc> = picked.iter().map(|(_, b)| *b).collect();
        for l in &locs {
            entry.check(l.start, l.end, true)?;
        }
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
}
