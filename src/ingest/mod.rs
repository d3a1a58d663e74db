//! DoPut ingest: decode the raster stream -> validate -> warp onto every tile
//! the raster touches -> append the scene (`docs/protocol.md`, ingest).
//!
//! The scene is planned from its geometry before any pixel arrives: the
//! tiles it touches, each with the source rows it needs. The async side
//! checks each record batch and copies its rows into the raster buffer
//! ([`rows`]); as soon as a tile's rows are all in, the tile is warped on
//! the bounded warp pool while later rows still stream, and one blocking
//! task appends the warped tiles and commits the scene once the stream has
//! ended cleanly. A failed or cut stream commits nothing.
//!
//! The raster buffer holds the whole raster (rows are not let go once every
//! tile that reads them is warped); it is bounded by `max_raster_bytes`.

mod rows;

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, ArrowPrimitiveType, BooleanArray, PrimitiveArray, RecordBatch};
use arrow_buffer::{BooleanBuffer, ScalarBuffer};
use arrow_schema::DataType;
use futures::{Stream, StreamExt};

use crate::collection::{Collection, DType, Resampling};
use crate::counters::Counters;
use crate::crs;
use crate::error::{Error, Result};
use crate::grid::{GridSpec, TileId};
use crate::sample::Sample;
use crate::storage::{AppendOutcome, CollectionStore, Encoded, Observation, SceneCommit, SceneStatus, Step, Warehouse};
use crate::warp::{self, SourceGeometry};
use crate::wire::IngestSpec;
use crate::with_arrow_type;
use rows::{Rows, RowsWriter};

/// Limits and resources for ingest.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Largest accepted raster, in bytes of pixel data over all bands.
    pub max_raster_bytes: u64,
    /// Most tiles one raster may touch.
    pub max_tiles: u64,
    /// New ingests are refused below this many free bytes in the warehouse.
    pub min_free_bytes: u64,
    /// Threads warping the tiles of one scene.
    pub warp_threads: usize,
    /// When a tile goes to the warp pool.
    pub dispatch: TileDispatch,
}

/// When a tile of a streaming raster goes to the warp pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TileDispatch {
    /// Once the rows its outline needs (estimated) have arrived.
    #[default]
    WhenRowsArrive,
    /// At once, before any row: each tile finds its rows missing, is put
    /// aside and warped after the stream. Slower; it makes the put-aside
    /// path run on every tile (tests use it).
    AtOnce,
}

/// The answer to a DoPut (PutResult app_metadata, `docs/protocol.md`).
pub use pixelquery_proto::json::PutSummary;

/// A band of the incoming raster matched to the collection's band.
#[derive(Debug, Clone)]
struct PlannedBand {
    name: String,
    /// The type the collection stores (values are widened to it).
    dtype: DType,
    /// The type the stream carries, as declared in the request.
    sent: DType,
    nodata: Option<f64>,
    resampling: Resampling,
}

/// Checks the request against its collection (band names and types).
fn plan_bands(spec: &IngestSpec, coll: &Collection) -> Result<Vec<PlannedBand>> {
    spec.bands
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let stored = coll.band(&b.name).ok_or_else(|| {
                let known: Vec<&str> = coll.bands.iter().map(|b| b.name.as_str()).collect();
                Error::invalid(&format!("bands[{i}].name"), &b.name, &format!("no such band in collection {:?}; it has {}", coll.name, known.join(", ")))
            })?;
            if !b.dtype.widens_to(stored.dtype) {
                return Err(Error::invalid(
                    &format!("bands[{i}].dtype"),
                    b.dtype.name(),
                    &format!(
                        "collection {:?} stores band {} as {}, which does not hold every {} value (only types it holds without loss are widened)",
                        coll.name,
                        b.name,
                        stored.dtype.name(),
                        b.dtype.name()
                    ),
                ));
            }
            Ok(PlannedBand {
                name: b.name.clone(),
                dtype: stored.dtype,
                sent: b.dtype,
                nodata: b.nodata.or(stored.nodata),
                resampling: b.resampling.unwrap_or(stored.resampling),
            })
        })
        .collect()
}

/// The raster as it streams in, shared with the warp jobs.
struct Raster {
    width: usize,
    /// One `Rows<T::Native>` per band, in the request's band order.
    bands: Vec<Arc<dyn Any + Send + Sync>>,
    /// Per band, validity from the `valid` column and the band's nulls:
    /// made at the first batch that has either (earlier rows are valid).
    valid: Vec<OnceLock<Arc<Rows<bool>>>>,
    late: Mutex<Late>,
    /// Set when the scene will not be committed: jobs not started skip.
    stop: AtomicBool,
    /// Values received in every band, stored after the band buffers.
    published: AtomicUsize,
}

