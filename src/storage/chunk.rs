//! Chunk files: one Arrow IPC *stream* per (collection, tile, band, month),
//! one record batch per observation, appended in place.
//!
//! An append writes only the new batch's message at the file's committed
//! length and fsyncs, so its cost does not depend on what the chunk already
//! holds. Readers read a prefix of known committed length, so they never see
//! a batch that is being written. The stream has no end-of-stream marker:
//! pyarrow and arrow-rs both read such a stream to its end. The committed
//! length lives in the catalog log; on start, bytes past it are cut off.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, BooleanArray, ListArray, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow_buffer::OffsetBuffer;
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::collection::DType;
use crate::error::{Error, Result};
use crate::storage::log::PixelStats;

/// Column names, in stream order (DESIGN §4a).
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
pub fn encode(batch: &RecordBatch) -> Result<(usize, Vec<u8>)> {
    // Sized up front: growing by doubling would copy the pixels several times.
    let room = batch.get_array_memory_size() + 4096;
    let mut w = StreamWriter::try_new(Vec::with_capacity(room), &batch.schema()).map_err(Error::arrow("encoding a chunk schema"))?;
    let schema_len = w.get_ref().len();
    w.write(batch).map_err(Error::arrow("encoding an observation"))?;
    // Take the bytes rather than `into_inner`, which would add an
    // end-of-stream marker that must not sit between appended batches.
    Ok((schema_len, std::mem::take(w.get_mut())))
}

/// Appends an [`encode`]d batch to the chunk at `path` whose committed
/// length is `committed` (0 = new chunk: with its schema message) and
/// returns the new length with the open file. Bytes past `committed` (a
/// torn or rolled-back write) are overwritten. The caller fsyncs the file
/// (a scene syncs all its chunks together).
pub fn append(path: &Path, committed: u64, (schema_len, bytes): &(usize, Vec<u8>)) -> Result<(u64, File)> {
    let io = || Error::io(path);
    let mut f = OpenOptions::new().create(true).write(true).truncate(false).open(path).map_err(io())?;
    let body = if committed == 0 { &bytes[..] } else { &bytes[*schema_len..] };
    // Cut only if something lies past the committed length: truncating to
    // the file's own length still costs a metadata update (a twentieth of
    // a raw put's writer CPU, one per chunk).
    if f.metadata().map_err(io())?.len() != committed {
        f.set_len(committed).map_err(io())?;
    }
    f.seek(SeekFrom::Start(committed)).map_err(io())?;
    f.write_all(body).map_err(io())?;
    Ok((committed + body.len() as u64, f))
}

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

/// Writes a new chunk file holding `batch` (in messages of about
/// `MESSAGE_PIXEL_BYTES`) and fsyncs it; returns its length.
pub fn write_new(path: &Path, batch: &RecordBatch) -> Result<u64> {
    let per_message = rows_per_message(batch);
    let mut w = StreamWriter::try_new(Vec::new(), &batch.schema()).map_err(Error::arrow("encoding a chunk schema"))?;
    for first in (0..batch.num_rows()).step_by(per_message) {
        // Rows are taken, not sliced, so every message's list offsets start
        // at 0 (what `read_pixel` relies on).
        let rows = arrow_array::UInt32Array::from_iter_values(first as u32..(first + per_message).min(batch.num_rows()) as u32);
        let part = arrow_select::take::take_record_batch(batch, &rows).map_err(Error::arrow("splitting a chunk"))?;
        w.write(&part).map_err(Error::arrow("encoding observations"))?;
    }
    let bytes = std::mem::take(w.get_mut());
    let mut f = OpenOptions::new().create(true).write(true).truncate(true).open(path).map_err(Error::io(path))?;
    f.write_all(&bytes).and_then(|_| f.sync_data()).map_err(Error::io(path))?;
    Ok(bytes.len() as u64)
}

/// Appends bytes `[from, to)` of chunk `src` (whole record batch messages
/// of the same schema) to the end of chunk `dst`, fsyncs, returns `dst`'s
/// new length.
pub fn copy_tail(src: &Path, from: u64, to: u64, dst: &Path) -> Result<u64> {
    let mut input = File::open(src).map_err(Error::io(src))?;
    input.seek(SeekFrom::Start(from)).map_err(Error::io(src))?;
    let mut out = OpenOptions::new().append(true).open(dst).map_err(Error::io(dst))?;
    std::io::copy(&mut input.take(to - from), &mut out).map_err(Error::io(dst))?;
    out.sync_data().map_err(Error::io(dst))?;
    out.metadata().map(|m| m.len()).map_err(Error::io(dst))
}

/// Cuts a chunk back to `len` (rolling back an uncommitted append).
pub fn truncate(path: &Path, len: u64) -> Result<()> {
    if len == 0 {
        return match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(path)(e)),
            _ => Ok(()),
        };
    }
    let f = OpenOptions::new().write(true).open(path).map_err(Error::io(path))?;
    f.set_len(len).map_err(Error::io(path))?;
    f.sync_data().map_err(Error::io(path))
}

