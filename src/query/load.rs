//! The answer of an analysis-ready load (DESIGN §4b): stored tiles
//! resampled onto an output grid (any CRS and resolution, pixel edges at
//! multiples of the resolution), masked by a geometry, grouped into slices
//! and fused, served as windows of the output, one endpoint per window and
//! band.
//!
//! Seamless by construction: every output pixel's source position is
//! computed from its global index on the output lattice and the global
//! index of the grid's pixels (never from a window's or a mosaic's origin),
//! through the exact transform, and each window reads the stored tiles
//! around it padded by the kernel's reach. A window therefore holds the
//! same pixels whichever load it belongs to. The design notes are in
//! `docs/load.md`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{ArrayRef, ArrowPrimitiveType, BooleanArray, ListArray, PrimitiveArray, RecordBatch, StringArray, TimestampMillisecondArray, UInt32Array};
use arrow_buffer::{OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use super::reduce::{self, Layer, Layers, Reduced};
use super::steps::{self, Outputs};
use super::Piece;
use crate::collection::{Band, DType, Resampling};
use crate::compute::{self, Period, Reduction, Slot};
use crate::crs;
use crate::error::{Error, Result};
use crate::grid::{GridSpec, TileId, TileRange};
use crate::storage::{ChunkEntry, CollectionStore, Month};
use crate::warp::{self, Axes, Sample, SourceBand};
use crate::wire::{self, Area, Fuse, GroupBy, LoadSpec, QuerySpec, Ring};

/// Most windows one load may have.
pub const MAX_WINDOWS: usize = 10_000;
/// Points per densified edge (DESIGN §4b: at least 21).
const EDGE_POINTS: usize = 21;
const DAY_MS: i64 = 86_400_000;

/// The output grid: a lattice of `rx` x `ry` pixels in `crs` whose edges
/// lie at integer multiples of the resolution; the load covers columns
/// `col0..col0 + width` and rows `row0..row0 + height` of it (rows counted
/// southward from y = 0).
#[derive(Debug, Clone)]
struct OutGrid {
    crs: String,
    crs_wkt: String,
    same_crs: bool,
    rx: f64,
    ry: f64,
    col0: i64,
    row0: i64,
    width: u64,
    height: u64,
}

impl OutGrid {
    fn geotransform(&self) -> [f64; 6] {
        [self.col0 as f64 * self.rx, self.rx, 0.0, -(self.row0 as f64) * self.ry, 0.0, -self.ry]
    }

    /// Output CRS x of global column position `c` (a pixel edge when whole).
    fn x(&self, c: f64) -> f64 {
        c * self.rx
    }

    /// Output CRS y of global row position `r`.
    fn y(&self, r: f64) -> f64 {
        -r * self.ry
    }
}

/// One window of the output: rows `row..row + height`, columns
/// `col..col + width` of the load (offsets from its top-left pixel).
#[derive(Debug, Clone)]
struct Window {
    row: u64,
    col: u64,
    height: usize,
    width: usize,
    /// The grid tiles its pixels (and the kernels around them) read.
    tiles: TileRange,
    /// Indices of the groups with an observation on those tiles.
    groups: Vec<usize>,
}

/// One slice of the answer: the observations fused into it, in order
/// (time, then scene id).
#[derive(Debug, Clone)]
struct Group {
    time: i64,
    label: String,
    members: Vec<(i64, Arc<str>)>,
}

/// A planned load.
pub struct LoadAnswer {
    store: Arc<CollectionStore>,
    grid: GridSpec,
    spec: QuerySpec,
    load: LoadSpec,
    /// The answer's bands and steps; `bands` are the stored bands read.
    outputs: Arc<Outputs>,
    bands: Vec<Band>,
    methods: Vec<Resampling>,
    out: OutGrid,
    windows: Vec<Window>,
    groups: Vec<Group>,
    /// Rings (in the output CRS) a pixel centre must lie inside of, each
    /// list by the even-odd rule: the geometry's, and the bbox's when both
    /// were given.
    masks: Vec<Vec<Ring>>,
    /// The stored chunks the windows read, by tile, month and band.
    chunks: HashMap<(TileId, Month, String), ChunkEntry>,
    /// With `reduce`: each period and the groups in it, in time order.
    periods: Vec<(Slot, Vec<usize>)>,
    /// Where `all` and `P<n>D` periods start.
    origin: i64,
    /// A load snapped to tiles: the columns and rows asked for
    /// (`[col0, row0, col1, row1)` of the lattice); pixels outside are
    /// invalid.
    asked: Option<[i64; 4]>,
}

/// Points along the edges of a rectangle, `EDGE_POINTS` per edge.
fn rectangle_ring(b: [f64; 4]) -> Ring {
    let corners = [[b[0], b[1]], [b[2], b[1]], [b[2], b[3]], [b[0], b[3]], [b[0], b[1]]];
    densify(&corners)
}

/// A ring with `EDGE_POINTS` points per edge (the last closes it).
fn densify(ring: &[[f64; 2]]) -> Ring {
    let mut out = Vec::with_capacity(ring.len() * EDGE_POINTS);
    for w in ring.windows(2) {
        for k in 0..EDGE_POINTS - 1 {
            let f = k as f64 / (EDGE_POINTS - 1) as f64;
            out.push([w[0][0] + f * (w[1][0] - w[0][0]), w[0][1] + f * (w[1][1] - w[0][1])]);
        }
    }
    if let Some(last) = ring.last() {
        out.push(*last);
    }
    out
}

/// Transforms rings in place; a point that does not transform is an error
/// naming `field`.
fn transform_rings(rings: &mut [Ring], t: &crs::Transformer, field: &str, from: &str) -> Result<()> {
    for ring in rings.iter_mut() {
        let (mut xs, mut ys): (Vec<f64>, Vec<f64>) = ring.iter().map(|p| (p[0], p[1])).unzip();
        t.transform(&mut xs, &mut ys);
        if xs.iter().chain(&ys).any(|v| !v.is_finite()) {
            return Err(Error::invalid(field, from, "has points that cannot be transformed to the output CRS"));
        }
        for (p, (x, y)) in ring.iter_mut().zip(xs.into_iter().zip(ys)) {
            *p = [x, y];
        }
    }
    Ok(())
}

fn bounds_of<'a>(points: impl Iterator<Item = &'a [f64; 2]>) -> [f64; 4] {
    points.fold([f64::INFINITY, f64::INFINITY, f64::NEG_INFINITY, f64::NEG_INFINITY], |b, p| [b[0].min(p[0]), b[1].min(p[1]), b[2].max(p[0]), b[3].max(p[1])])
}

fn intersect(a: [f64; 4], b: [f64; 4]) -> [f64; 4] {
    [a[0].max(b[0]), a[1].max(b[1]), a[2].min(b[2]), a[3].min(b[3])]
}

