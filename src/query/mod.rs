//! Queries: a `Query` -> the chunks it covers (from the catalog) -> streams
//! of record batches, or one location's time series (DESIGN §4).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{new_null_array, Array, ArrayRef, BooleanArray, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow_flight::{FlightData, SchemaAsIpc};
use arrow_ipc::writer::{DictionaryTracker, IpcDataGenerator, IpcWriteContext, IpcWriteOptions};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use crate::collection::{Band, DType};
use crate::crs;
use crate::error::{Error, Result};
use crate::grid::{GridSpec, TileId, TileRange};
use crate::storage::{self, chunk, ChunkEntry, ChunkKey, CollectionStore, Warehouse};
use crate::wire::{self, Area, QuerySpec};

/// Most bytes of stored messages read at once when serving them as stored.
const RAW_READ: u64 = 8 << 20;

/// About the most bytes of a point series in one Flight message.
const SERIES_MESSAGE_BYTES: usize = 4 << 20;

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

/// A query resolved to chunks.
pub struct Plan {
    pub store: Arc<CollectionStore>,
    pub spec: QuerySpec,
    pub bands: Vec<Band>,
    pub chunks: Vec<(ChunkKey, ChunkEntry)>,
    /// For point queries: the tile and pixel index holding the point.
    pub point: Option<(TileId, usize)>,
}

/// Resolves a query against the catalog. Blocking (GDAL for bbox/point).
pub fn plan(warehouse: &Warehouse, spec: QuerySpec) -> Result<Plan> {
    let store = warehouse.collection(&spec.collection)?;
    plan_in(store, spec)
}

fn plan_in(store: Arc<CollectionStore>, spec: QuerySpec) -> Result<Plan> {
    let bands: Vec<Band> = store.meta.select_bands("bands", &spec.bands)?.into_iter().cloned().collect();
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
            point = Some((tile, row as usize * grid.tile_px as usize + col as usize));
            TileFilter::Set([tile].into())
        }
    };
    let names: HashSet<&str> = bands.iter().map(|b| b.name.as_str()).collect();
    let (start, end) = (spec.start_ms, spec.end_ms);
    let chunks = store
        .chunks(|k| {
            names.contains(k.band.as_str()) && tiles.keeps(k.tile) && start.is_none_or(|s| k.month.end_ms() > s) && end.is_none_or(|e| k.month.start_ms() < e)
        })
        .into_iter()
        .filter(|(_, e)| e.count_in(start, end) > 0)
        .collect();
    Ok(Plan { store, spec, bands, chunks, point })
}

impl Plan {
    /// Schema of the answer: chunk rows, or point rows.
    pub fn schema(&self) -> Result<SchemaRef> {
        if self.point.is_some() {
            return Ok(Arc::new(point_schema(&self.bands)));
        }
        let dtype = common_dtype(&self.bands)?;
        Ok(Arc::new(chunk::schema(dtype, self.stream_metadata())))
    }

    /// Grid metadata, so a client can put coordinates on every pixel.
    fn stream_metadata(&self) -> HashMap<String, String> {
        let g = &self.store.meta.grid;
        let mut m = HashMap::from([
            ("collection".to_string(), self.store.meta.name.clone()),
            ("crs".to_string(), g.crs_wkt.clone()),
            ("tile_span".to_string(), g.tile_span.to_string()),
            ("tile_px".to_string(), g.tile_px.to_string()),
            ("pixel_size".to_string(), g.pixel_size.to_string()),
        ]);
        let tiles: HashSet<TileId> = self.chunks.iter().map(|(k, _)| k.tile).collect();
        if tiles.len() == 1 {
            let t = *tiles.iter().next().unwrap_or(&TileId::new(0, 0));
            m.insert("geotransform".to_string(), serde_json::to_string(&self.store.meta.grid_spec().tile_geotransform(t)).unwrap_or_default());
        }
        m
    }

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

    /// One plan per chunk with its ticket: the query narrowed to that chunk
    /// (one tile, one band, the month's part of the time range), as JSON.
    pub fn per_chunk(&self) -> Vec<(Vec<u8>, Plan)> {
        self.chunks
            .iter()
            .map(|(k, e)| {
                let start = Some(self.spec.start_ms.map_or(k.month.start_ms(), |s| s.max(k.month.start_ms())));
                let end = Some(self.spec.end_ms.map_or(k.month.end_ms(), |e| e.min(k.month.end_ms())));
                let tiles = [k.tile.to_string()];
                let bands = [k.band.clone()];
                let ticket = wire::query_json(&self.store.meta.name, &tiles, &bands, start, end);
                let spec = QuerySpec {
                    collection: self.store.meta.name.clone(),
                    area: Area::Tiles(vec![k.tile]),
                    start_ms: start,
                    end_ms: end,
                    bands: bands.to_vec(),
                };
                let band = self.bands.iter().filter(|b| b.name == k.band).cloned().collect();
                let one = Plan { store: self.store.clone(), spec, bands: band, chunks: vec![(k.clone(), e.clone())], point: None };
                (ticket, one)
            })
            .collect()
    }