/// Whether the stream has ended whole, and the tiles put aside because
/// their rows were not all in when they ran (see [`run_tile`]).
#[derive(Default)]
struct Late {
    ended: bool,
    tiles: Vec<usize>,
}

impl Raster {
    fn late(&self) -> std::sync::MutexGuard<'_, Late> {
        self.late.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whole rows received so far (every band's values and validity).
    fn rows(&self) -> usize {
        self.published.load(Ordering::Acquire) / self.width.max(1)
    }
}

/// Receives the raster rows, checking every batch as it arrives and
/// copying its values into the [`Raster`], so the stream's messages are let
/// go at once and the raster is held once.
struct Receiver<'a> {
    spec: &'a IngestSpec,
    bands: &'a [PlannedBand],
    raster: Arc<Raster>,
    /// One `RowsWriter<T::Native>` per band.
    writers: Vec<Box<dyn Any + Send>>,
    valid_writers: Vec<Option<RowsWriter<bool>>>,
    /// Whether the batches carry a `valid` column (decided by the first).
    valid_column: Option<bool>,
    values: u64,
    batches: usize,
}

impl<'a> Receiver<'a> {
    fn new(spec: &'a IngestSpec, bands: &'a [PlannedBand]) -> Self {
        let total = spec.width as usize * spec.height as usize;
        let mut columns: Vec<Arc<dyn Any + Send + Sync>> = Vec::new();
        let mut writers: Vec<Box<dyn Any + Send>> = Vec::new();
        for b in bands {
            with_arrow_type!(b.dtype, T => {
                let (rows, writer) = Rows::<<T as ArrowPrimitiveType>::Native>::with_capacity(total);
                columns.push(rows);
                writers.push(Box::new(writer));
            });
        }
        let raster = Raster {
            width: spec.width as usize,
            bands: columns,
            valid: bands.iter().map(|_| OnceLock::new()).collect(),
            late: Mutex::default(),
            stop: AtomicBool::new(false),
            published: AtomicUsize::new(0),
        };
        Self { spec, bands, raster: Arc::new(raster), writers, valid_writers: bands.iter().map(|_| None).collect(), valid_column: None, values: 0, batches: 0 }
    }

    /// Checks a batch whole, then appends its rows.
    fn push(&mut self, batch: &RecordBatch) -> Result<()> {
        // Batches should hold whole rows, but Flight encoders may split a
        // large batch anywhere, so only the running total is checked here.
        let total = self.spec.width as u64 * self.spec.height as u64;
        let n = batch.num_rows() as u64;
        let field = format!("stream batch {}", self.batches);
        if self.values + n > total {
            return Err(Error::invalid(
                &field,
                format!("{} values so far", self.values + n),
                &format!("more values than width x height = {} x {} = {total}", self.spec.width, self.spec.height),
            ));
        }
        let mut columns = Vec::with_capacity(self.bands.len());
        for b in self.bands {
            let col = batch.column_by_name(&b.name).ok_or_else(|| {
                let have: Vec<String> = batch.schema().fields().iter().map(|f| f.name().clone()).collect();
                Error::invalid(&format!("column {}", b.name), have.join(", "), "missing band column: one column per band, named as the band")
            })?;
            if col.data_type() != &b.sent.arrow() {
                return Err(Error::invalid(&format!("column {}", b.name), col.data_type(), &format!("expected {} values as declared in bands", b.sent.name())));
            }
            if b.sent == b.dtype {
                columns.push(col.clone());
            } else {
                // Widened to the stored type (lossless: `plan_bands` checked).
                columns.push(arrow_cast::cast(col, &b.dtype.arrow()).map_err(Error::arrow(format!("widening band {}", b.name)))?);
            }
        }
        let valid = match batch.column_by_name("valid") {
            Some(v) if v.data_type() != &DataType::Boolean => return Err(Error::invalid("column valid", v.data_type(), "expected a boolean column")),
            Some(v) => Some(v.as_boolean()),
            None => None,
        };
        match (self.valid_column, valid.is_some()) {
            (Some(true), false) => return Err(Error::invalid("column valid", &field, "present in earlier batches but missing here")),
            (Some(false), true) => return Err(Error::invalid("column valid", &field, "missing in earlier batches")),
            _ => self.valid_column = Some(valid.is_some()),
        }
        if let Some(extra) = batch.schema().fields().iter().find(|f| f.name() != "valid" && !self.bands.iter().any(|b| &b.name == f.name())) {
            return Err(Error::invalid(&format!("column {}", extra.name()), "", "not a band of this request (list it in bands) nor `valid`"));
        }
        self.batches += 1;
        let capacity = total as usize;
        let before = self.values as usize;
        for (i, (b, col)) in self.bands.iter().zip(columns).enumerate() {
            // Validity first: a tile's job reads it once the band's values
            // for its rows are in.
            if self.valid_writers[i].is_none() && (valid.is_some() || col.null_count() > 0) {
                let (rows, mut writer) = Rows::<bool>::with_capacity(capacity);
                writer.fill(true, before);
                let _ = self.raster.valid[i].set(rows);
                self.valid_writers[i] = Some(writer);
            }
            if let Some(w) = &mut self.valid_writers[i] {
                let flags: Vec<bool> = (0..col.len()).map(|j| valid.is_none_or(|v| v.is_valid(j) && v.value(j)) && col.is_valid(j)).collect();
                w.extend(&flags);
            }
            with_arrow_type!(b.dtype, T => {
                let writer = self.writers[i].downcast_mut::<RowsWriter<<T as ArrowPrimitiveType>::Native>>().ok_or_else(|| Error::Internal("band buffer of another type".into()))?;
                if !writer.extend(col.as_primitive::<T>().values()) {
                    return Err(Error::Internal("raster buffer overflow".into()));
                }
            });
        }
        self.values += n;
        self.raster.published.store(self.values as usize, Ordering::Release);
        Ok(())
    }