/// Plans a load. Blocking (GDAL).
/// With `snap`, the output is widened to whole tiles of that many pixels
/// (edges at multiples of it) and each window is one such tile.
pub fn plan(store: Arc<CollectionStore>, spec: QuerySpec, outputs: Arc<Outputs>, snap: Option<u64>) -> Result<LoadAnswer> {
    let bands = outputs.inputs.clone();
    let load = spec.load.clone().ok_or_else(|| Error::Internal("a load planned without its keys".into()))?;
    let grid = store.meta.grid_spec();
    let o = &load.output;
    if let Some(unknown) = o.resampling_by_band.keys().find(|k| !bands.iter().any(|b| &b.name == *k)) {
        return Err(Error::invalid("output.resampling", unknown, "names a band the query does not ask for"));
    }
    let methods: Vec<Resampling> = bands.iter().map(|b| o.resampling_by_band.get(&b.name).copied().or(o.resampling).unwrap_or(b.resampling)).collect();
    let out_crs = o.crs.clone().unwrap_or_else(|| grid.crs.clone());
    let crs_wkt = crs::to_wkt("output.crs", &out_crs)?;
    let to_grid = crs::cached(("output.crs", &out_crs), ("grid.crs", &grid.crs))?;
    let (rx, ry) = o.resolution.unwrap_or((grid.pixel_size(), grid.pixel_size()));

    // The area in the output CRS, and the rings that mask it.
    let mut masks: Vec<Vec<Ring>> = Vec::new();
    let mut area: Option<[f64; 4]> = None;
    let mut narrow = |b: [f64; 4]| area = Some(area.map_or(b, |a| intersect(a, b)));
    if let Some(g) = &load.geometry {
        let t = crs::cached(("geometry_crs", &g.crs), ("output.crs", &out_crs))?;
        let mut rings: Vec<Ring> = g.polygons.iter().flatten().map(|r| densify(r)).collect();
        transform_rings(&mut rings, &t.transformer, "geometry", &g.text)?;
        narrow(bounds_of(rings.iter().flatten()));
        masks.push(rings);
    }
    match &spec.area {
        Area::BBox { bbox, crs: bbox_crs } => {
            let t = crs::cached(("bbox_crs", bbox_crs), ("output.crs", &out_crs))?;
            let mut rings = vec![rectangle_ring(*bbox)];
            transform_rings(&mut rings, &t.transformer, "bbox", &format!("{bbox:?}"))?;
            narrow(bounds_of(rings.iter().flatten()));
            if load.geometry.is_some() {
                masks.push(rings);
            }
        }
        Area::Tiles(tiles) => {
            let from_grid = crs::cached(("grid.crs", &grid.crs), ("output.crs", &out_crs))?;
            let mut rings: Vec<Ring> = tiles.iter().map(|t| rectangle_ring(grid.tile_bounds(*t))).collect();
            transform_rings(&mut rings, &from_grid.transformer, "tiles", "")?;
            narrow(bounds_of(rings.iter().flatten()));
        }
        Area::All if load.geometry.is_none() => {
            let tiles = store.tiles();
            if tiles.is_empty() {
                return Err(Error::not_found(format!("data in collection {:?} to load", store.meta.name)));
            }
            let b = tiles.iter().map(|t| grid.tile_bounds(*t)).fold([f64::INFINITY, f64::INFINITY, f64::NEG_INFINITY, f64::NEG_INFINITY], |a, b| {
                [a[0].min(b[0]), a[1].min(b[1]), a[2].max(b[2]), a[3].max(b[3])]
            });
            let from_grid = crs::cached(("grid.crs", &grid.crs), ("output.crs", &out_crs))?;
            let mut rings = vec![rectangle_ring(b)];
            transform_rings(&mut rings, &from_grid.transformer, "collection area", "")?;
            narrow(bounds_of(rings.iter().flatten()));
        }
        Area::All => {}
        Area::Point { xy, .. } => return Err(Error::invalid("point", xy, "a point answer has no output grid")),
    }
    let area = area.ok_or_else(|| Error::Internal("a load without an area".into()))?;
    if !(area[0] <= area[2] && area[1] <= area[3]) {
        return Err(Error::invalid("geometry", "", "the geometry and the bbox do not overlap"));
    }

    // Snapped outward to the lattice; at least one pixel.
    let (mut col0, mut row0) = ((area[0] / rx).floor() as i64, (-area[3] / ry).floor() as i64);
    let (mut col1, mut row1) = (((area[2] / rx).ceil() as i64).max(col0 + 1), ((-area[1] / ry).ceil() as i64).max(row0 + 1));
    let asked = snap.map(|_| [col0, row0, col1, row1]);
    if let Some(t) = snap.map(|t| t as i64) {
        (col0, row0) = (col0.div_euclid(t) * t, row0.div_euclid(t) * t);
        (col1, row1) = ((col1 + t - 1).div_euclid(t) * t, (row1 + t - 1).div_euclid(t) * t);
    }
    let (width, height) = ((col1 - col0) as u64, (row1 - row0) as u64);
    let window = snap.unwrap_or(o.window as u64);
    let (wcols, wrows) = (width.div_ceil(window), height.div_ceil(window));
    if wcols.saturating_mul(wrows) > MAX_WINDOWS as u64 {
        return Err(Error::invalid(
            "output.window",
            o.window,
            &format!("the load is {width} x {height} pixels: {} windows, more than {MAX_WINDOWS}; use a larger window or resolution", wcols * wrows),
        ));
    }
    let out = OutGrid { crs: out_crs.clone(), crs_wkt, same_crs: to_grid.same_crs, rx, ry, col0, row0, width, height };
    // Kernel scales vary slowly across a load: the one at its centre, with
    // a margin, bounds how far the kernels reach.
    let centre = ((col0 + width as i64 / 2).div_euclid(SCALE_BLOCK), (row0 + height as i64 / 2).div_euclid(SCALE_BLOCK));
    let scale = block_scale(&grid, &out, &to_grid.transformer, centre);
    let reach = (2.0 / (0.8 * scale.0.min(scale.1))).ceil() + 2.0;
    let mask_bounds: Vec<[f64; 4]> = masks.iter().map(|rings| bounds_of(rings.iter().flatten())).collect();

    // Windows and the tiles each reads.
    let mut windows = Vec::new();
    for wr in 0..wrows {
        for wc in 0..wcols {
            let (row, col) = (wr * window, wc * window);
            if o.at.is_some_and(|at| at != (row, col)) {
                continue;
            }
            let (h, w) = ((height - row).min(window) as usize, (width - col).min(window) as usize);
            let (c0, r0) = ((col0 + col as i64) as f64, (row0 + row as i64) as f64);
            let wb = [out.x(c0), out.y(r0 + h as f64), out.x(c0 + w as f64), out.y(r0)];
            if mask_bounds.iter().any(|m| m[0] > wb[2] || m[2] < wb[0] || m[1] > wb[3] || m[3] < wb[1]) {
                continue;
            }
            let tiles = window_tiles(&grid, &to_grid.transformer, wb, reach);
            windows.push(Window { row, col, height: h, width: w, tiles, groups: Vec::new() });
        }
    }
    if let Some(at) = o.at {
        if windows.is_empty() {
            return Err(Error::invalid("output.at", [at.0, at.1], "names no window of this load"));
        }
    }

    // The chunks the windows read, the observations on each tile, and the
    // groups they form.
    let wanted: HashSet<TileId> = windows.iter().flat_map(|w| w.tiles.iter()).collect();
    let names: HashSet<&str> = bands.iter().map(|b| b.name.as_str()).collect();
    let (start, end) = (spec.start_ms, spec.end_ms);
    let months_overlap = |m: Month| start.is_none_or(|s| m.end_ms() > s) && end.is_none_or(|e| m.start_ms() < e);
    let chunks: HashMap<(TileId, Month, String), ChunkEntry> = store
        .chunks_at(spec.as_of, |k| names.contains(k.band.as_str()) && wanted.contains(&k.tile) && months_overlap(k.month))?
        .into_iter()
        .map(|(k, e)| ((k.tile, k.month, k.band), e))
        .collect();
    let mut on_tile: HashMap<TileId, HashSet<(i64, Arc<str>)>> = HashMap::new();
    for ((tile, _, _), e) in &chunks {
        let obs = on_tile.entry(*tile).or_default();
        for (t, s) in e.times.iter().zip(&e.scenes) {
            if spec.time_matches(*t) {
                obs.insert((*t, s.clone()));
            }
        }
    }
    let all: HashSet<(i64, Arc<str>)> = on_tile.values().flatten().cloned().collect();
    let groups = group(&store, &grid, &spec, &bands, load.groupby, all)?;
    let group_of: HashMap<(i64, Arc<str>), usize> = groups.iter().enumerate().flat_map(|(g, gr)| gr.members.iter().map(move |m| (m.clone(), g))).collect();
    for w in &mut windows {
        let mut gs: Vec<usize> = w.tiles.iter().filter_map(|t| on_tile.get(&t)).flatten().filter_map(|o| group_of.get(o).copied()).collect();
        gs.sort_unstable();
        gs.dedup();
        w.groups = gs;
    }
    // A window no observation reaches is left out.
    windows.retain(|w| !w.groups.is_empty() || o.at.is_some());
    let origin = Period::origin(spec.start_ms, groups.iter().map(|g| g.time).min().unwrap_or(0));
    let mut periods: Vec<(Slot, Vec<usize>)> = Vec::new();
    if let Some(r) = &outputs.steps.reduce {
        for (g, group) in groups.iter().enumerate() {
            let slot = r.period.slot(group.time, origin);
            match periods.iter_mut().find(|(s, _)| *s == slot) {
                Some((_, gs)) => gs.push(g),
                None => periods.push((slot, vec![g])),
            }
        }
        periods.sort_by_key(|(s, _)| s.start);
    }
    Ok(LoadAnswer { store, grid, spec, load, bands, methods, out, windows, groups, masks, chunks, outputs, periods, origin, asked })
}

