//! Chunk file generations as readers hold them: the file, where its
//! batches sit, and the memory mappings kept between reads (bounded in
//! count, bytes and age, shared across the server).

use std::collections::VecDeque;
use std::fs::{self, File};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use super::chunk_file;
use crate::error::{Error, Result};
use crate::storage::chunk;

/// A chunk file generation. Readers hold it while they read; once a rewrite
/// supersedes it, the last holder to let go removes the file.
#[derive(Debug)]
pub struct ChunkFile {
    pub path: PathBuf,
    pub gen: u32,
    /// What the file holds, as errors name it (collection, tile, band,
    /// month; never the path).
    pub label: String,
    /// Ends of the checksummed segments found intact since the server
    /// opened the warehouse (a generation's committed bytes never change).
    verified: Mutex<std::collections::HashSet<u64>>,
    /// Superseded by a rewrite: removed once its last holder lets go.
    obsolete: AtomicBool,
    /// Where its batches sit, scanned from the message headers as far as
    /// readers needed (a generation's committed prefix never changes).
    index: Mutex<FileIndex>,
    /// The file mapped into memory for point reads (remapped when readers
    /// need a longer prefix); let go when newer ones fill [`KEPT_POINT_MAPS`].
    map: Arc<MapSlot>,
    /// The same for DoGet ranges ([`KEPT_RANGE_MAPS`]).
    range_map: Arc<MapSlot>,
}

type MapSlot = Mutex<Option<Arc<memmap2::Mmap>>>;

/// Chunk-file mappings kept between reads, across the server. Each mapping
/// is one kernel memory area and a process gets 65 530 of them
/// (`vm.max_map_count`), while a warehouse easily holds more chunk files
/// (1 000 tiles x 12 months x 6 bands): kept for ever, mappings would make
/// every later mmap fail once reads had touched that many files. Point
/// reads and DoGet ranges keep separate mappings (below), up to this many
/// each.
const KEPT_MAPS: usize = 4096;

/// Mappings point reads keep: they touch one page per observation, so the
/// count bounds them.
static KEPT_POINT_MAPS: Mutex<KeptMaps> = Mutex::new(KeptMaps::new(KEPT_MAPS, u64::MAX, None));

/// Bytes of chunk files kept mapped for DoGet ranges, at most. A range is
/// read whole, and its pages stay in the server's resident set while the
/// mapping is kept (page cache shared with the kernel's, not the server's
/// own memory), so this bounds what these mappings add to it.
const KEPT_RANGE_BYTES: u64 = 128 << 20;

/// How long DoGet ranges keep a mapping: long enough for repeated reads of
/// a chunk to share it, short enough that an idle server lets its pages go
/// (a thread sweeps every second; a chunk read all the time is mapped again
/// this often, which costs nothing measurable).
const KEPT_RANGE_AGE: std::time::Duration = std::time::Duration::from_secs(5);

/// Mappings DoGet ranges keep.
static KEPT_RANGE_MAPS: Mutex<KeptMaps> = Mutex::new(KeptMaps::new(KEPT_MAPS, KEPT_RANGE_BYTES, Some(KEPT_RANGE_AGE)));

/// Starts (once) the thread that lets go of range mappings older than
/// [`KEPT_RANGE_AGE`]; without it (it could not start) they go only when
/// pushed out.
fn sweep_range_maps() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let sweep = || loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
            KEPT_RANGE_MAPS.lock().unwrap_or_else(|p| p.into_inner()).let_go(std::time::Instant::now());
        };
        if let Err(e) = std::thread::Builder::new().name("unmap".into()).spawn(sweep) {
            tracing::warn!(error = %e, "cannot start the thread that lets go of idle chunk mappings");
        }
    });
}

/// Slots given a mapping, oldest first, with the mapping's length; past
/// `limit` slots or `budget` bytes the oldest slot is emptied (readers that
/// hold its mapping keep it until they finish, and the next read maps the
/// file again).
struct KeptMaps {
    limit: usize,
    budget: u64,
    /// How long a mapping is kept at most; `None`: until pushed out.
    max_age: Option<std::time::Duration>,
    /// Sum of the lengths in `slots`.
    bytes: u64,
    /// Each slot, the length it was given and when.
    slots: VecDeque<(Weak<MapSlot>, u64, std::time::Instant)>,
}

