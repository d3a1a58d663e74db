//! File system calls of the warehouse other than chunk files: directories
//! made durable, atomic small files, the threads that fsync for every
//! writer, and page-cache hints.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use super::fs_sync;
use crate::error::{Error, Result};

/// Appended chunk files a scene holds open before syncing and closing them.
pub const SYNC_BATCH: usize = 128;

/// Threads that fsync for every writer. The disk, not the CPU, is the
/// limit, so several syncs run at once; made once, they cost no thread
/// start per sync (starting threads per sync was a tenth of a raw put's
/// writer CPU). `None` if they could not be started: syncs run inline.
pub fn sync_pool() -> Option<&'static crate::pool::Pool> {
    static POOL: std::sync::OnceLock<Option<crate::pool::Pool>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| crate::pool::Pool::try_new("fsync", 8).ok()).as_ref()
}

/// fsyncs handed to the sync threads, waited for together.
pub struct Syncs {
    tx: std::sync::mpsc::Sender<Result<()>>,
    rx: std::sync::mpsc::Receiver<Result<()>>,
    pub pending: usize,
}

impl Default for Syncs {
    fn default() -> Self {
        Self::new()
    }
}

impl Syncs {
    pub fn new() -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        Self { tx, rx, pending: 0 }
    }

    /// Starts syncing `files` (each closed once synced).
    pub fn start(&mut self, files: Vec<(PathBuf, File)>) {
        for (path, file) in files {
            let tx = self.tx.clone();
            let job = move || {
                let _ = tx.send(file.sync_data().map_err(Error::io(path)));
            };
            self.pending += 1;
            match sync_pool() {
                Some(pool) => pool.spawn(job),
                None => job(),
            }
        }
    }

    /// Waits for every sync started; the first failure, if any.
    pub fn wait(&mut self) -> Result<()> {
        let mut first = Ok(());
        while self.pending > 0 {
            let r = self.rx.recv().map_err(|_| Error::Internal("an fsync thread went away".into()))?;
            self.pending -= 1;
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

/// fsyncs files on the sync threads and waits for them.
pub fn sync_files(files: Vec<(PathBuf, File)>) -> Result<()> {
    let mut syncs = Syncs::new();
    syncs.start(files);
    syncs.wait()
}

/// Drops each file's written range `[from, to)` from the page cache (see
/// [`fs_sync::drop_cached`]: the page holding `to` stays for the next
/// append). A file that cannot be opened is skipped: its pages only cost
/// memory.
pub fn drop_written_ranges(files: &[(PathBuf, u64, u64)]) {
    for (path, from, to) in files {
        if let Ok(f) = File::open(path) {
            fs_sync::drop_cached(&f, *from, *to);
        }
    }
}

/// Creates `dir` and any missing parents below `root`, fsyncing each parent
/// so the new entries survive a crash.
pub fn ensure_dir(dir: &Path, root: &Path) -> Result<()> {
    let mut parents = Vec::new();
    create_dirs(dir, root, &mut parents, None)?;
    parents.iter().try_for_each(|p| sync_dir(p))
}

/// Creates `dir` and any missing parents below `root`; adds to `to_sync`
/// the directories whose entries changed (they need an fsync before a
/// commit that relies on them) and to `created`, if given, the new ones,
/// parents first.
pub fn create_dirs(dir: &Path, root: &Path, to_sync: &mut Vec<PathBuf>, mut created: Option<&mut Vec<PathBuf>>) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        if parent != root && parent.starts_with(root) {
            create_dirs(parent, root, to_sync, created.as_deref_mut())?;
        }
    }
    match fs::create_dir(dir) {
        Ok(()) => {
            to_sync.push(dir.parent().unwrap_or(root).to_path_buf());
            if let Some(created) = created {
                created.push(dir.to_path_buf());
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io(dir)(e)),
    }
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|f| f.sync_all()).map_err(Error::io(dir))
}

/// Writes `bytes` to `path` atomically: a temporary file (`path` with
/// extension `tmp_extension`), fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, tmp_extension: &str, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(tmp_extension);
    let mut f = File::create(&tmp).map_err(Error::io(&tmp))?;
    std::io::Write::write_all(&mut f, bytes).and_then(|_| f.sync_all()).map_err(Error::io(&tmp))?;
    fs::rename(&tmp, path).map_err(Error::io(path))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Length of the file at `path`.