    /// The answer as Flight messages (the schema first), calling `emit`
    /// until it returns false. Batches that lie wholly in the time range of
    /// a chunk stored in time order are sent as the bytes stored, without
    /// decoding or re-encoding; the rest, and a point series, is decoded,
    /// filtered, sorted and encoded. Blocking (file IO).
    pub fn read_flight(&self, mut emit: impl FnMut(FlightData) -> bool) -> Result<()> {
        let opts = IpcWriteOptions::default();
        let schema = self.schema()?;
        if !emit(SchemaAsIpc::new(&schema, &opts).into()) {
            return Ok(());
        }
        let encoder = IpcDataGenerator::default();
        let mut tracker = DictionaryTracker::new(false);
        let mut context = IpcWriteContext::default();
        // Encoded rows go out `per` rows to a message (an empty batch as one).
        let mut encode_rows = |batch: &RecordBatch, per: usize| -> Result<Vec<FlightData>> {
            (0..batch.num_rows().max(1))
                .step_by(per)
                .map(|first| {
                    let part = batch.slice(first, per.min(batch.num_rows() - first));
                    let (_, data) = encoder.encode(&part, &mut tracker, &opts, &mut context).map_err(Error::arrow("encoding a batch"))?;
                    Ok(data.into())
                })
                .collect()
        };
        if let Some((_, index)) = self.point {
            let series = self.point_series(index)?;
            let row_bytes = series.get_array_memory_size() / series.num_rows().max(1);
            encode_rows(&series, (SERIES_MESSAGE_BYTES / row_bytes.max(1)).max(1))?.into_iter().all(&mut emit);
            return Ok(());
        }
        // Decoded chunk rows go out in messages of about a MiB, as stored ones do.
        let mut encode = |batch: &RecordBatch| encode_rows(batch, chunk::rows_per_message(batch));
        for (_, entry) in &self.chunks {
            let keep = |i: usize| self.spec.time_matches(entry.times[i]);
            if !entry.times.is_sorted() {
                if let Some(batch) = self.read_sorted(entry)? {
                    let batch = RecordBatch::try_new(schema.clone(), batch.columns().to_vec()).map_err(Error::arrow("re-labelling a chunk batch"))?;
                    if !encode(&batch)?.into_iter().all(&mut emit) {
                        return Ok(());
                    }
                }
                continue;
            }
            let (schema_end, picked) = entry.file.batches_with(entry.len, keep)?;
            let mut i = 0;
            while i < picked.len() {
                let (first, loc) = picked[i];
                if !(first..first + loc.rows).all(keep) {
                    // A batch straddling the range's edge: decode and cut.
                    let batches = chunk::read_batches(&entry.file.path, schema_end, &[loc])?;
                    let (cut, _) = storage::sorted_rows(&batches, |t, _| self.spec.time_matches(t))?;
                    if let Some(cut) = cut {
                        let cut = RecordBatch::try_new(schema.clone(), cut.columns().to_vec()).map_err(Error::arrow("re-labelling a chunk batch"))?;
                        if !encode(&cut)?.into_iter().all(&mut emit) {
                            return Ok(());
                        }
                    }
                    i += 1;
                    continue;
                }
                // A run of whole, adjacent batches, read in one go (up to
                // RAW_READ bytes) and sent as stored.
                let mut j = i;
                while j + 1 < picked.len() && picked[j + 1].1.start == picked[j].1.end && picked[j + 1].1.end - loc.start <= RAW_READ {
                    let (f, l) = picked[j + 1];
                    if !(f..f + l.rows).all(keep) {
                        break;
                    }
                    j += 1;
                }
                let bytes = entry.file.range(entry.len, loc.start, picked[j].1.end)?;
                for (_, l) in &picked[i..=j] {
                    let message = bytes.slice((l.start - loc.start) as usize..(l.end - loc.start) as usize);
                    let (header, body) = chunk::split_message(&message)
                        .ok_or_else(|| Error::Corrupt { path: entry.file.path.clone(), reason: format!("message at byte {}", l.start) })?;
                    if !emit(FlightData { data_header: header, data_body: body, ..Default::default() }) {
                        return Ok(());
                    }
                }
                i = j + 1;
            }
        }
        Ok(())
    }

    /// A chunk's rows in the time range, ordered by time, as one batch.
    fn read_sorted(&self, entry: &ChunkEntry) -> Result<Option<RecordBatch>> {
        // Only the batches holding rows in the time range are read.
        let batches = self.store.read_rows(entry, |i| self.spec.time_matches(entry.times[i]))?;
        Ok(storage::sorted_rows(&batches, |t, _| self.spec.time_matches(t))?.0)
    }

