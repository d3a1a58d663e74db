//! Making many files durable at once: one `syncfs` of the warehouse's file
//! system instead of an `fdatasync` per file.
//!
//! A scene of a 2560 x 2560 raster appends to 100 chunk files. An
//! `fdatasync` each costs a disk flush each; writing them back as they are
//! appended (`sync_file_range`, which only starts the writes) and one
//! `syncfs` at the commit costs one (`docs/storage.md`). `syncfs` writes back every dirty file of the file
//! system, so a commit also waits for whatever else is dirty there: it is
//! used for commits of at least [`FS_SYNC_MIN_FILES`] files only.
//!
//! `syncfs` waits for the data and the metadata, then flushes the disk's
//! cache; on ext4 without a journal the last metadata writes can follow
//! that flush, so the commit then `fdatasync`s one of its files, whose flush
//! comes after all of it (see [`FsSync::sync`]).
//!
//! Concurrent commits share a `syncfs`: one that began after a commit's
//! writes covers them. A failed `syncfs` means some write back failed
//! somewhere on the file system, and the kernel reports it once: every later
//! whole-file-system sync fails too (the server then acknowledges no
//! large scene until it restarts and recovers).

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// Commits of at least this many files (chunk files and directories) sync
/// the whole file system.
pub const FS_SYNC_MIN_FILES: usize = 8;

/// How a commit of many files makes them durable (`--sync`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SyncMode {
    /// One `syncfs` of the warehouse's file system for commits of at least
    /// [`FS_SYNC_MIN_FILES`] files (Linux; elsewhere per file).
    #[default]
    FileSystem,
    /// An `fdatasync` per file, always: for a warehouse on a disk that
    /// other programs keep busy, whose dirty pages a `syncfs` would wait
    /// for too.
    PerFile,
}

/// How commits make their writes durable and what they leave in the page
/// cache (`--sync`, `--keep-written-pages`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOptions {
    pub sync: SyncMode,
    /// Keep the pages a commit or a rewrite wrote cached. By default they are dropped
    /// once durable ([`drop_cached`]): new page-cache pages cost far more
    /// than reused ones under a sustained ingest, and an ingest's pages are
    /// seldom read soon. Reads of just-ingested data then come from the disk.
    pub keep_written_pages: bool,
    /// Most bytes one collection may hold; a commit past it is refused
    /// (`--quota-mb-per-collection`).
    pub quota_bytes: Option<u64>,
}

/// The warehouse's file system, synced as a whole.
pub struct FsSync {
    /// The warehouse directory, opened before any write (the kernel reports
    /// a write-back error to `syncfs` on descriptors opened before it).
    root: Option<File>,
    /// Generation of the last `syncfs` that succeeded.
    done: Mutex<u64>,
    /// Generations started.
    begun: AtomicU64,
    failed: AtomicBool,
    /// Whether commits drop the pages they wrote once durable.
    pub drop_written: bool,
    /// [`WriteOptions::quota_bytes`].
    pub quota_bytes: Option<u64>,
}

impl FsSync {
    /// For the file system holding `root`. Every commit syncs per file
    /// where `syncfs` is not available (other systems) or `mode` says so.
    pub fn open(root: &Path, options: WriteOptions) -> Self {
        let root = if cfg!(target_os = "linux") && options.sync == SyncMode::FileSystem { File::open(root).ok() } else { None };
        Self {
            root,
            done: Mutex::new(0),
            begun: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            drop_written: !options.keep_written_pages,
            quota_bytes: options.quota_bytes,
        }
    }

    /// Whether [`FsSync::sync`] can be used.
    pub fn available(&self) -> bool {
        self.root.is_some()
    }

