//! Reprojection and resampling of a source raster onto tiles of a grid.
//!
//! Each target pixel centre `(i + 0.5, j + 0.5)` of a tile maps through the
//! real CRS transform (PROJ via GDAL) and the source's inverse geotransform to
//! a continuous source position; the kernel samples the source there. Pixels
//! whose position falls outside the source, or whose support holds no valid
//! source pixel, are masked; so, for nearest, bilinear and cubic, are pixels
//! whose centre falls on an invalid source pixel (gdalwarp's rule: nodata
//! areas do not shrink). Nodata and invalid pixels never contribute:
//! bilinear and cubic renormalise their weights over the valid neighbours.
//!
//! How a scene's pixels relate to the grid's is decided once
//! ([`Placement`]): on the grid's lattice they are copied, in the grid's CRS
//! and north-up they are resampled separably (`separable`), otherwise per
//! pixel. Bilinear and cubic widen when downsampling as gdalwarp's do, with
//! one scale per scene ([`scene_scale`]). The kernels read from the whole
//! source raster held in memory. Bilinear on 16-bit integers over windows
//! without invalid pixels runs eight pixels at a time where the CPU has
//! AVX2 (`gather`).

mod gather;
mod separable;

use crate::collection::Resampling;
use crate::crs;
use crate::grid::{GridSpec, TileId};
pub(crate) use crate::sample::floor;
pub use crate::sample::Sample;

/// Inverse of a GDAL geotransform; `None` when it is singular.
pub fn invert_geotransform(gt: &[f64; 6]) -> Option<[f64; 6]> {
    let det = gt[1] * gt[5] - gt[2] * gt[4];
    if det == 0.0 || !det.is_finite() {
        return None;
    }
    let inv_det = 1.0 / det;
    let a = gt[5] * inv_det;
    let b = -gt[2] * inv_det;
    let d = -gt[4] * inv_det;
    let e = gt[1] * inv_det;
    Some([-gt[0] * a - gt[3] * b, a, b, -gt[0] * d - gt[3] * e, d, e])
}

fn apply(gt: &[f64; 6], px: f64, py: f64) -> (f64, f64) {
    (gt[0] + px * gt[1] + py * gt[2], gt[3] + px * gt[4] + py * gt[5])
}

/// A source raster's placement: size, geotransform and its inverse.
#[derive(Debug, Clone, Copy)]
pub struct SourceGeometry {
    pub width: usize,
    pub height: usize,
    pub geotransform: [f64; 6],
    pub inverse: [f64; 6],
}

impl SourceGeometry {
    pub fn try_new(width: usize, height: usize, geotransform: [f64; 6]) -> Option<Self> {
        Some(Self { width, height, geotransform, inverse: invert_geotransform(&geotransform)? })
    }
}

/// Tiles of `grid` that the source's footprint may touch. `to_grid` maps the
/// source CRS to the grid CRS. The footprint is the source outline sampled
/// densely (so curved edges are followed) padded by one grid pixel.
pub fn footprint_tiles(src: &SourceGeometry, grid: &GridSpec, to_grid: &crs::Transformer) -> crate::grid::TileRange {
    const STEPS: usize = 64;
    let (w, h) = (src.width as f64, src.height as f64);
    let mut xs = Vec::with_capacity(4 * STEPS + 1);
    let mut ys = Vec::with_capacity(4 * STEPS + 1);
    for k in 0..=STEPS {
        let f = k as f64 / STEPS as f64;
        for (px, py) in [(f * w, 0.0), (f * w, h), (0.0, f * h), (w, f * h)] {
            let (x, y) = apply(&src.geotransform, px, py);
            xs.push(x);
            ys.push(y);
        }
    }
    let (cx, cy) = apply(&src.geotransform, w / 2.0, h / 2.0);
    xs.push(cx);
    ys.push(cy);
    to_grid.transform(&mut xs, &mut ys);
    let mut b = [f64::INFINITY, f64::INFINITY, f64::NEG_INFINITY, f64::NEG_INFINITY];
    for (x, y) in xs.iter().zip(&ys) {
        if x.is_finite() && y.is_finite() {
            b = [b[0].min(*x), b[1].min(*y), b[2].max(*x), b[3].max(*y)];
        }
    }
    let pad = grid.pixel_size();
    grid.tiles_in([b[0] - pad, b[1] - pad, b[2] + pad, b[3] + pad])
}

/// How a source's pixels sit relative to the grid's; decided once per scene.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Placement {
    /// On the grid's pixel lattice: the lattice column of the source's first
    /// column and the lattice row (counted upward from the origin) of its
    /// top edge. Pixels are copied (every kernel is the identity there).
    Lattice(i64, i64),
    /// Same CRS and north-up, any pixel size or offset: each target column
    /// maps to one source x and each row to one source y, so the kernels
    /// run separably.
    Axes,
    /// Anything else: every target pixel centre goes through the CRS
    /// transform.
    General,
}

/// The source's [`Placement`]; `same_crs` says whether its CRS is the grid's.
pub fn placement(src: &SourceGeometry, grid: &GridSpec, same_crs: bool) -> Placement {
    let gt = &src.geotransform;
    if !same_crs || gt[2] != 0.0 || gt[4] != 0.0 {
        return Placement::General;
    }
    let p = grid.pixel_size();
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * p.max(1.0);
    let (cx, cy) = (gt[0] / p, gt[3] / p);
    let on_lattice = |v: f64| (v - v.round()).abs() < 1e-6;
    if close(gt[1], p) && close(gt[5], -p) && on_lattice(cx) && on_lattice(cy) {
        return Placement::Lattice(cx.round() as i64, cy.round() as i64);
    }
    Placement::Axes
}

/// Source x and y positions, row-major.
pub type Positions = (Vec<f64>, Vec<f64>);

/// Where the target pixels of one tile fall in the source.
pub struct TileCoords {
    /// Source positions of every target pixel centre, row-major
    /// ([`Placement::General`] only).
    pub sx: Vec<f64>,
    pub sy: Vec<f64>,
    /// Whether any target pixel maps inside the source raster.
    pub touches: bool,
    /// Tile edge (a target's row length) in pixels.
    pub n: usize,
    /// Source positions of the pixel corners, `(n + 1) x (n + 1)` row-major,
    /// for kernels that read a target pixel's whole footprint
    /// ([`Placement::General`] only).
    pub corners: Option<Positions>,
    /// [`Placement::Lattice`]: the source column and row of the tile's first
    /// pixel.
    pub copy: Option<(i64, i64)>,
    /// [`Placement::Axes`]: source positions per target column and row.
    pub axes: Option<Axes>,
    /// Bilinear and cubic kernel scales along x and y ([`kernel_scale`]).
    pub scale: (f64, f64),
    /// The smallest and largest finite values of `sx` and of `sy`, taken
    /// once per tile (each band's kernel needs them).
    pub ranges: Ranges,
    /// Compute every pixel the same way whatever else the target holds:
    /// no shortcut chosen for the target as a whole (a wholly valid source
    /// window), whose arithmetic may round a pixel differently. Loads set
    /// it so that a window equals the same pixels of any larger load.
    pub seamless: bool,
}

/// Finite ranges of source x and y positions ([`finite_range`]).
pub type Ranges = (Option<(f64, f64)>, Option<(f64, f64)>);

/// The [`Ranges`] of positions `sx`, `sy`.
fn ranges(sx: &[f64], sy: &[f64]) -> Ranges {
    (finite_range(sx), finite_range(sy))
}

/// Source positions of a tile's columns and rows when the axes align.
pub struct Axes {
    /// Source x of each column's centre and of its `n + 1` edges.
    pub xs: Vec<f64>,
    pub x_edges: Vec<f64>,
    /// Source y of each row's centre and of its `n + 1` edges.
    pub ys: Vec<f64>,
    pub y_edges: Vec<f64>,
}

impl Axes {
    /// The same positions per pixel: centres, then corners, row-major.
    fn points(&self) -> (Vec<f64>, Vec<f64>, Positions) {
        let per_pixel = |xs: &[f64], ys: &[f64]| -> Positions {
            (ys.iter().flat_map(|_| xs.iter().copied()).collect(), ys.iter().flat_map(|y| std::iter::repeat_n(*y, xs.len())).collect())
        };
        let (sx, sy) = per_pixel(&self.xs, &self.ys);
        (sx, sy, per_pixel(&self.x_edges, &self.y_edges))
    }
}

/// Largest error of the approximated transform, in source pixels (GDAL's
/// default for gdalwarp, `-et 0.125`).
pub const MAX_APPROX_ERROR: f64 = 0.125;

/// Exact map from target pixel coordinates to source pixel coordinates.
struct ExactMap<'a> {
    target_gt: [f64; 6],
    src_inverse: [f64; 6],
    to_source: &'a crs::Transformer,
}