pub fn file_len(path: &Path) -> Result<u64> {
    Ok(fs::metadata(path).map_err(Error::io(path))?.len())
}

/// Every file below `dir` (a missing or unreadable subdirectory is skipped).
pub fn files_below(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries {
            let path = entry.map_err(Error::io(&dir))?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    Ok(out)
}

/// Removes a file.
pub fn remove_file(path: &Path) -> Result<()> {
    fs::remove_file(path).map_err(Error::io(path))
}

/// Renames `from` to `to` (atomic within a file system).
pub fn rename(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).map_err(Error::io(to))
}

/// Puts a file back as it was before an uncommitted append: cut to `len`,
/// or removed if it was new (`len` 0). A file already gone is fine.
pub fn undo_append(path: &Path, len: u64) -> std::io::Result<()> {
    let undone = if len == 0 { fs::remove_file(path) } else { fs::OpenOptions::new().write(true).open(path).and_then(|f| f.set_len(len)) };
    undone.or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) })
}

/// Removes a directory if it is empty (else leaves it).
pub fn remove_empty_dir(dir: &Path) {
    let _ = fs::remove_dir(dir);
}

/// Opens a directory for an fsync with a commit's files.
pub fn open_dir(dir: &Path) -> Result<File> {
    File::open(dir).map_err(Error::io(dir))
}

/// Free bytes (for an unprivileged writer) of the file system holding
/// `dir`; `None` if it cannot be asked.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path and `st` a buffer of the size
    // statvfs(3) fills; it is read only when the call succeeded.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// The lock file of a warehouse directory.
pub const LOCK_FILE: &str = "pixelquery.lock";

/// The exclusive lock on a warehouse directory, held while its warehouse
/// is open: two servers on one directory would both believe they own its
/// catalog logs. The kernel lets it go when the process ends, however it
/// ends.
#[derive(Debug)]
pub struct RootLock {
    _file: File,
}

/// Takes the warehouse's lock, writing this process's id into the lock
/// file; `InUse` naming the directory and the holder's pid if another
/// process holds it.
pub fn lock_root(root: &Path) -> Result<RootLock> {
    use std::io::{Read, Write};
    let path = root.join(LOCK_FILE);
    let mut file = fs::OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path).map_err(Error::io(&path))?;
    match file.try_lock() {
        Ok(()) => {
            file.set_len(0).and_then(|_| file.write_all(format!("{}\n", std::process::id()).as_bytes())).map_err(Error::io(&path))?;
            Ok(RootLock { _file: file })
        }
        Err(fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            Err(Error::InUse(format!(
                "warehouse {} is in use by another pixelquery process (pid {}); one server per warehouse directory",
                root.display(),
                holder.trim()
            )))
        }
        Err(fs::TryLockError::Error(e)) => Err(Error::io(&path)(e)),
    }
}

/// Creates the warehouse root if missing; the names of its entries.
pub fn open_root(root: &Path) -> Result<Vec<String>> {
    fs::create_dir_all(root).map_err(Error::io(root))?;
    let mut names = Vec::new();
    for entry in fs::read_dir(root).map_err(Error::io(root))? {
        names.push(entry.map_err(Error::io(root))?.file_name().to_string_lossy().to_string());
    }
    Ok(names)
}

/// Removes a directory and everything below it, if there is one.
pub fn remove_dir_all_if_present(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other.map_err(Error::io(dir)),
    }
}

/// Removes a directory and everything below it.
pub fn remove_dir_all(dir: &Path) -> Result<()> {
    fs::remove_dir_all(dir).map_err(Error::io(dir))
}

/// The bytes of a small file.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(Error::io(path))
}

/// Starts the write-back of a file's new pages on the sync threads
/// (submitting the writes takes CPU the scene's writer need not spend);
/// inline if they could not be started.
pub fn start_writeback(file: &File) {
    match (sync_pool(), file.try_clone()) {
        (Some(pool), Ok(dup)) => pool.spawn(move || fs_sync::start_writeback(&dup)),
        _ => fs_sync::start_writeback(file),
    }
}