    /// Makes every write completed before this call durable, with one
    /// `syncfs` (shared with concurrent callers) and then `fdatasync` of
    /// `barrier`, one of the caller's files.
    pub fn sync(&self, barrier: &File) -> std::io::Result<()> {
        let Some(root) = &self.root else {
            return Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "syncfs is not available"));
        };
        // Any syncfs whose generation is above this one begins after now.
        let after = self.begun.load(Ordering::SeqCst);
        {
            let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
            if self.failed.load(Ordering::SeqCst) {
                return Err(std::io::Error::other("an earlier syncfs of the warehouse failed (restart the server)"));
            }
            if *done <= after {
                let generation = self.begun.fetch_add(1, Ordering::SeqCst) + 1;
                if let Err(e) = syncfs(root) {
                    self.failed.store(true, Ordering::SeqCst);
                    return Err(e);
                }
                *done = generation;
            }
        }
        barrier.sync_data()
    }
}

/// Starts writing back `file`'s dirty pages without waiting (Linux; a no-op
/// elsewhere). Lets the disk work while a scene is still being appended.
pub fn start_writeback(file: &File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        extern "C" {
            fn sync_file_range(fd: std::ffi::c_int, offset: i64, nbytes: i64, flags: std::ffi::c_uint) -> std::ffi::c_int;
        }
        const SYNC_FILE_RANGE_WRITE: std::ffi::c_uint = 2;
        // SAFETY: the descriptor is open for the call's duration (borrowed
        // `File`); the call only schedules write-back. Its result does not
        // matter: the commit's sync waits and reports errors.
        unsafe { sync_file_range(file.as_raw_fd(), 0, 0, SYNC_FILE_RANGE_WRITE) };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}

/// Drops `file`'s cached pages within `from..to` (bytes written and made
/// durable): they go back to the kernel's free pages, from which the next
/// writes take theirs (Linux; a no-op elsewhere).
pub fn drop_cached(file: &File, from: u64, to: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        extern "C" {
            fn posix_fadvise(fd: std::ffi::c_int, offset: i64, len: i64, advice: std::ffi::c_int) -> std::ffi::c_int;
            fn sysconf(name: std::ffi::c_int) -> std::ffi::c_long;
        }
        const POSIX_FADV_DONTNEED: std::ffi::c_int = 4;
        const SC_PAGESIZE: std::ffi::c_int = 30;
        // SAFETY: sysconf reads a constant of the system.
        let page = match unsafe { sysconf(SC_PAGESIZE) } {
            p if p > 0 && (p as u64).is_power_of_two() => p as u64,
            _ => return,
        };
        // The page holding `to` stays when `to` is not on a page boundary:
        // the next append writes into it, and dropped, it would first be
        // read back from disk. (The kernel drops a partial last page when
        // the range reaches the end of the file.) The page holding `from`,
        // kept so by the append before, goes now that it is full.
        let (from, to) = (from & !(page - 1), to & !(page - 1));
        if to > from {
            // SAFETY: the descriptor is open for the call's duration; the
            // call only drops clean cached pages (the data stays on disk).
            unsafe { posix_fadvise(file.as_raw_fd(), from as i64, (to - from) as i64, POSIX_FADV_DONTNEED) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, from, to);
}

#[cfg(target_os = "linux")]
fn syncfs(root: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    extern "C" {
        fn syncfs(fd: std::ffi::c_int) -> std::ffi::c_int;
    }
    // SAFETY: the descriptor is open for the call's duration.
    if unsafe { syncfs(root.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn syncfs(_: &File) -> std::io::Result<()> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "syncfs is not available"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Commits made at once share syncs; each returns only after one that
    /// began after its call.
    #[test]
    fn concurrent_commits_share_a_syncfs_that_began_after_them() {
        let dir = tempfile::tempdir().unwrap();
        let fs = std::sync::Arc::new(FsSync::open(dir.path(), WriteOptions::default()));
        if !fs.available() {
            return;
        }
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (fs, path) = (fs.clone(), path.clone());
                std::thread::spawn(move || {
                    for _ in 0..5 {
                        let before = fs.begun.load(Ordering::SeqCst);
                        fs.sync(&File::open(&path).unwrap()).unwrap();
                        assert!(*fs.done.lock().unwrap() > before, "returned before a syncfs that began after the call");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let runs = fs.begun.load(Ordering::SeqCst);
        assert!((1..=40).contains(&runs), "{runs} syncfs for 40 commits");
    }
}