    /// Checks that the stream held exactly the declared rows.
    fn finish(&self) -> Result<()> {
        if self.batches == 0 {
            return Err(Error::invalid("stream", "0 record batches", "the DoPut stream held no raster rows"));
        }
        let width = self.spec.width as u64;
        if self.values != width * self.spec.height as u64 {
            return Err(Error::invalid(
                "stream",
                format!("{} values ({} rows)", self.values, self.values / width),
                &format!("expected height = {} rows of width = {}", self.spec.height, self.spec.width),
            ));
        }
        Ok(())
    }
}

/// MiB of raster buffers all ingests may hold at once: half the machine's
/// memory (4 GiB where it cannot be read). `--max-raster-mb` bounds one
/// raster; this bounds their sum, so concurrent puts cannot together take
/// more memory than the machine has.
fn raster_budget() -> &'static Arc<tokio::sync::Semaphore> {
    static BUDGET: OnceLock<Arc<tokio::sync::Semaphore>> = OnceLock::new();
    BUDGET.get_or_init(|| {
        let total_kib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| m.lines().find(|l| l.starts_with("MemTotal:"))?.split_whitespace().nth(1)?.parse::<u64>().ok());
        let mib = total_kib.map_or(4096, |k| (k / 1024 / 2).max(256));
        Arc::new(tokio::sync::Semaphore::new(mib.min(tokio::sync::Semaphore::MAX_PERMITS as u64) as usize))
    })
}

/// Takes `bytes` of raster buffer (in whole MiB) from `budget` for as long
/// as the permit lives, or refuses with `ResourceExhausted` at once.
fn take_raster_budget(budget: &Arc<tokio::sync::Semaphore>, bytes: u64) -> Result<tokio::sync::OwnedSemaphorePermit> {
    let mib = bytes.div_ceil(1 << 20).clamp(1, u32::MAX as u64) as u32;
    budget.clone().try_acquire_many_owned(mib).map_err(|_| {
        Error::Exhausted(format!(
            "this raster needs {mib} MiB of buffer and only {} MiB of the server's budget for raster buffers (half its memory) are free while other rasters are ingested; retry later or send smaller rasters",
            budget.available_permits()
        ))
    })
}

