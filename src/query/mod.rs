//! Queries: a `Query` -> what it answers ([`Answer`]) -> the pieces of
//! the answer's stream (`docs/protocol.md`).
//!
//! Each kind of answer is a variant of [`Answer`] in a file of its own, with
//! its schema, its endpoints and its writer: [`chunks`] (stored chunks of
//! tiles) and [`point`] (one location's time series). The query layer says
//! what goes in the stream, as record batches or messages as stored
//! ([`Piece`]); the transport (`flight/`) frames them.

mod chunks;
mod into;
mod load;
mod point;
mod reduce;
mod steps;

use std::collections::HashSet;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;

use crate::collection::{Band, DType};
use crate::crs;
use crate::error::{Error, Result};
use crate::grid::{GridSpec, TileId, TileRange};
use crate::storage::{self, ChunkEntry, ChunkKey, CollectionStore, Warehouse};
use crate::wire::{Area, QuerySpec};

pub use chunks::ChunkAnswer;
pub use into::IntoAnswer;
pub use load::{output_schema, LoadAnswer};
pub use point::{point_schema, PointAnswer};
pub use reduce::ReduceAnswer;
pub use steps::{observation, BandPixels, Outputs, StepsAnswer};

/// One message of an answer's stream, after its schema.
pub enum Piece {
    /// Rows to encode as one message.
    Batch(RecordBatch),
    /// A message as stored: its encoded header and body, sent as they are.
    Stored { header: bytes::Bytes, body: bytes::Bytes },
}

/// What a query answers. A new kind of answer is a new variant and a new
/// file beside `chunks.rs` and `point.rs`.
pub enum Answer {
    /// Stored chunks of tiles, one endpoint per chunk.
    Chunks(ChunkAnswer),
    /// One location's series, one endpoint: the query itself.
    Point(PointAnswer),
    /// Windows of an output grid, one endpoint per window and band.
    Load(Box<LoadAnswer>),
    /// Tiles with mask, scale or compute applied, one endpoint per tile
    /// and month.
    Steps(StepsAnswer),
    /// Tiles reduced over periods, one endpoint per tile and period.
    Reduce(ReduceAnswer),
    /// A reduce stored as a collection; one endpoint, the query.
    Into(Box<IntoAnswer>),
}

impl Answer {
    /// The stream's schema.
    pub fn schema(&self) -> Result<SchemaRef> {
        match self {
            Answer::Chunks(a) => a.schema(),
            Answer::Point(a) => a.schema(),
            Answer::Load(a) => a.schema(),
            Answer::Steps(a) => a.schema(),
            Answer::Reduce(a) => a.schema(),
            Answer::Into(a) => a.schema(),
        }
    }

    /// Rows answered: observations (exact, from the catalog's times), or
    /// slices of windows for a load.
    pub fn total_records(&self) -> u64 {
        match self {
            Answer::Chunks(a) => a.selection.total_records(),
            Answer::Point(a) => a.selection.total_records(),
            Answer::Load(a) => a.total_records(),
            Answer::Steps(a) => a.total_records(),
            Answer::Reduce(a) => a.total_records(),
            Answer::Into(_) => 1,
        }
    }

    /// Stored bytes covered, or bytes of a load's pixels and masks.
    pub fn total_bytes(&self) -> u64 {
        match self {
            Answer::Chunks(a) => a.selection.total_bytes(),
            Answer::Point(a) => a.selection.total_bytes(),
            Answer::Load(a) => a.total_bytes(),
            Answer::Steps(a) => a.total_bytes(),
            Answer::Reduce(a) => a.total_bytes(),
            Answer::Into(_) => 0,
        }
    }

    /// The tickets of the answer's endpoints; `own` is the query's own
    /// bytes, the ticket of an answer read in one piece.
    pub fn tickets(&self, own: &[u8]) -> Vec<Vec<u8>> {
        match self {
            Answer::Chunks(a) => a.per_chunk().into_iter().map(|(ticket, _)| ticket).collect(),
            Answer::Point(_) => vec![own.to_vec()],
            Answer::Load(a) => a.tickets(),
            Answer::Steps(a) => a.tickets(),
            Answer::Reduce(a) => a.tickets(),
            Answer::Into(_) => vec![own.to_vec()],
        }
    }

    /// Writes the answer after its schema, calling `emit` with each piece
    /// until it returns false. Blocking (file IO).
    pub fn write(&self, emit: &mut dyn FnMut(Piece) -> bool) -> Result<()> {
        match self {
            Answer::Chunks(a) => a.write(emit),
            Answer::Point(a) => a.write(emit),
            Answer::Load(a) => a.write(emit),
            Answer::Steps(a) => a.write(emit),
            Answer::Reduce(a) => a.write(emit),
            Answer::Into(a) => a.write(emit),
        }
    }
}