impl ExactMap<'_> {
    fn map(&self, xs: &mut [f64], ys: &mut [f64]) {
        for (x, y) in xs.iter_mut().zip(ys.iter_mut()) {
            (*x, *y) = apply(&self.target_gt, *x, *y);
        }
        self.to_source.transform(xs, ys);
        for (x, y) in xs.iter_mut().zip(ys.iter_mut()) {
            (*x, *y) = apply(&self.src_inverse, *x, *y);
        }
    }

    /// Maps one row of points (all with the same y, x increasing) the way
    /// GDAL's approximating transformer does: transform the ends and the
    /// middle exactly; if the middle is within `max_error` (|dx| + |dy|, in
    /// source pixels) of the straight line between the ends, interpolate the
    /// row linearly, otherwise split it in two and recurse. Matching GDAL's
    /// splits keeps nearest-neighbour output identical to gdalwarp's.
    fn map_row_approx(&self, xs: &mut [f64], ys: &mut [f64], max_error: f64) {
        self.map_row_approx_from(xs, ys, max_error, None)
    }

    /// Where a row of `n` points is mapped exactly: its first, middle and
    /// last point.
    fn row_samples(n: usize) -> [usize; 3] {
        [0, (n.max(1) - 1) / 2, n.max(1) - 1]
    }

    /// [`Self::map_row_approx`], given the exact map of the row's
    /// [`Self::row_samples`] when the caller has it (a tile maps those of
    /// all its rows in one call).
    fn map_row_approx_from(&self, xs: &mut [f64], ys: &mut [f64], max_error: f64, samples: Option<([f64; 3], [f64; 3])>) {
        let n = xs.len();
        let mid = (n.max(1) - 1) / 2;
        if n <= 5 || max_error <= 0.0 || xs[0] == xs[n - 1] || xs[0] == xs[mid] {
            return self.map(xs, ys);
        }
        let (ex, ey) = samples.unwrap_or_else(|| {
            let (mut ex, mut ey) = ([xs[0], xs[mid], xs[n - 1]], [ys[0], ys[mid], ys[n - 1]]);
            self.map(&mut ex, &mut ey);
            (ex, ey)
        });
        if ex.iter().chain(&ey).any(|v| !v.is_finite()) {
            return self.map(xs, ys);
        }
        let span = xs[n - 1] - xs[0];
        let (dx, dy) = ((ex[2] - ex[0]) / span, (ey[2] - ey[0]) / span);
        let error = (ex[0] + dx * (xs[mid] - xs[0]) - ex[1]).abs() + (ey[0] + dy * (xs[mid] - xs[0]) - ey[1]).abs();
        if error > max_error {
            let (xa, xb) = xs.split_at_mut(mid);
            let (ya, yb) = ys.split_at_mut(mid);
            self.map_row_approx(xa, ya, max_error);
            self.map_row_approx(xb, yb, max_error);
            return;
        }
        let x0 = xs[0];
        for (x, y) in xs.iter_mut().zip(ys.iter_mut()) {
            let d = *x - x0;
            (*x, *y) = (ex[0] + dx * d, ey[0] + dy * d);
        }
    }
}

/// Maps every pixel centre of `tile` to continuous source pixel coordinates.
/// For [`Placement::General`], row by row through the approximating
/// transform (error below [`MAX_APPROX_ERROR`] source pixel); `to_source`
/// maps the grid CRS to the source CRS; `scale` is the scene's
/// [`scene_scale`].
pub fn tile_coords(
    grid: &GridSpec,
    tile: TileId,
    src: &SourceGeometry,
    to_source: &crs::Transformer,
    with_corners: bool,
    placement: Placement,
    scale: (f64, f64),
) -> TileCoords {
    let n = grid.tile_px as usize;
    let target_gt = grid.tile_geotransform(tile);
    let (w, h) = (src.width as f64, src.height as f64);
    match placement {
        Placement::Lattice(col0, top) => {
            let (col_off, row_off) = (tile.ix * n as i64 - col0, top - (tile.iy + 1) * n as i64);
            let overlaps = |off: i64, len: usize| off < len as i64 && off + n as i64 > 0;
            let touches = overlaps(col_off, src.width) && overlaps(row_off, src.height);
            TileCoords {
                sx: Vec::new(),
                sy: Vec::new(),
                touches,
                n,
                corners: None,
                copy: Some((col_off, row_off)),
                axes: None,
                scale: (1.0, 1.0),
                ranges: (None, None),
                seamless: false,
            }
        }
        Placement::Axes => {
            let inv = &src.inverse;
            let along = |count: usize, offset: f64, origin: f64, step: f64, inv0: f64, inv1: f64| -> Vec<f64> {
                (0..count).map(|i| inv0 + (origin + (i as f64 + offset) * step) * inv1).collect()
            };
            let axes = Axes {
                xs: along(n, 0.5, target_gt[0], target_gt[1], inv[0], inv[1]),
                x_edges: along(n + 1, 0.0, target_gt[0], target_gt[1], inv[0], inv[1]),
                ys: along(n, 0.5, target_gt[3], target_gt[5], inv[3], inv[5]),
                y_edges: along(n + 1, 0.0, target_gt[3], target_gt[5], inv[3], inv[5]),
            };
            let touches = axes.xs.iter().any(|x| *x >= 0.0 && *x < w) && axes.ys.iter().any(|y| *y >= 0.0 && *y < h);
            TileCoords { sx: Vec::new(), sy: Vec::new(), touches, n, corners: None, copy: None, axes: Some(axes), scale, ranges: (None, None), seamless: false }
        }
        Placement::General => {
            let map = ExactMap { target_gt, src_inverse: src.inverse, to_source };
            let grid_points = |count: usize, offset: f64| {
                // The samples of every row, mapped in one call.
                let picks = ExactMap::row_samples(count);
                let (mut ex, mut ey): (Vec<f64>, Vec<f64>) = (0..count).flat_map(|row| picks.map(|col| (col as f64 + offset, row as f64 + offset))).unzip();
                map.map(&mut ex, &mut ey);
                let mut sx = Vec::with_capacity(count * count);
                let mut sy = Vec::with_capacity(count * count);
                for row in 0..count {
                    let start = sx.len();
                    sx.extend((0..count).map(|col| col as f64 + offset));
                    sy.extend(std::iter::repeat_n(row as f64 + offset, count));
                    let at = |v: &[f64]| [v[3 * row], v[3 * row + 1], v[3 * row + 2]];
                    map.map_row_approx_from(&mut sx[start..], &mut sy[start..], MAX_APPROX_ERROR, Some((at(&ex), at(&ey))));
                }
                (sx, sy)
            };
            let (sx, sy) = grid_points(n, 0.5);
            let corners = with_corners.then(|| grid_points(n + 1, 0.0));
            let touches = sx.iter().zip(&sy).any(|(x, y)| *x >= 0.0 && *x < w && *y >= 0.0 && *y < h);
            let ranges = ranges(&sx, &sy);
            TileCoords { sx, sy, touches, n, corners, copy: None, axes: None, scale, ranges, seamless: false }
        }
    }
}

/// Where the pixels of a `width`-wide target fall in a `src_w` x `src_h`
/// source, from positions the caller computed: every pixel centre
/// (row-major) and, for kernels that read footprints, every pixel corner.
/// The per-pixel kernels run on it.
pub fn target_points(sx: Vec<f64>, sy: Vec<f64>, corners: Option<Positions>, width: usize, scale: (f64, f64), (src_w, src_h): (usize, usize)) -> TileCoords {
    let (w, h) = (src_w as f64, src_h as f64);
    let touches = sx.iter().zip(&sy).any(|(x, y)| *x >= 0.0 && *x < w && *y >= 0.0 && *y < h);
    let ranges = ranges(&sx, &sy);
    TileCoords { sx, sy, touches, n: width, corners, copy: None, axes: None, scale, ranges, seamless: true }
}

/// [`target_points`] for a target whose columns and rows each map to one
/// source x and y (same CRS, north-up): the separable kernels run on it.
pub fn target_axes(axes: Axes, scale: (f64, f64), (src_w, src_h): (usize, usize)) -> TileCoords {
    let touches = axes.xs.iter().any(|x| *x >= 0.0 && *x < src_w as f64) && axes.ys.iter().any(|y| *y >= 0.0 && *y < src_h as f64);
    TileCoords {
        sx: Vec::new(),
        sy: Vec::new(),
        touches,
        n: axes.xs.len(),
        corners: None,
        copy: None,
        axes: Some(axes),
        scale,
        ranges: (None, None),
        seamless: true,
    }
}

impl TileCoords {
    /// Source rows `0..r` hold every pixel any kernel may read for this
    /// tile, for kernels widened to the tile's scale; `height` caps it.
    pub fn rows_needed(&self, height: usize) -> usize {
        if let Some((_, row_off)) = self.copy {
            return (row_off + self.n as i64).clamp(0, height as i64) as usize;
        }
        let last = match &self.axes {
            Some(axes) => finite_max(&axes.y_edges).max(finite_max(&axes.ys)),
            None => self.ranges.1.map_or(f64::NEG_INFINITY, |r| r.1).max(self.corners.as_ref().map_or(f64::NEG_INFINITY, |c| finite_max(&c.1))),
        };
        rows_through(last, self.scale.1, height)
    }
}