/// Runs a whole DoPut: `stream` yields the raster's record batches.
pub async fn ingest<S>(warehouse: Arc<Warehouse>, opts: IngestOptions, spec: IngestSpec, mut stream: S) -> Result<PutSummary>
where
    S: Stream<Item = Result<RecordBatch>> + Unpin,
{
    let started = Instant::now();
    let store = warehouse.collection(&spec.collection)?;
    if let Some(free) = warehouse.free_bytes().filter(|f| *f < opts.min_free_bytes) {
        return Err(Error::Exhausted(format!(
            "the warehouse's file system has {} MiB free, under the server's --min-free-mb of {}: new ingests are refused until scenes are deleted (reads and deletes work)",
            free >> 20,
            opts.min_free_bytes >> 20
        )));
    }
    let bands = plan_bands(&spec, &store.meta)?;
    let raster_bytes: u64 = bands.iter().map(|b| b.dtype.size() as u64).sum::<u64>() * spec.width as u64 * spec.height as u64;
    if raster_bytes > opts.max_raster_bytes {
        return Err(Error::invalid(
            "width/height",
            (spec.width, spec.height),
            &format!("raster of {raster_bytes} bytes exceeds the server limit of {} bytes", opts.max_raster_bytes),
        ));
    }
    let _raster = take_raster_budget(raster_budget(), raster_bytes)?;
    // Another scene under this id is refused here, before any pixel is
    // read, unless this one replaces it (atomically, at its commit).
    if store.check_scene(&spec.scene_id, spec.acquired_at_ms, spec.fingerprint.as_deref(), spec.replace)? == SceneStatus::Retry {
        // A retry of an acknowledged scene: read the stream to its end so the
        // client's writes complete, keep nothing (the CRS is still checked).
        let (crs_def, grid_wkt) = (spec.crs.clone(), store.meta.grid.crs_wkt.clone());
        tokio::task::spawn_blocking(move || crs::cached(("crs", &crs_def), ("grid.crs", &grid_wkt)).map(|_| ()))
            .await
            .map_err(|e| Error::Internal(e.to_string()))??;
        while let Some(b) = stream.next().await {
            b?;
        }
        return Ok(summary(&spec, AppendOutcome { duplicate: true, ..Default::default() }, started));
    }
    // Plan from the geometry before reading any pixel, so a bad CRS or
    // geotransform fails fast.
    let plan = {
        let (spec, bands, store, opts, counters) = (spec.clone(), bands.clone(), store.clone(), opts.clone(), warehouse.counters.clone());
        tokio::task::spawn_blocking(move || Plan::new(spec, bands, &store, &opts, counters)).await.map_err(|e| Error::Internal(e.to_string()))??
    };
    let plan = Arc::new(plan);
    let mut rx = Receiver::new(&spec, &bands);
    // Unbounded: a warp job never waits on the commit task. (A bounded
    // channel could fill while its commit task waits for the collection's
    // writer held by another large scene, whose tiles then could not be
    // warped by the blocked pool threads.) The commit task drains it as the
    // tiles come; it grows only while the task waits for the writer.
    let (tx, results) = mpsc::channel();
    let commit = {
        let (plan, store, raster) = (plan.clone(), store.clone(), rx.raster.clone());
        tokio::task::spawn_blocking(move || {
            let t0 = Instant::now();
            let outcome = commit_as_warped(&plan, &raster, results, &store);
            tracing::debug!(commit_ms = t0.elapsed().as_millis() as u64, "scene warped and committed after the last row");
            store.maybe_snapshot_in_background();
            outcome
        })
    };
    let mut dispatch = Dispatch { plan: plan.clone(), raster: rx.raster.clone(), tx: Some(tx), next: 0, pool: warp_pool(opts.warp_threads) };
    // Ok(true): the commit task ended before the stream did.
    let streamed: Result<bool> = async {
        while let Some(batch) = stream.next().await {
            rx.push(&batch?)?;
            dispatch.ready(rx.raster.rows());
            if commit.is_finished() {
                return Ok(true);
            }
        }
        rx.finish().map(|_| false)
    }
    .await;
    tracing::debug!(receive_ms = started.elapsed().as_millis() as u64, "raster received");
    let joined = |r: std::result::Result<Result<AppendOutcome>, tokio::task::JoinError>| r.map_err(|e| Error::Internal(format!("ingest task failed: {e}")))?;
    match streamed {
        Err(e) => {
            drop(dispatch);
            let _ = commit.await;
            Err(e)
        }
        Ok(true) => {
            // An error, or the scene was committed by another stream
            // meanwhile: then read this one to its end, keeping nothing.
            drop(dispatch);
            let outcome = joined(commit.await)?;
            while let Some(b) = stream.next().await {
                b?;
            }
            Ok(summary(&spec, outcome, started))
        }
        Ok(false) => {
            dispatch.finish();
            Ok(summary(&spec, joined(commit.await)?, started))
        }
    }
}

fn summary(spec: &IngestSpec, o: AppendOutcome, started: Instant) -> PutSummary {
    PutSummary {
        scene_id: spec.scene_id.clone(),
        tiles: o.tiles.iter().map(|t| t.to_string()).collect(),
        observations: o.observations,
        bytes: o.bytes,
        elapsed_ms: started.elapsed().as_millis() as u64,
        duplicate: o.duplicate,
    }
}