impl KeptMaps {
    const fn new(limit: usize, budget: u64, max_age: Option<std::time::Duration>) -> Self {
        Self { limit, budget, max_age, bytes: 0, slots: VecDeque::new() }
    }

    /// Counts `slot`, which has just been given a mapping of `len` bytes (a
    /// longer remap is counted again; its shorter one's entry then leaves
    /// the slot alone). Called with no slot locked (it locks the slots it
    /// empties).
    fn keep(&mut self, slot: &Arc<MapSlot>, len: u64) {
        let now = std::time::Instant::now();
        self.slots.push_back((Arc::downgrade(slot), len, now));
        self.bytes += len;
        self.let_go(now);
    }

    /// Empties the oldest slots while there are more than `limit`, more than
    /// `budget` bytes (the newest stays even alone over it), or older ones
    /// than `max_age` at `now`.
    fn let_go(&mut self, now: std::time::Instant) {
        let expired = |kept_at: std::time::Instant| self.max_age.is_some_and(|age| now.saturating_duration_since(kept_at) > age);
        while let Some(&(_, _, kept_at)) = self.slots.front() {
            if !(self.slots.len() > self.limit || (self.bytes > self.budget && self.slots.len() > 1) || expired(kept_at)) {
                break;
            }
            let Some((old, old_len, _)) = self.slots.pop_front() else { break };
            self.bytes -= old_len;
            if let Some(old) = old.upgrade() {
                let mut map = old.lock().unwrap_or_else(|p| p.into_inner());
                if map.as_ref().is_some_and(|m| m.len() as u64 == old_len) {
                    *map = None;
                }
            }
        }
    }
}

#[derive(Debug, Default)]
struct FileIndex {
    schema_end: Option<u64>,
    scanned: u64,
    batches: Vec<chunk::BatchLoc>,
}

impl ChunkFile {
    pub(in crate::storage) fn new(path: PathBuf, gen: u32, label: String) -> Arc<Self> {
        Arc::new(Self {
            path,
            gen,
            label,
            verified: Mutex::default(),
            obsolete: AtomicBool::new(false),
            index: Mutex::new(FileIndex::default()),
            map: Arc::default(),
            range_map: Arc::default(),
        })
    }

    /// Whether the segment ending at `end` was found intact before.
    pub fn was_verified(&self, end: u64) -> bool {
        self.verified.lock().unwrap_or_else(|p| p.into_inner()).contains(&end)
    }

    /// Records the segment ending at `end` as found intact.
    pub fn mark_verified(&self, end: u64) {
        self.verified.lock().unwrap_or_else(|p| p.into_inner()).insert(end);
    }

    /// The file, opened for mapping its first `len` bytes: a file found
    /// shorter (cut by something else than this server) is an error here,
    /// not a SIGBUS when the mapping is read.
    fn open_at_least(&self, len: u64) -> Result<File> {
        let f = File::open(&self.path).map_err(Error::io(&self.path))?;
        let size = f.metadata().map_err(Error::io(&self.path))?.len();
        if size < len {
            return Err(Error::Corrupt { path: self.path.clone(), reason: format!("{size} bytes on disk, {len} committed") });
        }
        Ok(f)
    }

    /// The file's first `len` bytes or more, mapped into memory for point
    /// reads.
    pub fn mapped(&self, len: u64) -> Result<Arc<memmap2::Mmap>> {
        // Point reads touch one page per observation: no read-ahead.
        self.kept_map(&self.map, &KEPT_POINT_MAPS, len, memmap2::Advice::Random)
    }

    /// The file's first `len` bytes or more from `slot`'s mapping, or from
    /// a new one (given `advice` and counted in `kept`).
    fn kept_map(&self, slot: &Arc<MapSlot>, kept: &Mutex<KeptMaps>, len: u64, advice: memmap2::Advice) -> Result<Arc<memmap2::Mmap>> {
        let mut map = slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = map.as_ref().filter(|m| m.len() as u64 >= len) {
            // A file cut behind the server's back since it was mapped is an
            // error here, not a SIGBUS when the pages are read (one stat).
            let size = fs::metadata(&self.path).map_err(Error::io(&self.path))?.len();
            if size < len {
                return Err(Error::Corrupt { path: self.path.clone(), reason: format!("{size} bytes on disk, {len} committed") });
            }
            return Ok(m.clone());
        }
        let f = self.open_at_least(len)?;
        // SAFETY: only this server writes warehouse files. A generation's
        // committed prefix is never rewritten or cut while the server runs
        // (appends go past it, rollbacks cut only past it, rewrites make a
        // new generation); only `len` committed bytes are mapped.
        let m = unsafe { memmap2::MmapOptions::new().len(len as usize).map(&f) }.map_err(Error::io(&self.path))?;
        if let Err(e) = m.advise(advice) {
            tracing::debug!(error = %e, ?advice, "madvise failed");
        }
        let m = Arc::new(m);
        *map = Some(m.clone());
        drop(map);
        kept.lock().unwrap_or_else(|p| p.into_inner()).keep(slot, len);
        Ok(m)
    }

