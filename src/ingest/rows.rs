//! A raster band filled row by row by the DoPut stream while warp threads
//! read the rows already filled.
//!
//! One [`RowsWriter`] appends values past the filled prefix; any number of
//! readers borrow the prefix through [`Rows::filled`]. A value is written
//! once, before the release store that publishes it, and never again, so a
//! reader's slice never overlaps a write.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The values of one band, `capacity` long, of which a prefix is filled.
pub struct Rows<T> {
    cells: Box<[UnsafeCell<T>]>,
    filled: AtomicUsize,
}

// SAFETY: readers only touch the published prefix, which is never written
// again; the one writer only touches cells past it (see `RowsWriter`).
unsafe impl<T: Send + Sync> Sync for Rows<T> {}

impl<T: Copy + Default> Rows<T> {
    /// An empty buffer of `capacity` values and its one writer. The memory
    /// is zeroed lazily by the allocator: pages no row reached are not
    /// resident.
    pub fn with_capacity(capacity: usize) -> (Arc<Self>, RowsWriter<T>) {
        let values: Box<[T]> = vec![T::default(); capacity].into_boxed_slice();
        // SAFETY: `UnsafeCell<T>` has the same layout as `T`.
        let cells = unsafe { Box::from_raw(Box::into_raw(values) as *mut [UnsafeCell<T>]) };
        let rows = Arc::new(Self { cells, filled: AtomicUsize::new(0) });
        (rows.clone(), RowsWriter { rows })
    }
}

impl<T> Rows<T> {
    /// The values published so far.
    pub fn filled(&self) -> &[T] {
        let n = self.filled.load(Ordering::Acquire);
        // SAFETY: the first `n` cells were written before `n` was stored
        // with release ordering and are never written again.
        unsafe { std::slice::from_raw_parts(self.cells.as_ptr() as *const T, n) }
    }
}

/// The one writer of a [`Rows`] (not `Clone`: a second writer could race).
pub struct RowsWriter<T> {
    rows: Arc<Rows<T>>,
}

impl<T: Copy> RowsWriter<T> {
    /// Appends `values` after the filled prefix and publishes them. Returns
    /// false, writing nothing, if they would overflow the capacity.
    pub fn extend(&mut self, values: &[T]) -> bool {
        if values.is_empty() {
            return true;
        }
        let start = self.rows.filled.load(Ordering::Relaxed);
        let Some(end) = start.checked_add(values.len()).filter(|e| *e <= self.rows.cells.len()) else {
            return false;
        };
        // SAFETY: cells `start..end` lie past the published prefix, so no
        // reader sees them, and this is their only writer.
        unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), self.rows.cells[start].get(), values.len()) };
        self.rows.filled.store(end, Ordering::Release);
        true
    }

    /// Appends `n` copies of `value` (see [`RowsWriter::extend`]).
    pub fn fill(&mut self, value: T, n: usize) -> bool {
        let start = self.rows.filled.load(Ordering::Relaxed);
        let Some(end) = start.checked_add(n).filter(|e| *e <= self.rows.cells.len()) else {
            return false;
        };
        for cell in &self.rows.cells[start..end] {
            // SAFETY: as in `extend`.
            unsafe { *cell.get() = value };
        }
        self.rows.filled.store(end, Ordering::Release);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_see_only_what_was_published() {
        let (rows, mut w) = Rows::<u16>::with_capacity(6);
        assert!(rows.filled().is_empty());
        assert!(w.extend(&[1, 2, 3]));
        let before = rows.filled();
        assert!(w.fill(9, 2));
        assert_eq!(before, &[1, 2, 3]);
        assert_eq!(rows.filled(), &[1, 2, 3, 9, 9]);
        assert!(!w.extend(&[4, 5]), "past the capacity");
        assert_eq!(rows.filled(), &[1, 2, 3, 9, 9]);
        assert!(w.extend(&[4]));
        assert_eq!(rows.filled(), &[1, 2, 3, 9, 9, 4]);
        assert!(w.extend(&[]));
    }

    #[test]
    fn a_reader_thread_never_sees_a_torn_prefix() {
        let n = 1 << 16;
        let (rows, mut w) = Rows::<u32>::with_capacity(n);
        let reader = {
            let rows = rows.clone();
            std::thread::spawn(move || {
                while rows.filled().len() < n {
                    let seen = rows.filled();
                    assert!(seen.iter().enumerate().all(|(i, v)| *v == i as u32 + 1));
                }
            })
        };
        for start in (0..n).step_by(1000) {
            let chunk: Vec<u32> = (start..(start + 1000).min(n)).map(|i| i as u32 + 1).collect();
            assert!(w.extend(&chunk));
        }
        reader.join().unwrap();
    }
}