/// The warp threads: made once and kept, so the per-thread PROJ state GDAL
/// builds is made once per thread, not once per scene (threads made per
/// scene leaked about 300 KiB each: the load test's resident memory grew
/// from 385 to 867 MiB in 60 s of writes). Sized by the first caller.
fn warp_pool(threads: usize) -> &'static crate::pool::Pool {
    static POOL: OnceLock<crate::pool::Pool> = OnceLock::new();
    POOL.get_or_init(|| crate::pool::Pool::try_new("warp", threads).expect("starting the warp threads"))
}

/// A scene planned from its request alone: its geometry and the tiles it
/// touches, with the source rows each needs.
struct Plan {
    spec: IngestSpec,
    bands: Vec<PlannedBand>,
    src: SourceGeometry,
    grid: GridSpec,
    placement: warp::Placement,
    /// Bilinear and cubic kernel scales, one for the whole scene.
    scale: (f64, f64),
    tiles: Vec<TileId>,
    /// Indexes into `tiles`, by the rows they need (estimated).
    order: Vec<usize>,
    rows_estimate: Vec<usize>,
    counters: Arc<Counters>,
    /// The collection, for encoding the warped tiles' chunk bytes.
    meta: Collection,
}

impl Plan {
    fn new(spec: IngestSpec, bands: Vec<PlannedBand>, store: &CollectionStore, opts: &IngestOptions, counters: Arc<Counters>) -> Result<Self> {
        let src = SourceGeometry::try_new(spec.width as usize, spec.height as usize, spec.geotransform)
            .ok_or_else(|| Error::invalid("geotransform", spec.geotransform, "not invertible"))?;
        let grid = store.meta.grid_spec();
        let forward = crs::cached(("crs", &spec.crs), ("grid.crs", &grid.crs))?;
        let back = crs::cached(("grid.crs", &grid.crs), ("crs", &spec.crs))?;
        let (to_grid, same_crs, to_source) = (&forward.transformer, forward.same_crs, &back.transformer);
        let range = warp::footprint_tiles(&src, &grid, to_grid);
        // A raster on the grid's lattice is copied; one in the grid's CRS is
        // resampled separably.
        let placement = warp::placement(&src, &grid, same_crs);
        if range.len() > opts.max_tiles {
            return Err(Error::invalid(
                "geotransform",
                spec.geotransform,
                &format!("the raster touches {} tiles, more than the limit of {}", range.len(), opts.max_tiles),
            ));
        }
        let tiles: Vec<TileId> = range.iter().collect();
        let scale = warp::scene_scale(&grid, &src, to_grid, to_source, placement);
        let rows_estimate = warp::tile_rows_estimate(&grid, &tiles, &src, to_source, scale);
        let rows_estimate = match opts.dispatch {
            TileDispatch::WhenRowsArrive => rows_estimate,
            TileDispatch::AtOnce => vec![0; rows_estimate.len()],
        };
        let mut order: Vec<usize> = (0..tiles.len()).collect();
        order.sort_by_key(|&k| rows_estimate[k]);
        Ok(Self { spec, bands, src, grid, placement, scale, tiles, order, rows_estimate, counters, meta: store.meta.clone() })
    }
}

/// One warped tile: its index in the plan and its observations (none when
/// the tile holds no valid pixel).
type Warped = Result<(usize, Vec<Encoded>)>;

/// What the commit task receives: warped tiles, and once the stream has
/// ended whole, the word that it may commit.
enum Progress {
    Tile(Warped),
    StreamEnded,
}

/// Hands tiles to the warp pool as their rows arrive.
struct Dispatch {
    plan: Arc<Plan>,
    raster: Arc<Raster>,
    /// Dropped when no more tiles will be sent, so the commit task sees the
    /// channel close if tiles are missing.
    tx: Option<mpsc::Sender<Progress>>,
    /// Next position in `plan.order`.
    next: usize,
    pool: &'static crate::pool::Pool,
}

impl Dispatch {
    /// Sends every tile whose estimated rows are within the first `rows`.
    fn ready(&mut self, rows: usize) {
        while let Some(&k) = self.plan.order.get(self.next) {
            if self.plan.rows_estimate[k] > rows {
                break;
            }
            self.next += 1;
            self.spawn(k);
        }
    }

    fn spawn(&self, k: usize) {
        let Some(tx) = self.tx.clone() else { return };
        let (plan, raster) = (self.plan.clone(), self.raster.clone());
        self.pool.spawn(move || {
            if let Some(warped) = run_tile(&plan, &raster, k) {
                // The commit task stops listening only after an error.
                let _ = tx.send(Progress::Tile(warped));
            }
        });
    }