    /// Bytes `from..to` of the committed prefix `len`, served from the
    /// file's kept range mapping (no read copy); the kernel is asked to
    /// read the range ahead. A mapping per call instead costs the server a
    /// third more CPU per DoGet (setting up and tearing down the pages'
    /// table entries). The pages read
    /// stay in the resident set while the mapping is kept
    /// ([`KEPT_RANGE_BYTES`]).
    pub fn range(&self, len: u64, from: u64, to: u64) -> Result<bytes::Bytes> {
        struct Kept(Arc<memmap2::Mmap>, std::ops::Range<usize>);
        impl AsRef<[u8]> for Kept {
            fn as_ref(&self) -> &[u8] {
                &self.0[self.1.clone()]
            }
        }
        if from > to || to > len {
            return Err(Error::Corrupt { path: self.path.clone(), reason: format!("range {from}..{to} past the committed {len} bytes") });
        }
        if from == to {
            return Ok(bytes::Bytes::new());
        }
        sweep_range_maps();
        let map = self.kept_map(&self.range_map, &KEPT_RANGE_MAPS, len, memmap2::Advice::Normal)?;
        if let Err(e) = map.advise_range(memmap2::Advice::WillNeed, from as usize, (to - from) as usize) {
            tracing::debug!(error = %e, "madvise(MADV_WILLNEED) failed");
        }
        Ok(bytes::Bytes::from_owner(Kept(map, from as usize..to as usize)))
    }

    /// The end of the schema message and the batches of the committed
    /// prefix `len`; only bytes not scanned before are scanned.
    pub fn batches(&self, len: u64) -> Result<(u64, Vec<chunk::BatchLoc>)> {
        let mut ix = self.index.lock().unwrap_or_else(|p| p.into_inner());
        if ix.scanned < len {
            let (schema_end, more) = chunk_file::scan(&self.path, ix.scanned, len)?;
            ix.schema_end = ix.schema_end.or(schema_end);
            ix.batches.extend(more);
            ix.scanned = len;
        }
        let schema_end = ix.schema_end.ok_or_else(|| Error::Corrupt { path: self.path.clone(), reason: "no schema message".into() })?;
        let n = ix.batches.partition_point(|b| b.end <= len);
        Ok((schema_end, ix.batches[..n].to_vec()))
    }

    /// The batches holding at least one row that `keep` (row index in file
    /// order) selects, with the index of their first row.
    pub fn batches_with(&self, len: u64, keep: impl Fn(usize) -> bool) -> Result<(u64, Vec<(usize, chunk::BatchLoc)>)> {
        let (schema_end, all) = self.batches(len)?;
        let mut first = 0;
        let mut out = Vec::new();
        for b in all {
            if (first..first + b.rows).any(&keep) {
                out.push((first, b));
            }
            first += b.rows;
        }
        Ok((schema_end, out))
    }
}

impl ChunkFile {
    /// Marks the generation superseded: the last reader to let go of it
    /// removes the file.
    pub(in crate::storage) fn retire(&self) {
        self.obsolete.store(true, Ordering::Release);
    }
}