    /// One location's series: a row per (time, scene), a value and its
    /// validity per band. Values are gathered once per band from the
    /// arrays read (no per-row slices or keys).
    fn point_series(&self, index: usize) -> Result<RecordBatch> {
        /// One observation's pixel: `array` indexes its band's arrays.
        struct Hit {
            time: i64,
            scene: Arc<str>,
            band: usize,
            array: usize,
            at: usize,
            valid: bool,
        }
        let mut arrays: Vec<Vec<ArrayRef>> = vec![Vec::new(); self.bands.len()];
        let mut hits: Vec<Hit> = Vec::new();
        let mut tile = None;
        for (key, entry) in &self.chunks {
            let Some(b) = self.bands.iter().position(|b| b.name == key.band) else { continue };
            // Fast path: the one pixel of each row, read from the file at its
            // offset without decoding the observations.
            if let Some((picked, values, valid)) = self.store.read_pixel(entry, self.bands[b].dtype, index, |i| self.spec.time_matches(entry.times[i]))? {
                tile = Some(key.tile);
                let array = arrays[b].len();
                arrays[b].push(values);
                hits.extend(picked.iter().enumerate().map(|(k, &r)| Hit {
                    time: entry.times[r],
                    scene: entry.scenes[r].clone(),
                    band: b,
                    array,
                    at: k,
                    valid: valid[k],
                }));
                continue;
            }
            let Some(batch) = self.read_sorted(entry)? else { continue };
            tile = Some(key.tile);
            let times = batch.column(2).as_primitive::<arrow_array::types::TimestampMillisecondType>();
            let scenes = batch.column(3).as_string::<i32>();
            let pixels = batch.column(4).as_list::<i32>();
            let masks = batch.column(5).as_list::<i32>();
            let array = arrays[b].len();
            arrays[b].push(pixels.values().clone());
            for r in 0..batch.num_rows() {
                let (px, mk) = (pixels.value_length(r) as usize, masks.value_length(r) as usize);
                if index >= px || index >= mk {
                    return Err(Error::Internal(format!("chunk row holds {px} pixels, fewer than the point index {index}")));
                }
                let valid = masks.values().as_boolean().value(masks.value_offsets()[r] as usize + index);
                hits.push(Hit {
                    time: times.value(r),
                    scene: Arc::from(scenes.value(r)),
                    band: b,
                    array,
                    at: pixels.value_offsets()[r] as usize + index,
                    valid,
                });
            }
        }
        // A row per (time, scene), in order; a later chunk's value for the
        // same row and band wins (the sort is stable).
        hits.sort_by(|x, y| (x.time, &*x.scene).cmp(&(y.time, &*y.scene)));
        let mut keys: Vec<(i64, Arc<str>)> = Vec::new();
        let mut cells: Vec<Vec<Option<(usize, usize)>>> = vec![Vec::new(); self.bands.len()];
        for h in hits {
            if keys.last().is_none_or(|(t, s)| *t != h.time || **s != *h.scene) {
                keys.push((h.time, h.scene));
                cells.iter_mut().for_each(|c| c.push(None));
            }
            let row = keys.len() - 1;
            cells[h.band][row] = h.valid.then_some((h.array, h.at));
        }
        let schema = Arc::new(point_schema(&self.bands));
        let tile_id = tile.map(|t| t.to_string()).unwrap_or_default();
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(TimestampMillisecondArray::from(keys.iter().map(|k| k.0).collect::<Vec<_>>()).with_timezone("UTC")),
            Arc::new(StringArray::from(keys.iter().map(|k| &*k.1).collect::<Vec<_>>())),
            Arc::new(StringArray::from(vec![tile_id.as_str(); keys.len()])),
        ];
        for (b, band) in self.bands.iter().enumerate() {
            // Missing or invalid cells take the one null past the arrays read.
            let null = new_null_array(&band.dtype.arrow(), 1);
            let sources: Vec<&dyn Array> = arrays[b].iter().map(|a| a.as_ref()).chain([null.as_ref()]).collect();
            let picks: Vec<(usize, usize)> = cells[b].iter().map(|c| c.unwrap_or((arrays[b].len(), 0))).collect();
            columns.push(arrow_select::interleave::interleave(&sources, &picks).map_err(Error::arrow("building point values"))?);
            columns.push(Arc::new(BooleanArray::from(cells[b].iter().map(Option::is_some).collect::<Vec<_>>())));
        }
        RecordBatch::try_new(schema, columns).map_err(Error::arrow("building the point series"))
    }
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

/// Schema of a point time series: time, scene_id, tile_id, then per band the
/// value (null when invalid) and `<band>_valid`.
pub fn point_schema(bands: &[Band]) -> Schema {
    let mut fields =
        vec![Field::new("time", chunk::time_type(), false), Field::new("scene_id", DataType::Utf8, false), Field::new("tile_id", DataType::Utf8, false)];
    for b in bands {
        fields.push(Field::new(&b.name, b.dtype.arrow(), true));
        fields.push(Field::new(format!("{}_valid", b.name), DataType::Boolean, false));
    }
    Schema::new(fields)
}