/// The largest finite value, or -inf if none.
fn finite_max(v: &[f64]) -> f64 {
    finite_range(v).map_or(f64::NEG_INFINITY, |r| r.1)
}

/// Rows `0..r` of a source `height` rows tall that hold every tap of any
/// kernel (widened to `scale_y`) at source rows up to `last_y`.
fn rows_through(last_y: f64, scale_y: f64, height: usize) -> usize {
    if last_y == f64::NEG_INFINITY {
        return 0;
    }
    let reach = (2.0 / scale_y.min(1.0)).ceil() + 2.0;
    (last_y.floor() + reach + 1.0).clamp(0.0, height as f64) as usize
}

/// Points along the four edges of an `n` x `n` pixel tile, `steps + 1` per
/// edge (corners repeated), in tile pixel coordinates.
fn tile_outline(n: usize, steps: usize) -> Positions {
    let (mut xs, mut ys) = (Vec::with_capacity(4 * steps + 5), Vec::with_capacity(4 * steps + 5));
    let n_f = n as f64;
    for k in 0..=steps {
        let f = (k * n) as f64 / steps as f64;
        for (x, y) in [(f, 0.0), (f, n_f), (0.0, f), (n_f, f)] {
            xs.push(x);
            ys.push(y);
        }
    }
    (xs, ys)
}

/// For each tile, an estimate of [`TileCoords::rows_needed`] from its
/// outline (8 points per edge through the exact transform), made before
/// any pixel arrives so tiles can be warped in the order the rows stream
/// in. `to_source` maps the grid CRS to the source's; tiles whose outline
/// does not transform get `src.height`.
pub fn tile_rows_estimate(grid: &GridSpec, tiles: &[TileId], src: &SourceGeometry, to_source: &crs::Transformer, scale: (f64, f64)) -> Vec<usize> {
    let n = grid.tile_px as usize;
    tiles
        .iter()
        .map(|&tile| {
            let (mut xs, mut ys) = tile_outline(n, 8);
            xs.push(n as f64 / 2.0);
            ys.push(n as f64 / 2.0);
            ExactMap { target_gt: grid.tile_geotransform(tile), src_inverse: src.inverse, to_source }.map(&mut xs, &mut ys);
            if ys.iter().any(|y| !y.is_finite()) {
                return src.height;
            }
            rows_through(finite_max(&ys), scale.1, src.height)
        })
        .collect()
}

/// One source band as the kernels see it.
pub struct SourceBand<'a, T> {
    pub values: &'a [T],
    pub nodata: Option<T>,
    /// Per-pixel validity shared by all bands (the `valid` column and nulls).
    pub valid: Option<&'a [bool]>,
    pub width: usize,
    pub height: usize,
}

impl<T: Sample> SourceBand<'_, T> {
    #[inline]
    fn is_valid(&self, i: usize) -> bool {
        let v = self.values[i];
        self.valid.is_none_or(|m| m[i]) && self.nodata.is_none_or(|nd| v != nd) && (!T::IS_FLOAT || !v.to_f64().is_nan())
    }

    /// Whether pixels `i` and `i + 1` are both valid.
    #[inline]
    fn all_valid(&self, i: usize) -> bool {
        self.is_valid(i) && self.is_valid(i + 1)
    }
}

/// Resamples one band onto one tile. Returns the pixels (masked ones hold
/// `fill`) and the mask (true = valid).
pub fn resample<T: Sample>(src: &SourceBand<'_, T>, coords: &TileCoords, method: Resampling, fill: T) -> (Vec<T>, Vec<bool>) {
    if let Some((col_off, row_off)) = coords.copy {
        return copy(src, coords.n, col_off, row_off, fill);
    }
    if let Some(axes) = &coords.axes {
        if method != Resampling::Mode {
            // Cubic's negative lobes and renormalisation over holes lose
            // too much in f32 (0.2 % of pixels off by one in a unit test).
            return if T::NARROW && method != Resampling::Cubic {
                resample_axes::<T, f32>(src, axes, coords.scale, method, fill, coords.seamless)
            } else {
                resample_axes::<T, f64>(src, axes, coords.scale, method, fill, coords.seamless)
            };
        }
        // Mode is not separable: per pixel, as in the general case.
        let (sx, sy, corners) = axes.points();
        let ranges = ranges(&sx, &sy);
        return resample_points(src, &sx, &sy, ranges, Some(&corners), coords.n, coords.scale, method, fill, coords.seamless);
    }
    resample_points(src, &coords.sx, &coords.sy, coords.ranges, coords.corners.as_ref(), coords.n, coords.scale, method, fill, coords.seamless)
}

fn resample_axes<T: Sample, A: separable::Acc>(
    src: &SourceBand<'_, T>,
    axes: &Axes,
    scale: (f64, f64),
    method: Resampling,
    fill: T,
    seamless: bool,
) -> (Vec<T>, Vec<bool>) {
    let xt = separable::Taps::<A>::new(method, scale.0, &axes.xs, &axes.x_edges, src.width);
    let yt = separable::Taps::<A>::new(method, scale.1, &axes.ys, &axes.y_edges, src.height);
    #[cfg(target_arch = "x86_64")]
    if gather::available() {
        // SAFETY: the CPU has AVX2 and FMA (checked).
        return unsafe { separable::resample_avx2(src, method, &xt, &yt, fill, seamless) };
    }
    separable::resample(src, method, &xt, &yt, fill, seamless)
}

/// The per-pixel kernels: `sx`/`sy` hold each target pixel centre's source
/// position (`ranges` their finite ranges), `corners` its `(n + 1) x (n + 1)` pixel corners, `scale` the
/// bilinear and cubic kernel scales; `seamless` as [`TileCoords::seamless`].
#[allow(clippy::too_many_arguments)]
fn resample_points<T: Sample>(
    src: &SourceBand<'_, T>,
    sx: &[f64],
    sy: &[f64],
    ranges: Ranges,
    corners: Option<&Positions>,
    tile_n: usize,
    scale: (f64, f64),
    method: Resampling,
    fill: T,
    seamless: bool,
) -> (Vec<T>, Vec<bool>) {
    let at = Points { sx, sy, ranges, corners, tile_n, scale, seamless };
    let (mut kernel, gather) = PointKernel::new(src, &at, method);
    let mut out = vec![fill; sx.len()];
    let mut mask = vec![false; sx.len()];
    run_points(&mut kernel, gather.as_ref(), &mut out, &mut mask);
    (out, mask)
}

