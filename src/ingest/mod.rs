//! DoPut ingest: decode the raster stream -> validate -> warp onto every tile
//! the raster touches -> append the scene (DESIGN §3).
//!
//! The async side moves record batches and checks them as they arrive; the
//! warp and the file IO run in one blocking task, which spreads tiles over a
//! bounded number of threads (each with its own GDAL objects).
//!
//! The trunk keeps the whole source raster in memory until the stream ends;
//! the row-streaming warp that bounds memory by a few tile rows comes later.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow_array::cast::AsArray;
use arrow_array::builder::{ArrayBuilder, PrimitiveBuilder};
use arrow_array::{Array, ArrayRef, ArrowPrimitiveType, BooleanArray, PrimitiveArray, RecordBatch};
use arrow_buffer::ScalarBuffer;
use arrow_schema::DataType;
use futures::{Stream, StreamExt};

use crate::collection::{Collection, DType, Resampling};
use crate::error::{Error, Result};
use crate::grid::{GridSpec, TileId};
use crate::storage::{AppendOutcome, CollectionStore, Observation, Warehouse};
use crate::warp::{self, crs, Sample, SourceGeometry};
use crate::wire::IngestSpec;
use crate::with_arrow_type;

/// Limits and resources for ingest.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Largest accepted raster, in bytes of pixel data over all bands.
    pub max_raster_bytes: u64,
    /// Most tiles one raster may touch.
    pub max_tiles: u64,
    /// Threads warping the tiles of one scene.
    pub warp_threads: usize,
}

/// The answer to a DoPut (PutResult app_metadata, DESIGN §4a).
pub use pixelquery_proto::json::PutSummary;

/// A band of the incoming raster matched to the collection's band.
#[derive(Debug, Clone)]
struct PlannedBand {
    name: String,
    dtype: DType,
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
            if stored.dtype != b.dtype {
                return Err(Error::invalid(&format!("bands[{i}].dtype"), b.dtype.name(), &format!("collection {:?} stores band {} as {}", coll.name, b.name, stored.dtype.name())));
            }
            Ok(PlannedBand { name: b.name.clone(), dtype: b.dtype, nodata: b.nodata.or(stored.nodata), resampling: b.resampling.unwrap_or(stored.resampling) })
        })
        .collect()
}

/// Receives the raster rows, checking every batch as it arrives. Band
/// values are copied into one growing column per band as they come, so the
/// stream's messages are let go at once and the raster is held once.
struct Receiver<'a> {
    spec: &'a IngestSpec,
    bands: &'a [PlannedBand],
    columns: Vec<Box<dyn ArrayBuilder>>,
    valid: Vec<ArrayRef>,
    values: u64,
    batches: usize,
}

impl<'a> Receiver<'a> {
    fn new(spec: &'a IngestSpec, bands: &'a [PlannedBand]) -> Self {
        let total = spec.width as usize * spec.height as usize;
        let columns = bands.iter().map(|b| with_arrow_type!(b.dtype, T => Box::new(PrimitiveBuilder::<T>::with_capacity(total)) as Box<dyn ArrayBuilder>)).collect();
        Self { spec, bands, columns, valid: Vec::new(), values: 0, batches: 0 }
    }

