//! Separable resampling for sources whose pixel axes run along the grid's:
//! same CRS, north-up, any pixel size and offset (a 20 m band onto a 10 m
//! UTM grid, a 3 m raster averaged down to 10 m). A target column then maps
//! to one source x and a target row to one source y, so bilinear, cubic and
//! average weights are products `wx * wy` and the kernel runs as a
//! horizontal pass over each needed source row followed by a vertical pass
//! over those rows. Renormalising over valid neighbours stays exact:
//! numerator and denominator `sum(wx * wy * valid * v)` and
//! `sum(wx * wy * valid)` are separable in the same way. Where the source
//! window holds no invalid pixel the denominator is 1 and is not computed.

use std::ops::{Add, Div, Mul};

use super::{Sample, SourceBand};
use crate::collection::Resampling;

/// The accumulator of the passes: `f32` for integer samples of at most 16
/// bits (exact in `f32`, twice the lanes), `f64` otherwise.
pub trait Acc: Copy + Send + Sync + PartialOrd + Add<Output = Self> + Mul<Output = Self> + Div<Output = Self> + 'static {
    const ZERO: Self;
    fn of(v: f64) -> Self;
    fn sample<T: Sample>(v: T) -> Self;
    fn round<T: Sample>(self) -> T;
}

impl Acc for f32 {
    const ZERO: Self = 0.0;
    #[inline]
    fn of(v: f64) -> Self {
        v as f32
    }
    #[inline]
    fn sample<T: Sample>(v: T) -> Self {
        v.to_f32()
    }
    #[inline]
    fn round<T: Sample>(self) -> T {
        T::from_f32(self)
    }
}

impl Acc for f64 {
    const ZERO: Self = 0.0;
    #[inline]
    fn of(v: f64) -> Self {
        v
    }
    #[inline]
    fn sample<T: Sample>(v: T) -> Self {
        v.to_f64()
    }
    #[inline]
    fn round<T: Sample>(self) -> T {
        T::from_f64(self)
    }
}

/// Source pixels and weights of each target position along one axis: `k`
/// taps per position (zero-weight padding, indices clamped into the
/// source), weights normalised over the in-bounds taps.
pub struct Taps<A> {
    k: usize,
    idx: Vec<u32>,
    w: Vec<A>,
    /// Whether the position's centre falls inside the source and its taps
    /// carry weight; other positions are masked.
    inside: Vec<bool>,
    /// The source pixel under each position's centre: where it is invalid,
    /// bilinear and cubic leave the target pixel invalid (gdalwarp's rule).
    centre: Vec<u32>,
    /// Smallest and largest source index of any inside position's taps
    /// (zero-weight ones included).
    lo: usize,
    hi: usize,
}

impl<A: Acc> Taps<A> {
    /// `centres` are the continuous source positions of the target pixel
    /// centres; `corners` (one more) those of their edges, used by average;
    /// `scale` widens bilinear and cubic ([`super::kernel_taps`]).
    pub fn new(method: Resampling, scale: f64, centres: &[f64], corners: &[f64], len: usize) -> Self {
        // The first tap of position `p`; its weights go into `w`.
        let weights = |p: usize, w: &mut Vec<f64>| -> i64 {
            w.clear();
            let x = centres[p];
            match method {
                Resampling::Nearest | Resampling::Mode => {
                    w.push(1.0);
                    super::floor(x) as i64
                }
                Resampling::Bilinear | Resampling::Cubic => super::kernel_taps(method, scale, x, w),
                Resampling::Average => {
                    let (a, b) = (corners[p].min(corners[p + 1]), corners[p].max(corners[p + 1]));
                    let (first, last) = (super::floor(a + 1e-10) as i64, (b - 1e-10).ceil() as i64);
                    w.extend((first..last.max(first + 1)).map(|i| (b.min(i as f64 + 1.0) - a.max(i as f64)).max(0.0)));
                    first
                }
            }
        };
        let n = centres.len();
        let mut w = Vec::new();
        let k = match method {
            Resampling::Nearest | Resampling::Mode => 1,
            Resampling::Bilinear if scale >= 1.0 => 2,
            Resampling::Cubic if scale >= 1.0 => 4,
            _ => (0..n)
                .map(|p| {
                    weights(p, &mut w);
                    w.len()
                })
                .max()
                .unwrap_or(1),
        };
        let mut taps = Taps { k, idx: vec![0; n * k], w: vec![A::ZERO; n * k], inside: vec![false; n], centre: vec![0; n], lo: usize::MAX, hi: 0 };
        let last = len as i64 - 1;
        for (p, &x) in centres.iter().enumerate() {
            let start = weights(p, &mut w);
            let in_bounds = |i: usize| (0..=last).contains(&(start + i as i64));
            let sum: f64 = w.iter().enumerate().filter(|(i, _)| in_bounds(*i)).map(|(_, w)| w).sum();
            let carries = if method == Resampling::Average { sum > 1e-10 } else { sum.abs() > 1e-5 };
            if !(x >= 0.0 && x < len as f64 && carries) {
                continue;
            }
            taps.inside[p] = true;
            taps.centre[p] = super::floor(x) as u32;
            // Padding taps (average's count varies) repeat the last index
            // with weight 0, so one position's taps stay consecutive.
            for i in 0..k {
                let s = (start + i.min(w.len() - 1) as i64).clamp(0, last.max(0)) as usize;
                taps.idx[p * k + i] = s as u32;
                taps.lo = taps.lo.min(s);
                taps.hi = taps.hi.max(s);
                if i < w.len() && in_bounds(i) {
                    taps.w[p * k + i] = A::of(w[i] / sum);
                }
            }
        }
        taps
    }