/// Resamples several bands of one source onto one tile: what
/// [`resample`] gives for each band. Bilinear on 16-bit bands whose source
/// windows are wholly valid computes each pixel's position and weights
/// once for all bands (`gather`); everything else goes band by band.
pub fn resample_bands<T: Sample>(srcs: &[SourceBand<'_, T>], coords: &TileCoords, method: Resampling, fills: &[T]) -> Vec<(Vec<T>, Vec<bool>)> {
    let per_band = || srcs.iter().zip(fills).map(|(src, fill)| resample(src, coords, method, *fill)).collect();
    if srcs.len() < 2 || coords.copy.is_some() || coords.axes.is_some() || method != Resampling::Bilinear {
        return per_band();
    }
    let at = Points {
        sx: &coords.sx,
        sy: &coords.sy,
        ranges: coords.ranges,
        corners: coords.corners.as_ref(),
        tile_n: coords.n,
        scale: coords.scale,
        seamless: coords.seamless,
    };
    let (mut kernels, gathers): (Vec<PointKernel<'_, '_, T>>, Vec<Option<gather::Bilinear16<'_, T>>>) =
        srcs.iter().map(|src| PointKernel::new(src, &at, method)).unzip();
    let n = at.sx.len();
    let mut outs: Vec<Vec<T>> = fills.iter().map(|f| vec![*f; n]).collect();
    let mut masks: Vec<Vec<bool>> = vec![vec![false; n]; srcs.len()];
    // Bands with holes in their window (or of a type the gathering kernel
    // does not take): pixel by pixel, each on its own.
    let shared: Vec<usize> = (0..srcs.len()).filter(|b| gathers[*b].is_some()).collect();
    for (b, kernel) in kernels.iter_mut().enumerate().filter(|(b, _)| !shared.contains(b)) {
        run_points(kernel, None, &mut outs[b], &mut masks[b]);
    }
    let gathers: Vec<gather::Bilinear16<'_, T>> = gathers.into_iter().flatten().collect();
    if gathers.is_empty() {
        return outs.into_iter().zip(masks).collect();
    }
    let (mut sub_outs, mut sub_masks): (Vec<Vec<T>>, Vec<Vec<bool>>) =
        shared.iter().map(|b| (std::mem::take(&mut outs[*b]), std::mem::take(&mut masks[*b]))).unzip();
    if gather::Bilinear16::shareable(&gathers) {
        // The rest together: positions and weights once per group of eight.
        let mut start = 0;
        while start < n {
            start = gather::Bilinear16::run_bands(&gathers, at.sx, at.sy, &mut sub_outs, &mut sub_masks, start);
            let end = (start + 8).min(n);
            for (j, b) in shared.iter().enumerate() {
                for k in start..end {
                    kernels[*b].pixel(k, &mut sub_outs[j], &mut sub_masks[j]);
                }
            }
            start = end;
        }
    } else {
        for (j, b) in shared.iter().enumerate() {
            run_points(&mut kernels[*b], Some(&gathers[j]), &mut sub_outs[j], &mut sub_masks[j]);
        }
    }
    for (j, b) in shared.iter().enumerate() {
        outs[*b] = std::mem::take(&mut sub_outs[j]);
        masks[*b] = std::mem::take(&mut sub_masks[j]);
    }
    outs.into_iter().zip(masks).collect()
}

/// Runs one band's kernel over every target pixel: the gathering kernel
/// takes whole groups of eight while it can; the group it leaves (or the
/// rest) goes pixel by pixel.
fn run_points<T: Sample>(kernel: &mut PointKernel<'_, '_, T>, gather: Option<&gather::Bilinear16<'_, T>>, out: &mut [T], mask: &mut [bool]) {
    let (sx, sy) = (kernel.at.sx, kernel.at.sy);
    let n = sx.len();
    let mut start = 0;
    while start < n {
        let end = match gather {
            Some(g) => {
                start = g.run(sx, sy, out, mask, start);
                (start + 8).min(n)
            }
            None => n,
        };
        for k in start..end {
            kernel.pixel(k, out, mask);
        }
        start = end;
    }
}

/// Where the target pixels fall, as the per-pixel kernels read it.
struct Points<'p> {
    sx: &'p [f64],
    sy: &'p [f64],
    ranges: Ranges,
    corners: Option<&'p Positions>,
    tile_n: usize,
    scale: (f64, f64),
    seamless: bool,
}

/// The per-pixel kernel of one band and tile: what is decided once per
/// tile (widened windows, whether the source window is wholly valid, the
/// `f32` lane width), then [`PointKernel::pixel`] per target pixel.
struct PointKernel<'a, 'p, T> {
    src: &'p SourceBand<'a, T>,
    at: &'p Points<'p>,
    method: Resampling,
    widened: bool,
    windows: Option<((i64, usize), (i64, usize))>,
    clean: bool,
    lanes: Option<usize>,
    /// Taps of the pixel at hand: windows within [`STACK_TAPS`], and wider ones.
    wxa: [f64; STACK_TAPS],
    wya: [f64; STACK_TAPS],
    wx: Vec<f64>,
    wy: Vec<f64>,
}

/// Widened windows that fit on the stack (kernel_taps's layout, per axis;
/// an axis at scale 1 keeps its plain taps).
const STACK_TAPS: usize = 32;

impl<'a, 'p, T: Sample> PointKernel<'a, 'p, T> {
    /// The kernel, and the gathering one (bilinear on 16-bit integers, eight
    /// pixels at a time where the CPU allows, see `gather`) if it applies.
    fn new(src: &'p SourceBand<'a, T>, at: &'p Points<'p>, method: Resampling) -> (Self, Option<gather::Bilinear16<'a, T>>) {
        let (scale, seamless, ranges) = (at.scale, at.seamless, at.ranges);
        let widened = scale != (1.0, 1.0) && matches!(method, Resampling::Bilinear | Resampling::Cubic);
        let plain = |method: Resampling| if method == Resampling::Cubic { (-1, 4) } else { (0, 2) };
        let window = |s: f64| if s >= 1.0 { plain(method) } else { widened_window(method, s) };
        let windows = widened.then(|| (window(scale.0), window(scale.1))).filter(|((_, nx), (_, ny))| *nx <= STACK_TAPS && *ny <= STACK_TAPS);
        let gather = match (method, widened, windows) {
            _ if seamless => None,
            (Resampling::Bilinear, false, _) => gather::Bilinear16::new(src, (1.0, 1.0), (0, 2), (0, 2)),
            (Resampling::Bilinear, true, Some((wx, wy))) => gather::Bilinear16::new(src, scale, wx, wy),
            _ => None,
        };
        // Whether every source pixel a widened kernel (or the gathering one)
        // may read is valid (then its taps need no checks).
        let clean = !seamless && (widened || gather.is_some()) && {
            let reach = |s: f64| (if method == Resampling::Cubic { 2.0 } else { 1.0 } / s).ceil() + 1.0;
            let span = |range: Option<(f64, f64)>, len: usize, r: f64| {
                let (lo, hi) = range?;
                (len > 0).then(|| (((lo - r).floor().max(0.0) as usize).min(len - 1), ((hi + r).ceil().max(0.0) as usize).min(len - 1)))
            };
            match (span(ranges.0, src.width, reach(scale.0)), span(ranges.1, src.height, reach(scale.1))) {
                (Some(cols), Some(rows)) => separable::window_is_valid(src, cols, rows),
                _ => false,
            }
        };
        // Widened bilinear over a valid window on 8/16-bit integers: f32 lanes
        // of a fixed width (see `clean_bilinear_f32`).
        let lanes = match windows {
            Some(((_, nx), _)) if clean && T::NARROW && method == Resampling::Bilinear => [4, 8, 16].into_iter().find(|l| nx <= *l),
            _ => None,
        };
        let kernel = Self { src, at, method, widened, windows, clean, lanes, wxa: [0.0; STACK_TAPS], wya: [0.0; STACK_TAPS], wx: Vec::new(), wy: Vec::new() };
        (kernel, gather.filter(|_| clean))
    }

    /// Resamples target pixel `k` into `out` and `mask` (left as they are
    /// where it is masked).
    fn pixel(&mut self, k: usize, out: &mut [T], mask: &mut [bool]) {
        let (src, at, method, clean, scale) = (self.src, self.at, self.method, self.clean, self.at.scale);
        let (x, y) = (at.sx[k], at.sy[k]);
        // NaN fails these comparisons too.
        if !(x >= 0.0 && x < src.width as f64 && y >= 0.0 && y < src.height as f64) {
            return;
        }
        if let (Some(lanes), Some((wx, wy))) = (self.lanes, self.windows) {
            let quick = match lanes {
                4 => clean_bilinear_f32::<T, 4>(src, x, y, scale, wx, wy),
                8 => clean_bilinear_f32::<T, 8>(src, x, y, scale, wx, wy),
                _ => clean_bilinear_f32::<T, 16>(src, x, y, scale, wx, wy),
            };
            if let Some(v) = quick {
                if let Some(v) = v {
                    out[k] = T::from_f32(v);
                    mask[k] = true;
                }
                return;
            }
        }
        match method {
            Resampling::Nearest => {
                let i = (y as usize) * src.width + x as usize;
                if src.is_valid(i) {
                    out[k] = src.values[i];
                    mask[k] = true;
                }
            }
            Resampling::Bilinear | Resampling::Cubic => {
                // As gdalwarp: a target pixel whose centre falls on an
                // invalid source pixel stays invalid, whatever its
                // neighbours hold.
                if !clean && !src.is_valid((y as usize) * src.width + x as usize) {
                    return;
                }
                let v = if let Some(((fx, nx), (fy, ny))) = self.windows {
                    // Widened, within the stack arrays: weights per pixel,
                    // windows per tile.
                    let ((x0, dx), (y0, dy)) = (split(x), split(y));
                    let cubic = method == Resampling::Cubic;
                    widened_weights(cubic, scale.0, fx, dx, &mut self.wxa[..nx]);
                    widened_weights(cubic, scale.1, fy, dy, &mut self.wya[..ny]);
                    let (x0, y0, wx, wy) = (x0 + fx, y0 + fy, &self.wxa[..nx], &self.wya[..ny]);
                    clean_taps(src, clean, x0, y0, wx, wy).unwrap_or_else(|| separable(src, x0, y0, wx, wy))
                } else if self.widened {
                    let (x0, y0) = (kernel_taps(method, scale.0, x, &mut self.wx), kernel_taps(method, scale.1, y, &mut self.wy));
                    clean_taps(src, clean, x0, y0, &self.wx, &self.wy).unwrap_or_else(|| separable(src, x0, y0, &self.wx, &self.wy))
                } else if method == Resampling::Bilinear {
                    bilinear(src, x, y)
                } else {
                    cubic(src, x, y)
                };
                if let Some(v) = v {
                    out[k] = T::from_f64(v);
                    mask[k] = true;
                }
            }
            Resampling::Average | Resampling::Mode => {
                let Some((cx, cy)) = at.corners else { return };
                let (r, c, m) = (k / at.tile_n, k % at.tile_n, at.tile_n + 1);
                let idx = [r * m + c, r * m + c + 1, (r + 1) * m + c, (r + 1) * m + c + 1];
                let xs = idx.map(|i| cx[i]);
                let ys = idx.map(|i| cy[i]);
                if xs.iter().chain(&ys).any(|v| !v.is_finite()) {
                    return;
                }
                let bx = (xs.iter().copied().fold(f64::INFINITY, f64::min), xs.iter().copied().fold(f64::NEG_INFINITY, f64::max));
                let by = (ys.iter().copied().fold(f64::INFINITY, f64::min), ys.iter().copied().fold(f64::NEG_INFINITY, f64::max));
                let v = if method == Resampling::Average { average(src, bx, by) } else { mode(src, bx, by) };
                if let Some(v) = v {
                    out[k] = v;
                    mask[k] = true;
                }
            }
        }
    }
}

/// Copies a tile out of a source on the same pixel lattice. Built row by
/// row (no fill pass over the tile first): the part of each row outside
/// the source is `fill` and masked.
fn copy<T: Sample>(src: &SourceBand<'_, T>, n: usize, col_off: i64, row_off: i64, fill: T) -> (Vec<T>, Vec<bool>) {
    let (mut out, mut mask) = (Vec::with_capacity(n * n), Vec::with_capacity(n * n));
    let c0 = ((-col_off).max(0) as usize).min(n);
    let c1 = ((src.width as i64 - col_off).min(n as i64)).max(c0 as i64) as usize;
    let outside = |out: &mut Vec<T>, mask: &mut Vec<bool>, count: usize| {
        out.extend(std::iter::repeat_n(fill, count));
        mask.extend(std::iter::repeat_n(false, count));
    };
    for r in 0..n {
        let sr = row_off + r as i64;
        if sr < 0 || sr >= src.height as i64 || c0 >= c1 {
            outside(&mut out, &mut mask, n);
            continue;
        }
        outside(&mut out, &mut mask, c0);
        let from = sr as usize * src.width + (col_off + c0 as i64) as usize;
        let values = &src.values[from..from + (c1 - c0)];
        match (src.valid, src.nodata) {
            // Every pixel is valid: a plain copy.
            (None, None) if !T::IS_FLOAT => {
                out.extend_from_slice(values);
                mask.extend(std::iter::repeat_n(true, values.len()));
            }
            // Only nodata is invalid: selects the compiler vectorises.
            (None, Some(nd)) if !T::IS_FLOAT => {
                out.extend(values.iter().map(|v| if *v != nd { *v } else { fill }));
                mask.extend(values.iter().map(|v| *v != nd));
            }
            _ => {
                let valid = |c: usize| src.is_valid(from + c);
                out.extend(values.iter().enumerate().map(|(c, v)| if valid(c) { *v } else { fill }));
                mask.extend((0..values.len()).map(valid));
            }
        }
        outside(&mut out, &mut mask, n - c1);
    }
    (out, mask)
}

/// Taps of bilinear or cubic along one axis at continuous position `x`,
/// widened when downsampling as gdalwarp does: for `scale` below 1 the
/// kernel covers `radius / scale` source pixels each side and its weights
/// are taken at `(i - dx) * scale`. Writes the weights into `w` and returns
/// the first tap's source index.
pub(crate) fn kernel_taps(method: Resampling, scale: f64, x: f64, w: &mut Vec<f64>) -> i64 {
    w.clear();
    let (x0, dx) = split(x);
    let cubic = method == Resampling::Cubic;
    if scale >= 1.0 {
        if cubic {
            w.extend([cubic_weight(1.0 + dx), cubic_weight(dx), cubic_weight(1.0 - dx), cubic_weight(2.0 - dx)]);
            return x0 - 1;
        }
        w.extend([1.0 - dx, dx]);
        return x0;
    }
    let (first, count) = widened_window(method, scale);
    w.resize(count, 0.0);
    widened_weights(cubic, scale, first, dx, w);
    x0 + first
}

/// The taps of a kernel widened to `scale` (below 1), as gdalwarp lays
/// them out: offsets `(radius + 1) % 2 - reach ..= reach` from the pixel at
/// or left of the position, `reach = ceil(radius / scale)`. Returns the
/// first offset and the count.
fn widened_window(method: Resampling, scale: f64) -> (i64, usize) {
    let radius = if method == Resampling::Cubic { 2 } else { 1 };
    let reach = (radius as f64 / scale).ceil() as i64;
    let first = (radius + 1) % 2 - reach;
    (first, (reach - first + 1) as usize)
}

/// Weights of the widened taps from offset `first`, for a position `dx`
/// past its pixel's centre.
#[inline]
fn widened_weights(cubic: bool, scale: f64, first: i64, dx: f64, out: &mut [f64]) {
    for (k, o) in out.iter_mut().enumerate() {
        let t = ((first + k as i64) as f64 - dx) * scale;
        *o = if cubic { cubic_weight(t) } else { bilinear_weight(t) };
    }
}

#[inline]
fn bilinear_weight(t: f64) -> f64 {
    (1.0 - t.abs()).max(0.0)
}

/// The smallest and largest finite value, if any (eight lanes each, so it
/// vectorises; the kernels take it over every pixel position of a tile).
fn finite_range(v: &[f64]) -> Option<(f64, f64)> {
    let (mut lo, mut hi) = ([f64::INFINITY; 8], [f64::NEG_INFINITY; 8]);
    let chunks = v.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for k in 0..8 {
            let x = if c[k].is_finite() { c[k] } else { f64::NAN };
            // Comparisons with NaN are false: non-finite values drop out.
            lo[k] = if x < lo[k] { x } else { lo[k] };
            hi[k] = if x > hi[k] { x } else { hi[k] };
        }
    }
    for x in rest.iter().filter(|x| x.is_finite()) {
        lo[0] = lo[0].min(*x);
        hi[0] = hi[0].max(*x);
    }
    let (lo, hi) = (lo.into_iter().fold(f64::INFINITY, f64::min), hi.into_iter().fold(f64::NEG_INFINITY, f64::max));
    (lo <= hi).then_some((lo, hi))
}

