//! Pixel values as the kernels, statistics and storage read and write
//! them: one trait over the band types, on the ground floor so that storage
//! and warp both use it without importing each other.

/// A pixel value the kernels can read and write.
pub trait Sample: Copy + Send + Sync + PartialEq + 'static {
    const IS_FLOAT: bool;
    /// Integers of at most 16 bits: every value and every weighted mean of
    /// them is held exactly enough in `f32` to round to the same integer.
    const NARROW: bool;
    fn to_f64(self) -> f64;
    /// Rounds half up (as GDAL does for integer outputs) and clamps to range.
    fn from_f64(v: f64) -> Self;
    fn to_f32(self) -> f32;
    /// As [`Sample::from_f64`], from `f32`.
    fn from_f32(v: f32) -> Self;
    /// Minimum, maximum and sum of `row` (all of it valid), exact for
    /// integers: reductions in integer lanes that the compiler vectorises.
    /// `None` for floats (and an empty row): their statistics skip
    /// non-finite values one by one.
    fn int_row_stats(row: &[Self]) -> Option<(f64, f64, f64)>;
}

macro_rules! impl_int_sample {
    ($($t:ty: $narrow:expr, $from_f32:expr, $sum:ty);*) => {$(
        impl Sample for $t {
            const IS_FLOAT: bool = false;
            const NARROW: bool = $narrow;
            #[inline]
            fn to_f64(self) -> f64 { self as f64 }
            #[inline]
            fn from_f64(v: f64) -> Self { floor(v + 0.5).clamp(<$t>::MIN as f64, <$t>::MAX as f64) as $t }
            #[inline]
            fn to_f32(self) -> f32 { self as f32 }
            #[inline]
            fn from_f32(v: f32) -> Self { $from_f32(v) }
            fn int_row_stats(row: &[Self]) -> Option<(f64, f64, f64)> {
                let lo = row.iter().copied().min()?;
                let hi = row.iter().copied().max()?;
                // Partial sums in `$sum`, which holds 65 536 values of the
                // type without overflow.
                let sum: i64 = row.chunks(1 << 16).map(|part| part.iter().map(|v| *v as $sum).sum::<$sum>() as i64).sum();
                Some((lo as f64, hi as f64, sum as f64))
            }
        }
    )*};
}
// Narrow types: clamp in f32, then truncate toward zero, which is floor once
// the value is non-negative (`i16` shifts into that range first); NaN gives
// the minimum. Written so that the compiler vectorises it (a saturating `as`
// does not vectorise); the wide types go via f64.
impl_int_sample!(
    u8: true, |v: f32| truncate_within(v + 0.5, 255.0) as u8, u32;
    u16: true, |v: f32| truncate_within(v + 0.5, 65535.0) as u16, u32;
    i16: true, |v: f32| (truncate_within(v + 32768.5, 65535.0) - 32768) as i16, i32;
    u32: false, |v: f32| u32::from_f64(v as f64), i64;
    i32: false, |v: f32| i32::from_f64(v as f64), i64
);

/// `v` clamped into `[0, max]` (NaN to 0) and truncated toward zero;
/// `max` at most 65535.
#[inline]
#[allow(clippy::manual_clamp)] // `clamp` keeps NaN, which must not reach the conversion.
fn truncate_within(v: f32, max: f32) -> i32 {
    let v = v.max(0.0).min(max);
    // SAFETY: `v` is finite and within [0, 65535] (`f32::max` returns the
    // non-NaN operand), all that `to_int_unchecked` requires.
    unsafe { v.to_int_unchecked::<i32>() }
}

impl Sample for f32 {
    const IS_FLOAT: bool = true;
    const NARROW: bool = false;
    #[inline]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline]
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    #[inline]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline]
    fn from_f32(v: f32) -> Self {
        v
    }
    fn int_row_stats(_: &[Self]) -> Option<(f64, f64, f64)> {
        None
    }
}

impl Sample for f64 {
    const IS_FLOAT: bool = true;
    const NARROW: bool = false;
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(v: f64) -> Self {
        v
    }
    fn to_f32(self) -> f32 {
        self as f32
    }
    fn from_f32(v: f32) -> Self {
        v as f64
    }
    fn int_row_stats(_: &[Self]) -> Option<(f64, f64, f64)> {
        None
    }
}

/// `f64::floor` without the libm call the baseline x86-64 target makes for
/// it (a fifth of the bilinear kernel's time). Same result for every finite
/// value within i64 range; NaN gives 0.
#[inline]
pub(crate) fn floor(v: f64) -> f64 {
    let t = v as i64 as f64;
    if t > v {
        t - 1.0
    } else {
        t
    }
}
