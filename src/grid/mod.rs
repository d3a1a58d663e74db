//! The tile grid (`docs/protocol.md`): pure math, no IO, no GDAL, no async.
//!
//! A grid is a CRS, a tile span in CRS units and a tile size in pixels. Tile
//! `(ix, iy)` covers `[ix*span, (ix+1)*span) x [iy*span, (iy+1)*span)`; y grows
//! northward. Pixel rows inside a tile run north to south (GDAL order), and the
//! pixel size is `span / tile_px` so that neighbouring tiles share edges
//! exactly even when `span / resolution` is not an integer (Landsat: 86 px of
//! 29.77 m cover the same 2560 m tile as Sentinel-2's 256 px of 10 m).

use std::fmt;
use std::str::FromStr;

/// The earlier PixelQuery's grid CRS: sinusoidal on a sphere of radius 6 378 137 m.
pub const DEFAULT_GRID_CRS: &str = "+proj=sinu +lon_0=0 +x_0=0 +y_0=0 +R=6378137 +units=m +no_defs";
/// Default tile span in CRS units (metres).
pub const DEFAULT_TILE_SPAN: f64 = 2560.0;

/// Errors of grid construction and tile id parsing.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GridError {
    #[error("grid.resolution must be a finite number > 0, got {0}")]
    Resolution(f64),
    #[error("grid.tile_span must be a finite number > 0, got {0}")]
    TileSpan(f64),
    #[error("grid.resolution {resolution} gives {tile_px} px per tile, more than the limit of {max}")]
    TooManyPixels { resolution: f64, tile_px: u64, max: u32 },
    #[error("tile id {0:?} does not parse; expected the form x0123_y-0045")]
    TileId(String),
}

/// Largest tile edge in pixels (a 3 m grid gives 854; 8192 leaves room).
pub const MAX_TILE_PX: u32 = 8192;

/// A collection's tile grid. `crs` is kept as given (EPSG code, WKT or PROJ);
/// resolving it is the job of the layer that has GDAL.
#[derive(Debug, Clone, PartialEq)]
pub struct GridSpec {
    pub crs: String,
    pub tile_span: f64,
    pub resolution: f64,
    pub tile_px: u32,
}

impl GridSpec {
    /// Validates the numbers and derives `tile_px = ceil(span / resolution)`.
    pub fn try_new(crs: impl Into<String>, tile_span: f64, resolution: f64) -> Result<Self, GridError> {
        if !(tile_span.is_finite() && tile_span > 0.0) {
            return Err(GridError::TileSpan(tile_span));
        }
        if !(resolution.is_finite() && resolution > 0.0) {
            return Err(GridError::Resolution(resolution));
        }
        // Round away float noise first so 2560 / 10 is 256, not 257.
        let ratio = tile_span / resolution;
        let tile_px = if (ratio - ratio.round()).abs() < 1e-9 * ratio.max(1.0) { ratio.round() } else { ratio.ceil() };
        if tile_px > MAX_TILE_PX as f64 {
            return Err(GridError::TooManyPixels { resolution, tile_px: tile_px as u64, max: MAX_TILE_PX });
        }
        Ok(Self { crs: crs.into(), tile_span, resolution, tile_px: tile_px.max(1.0) as u32 })
    }

    /// The default sinusoidal 2560 m grid at `resolution`.
    pub fn default_at(resolution: f64) -> Result<Self, GridError> {
        Self::try_new(DEFAULT_GRID_CRS, DEFAULT_TILE_SPAN, resolution)
    }

    /// Size of one pixel in CRS units.
    pub fn pixel_size(&self) -> f64 {
        self.tile_span / self.tile_px as f64
    }

    /// The tile holding grid-CRS point `(x, y)`; a point on an edge belongs to
    /// the tile east / north of it (half-open intervals).
    pub fn tile_of(&self, x: f64, y: f64) -> TileId {
        TileId { ix: (x / self.tile_span).floor() as i64, iy: (y / self.tile_span).floor() as i64 }
    }

    /// `[min_x, min_y, max_x, max_y]` of a tile in grid CRS units.
    pub fn tile_bounds(&self, t: TileId) -> [f64; 4] {
        let s = self.tile_span;
        [t.ix as f64 * s, t.iy as f64 * s, (t.ix + 1) as f64 * s, (t.iy + 1) as f64 * s]
    }