/// gdalwarp's resampling scale along one axis for a target window of `dst`
/// pixels whose outline spans `extent` source pixels, snapped to `1 / k`
/// when within 0.05 of an integer ratio `k`. Below 1 means downsampling.
pub fn axis_scale(dst: usize, extent: f64) -> f64 {
    if !extent.is_finite() || extent <= 0.0 {
        return 1.0;
    }
    let scale = dst as f64 / extent;
    if scale < 1.0 {
        let ratio = 1.0 / scale;
        let k = (ratio + 0.5).floor();
        if (ratio - k).abs() < 0.05 {
            return 1.0 / k;
        }
    }
    scale
}

/// The bilinear and cubic kernel scales of a scene, from the outline of
/// the tile holding the source's centre mapped into the source the way
/// gdalwarp measures a warp chunk: 21 points along each edge, exactly
/// transformed, their bounding box against the tile's size. gdalwarp
/// derives the scale per chunk and clips the box at the raster's far edges,
/// so its kernel changes between partly and fully covered chunks; one scale
/// for the whole scene keeps tiles seamless. `to_grid` maps the source CRS
/// to the grid's, `to_source` back.
pub fn scene_scale(grid: &GridSpec, src: &SourceGeometry, to_grid: &crs::Transformer, to_source: &crs::Transformer, placement: Placement) -> (f64, f64) {
    if let Placement::Lattice(..) = placement {
        return (1.0, 1.0);
    }
    let (cx, cy) = apply(&src.geotransform, src.width as f64 / 2.0, src.height as f64 / 2.0);
    let (mut gx, mut gy) = ([cx], [cy]);
    to_grid.transform(&mut gx, &mut gy);
    if !(gx[0].is_finite() && gy[0].is_finite()) {
        return (1.0, 1.0);
    }
    let tile = grid.tile_of(gx[0], gy[0]);
    let n = grid.tile_px as usize;
    let (mut xs, mut ys) = tile_outline(n, 20);
    let map = ExactMap { target_gt: grid.tile_geotransform(tile), src_inverse: src.inverse, to_source };
    match placement {
        Placement::Axes => {
            for (x, y) in xs.iter_mut().zip(ys.iter_mut()) {
                let (gx, gy) = apply(&map.target_gt, *x, *y);
                (*x, *y) = apply(&src.inverse, gx, gy);
            }
        }
        _ => map.map(&mut xs, &mut ys),
    }
    let extent = |v: &[f64]| finite_range(v).map_or(0.0, |(lo, hi)| hi - lo);
    kernel_scale(axis_scale(n, extent(&xs)), axis_scale(n, extent(&ys)))
}

/// The scales the bilinear and cubic kernels use on a tile: gdalwarp keeps
/// the plain 2 x 2 / 4 x 4 kernels unless an axis scale is below 0.95, and
/// then widens only the axes below 1.
pub fn kernel_scale(x: f64, y: f64) -> (f64, f64) {
    if x >= 0.95 && y >= 0.95 {
        (1.0, 1.0)
    } else {
        (x.min(1.0), y.min(1.0))
    }
}