    fn any_inside(&self) -> bool {
        self.lo <= self.hi
    }
}

/// [`resample`] compiled for AVX2 and FMA: its row passes run eight f32
/// lanes at a time instead of four. The same operations in the same order
/// (Rust does not fuse multiply-adds on its own), so the same results.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn resample_avx2<T: Sample, A: Acc>(
    src: &SourceBand<'_, T>,
    method: Resampling,
    xt: &Taps<A>,
    yt: &Taps<A>,
    fill: T,
    seamless: bool,
) -> (Vec<T>, Vec<bool>) {
    resample(src, method, xt, yt, fill, seamless)
}

/// Resamples one band onto one tile from per-column and per-row taps.
/// Nearest copies the sample values; mode is not separable (the caller
/// handles it per pixel). `seamless`: every pixel is computed the same
/// way whatever else the target holds (no shortcut for a target whose
/// whole source window is valid), so a pixel's value does not depend on
/// the target's extent.
#[inline(always)]
pub fn resample<T: Sample, A: Acc>(src: &SourceBand<'_, T>, method: Resampling, xt: &Taps<A>, yt: &Taps<A>, fill: T, seamless: bool) -> (Vec<T>, Vec<bool>) {
    let (n, m) = (xt.inside.len(), yt.inside.len());
    if !xt.any_inside() || !yt.any_inside() {
        return (vec![fill; n * m], vec![false; n * m]);
    }
    if method == Resampling::Nearest {
        let (mut out, mut mask) = (vec![fill; n * m], vec![false; n * m]);
        for r in (0..m).filter(|r| yt.inside[*r]) {
            let base = yt.idx[r * yt.k] as usize * src.width;
            for c in (0..n).filter(|c| xt.inside[*c]) {
                let i = base + xt.idx[c * xt.k] as usize;
                if src.is_valid(i) {
                    out[r * n + c] = src.values[i];
                    mask[r * n + c] = true;
                }
            }
        }
        return (out, mask);
    }
    let outside: Vec<usize> = (0..n).filter(|c| !xt.inside[*c]).collect();
    let clean = !seamless && window_is_valid(src, (xt.lo, xt.hi), (yt.lo, yt.hi));
    // Horizontal passes of the last `yt.k` source rows (row s in slot
    // s % k: the rows one target row reads are consecutive, so distinct).
    let ky = yt.k;
    let mut num_rows = vec![A::ZERO; ky * n];
    let mut den_rows = if clean { Vec::new() } else { vec![A::ZERO; ky * n] };
    let mut held = vec![usize::MAX; ky];
    let mut scratch = Vec::with_capacity(xt.hi + 1 - xt.lo);
    let (mut num, mut den) = (vec![A::ZERO; n], vec![A::ZERO; if clean { 0 } else { n }]);
    // Rows are appended in order (no fill pass over the whole tile first).
    let (mut out, mut mask) = (Vec::with_capacity(n * m), Vec::with_capacity(n * m));
    for r in 0..m {
        if !yt.inside[r] {
            out.extend(std::iter::repeat_n(fill, n));
            mask.extend(std::iter::repeat_n(false, n));
            continue;
        }
        if clean && ky == 2 {
            // Bilinear on a clean window: both rows and the rounding in one
            // pass, and the mask is the columns inside.
            let (s0, s1) = (yt.idx[r * 2] as usize, yt.idx[r * 2 + 1] as usize);
            for s in [s0, s1] {
                if held[s % 2] != s {
                    horizontal(src, s, xt, true, &mut num_rows[(s % 2) * n..(s % 2 + 1) * n], &mut [], &mut scratch);
                    held[s % 2] = s;
                }
            }
            let (w0, w1) = (yt.w[r * 2], yt.w[r * 2 + 1]);
            let (h0, h1) = (&num_rows[(s0 % 2) * n..(s0 % 2 + 1) * n], &num_rows[(s1 % 2) * n..(s1 % 2 + 1) * n]);
            out.extend(h0.iter().zip(h1).map(|(a, b)| (w0 * *a + w1 * *b).round::<T>()));
            mask.extend_from_slice(&xt.inside);
            for &c in &outside {
                out[r * n + c] = fill;
            }
            continue;
        }
        num.fill(A::ZERO);
        den.fill(A::ZERO);
        for j in 0..ky {
            let wy = yt.w[r * ky + j];
            if wy == A::ZERO {
                continue;
            }
            let s = yt.idx[r * ky + j] as usize;
            let slot = s % ky;
            let (h_num, h_den) = (&mut num_rows[slot * n..(slot + 1) * n], if clean { &mut [][..] } else { &mut den_rows[slot * n..(slot + 1) * n] });
            if held[slot] != s {
                horizontal(src, s, xt, clean, h_num, h_den, &mut scratch);
                held[slot] = s;
            }
            for (a, h) in num.iter_mut().zip(h_num.iter()) {
                *a = *a + wy * *h;
            }
            for (a, h) in den.iter_mut().zip(h_den.iter()) {
                *a = *a + wy * *h;
            }
        }
        if clean {
            out.extend(num.iter().map(|a| a.round::<T>()));
            mask.extend_from_slice(&xt.inside);
        } else {
            // As the per-pixel kernels: cubic's weights may sum below zero.
            let (floor, neg_floor) = (A::of(1e-5), A::of(-1e-5));
            // Average keeps the valid part of its footprint; bilinear and
            // cubic need a valid centre pixel.
            let centre_row = (method != Resampling::Average).then(|| yt.centre[r] as usize * src.width);
            for (c, (a, d)) in num.iter().zip(&den).enumerate() {
                let valid = (*d > floor || *d < neg_floor) && centre_row.is_none_or(|row| src.is_valid(row + xt.centre[c] as usize));
                out.push(if valid { (*a / *d).round() } else { fill });
                mask.push(valid);
            }
            for &c in &outside {
                mask[r * n + c] = false;
            }
        }
        for &c in &outside {
            out[r * n + c] = fill;
        }
    }
    (out, mask)
}