    /// The stream ended whole: sends every remaining tile and those put
    /// aside as late.
    fn finish(mut self) {
        self.ready(usize::MAX);
        let late = {
            let mut late = self.raster.late();
            late.ended = true;
            std::mem::take(&mut late.tiles)
        };
        for k in late {
            self.spawn(k);
        }
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Progress::StreamEnded);
        }
    }
}

impl Drop for Dispatch {
    fn drop(&mut self) {
        if !self.raster.late().ended {
            // Cut or failed stream: tiles queued but not started skip.
            self.raster.stop.store(true, Ordering::Release);
        }
        self.tx = None;
    }
}

/// Warps every band of tile `k`. `None` when the scene is stopping, or when
/// the tile's rows are not all in yet (its outline's estimate fell short):
/// the tile is then put aside and sent again once the stream has ended.
fn run_tile(plan: &Plan, raster: &Raster, k: usize) -> Option<Warped> {
    if raster.stop.load(Ordering::Acquire) {
        return None;
    }
    let work = || -> Result<Option<Vec<Encoded>>> {
        let (spec, grid) = (&plan.spec, &plan.grid);
        let with_corners = plan.bands.iter().any(|b| b.resampling.needs_footprint());
        let to_source = crs::cached(("grid.crs", &grid.crs), ("crs", &spec.crs))?;
        let coords = warp::tile_coords(grid, plan.tiles[k], &plan.src, &to_source.transformer, with_corners, plan.placement, plan.scale);
        if !coords.touches {
            return Ok(Some(Vec::new()));
        }
        let needed = coords.rows_needed(plan.src.height);
        let streaming = {
            let mut late = raster.late();
            // Once the stream has ended every row is in.
            if !late.ended && needed > raster.rows() {
                late.tiles.push(k);
                plan.counters.tiles_put_aside.fetch_add(1, Ordering::Relaxed);
                return Ok(None);
            }
            !late.ended
        };
        let mut obs = Vec::new();
        for (band, (pixels, mask)) in plan.bands.iter().zip(resample_bands(plan, raster, &coords)?) {
            if mask.true_count() > 0 {
                // Encoded here, off the collection's writer and while rows
                // still stream in, so the commit only writes and syncs.
                let observation = Observation { tile: plan.tiles[k], band: band.name.clone(), pixels, mask };
                obs.push(Encoded::new(&plan.meta, &spec.scene_id, spec.acquired_at_ms, observation)?);
            }
        }
        plan.counters.tiles_warped.fetch_add(1, Ordering::Relaxed);
        if streaming {
            plan.counters.tiles_warped_while_streaming.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Some(obs))
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
        Ok(Ok(Some(obs))) => Some(Ok((k, obs))),
        Ok(Ok(None)) => None,
        Ok(Err(e)) => Some(Err(e)),
        Err(_) => Some(Err(Error::Internal("a warp job panicked".into()))),
    }
}

/// Receives the warped tiles and hands them to the scene's commit
/// ([`SceneCommit`] holds the writer policy); commits only once the stream
/// has ended whole and every tile came back.
fn commit_as_warped(plan: &Plan, raster: &Raster, results: mpsc::Receiver<Progress>, store: &CollectionStore) -> Result<AppendOutcome> {
    let stop = |e: Error| {
        raster.stop.store(true, Ordering::Release);
        e
    };
    let spec = &plan.spec;
    let total = plan.tiles.len();
    let mut commit = SceneCommit::new(store, &spec.scene_id, spec.acquired_at_ms, spec.fingerprint.as_deref(), spec.replace, total, plan.counters.clone())
        .with_baseline(spec.baseline.clone());
    let cut_short = || stop(Error::Internal("the raster stream ended before its last row".into()));
    let (mut tiles, mut ended) = (0, false);
    while tiles < total || !ended {
        let next = match commit.wait_limit() {
            Some(limit) => match results.recv_timeout(limit) {
                Ok(p) => Some(p),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err(cut_short()),
            },
            None => Some(results.recv().map_err(|_| cut_short())?),
        };
        let step = match next {
            Some(Progress::Tile(warped)) => {
                tiles += 1;
                let (k, observations) = warped.map_err(stop)?;
                commit.add(k, observations).map_err(stop)?
            }
            Some(Progress::StreamEnded) => {
                ended = true;
                commit.poll().map_err(stop)?
            }
            None => commit.poll().map_err(stop)?,
        };
        if step == Step::Duplicate {
            raster.stop.store(true, Ordering::Release);
            return Ok(AppendOutcome { duplicate: true, ..Default::default() });
        }
    }
    let mut outcome = commit.commit()?;
    if outcome.duplicate {
        return Ok(outcome);
    }
    let position: HashMap<TileId, usize> = plan.tiles.iter().enumerate().map(|(k, t)| (*t, k)).collect();
    outcome.tiles.sort_by_key(|t| position.get(t).copied().unwrap_or(usize::MAX));
    Ok(outcome)
}