    fn push(&mut self, batch: &RecordBatch) -> Result<()> {
        // Batches should hold whole rows, but Flight encoders may split a
        // large batch anywhere, so only the running total is checked here.
        let total = self.spec.width as u64 * self.spec.height as u64;
        let n = batch.num_rows() as u64;
        let field = format!("stream batch {}", self.batches);
        self.batches += 1;
        if self.values + n > total {
            return Err(Error::invalid(
                &field,
                format!("{} values so far", self.values + n),
                &format!("more values than width x height = {} x {} = {total}", self.spec.width, self.spec.height),
            ));
        }
        for (i, b) in self.bands.iter().enumerate() {
            let col = batch.column_by_name(&b.name).ok_or_else(|| {
                let have: Vec<String> = batch.schema().fields().iter().map(|f| f.name().clone()).collect();
                Error::invalid(&format!("column {}", b.name), have.join(", "), "missing band column: one column per band, named as the band")
            })?;
            if col.data_type() != &b.dtype.arrow() {
                return Err(Error::invalid(&format!("column {}", b.name), col.data_type(), &format!("expected {} values as declared in bands", b.dtype.name())));
            }
            with_arrow_type!(b.dtype, T => {
                let builder = self.columns[i].as_any_mut().downcast_mut::<PrimitiveBuilder<T>>().ok_or_else(|| Error::Internal("band builder of another type".into()))?;
                builder.append_array(col.as_primitive::<T>());
            });
        }
        if let Some(v) = batch.column_by_name("valid") {
            if v.data_type() != &DataType::Boolean {
                return Err(Error::invalid("column valid", v.data_type(), "expected a boolean column"));
            }
            self.valid.push(v.clone());
        } else if !self.valid.is_empty() {
            return Err(Error::invalid("column valid", &field, "present in earlier batches but missing here"));
        }
        if !self.valid.is_empty() && self.valid.len() != self.batches {
            return Err(Error::invalid("column valid", &field, "missing in earlier batches"));
        }
        if let Some(extra) = batch.schema().fields().iter().find(|f| f.name() != "valid" && !self.bands.iter().any(|b| &b.name == f.name())) {
            return Err(Error::invalid(&format!("column {}", extra.name()), "", "not a band of this request (list it in bands) nor `valid`"));
        }
        self.values += n;
        Ok(())
    }

    fn finish(self) -> Result<Received> {
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
        let columns = self.columns.into_iter().map(|mut b| b.finish()).collect();
        Ok(Received { columns, valid: self.valid })
    }
}

struct Received {
    columns: Vec<ArrayRef>,
    valid: Vec<ArrayRef>,
}

/// Runs a whole DoPut: `stream` yields the raster's record batches.
pub async fn ingest<S>(warehouse: Arc<Warehouse>, opts: IngestOptions, spec: IngestSpec, mut stream: S) -> Result<PutSummary>
where
    S: Stream<Item = Result<RecordBatch>> + Unpin,
{
    let started = Instant::now();
    let store = warehouse.collection(&spec.collection)?;
    let bands = plan_bands(&spec, &store.meta)?;
    let raster_bytes: u64 = bands.iter().map(|b| b.dtype.size() as u64).sum::<u64>() * spec.width as u64 * spec.height as u64;
    if raster_bytes > opts.max_raster_bytes {
        return Err(Error::invalid("width/height", (spec.width, spec.height), &format!("raster of {raster_bytes} bytes exceeds the server limit of {} bytes", opts.max_raster_bytes)));
    }
    // Resolve the CRS before reading any pixels, so a bad CRS fails fast.
    let crs_def = spec.crs.clone();
    let grid_wkt = store.meta.grid.crs_wkt.clone();
    tokio::task::spawn_blocking(move || -> Result<()> {
        let src = crs::spatial_ref("crs", &crs_def)?;
        let dst = crs::spatial_ref("grid.crs", &grid_wkt)?;
        crs::Transformer::new(&src, &dst).map(|_| ())
    })
    .await
    .map_err(|e| Error::Internal(e.to_string()))??;

    if store.has_scene(&spec.scene_id) {
        // A retry of an acknowledged scene: read the stream to its end so the
        // client's writes complete, keep nothing.
        while let Some(b) = stream.next().await {
            b?;
        }
        return Ok(summary(&spec, AppendOutcome { duplicate: true, ..Default::default() }, started));
    }

    let mut rx = Receiver::new(&spec, &bands);
    while let Some(batch) = stream.next().await {
        rx.push(&batch?)?;
    }
    let received = rx.finish()?;
    tracing::debug!(receive_ms = started.elapsed().as_millis() as u64, "raster received");
    let spec2 = spec.clone();
    let outcome = tokio::task::spawn_blocking(move || -> Result<AppendOutcome> {
        let t0 = Instant::now();
        let outcome = warp_and_commit(&spec2, &bands, received, &store, &opts)?;
        tracing::debug!(warp_and_commit_ms = t0.elapsed().as_millis() as u64, "scene committed");
        store.maybe_snapshot_in_background();
        Ok(outcome)
    })
    .await
    .map_err(|e| Error::Internal(format!("ingest task failed: {e}")))??;
    Ok(summary(&spec, outcome, started))
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

fn concat(parts: &[ArrayRef]) -> Result<ArrayRef> {
    if let [one] = parts {
        return Ok(one.clone());
    }
    let refs: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
    arrow_select::concat::concat(&refs).map_err(Error::arrow("joining raster rows"))
}

/// Validity of every source pixel from the `valid` column and a band's nulls.
fn validity(valid: Option<&BooleanArray>, band: &ArrayRef) -> Option<Vec<bool>> {
    if valid.is_none() && band.null_count() == 0 {
        return None;
    }
    Some((0..band.len()).map(|i| valid.is_none_or(|v| v.is_valid(i) && v.value(i)) && band.is_valid(i)).collect())
}

/// The warp threads: made once and kept, so the per-thread PROJ state GDAL
/// builds is made once per thread, not once per scene (threads made per
/// scene leaked about 300 KiB each: the load test's resident memory grew
/// from 385 to 867 MiB in 60 s of writes). Sized by the first caller.
fn warp_pool(threads: usize) -> &'static rayon::ThreadPool {
    static POOL: std::sync::OnceLock<rayon::ThreadPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("warp-{i}"))
            .build()
            .expect("starting the warp threads")
    })
}