/// One source row filtered horizontally onto the target columns: the
/// weighted sum of values (invalid ones as 0) and, unless the window is
/// clean, the weighted sum of validity.
#[inline(always)]
fn horizontal<T: Sample, A: Acc>(src: &SourceBand<'_, T>, s: usize, xt: &Taps<A>, clean: bool, num: &mut [A], den: &mut [A], scratch: &mut Vec<A>) {
    let base = s * src.width;
    let row = &src.values[base..base + src.width];
    let k = xt.k;
    if clean {
        match k {
            2 => {
                // Converted once per source pixel (vectorised), then gathered.
                scratch.clear();
                scratch.extend(row[xt.lo..=xt.hi].iter().map(|v| A::sample(*v)));
                let (lo, values) = (xt.lo, &scratch[..]);
                for ((o, idx), w) in num.iter_mut().zip(xt.idx.chunks_exact(2)).zip(xt.w.chunks_exact(2)) {
                    *o = w[0] * values[idx[0] as usize - lo] + w[1] * values[idx[1] as usize - lo];
                }
            }
            _ => {
                for ((o, idx), w) in num.iter_mut().zip(xt.idx.chunks_exact(k)).zip(xt.w.chunks_exact(k)) {
                    *o = idx.iter().zip(w).fold(A::ZERO, |a, (i, w)| a + *w * A::sample(row[*i as usize]));
                }
            }
        }
        return;
    }
    for (((o, d), idx), w) in num.iter_mut().zip(den.iter_mut()).zip(xt.idx.chunks_exact(k)).zip(xt.w.chunks_exact(k)) {
        let (mut a, mut b) = (A::ZERO, A::ZERO);
        for (i, w) in idx.iter().zip(w) {
            if src.is_valid(base + *i as usize) {
                a = a + *w * A::sample(row[*i as usize]);
                b = b + *w;
            }
        }
        (*o, *d) = (a, b);
    }
}