/// Keys cubic convolution weight (a = -0.5), as GDAL's cubic.
#[inline]
fn cubic_weight(t: f64) -> f64 {
    let t = t.abs();
    if t <= 1.0 {
        (1.5 * t - 2.5) * t * t + 1.0
    } else if t < 2.0 {
        ((-0.5 * t + 2.5) * t - 4.0) * t + 2.0
    } else {
        0.0
    }
}

/// Cubic convolution at `(x, y)` over the valid, in-bounds pixels of the
/// 4 x 4 neighbourhood, weights renormalised.
#[inline]
fn cubic<T: Sample>(src: &SourceBand<'_, T>, x: f64, y: f64) -> Option<f64> {
    let (x0, dx) = split(x);
    let (y0, dy) = split(y);
    let wx = [cubic_weight(1.0 + dx), cubic_weight(dx), cubic_weight(1.0 - dx), cubic_weight(2.0 - dx)];
    let wy = [cubic_weight(1.0 + dy), cubic_weight(dy), cubic_weight(1.0 - dy), cubic_weight(2.0 - dy)];
    separable(src, x0 - 1, y0 - 1, &wx, &wy)
}

/// The pixel whose centre is at or left of `v` (pixel centres at +0.5) and
/// the fraction of the way to the next centre.
#[inline]
fn split(v: f64) -> (i64, f64) {
    let f = v - 0.5;
    let i = floor(f);
    (i as i64, f - i)
}

/// A separable kernel over a window known to be all valid (`clean`) and
/// lying inside the source: no per-tap checks. `None` when it does not
/// apply (the caller falls back to [`separable`]).
#[inline]
fn clean_taps<T: Sample>(src: &SourceBand<'_, T>, clean: bool, x0: i64, y0: i64, wx: &[f64], wy: &[f64]) -> Option<Option<f64>> {
    if !clean || x0 < 0 || y0 < 0 || x0 as usize + wx.len() > src.width || y0 as usize + wy.len() > src.height {
        return None;
    }
    let (x0, y0) = (x0 as usize, y0 as usize);
    let mut acc = 0.0;
    for (j, wyj) in wy.iter().enumerate() {
        let row = &src.values[(y0 + j) * src.width + x0..][..wx.len()];
        acc += wyj * row.iter().zip(wx).map(|(v, w)| v.to_f64() * w).sum::<f64>();
    }
    let norm = wx.iter().sum::<f64>() * wy.iter().sum::<f64>();
    Some((norm.abs() > 1e-5).then(|| acc / norm))
}

/// Widened bilinear at `(x, y)` on 8/16-bit integer samples whose window
/// (`(first, count)` taps per axis, see [`widened_window`]) is known valid:
/// weights and sums in f32, `NX` lanes per row with the taps past `count`
/// weighted zero, so the row sums vectorise. `None` when the padded window
/// leaves the raster (the caller takes the general path); else the value,
/// `None` inside if the weights vanish.
#[inline(always)]
fn clean_bilinear_f32<T: Sample, const NX: usize>(
    src: &SourceBand<'_, T>,
    x: f64,
    y: f64,
    scale: (f64, f64),
    (fx, nx): (i64, usize),
    (fy, ny): (i64, usize),
) -> Option<Option<f32>> {
    let ((x0, dx), (y0, dy)) = (split(x), split(y));
    let (x0, y0) = (x0 + fx, y0 + fy);
    if x0 < 0 || y0 < 0 || x0 as usize + NX > src.width || y0 as usize + ny > src.height {
        return None;
    }
    let (x0, y0) = (x0 as usize, y0 as usize);
    let (sx, first) = (scale.0 as f32, fx as f32 - dx as f32);
    let mut wx = [0f32; NX];
    for (i, w) in wx.iter_mut().enumerate() {
        // `i as f32` is a constant once the loop is unrolled.
        let t = (first + i as f32) * sx;
        *w = if i < nx { (1.0 - t.abs()).max(0.0) } else { 0.0 };
    }
    let mut lanes = [0f32; NX];
    let mut wy_sum = 0f32;
    for j in 0..ny {
        let wyj = bilinear_weight(((fy + j as i64) as f64 - dy) * scale.1) as f32;
        wy_sum += wyj;
        let row: &[T] = &src.values[(y0 + j) * src.width + x0..][..NX];
        for (l, v) in lanes.iter_mut().zip(row) {
            *l += wyj * v.to_f32();
        }
    }
    for (l, w) in lanes.iter_mut().zip(&wx) {
        *l *= w;
    }
    let (acc, norm) = (lane_sum(lanes), lane_sum(wx) * wy_sum);
    Some((norm.abs() > 1e-5).then(|| acc / norm))
}

/// Sum of `N` (a power of two) lanes by halving, which vectorises where a
/// running sum would wait on each add.
#[inline(always)]
fn lane_sum<const N: usize>(mut v: [f32; N]) -> f32 {
    let mut n = N;
    while n > 1 {
        n /= 2;
        for i in 0..n {
            v[i] += v[i + n];
        }
    }
    v[0]
}

/// A separable kernel: taps `wx` x `wy` from pixel `(x0, y0)`, over the
/// valid, in-bounds pixels only, weights renormalised; `None` when no valid
/// pixel carries weight.
#[inline]
fn separable<T: Sample>(src: &SourceBand<'_, T>, x0: i64, y0: i64, wx: &[f64], wy: &[f64]) -> Option<f64> {
    let (mut acc, mut wsum) = (0.0, 0.0);
    for (j, wyj) in wy.iter().enumerate() {
        let sy = y0 + j as i64;
        if sy < 0 || sy >= src.height as i64 || *wyj == 0.0 {
            continue;
        }
        for (i, wxi) in wx.iter().enumerate() {
            let sx = x0 + i as i64;
            if sx < 0 || sx >= src.width as i64 || *wxi == 0.0 {
                continue;
            }
            let idx = sy as usize * src.width + sx as usize;
            if src.is_valid(idx) {
                let w = wxi * wyj;
                acc += w * src.values[idx].to_f64();
                wsum += w;
            }
        }
    }
    (f64::abs(wsum) > 1e-5).then(|| acc / wsum)
}

/// Source pixels overlapping the box `[x0, x1] x [y0, y1]` (source pixel
/// units) with the overlapped fraction of each.
fn footprint<T: Sample>(src: &SourceBand<'_, T>, (x0, x1): (f64, f64), (y0, y1): (f64, f64), mut visit: impl FnMut(usize, f64)) {
    let c0 = (x0 + 1e-10).floor().max(0.0) as usize;
    let c1 = ((x1 - 1e-10).ceil().min(src.width as f64)).max(0.0) as usize;
    let r0 = (y0 + 1e-10).floor().max(0.0) as usize;
    let r1 = ((y1 - 1e-10).ceil().min(src.height as f64)).max(0.0) as usize;
    for r in r0..r1 {
        let wy = (y1.min(r as f64 + 1.0) - y0.max(r as f64)).max(0.0);
        for c in c0..c1 {
            let wx = (x1.min(c as f64 + 1.0) - x0.max(c as f64)).max(0.0);
            let idx = r * src.width + c;
            if wx * wy > 0.0 && src.is_valid(idx) {
                visit(idx, wx * wy);
            }
        }
    }
}

/// Area-weighted mean of the valid source pixels under a target pixel.
fn average<T: Sample>(src: &SourceBand<'_, T>, bx: (f64, f64), by: (f64, f64)) -> Option<T> {
    let (mut acc, mut wsum) = (0.0, 0.0);
    footprint(src, bx, by, |i, w| {
        acc += w * src.values[i].to_f64();
        wsum += w;
    });
    (wsum > 1e-10).then(|| T::from_f64(acc / wsum))
}

/// The value covering the most area of a target pixel (ties: the smallest
/// value), among valid source pixels.
/// The most common valid value under the target pixel's footprint
/// `bx` x `by` (source pixel units). The rule, documented in
/// `docs/protocol.md`: each value counts the area of the target pixel it
/// covers (partly covered source pixels count their covered part); the
/// value covering the largest area wins; on a tie of areas the smaller
/// value wins. `None` where no valid pixel is under the footprint.
fn mode<T: Sample>(src: &SourceBand<'_, T>, bx: (f64, f64), by: (f64, f64)) -> Option<T> {
    let mut tally: Vec<(T, f64)> = Vec::new();
    footprint(src, bx, by, |i, w| {
        let v = src.values[i];
        match tally.iter_mut().find(|(t, _)| *t == v) {
            Some(e) => e.1 += w,
            None => tally.push((v, w)),
        }
    });
    tally.into_iter().max_by(|a, b| a.1.total_cmp(&b.1).then_with(|| b.0.to_f64().total_cmp(&a.0.to_f64()))).map(|(v, _)| v)
}

