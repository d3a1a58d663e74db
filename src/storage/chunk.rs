//! Chunk files: one Arrow IPC *stream* per (collection, tile, band, month),
//! one record batch per observation, appended in place.
//!
//! An append writes only the new batch's message at the file's committed
//! length and fsyncs, so its cost does not depend on what the chunk already
//! holds. Readers read a prefix of known committed length, so they never see
//! a batch that is being written. The stream has no end-of-stream marker:
//! pyarrow and arrow-rs both read such a stream to its end. The committed
//! length lives in the catalog log; on start, bytes past it are cut off.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, BooleanArray, ListArray, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow_buffer::OffsetBuffer;
use arrow_ipc::writer::{IpcWriteOptions, StreamWriter};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::collection::DType;
use crate::error::{Error, Result};
use crate::storage::log::PixelStats;

/// Column names, in stream order (`docs/protocol.md`).
pub const COLUMNS: [&str; 6] = ["tile_id", "band", "time", "scene_id", "pixels", "mask"];

/// The Arrow type of the `time` column.
pub fn time_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

/// Schema of chunk files and chunk streams; `metadata` says where the pixels sit.
pub fn schema(dtype: DType, metadata: std::collections::HashMap<String, String>) -> Schema {
    Schema::new(vec![
        Field::new("tile_id", DataType::Utf8, false),
        Field::new("band", DataType::Utf8, false),
        Field::new("time", time_type(), false),
        Field::new("scene_id", DataType::Utf8, false),
        Field::new("pixels", DataType::List(Arc::new(Field::new_list_field(dtype.arrow(), false))), false),
        Field::new("mask", DataType::List(Arc::new(Field::new_list_field(DataType::Boolean, false))), false),
    ])
    .with_metadata(metadata)
}

fn one_list(values: ArrayRef) -> Result<ListArray> {
    let field = Arc::new(Field::new_list_field(values.data_type().clone(), false));
    ListArray::try_new(field, OffsetBuffer::from_lengths([values.len()]), values, None).map_err(Error::arrow("building a pixel list"))
}

/// One observation as a one-row batch of `schema`.
pub fn observation_batch(
    schema: SchemaRef,
    tile_id: &str,
    band: &str,
    time_ms: i64,
    scene_id: &str,
    pixels: ArrayRef,
    mask: BooleanArray,
) -> Result<RecordBatch> {
    let time = TimestampMillisecondArray::from(vec![time_ms]).with_timezone("UTC");
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![tile_id])),
        Arc::new(StringArray::from(vec![band])),
        Arc::new(time),
        Arc::new(StringArray::from(vec![scene_id])),
        Arc::new(one_list(pixels)?),
        Arc::new(one_list(Arc::new(mask))?),
    ];
    RecordBatch::try_new(schema, columns).map_err(Error::arrow("building an observation batch"))
}

/// Encodes `batch` as IPC stream bytes: `(schema message length, bytes)`.
/// The bytes start with the schema message; an append to an existing file
/// writes only `bytes[schema_len..]`.
pub fn encode(batch: &RecordBatch, options: &IpcWriteOptions) -> Result<(usize, Vec<u8>)> {
    // Sized up front: growing by doubling would copy the pixels several times.
    let room = batch.get_array_memory_size() + 4096;
    let mut w =
        StreamWriter::try_new_with_options(Vec::with_capacity(room), &batch.schema(), options.clone()).map_err(Error::arrow("encoding a chunk schema"))?;
    let schema_len = w.get_ref().len();
    w.write(batch).map_err(Error::arrow("encoding an observation"))?;
    // Take the bytes rather than `into_inner`, which would add an
    // end-of-stream marker that must not sit between appended batches.
    Ok((schema_len, std::mem::take(w.get_mut())))
}

/// Checksummed segments of a chunk file, in order from byte 0: each one's
/// end and the CRC-32 of its bytes.
pub type Sums = Vec<(u64, u32)>;

/// Pixel bytes per message when a chunk is written whole (compaction,
/// delete): small messages let a time-window read skip what it does not
/// need, as it does for appended observations.
const MESSAGE_PIXEL_BYTES: usize = 1 << 20;

