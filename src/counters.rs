//! Activity counters that `health` reports. On the ground floor: ingest
//! and storage both count into them, and neither imports the other's types.

use std::sync::atomic::AtomicU64;

/// Ingest activity since the server started.
#[derive(Debug, Default)]
pub struct Counters {
    /// Tiles warped (all bands of a tile count once).
    pub tiles_warped: AtomicU64,
    /// Of those, tiles warped while their raster was still streaming in.
    pub tiles_warped_while_streaming: AtomicU64,
    /// Tiles that ran before all their rows were in (the estimate from
    /// their outline fell short) and were warped again after the stream.
    pub tiles_put_aside: AtomicU64,
    /// Scenes that took the collection's writer while streaming and let go
    /// of it for another writer (they append again after the stream).
    pub early_writers_yielded: AtomicU64,
}
