//! The local directory backend: every file system call of the warehouse
//! (`std::fs`, memory maps, fsync, syncfs, page-cache hints) lives in this
//! folder, behind the calls the rest of storage makes. Everything above it
//! (the catalog, the scene transaction, rewrites, reads) speaks of paths,
//! byte ranges and records, so a second backend goes beside this one.

pub mod chunk_file;
pub mod files;
pub mod fs_sync;
pub mod log_file;
pub mod mapped;

pub use files::*;
pub use fs_sync::{SyncMode, WriteOptions};
pub use log_file::CatalogLog;
pub use mapped::ChunkFile;
