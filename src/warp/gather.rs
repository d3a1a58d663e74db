//! Bilinear resampling, plain or widened, of 16-bit integer samples over a
//! source window known to hold only valid pixels, eight target pixels at a
//! time with AVX2 (x86-64 CPUs from 2013 on; others, and CPUs without it,
//! keep the per-pixel kernel).
//!
//! The per-pixel kernel spends most of its time on bookkeeping around a
//! handful of multiply-adds: splitting the position, checking bounds,
//! converting and storing one pixel at a time. Here every step runs on eight
//! pixels at once. One 32-bit gather at a 16-bit tap reads that tap and the
//! next, so a row of `nx` taps costs `ceil(nx / 2)` gathers per eight
//! pixels.
//!
//! The arithmetic is the per-pixel `f32` kernel's (`clean_bilinear_f32`),
//! operation for operation and in the same order, so both give the same
//! bits; the test below holds them to that.

use super::{Sample, SourceBand};

/// Taps per axis this kernel handles (x in gathered pairs).
pub(super) const MAX_TAPS: usize = 8;

/// The kernel for one band and tile: window, scales and source.
pub(super) struct Bilinear16<'a, T> {
    values: &'a [T],
    signed: bool,
    width: usize,
    /// Rows held in `values`.
    height: usize,
    /// Rows of the whole source (more than `height` while it streams in).
    source_height: usize,
    scale: (f32, f64),
    /// First tap offset and tap count per axis (`widened_window`'s layout).
    x_taps: (i64, usize),
    y_taps: (i64, usize),
}

impl<'a, T: Sample> Bilinear16<'a, T> {
    /// The kernel if this CPU, sample type and window allow it: `u16` or
    /// `i16` samples, at most [`MAX_TAPS`] taps per axis, a source that
    /// `i32` indexes.
    pub(super) fn new(src: &SourceBand<'a, T>, scale: (f64, f64), x_taps: (i64, usize), y_taps: (i64, usize)) -> Option<Self> {
        use std::any::TypeId;
        let signed = if TypeId::of::<T>() == TypeId::of::<u16>() {
            false
        } else if TypeId::of::<T>() == TypeId::of::<i16>() {
            true
        } else {
            return None;
        };
        // While a scene streams in, `values` holds the rows received so far:
        // the kernel reads only those (groups below them go to the caller).
        let height = src.height.min(src.values.len().checked_div(src.width)?);
        let fits = x_taps.1 <= MAX_TAPS && y_taps.1 <= MAX_TAPS && src.width * height < i32::MAX as usize / 2;
        (fits && available()).then_some(Self {
            values: src.values,
            signed,
            width: src.width,
            height,
            source_height: src.height,
            scale: (scale.0 as f32, scale.1),
            x_taps,
            y_taps,
        })
    }

    /// Resamples groups of eight target pixels from `from` on while every
    /// pixel of the group lies inside the source with its whole window, and
    /// passes over groups wholly outside the source (they stay `fill` and
    /// masked, as the per-pixel kernel leaves them); returns where it stopped (a group it left to the caller, or the last
    /// whole group's end). `sx`, `sy`, `out` and `mask` have one entry per
    /// target pixel.
    pub(super) fn run(&self, sx: &[f64], sy: &[f64], out: &mut [T], mask: &mut [bool], from: usize) -> usize {
        Self::run_slices(std::slice::from_ref(self), sx, sy, &mut [out], &mut [mask], from)
    }

    /// Whether the kernels of several bands of one source and tile can run
    /// together ([`Self::run_bands`]): the same sample type, rows held and
    /// windows.
    pub(super) fn shareable(kernels: &[Self]) -> bool {
        kernels.iter().all(|k| {
            let f = &kernels[0];
            (k.signed, k.width, k.height, k.source_height, k.x_taps, k.y_taps) == (f.signed, f.width, f.height, f.source_height, f.x_taps, f.y_taps)
                && k.scale.0.to_bits() == f.scale.0.to_bits()
                && k.scale.1.to_bits() == f.scale.1.to_bits()
        })
    }