    /// GDAL-order geotransform of a tile (north-up).
    pub fn tile_geotransform(&self, t: TileId) -> [f64; 6] {
        let [min_x, _, _, max_y] = self.tile_bounds(t);
        let p = self.pixel_size();
        [min_x, p, 0.0, max_y, 0.0, -p]
    }

    /// The pixel `(col, row)` of tile `t` holding grid-CRS point `(x, y)`, or
    /// `None` if the point lies outside the tile.
    pub fn pixel_of(&self, t: TileId, x: f64, y: f64) -> Option<(u32, u32)> {
        let [min_x, _, _, max_y] = self.tile_bounds(t);
        let p = self.pixel_size();
        let col = ((x - min_x) / p).floor();
        let row = ((max_y - y) / p).floor();
        let n = self.tile_px as f64;
        (col >= 0.0 && col < n && row >= 0.0 && row < n).then_some((col as u32, row as u32))
    }

    /// Every tile intersecting the grid-CRS rectangle, row by row from the
    /// north, or an empty list when the rectangle is degenerate or not finite.
    /// The caller bounds the area (the count is returned first for that).
    pub fn tiles_in(&self, bounds: [f64; 4]) -> TileRange {
        let [min_x, min_y, max_x, max_y] = bounds;
        if !(bounds.iter().all(|v| v.is_finite()) && min_x <= max_x && min_y <= max_y) {
            return TileRange::EMPTY;
        }
        let a = self.tile_of(min_x, min_y);
        // A max edge lying exactly on a tile edge does not touch the next tile.
        let b = {
            let t = self.tile_of(max_x, max_y);
            let [tx, ty, _, _] = self.tile_bounds(t);
            TileId { ix: if max_x == tx && max_x > min_x { t.ix - 1 } else { t.ix }, iy: if max_y == ty && max_y > min_y { t.iy - 1 } else { t.iy } }
        };
        TileRange { ix: a.ix..=b.ix, iy: a.iy..=b.iy }
    }
}

/// A rectangle of tiles, inclusive on both ends.
#[derive(Debug, Clone, PartialEq)]
pub struct TileRange {
    pub ix: std::ops::RangeInclusive<i64>,
    pub iy: std::ops::RangeInclusive<i64>,
}

impl TileRange {
    #[allow(clippy::reversed_empty_ranges)]
    pub const EMPTY: TileRange = TileRange { ix: 1..=0, iy: 1..=0 };

    /// Number of tiles, saturating.
    pub fn len(&self) -> u64 {
        let w = (self.ix.end() - self.ix.start() + 1).max(0) as u64;
        let h = (self.iy.end() - self.iy.start() + 1).max(0) as u64;
        w.saturating_mul(h)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, t: TileId) -> bool {
        self.ix.contains(&t.ix) && self.iy.contains(&t.iy)
    }

    /// Tiles from the north-west corner, row by row.
    pub fn iter(&self) -> impl Iterator<Item = TileId> + '_ {
        self.iy.clone().rev().flat_map(move |iy| self.ix.clone().map(move |ix| TileId { ix, iy }))
    }
}

/// A tile index `(ix, iy)`, written `x{ix:04}_y{iy:04}` with the sign in
/// front of the padding (`x-0005_y0010`), as the earlier PixelQuery did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TileId {
    pub ix: i64,
    pub iy: i64,
}

impl TileId {
    pub fn new(ix: i64, iy: i64) -> Self {
        Self { ix, iy }
    }
}

fn write_index(f: &mut fmt::Formatter<'_>, v: i64) -> fmt::Result {
    if v < 0 {
        write!(f, "-{:04}", v.unsigned_abs())
    } else {
        write!(f, "{v:04}")
    }
}

impl fmt::Display for TileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("x")?;
        write_index(f, self.ix)?;
        f.write_str("_y")?;
        write_index(f, self.iy)
    }
}

impl FromStr for TileId {
    type Err = GridError;