/// Reads the first `len` bytes of a chunk as record batches.
pub fn read(path: &Path, len: u64) -> Result<Vec<RecordBatch>> {
    let f = File::open(path).map_err(Error::io(path))?;
    let reader = StreamReader::try_new(std::io::BufReader::with_capacity(1 << 20, f.take(len)), None)
        .map_err(|e| Error::Corrupt { path: path.into(), reason: e.to_string() })?;
    reader.collect::<std::result::Result<Vec<_>, _>>().map_err(|e| Error::Corrupt { path: path.into(), reason: e.to_string() })
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
}

/// The framing of an encapsulated IPC message from its first bytes:
/// `(prefix length, metadata length)`. Stream messages start with
/// 0xFFFFFFFF and the length; older writers wrote the length alone.
fn message_prefix(head: &[u8]) -> Option<(usize, i32)> {
    let word = |at: usize| head.get(at..at + 4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    match word(0)? {
        -1 => Some((8, word(4)?)),
        n => Some((4, n)),
    }
}

/// Buffers of one observation batch, in IPC order: tile_id, band (validity,
/// offsets, data), time (validity, values), scene_id (3), pixels (validity,
/// offsets, child validity, child values), mask (the same).
const BATCH_BUFFERS: usize = 19;
const PIXEL_VALUES: usize = 14;
const MASK_VALUES: usize = 18;

/// The messages of chunk bytes `[from, to)`: `(end of the schema message
/// if it lies in the range, batches)`. Reads only message headers.
pub fn scan(path: &Path, from: u64, to: u64) -> Result<(Option<u64>, Vec<BatchLoc>)> {
    let mut f = File::open(path).map_err(Error::io(path))?;
    let corrupt = |reason: String| Error::Corrupt { path: path.into(), reason };
    let (mut at, mut schema_end, mut out) = (from, None, Vec::new());
    let mut meta = Vec::new();
    while at < to {
        let mut head = [0u8; 8];
        let n = (to - at).min(8) as usize;
        f.seek(SeekFrom::Start(at)).and_then(|_| f.read_exact(&mut head[..n])).map_err(Error::io(path))?;
        let (prefix, meta_len) = message_prefix(&head[..n]).ok_or_else(|| corrupt(format!("message at byte {at} is cut short")))?;
        if meta_len <= 0 {
            return Err(corrupt(format!("message at byte {at} has metadata length {meta_len}")));
        }
        meta.resize(meta_len as usize, 0);
        f.seek(SeekFrom::Start(at + prefix as u64)).and_then(|_| f.read_exact(&mut meta)).map_err(Error::io(path))?;
        let msg = arrow_ipc::root_as_message(&meta).map_err(|e| corrupt(format!("message header at byte {at}: {e}")))?;
        let body_at = at + prefix as u64 + meta_len as u64;
        let end = body_at + msg.bodyLength().max(0) as u64;
        if end > to {
            return Err(corrupt(format!("message at byte {at} ends at {end}, past the committed length {to}")));
        }
        if msg.header_as_schema().is_some() {
            schema_end = Some(end);
        } else if let Some(batch) = msg.header_as_record_batch() {
            let buffers = batch.buffers().filter(|b| b.len() == BATCH_BUFFERS && batch.compression().is_none());
            let range = |i: usize| buffers.map(|b| (body_at + b.get(i).offset() as u64, b.get(i).length() as u64));
            out.push(BatchLoc { start: at, end, rows: batch.length().max(0) as usize, pixels: range(PIXEL_VALUES), mask: range(MASK_VALUES) });
        }
        at = end;
    }
    Ok((schema_end, out))
}

/// Decodes the batches `locs` of a chunk whose schema message ends at
/// `schema_end`, reading only their bytes.
pub fn read_batches(path: &Path, schema_end: u64, locs: &[BatchLoc]) -> Result<Vec<RecordBatch>> {
    let mut f = File::open(path).map_err(Error::io(path))?;
    let total = schema_end + locs.iter().map(|l| l.end - l.start).sum::<u64>();
    let mut bytes = Vec::with_capacity(total as usize);
    let mut copy = |from: u64, to: u64, bytes: &mut Vec<u8>| -> Result<()> {
        f.seek(SeekFrom::Start(from)).map_err(Error::io(path))?;
        (&mut f).take(to - from).read_to_end(bytes).map_err(Error::io(path))?;
        Ok(())
    };
    copy(0, schema_end, &mut bytes)?;
    // Adjacent batches are read in one go.
    let mut i = 0;
    while i < locs.len() {
        let mut j = i;
        while j + 1 < locs.len() && locs[j + 1].start == locs[j].end {
            j += 1;
        }
        copy(locs[i].start, locs[j].end, &mut bytes)?;
        i = j + 1;
    }
    let reader = StreamReader::try_new(std::io::Cursor::new(bytes), None).map_err(|e| Error::Corrupt { path: path.into(), reason: e.to_string() })?;
    reader.collect::<std::result::Result<Vec<_>, _>>().map_err(|e| Error::Corrupt { path: path.into(), reason: e.to_string() })
}

/// Bytes `[from, to)` of a chunk file.
pub fn read_range(path: &Path, from: u64, to: u64) -> Result<bytes::Bytes> {
    use std::os::unix::fs::FileExt;
    let f = File::open(path).map_err(Error::io(path))?;
    let mut buf = vec![0u8; (to - from) as usize];
    f.read_exact_at(&mut buf, from).map_err(Error::io(path))?;
    Ok(buf.into())
}

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
    use arrow_array::UInt16Array;

    fn batch(schema: &SchemaRef, t: i64, scene: &str) -> RecordBatch {
        let px: ArrayRef = Arc::new(UInt16Array::from(if t >= 5000 { (0..4).map(|i| (t - 5000) as u16 * 10 + i).collect() } else { vec![1u16, 2, 3, 4] }));
        observation_batch(schema.clone(), "x0001_y0002", "red", t, scene, px, BooleanArray::from(vec![true, false, true, true])).unwrap()
    }

    #[test]
    fn appends_read_back_and_garbage_past_the_committed_length_is_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("red.arrow");
        let schema = Arc::new(schema(DType::Uint16, [("band".to_string(), "red".to_string())].into()));
        let mut len = 0;
        for i in 0..3 {
            len = append(&path, len, &encode(&batch(&schema, 1000 + i, &format!("s{i}"))).unwrap()).unwrap().0;
        }
        let rows: usize = read(&path, len).unwrap().iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows, 3);
        // An uncommitted append leaves bytes past `len`; the next one overwrites them.
        append(&path, len, &encode(&batch(&schema, 2000, "torn")).unwrap()).unwrap();
        OpenOptions::new().append(true).open(&path).unwrap().write_all(b"junk").unwrap();
        let len2 = append(&path, len, &encode(&batch(&schema, 3000, "s4")).unwrap()).unwrap().0;
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len2);
        let batches = read(&path, len2).unwrap();
        assert_eq!(batches.len(), 4);
        assert_eq!(batches[3].column(3).as_string::<i32>().value(0), "s4");
        assert_eq!(batches[0].schema().metadata().get("band").map(String::as_str), Some("red"));
        // A rewrite's tail copy keeps whole messages readable.
        let path2 = dir.path().join("red.1.arrow");
        let l0 = write_new(&path2, &batch(&schema, 1, "x")).unwrap();
        let l1 = copy_tail(&path, len, len2, &path2).unwrap();
        assert!(l1 > l0);
        assert_eq!(read(&path2, l1).unwrap().len(), 2);
        let st = pixel_stats(&batches[0].column(4).as_list::<i32>().value(0), batches[0].column(5).as_list::<i32>().value(0).as_boolean(), 2);
        assert_eq!((st.valid, st.min, st.max, st.sum, st.bbox), (3, 1.0, 4.0, 8.0, [0, 0, 2, 2]));
    }

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

    #[test]
    fn scanned_headers_locate_batches_and_single_pixels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("red.arrow");
        let schema = Arc::new(schema(DType::Uint16, Default::default()));
        // A compacted file: one batch of 3 rows, then 2 appended rows.
        let three: Vec<RecordBatch> = (0..3).map(|i| batch(&schema, 5000 + i, &format!("s{i}"))).collect();
        let mut len = write_new(&path, &arrow_select::concat::concat_batches(&schema, &three).unwrap()).unwrap();
        for i in 3..5 {
            len = append(&path, len, &encode(&batch(&schema, 5000 + i, &format!("s{i}"))).unwrap()).unwrap().0;
        }
        let (schema_end, locs) = scan(&path, 0, len).unwrap();
        let schema_end = schema_end.unwrap();
        assert_eq!(locs.iter().map(|l| l.rows).collect::<Vec<_>>(), vec![3, 1, 1]);
        assert_eq!(locs[0].start, schema_end);
        assert_eq!(locs[2].end, len);
        // Scanning a later part alone finds the same batches.
        let (none, tail) = scan(&path, locs[1].start, len).unwrap();
        assert!(none.is_none());
        assert_eq!(tail.len(), 2);
        let some = read_batches(&path, schema_end, &locs[1..]).unwrap();
        assert_eq!(some.iter().map(|b| b.column(3).as_string::<i32>().value(0).to_string()).collect::<Vec<_>>(), vec!["s3", "s4"]);
        let data = std::fs::read(&path).unwrap();
        for index in 0..4 {
            let (values, valid) = read_pixel(&data, &locs, index, 4, 2).expect("our layout");
            let got: Vec<u16> = values.chunks(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect();
            assert_eq!(got, (0..5).map(|row| row * 10 + index as u16).collect::<Vec<_>>(), "pixel {index}");
            assert_eq!(valid, vec![index != 1; 5], "pixel {index}");
        }
    }
}