/// Bilinear interpolation at continuous position `(x, y)` (pixel centres at
/// +0.5), over the valid, in-bounds neighbours only.
#[inline]
fn bilinear<T: Sample>(src: &SourceBand<'_, T>, x: f64, y: f64) -> Option<f64> {
    let (x0, dx) = split(x);
    let (y0, dy) = split(y);
    // The common case first: all four neighbours inside and valid.
    if x0 >= 0 && y0 >= 0 && ((x0 + 1) as usize) < src.width && ((y0 + 1) as usize) < src.height {
        let i = y0 as usize * src.width + x0 as usize;
        let (w, v) = (src.width, src.values);
        if src.all_valid(i) && src.all_valid(i + w) {
            let (a, b, c, d) = (v[i].to_f64(), v[i + 1].to_f64(), v[i + w].to_f64(), v[i + w + 1].to_f64());
            let top = a + dx * (b - a);
            let bottom = c + dx * (d - c);
            return Some(top + dy * (bottom - top));
        }
    }
    separable(src, x0, y0, &[1.0 - dx, dx], &[1.0 - dy, dy])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_picks_the_largest_area_then_the_smaller_value() {
        let values = [5u16, 3, 5, 0, 7, 9];
        let src = SourceBand { values: &values, nodata: Some(0), valid: None, width: 6, height: 1 };
        // 5 covers two pixels, 3 one: the larger area wins.
        assert_eq!(mode(&src, (0.0, 3.0), (0.0, 1.0)), Some(5));
        // 5 and 3 cover one pixel each: the smaller value wins.
        assert_eq!(mode(&src, (0.0, 2.0), (0.0, 1.0)), Some(3));
        // Partly covered pixels count their covered part: 5 covers half a
        // pixel, 3 a whole one.
        assert_eq!(mode(&src, (0.5, 2.0), (0.0, 1.0)), Some(3));
        // Nodata does not count; 7 and 9 tie: 7.
        assert_eq!(mode(&src, (3.0, 6.0), (0.0, 1.0)), Some(7));
        assert_eq!(mode(&src, (3.0, 4.0), (0.0, 1.0)), None);
    }

    fn coords(points: &[(f64, f64)]) -> TileCoords {
        let (sx, sy): (Vec<f64>, Vec<f64>) = points.iter().copied().unzip();
        let ranges = ranges(&sx, &sy);
        TileCoords { sx, sy, touches: true, n: points.len(), corners: None, copy: None, axes: None, scale: (1.0, 1.0), ranges, seamless: false }
    }

    /// Bands warped together give each band's own warp bit for bit: clean
    /// 16-bit bands share positions and weights, a band with holes (or of
    /// another window) goes pixel by pixel, plain and widened, u16 and i16.
    #[test]
    fn bands_warped_together_equal_each_band_alone() {
        let (w, h) = (157, 131);
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let a: Vec<u16> = (0..w * h).map(|_| (next() % 65535) as u16 + 1).collect();
        let b: Vec<u16> = (0..w * h).map(|_| (next() % 4000) as u16 + 1).collect();
        let mut holes = a.clone();
        for i in (0..w * h).step_by(97) {
            holes[i] = 0;
        }
        let signed: Vec<i16> = (0..w * h).map(|_| (next() % 65536) as u16 as i16).collect();
        // A rotated, slightly scaled lattice reaching past the source on two sides.
        let points: Vec<(f64, f64)> = (0..64 * 64)
            .map(|k| {
                let (r, c) = ((k / 64) as f64, (k % 64) as f64);
                (c * 2.3 + r * 0.31 - 4.0, r * 2.1 - c * 0.27 + 3.0)
            })
            .collect();
        for scale in [(1.0, 1.0), (0.42, 1.0), (0.6, 0.7)] {
            let mut c = coords(&points);
            c.scale = scale;
            c.n = 64;
            // All clean (shared), then one with holes among them (it goes alone).
            for with_holes in [false, true] {
                let mut sources = vec![
                    SourceBand { values: &a[..], nodata: Some(0), valid: None, width: w, height: h },
                    SourceBand { values: &b[..], nodata: Some(0), valid: None, width: w, height: h },
                    SourceBand { values: &a[..], nodata: None, valid: None, width: w, height: h },
                ];
                if with_holes {
                    sources.insert(1, SourceBand { values: &holes[..], nodata: Some(0), valid: None, width: w, height: h });
                }
                let together = resample_bands(&sources, &c, Resampling::Bilinear, &vec![0; sources.len()]);
                for (src, got) in sources.iter().zip(&together) {
                    assert_eq!(got, &resample(src, &c, Resampling::Bilinear, 0), "scale {scale:?}, holes {with_holes}");
                }
                assert!(together[0].1.iter().filter(|m| **m).count() > 1000, "the test reaches the shared kernel");
            }
            let s = [
                SourceBand { values: &signed[..], nodata: None, valid: None, width: w, height: h },
                SourceBand { values: &signed[..], nodata: Some(-7), valid: None, width: w, height: h },
            ];
            let together = resample_bands(&s, &c, Resampling::Bilinear, &[0; 2]);
            assert_eq!(together[1], resample(&s[1], &c, Resampling::Bilinear, 0));
        }
    }

    #[test]
    fn sources_on_the_grid_lattice_are_copied() {
        let grid = GridSpec::default_at(10.0).unwrap();
        let on = SourceGeometry::try_new(3, 2, [2560.0 * 4.0 + 20.0, 10.0, 0.0, 2560.0 * 7.0 - 30.0, 0.0, -10.0]).unwrap();
        assert_eq!(placement(&on, &grid, true), Placement::Lattice(4 * 256 + 2, 7 * 256 - 3));
        assert_eq!(placement(&on, &grid, false), Placement::General);
        let half = SourceGeometry::try_new(3, 2, [5.0, 10.0, 0.0, 0.0, 0.0, -10.0]).unwrap();
        assert_eq!(placement(&half, &grid, true), Placement::Axes);
        // Tile x0004_y0006 starts at lattice column 1024, top row 1792; the
        // source's first pixel is its (row 3, col 2).
        let values = [1u16, 2, 3, 4, 0, 6];
        let src = SourceBand { values: &values, nodata: Some(0), valid: None, width: 3, height: 2 };
        let a = placement(&on, &grid, true);
        let tc = tile_coords(&grid, TileId::new(4, 6), &on, &dummy_transformer(), false, a, (1.0, 1.0));
        assert!(tc.touches);
        let (out, mask) = resample(&src, &tc, Resampling::Bilinear, 0);
        assert_eq!((out[3 * 256 + 2], out[3 * 256 + 4], out[4 * 256 + 2], mask[4 * 256 + 3]), (1, 3, 4, false));
        assert_eq!(mask.iter().filter(|m| **m).count(), 5);
    }

    fn dummy_transformer() -> crs::Transformer {
        let s = crs::spatial_ref("t", crate::grid::DEFAULT_GRID_CRS).unwrap();
        crs::Transformer::new(&s, &s).unwrap()
    }

    /// Every tile of a source through `method`: the rows a tile says it
    /// needs give the same output as the whole raster, and the estimate
    /// made from the tile's outline is not below them.
    fn check_rows_needed(crs: &str, gt: [f64; 6], size: usize, resolution: f64, method: Resampling) {
        let grid = GridSpec::default_at(resolution).unwrap();
        let src = SourceGeometry::try_new(size, size, gt).unwrap();
        let (from, to) = (crs::spatial_ref("crs", crs).unwrap(), crs::spatial_ref("grid", &grid.crs).unwrap());
        let (to_grid, to_source) = (crs::Transformer::new(&from, &to).unwrap(), crs::Transformer::new(&to, &from).unwrap());
        let place = placement(&src, &grid, from == to);
        let scale = scene_scale(&grid, &src, &to_grid, &to_source, place);
        // Nodata rows in the lower half only: the upper tiles' windows are
        // all valid (the gathering kernel's case).
        let values: Vec<u16> = (0..size * size).map(|i| if (i / size) % 37 == 5 && i / size > size / 2 { 0 } else { (i * 7 % 5000) as u16 + 1 }).collect();
        let tiles: Vec<TileId> = footprint_tiles(&src, &grid, &to_grid).iter().collect();
        let estimates = tile_rows_estimate(&grid, &tiles, &src, &to_source, scale);
        let mut partial = 0;
        for (tile, estimate) in tiles.iter().zip(estimates) {
            let tc = tile_coords(&grid, *tile, &src, &to_source, method.needs_footprint(), place, scale);
            if !tc.touches {
                continue;
            }
            let need = tc.rows_needed(size);
            assert!(estimate >= need, "{crs} {method:?} tile {tile}: estimate {estimate} < needed {need}");
            partial += usize::from(need < size);
            let whole = SourceBand { values: &values, nodata: Some(0), valid: None, width: size, height: size };
            let prefix = SourceBand { values: &values[..need * size], ..whole };
            assert!(resample(&whole, &tc, method, 0) == resample(&prefix, &tc, method, 0), "{crs} {method:?} tile {tile}");
        }
        assert!(partial > 0, "{crs}: some tile needs only part of the rows");
    }

    #[test]
    fn a_tile_needs_only_the_rows_it_says() {
        let utm = [316_000.0, 10.0, 0.0, 4_160_000.0, 0.0, -10.0];
        check_rows_needed("EPSG:32652", utm, 600, 10.0, Resampling::Bilinear);
        check_rows_needed("EPSG:32652", utm, 600, 10.0, Resampling::Cubic);
        check_rows_needed("EPSG:32652", utm, 600, 10.0, Resampling::Average);
        check_rows_needed("EPSG:4326", [127.0, 0.0001, 0.0, 37.6, 0.0, -0.0001], 600, 10.0, Resampling::Bilinear);
        let sinu = |off: f64, px: f64| [1_000_000.0 + off, px, 0.0, 4_000_000.0 - off, 0.0, -px];
        check_rows_needed(crate::grid::DEFAULT_GRID_CRS, sinu(1.5, 3.0), 900, 10.0, Resampling::Average);
        check_rows_needed(crate::grid::DEFAULT_GRID_CRS, sinu(1.5, 3.0), 900, 10.0, Resampling::Mode);
        check_rows_needed(crate::grid::DEFAULT_GRID_CRS, sinu(0.0, 10.0), 600, 10.0, Resampling::Nearest);
        check_rows_needed(crate::grid::DEFAULT_GRID_CRS, sinu(4.0, 10.0), 600, 10.0, Resampling::Cubic);
    }

    #[test]
    fn finite_range_skips_nan_and_infinities() {
        let reference =
            |v: &[f64]| v.iter().filter(|x| x.is_finite()).fold(None, |r: Option<(f64, f64)>, x| Some(r.map_or((*x, *x), |(lo, hi)| (lo.min(*x), hi.max(*x)))));
        let mut v: Vec<f64> = (0..29).map(|i| ((i * 37) % 11) as f64 - 5.5).collect();
        v[3] = f64::NAN;
        v[9] = f64::INFINITY;
        v[27] = f64::NEG_INFINITY;
        for len in [0, 1, 7, 8, 9, 16, 29] {
            assert_eq!(finite_range(&v[..len]), reference(&v[..len]), "len {len}");
        }
        assert_eq!(finite_range(&[f64::NAN; 12]), None);
        assert_eq!(finite_max(&[f64::NAN, f64::INFINITY]), f64::NEG_INFINITY);
    }

    #[test]
    fn inverse_geotransform_round_trips() {
        let gt = [300000.0, 10.0, 0.5, 4200000.0, -0.25, -10.0];
        let inv = invert_geotransform(&gt).unwrap();
        let (x, y) = apply(&gt, 12.5, 99.25);
        let (px, py) = apply(&inv, x, y);
        assert!((px - 12.5).abs() < 1e-6 && (py - 99.25).abs() < 1e-6);
        assert!(invert_geotransform(&[0.0, 0.0, 0.0, 0.0, 0.0, -1.0]).is_none());
    }

    #[test]
    fn nearest_and_bilinear_skip_nodata_and_outside() {
        // 2 x 2 source: 10 20 / 30 nodata(0)
        let values = [10u16, 20, 30, 0];
        let src = SourceBand { values: &values, nodata: Some(0), valid: None, width: 2, height: 2 };
        let c = coords(&[(0.5, 0.5), (1.5, 1.5), (1.0, 1.0), (2.0, 0.5), (f64::NAN, 0.0), (1.0, 0.5)]);
        let (v, m) = resample(&src, &c, Resampling::Nearest, 0);
        assert_eq!(m, vec![true, false, false, false, false, true]);
        assert_eq!(v, vec![10, 0, 0, 0, 0, 20]);
        let (v, m) = resample(&src, &c, Resampling::Bilinear, 0);
        // Centre of the four: it falls on the nodata pixel's corner, in
        // that pixel, so it stays invalid as gdalwarp leaves it.
        assert!(!m[2]);
        // Exactly on a pixel centre: that pixel alone.
        assert_eq!((v[0], m[0]), (10, true));
        // Halfway between 10 and 20 on the top row.
        assert_eq!((v[5], m[5]), (15, true));
        // Centre of the nodata pixel: weight only there, so masked.
        assert!(!m[1]);
    }

    #[test]
    fn fast_floor_matches_std() {
        for v in [0.0, -0.0, 0.5, -0.5, 1.0, -1.0, 2.999_999, -2.000_001, 1e15 + 0.5, -1e15 - 0.5, 65535.49, 65535.5, f64::EPSILON, -f64::EPSILON] {
            assert_eq!(floor(v), v.floor(), "{v}");
        }
        let mut x = 0.123_f64;
        for _ in 0..10_000 {
            x = (x * 7919.0 + 0.37) % 20_000.0 - 10_000.0;
            assert_eq!(floor(x), x.floor(), "{x}");
        }
        assert_eq!(u16::from_f64(f64::NAN), 0);
        assert_eq!(u16::from_f64(70_000.0), u16::MAX);
        assert_eq!(i16::from_f64(-2.5), -2);
    }

    #[test]
    fn kernels_widen_below_scale_one_as_gdalwarp() {
        // Window ratios near an integer snap to it; others do not.
        assert_eq!(axis_scale(256, 512.0 * 0.99), 0.5);
        assert!((axis_scale(256, 853.0) - 256.0 / 853.0).abs() < 1e-12);
        assert_eq!(axis_scale(256, 100.0), 2.56);
        assert_eq!(kernel_scale(0.96, 2.0), (1.0, 1.0));
        assert_eq!(kernel_scale(0.9, 2.0), (0.9, 1.0));
        let mut w = Vec::new();
        // Plain: the two (four) neighbours of x = 10.75.
        assert_eq!((kernel_taps(Resampling::Bilinear, 1.0, 10.75, &mut w), w.clone()), (10, vec![0.75, 0.25]));
        assert_eq!((kernel_taps(Resampling::Cubic, 1.0, 10.5, &mut w), w.len()), (9, 4));
        // Half scale: bilinear reaches 2 pixels each side, tent of half slope.
        assert_eq!((kernel_taps(Resampling::Bilinear, 0.5, 10.5, &mut w), w.clone()), (8, vec![0.0, 0.5, 1.0, 0.5, 0.0]));
        // Cubic at half scale: 4 each side, window from 1 - 4 to 4.
        assert_eq!((kernel_taps(Resampling::Cubic, 0.5, 10.5, &mut w), w.len()), (7, 8));
        assert_eq!(w[3], 1.0);
    }

    #[test]
    fn rounding_from_f32_matches_rounding_from_f64() {
        let mut vs = vec![
            -1e9_f32, -32769.0, -32768.6, -32768.5, -32768.4, -2.5, -1.5, -0.5, -0.49, 0.0, 0.49, 0.5, 1.5, 254.5, 255.4, 255.5, 300.0, 32767.4, 32767.5,
            65534.5, 65535.4, 65535.5, 1e9,
        ];
        vs.extend((0..20_000).map(|i| i as f32 * 3.77 - 40_000.0));
        for v in vs {
            let d = v as f64;
            assert_eq!(u8::from_f32(v), u8::from_f64(d), "{v}");
            assert_eq!(u16::from_f32(v), u16::from_f64(d), "{v}");
            assert_eq!(i16::from_f32(v), i16::from_f64(d), "{v}");
        }
    }

    #[test]
    fn the_copy_path_masks_nodata_and_invalid_pixels_in_each_of_its_loops() {
        let values: Vec<u16> = vec![1, 0, 3, 4, 5, 0, 7, 8, 9];
        let valid = [true, true, true, false, true, true, true, true, true];
        let coords = TileCoords {
            sx: Vec::new(),
            sy: Vec::new(),
            touches: true,
            n: 4,
            corners: None,
            copy: Some((-1, -1)),
            axes: None,
            scale: (1.0, 1.0),
            ranges: (None, None),
            seamless: false,
        };
        for (nodata, valid) in [(Some(0u16), None), (None, None), (Some(0), Some(&valid[..]))] {
            let src = SourceBand { values: &values, nodata, valid, width: 3, height: 3 };
            let (out, mask) = resample(&src, &coords, Resampling::Nearest, 99);
            for r in 0..4 {
                for c in 0..4 {
                    let k = r * 4 + c;
                    if r == 0 || c == 0 {
                        assert_eq!((out[k], mask[k]), (99, false), "{nodata:?} {r},{c}");
                        continue;
                    }
                    let i = (r - 1) * 3 + (c - 1);
                    let ok = nodata.is_none_or(|nd| values[i] != nd) && valid.is_none_or(|m| m[i]);
                    assert_eq!((out[k], mask[k]), (if ok { values[i] } else { 99 }, ok), "{nodata:?} {r},{c}");
                }
            }
        }
    }
}
