//! The catalog log: one append-only file per collection whose records are
//! the commits of that collection (a scene's appends, a rewrite from delete
//! or compaction). A record is written and fsynced once per commit, after
//! the chunk bytes it points at are durable, so it is the commit point: what
//! the log does not hold did not happen.
//!
//! Framing: `u32 LE payload length | u32 LE CRC-32 of payload | payload`
//! (JSON). Replay stops at the first record that is short or fails its CRC
//! (a write the server died in) and cuts the file there.

use std::path::Path;

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

/// What the catalog keeps of one observation (a row of a chunk): its
/// valid pixels, their min, max and sum, and the bytes its append wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RowStats {
    pub valid: u64,
    pub min: f64,
    pub max: f64,
    pub sum: f64,
    pub bytes: u64,
}

impl RowStats {
    pub fn new(s: &PixelStats, bytes: u64) -> Self {
        RowStats { valid: s.valid, min: s.min, max: s.max, sum: s.sum, bytes }
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
    /// CRC-32 of the bytes this append wrote (the previous committed
    /// length up to `len`); absent in logs written before checksums.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc: Option<u32>,
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
    /// The file's checksummed segments, in order from byte 0: each one's
    /// end and the CRC-32 of its bytes (empty in logs written before
    /// checksums).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sums: Vec<(u64, u32)>,
    /// Each row's statistics, in file order (empty in logs written before
    /// they were kept).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub row_stats: Vec<RowStats>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Record {
    /// A scene: one observation per (tile, band) it touched, all at `time_ms`.
    Scene {
        scene_id: String,
        time_ms: i64,
        /// The client's fingerprint of the scene's content (absent in logs
        /// written before it existed, and when the client gave none).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fingerprint: Option<String>,
        /// The product's processing baseline (Sentinel-2 `04.00`), when the
        /// client or the file said it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        baseline: Option<String>,
        /// For a scene replacing one stored under its id: the chunks
        /// rewritten without the old scene's rows, applied before
        /// `chunks` (whose appends go to these new generations).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        replaces: Vec<Rewritten>,
        chunks: Vec<Appended>,
    },
    /// Chunks replaced by new generations (delete, compaction); scenes no
    /// longer present anywhere.
    Rewrite { reason: String, chunks: Vec<Rewritten>, removed_scenes: Vec<String> },
}

pub(crate) fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Complete, valid records of `bytes` and the length they span. A record
/// whose CRC holds but whose payload does not decode is not a torn write:
/// that is an error, never a reason to drop the records after it.
pub(crate) fn parse(path: &Path, bytes: &[u8]) -> Result<(Vec<Record>, u64)> {
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