/// Tiles a scene touches at most to be warped whole before its commit;
/// larger scenes are warped and appended this many tiles at a time, so the
/// server holds the raster and one group of tiles, not every warped tile.
pub const TILE_GROUP: usize = 256;

/// A received raster, ready to warp: its band columns and validity, its
/// geometry, and the tiles it touches.
struct Scene<'a> {
    spec: &'a IngestSpec,
    bands: &'a [PlannedBand],
    columns: Vec<ArrayRef>,
    validity: Vec<Option<Vec<bool>>>,
    src: SourceGeometry,
    grid: GridSpec,
    placement: warp::Placement,
    /// Bilinear and cubic kernel scales, one for the whole scene.
    scale: (f64, f64),
    tiles: Vec<TileId>,
}

impl<'a> Scene<'a> {
    fn new(spec: &'a IngestSpec, bands: &'a [PlannedBand], received: Received, store: &CollectionStore, opts: &IngestOptions) -> Result<Self> {
        let Received { columns, valid: valid_parts } = received;
        let valid = if valid_parts.is_empty() { None } else { Some(concat(&valid_parts)?) };
        drop(valid_parts);
        let valid = valid.as_ref().map(|v| v.as_boolean().clone());
        let validity: Vec<Option<Vec<bool>>> = columns.iter().map(|c| validity(valid.as_ref(), c)).collect();
        let src = SourceGeometry::try_new(spec.width as usize, spec.height as usize, spec.geotransform)
            .ok_or_else(|| Error::invalid("geotransform", spec.geotransform, "not invertible"))?;
        let grid = store.meta.grid_spec();
        let src_srs = crs::spatial_ref("crs", &spec.crs)?;
        let grid_srs = crs::spatial_ref("grid.crs", &grid.crs)?;
        let to_grid = crs::Transformer::new(&src_srs, &grid_srs)?;
        let range = warp::footprint_tiles(&src, &grid, &to_grid);
        // A raster on the grid's lattice is copied; one in the grid's CRS is
        // resampled separably.
        let placement = warp::placement(&src, &grid, src_srs == grid_srs);
        if range.len() > opts.max_tiles {
            return Err(Error::invalid("geotransform", spec.geotransform, &format!("the raster touches {} tiles, more than the limit of {}", range.len(), opts.max_tiles)));
        }
        let tiles: Vec<TileId> = range.iter().collect();
        let scale = warp::scene_scale(&grid, &src, &to_grid, &crs::Transformer::new(&grid_srs, &src_srs)?, placement);
        Ok(Self { spec, bands, columns, validity, src, grid, placement, scale, tiles })
    }