    /// [`Self::run`] for several bands at once (`outs`, `masks` one per
    /// kernel, in order): each group's positions and weights are computed
    /// once, then applied to every band. The kernels must be
    /// [`Self::shareable`].
    pub(super) fn run_bands(kernels: &[Self], sx: &[f64], sy: &[f64], outs: &mut [Vec<T>], masks: &mut [Vec<bool>], from: usize) -> usize {
        let mut outs: Vec<&mut [T]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
        let mut masks: Vec<&mut [bool]> = masks.iter_mut().map(|m| m.as_mut_slice()).collect();
        Self::run_slices(kernels, sx, sy, &mut outs, &mut masks, from)
    }

    fn run_slices(kernels: &[Self], sx: &[f64], sy: &[f64], outs: &mut [&mut [T]], masks: &mut [&mut [bool]], from: usize) -> usize {
        let mut n = sx.len().min(sy.len());
        for (o, m) in outs.iter().zip(masks.iter()) {
            n = n.min(o.len()).min(m.len());
        }
        if kernels.is_empty() || kernels.len() != outs.len() || kernels.len() != masks.len() || !Self::shareable(kernels) {
            return from;
        }
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: `new` checked that the CPU has AVX2 and FMA; `run_avx2`
            // reads `sx`, `sy` and writes `outs`, `masks` below `n` only, and
            // reads each source only inside the window it checks per group
            // (the kernels share their geometry: `shareable`).
            unsafe { Self::run_avx2(kernels, sx, sy, outs, masks, from, n) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (sx, sy, outs, masks, n);
            from
        }
    }