/// The grid tiles a window's pixels read: its outline through the exact
/// transform, padded by the kernels' reach in grid pixels.
fn window_tiles(grid: &GridSpec, to_grid: &crs::Transformer, wb: [f64; 4], reach: f64) -> TileRange {
    let mut ring = rectangle_ring(wb);
    let centre = [(wb[0] + wb[2]) / 2.0, (wb[1] + wb[3]) / 2.0];
    ring.push(centre);
    let (mut xs, mut ys): (Vec<f64>, Vec<f64>) = ring.iter().map(|p| (p[0], p[1])).unzip();
    to_grid.transform(&mut xs, &mut ys);
    let pts: Vec<[f64; 2]> = xs.into_iter().zip(ys).filter(|(x, y)| x.is_finite() && y.is_finite()).map(|(x, y)| [x, y]).collect();
    if pts.is_empty() {
        return TileRange::EMPTY;
    }
    let b = bounds_of(pts.iter());
    // The outline holds every output pixel's footprint; the kernels reach
    // `reach` grid pixels past it.
    let pad = reach * grid.pixel_size();
    grid.tiles_in([b[0] - pad, b[1] - pad, b[2] + pad, b[3] + pad])
}

/// Edge, in output pixels, of the blocks of the output lattice that each
/// have one bilinear and cubic kernel scale.
const SCALE_BLOCK: i64 = 256;

/// The bilinear and cubic kernel scales of block `(bc, br)` of the output
/// lattice (columns `bc * SCALE_BLOCK..`, rows likewise), measured as
/// gdalwarp measures a warp chunk: the extent of the block's outline in
/// source pixels, snapped as gdalwarp snaps. Blocks are fixed on the
/// lattice, not on a load, so every load gives a pixel the same kernel.
fn block_scale(grid: &GridSpec, out: &OutGrid, to_grid: &crs::Transformer, (bc, br): (i64, i64)) -> (f64, f64) {
    let (c0, r0) = ((bc * SCALE_BLOCK) as f64, (br * SCALE_BLOCK) as f64);
    let side = SCALE_BLOCK as f64;
    let ring = rectangle_ring([out.x(c0), out.y(r0 + side), out.x(c0 + side), out.y(r0)]);
    let (mut xs, mut ys): (Vec<f64>, Vec<f64>) = ring.iter().map(|p| (p[0], p[1])).unzip();
    to_grid.transform(&mut xs, &mut ys);
    let p = grid.pixel_size();
    let extent = |v: &[f64]| {
        let f: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
        f.iter().copied().fold(f64::NEG_INFINITY, f64::max) - f.iter().copied().fold(f64::INFINITY, f64::min)
    };
    warp::kernel_scale(warp::axis_scale(SCALE_BLOCK as usize, extent(&xs) / p), warp::axis_scale(SCALE_BLOCK as usize, extent(&ys) / p))
}

/// The groups the observations form, ordered by (first time, label).
fn group(store: &CollectionStore, grid: &GridSpec, spec: &QuerySpec, bands: &[Band], by: GroupBy, all: HashSet<(i64, Arc<str>)>) -> Result<Vec<Group>> {
    let mut obs: Vec<(i64, Arc<str>)> = all.into_iter().collect();
    obs.sort();
    let lon = if by == GroupBy::SolarDay { scene_longitudes(store, grid, spec, bands, &obs)? } else { HashMap::new() };
    let mut by_key: BTreeMap<String, Vec<(i64, Arc<str>)>> = BTreeMap::new();
    for (t, s) in obs {
        let key = match by {
            GroupBy::Time => format!("{t:020}"),
            GroupBy::Scene => s.to_string(),
            GroupBy::SolarDay => solar_date(t, lon.get(&s).copied().unwrap_or(0.0)),
        };
        by_key.entry(key).or_default().push((t, s));
    }
    let mut groups: Vec<Group> = by_key
        .into_iter()
        .map(|(key, members)| {
            let (time, first) = members[0].clone();
            let label = if by == GroupBy::SolarDay { key } else { first.to_string() };
            Group { time, label, members }
        })
        .collect();
    groups.sort_by(|a, b| (a.time, &a.label).cmp(&(b.time, &b.label)));
    Ok(groups)
}

/// The local solar date of time `t` at longitude `lon` (UTC + lon / 15 h).
fn solar_date(t: i64, lon: f64) -> String {
    let local = t + (lon / 15.0 * 3_600_000.0).round() as i64;
    let day = local.div_euclid(DAY_MS) * DAY_MS;
    chrono::DateTime::from_timestamp_millis(day).map(|d| d.format("%Y-%m-%d").to_string()).unwrap_or_default()
}

/// The longitude of each scene's footprint centre: the circular mean of the
/// centres of every stored tile holding it (all of the catalog, so that a
/// scene falls on the same solar day whichever area is loaded).
fn scene_longitudes(store: &CollectionStore, grid: &GridSpec, spec: &QuerySpec, bands: &[Band], obs: &[(i64, Arc<str>)]) -> Result<HashMap<Arc<str>, f64>> {
    let scenes: HashSet<&str> = obs.iter().map(|(_, s)| &**s).collect();
    let first_band = bands.first().map(|b| b.name.clone()).unwrap_or_default();
    let (start, end) = (spec.start_ms, spec.end_ms);
    let mut tiles_of: HashMap<Arc<str>, HashSet<TileId>> = HashMap::new();
    for (k, e) in store.chunks(|k| k.band == first_band && start.is_none_or(|s| k.month.end_ms() > s) && end.is_none_or(|e| k.month.start_ms() < e)) {
        for s in e.scenes.iter().filter(|s| scenes.contains(&***s)) {
            tiles_of.entry(s.clone()).or_default().insert(k.tile);
        }
    }
    let distinct: Vec<TileId> = tiles_of.values().flatten().copied().collect::<HashSet<_>>().into_iter().collect();
    let (mut xs, mut ys): (Vec<f64>, Vec<f64>) = distinct
        .iter()
        .map(|t| {
            let b = grid.tile_bounds(*t);
            ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0)
        })
        .unzip();
    crs::cached(("grid.crs", &grid.crs), ("lon/lat", "EPSG:4326"))?.transformer.transform(&mut xs, &mut ys);
    let lon_of: HashMap<TileId, f64> = distinct.into_iter().zip(xs).filter(|(_, x)| x.is_finite()).collect();
    Ok(tiles_of
        .into_iter()
        .map(|(s, tiles)| {
            let (sx, cx) = tiles.iter().filter_map(|t| lon_of.get(t)).fold((0.0, 0.0), |(a, b), l| (a + l.to_radians().sin(), b + l.to_radians().cos()));
            (s, sx.atan2(cx).to_degrees())
        })
        .collect())
}