impl Drop for ChunkFile {
    fn drop(&mut self) {
        if self.obsolete.load(Ordering::Acquire) {
            if let Err(e) = fs::remove_file(&self.path) {
                tracing::warn!(path = %crate::error::shown(&self.path), error = %e, "removing a superseded chunk file");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// A test file of `len` bytes of `i`, mapped.
    fn map_file(dir: &Path, i: u8, len: usize) -> Arc<memmap2::Mmap> {
        let path = dir.join(format!("f{i}"));
        fs::write(&path, vec![i; len]).unwrap();
        // SAFETY: a test file nothing else writes.
        Arc::new(unsafe { memmap2::Mmap::map(&File::open(&path).unwrap()) }.unwrap())
    }

    #[test]
    fn past_the_limit_the_oldest_kept_mapping_is_let_go_and_its_readers_keep_theirs() {
        let dir = tempfile::tempdir().unwrap();
        let mut kept = KeptMaps::new(2, u64::MAX, None);
        let slots: Vec<Arc<MapSlot>> = (0..3).map(|_| Arc::default()).collect();
        let reader = map_file(dir.path(), 0, 64);
        for (i, slot) in slots.iter().enumerate() {
            *slot.lock().unwrap() = Some(if i == 0 { reader.clone() } else { map_file(dir.path(), i as u8, 64) });
            kept.keep(slot, 64);
        }
        let held = |i: usize| slots[i].lock().unwrap().is_some();
        assert!(!held(0) && held(1) && held(2));
        assert_eq!(reader[63], 0, "a reader's mapping outlives its slot");
        // A slot dropped with its file counts until it leaves the queue.
        drop(slots);
        let fresh: Arc<MapSlot> = Arc::new(Mutex::new(Some(map_file(dir.path(), 9, 64))));
        kept.keep(&fresh, 64);
        assert_eq!(kept.slots.len(), 2);
        assert!(fresh.lock().unwrap().is_some());
    }

    /// Past the byte budget the oldest mappings go (the newest stays even
    /// alone over it); a slot remapped longer is counted again, and its
    /// shorter entry leaving the queue does not empty it.
    #[test]
    fn kept_mappings_stay_within_their_byte_budget() {
        let dir = tempfile::tempdir().unwrap();
        let mut kept = KeptMaps::new(100, 10_000, None);
        let slots: Vec<Arc<MapSlot>> = (0..3).map(|_| Arc::default()).collect();
        let held = |i: usize| slots[i].lock().unwrap().is_some();
        for (i, slot) in slots.iter().enumerate().take(2) {
            *slot.lock().unwrap() = Some(map_file(dir.path(), i as u8, 4096));
            kept.keep(slot, 4096);
        }
        assert!(held(0) && held(1) && kept.bytes == 8192);
        *slots[2].lock().unwrap() = Some(map_file(dir.path(), 2, 4096));
        kept.keep(&slots[2], 4096);
        assert!(!held(0) && held(1) && held(2), "the oldest went");
        assert_eq!(kept.bytes, 8192);
        *slots[1].lock().unwrap() = Some(map_file(dir.path(), 7, 6000));
        kept.keep(&slots[1], 6000);
        assert!(held(1), "its shorter entry left the queue without emptying it");
        assert_eq!(kept.bytes, 6000, "{} bytes kept", kept.bytes);
        assert!(!held(2), "the third went to make room");
        let huge: Arc<MapSlot> = Arc::new(Mutex::new(Some(map_file(dir.path(), 8, 20_000))));
        kept.keep(&huge, 20_000);
        assert!(huge.lock().unwrap().is_some() && !held(1));
        assert_eq!(kept.slots.len(), 1);
    }

    /// With a maximum age, mappings older than it are let go at the next
    /// sweep; younger ones stay.
    #[test]
    fn kept_mappings_past_their_age_are_let_go() {
        let dir = tempfile::tempdir().unwrap();
        let age = std::time::Duration::from_secs(5);
        let mut kept = KeptMaps::new(100, u64::MAX, Some(age));
        let slots: Vec<Arc<MapSlot>> = (0..2).map(|_| Arc::default()).collect();
        for (i, slot) in slots.iter().enumerate() {
            *slot.lock().unwrap() = Some(map_file(dir.path(), i as u8, 4096));
            kept.keep(slot, 4096);
        }
        let held = |i: usize| slots[i].lock().unwrap().is_some();
        let kept_at = kept.slots[0].2;
        kept.let_go(kept_at + age / 2);
        assert!(held(0) && held(1), "young mappings stay");
        kept.slots[1].2 = kept_at + age;
        kept.let_go(kept_at + age + std::time::Duration::from_secs(1));
        assert!(!held(0) && held(1), "the one past its age went");
        assert_eq!((kept.slots.len(), kept.bytes), (1, 4096));
    }
}