    /// Picks the instance for this sample type and tap count: everything
    /// per group then has fixed bounds and stays in registers.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2(kernels: &[Self], sx: &[f64], sy: &[f64], outs: &mut [&mut [T]], masks: &mut [&mut [bool]], from: usize, n: usize) -> usize {
        macro_rules! by_pairs {
            ($signed:literal) => {
                match kernels[0].x_taps.1.div_ceil(2) {
                    1 => Self::groups::<$signed, 1>(kernels, sx, sy, outs, masks, from, n),
                    2 => Self::groups::<$signed, 2>(kernels, sx, sy, outs, masks, from, n),
                    3 => Self::groups::<$signed, 3>(kernels, sx, sy, outs, masks, from, n),
                    _ => Self::groups::<$signed, 4>(kernels, sx, sy, outs, masks, from, n),
                }
            };
        }
        if kernels[0].signed {
            by_pairs!(true)
        } else {
            by_pairs!(false)
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn groups<const SIGNED: bool, const PAIRS: usize>(
        kernels: &[Self],
        sx: &[f64],
        sy: &[f64],
        outs: &mut [&mut [T]],
        masks: &mut [&mut [bool]],
        from: usize,
        n: usize,
    ) -> usize {
        use std::arch::x86_64::*;
        let geometry = &kernels[0];
        let (fx, nx) = geometry.x_taps;
        let (fy, ny) = geometry.y_taps;
        // The per-pixel kernel sums its taps in `lanes` (4, 8) by halving.
        let lanes = if nx <= 4 { 4 } else { 8 };
        let (w, h) = (geometry.width as f64, geometry.height as f64);
        let (half, zero, one_d) = (_mm256_set1_pd(0.5), _mm256_setzero_pd(), _mm256_set1_pd(1.0));
        let (w_d, h_d) = (_mm256_set1_pd(w), _mm256_set1_pd(h));
        let source_h = _mm256_set1_pd(geometry.source_height as f64);
        // A group's window must start at or after 0 and end within the
        // source: first tap + `2 * PAIRS` columns (the last gather reads a
        // pair), first row + `ny` rows.
        let (x_lo, x_hi) = (_mm256_set1_pd(-(fx as f64)), _mm256_set1_pd(w - (fx as f64) - 2.0 * PAIRS as f64));
        let (y_lo, y_hi) = (_mm256_set1_pd(-(fy as f64)), _mm256_set1_pd(h - (fy as f64) - ny as f64));
        let sxs = _mm256_set1_ps(geometry.scale.0);
        let sy_d = _mm256_set1_pd(geometry.scale.1);
        let fx_s = _mm256_set1_ps(fx as f32);
        let sign_ps = _mm256_set1_ps(-0.0);
        let sign_pd = _mm256_set1_pd(-0.0);
        let (zero_s, one_s) = (_mm256_setzero_ps(), _mm256_set1_ps(1.0));
        let width_i = _mm256_set1_epi32(geometry.width as i32);
        let low16 = _mm256_set1_epi32(0xFFFF);
        // Rounding and clamping of `Sample::from_f32` for u16 and i16.
        let (offset, top, back) = if SIGNED { (32768.5f32, 65535.0f32, 32768) } else { (0.5, 65535.0, 0) };
        let (offset, top, back) = (_mm256_set1_ps(offset), _mm256_set1_ps(top), _mm256_set1_epi32(back));
        let tiny = _mm256_set1_ps(1e-5);
        let mut k = from;
        while k + 8 <= n {
            let xs = [_mm256_loadu_pd(sx.as_ptr().add(k)), _mm256_loadu_pd(sx.as_ptr().add(k + 4))];
            let ys = [_mm256_loadu_pd(sy.as_ptr().add(k)), _mm256_loadu_pd(sy.as_ptr().add(k + 4))];
            // Per half: split into pixel and fraction (`split`), check the
            // position (NaN fails every comparison) and the window.
            let (mut ok, mut in_source) = (0, 0);
            let mut x0 = [_mm_setzero_si128(); 2];
            let mut y0 = [_mm_setzero_si128(); 2];
            let mut dx = [_mm_setzero_ps(); 2];
            let mut dy = [zero; 2];
            for hlf in 0..2 {
                let (x, y) = (xs[hlf], ys[hlf]);
                // Inside the source's columns and at or below its top row;
                // then within the rows held, or within the whole source.
                let in_cols_from_top = _mm256_and_pd(
                    _mm256_and_pd(_mm256_cmp_pd::<_CMP_GE_OQ>(x, zero), _mm256_cmp_pd::<_CMP_LT_OQ>(x, w_d)),
                    _mm256_cmp_pd::<_CMP_GE_OQ>(y, zero),
                );
                let inside = _mm256_and_pd(in_cols_from_top, _mm256_cmp_pd::<_CMP_LT_OQ>(y, h_d));
                let (fxv, fyv) = (_mm256_sub_pd(x, half), _mm256_sub_pd(y, half));
                let (ix, iy) = (_mm256_floor_pd(fxv), _mm256_floor_pd(fyv));
                let window = _mm256_and_pd(
                    _mm256_and_pd(_mm256_cmp_pd::<_CMP_GE_OQ>(ix, x_lo), _mm256_cmp_pd::<_CMP_LE_OQ>(ix, x_hi)),
                    _mm256_and_pd(_mm256_cmp_pd::<_CMP_GE_OQ>(iy, y_lo), _mm256_cmp_pd::<_CMP_LE_OQ>(iy, y_hi)),
                );
                ok |= _mm256_movemask_pd(_mm256_and_pd(inside, window)) << (4 * hlf);
                in_source |= _mm256_movemask_pd(_mm256_and_pd(in_cols_from_top, _mm256_cmp_pd::<_CMP_LT_OQ>(y, source_h)));
                x0[hlf] = _mm256_cvttpd_epi32(ix);
                y0[hlf] = _mm256_cvttpd_epi32(iy);
                dx[hlf] = _mm256_cvtpd_ps(_mm256_sub_pd(fxv, ix));
                dy[hlf] = _mm256_sub_pd(fyv, iy);
            }
            if ok != 0xFF {
                if in_source == 0 {
                    // Every pixel maps outside the whole source (or to NaN).
                    k += 8;
                    continue;
                }
                return k;
            }
            let x0 = _mm256_add_epi32(_mm256_set_m128i(x0[1], x0[0]), _mm256_set1_epi32(fx as i32));
            let y0 = _mm256_add_epi32(_mm256_set_m128i(y0[1], y0[0]), _mm256_set1_epi32(fy as i32));
            let dx = _mm256_set_m128(dx[1], dx[0]);
            // The y weights of every row (taken in f64 as the per-pixel
            // kernel does) and their sum, once for all bands.
            let mut wy = [zero_s; MAX_TAPS];
            let mut wy_sum = zero_s;
            for (j, wyj) in wy.iter_mut().enumerate().take(ny) {
                let mut half_w = [_mm_setzero_ps(); 2];
                for hlf in 0..2 {
                    let t = _mm256_mul_pd(_mm256_sub_pd(_mm256_set1_pd((fy + j as i64) as f64), dy[hlf]), sy_d);
                    half_w[hlf] = _mm256_cvtpd_ps(_mm256_max_pd(_mm256_sub_pd(one_d, _mm256_andnot_pd(sign_pd, t)), zero));
                }
                *wyj = _mm256_set_m128(half_w[1], half_w[0]);
                wy_sum = _mm256_add_ps(wy_sum, *wyj);
            }
            // x weights `(1 - |(first + i) * scale|).max(0)`, first = fx - dx;
            // zero past `nx`.
            let first = _mm256_sub_ps(fx_s, dx);
            let mut wx = [zero_s; MAX_TAPS];
            for (i, wi) in wx.iter_mut().enumerate().take(nx.min(2 * PAIRS)) {
                let t = _mm256_mul_ps(_mm256_add_ps(first, _mm256_set1_ps(i as f32)), sxs);
                *wi = _mm256_max_ps(_mm256_sub_ps(one_s, _mm256_andnot_ps(sign_ps, t)), zero_s);
            }
            let wsum = halving_sum(&mut wx.clone(), lanes);
            let norm = _mm256_mul_ps(wsum, wy_sum);
            if _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(_mm256_andnot_ps(sign_ps, norm), tiny)) != 0xFF {
                return k;
            }
            let first_row = _mm256_add_epi32(_mm256_mullo_epi32(y0, width_i), x0);
            for ((kernel, out), mask) in kernels.iter().zip(outs.iter_mut()).zip(masks.iter_mut()) {
                let base = kernel.values.as_ptr() as *const i32;
                // Per-tap sums over the rows, weighted by the y weights.
                let mut acc = [zero_s; MAX_TAPS];
                let mut row = first_row;
                for wyj in wy.iter().take(ny) {
                    for p in 0..PAIRS {
                        let v = _mm256_i32gather_epi32::<2>(base, _mm256_add_epi32(row, _mm256_set1_epi32(2 * p as i32)));
                        let (lo, hi) = if SIGNED {
                            (_mm256_srai_epi32::<16>(_mm256_slli_epi32::<16>(v)), _mm256_srai_epi32::<16>(v))
                        } else {
                            (_mm256_and_si256(v, low16), _mm256_srli_epi32::<16>(v))
                        };
                        acc[2 * p] = _mm256_add_ps(acc[2 * p], _mm256_mul_ps(*wyj, _mm256_cvtepi32_ps(lo)));
                        acc[2 * p + 1] = _mm256_add_ps(acc[2 * p + 1], _mm256_mul_ps(*wyj, _mm256_cvtepi32_ps(hi)));
                    }
                    row = _mm256_add_epi32(row, width_i);
                }
                for (a, wi) in acc.iter_mut().zip(&wx).take(2 * PAIRS) {
                    *a = _mm256_mul_ps(*a, *wi);
                }
                let sum = halving_sum(&mut acc, lanes);
                let v = _mm256_div_ps(sum, norm);
                let v = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(v, offset), zero_s), top);
                let v = _mm256_sub_epi32(_mm256_cvttps_epi32(v), back);
                // Pack to 16 bits (values are in range, so no saturation) and
                // store eight samples and eight mask bytes.
                let packed = if SIGNED { _mm256_packs_epi32(v, v) } else { _mm256_packus_epi32(v, v) };
                let packed = _mm256_permute4x64_epi64::<0b1000>(packed);
                _mm_storeu_si128(out.as_mut_ptr().add(k) as *mut __m128i, _mm256_castsi256_si128(packed));
                std::ptr::write_unaligned(mask.as_mut_ptr().add(k) as *mut [bool; 8], [true; 8]);
            }
            k += 8;
        }
        k
    }
}

