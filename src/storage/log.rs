//! The catalog log: one append-only file per collection whose records are
//! the commits of that collection (a scene's appends, a rewrite from delete
//! or compaction). A record is written and fsynced once per commit, after
//! the chunk bytes it points at are durable, so it is the commit point: what
//! the log does not hold did not happen.
//!
//! Framing: `u32 LE payload length | u32 LE CRC-32 of payload | payload`
//! (JSON). Replay stops at the first record that is short or fails its CRC
//! (a write the server died in) and cuts the file there.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Summary of valid pixels (of one observation or of a whole chunk); all
/// zero when nothing is valid (JSON has no infinities).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PixelStats {
    pub valid: u64,
    pub min: f64,
    pub max: f64,
    pub sum: f64,
    /// Pixel bounding box of valid pixels: `[col0, row0, col1, row1]`,
    /// exclusive ends; all zero when nothing is valid.
    pub bbox: [u32; 4],
}

impl PixelStats {
    pub fn merge(&mut self, o: &PixelStats) {
        if o.valid == 0 {
            return;
        }
        if self.valid == 0 {
            *self = *o;
            return;
        }
        self.bbox = [self.bbox[0].min(o.bbox[0]), self.bbox[1].min(o.bbox[1]), self.bbox[2].max(o.bbox[2]), self.bbox[3].max(o.bbox[3])];
        self.valid += o.valid;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        self.sum += o.sum;
    }

    pub fn mean(&self) -> Option<f64> {
        (self.valid > 0).then(|| self.sum / self.valid as f64)
    }
}

/// A chunk named in a record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkRef {
    pub tile: String,
    pub month: String,
    pub band: String,
}

/// One observation appended to a chunk by a scene commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Appended {
    #[serde(flatten)]
    pub chunk: ChunkRef,
    /// The chunk file's generation the bytes went to.
    pub gen: u32,
    /// Committed length after the append.
    pub len: u64,
    pub stats: PixelStats,
}

/// The complete new state of a rewritten chunk (`len == 0`: removed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rewritten {
    #[serde(flatten)]
    pub chunk: ChunkRef,
    pub gen: u32,
    pub len: u64,
    /// (time ms, scene id) of every row, in file order.
    pub rows: Vec<(i64, String)>,
    pub stats: PixelStats,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Record {
    /// A scene: one observation per (tile, band) it touched, all at `time_ms`.
    Scene { scene_id: String, time_ms: i64, chunks: Vec<Appended> },
    /// Chunks replaced by new generations (delete, compaction); scenes no
    /// longer present anywhere.
    Rewrite { reason: String, chunks: Vec<Rewritten>, removed_scenes: Vec<String> },
}

/// The open log of one collection. Owned by the collection's writer.
pub struct CatalogLog {
    path: PathBuf,
    file: File,
    /// Committed length; a failed append is cut back to it.
    len: u64,
    /// Records in the log.
    records: u64,
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Complete, valid records of `bytes` and the length they span. A record
/// whose CRC holds but whose payload does not decode is not a torn write:
/// that is an error, never a reason to drop the records after it.
fn parse(path: &Path, bytes: &[u8]) -> Result<(Vec<Record>, u64)> {
    let mut records = Vec::new();
    let mut at = 0usize;
    while let Some(head) = bytes.get(at..at + 8) {
        let n = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let Some(payload) = bytes.get(at + 8..at + 8 + n) else { break };
        if crc32fast::hash(payload) != crc {
            break;
        }
        let r =
            serde_json::from_slice::<Record>(payload).map_err(|e| Error::Corrupt { path: path.to_path_buf(), reason: format!("record at byte {at}: {e}") })?;
        records.push(r);
        at += 8 + n;
    }
    Ok((records, at as u64))
}

impl CatalogLog {
    /// Opens (creating) a log and returns its records; a torn tail is cut.
    pub fn open(path: &Path) -> Result<(Self, Vec<Record>)> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io(path)(e)),
        };
        let (records, len) = parse(path, &bytes)?;
        let file = OpenOptions::new().create(true).truncate(false).read(true).write(true).open(path).map_err(Error::io(path))?;
        if len < bytes.len() as u64 {
            tracing::warn!(path = %path.display(), kept = len, found = bytes.len(), "cutting a torn catalog log tail");
            file.set_len(len).and_then(|_| file.sync_data()).map_err(Error::io(path))?;
        }
        let count = records.len() as u64;
        Ok((Self { path: path.to_path_buf(), file, len, records: count }, records))
    }

    /// How many records the log holds.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Appends `record` durably (write + fdatasync). On failure the log is
    /// cut back so later records never follow a torn one.
    pub fn append(&mut self, record: &Record) -> Result<()> {
        let payload = serde_json::to_vec(record).map_err(|e| Error::Internal(format!("encoding a log record: {e}")))?;
        let bytes = frame(&payload);
        let res = (|| {
            self.file.seek(SeekFrom::Start(self.len))?;
            self.file.write_all(&bytes)?;
            self.file.sync_data()
        })();
        match res {
            Ok(()) => {
                self.len += bytes.len() as u64;
                self.records += 1;
                Ok(())
            }
            Err(e) => {
                let _ = self.file.set_len(self.len);
                Err(Error::io(&self.path)(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scene(id: &str) -> Record {
        Record::Scene {
            scene_id: id.into(),
            time_ms: 5,
            chunks: vec![Appended {
                chunk: ChunkRef { tile: "x0001_y0001".into(), month: "2024-06".into(), band: "red".into() },
                gen: 0,
                len: 99,
                stats: PixelStats::default(),
            }],
        }
    }

    #[test]
    fn replay_stops_at_a_torn_or_corrupt_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.log");
        let (mut log, recs) = CatalogLog::open(&path).unwrap();
        assert!(recs.is_empty());
        log.append(&scene("a")).unwrap();
        log.append(&scene("b")).unwrap();
        let full = std::fs::metadata(&path).unwrap().len();
        drop(log);
        // Tear the second record.
        OpenOptions::new().write(true).open(&path).unwrap().set_len(full - 3).unwrap();
        let (mut log, recs) = CatalogLog::open(&path).unwrap();
        assert_eq!(recs, vec![scene("a")]);
        log.append(&scene("c")).unwrap();
        drop(log);
        let (_, recs) = CatalogLog::open(&path).unwrap();
        assert_eq!(recs, vec![scene("a"), scene("c")]);
        // Flip a payload byte of the last record: its CRC fails.
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 2] ^= 0x20;
        std::fs::write(&path, &bytes).unwrap();
        let (_, recs) = CatalogLog::open(&path).unwrap();
        assert_eq!(recs, vec![scene("a")]);
    }
}