impl LoadAnswer {
    /// The stream's pixel type: the bands' (one for all), float32 for
    /// `mean` and for scaled or computed values.
    fn dtype(&self) -> Result<DType> {
        if let Some(d) = self.outputs.reduced_dtype() {
            return Ok(d);
        }
        if self.load.fuse == Fuse::Mean {
            return Ok(DType::Float32);
        }
        self.outputs.dtype(&self.store.meta)
    }

    pub fn schema(&self) -> Result<SchemaRef> {
        let dtype = self.dtype()?;
        let (times, labels): (Vec<i64>, Vec<&str>) = if self.outputs.steps.reduce.is_some() {
            self.periods.iter().map(|(s, _)| (s.start, s.label.as_str())).unzip()
        } else {
            self.groups.iter().map(|g| (g.time, g.label.as_str())).unzip()
        };
        let meta = HashMap::from([
            ("collection".to_string(), self.store.meta.name.clone()),
            ("crs".to_string(), self.out.crs_wkt.clone()),
            ("geotransform".to_string(), serde_json::to_string(&self.out.geotransform()).unwrap_or_default()),
            ("width".to_string(), self.out.width.to_string()),
            ("height".to_string(), self.out.height.to_string()),
            ("times".to_string(), serde_json::to_string(&times).unwrap_or_default()),
            ("labels".to_string(), serde_json::to_string(&labels).unwrap_or_default()),
            ("bands".to_string(), serde_json::to_string(&self.outputs.names).unwrap_or_default()),
            ("groupby".to_string(), self.load.groupby.name().to_string()),
            ("fuse".to_string(), self.load.fuse.name().to_string()),
        ]);
        Ok(Arc::new(output_schema(dtype).with_metadata(meta)))
    }

    /// Slices served (one row per window, group and band).
    pub fn total_records(&self) -> u64 {
        self.windows.iter().map(|w| self.slices(w)).sum::<u64>() * self.outputs.names.len() as u64
    }

    /// Slices of a window per band: its groups, or the periods they fall in.
    fn slices(&self, w: &Window) -> u64 {
        if self.outputs.steps.reduce.is_none() {
            return w.groups.len() as u64;
        }
        self.periods.iter().filter(|(_, gs)| gs.iter().any(|g| w.groups.contains(g))).count() as u64
    }

    /// Bytes of the pixels and masks served.
    pub fn total_bytes(&self) -> u64 {
        let size = self.dtype().map_or(4, |d| d.size()) as u64;
        self.windows.iter().map(|w| self.slices(w) * (w.width * w.height) as u64).sum::<u64>() * self.outputs.names.len() as u64 * (size + 1)
    }

    /// One ticket per window and band: the query narrowed to them.
    pub fn tickets(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::with_capacity(self.windows.len() * self.outputs.names.len());
        for w in &self.windows {
            for name in &self.outputs.names {
                let mut spec = self.spec.clone();
                spec.bands = vec![name.clone()];
                // A window's own observations would move the origin of
                // `all` and `P<n>D` periods: the ticket pins it.
                if spec.steps.reduce.is_some() && spec.start_ms.is_none() {
                    spec.start_ms = Some(self.origin);
                }
                if let Some(l) = &mut spec.load {
                    l.output.at = Some((w.row, w.col));
                }
                out.push(wire::query_message_json(&spec.to_message()));
            }
        }
        out
    }