/// `lane_sum` of the per-pixel kernel over the first `lanes` (4 or 8)
/// vectors: halving, so the additions happen in the same order.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn halving_sum(v: &mut [std::arch::x86_64::__m256; MAX_TAPS], lanes: usize) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::_mm256_add_ps;
    let mut n = lanes;
    while n > 1 {
        n /= 2;
        for i in 0..n {
            v[i] = _mm256_add_ps(v[i], v[i + n]);
        }
    }
    v[0]
}

/// Whether this CPU runs the AVX2 code (this kernel and the AVX2 build of
/// the separable passes): AVX2 and FMA, unless the environment sets
/// `PIXELQUERY_NO_SIMD` (for comparisons). Checked once.
pub(super) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(|| std::env::var_os("PIXELQUERY_NO_SIMD").is_none() && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::super::{bilinear, clean_bilinear_f32, kernel_taps, separable, widened_window};
    use super::*;
    use crate::collection::Resampling;

    /// Eight at a time gives the per-pixel `f32` kernel's bits (widened)
    /// or the `f64` bilinear's value within rounding (plain), for `u16` and
    /// `i16`, and leaves every group with a pixel outside the source or its
    /// window (or at NaN) to the caller.
    #[test]
    fn groups_of_eight_give_the_per_pixel_kernels_values() {
        let (w, h) = (301, 203);
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let unsigned: Vec<u16> = (0..w * h).map(|_| (next() % 65535) as u16 + 1).collect();
        let signed: Vec<i16> = (0..w * h).map(|_| (next() % 65536) as u16 as i16).collect();
        let n = 40_000;
        let mut sx: Vec<f64> = (0..n).map(|_| (next() % 1_000_000) as f64 / 1e6 * (w as f64 + 10.0) - 5.0).collect();
        let sy: Vec<f64> = (0..n).map(|_| (next() % 1_000_000) as f64 / 1e6 * (h as f64 + 10.0) - 5.0).collect();
        sx[1234] = f64::NAN;
        // Groups wholly outside the source: left of it, NaN, below it.
        sx[800..808].fill(-3.0);
        sx[1600..1608].fill(f64::NAN);
        let mut sy = sy;
        sy[2400..2408].fill(h as f64 + 2.0);
        let Some(_) = Bilinear16::new(&SourceBand { values: &unsigned, nodata: None, valid: None, width: w, height: h }, (1.0, 1.0), (0, 2), (0, 2)) else {
            eprintln!("no AVX2 and FMA here: nothing to compare");
            return;
        };
        for scale in [(1.0, 1.0), (0.42, 1.0), (0.42, 0.6), (0.7, 0.8), (0.3, 1.0)] {
            let window = |s: f64| if s >= 1.0 { (0, 2) } else { widened_window(Resampling::Bilinear, s) };
            let (wx, wy) = (window(scale.0), window(scale.1));
            if wx.1 > MAX_TAPS {
                assert!(Bilinear16::new(&SourceBand { values: &unsigned, nodata: None, valid: None, width: w, height: h }, scale, wx, wy).is_none());
                continue;
            }
            check(&SourceBand { values: &unsigned, nodata: None, valid: None, width: w, height: h }, &sx, &sy, scale, wx, wy);
            check(&SourceBand { values: &signed, nodata: None, valid: None, width: w, height: h }, &sx, &sy, scale, wx, wy);
        }
    }

    fn check<T: Sample + std::fmt::Debug>(src: &SourceBand<'_, T>, sx: &[f64], sy: &[f64], scale: (f64, f64), wx: (i64, usize), wy: (i64, usize)) {
        let g = Bilinear16::new(src, scale, wx, wy).expect("kernel");
        let n = sx.len();
        let (mut out, mut mask) = (vec![T::from_f64(7.0); n], vec![false; n]);
        let (mut done, mut declined, mut passed, mut k) = (0, 0, 0, 0);
        while k + 8 <= n {
            let stop = g.run(sx, sy, &mut out, &mut mask, k);
            for i in k..stop {
                let (x, y) = (sx[i], sy[i]);
                if !(x >= 0.0 && y >= 0.0 && x < src.width as f64 && y < src.height as f64) {
                    // Only whole groups outside the source are passed over.
                    assert!(!mask[i] && out[i] == T::from_f64(7.0), "pixel {i} outside the source was written");
                    passed += 1;
                    continue;
                }
                assert!(mask[i], "pixel {i} done but masked");
                if scale == (1.0, 1.0) {
                    let want = bilinear(src, x, y).expect("valid");
                    // f32 holds values near 65535 to about 0.004.
                    assert!((out[i].to_f64() - want).abs() <= 0.5 + 0.02, "{scale:?} pixel {i} at ({x}, {y}): {:?} vs {want}", out[i]);
                } else {
                    let want = match wx.1 {
                        ..=4 => clean_bilinear_f32::<T, 4>(src, x, y, scale, wx, wy),
                        _ => clean_bilinear_f32::<T, 8>(src, x, y, scale, wx, wy),
                    };
                    // The per-pixel kernel may decline where this one does
                    // not (it reads whole lanes); then compare with f64.
                    match want {
                        Some(want) => assert_eq!(out[i], T::from_f32(want.expect("weights")), "{scale:?} pixel {i} at ({x}, {y})"),
                        None => {
                            let lanes = if wx.1 <= 4 { 4 } else { 8 };
                            assert!(2 * wx.1.div_ceil(2) < lanes, "{scale:?} pixel {i}: declined by the per-pixel kernel");
                            let (mut wxs, mut wys) = (Vec::new(), Vec::new());
                            let x0 = kernel_taps(Resampling::Bilinear, scale.0, x, &mut wxs);
                            let y0 = kernel_taps(Resampling::Bilinear, scale.1, y, &mut wys);
                            let want = separable(src, x0, y0, &wxs, &wys).expect("valid");
                            assert!((out[i].to_f64() - want).abs() <= 0.5 + 0.02, "{scale:?} pixel {i} at ({x}, {y}): {:?} vs {want}", out[i]);
                        }
                    }
                }
            }
            done += stop - k;
            if stop + 8 <= n {
                let group = stop..stop + 8;
                assert!(group.clone().all(|i| !mask[i]), "a declined group was written");
                let outside = group.clone().any(|i| {
                    let (x, y) = (sx[i] - 0.5, sy[i] - 0.5);
                    let (x0, y0) = (x.floor() + wx.0 as f64, y.floor() + wy.0 as f64);
                    !(sx[i] >= 0.0 && sy[i] >= 0.0 && sx[i] < src.width as f64 && sy[i] < src.height as f64)
                        || x0 < 0.0
                        || y0 < 0.0
                        || x0 + 2.0 * wx.1.div_ceil(2) as f64 > src.width as f64
                        || y0 + wy.1 as f64 > src.height as f64
                });
                assert!(outside, "{scale:?}: group at {stop} declined with every pixel inside");
                declined += 1;
            }
            k = stop + 8;
        }
        assert!(done > n / 4 && declined > 10, "{scale:?}: {done} pixels done, {declined} groups declined");
        assert!(passed >= 24, "{scale:?}: {passed} pixels outside the source passed over");
    }

    /// While a source streams in, a group inside the source but below the
    /// rows received is left to the caller, not passed over as outside.
    #[test]
    fn groups_below_the_rows_received_are_left_to_the_caller() {
        let (w, h) = (64, 64);
        let values: Vec<u16> = (0..w * h).map(|i| i as u16 + 1).collect();
        // Half the rows received.
        let src = SourceBand { values: &values[..w * h / 2], nodata: None, valid: None, width: w, height: h };
        let Some(g) = Bilinear16::new(&src, (1.0, 1.0), (0, 2), (0, 2)) else {
            eprintln!("no AVX2 and FMA here: nothing to compare");
            return;
        };
        let sx = vec![10.0; 24];
        let sy: Vec<f64> = [vec![-5.0; 8], vec![10.0; 8], vec![50.0; 8]].concat();
        let (mut out, mut mask) = (vec![0u16; 24], vec![false; 24]);
        assert_eq!(g.run(&sx, &sy, &mut out, &mut mask, 0), 16, "stops at the group below the rows received");
        assert_eq!(&mask[..16], [[false; 8], [true; 8]].concat(), "the group above the source passed over, the next done");
        assert!(mask[16..].iter().all(|m| !m));
    }
}
