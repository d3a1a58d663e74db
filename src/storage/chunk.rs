//! Chunk files: one Arrow IPC *stream* per (collection, tile, band, month),
//! one record batch per observation, appended in place.
//!
//! An append writes only the new batch's message at the file's committed
//! length and fsyncs, so its cost does not depend on what the chunk already
//! holds. Readers read a prefix of known committed length, so they never see
//! a batch that is being written. The stream has no end-of-stream marker:
//! pyarrow and arrow-rs both read such a stream to its end. On start,
//! [`scan`] finds the last complete message and cuts off a torn tail.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, BooleanArray, ListArray, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow_buffer::OffsetBuffer;
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::collection::DType;
use crate::error::{Error, Result};

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
pub fn observation_batch(schema: SchemaRef, tile_id: &str, band: &str, time_ms: i64, scene_id: &str, pixels: ArrayRef, mask: BooleanArray) -> Result<RecordBatch> {
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
fn encode(batch: &RecordBatch) -> Result<(usize, Vec<u8>)> {
    let mut w = StreamWriter::try_new(Vec::new(), &batch.schema()).map_err(Error::arrow("encoding a chunk schema"))?;
    let schema_len = w.get_ref().len();
    w.write(batch).map_err(Error::arrow("encoding an observation"))?;
    // Take the bytes rather than `into_inner`, which would add an
    // end-of-stream marker that must not sit between appended batches.
    Ok((schema_len, std::mem::take(w.get_mut())))
}

/// Appends `batch` to the chunk at `path` whose committed length is
/// `committed` (0 = new chunk), fsyncs it, and returns the new length.
/// Bytes past `committed` (a torn or rolled-back write) are overwritten.
pub fn append(path: &Path, committed: u64, batch: &RecordBatch) -> Result<u64> {
    let (schema_len, bytes) = encode(batch)?;
    let io = || Error::io(path);
    let mut f = OpenOptions::new().create(true).write(true).truncate(false).open(path).map_err(io())?;
    let body = if committed == 0 { &bytes[..] } else { &bytes[schema_len..] };
    f.set_len(committed).map_err(io())?;
    f.seek(SeekFrom::Start(committed)).map_err(io())?;
    f.write_all(body).map_err(io())?;
    f.sync_data().map_err(io())?;
    Ok(committed + body.len() as u64)
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

/// What [`scan`] found in a chunk file.
pub struct Scanned {
    /// Length of the complete messages; the file is cut to this.
    pub len: u64,
    pub schema: SchemaRef,
    pub times: Vec<i64>,
    pub scene_ids: Vec<String>,
}

/// Length of the longest prefix of `bytes` made of complete IPC messages.
fn complete_prefix(bytes: &[u8]) -> u64 {
    let mut at = 0usize;
    loop {
        let Some(head) = bytes.get(at..at + 8) else { break };
        if head[..4] != [0xff; 4] {
            break;
        }
        let meta_len = i32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if meta_len <= 0 {
            break;
        }
        let meta_end = at + 8 + meta_len as usize;
        let Some(meta) = bytes.get(at + 8..meta_end) else { break };
        let Ok(msg) = arrow_ipc::root_as_message(meta) else { break };
        let Ok(body) = usize::try_from(msg.bodyLength()) else { break };
        let end = meta_end.saturating_add(body);
        if end > bytes.len() {
            break;
        }
        at = end;
    }
    at as u64
}

/// Opens a chunk after a restart: cuts off an incomplete tail (a write the
/// server died in), then reads the times and scene ids. Returns `None` for a
/// file left with no complete observation (it is removed).
pub fn scan(path: &Path) -> Result<Option<Scanned>> {
    let bytes = std::fs::read(path).map_err(Error::io(path))?;
    let len = complete_prefix(&bytes);
    if len < bytes.len() as u64 {
        tracing::warn!(path = %path.display(), kept = len, found = bytes.len(), "cutting an incomplete chunk tail");
        truncate(path, len)?;
    }
    if len == 0 {
        return Ok(None);
    }
    let reader = StreamReader::try_new(&bytes[..len as usize], None).map_err(|e| Error::Corrupt { path: path.into(), reason: e.to_string() })?;
    let schema = reader.schema();
    let (mut times, mut scene_ids) = (Vec::new(), Vec::new());
    for batch in reader {
        let batch = batch.map_err(|e| Error::Corrupt { path: path.into(), reason: e.to_string() })?;
        let t = batch.column_by_name("time").and_then(|c| c.as_any().downcast_ref::<TimestampMillisecondArray>());
        let s = batch.column_by_name("scene_id").and_then(|c| c.as_any().downcast_ref::<StringArray>());
        let (Some(t), Some(s)) = (t, s) else {
            return Err(Error::Corrupt { path: path.into(), reason: "missing time or scene_id column".into() });
        };
        times.extend(t.values().iter().copied());
        scene_ids.extend(s.iter().map(|v| v.unwrap_or_default().to_string()));
    }
    if times.is_empty() {
        truncate(path, 0)?;
        return Ok(None);
    }
    Ok(Some(Scanned { len, schema, times, scene_ids }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::UInt16Array;

    fn batch(schema: &SchemaRef, t: i64, scene: &str) -> RecordBatch {
        let px: ArrayRef = Arc::new(UInt16Array::from(vec![1u16, 2, 3, 4]));
        observation_batch(schema.clone(), "x0001_y0002", "red", t, scene, px, BooleanArray::from(vec![true, false, true, true])).unwrap()
    }

    #[test]
    fn appends_read_back_and_torn_tails_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("red.arrow");
        let schema = Arc::new(schema(DType::Uint16, [("band".to_string(), "red".to_string())].into()));
        let mut len = 0;
        for i in 0..3 {
            len = append(&path, len, &batch(&schema, 1000 + i, &format!("s{i}"))).unwrap();
        }
        let rows: usize = read(&path, len).unwrap().iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows, 3);
        // A torn fourth append: half its bytes reach the file.
        let full = append(&path, len, &batch(&schema, 2000, "s3")).unwrap();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len + (full - len) / 2).unwrap();
        let s = scan(&path).unwrap().unwrap();
        assert_eq!(s.len, len);
        assert_eq!(s.times, vec![1000, 1001, 1002]);
        assert_eq!(s.scene_ids, vec!["s0", "s1", "s2"]);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
        assert_eq!(s.schema.metadata().get("band").map(String::as_str), Some("red"));
        // Appending after garbage overwrites it.
        let garbage = OpenOptions::new().append(true).open(&path).map(|mut f| f.write_all(b"junk")).unwrap();
        let _ = garbage;
        let len2 = append(&path, len, &batch(&schema, 3000, "s4")).unwrap();
        assert_eq!(read(&path, len2).unwrap().len(), 4);
    }
}