/// Rows of an observation batch that make about `MESSAGE_PIXEL_BYTES` of
/// pixels (at least one): the size of the messages written and served.
pub fn rows_per_message(batch: &RecordBatch) -> usize {
    let pixels = batch.column(4).as_list::<i32>();
    let row_bytes = pixels.values().len() * pixels.value_type().primitive_width().unwrap_or(8) / batch.num_rows().max(1);
    (MESSAGE_PIXEL_BYTES / row_bytes.max(1)).max(1)
}

/// A chunk's bytes holding `batch` whole, in messages of about
/// `MESSAGE_PIXEL_BYTES` (what compaction and delete write), with its
/// checksummed segments: one per record batch message, the first one
/// holding the schema message too (see [`Sums`]).
pub fn encode_whole(batch: &RecordBatch, options: &IpcWriteOptions) -> Result<(Vec<u8>, Sums)> {
    let per_message = rows_per_message(batch);
    let mut w = StreamWriter::try_new_with_options(Vec::new(), &batch.schema(), options.clone()).map_err(Error::arrow("encoding a chunk schema"))?;
    let mut sums = Vec::new();
    for first in (0..batch.num_rows()).step_by(per_message) {
        // Rows are taken, not sliced, so every message's list offsets start
        // at 0 (what `read_pixel` relies on).
        let rows = arrow_array::UInt32Array::from_iter_values(first as u32..(first + per_message).min(batch.num_rows()) as u32);
        let part = arrow_select::take::take_record_batch(batch, &rows).map_err(Error::arrow("splitting a chunk"))?;
        let from = sums.last().map_or(0, |s: &(u64, u32)| s.0 as usize);
        w.write(&part).map_err(Error::arrow("encoding observations"))?;
        let bytes = w.get_ref();
        sums.push((bytes.len() as u64, crc32fast::hash(&bytes[from..])));
    }
    Ok((std::mem::take(w.get_mut()), sums))
}

/// Where one record batch message of a chunk file sits, read from its
/// header alone (the body is not touched).
#[derive(Debug, Clone, Copy)]
pub struct BatchLoc {
    /// First byte of the message and one past its body.
    pub start: u64,
    pub end: u64,
    pub rows: usize,
    /// File offsets and lengths of the pixel values and the mask bits (the
    /// list children of `pixels` and `mask`); `None` for a layout this
    /// server did not write.
    pub pixels: Option<(u64, u64)>,
    pub mask: Option<(u64, u64)>,
    /// Its buffers are compressed (lz4 or zstd).
    pub compressed: bool,
}