/// Whether every source pixel in the window (inclusive bounds) is valid.
pub(super) fn window_is_valid<T: Sample>(src: &SourceBand<'_, T>, (c0, c1): (usize, usize), (r0, r1): (usize, usize)) -> bool {
    if src.valid.is_none() && src.nodata.is_none() && !T::IS_FLOAT {
        return true;
    }
    (r0..=r1).all(|r| {
        let base = r * src.width;
        match (src.valid, src.nodata, T::IS_FLOAT) {
            // Only nodata is invalid: a comparison the compiler vectorises.
            (None, Some(nd), false) => !src.values[base + c0..=base + c1].iter().fold(false, |hit, v| hit | (*v == nd)),
            _ => (base + c0..=base + c1).all(|i| src.is_valid(i)),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::super::*;

    /// The separable kernels give what the per-pixel kernels give at the
    /// same positions: up, down and odd scales and offsets, sources with
    /// nodata holes and a validity mask, narrow and wide types.
    #[test]
    fn separable_kernels_match_the_per_pixel_kernels() {
        let grid = GridSpec::default_at(10.0).unwrap();
        let tile = TileId::new(3, -2);
        let t = grid.tile_geotransform(tile);
        let to_source = {
            let s = crs::spatial_ref("t", crate::grid::DEFAULT_GRID_CRS).unwrap();
            crs::Transformer::new(&s, &s).unwrap()
        };
        for (pixel, dx, dy, size) in [(25.6, 0.0, 0.0, 100), (3.0, 7.3, -4.1, 900), (20.0, -13.0, 11.0, 140), (9.7, 31.0, 25.0, 300)] {
            let src = SourceGeometry::try_new(size, size, [t[0] + dx, pixel, 0.0, t[3] + dy, 0.0, -pixel]).unwrap();
            let scale = scene_scale(&grid, &src, &to_source, &to_source, Placement::Axes);
            let coords = tile_coords(&grid, tile, &src, &to_source, true, Placement::Axes, scale);
            let axes = coords.axes.as_ref().unwrap();
            let (sx, sy, corners) = axes.points();
            let values: Vec<u16> = (0..size * size).map(|i| if (i / size) % 37 == 5 && i % 11 < 4 { 0 } else { (i * 7919 % 60_000) as u16 + 1 }).collect();
            let valid: Vec<bool> = (0..size * size).map(|i| i % 97 != 3).collect();
            let wide: Vec<i32> = values.iter().map(|v| *v as i32 * 1000 - 5_000_000).collect();
            for method in [Resampling::Nearest, Resampling::Bilinear, Resampling::Cubic, Resampling::Average] {
                for (nodata, mask) in [(Some(0u16), None), (Some(0), Some(&valid[..])), (None, None)] {
                    let band = SourceBand { values: &values, nodata, valid: mask, width: size, height: size };
                    #[cfg(target_arch = "x86_64")]
                    if super::super::gather::available() {
                        // The AVX2 build of the passes gives the same bits.
                        let xt = super::Taps::<f32>::new(method, scale.0, &axes.xs, &axes.x_edges, size);
                        let yt = super::Taps::<f32>::new(method, scale.1, &axes.ys, &axes.y_edges, size);
                        // SAFETY: the CPU has AVX2 and FMA (checked).
                        assert!(
                            super::resample(&band, method, &xt, &yt, 0, false) == unsafe { super::resample_avx2(&band, method, &xt, &yt, 0, false) },
                            "{method:?} at {pixel} m"
                        );
                    }
                    let (a, am) = resample(&band, &coords, method, 0);
                    let (b, bm) = resample_points(&band, &sx, &sy, ranges(&sx, &sy), Some(&corners), coords.n, scale, method, 0, false);
                    agree(&a, &am, &b, &bm, method, pixel);
                    let band = SourceBand { values: &wide, nodata: nodata.map(|_| -4_999_000), valid: mask, width: size, height: size };
                    let (a, am) = resample(&band, &coords, method, 0);
                    let (b, bm) = resample_points(&band, &sx, &sy, ranges(&sx, &sy), Some(&corners), coords.n, scale, method, 0, false);
                    agree(&a, &am, &b, &bm, method, pixel);
                }
            }
        }
    }

    fn agree<T: Sample + std::fmt::Debug>(a: &[T], am: &[bool], b: &[T], bm: &[bool], method: Resampling, pixel: f64) {
        let masks_differ = am.iter().zip(bm).filter(|(x, y)| x != y).count();
        assert!(masks_differ * 1000 <= am.len(), "{method:?} at {pixel} m: {masks_differ} mask differences");
        assert!(am.iter().any(|m| *m), "{method:?} at {pixel} m: nothing valid");
        let (mut off, mut both) = (0, 0);
        for k in 0..a.len() {
            if am[k] && bm[k] {
                both += 1;
                let d = (a[k].to_f64() - b[k].to_f64()).abs();
                assert!(d <= 1.0, "{method:?} at {pixel} m, pixel {k}: {:?} vs {:?}", a[k], b[k]);
                off += (d > 0.0) as usize;
            }
        }
        if method == Resampling::Nearest {
            assert_eq!(off, 0);
        }
        eprintln!("{method:?} at {pixel} m: {off} of {both} pixels differ by 1");
    }
}