    /// Warps every band onto `tiles`, in parallel over tiles on the warp
    /// pool; observations in tile order.
    fn warp(&self, tiles: &[TileId], opts: &IngestOptions) -> Result<Vec<Observation>> {
        let (spec, bands, grid, src, placement, scale) = (self.spec, self.bands, &self.grid, &self.src, self.placement, self.scale);
        let next = AtomicUsize::new(0);
        let results: Mutex<Vec<(usize, Vec<Observation>)>> = Mutex::new(Vec::new());
        let threads = opts.warp_threads.clamp(1, tiles.len().max(1));
        let failures: Mutex<Vec<Error>> = Mutex::new(Vec::new());
        warp_pool(opts.warp_threads).scope(|s| {
            for _ in 0..threads {
                s.spawn(|_| {
                    let work = || -> Result<()> {
                        // GDAL objects are made and dropped on this thread.
                        let src_srs = crs::spatial_ref("crs", &spec.crs)?;
                        let grid_srs = crs::spatial_ref("grid.crs", &grid.crs)?;
                        let to_source = crs::Transformer::new(&grid_srs, &src_srs)?;
                        let with_corners = bands.iter().any(|b| b.resampling.needs_footprint());
                        loop {
                            let k = next.fetch_add(1, Ordering::Relaxed);
                            let Some(&tile) = tiles.get(k) else { return Ok(()) };
                            let coords = warp::tile_coords(grid, tile, src, &to_source, with_corners, placement, scale);
                            if !coords.touches {
                                continue;
                            }
                            let mut obs = Vec::new();
                            for (b, band) in bands.iter().enumerate() {
                                let (pixels, mask) = with_arrow_type!(band.dtype, T => {
                                    resample_band::<T>(&self.columns[b], self.validity[b].as_deref(), band, src, &coords)
                                });
                                if mask.true_count() > 0 {
                                    obs.push(Observation { tile, band: band.name.clone(), pixels, mask });
                                }
                            }
                            results.lock().unwrap_or_else(|e| e.into_inner()).push((k, obs));
                        }
                    };
                    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => failures.lock().unwrap_or_else(|e| e.into_inner()).push(e),
                        Err(_) => failures.lock().unwrap_or_else(|e| e.into_inner()).push(Error::Internal("a warp worker panicked".into())),
                    }
                });
            }
        });
        if let Some(e) = failures.into_inner().unwrap_or_else(|e| e.into_inner()).into_iter().next() {
            return Err(e);
        }
        let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
        results.sort_by_key(|(k, _)| *k);
        Ok(results.into_iter().flat_map(|(_, o)| o).collect())
    }
}

/// Warps and commits a received scene. Up to [`TILE_GROUP`] tiles it is
/// warped whole and the collection's writer is taken only to append; a
/// larger scene holds the writer while it is warped and appended group by
/// group (other writers of the collection wait at their append step).
fn warp_and_commit(spec: &IngestSpec, bands: &[PlannedBand], received: Received, store: &CollectionStore, opts: &IngestOptions) -> Result<AppendOutcome> {
    let scene = Scene::new(spec, bands, received, store, opts)?;
    if scene.tiles.len() <= TILE_GROUP {
        let observations = scene.warp(&scene.tiles, opts)?;
        return store.append_scene(&spec.scene_id, spec.acquired_at_ms, observations);
    }
    let Some(mut writer) = store.begin_scene(&spec.scene_id, spec.acquired_at_ms)? else {
        return Ok(AppendOutcome { duplicate: true, ..Default::default() });
    };
    for group in scene.tiles.chunks(TILE_GROUP) {
        writer.append(scene.warp(group, opts)?)?;
    }
    writer.commit()
}

fn resample_band<T: ArrowPrimitiveType>(column: &ArrayRef, valid: Option<&[bool]>, band: &PlannedBand, src: &SourceGeometry, coords: &warp::TileCoords) -> (ArrayRef, BooleanArray)
where
    T::Native: Sample,
{
    let values = column.as_primitive::<T>().values();
    let nodata = band.nodata.map(T::Native::from_f64);
    let source = warp::SourceBand { values, nodata, valid, width: src.width, height: src.height };
    let fill = nodata.unwrap_or_else(|| T::Native::from_f64(0.0));
    let (out, mask) = warp::resample(&source, coords, band.resampling, fill);
    let pixels: ArrayRef = Arc::new(PrimitiveArray::<T>::new(ScalarBuffer::from(out), None));
    (pixels, BooleanArray::from(mask))
}
