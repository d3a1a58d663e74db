//! The catalog log's file: records framed by `log.rs`, appended and
//! fdatasynced at the committed length; a torn tail cut on open.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::storage::log::{frame, parse, Record};

/// The open log of one collection. Owned by the collection's writer.
pub struct CatalogLog {
    path: PathBuf,
    file: File,
    /// Committed length; a failed append is cut back to it.
    len: u64,
    /// Records in the log.
    records: u64,
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
            tracing::warn!(path = %crate::error::shown(path), kept = len, found = bytes.len(), "cutting a torn catalog log tail");
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
    use crate::storage::log::{Appended, ChunkRef, PixelStats};

    fn scene(id: &str) -> Record {
        Record::Scene {
            scene_id: id.into(),
            time_ms: 5,
            fingerprint: None,
            baseline: None,
            replaces: vec![],
            chunks: vec![Appended {
                chunk: ChunkRef { tile: "x0001_y0001".into(), month: "2024-06".into(), band: "red".into() },
                gen: 0,
                len: 99,
                stats: PixelStats::default(),
                crc: Some(7),
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
