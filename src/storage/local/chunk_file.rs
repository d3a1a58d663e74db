//! Chunk files on the local disk: appends at the committed length, whole
//! rewrites, and reads of committed bytes (the format is `chunk.rs`'s).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use arrow_array::RecordBatch;
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::IpcWriteOptions;

use crate::error::{Error, Result};
use crate::storage::chunk::{self, message_prefix, BatchLoc, BATCH_BUFFERS, MASK_VALUES, PIXEL_VALUES};

/// Appends an [`encode`]d batch to the chunk at `path` whose committed
/// length is `committed` (0 = new chunk: with its schema message) and
/// returns the new length, the CRC-32 of the bytes written and the open
/// file. Bytes past `committed` (a torn or rolled-back write) are
/// overwritten. The caller fsyncs the file (a scene syncs all its chunks
/// together).
pub fn append(path: &Path, committed: u64, (schema_len, bytes): &(usize, Vec<u8>)) -> Result<(u64, u32, File)> {
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
    Ok((committed + body.len() as u64, crc32fast::hash(body), f))
}

/// Writes a new chunk file holding `batch` (see [`chunk::encode_whole`])
/// and fsyncs it; returns its length and its checksummed segments.
pub fn write_new(path: &Path, batch: &RecordBatch, options: &IpcWriteOptions) -> Result<(u64, chunk::Sums)> {
    let (bytes, sums) = chunk::encode_whole(batch, options)?;
    let mut f = OpenOptions::new().create(true).write(true).truncate(true).open(path).map_err(Error::io(path))?;
    f.write_all(&bytes).and_then(|_| f.sync_data()).map_err(Error::io(path))?;
    Ok((bytes.len() as u64, sums))
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
            out.push(BatchLoc {
                start: at,
                end,
                rows: batch.length().max(0) as usize,
                pixels: range(PIXEL_VALUES),
                mask: range(MASK_VALUES),
                compressed: batch.compression().is_some(),
            });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collection::DType;
    use crate::storage::chunk::{encode, observation_batch, pixel_stats, read_pixel, schema};
    use arrow_array::cast::AsArray;
    use arrow_array::{ArrayRef, BooleanArray, UInt16Array};
    use arrow_schema::SchemaRef;
    use std::sync::Arc;

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
            len = append(&path, len, &encode(&batch(&schema, 1000 + i, &format!("s{i}")), &Default::default()).unwrap()).unwrap().0;
        }
        let rows: usize = read(&path, len).unwrap().iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows, 3);
        // An uncommitted append leaves bytes past `len`; the next one overwrites them.
        append(&path, len, &encode(&batch(&schema, 2000, "torn"), &Default::default()).unwrap()).unwrap();
        OpenOptions::new().append(true).open(&path).unwrap().write_all(b"junk").unwrap();
        let len2 = append(&path, len, &encode(&batch(&schema, 3000, "s4"), &Default::default()).unwrap()).unwrap().0;
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len2);
        let batches = read(&path, len2).unwrap();
        assert_eq!(batches.len(), 4);
        assert_eq!(batches[3].column(3).as_string::<i32>().value(0), "s4");
        assert_eq!(batches[0].schema().metadata().get("band").map(String::as_str), Some("red"));
        // A rewrite's tail copy keeps whole messages readable.
        let path2 = dir.path().join("red.1.arrow");
        let (l0, _) = write_new(&path2, &batch(&schema, 1, "x"), &Default::default()).unwrap();
        let l1 = copy_tail(&path, len, len2, &path2).unwrap();
        assert!(l1 > l0);
        assert_eq!(read(&path2, l1).unwrap().len(), 2);
        let st = pixel_stats(&batches[0].column(4).as_list::<i32>().value(0), batches[0].column(5).as_list::<i32>().value(0).as_boolean(), 2);
        assert_eq!((st.valid, st.min, st.max, st.sum, st.bbox), (3, 1.0, 4.0, 8.0, [0, 0, 2, 2]));
    }

    #[test]
    fn scanned_headers_locate_batches_and_single_pixels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("red.arrow");
        let schema = Arc::new(schema(DType::Uint16, Default::default()));
        // A compacted file: one batch of 3 rows, then 2 appended rows.
        let three: Vec<RecordBatch> = (0..3).map(|i| batch(&schema, 5000 + i, &format!("s{i}"))).collect();
        let (mut len, sums) = write_new(&path, &arrow_select::concat::concat_batches(&schema, &three).unwrap(), &Default::default()).unwrap();
        let whole = std::fs::read(&path).unwrap();
        assert_eq!(sums, vec![(len, crc32fast::hash(&whole))], "one message, one segment from byte 0");
        for i in 3..5 {
            len = append(&path, len, &encode(&batch(&schema, 5000 + i, &format!("s{i}")), &Default::default()).unwrap()).unwrap().0;
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

    #[test]
    fn compressed_chunks_read_back_and_are_marked_compressed() {
        use arrow_ipc::CompressionType;
        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(schema(DType::Uint16, Default::default()));
        for codec in [CompressionType::LZ4_FRAME, CompressionType::ZSTD] {
            let options = IpcWriteOptions::default().try_with_compression(Some(codec)).unwrap();
            let path = dir.path().join(format!("{codec:?}.arrow"));
            let (mut len, _) = write_new(&path, &batch(&schema, 5000, "s0"), &options).unwrap();
            for i in 1..3 {
                len = append(&path, len, &encode(&batch(&schema, 5000 + i, &format!("s{i}")), &options).unwrap()).unwrap().0;
            }
            let (schema_end, locs) = scan(&path, 0, len).unwrap();
            assert!(locs.iter().all(|l| l.compressed && l.pixels.is_none()), "{codec:?}");
            let batches = read_batches(&path, schema_end.unwrap(), &locs).unwrap();
            let pixels: Vec<u16> =
                batches.iter().flat_map(|b| b.column(4).as_list::<i32>().values().as_primitive::<arrow_array::types::UInt16Type>().values().to_vec()).collect();
            assert_eq!(pixels, vec![0, 1, 2, 3, 10, 11, 12, 13, 20, 21, 22, 23], "{codec:?}");
            assert!(read_pixel(&std::fs::read(&path).unwrap(), &locs, 0, 4, 2).is_none(), "compressed batches are decoded, not read in place");
        }
    }
}