/// Every band of the scene warped onto one tile, in band order: together
/// where they share a type and a resampling (`warp::resample_bands` then
/// computes positions and weights once), else one by one.
fn resample_bands(plan: &Plan, raster: &Raster, coords: &warp::TileCoords) -> Result<Vec<(ArrayRef, BooleanArray)>> {
    let Some(first) = plan.bands.first() else { return Ok(Vec::new()) };
    let alike = plan.bands.iter().all(|b| b.dtype == first.dtype && b.resampling == first.resampling);
    let all = 0..plan.bands.len();
    let groups: Vec<std::ops::Range<usize>> = if alike { std::iter::once(all).collect() } else { all.map(|b| b..b + 1).collect() };
    let mut out = Vec::with_capacity(plan.bands.len());
    for group in groups {
        let dtype = plan.bands[group.start].dtype;
        with_arrow_type!(dtype, T => out.extend(resample_group::<T>(plan, raster, coords, group)?));
    }
    Ok(out)
}

/// Bands `group` (one type and resampling) warped onto one tile.
fn resample_group<T: ArrowPrimitiveType>(
    plan: &Plan,
    raster: &Raster,
    coords: &warp::TileCoords,
    group: std::ops::Range<usize>,
) -> Result<Vec<(ArrayRef, BooleanArray)>>
where
    T::Native: Sample,
{
    let mut sources = Vec::with_capacity(group.len());
    let mut fills = Vec::with_capacity(group.len());
    for b in group.clone() {
        let rows = raster.bands[b].downcast_ref::<Rows<T::Native>>().ok_or_else(|| Error::Internal("band buffer of another type".into()))?;
        let nodata = plan.bands[b].nodata.map(T::Native::from_f64);
        let valid = raster.valid[b].get().map(|v| v.filled());
        sources.push(warp::SourceBand { values: rows.filled(), nodata, valid, width: plan.src.width, height: plan.src.height });
        fills.push(nodata.unwrap_or_else(|| T::Native::from_f64(0.0)));
    }
    let resampling = plan.bands[group.start].resampling;
    Ok(warp::resample_bands(&sources, coords, resampling, &fills)
        .into_iter()
        .map(|(out, mask)| {
            let pixels: ArrayRef = Arc::new(PrimitiveArray::<T>::new(ScalarBuffer::from(out), None));
            (pixels, BooleanArray::new(pack_mask(&mask), None))
        })
        .collect())
}