/// The stored chunks a query selects, shared by the answers that read them.
pub struct Selection {
    pub store: Arc<CollectionStore>,
    pub spec: QuerySpec,
    pub bands: Vec<Band>,
    pub chunks: Vec<(ChunkKey, ChunkEntry)>,
}

impl Selection {
    /// Observations covered (exact, from the catalog's times).
    pub fn total_records(&self) -> u64 {
        self.chunks.iter().map(|(_, e)| e.count_in(self.spec.start_ms, self.spec.end_ms) as u64).sum()
    }

    /// Bytes covered (each chunk's bytes pro rata of its matching rows).
    pub fn total_bytes(&self) -> u64 {
        self.chunks
            .iter()
            .map(|(_, e)| {
                let n = e.count_in(self.spec.start_ms, self.spec.end_ms) as u64;
                e.len * n / (e.times.len() as u64).max(1)
            })
            .sum()
    }

    /// A chunk's rows in the time range, ordered by time, as one batch.
    fn read_sorted(&self, entry: &ChunkEntry) -> Result<Option<RecordBatch>> {
        // Only the batches holding rows in the time range are read.
        let batches = self.store.read_rows(entry, |i| self.spec.time_matches(entry.times[i]))?;
        Ok(storage::sorted_rows(&batches, |t, _| self.spec.time_matches(t))?.0)
    }
}

/// Emits `batch` as pieces of `per` rows (an empty batch as one piece);
/// false once `emit` returned false.
fn emit_rows(batch: &RecordBatch, per: usize, emit: &mut dyn FnMut(Piece) -> bool) -> bool {
    (0..batch.num_rows().max(1)).step_by(per.max(1)).all(|first| emit(Piece::Batch(batch.slice(first, per.min(batch.num_rows() - first)))))
}

/// Which tiles a query covers, resolved against the grid.
enum TileFilter {
    All,
    Set(HashSet<TileId>),
    Range(TileRange),
}

impl TileFilter {
    fn keeps(&self, t: TileId) -> bool {
        match self {
            TileFilter::All => true,
            TileFilter::Set(s) => s.contains(&t),
            TileFilter::Range(r) => r.contains(t),
        }
    }
}

/// Transforms a rectangle from `crs_def` to the grid CRS (edges densified,
/// so the result covers the rectangle's curved image). Blocking (GDAL).
fn bbox_to_grid(grid: &GridSpec, bbox: [f64; 4], crs_def: &str) -> Result<[f64; 4]> {
    let t = crs::cached(("bbox_crs", crs_def), ("grid.crs", &grid.crs))?;
    const STEPS: usize = 32;
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for k in 0..=STEPS {
        let f = k as f64 / STEPS as f64;
        let x = bbox[0] + f * (bbox[2] - bbox[0]);
        let y = bbox[1] + f * (bbox[3] - bbox[1]);
        for (px, py) in [(x, bbox[1]), (x, bbox[3]), (bbox[0], y), (bbox[2], y)] {
            xs.push(px);
            ys.push(py);
        }
    }
    t.transformer.transform(&mut xs, &mut ys);
    let mut b = [f64::INFINITY, f64::INFINITY, f64::NEG_INFINITY, f64::NEG_INFINITY];
    for (x, y) in xs.iter().zip(&ys).filter(|(x, y)| x.is_finite() && y.is_finite()) {
        b = [b[0].min(*x), b[1].min(*y), b[2].max(*x), b[3].max(*y)];
    }
    if !b.iter().all(|v| v.is_finite()) {
        return Err(Error::invalid("bbox", bbox, &format!("cannot be transformed from {crs_def} to the grid's CRS")));
    }
    Ok(b)
}

/// Transforms one point to the grid CRS. Blocking (GDAL).
fn point_to_grid(grid: &GridSpec, xy: [f64; 2], crs_def: &str) -> Result<(f64, f64)> {
    let (mut x, mut y) = ([xy[0]], [xy[1]]);
    crs::cached(("bbox_crs", crs_def), ("grid.crs", &grid.crs))?.transformer.transform(&mut x, &mut y);
    if !(x[0].is_finite() && y[0].is_finite()) {
        return Err(Error::invalid("point", xy, &format!("cannot be transformed from {crs_def} to the grid's CRS")));
    }
    Ok((x[0], y[0]))
}