/// The framing of an encapsulated IPC message from its first bytes:
/// `(prefix length, metadata length)`. Stream messages start with
/// 0xFFFFFFFF and the length; older writers wrote the length alone.
pub(crate) fn message_prefix(head: &[u8]) -> Option<(usize, i32)> {
    let word = |at: usize| head.get(at..at + 4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    match word(0)? {
        -1 => Some((8, word(4)?)),
        n => Some((4, n)),
    }
}

/// Buffers of one observation batch, in IPC order: tile_id, band (validity,
/// offsets, data), time (validity, values), scene_id (3), pixels (validity,
/// offsets, child validity, child values), mask (the same).
pub(crate) const BATCH_BUFFERS: usize = 19;
pub(crate) const PIXEL_VALUES: usize = 14;
pub(crate) const MASK_VALUES: usize = 18;

/// An encapsulated IPC message (as stored) split into its flatbuffer header
/// and its body: what a FlightData carries, with no copy.
pub fn split_message(message: &bytes::Bytes) -> Option<(bytes::Bytes, bytes::Bytes)> {
    let (prefix, len) = message_prefix(message)?;
    let body_at = prefix.checked_add(usize::try_from(len).ok()?)?;
    (body_at <= message.len()).then(|| (message.slice(prefix..body_at), message.slice(body_at..)))
}

/// One pixel of every row of the batches `locs` of a chunk whose bytes are
/// `data`: `(value bytes, valid)` per row in file order, `size` bytes per
/// value, `n` pixels per row. `None` when a batch's layout is not the one
/// this server writes or lies outside `data` (the caller then decodes).
pub fn read_pixel(data: &[u8], locs: &[BatchLoc], index: usize, n: usize, size: usize) -> Option<(Vec<u8>, Vec<bool>)> {
    let rows: usize = locs.iter().map(|l| l.rows).sum();
    let (mut values, mut valid) = (Vec::with_capacity(rows * size), Vec::with_capacity(rows));
    for loc in locs {
        let (Some((px_at, px_len)), Some((mk_at, mk_len))) = (loc.pixels, loc.mask) else { return None };
        if px_len < (loc.rows * n * size) as u64 || mk_len < (loc.rows * n).div_ceil(8) as u64 {
            return None;
        }
        for row in 0..loc.rows {
            let k = row * n + index;
            let at = usize::try_from(px_at).ok()? + k * size;
            values.extend_from_slice(data.get(at..at + size)?);
            let bits = *data.get(usize::try_from(mk_at).ok()? + k / 8)?;
            valid.push(bits >> (k % 8) & 1 == 1);
        }
    }
    Some((values, valid))
}

/// Statistics of the valid, finite pixels of one observation (`pixels` and `mask`
/// of equal length, row-major rows of `tile_px`).
pub fn pixel_stats(pixels: &ArrayRef, mask: &BooleanArray, tile_px: usize) -> PixelStats {
    fn typed<T: arrow_array::ArrowPrimitiveType>(pixels: &ArrayRef, mask: &BooleanArray, tile_px: usize) -> PixelStats
    where
        T::Native: crate::sample::Sample,
    {
        use crate::sample::Sample;
        let values = pixels.as_primitive::<T>().values();
        let bits = mask.values();
        let mut s = PixelStats { valid: 0, min: f64::INFINITY, max: f64::NEG_INFINITY, sum: 0.0, bbox: [0; 4] };
        let (mut c0, mut r0, mut c1, mut r1) = (usize::MAX, usize::MAX, 0usize, 0usize);
        let n = tile_px.max(1);
        for (r, row) in values.chunks(n).enumerate() {
            let row_mask = bits.slice(r * n, row.len());
            let count = row_mask.count_set_bits();
            if count == 0 {
                continue;
            }
            let (before, mut first, mut last) = (s.valid, usize::MAX, 0);
            // A whole valid row of integers (the common case) in integer
            // lanes, no per-pixel tests (a third of a raw put's tile work
            // had gone to f64 lanes).
            let whole = if count == row.len() { T::Native::int_row_stats(row) } else { None };
            if let Some((lo, hi, sum)) = whole {
                s.min = s.min.min(lo);
                s.max = s.max.max(hi);
                s.sum += sum;
                s.valid += row.len() as u64;
                (first, last) = (0, row.len());
            } else {
                for c in row_mask.set_indices() {
                    let v = row[c].to_f64();
                    if !v.is_finite() {
                        continue;
                    }
                    s.valid += 1;
                    s.min = s.min.min(v);
                    s.max = s.max.max(v);
                    s.sum += v;
                    (first, last) = (first.min(c), c + 1);
                }
            }
            if s.valid > before {
                (c0, r0, c1, r1) = (c0.min(first), r0.min(r), c1.max(last), r + 1);
            }
        }
        if s.valid == 0 {
            return PixelStats::default();
        }
        s.bbox = [c0 as u32, r0 as u32, c1 as u32, r1 as u32];
        s
    }
    match DType::from_arrow(pixels.data_type()) {
        Some(d) => crate::with_arrow_type!(d, T => typed::<T>(pixels, mask, tile_px)),
        None => PixelStats::default(),
    }
}

/// Statistics of every row of a chunk batch, merged.
pub fn batch_stats(batch: &RecordBatch, tile_px: usize) -> PixelStats {
    let mut s = PixelStats::default();
    let (Some(px), Some(mk)) = (batch.column_by_name("pixels"), batch.column_by_name("mask")) else { return s };
    let (px, mk) = (px.as_list::<i32>(), mk.as_list::<i32>());
    for r in 0..batch.num_rows() {
        s.merge(&pixel_stats(&px.value(r), mk.value(r).as_boolean(), tile_px));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixel_stats_match_a_pixel_by_pixel_reference() {
        // Rows of 5: whole valid rows, partly masked rows, an empty row; an
        // offset slice; floats with NaN and infinity under valid bits.
        let n = 5;
        let ints: Vec<u32> = (0..30).map(|i| (i * 7919 % 1000) as u32).collect();
        let mask: Vec<bool> = (0..30).map(|i| !(10..15).contains(&i) && i != 3 && i != 27).collect();
        let floats: Vec<f32> = (0..30)
            .map(|i| {
                if i == 6 {
                    f32::NAN
                } else if i == 21 {
                    f32::INFINITY
                } else {
                    i as f32 * 0.5 - 3.0
                }
            })
            .collect();
        let reference = |v: &[f64], m: &[bool]| {
            let valid: Vec<(usize, f64)> = v.iter().zip(m).enumerate().filter(|(_, (x, ok))| **ok && x.is_finite()).map(|(i, (x, _))| (i, *x)).collect();
            let (cols, rows): (Vec<usize>, Vec<usize>) = valid.iter().map(|(i, _)| (i % n, i / n)).unzip();
            (
                valid.len() as u64,
                valid.iter().map(|p| p.1).fold(f64::INFINITY, f64::min),
                valid.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max),
                valid.iter().map(|p| p.1).sum::<f64>(),
                [
                    *cols.iter().min().unwrap() as u32,
                    *rows.iter().min().unwrap() as u32,
                    *cols.iter().max().unwrap() as u32 + 1,
                    *rows.iter().max().unwrap() as u32 + 1,
                ],
            )
        };
        let check = |px: ArrayRef, v: Vec<f64>, offset: usize| {
            let m = BooleanArray::from(mask.clone());
            let (px, m) = (px.slice(offset, 30 - offset), m.slice(offset, 30 - offset));
            let st = pixel_stats(&px, &m, n);
            assert_eq!((st.valid, st.min, st.max, st.sum, st.bbox), reference(&v[offset..], &mask[offset..]), "offset {offset}");
        };
        for offset in [0, 5] {
            check(Arc::new(arrow_array::UInt32Array::from(ints.clone())), ints.iter().map(|v| *v as f64).collect(), offset);
            check(Arc::new(arrow_array::Float32Array::from(floats.clone())), floats.iter().map(|v| *v as f64).collect(), offset);
        }
    }

    /// Whole valid integer rows take integer lanes: the same statistics as
    /// summing in f64, for large values and rows of any length.
    #[test]
    fn integer_rows_give_exact_statistics() {
        for n in [1, 7, 16, 256, 5000] {
            let u: Vec<u16> = (0..3 * n).map(|i| 65535 - (i * 31 % 97) as u16).collect();
            let mask = BooleanArray::from(vec![true; 3 * n]);
            let st = pixel_stats(&(Arc::new(arrow_array::UInt16Array::from(u.clone())) as ArrayRef), &mask, n);
            let want = (
                u.len() as u64,
                *u.iter().min().unwrap() as f64,
                *u.iter().max().unwrap() as f64,
                u.iter().map(|v| *v as f64).sum::<f64>(),
                [0, 0, n as u32, 3],
            );
            assert_eq!((st.valid, st.min, st.max, st.sum, st.bbox), want, "rows of {n}");
        }
        // Rows past one part of partial sums, at each type's extremes.
        use crate::sample::Sample;
        let len = (16 << 16) + 5;
        assert_eq!(u16::int_row_stats(&vec![65535u16; len]), Some((65535.0, 65535.0, 65535.0 * len as f64)));
        assert_eq!(u8::int_row_stats(&vec![255u8; len]), Some((255.0, 255.0, 255.0 * len as f64)));
        assert_eq!(i16::int_row_stats(&vec![i16::MIN; len]), Some((-32768.0, -32768.0, -32768.0 * len as f64)));
        assert_eq!(i16::int_row_stats(&[i16::MIN, i16::MAX, 5]), Some((-32768.0, 32767.0, 4.0)));
        assert_eq!(u32::int_row_stats(&vec![u32::MAX; len]), Some((u32::MAX as f64, u32::MAX as f64, u32::MAX as f64 * len as f64)));
        assert_eq!(i32::int_row_stats(&vec![i32::MIN; len]), Some((i32::MIN as f64, i32::MIN as f64, i32::MIN as f64 * len as f64)));
        assert_eq!(f32::int_row_stats(&[1.0]), None);
        assert_eq!(u16::int_row_stats(&[]), None);
    }
}