    /// Accepts only the canonical form, so every tile has exactly one id
    /// (and one directory): `x5_y5` and `x+0005_y0005` are rejected.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || GridError::TileId(s.chars().take(64).collect());
        let rest = s.strip_prefix('x').ok_or_else(bad)?;
        let (xs, ys) = rest.split_once("_y").ok_or_else(bad)?;
        let digits_ok = |p: &str| {
            let d = p.strip_prefix('-').unwrap_or(p);
            (4..=19).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit())
        };
        if !digits_ok(xs) || !digits_ok(ys) {
            return Err(bad());
        }
        let id = TileId { ix: xs.parse().map_err(|_| bad())?, iy: ys.parse().map_err(|_| bad())? };
        if id.to_string() != s {
            return Err(bad());
        }
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tile_px_follows_the_earlier_pixelquery() {
        assert_eq!(GridSpec::default_at(10.0).unwrap().tile_px, 256);
        assert_eq!(GridSpec::default_at(30.0).unwrap().tile_px, 86);
        assert_eq!(GridSpec::default_at(3.0).unwrap().tile_px, 854);
        assert_eq!(GridSpec::default_at(0.0), Err(GridError::Resolution(0.0)));
        assert!(matches!(GridSpec::default_at(f64::NAN), Err(GridError::Resolution(_))));
        assert!(matches!(GridSpec::default_at(0.01), Err(GridError::TooManyPixels { .. })));
    }

    #[test]
    fn tile_ids_format_and_parse() {
        for (id, s) in [
            (TileId::new(4380, 1632), "x4380_y1632"),
            (TileId::new(-4208, 1642), "x-4208_y1642"),
            (TileId::new(-5, -10), "x-0005_y-0010"),
            (TileId::new(0, 7), "x0000_y0007"),
            (TileId::new(12345, -123456), "x12345_y-123456"),
        ] {
            assert_eq!(id.to_string(), s);
            assert_eq!(s.parse::<TileId>(), Ok(id));
        }
        for bad in ["", "x5_y5", "x0005y0005", "x+005_y0005", "X0005_y0005", "x0005_y0005_", "x-000_y0001", "x00a5_y0001", "x0005_y../a"] {
            assert!(bad.parse::<TileId>().is_err(), "{bad:?} must not parse");
        }
    }

    #[test]
    fn tiles_in_treats_max_edges_as_exclusive() {
        let g = GridSpec::default_at(10.0).unwrap();
        let r = g.tiles_in([0.0, 0.0, 2560.0, 5120.0]);
        assert_eq!(r.len(), 2);
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![TileId::new(0, 1), TileId::new(0, 0)]);
        assert_eq!(g.tiles_in([1.0, 1.0, 1.0, 1.0]).len(), 1);
        assert!(g.tiles_in([5.0, 0.0, 1.0, 1.0]).is_empty());
        assert!(g.tiles_in([f64::NAN, 0.0, 1.0, 1.0]).is_empty());
    }

    proptest! {
        #[test]
        fn every_point_falls_in_exactly_one_tile(x in -2.0e7f64..2.0e7, y in -1.0e7f64..1.0e7, res in prop::sample::select(vec![3.0, 10.0, 30.0, 60.0])) {
            let g = GridSpec::default_at(res).unwrap();
            let t = g.tile_of(x, y);
            let [x0, y0, x1, y1] = g.tile_bounds(t);
            prop_assert!(x0 <= x && x < x1 && y0 <= y && y < y1);
            // No neighbour claims the point.
            for dx in -1..=1 {
                for dy in -1..=1 {
                    if dx == 0 && dy == 0 { continue; }
                    let [a0, b0, a1, b1] = g.tile_bounds(TileId::new(t.ix + dx, t.iy + dy));
                    prop_assert!(!(a0 <= x && x < a1 && b0 <= y && y < b1));
                }
            }
            let (c, r) = g.pixel_of(t, x, y).expect("the point's own tile holds it");
            prop_assert!(c < g.tile_px && r < g.tile_px);
        }

        #[test]
        fn adjacent_tiles_share_edges_exactly(ix in -20000i64..20000, iy in -5000i64..5000, res in prop::sample::select(vec![3.0, 10.0, 30.0])) {
            let g = GridSpec::default_at(res).unwrap();
            let t = TileId::new(ix, iy);
            let b = g.tile_bounds(t);
            prop_assert_eq!(b[2], g.tile_bounds(TileId::new(ix + 1, iy))[0]);
            prop_assert_eq!(b[3], g.tile_bounds(TileId::new(ix, iy + 1))[1]);
            // The last pixel edge of a tile is the first of its neighbour.
            let gt = g.tile_geotransform(t);
            let east = gt[0] + gt[1] * g.tile_px as f64;
            prop_assert!((east - b[2]).abs() <= 1e-6 * b[2].abs().max(1.0));
        }

        #[test]
        fn tile_ids_round_trip(ix in any::<i32>(), iy in any::<i32>()) {
            let t = TileId::new(ix as i64, iy as i64);
            prop_assert_eq!(t.to_string().parse::<TileId>(), Ok(t));
        }
    }
}