/// Resolves a query against the catalog. Blocking (GDAL for bbox/point).
pub fn plan(warehouse: &Arc<Warehouse>, spec: QuerySpec) -> Result<Answer> {
    let store = warehouse.collection(&spec.collection)?;
    let Some(target) = spec.steps.into.clone() else { return plan_in(store, spec) };
    warehouse.local_only("storing a query's answer (into)")?;
    if target == spec.collection {
        return Err(Error::invalid("into", &target, "is the collection queried: store the answer under another name"));
    }
    let source = if let Some(l) = &spec.load {
        let meta = &store.meta;
        let crs_def = l.output.crs.clone().unwrap_or_else(|| meta.grid.crs.clone());
        let (rx, ry) = l.output.resolution.unwrap_or((meta.grid.pixel_size, meta.grid.pixel_size));
        let grid = into::output_grid(&crs_def, rx, ry)?;
        let outputs = Arc::new(Outputs::resolve(meta, &spec)?);
        let tile_px = grid.tile_px as u64;
        into::Source::Load { load: Box::new(load::plan(store, spec, outputs, Some(tile_px))?), grid }
    } else {
        match plan_in(store, spec)? {
            Answer::Reduce(reduce) => into::Source::Tiles(Box::new(reduce)),
            _ => return Err(Error::invalid("into", &target, "stores an area's reduce, not a point's")),
        }
    };
    into::check_target(warehouse, &target, &source)?;
    Ok(Answer::Into(Box::new(IntoAnswer { warehouse: warehouse.clone(), target, source })))
}

fn plan_in(store: Arc<CollectionStore>, spec: QuerySpec) -> Result<Answer> {
    let outputs = Arc::new(Outputs::resolve(&store.meta, &spec)?);
    let bands: Vec<Band> = outputs.inputs.clone();
    if spec.load.is_some() {
        return Ok(Answer::Load(Box::new(load::plan(store, spec, outputs, None)?)));
    }
    let grid = store.meta.grid_spec();
    let mut point = None;
    let tiles = match &spec.area {
        Area::All => TileFilter::All,
        Area::Tiles(t) => TileFilter::Set(t.iter().copied().collect()),
        Area::BBox { bbox, crs } => TileFilter::Range(grid.tiles_in(bbox_to_grid(&grid, *bbox, crs)?)),
        Area::Point { xy, crs } => {
            let (x, y) = point_to_grid(&grid, *xy, crs)?;
            let tile = grid.tile_of(x, y);
            let (col, row) = grid.pixel_of(tile, x, y).ok_or_else(|| Error::invalid("point", xy, "falls on no pixel of the grid"))?;
            point = Some(row as usize * grid.tile_px as usize + col as usize);
            TileFilter::Set([tile].into())
        }
    };
    let names: HashSet<&str> = bands.iter().map(|b| b.name.as_str()).collect();
    let (start, end) = (spec.start_ms, spec.end_ms);
    let chunks = store
        .chunks_at(spec.as_of, |k| {
            names.contains(k.band.as_str()) && tiles.keeps(k.tile) && start.is_none_or(|s| k.month.end_ms() > s) && end.is_none_or(|e| k.month.start_ms() < e)
        })?
        .into_iter()
        .filter(|(_, e)| e.count_in(start, end) > 0)
        .collect();
    let selection = Selection { store, spec, bands, chunks };
    if point.is_none() && outputs.steps.reduce.is_some() {
        return Ok(Answer::Reduce(ReduceAnswer::new(selection, outputs)));
    }
    let steps = (outputs.steps.any() || outputs.steps.reduce.is_some()).then_some(outputs);
    Ok(match (point, steps) {
        (Some(index), steps) => Answer::Point(PointAnswer { selection, index, outputs: steps }),
        (None, Some(outputs)) => Answer::Steps(StepsAnswer { selection, out: outputs }),
        (None, None) => Answer::Chunks(ChunkAnswer { selection }),
    })
}

/// One data type for the `pixels` column of a multi-band stream.
fn common_dtype(bands: &[Band]) -> Result<DType> {
    let first = bands.first().map(|b| b.dtype).ok_or_else(|| Error::invalid("bands", "[]", "the collection has no bands"))?;
    if let Some(other) = bands.iter().find(|b| b.dtype != first) {
        return Err(Error::invalid(
            "bands",
            bands.iter().map(|b| format!("{}:{}", b.name, b.dtype.name())).collect::<Vec<_>>().join(","),
            &format!(
                "one stream holds one pixel type; {} is {} but {} is {}: query them separately",
                bands[0].name,
                first.name(),
                other.name,
                other.dtype.name()
            ),
        ));
    }
    Ok(first)
}