/// Packs flags into a bitmap (bit `i` of byte `i / 8` is flag `i`), eight at
/// a time: a `bool` is one byte 0 or 1, so multiplying eight of them read
/// as a little-endian u64 by 0x0102_0408_1020_4080 gathers their bits in
/// the top byte, flag 0 lowest (bit by bit was a twentieth of a raw DoPut's
/// CPU).
fn pack_mask(mask: &[bool]) -> BooleanBuffer {
    let mut bytes = Vec::with_capacity(mask.len().div_ceil(8));
    let chunks = mask.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        let word = u64::from_le_bytes(std::array::from_fn(|k| c[k] as u8));
        bytes.push((word.wrapping_mul(0x0102_0408_1020_4080) >> 56) as u8);
    }
    if !rest.is_empty() {
        bytes.push(rest.iter().enumerate().fold(0u8, |b, (k, f)| b | ((*f as u8) << k)));
    }
    BooleanBuffer::new(arrow_buffer::Buffer::from_vec(bytes), 0, mask.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::UInt16Array;

    #[test]
    fn masks_pack_into_the_bitmap_arrow_would_build() {
        for len in [0, 1, 7, 8, 9, 63, 64, 65, 1000] {
            let mask: Vec<bool> = (0..len).map(|i| (i * 7919 + i / 3) % 5 < 2).collect();
            assert_eq!(pack_mask(&mask), BooleanBuffer::collect_bool(len, |i| mask[i]), "len {len}");
            assert_eq!(pack_mask(&vec![true; len]).count_set_bits(), len);
        }
    }

    /// A collection whose tiles are all sent to the warp pool before any
    /// row arrives ([`TileDispatch::AtOnce`]), so each is put aside and
    /// warped after the stream.
    const SENT_EARLY: &str = "sent_early_test";

    /// Every chunk of `collection`, by path below its tiles directory:
    /// the pixels and mask columns.
    fn chunks(root: &std::path::Path, collection: &str) -> std::collections::BTreeMap<std::path::PathBuf, Vec<(ArrayRef, ArrayRef)>> {
        let tiles = root.join(collection).join("tiles");
        let mut out = std::collections::BTreeMap::new();
        let mut stack = vec![tiles.clone()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let path = e.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let reader = arrow_ipc::reader::StreamReader::try_new(std::fs::File::open(&path).unwrap(), None).unwrap();
                let cols =
                    reader.map(|b| b.unwrap()).map(|b| (b.column_by_name("pixels").unwrap().clone(), b.column_by_name("mask").unwrap().clone())).collect();
                out.insert(path.strip_prefix(&tiles).unwrap().to_path_buf(), cols);
            }
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tiles_sent_before_their_rows_are_put_aside_and_warped_after_the_stream() {
        let dir = tempfile::tempdir().unwrap();
        let warehouse = Arc::new(Warehouse::open(dir.path()).unwrap());
        for name in [SENT_EARLY, "sent_on_time"] {
            let req = format!(r#"{{"name": "{name}", "bands": [{{"name": "red", "dtype": "uint16", "nodata": 0}}], "grid": {{"resolution": 10}}}}"#);
            let meta = crate::wire::build_collection(crate::wire::decode_create_collection(req.as_bytes()).unwrap()).unwrap();
            warehouse.create_collection(meta).unwrap();
        }
        let size = 600;
        let values: Vec<u16> = (0..size * size).map(|i| if (i / size) % 41 == 7 { 0 } else { (i * 13 % 3000) as u16 + 1 }).collect();
        for name in [SENT_EARLY, "sent_on_time"] {
            let dispatch = if name == SENT_EARLY { TileDispatch::AtOnce } else { TileDispatch::WhenRowsArrive };
            let opts = IngestOptions { max_raster_bytes: 1 << 30, max_tiles: 10_000, min_free_bytes: 0, warp_threads: 2, dispatch };
            let req = format!(
                r#"{{"collection": "{name}", "scene_id": "s", "acquired_at": "2024-06-15T02:03:04Z", "crs": "EPSG:32652", "geotransform": [316000, 10, 0, 4160000, 0, -10], "width": {size}, "height": {size}, "bands": [{{"name": "red", "dtype": "uint16", "nodata": 0}}], "resampling": "bilinear"}}"#
            );
            let spec = crate::wire::decode_ingest(req.as_bytes()).unwrap();
            let schema = Arc::new(arrow_schema::Schema::new(vec![arrow_schema::Field::new("red", DataType::UInt16, false)]));
            let batches: Vec<Result<RecordBatch>> = values
                .chunks(50 * size)
                .map(|c| Ok(RecordBatch::try_new(schema.clone(), vec![Arc::new(UInt16Array::from(c.to_vec())) as ArrayRef]).unwrap()))
                .collect();
            // Rows come slower than the tiles are sent.
            let slow = Box::pin(futures::stream::iter(batches).then(|b| async move {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                b
            }));
            let put = ingest(warehouse.clone(), opts.clone(), spec, slow).await.unwrap();
            assert!(put.observations > 4, "{put:?}");
        }
        let aside = warehouse.counters.tiles_put_aside.load(Ordering::Relaxed);
        assert!(aside > 0, "the early collection's tiles were put aside");
        let (early, on_time) = (chunks(dir.path(), SENT_EARLY), chunks(dir.path(), "sent_on_time"));
        assert_eq!(early.keys().collect::<Vec<_>>(), on_time.keys().collect::<Vec<_>>());
        assert!(early == on_time, "the same pixels either way");
    }

    #[test]
    fn raster_buffers_in_flight_stay_within_the_budget() {
        let budget = Arc::new(tokio::sync::Semaphore::new(100));
        let first = take_raster_budget(&budget, 60 << 20).unwrap();
        let refused = take_raster_budget(&budget, 50 << 20).unwrap_err();
        assert!(matches!(refused, Error::Exhausted(ref m) if m.contains("50 MiB")), "{refused}");
        // A small raster still fits; one let go makes room for the other.
        let small = take_raster_budget(&budget, 1).unwrap();
        drop(first);
        let _second = take_raster_budget(&budget, 50 << 20).unwrap();
        drop(small);
        assert!(raster_budget().available_permits() >= 256);
    }
}