    /// Writes every window, band and group as one row each, one window at
    /// a time. Blocking (file IO, GDAL).
    pub fn write(&self, emit: &mut dyn FnMut(Piece) -> bool) -> Result<()> {
        let schema = self.schema()?;
        let to_grid = crs::cached(("output.crs", &self.out.crs), ("grid.crs", &self.grid.crs))?;
        for w in &self.windows {
            let footprints = self.methods.iter().any(|m| m.needs_footprint());
            let scaled = self.methods.iter().any(|m| matches!(m, Resampling::Bilinear | Resampling::Cubic));
            let place = Placed::new(&self.grid, &self.out, w, &to_grid.transformer, footprints, scaled);
            let inside = self.inside(w);
            if self.outputs.steps.reduce.is_some() {
                if !self.reduced_rows(&schema, w, &place, &inside, emit)? {
                    return Ok(());
                }
                continue;
            }
            for name in &self.outputs.names {
                for &g in &w.groups {
                    let batch = self.slice(&schema, w, &place, &inside, name, g)?;
                    if !emit(Piece::Batch(batch)) {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    /// The window's pixels whose centre lies inside every mask.
    fn inside(&self, w: &Window) -> Option<Vec<bool>> {
        if self.masks.is_empty() && self.asked.is_none() {
            return None;
        }
        let mut keep = vec![true; w.width * w.height];
        if let Some([c0, r0, c1, r1]) = self.asked {
            for (i, k) in keep.iter_mut().enumerate() {
                let (c, r) = (self.out.col0 + (w.col as usize + i % w.width) as i64, self.out.row0 + (w.row as usize + i / w.width) as i64);
                *k = c >= c0 && c < c1 && r >= r0 && r < r1;
            }
        }
        for rings in &self.masks {
            let m = rasterize(rings, &self.out, w);
            keep.iter_mut().zip(m).for_each(|(k, m)| *k &= m);
        }
        Some(keep)
    }

    /// One group of one output band in one window as a row.
    fn slice(&self, schema: &SchemaRef, w: &Window, place: &Placed, inside: &Option<Vec<bool>>, name: &str, g: usize) -> Result<RecordBatch> {
        let group = &self.groups[g];
        let (pixels, mask) = self.slice_values(w, place, inside, name, g)?;
        output_row(schema, w, name, group.time, &group.label, pixels, mask)
    }

    /// One group of one output band in one window: each member's stored
    /// bands masked (and scaled), warped, fused, then computed.
    fn slice_values(&self, w: &Window, place: &Placed, inside: &Option<Vec<bool>>, name: &str, g: usize) -> Result<(ArrayRef, Vec<bool>)> {
        let group = &self.groups[g];
        let n = w.width * w.height;
        let keeps = self.keeps(w, place, group)?;
        let index = |b: &str| self.bands.iter().position(|x| x.name == b);
        let (pixels, mask): (ArrayRef, Vec<bool>) = if self.outputs.steps.floats() {
            let needed: Vec<usize> = match self.outputs.steps.program(name) {
                Some(p) => p.bands.iter().filter_map(|b| index(b)).collect(),
                None => index(name).into_iter().collect(),
            };
            let mut fused: Vec<Option<(Vec<f32>, Vec<bool>)>> = vec![None; self.bands.len()];
            for i in needed {
                let band = &self.bands[i];
                let scale = |(t, s): &(i64, Arc<str>)| {
                    let baseline = steps::store_baseline(&self.store, s);
                    steps::factors(&self.store.meta, band, self.outputs.steps.scale, baseline.as_deref(), *t)
                };
                let floats: Vec<Option<Mosaic<f32>>> = crate::with_arrow_type!(band.dtype, T => self
                    .mosaics::<T>(w, place, band, group)?
                    .into_iter()
                    .zip(&group.members)
                    .map(|(m, member)| {
                        let (k, o) = scale(member);
                        m.map(|(values, valid)| (steps::scale_values(&values, k, o), valid))
                    })
                    .collect());
                let floats = floats.into_iter();
                fused[i] = Some(match self.fuse::<f32>(place, inside, i, n, f32::NAN, floats, &keeps) {
                    Finished::Native(v, m) | Finished::Mean(v, m) => (v, m),
                });
            }
            let (v, m) = match self.outputs.steps.program(name) {
                Some(_) => steps::computed(&self.outputs, name, &fused, n),
                None => index(name).and_then(|i| fused[i].take()).unwrap_or_else(|| (vec![f32::NAN; n], vec![false; n])),
            };
            (Arc::new(arrow_array::Float32Array::from(v)), m)
        } else {
            let i = index(name).ok_or_else(|| Error::Internal(format!("output band {name} is not read")))?;
            let band = &self.bands[i];
            crate::with_arrow_type!(band.dtype, T => self.fused_native::<T>(w, place, inside, i, group, &keeps)?)
        };
        Ok((pixels, mask))
    }

    /// Each period of one window as rows, one per output band.
    fn reduced_rows(&self, schema: &SchemaRef, w: &Window, place: &Placed, inside: &Option<Vec<bool>>, emit: &mut dyn FnMut(Piece) -> bool) -> Result<bool> {
        for (slot, groups) in &self.periods {
            for (name, (values, valid)) in self.reduce_period(w, place, inside, groups)? {
                if !emit(Piece::Batch(output_row(schema, w, &name, slot.start, &slot.label, values, valid)?)) {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Every output band of one window over one period (`groups`: the
    /// period's), its groups fused and computed, reduced per pixel; empty
    /// where none of them reaches the window.
    fn reduce_period(&self, w: &Window, place: &Placed, inside: &Option<Vec<bool>>, groups: &[usize]) -> Result<Vec<(String, Reduced)>> {
        let Some(r) = &self.outputs.steps.reduce else { return Ok(Vec::new()) };
        let present: Vec<usize> = groups.iter().copied().filter(|g| w.groups.contains(g)).collect();
        if present.is_empty() {
            return Ok(Vec::new());
        }
        let passes: Vec<Vec<String>> = match r.how {
            Reduction::Quality => vec![self.outputs.work_names()],
            Reduction::Reducer(_) => self.outputs.names.iter().map(|n| vec![n.clone()]).collect(),
        };
        let mut out = Vec::new();
        for names in &passes {
            let mut layers: Vec<Layers> = Vec::with_capacity(names.len());
            for name in names {
                let mut l = Layers::default();
                for &g in &present {
                    let (values, valid) = self.slice_values(w, place, inside, name, g)?;
                    l.0.push(Some(Layer { values, valid: arrow_buffer::BooleanBuffer::from(valid), factors: (1.0, 0.0) }));
                }
                layers.push(l);
            }
            let shown = names.iter().filter(|x| x.as_str() != compute::QUALITY).cloned();
            out.extend(shown.zip(reduce::reduce_all(r, layers, w.width * w.height)));
        }
        Ok(out)
    }

    /// With `reduce`: (window, period) pairs that hold data, by period.
    pub fn reduced_units(&self) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for (p, (_, groups)) in self.periods.iter().enumerate() {
            for (i, w) in self.windows.iter().enumerate() {
                if groups.iter().any(|g| w.groups.contains(g)) {
                    out.push((i, p));
                }
            }
        }
        out
    }

    pub fn period(&self, p: usize) -> &Slot {
        &self.periods[p].0
    }

    /// Window `i` reduced over period `p`. Blocking (file IO, GDAL).
    pub fn reduce_window(&self, i: usize, p: usize) -> Result<Vec<(String, Reduced)>> {
        let w = &self.windows[i];
        let to_grid = crs::cached(("output.crs", &self.out.crs), ("grid.crs", &self.grid.crs))?;
        let footprints = self.methods.iter().any(|m| m.needs_footprint());
        let scaled = self.methods.iter().any(|m| matches!(m, Resampling::Bilinear | Resampling::Cubic));
        let place = Placed::new(&self.grid, &self.out, w, &to_grid.transformer, footprints, scaled);
        self.reduce_period(w, &place, &self.inside(w), &self.periods[p].1)
    }

    /// The tile of `grid` window `i` covers (a load snapped to its tiles).
    pub fn window_tile(&self, i: usize, grid: &GridSpec) -> TileId {
        let w = &self.windows[i];
        let (c, r) = ((self.out.col0 + w.col as i64) as f64 + w.width as f64 / 2.0, (self.out.row0 + w.row as i64) as f64 + w.height as f64 / 2.0);
        grid.tile_of(self.out.x(c), self.out.y(r))
    }

    pub fn outputs(&self) -> &Outputs {
        &self.outputs
    }

    /// Input band `i` of `group` fused in its own pixel type (float32 for
    /// `mean`).
    fn fused_native<T: ArrowPrimitiveType>(
        &self,
        w: &Window,
        place: &Placed,
        inside: &Option<Vec<bool>>,
        i: usize,
        group: &Group,
        keeps: &Option<Vec<Option<Vec<bool>>>>,
    ) -> Result<(ArrayRef, Vec<bool>)>
    where
        T::Native: Sample,
    {
        let band = &self.bands[i];
        let fill = T::Native::from_f64(band.nodata.unwrap_or(0.0));
        let members = self.mosaics::<T>(w, place, band, group)?.into_iter();
        Ok(match self.fuse::<T::Native>(place, inside, i, w.width * w.height, fill, members, keeps) {
            Finished::Native(v, m) => (Arc::new(PrimitiveArray::<T>::new(ScalarBuffer::from(v), None)) as ArrayRef, m),
            Finished::Mean(v, m) => (Arc::new(arrow_array::Float32Array::from(v)) as ArrayRef, m),
        })
    }

    /// Per member of `group`, the pixels of the window's mosaic its mask
    /// band leaves valid (`None` without a mask).
    fn keeps(&self, w: &Window, place: &Placed, group: &Group) -> Result<Option<Vec<Option<Vec<bool>>>>> {
        let Some((band, rule)) = &self.outputs.steps.mask else { return Ok(None) };
        let keeps: Vec<Option<Vec<bool>>> = crate::with_arrow_type!(band.dtype, T => self
            .mosaics::<T>(w, place, band, group)?
            .into_iter()
            .map(|m| m.map(|(values, valid)| values.iter().zip(&valid).map(|(v, ok)| *ok && rule.keeps(v.to_f64())).collect()))
            .collect());
        Ok(Some(keeps))
    }

    /// Members' mosaics of input band `i` (values and validity, `None`
    /// where a member lacks the band) masked, warped onto the window,
    /// clipped to the geometry and fused. A member whose mask band is
    /// missing is masked whole.
    #[allow(clippy::too_many_arguments)]
    fn fuse<V: Sample>(
        &self,
        place: &Placed,
        inside: &Option<Vec<bool>>,
        i: usize,
        n: usize,
        fill: V,
        members: impl Iterator<Item = Option<(Vec<V>, Vec<bool>)>>,
        keeps: &Option<Vec<Option<Vec<bool>>>>,
    ) -> Finished<V> {
        let mut fused = Fused::<V>::new(self.load.fuse, n, fill);
        for (m, member) in members.enumerate() {
            let Some((values, mut valid)) = member else { continue };
            if let Some(keeps) = keeps {
                match keeps.get(m).and_then(Option::as_ref) {
                    Some(k) => valid.iter_mut().zip(k).for_each(|(v, k)| *v &= *k),
                    None => continue,
                }
            }
            let src = SourceBand { values: &values, nodata: None, valid: Some(&valid), width: place.src_w, height: place.src_h };
            let (mut px, mut mask) = place.resample(&src, self.methods[i], fill);
            if let Some(keep) = inside {
                for ((m, v), k) in mask.iter_mut().zip(px.iter_mut()).zip(keep) {
                    if !*k && *m {
                        *m = false;
                        *v = fill;
                    }
                }
            }
            fused.add(&px, &mask);
        }
        fused.finish()
    }

    /// Each member of `group` as a mosaic of the window's tiles (values
    /// and validity), in the group's order; `None` for a member the band
    /// has no row of there.
    fn mosaics<T: ArrowPrimitiveType>(&self, w: &Window, place: &Placed, band: &Band, group: &Group) -> Result<Vec<Option<Mosaic<T::Native>>>>
    where
        T::Native: Sample,
    {
        let n = self.grid.tile_px as usize;
        let fill = T::Native::from_f64(band.nodata.unwrap_or(0.0));
        let members: HashMap<(i64, &str), usize> = group.members.iter().enumerate().map(|(i, (t, s))| ((*t, &**s), i)).collect();
        let months: HashSet<Month> = group.members.iter().filter_map(|(t, _)| Month::of_ms(*t)).collect();
        let mut mosaics: Vec<Option<Mosaic<T::Native>>> = vec![None; group.members.len()];
        for tile in w.tiles.iter() {
            for &month in &months {
                let Some(entry) = self.chunks.get(&(tile, month, band.name.clone())) else { continue };
                let keep = |i: usize| members.contains_key(&(entry.times[i], &*entry.scenes[i]));
                if !(0..entry.times.len()).any(keep) {
                    continue;
                }
                for batch in self.store.read_rows(entry, keep)? {
                    let times = batch.column(2).as_primitive::<arrow_array::types::TimestampMillisecondType>();
                    let scenes = batch.column(3).as_string::<i32>();
                    let pixels = batch.column(4).as_list::<i32>();
                    let masks = batch.column(5).as_list::<i32>();
                    let values = pixels.values().as_primitive_opt::<T>().ok_or_else(|| entry.corrupt("pixels of another type than the band's".into()))?;
                    let valid = masks.values().as_boolean();
                    for r in 0..batch.num_rows() {
                        let Some(&m) = members.get(&(times.value(r), scenes.value(r))) else { continue };
                        let (p0, m0) = (pixels.value_offsets()[r] as usize, masks.value_offsets()[r] as usize);
                        if pixels.value_length(r) as usize != n * n || masks.value_length(r) as usize != n * n {
                            return Err(entry.corrupt(format!("a row holds {} pixels, not {}", pixels.value_length(r), n * n)));
                        }
                        let (mv, mm) = mosaics[m].get_or_insert_with(|| (vec![fill; place.src_w * place.src_h], vec![false; place.src_w * place.src_h]));
                        let (ox, oy) = place.offset(tile, n);
                        for row in 0..n {
                            let to = (oy + row) * place.src_w + ox;
                            mv[to..to + n].copy_from_slice(&values.values()[p0 + row * n..p0 + row * n + n]);
                            for (v, bit) in mm[to..to + n].iter_mut().zip(valid.values().slice(m0 + row * n, n).iter()) {
                                *v = bit;
                            }
                        }
                    }
                }
            }
        }
        Ok(mosaics)
    }
}

/// An observation's values on a window's tiles, and their validity.
type Mosaic<T> = (Vec<T>, Vec<bool>);

/// A window's place in the grid: the mosaic of the tiles it reads and
/// where its pixels fall in that mosaic.
struct Placed {
    tiles: TileRange,
    src_w: usize,
    src_h: usize,
    /// Every pixel, with the kernel scale of the window's first block.
    coords: warp::TileCoords,
    /// Where the window spans blocks of different kernel scales: the
    /// pixels of each scale and their positions (bilinear and cubic only).
    by_scale: Vec<(Vec<usize>, warp::TileCoords)>,
}

impl Placed {
    fn new(grid: &GridSpec, out: &OutGrid, w: &Window, to_grid: &crs::Transformer, footprints: bool, scaled: bool) -> Self {
        let n = grid.tile_px as usize;
        let tiles = w.tiles.clone();
        let (ntx, nty) = (tiles.ix.clone().count(), tiles.iy.clone().count());
        let (src_w, src_h) = (ntx * n, nty * n);
        let p = grid.pixel_size();
        // Global grid column of the mosaic's left edge, and global grid row
        // (counted southward from y = 0) of its top edge: integers, so that
        // subtracting them from a global position is exact.
        let (gc0, gr0) = ((*tiles.ix.start() * n as i64) as f64, (-(*tiles.iy.end() + 1) * n as i64) as f64);
        let (c0, r0) = (out.col0 + w.col as i64, out.row0 + w.row as i64);
        let block_of = |c: i64, r: i64| (c.div_euclid(SCALE_BLOCK), r.div_euclid(SCALE_BLOCK));
        let scale = block_scale(grid, out, to_grid, block_of(c0, r0));
        let mut by_scale = Vec::new();
        let coords = if out.same_crs {
            let along = |count: usize, offset: f64, first: i64, pos: &dyn Fn(f64) -> f64| -> Vec<f64> {
                (0..count).map(|i| pos(first as f64 + i as f64 + offset)).collect()
            };
            let gx = |c: f64| out.x(c) / p - gc0;
            let gy = |r: f64| -out.y(r) / p - gr0;
            let axes = Axes {
                xs: along(w.width, 0.5, c0, &gx),
                x_edges: along(w.width + 1, 0.0, c0, &gx),
                ys: along(w.height, 0.5, r0, &gy),
                y_edges: along(w.height + 1, 0.0, r0, &gy),
            };
            warp::target_axes(axes, scale, (src_w, src_h))
        } else {
            let map = LatticeMap::new(out, to_grid, p, (c0, c0 + w.width as i64 + 1), (r0, r0 + w.height as i64 + 1));
            let points = |cols: usize, rows: usize, offset: f64| -> (Vec<f64>, Vec<f64>) {
                let (mut xs, mut ys) = map.positions((c0, cols), (r0, rows), offset);
                for (x, y) in xs.iter_mut().zip(ys.iter_mut()) {
                    (*x, *y) = (*x - gc0, *y - gr0);
                }
                (xs, ys)
            };
            let (sx, sy) = points(w.width, w.height, 0.5);
            let corners = footprints.then(|| points(w.width + 1, w.height + 1, 0.0));
            if scaled {
                let mut scales: BTreeMap<(i64, i64), (f64, f64)> = BTreeMap::new();
                let mut pixels: BTreeMap<(u64, u64), Vec<usize>> = BTreeMap::new();
                for r in 0..w.height {
                    for c in 0..w.width {
                        let block = block_of(c0 + c as i64, r0 + r as i64);
                        let s = *scales.entry(block).or_insert_with(|| block_scale(grid, out, to_grid, block));
                        pixels.entry((s.0.to_bits(), s.1.to_bits())).or_default().push(r * w.width + c);
                    }
                }
                if pixels.len() > 1 {
                    by_scale = pixels
                        .into_iter()
                        .map(|((x, y), idx)| {
                            let (px, py) = (idx.iter().map(|&i| sx[i]).collect(), idx.iter().map(|&i| sy[i]).collect());
                            let coords = warp::target_points(px, py, None, idx.len(), (f64::from_bits(x), f64::from_bits(y)), (src_w, src_h));
                            (idx, coords)
                        })
                        .collect();
                }
            }
            warp::target_points(sx, sy, corners, w.width, scale, (src_w, src_h))
        };
        Placed { tiles, src_w, src_h, coords, by_scale }
    }

    /// One band of one observation resampled onto the window.
    fn resample<T: Sample>(&self, src: &SourceBand<'_, T>, method: Resampling, fill: T) -> (Vec<T>, Vec<bool>) {
        if self.by_scale.is_empty() || !matches!(method, Resampling::Bilinear | Resampling::Cubic) {
            return warp::resample(src, &self.coords, method, fill);
        }
        let n = self.coords.sx.len();
        let (mut px, mut mask) = (vec![fill; n], vec![false; n]);
        for (idx, coords) in &self.by_scale {
            let (p, m) = warp::resample(src, coords, method, fill);
            for (k, &i) in idx.iter().enumerate() {
                (px[i], mask[i]) = (p[k], m[k]);
            }
        }
        (px, mask)
    }

    /// The mosaic column and row of a tile's first pixel.
    fn offset(&self, tile: TileId, n: usize) -> (usize, usize) {
        (((tile.ix - *self.tiles.ix.start()) as usize) * n, ((*self.tiles.iy.end() - tile.iy) as usize) * n)
    }
}

/// Output lattice pixels per side of a [`LatticeMap`] cell.
const NODE: i64 = 16;
/// Largest error, in grid pixels, a cell's interpolation may have at its
/// centre; cells beyond it are transformed exactly.
const MAX_ERROR: f64 = 0.0005;

/// Global grid pixel positions (column `x / p`, row `-y / p`) of output
/// lattice positions: the exact transform at nodes every [`NODE`] pixels
/// of the output lattice, bilinear interpolation between them. Nodes and
/// cells are fixed on the lattice, so a position maps to the same value in
/// every window and load; a cell whose interpolation misses its exactly
/// transformed centre by more than [`MAX_ERROR`] (or holds a point the
/// transform cannot map) is transformed point by point.
struct LatticeMap<'a> {
    out: &'a OutGrid,
    to_grid: &'a crs::Transformer,
    p: f64,
    /// First node column and row (in units of `NODE` pixels), and counts.
    k0: i64,
    m0: i64,
    nk: usize,
    nm: usize,
    nodes: Vec<(f64, f64)>,
    exact: Vec<bool>,
}

impl<'a> LatticeMap<'a> {
    /// Covers global columns `cols.0..=cols.1` and rows `rows.0..=rows.1`.
    fn new(out: &'a OutGrid, to_grid: &'a crs::Transformer, p: f64, cols: (i64, i64), rows: (i64, i64)) -> Self {
        let (k0, k1) = (cols.0.div_euclid(NODE), cols.1.div_euclid(NODE) + 1);
        let (m0, m1) = (rows.0.div_euclid(NODE), rows.1.div_euclid(NODE) + 1);
        let (nk, nm) = ((k1 - k0 + 1) as usize, (m1 - m0 + 1) as usize);
        let grid = |pts: &[(f64, f64)]| -> Vec<(f64, f64)> {
            let (mut xs, mut ys): (Vec<f64>, Vec<f64>) = pts.iter().map(|(c, r)| (out.x(*c), out.y(*r))).unzip();
            to_grid.transform(&mut xs, &mut ys);
            xs.into_iter().zip(ys).map(|(x, y)| (x / p, -y / p)).collect()
        };
        let at: Vec<(f64, f64)> = (0..nm).flat_map(|m| (0..nk).map(move |k| (((k0 + k as i64) * NODE) as f64, ((m0 + m as i64) * NODE) as f64))).collect();
        let nodes = grid(&at);
        let half = NODE as f64 / 2.0;
        let centres: Vec<(f64, f64)> =
            (0..nm - 1).flat_map(|m| (0..nk - 1).map(move |k| (((k0 + k as i64) * NODE) as f64 + half, ((m0 + m as i64) * NODE) as f64 + half))).collect();
        let exact_centres = grid(&centres);
        let mut map = LatticeMap { out, to_grid, p, k0, m0, nk, nm, nodes, exact: Vec::new() };
        map.exact = centres
            .iter()
            .zip(&exact_centres)
            .map(|((c, r), (ex, ey))| {
                let (ix, iy) = map.interpolate(*c, *r);
                let error = (ix - ex).abs() + (iy - ey).abs();
                error.is_nan() || error > MAX_ERROR
            })
            .collect();
        map
    }

    /// The interpolated position of global lattice position `(c, r)`.
    #[inline]
    fn interpolate(&self, c: f64, r: f64) -> (f64, f64) {
        let (k, m) = ((c / NODE as f64).floor(), (r / NODE as f64).floor());
        let (t, s) = ((c - k * NODE as f64) / NODE as f64, (r - m * NODE as f64) / NODE as f64);
        let (k, m) = ((k as i64 - self.k0) as usize, (m as i64 - self.m0) as usize);
        let node = |dk: usize, dm: usize| self.nodes[(m + dm).min(self.nm - 1) * self.nk + (k + dk).min(self.nk - 1)];
        let (a, b, c2, d) = (node(0, 0), node(1, 0), node(0, 1), node(1, 1));
        let top = (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t);
        let bottom = (c2.0 + (d.0 - c2.0) * t, c2.1 + (d.1 - c2.1) * t);
        (top.0 + (bottom.0 - top.0) * s, top.1 + (bottom.1 - top.1) * s)
    }

    /// Positions of `cols.1 x rows.1` lattice points from global column
    /// `cols.0` and row `rows.0`, each at `+ offset`, row-major.
    fn positions(&self, cols: (i64, usize), rows: (i64, usize), offset: f64) -> (Vec<f64>, Vec<f64>) {
        let n = cols.1 * rows.1;
        let (mut xs, mut ys) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let mut exact_at = Vec::new();
        for r in 0..rows.1 {
            let v = (rows.0 + r as i64) as f64 + offset;
            let m = (v / NODE as f64).floor() as i64 - self.m0;
            for c in 0..cols.1 {
                let u = (cols.0 + c as i64) as f64 + offset;
                let k = (u / NODE as f64).floor() as i64 - self.k0;
                let cell = (m.clamp(0, self.nm as i64 - 2) as usize) * (self.nk - 1) + k.clamp(0, self.nk as i64 - 2) as usize;
                if self.exact[cell] {
                    exact_at.push(xs.len());
                    xs.push(self.out.x(u));
                    ys.push(self.out.y(v));
                } else {
                    let (x, y) = self.interpolate(u, v);
                    xs.push(x);
                    ys.push(y);
                }
            }
        }
        if !exact_at.is_empty() {
            let (mut ex, mut ey): (Vec<f64>, Vec<f64>) = exact_at.iter().map(|&i| (xs[i], ys[i])).unzip();
            self.to_grid.transform(&mut ex, &mut ey);
            for (j, &i) in exact_at.iter().enumerate() {
                (xs[i], ys[i]) = (ex[j] / self.p, -ey[j] / self.p);
            }
        }
        (xs, ys)
    }
}

/// Which pixel centres of window `w` lie inside `rings` (even-odd rule),
/// row by row from the crossings of each row's centre line.
fn rasterize(rings: &[Ring], out: &OutGrid, w: &Window) -> Vec<bool> {
    let mut inside = vec![false; w.width * w.height];
    let (c0, r0) = (out.col0 + w.col as i64, out.row0 + w.row as i64);
    let mut xs = Vec::new();
    for r in 0..w.height {
        let y = out.y((r0 + r as i64) as f64 + 0.5);
        xs.clear();
        for ring in rings {
            for e in ring.windows(2) {
                let ([x1, y1], [x2, y2]) = (e[0], e[1]);
                if (y1 <= y && y < y2) || (y2 <= y && y < y1) {
                    xs.push(x1 + (y - y1) * (x2 - x1) / (y2 - y1));
                }
            }
        }
        xs.sort_by(f64::total_cmp);
        for span in xs.chunks_exact(2) {
            // Columns whose centre lies in [span[0], span[1]).
            let first = ((span[0] / out.rx - 0.5).ceil() as i64 - c0).max(0);
            let last = ((span[1] / out.rx - 0.5).ceil() as i64 - c0).min(w.width as i64);
            for c in first..last {
                inside[r * w.width + c as usize] = true;
            }
        }
    }
    inside
}

/// The fusing of one slice's observations, pixel by pixel.
struct Fused<T> {
    how: Fuse,
    values: Vec<T>,
    mask: Vec<bool>,
    sum: Vec<f64>,
    count: Vec<u32>,
}

enum Finished<T> {
    Native(Vec<T>, Vec<bool>),
    Mean(Vec<f32>, Vec<bool>),
}

impl<T: Sample> Fused<T> {
    fn new(how: Fuse, n: usize, fill: T) -> Self {
        let mean = how == Fuse::Mean;
        Fused {
            how,
            values: if mean { Vec::new() } else { vec![fill; n] },
            mask: vec![false; n],
            sum: if mean { vec![0.0; n] } else { Vec::new() },
            count: if mean { vec![0; n] } else { Vec::new() },
        }
    }

    /// Adds the next observation in the group's order.
    fn add(&mut self, px: &[T], mask: &[bool]) {
        for i in (0..px.len()).filter(|i| mask[*i]) {
            let v = px[i];
            match self.how {
                Fuse::First if self.mask[i] => {}
                Fuse::First | Fuse::Last => self.values[i] = v,
                Fuse::Min if !self.mask[i] || v.to_f64() < self.values[i].to_f64() => self.values[i] = v,
                Fuse::Max if !self.mask[i] || v.to_f64() > self.values[i].to_f64() => self.values[i] = v,
                Fuse::Min | Fuse::Max => {}
                Fuse::Mean => {
                    self.sum[i] += v.to_f64();
                    self.count[i] += 1;
                }
            }
            self.mask[i] = true;
        }
    }

    fn finish(self) -> Finished<T> {
        if self.how == Fuse::Mean {
            let v = self.sum.iter().zip(&self.count).map(|(s, c)| if *c > 0 { (*s / *c as f64) as f32 } else { f32::NAN }).collect();
            return Finished::Mean(v, self.mask);
        }
        Finished::Native(self.values, self.mask)
    }
}

/// One slice of one output band in one window as a row.
fn output_row(schema: &SchemaRef, w: &Window, name: &str, time: i64, label: &str, pixels: ArrayRef, mask: Vec<bool>) -> Result<RecordBatch> {
    let list = |values: ArrayRef| -> Result<ListArray> {
        let field = Arc::new(Field::new_list_field(values.data_type().clone(), false));
        ListArray::try_new(field, OffsetBuffer::from_lengths([values.len()]), values, None).map_err(Error::arrow("building an output list"))
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(TimestampMillisecondArray::from(vec![time]).with_timezone("UTC")),
        Arc::new(StringArray::from(vec![label])),
        Arc::new(StringArray::from(vec![name])),
        Arc::new(UInt32Array::from(vec![w.row as u32])),
        Arc::new(UInt32Array::from(vec![w.col as u32])),
        Arc::new(UInt32Array::from(vec![w.height as u32])),
        Arc::new(UInt32Array::from(vec![w.width as u32])),
        Arc::new(list(pixels)?),
        Arc::new(list(Arc::new(BooleanArray::from(mask)))?),
    ];
    RecordBatch::try_new(schema.clone(), columns).map_err(Error::arrow("building an output slice"))
}

/// Columns of an output answer (DESIGN §4b).
pub fn output_schema(dtype: DType) -> Schema {
    let u32_field = |name: &str| Field::new(name, DataType::UInt32, false);
    Schema::new(vec![
        Field::new("time", crate::storage::chunk::time_type(), false),
        Field::new("label", DataType::Utf8, false),
        Field::new("band", DataType::Utf8, false),
        u32_field("row"),
        u32_field("col"),
        u32_field("height"),
        u32_field("width"),
        Field::new("pixels", DataType::List(Arc::new(Field::new_list_field(dtype.arrow(), false))), false),
        Field::new("mask", DataType::List(Arc::new(Field::new_list_field(DataType::Boolean, false))), false),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lattice_map_is_within_a_thousandth_of_a_pixel_of_the_exact_transform() {
        let grid = GridSpec::default_at(10.0).unwrap();
        for (crs, x, y, res) in [("EPSG:32652", 330_000.0, 4_150_000.0, 10.0), ("EPSG:32652", 300_000.0, 4_200_000.0, 20.0), ("EPSG:4326", 127.0, 37.5, 0.0001)]
        {
            let to_grid = crs::cached(("output.crs", crs), ("grid.crs", &grid.crs)).unwrap();
            let (c0, r0) = ((x / res) as i64, (-y / res) as i64);
            let out = OutGrid { crs: crs.into(), crs_wkt: String::new(), same_crs: false, rx: res, ry: res, col0: c0, row0: r0, width: 300, height: 200 };
            let p = grid.pixel_size();
            let map = LatticeMap::new(&out, &to_grid.transformer, p, (c0, c0 + 301), (r0, r0 + 201));
            let (ax, ay) = map.positions((c0, 300), (r0, 200), 0.5);
            let (mut ex, mut ey): (Vec<f64>, Vec<f64>) =
                (0..200).flat_map(|r| (0..300).map(move |c| (((c0 + c) as f64 + 0.5) * res, -((r0 + r) as f64 + 0.5) * res))).unzip();
            to_grid.transformer.transform(&mut ex, &mut ey);
            let worst = ax.iter().zip(&ay).zip(ex.iter().zip(&ey)).map(|((a, b), (x, y))| (a - x / p).abs().max((b + y / p).abs())).fold(0.0, f64::max);
            assert!(worst < 0.001, "{crs} at {res}: {worst} grid pixels");
        }
    }

    #[test]
    fn solar_dates_follow_longitude() {
        // 23:55 and 00:05 UTC at lon 179.9 are one local day.
        let t = crate::wire::parse_time("t", "2024-06-14T23:55:00Z").unwrap();
        assert_eq!(solar_date(t, 179.9), "2024-06-15");
        assert_eq!(solar_date(t + 600_000, 179.9), "2024-06-15");
        assert_eq!(solar_date(t, 0.0), "2024-06-14");
        assert_eq!(solar_date(t + 600_000, -179.9), "2024-06-14");
    }

    #[test]
    fn fuse_takes_valid_values_in_order() {
        let obs: [(&[u16], &[bool]); 3] = [(&[1, 5, 0], &[true, true, false]), (&[3, 2, 0], &[true, false, false]), (&[2, 9, 7], &[false, true, true])];
        let run = |how| {
            let mut f = Fused::new(how, 3, 0u16);
            obs.iter().for_each(|(v, m)| f.add(v, m));
            f.finish()
        };
        let native = |how| match run(how) {
            Finished::Native(v, m) => (v, m),
            Finished::Mean(..) => unreachable!(),
        };
        assert_eq!(native(Fuse::First), (vec![1, 5, 7], vec![true, true, true]));
        assert_eq!(native(Fuse::Last), (vec![3, 9, 7], vec![true, true, true]));
        assert_eq!(native(Fuse::Min).0, vec![1, 5, 7]);
        assert_eq!(native(Fuse::Max).0, vec![3, 9, 7]);
        let Finished::Mean(v, _) = run(Fuse::Mean) else { unreachable!() };
        assert_eq!(v, vec![2.0, 7.0, 7.0]);
    }
}
