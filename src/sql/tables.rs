//! The catalog as SQL tables, built from the live catalog when a statement
//! scans them: `collections`, `scenes`, `chunks`, `observations`.

use std::sync::Arc;

use std::fmt::Write;

use arrow_array::builder::{Float64Builder, ListBuilder, StringBuilder, TimestampMillisecondBuilder, UInt32Builder, UInt64Builder};
use arrow_array::{ArrayRef, BinaryArray, Float64Array, RecordBatch, RecordBatchOptions, StringArray, TimestampMillisecondArray, UInt32Array, UInt64Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::crs;
use crate::error::{Error, Result};
use crate::storage::{CollectionStore, Warehouse};

/// The tables, by name, as `GetTables` lists them.
pub const NAMES: [&str; 4] = ["collections", "scenes", "chunks", "observations"];

fn ts(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), nullable)
}

fn strings(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::List(Arc::new(Field::new("item", DataType::Utf8, false))), nullable)
}

/// The schema of table `name`, if there is one.
pub fn schema(name: &str) -> Option<SchemaRef> {
    let u64f = |n: &str| Field::new(n, DataType::UInt64, false);
    let f64n = |n: &str| Field::new(n, DataType::Float64, true);
    let utf8 = |n: &str| Field::new(n, DataType::Utf8, false);
    let fields = match name {
        "collections" => vec![
            utf8("name"),
            Field::new("profile", DataType::Utf8, true),
            strings("bands", false),
            utf8("crs"),
            Field::new("resolution", DataType::Float64, false),
            Field::new("tile_span", DataType::Float64, false),
            Field::new("tile_px", DataType::UInt32, false),
            u64f("scenes"),
            u64f("tiles"),
            u64f("chunks"),
            u64f("observations"),
            u64f("bytes"),
            ts("start", true),
            ts("end", true),
        ],
        "scenes" => vec![
            utf8("collection"),
            utf8("scene_id"),
            ts("time", false),
            Field::new("footprint", DataType::Binary, false),
            strings("bands", false),
            u64f("tiles"),
            u64f("observations"),
            Field::new("bytes", DataType::UInt64, true),
            Field::new("processing_baseline", DataType::Utf8, true),
        ],
        "chunks" => vec![
            utf8("collection"),
            utf8("tile_id"),
            utf8("band"),
            utf8("month"),
            u64f("observations"),
            u64f("bytes"),
            Field::new("batches", DataType::UInt32, false),
            Field::new("generation", DataType::UInt32, false),
            ts("start", false),
            ts("end", false),
            u64f("valid_pixels"),
            f64n("min"),
            f64n("max"),
            f64n("mean"),
        ],
        "observations" => vec![
            utf8("collection"),
            utf8("tile_id"),
            utf8("band"),
            utf8("month"),
            ts("time", false),
            utf8("scene_id"),
            Field::new("valid_pixels", DataType::UInt64, true),
            f64n("valid_fraction"),
            f64n("min"),
            f64n("max"),
            f64n("mean"),
            Field::new("bytes", DataType::UInt64, true),
        ],
        _ => return None,
    };
    Some(Arc::new(Schema::new(fields)))
}

/// Table `name` as it stands now, one batch of the columns `projection`
/// picks (all without one). Blocking for `scenes` (the footprints go
/// through GDAL).
pub fn build(warehouse: &Warehouse, name: &str, projection: Option<&[usize]>) -> Result<RecordBatch> {
    let full = schema(name).ok_or_else(|| Error::not_found(format!("table {name:?}")))?;
    let stores = warehouse.collections();
    let project = |schema: SchemaRef| match projection {
        Some(p) => schema.project(p).map(Arc::new).map_err(Error::arrow("projecting a SQL table")),
        None => Ok(schema),
    };
    let (schema, (columns, rows)) = match name {
        "chunks" | "observations" => {
            let schema = project(full)?;
            let built = if name == "chunks" { chunks(&stores, &schema) } else { observations(&stores, &schema) };
            (schema, built)
        }
        _ => {
            let columns = if name == "collections" { collections(&stores) } else { scenes(&stores)? };
            let batch = RecordBatch::try_new(full, columns).map_err(Error::arrow("building a SQL table"))?;
            let batch = match projection {
                Some(p) => batch.project(p).map_err(Error::arrow("projecting a SQL table"))?,
                None => batch,
            };
            return Ok(batch);
        }
    };
    RecordBatch::try_new_with_options(schema, columns, &RecordBatchOptions::new().with_row_count(Some(rows))).map_err(Error::arrow("building a SQL table"))
}

fn timestamps(v: Vec<Option<i64>>) -> ArrayRef {
    Arc::new(TimestampMillisecondArray::from(v).with_timezone("UTC"))
}

fn string_lists<'a>(rows: impl Iterator<Item = Vec<&'a str>>) -> ArrayRef {
    let mut b = ListBuilder::new(StringBuilder::new()).with_field(Arc::new(Field::new("item", DataType::Utf8, false)));
    for row in rows {
        for s in row {
            b.values().append_value(s);
        }
        b.append(true);
    }
    Arc::new(b.finish())
}

fn collections(stores: &[Arc<CollectionStore>]) -> Vec<ArrayRef> {
    let chunks: Vec<_> = stores.iter().map(|s| s.chunks(|_| true)).collect();
    let sum = |f: &dyn Fn(&crate::storage::ChunkEntry) -> u64| -> ArrayRef {
        Arc::new(UInt64Array::from_iter_values(chunks.iter().map(|c| c.iter().map(|(_, e)| f(e)).sum::<u64>())))
    };
    let times = |pick: fn(&[i64]) -> Option<i64>, fold: fn(i64, i64) -> i64| {
        timestamps(chunks.iter().map(|c| c.iter().filter_map(|(_, e)| pick(&e.times)).reduce(fold)).collect())
    };
    vec![
        Arc::new(StringArray::from_iter_values(stores.iter().map(|s| s.meta.name.clone()))),
        Arc::new(StringArray::from(stores.iter().map(|s| s.meta.profile.clone()).collect::<Vec<_>>())),
        string_lists(stores.iter().map(|s| s.meta.bands.iter().map(|b| b.name.as_str()).collect())),
        Arc::new(StringArray::from_iter_values(stores.iter().map(|s| s.meta.grid.crs.clone()))),
        Arc::new(Float64Array::from_iter_values(stores.iter().map(|s| s.meta.grid.pixel_size))),
        Arc::new(Float64Array::from_iter_values(stores.iter().map(|s| s.meta.grid.tile_span))),
        Arc::new(UInt32Array::from_iter_values(stores.iter().map(|s| s.meta.grid.tile_px))),
        Arc::new(UInt64Array::from_iter_values(stores.iter().map(|s| s.scene_count() as u64))),
        Arc::new(UInt64Array::from_iter_values(stores.iter().map(|s| s.tiles().len() as u64))),
        Arc::new(UInt64Array::from_iter_values(chunks.iter().map(|c| c.len() as u64))),
        sum(&|e| e.times.len() as u64),
        sum(&|e| e.len),
        times(|t| t.iter().min().copied(), i64::min),
        times(|t| t.iter().max().copied(), i64::max),
    ]
}

fn scenes(stores: &[Arc<CollectionStore>]) -> Result<Vec<ArrayRef>> {
    let (mut collection, mut id, mut time, mut footprint, mut bands, mut tiles, mut observations, mut bytes, mut baseline) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for store in stores {
        let grid = store.meta.grid_spec();
        let to_lonlat = crs::cached(("grid.crs", &grid.crs), ("EPSG:4326", "EPSG:4326"))?;
        for (scene_id, s) in store.scene_summaries() {
            let (ring, _) = crs::lonlat_footprint(&grid, &s.tiles, &to_lonlat.transformer);
            collection.push(store.meta.name.clone());
            id.push(scene_id);
            time.push(Some(s.time_ms));
            footprint.push(wkb_polygon(&ring));
            bands.push(s.bands.into_iter().collect::<Vec<_>>());
            tiles.push(s.tiles.len() as u64);
            observations.push(s.observations);
            bytes.push(s.bytes);
            baseline.push(s.baseline);
        }
    }
    Ok(vec![
        Arc::new(StringArray::from(collection)),
        Arc::new(StringArray::from(id)),
        timestamps(time),
        Arc::new(BinaryArray::from_iter_values(footprint)),
        string_lists(bands.iter().map(|b| b.iter().map(String::as_str).collect())),
        Arc::new(UInt64Array::from(tiles)),
        Arc::new(UInt64Array::from(observations)),
        Arc::new(UInt64Array::from(bytes)),
        Arc::new(StringArray::from(baseline)),
    ])
}

/// A closed ring as a little-endian WKB polygon.
pub fn wkb_polygon(ring: &[[f64; 2]]) -> Vec<u8> {
    let mut b = Vec::with_capacity(13 + 16 * ring.len());
    b.push(1u8);
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&(ring.len() as u32).to_le_bytes());
    for [x, y] in ring {
        b.extend_from_slice(&x.to_le_bytes());
        b.extend_from_slice(&y.to_le_bytes());
    }
    b
}

/// A column being built, by its Arrow type.
enum Col {
    Str(StringBuilder),
    U64(UInt64Builder),
    U32(UInt32Builder),
    F64(Float64Builder),
    Time(TimestampMillisecondBuilder),
}

impl Col {
    fn new(t: &DataType) -> Self {
        match t {
            DataType::UInt64 => Col::U64(UInt64Builder::new()),
            DataType::UInt32 => Col::U32(UInt32Builder::new()),
            DataType::Float64 => Col::F64(Float64Builder::new()),
            DataType::Timestamp(..) => Col::Time(TimestampMillisecondBuilder::new().with_timezone("UTC")),
            _ => Col::Str(StringBuilder::new()),
        }
    }

    fn text(&mut self, v: impl std::fmt::Display) {
        if let Col::Str(b) = self {
            let _ = write!(b, "{v}");
            b.append_value("");
        }
    }

    fn int(&mut self, v: Option<u64>) {
        match self {
            Col::U64(b) => b.append_option(v),
            Col::U32(b) => b.append_option(v.map(|v| v as u32)),
            _ => {}
        }
    }

    fn float(&mut self, v: Option<f64>) {
        if let Col::F64(b) = self {
            b.append_option(v);
        }
    }

    fn time(&mut self, v: Option<i64>) {
        if let Col::Time(b) = self {
            b.append_option(v);
        }
    }

    fn finish(self) -> ArrayRef {
        match self {
            Col::Str(mut b) => Arc::new(b.finish()),
            Col::U64(mut b) => Arc::new(b.finish()),
            Col::U32(mut b) => Arc::new(b.finish()),
            Col::F64(mut b) => Arc::new(b.finish()),
            Col::Time(mut b) => Arc::new(b.finish()),
        }
    }
}

/// The columns `schema` names, one cell per call of `row` (which gets the
/// column's name), built in one pass.
fn columns(schema: &Schema, mut rows: impl FnMut(&mut dyn FnMut(&mut dyn FnMut(&str, &mut Col)))) -> (Vec<ArrayRef>, usize) {
    let mut cols: Vec<(String, Col)> = schema.fields().iter().map(|f| (f.name().clone(), Col::new(f.data_type()))).collect();
    let mut count = 0;
    rows(&mut |cell| {
        count += 1;
        for (name, col) in cols.iter_mut() {
            cell(name, col);
        }
    });
    (cols.into_iter().map(|(_, c)| c.finish()).collect(), count)
}

fn chunks(stores: &[Arc<CollectionStore>], schema: &Schema) -> (Vec<ArrayRef>, usize) {
    columns(schema, |each_row| {
        for store in stores {
            store.visit_chunks(|k, e| {
                let s = &e.stats;
                let valid = s.valid > 0;
                each_row(&mut |name, col| match name {
                    "collection" => col.text(&store.meta.name),
                    "tile_id" => col.text(k.tile),
                    "band" => col.text(&k.band),
                    "month" => col.text(k.month),
                    "observations" => col.int(Some(e.times.len() as u64)),
                    "bytes" => col.int(Some(e.len)),
                    "batches" => col.int(Some(e.appends.max(1) as u64)),
                    "generation" => col.int(Some(e.file.gen as u64)),
                    "start" => col.time(e.times.iter().min().copied()),
                    "end" => col.time(e.times.iter().max().copied()),
                    "valid_pixels" => col.int(Some(s.valid)),
                    "min" => col.float(valid.then_some(s.min)),
                    "max" => col.float(valid.then_some(s.max)),
                    _ => col.float(valid.then(|| s.sum / s.valid as f64)),
                })
            });
        }
    })
}

fn observations(stores: &[Arc<CollectionStore>], schema: &Schema) -> (Vec<ArrayRef>, usize) {
    columns(schema, |each_row| {
        for store in stores {
            let px = (store.meta.grid.tile_px as f64).powi(2);
            store.visit_chunks(|k, e| {
                for (i, (t, scene)) in e.times.iter().zip(&e.scenes).enumerate() {
                    let r = e.row_stats.get(i).copied().flatten();
                    let some = r.filter(|r| r.valid > 0);
                    each_row(&mut |name, col| match name {
                        "collection" => col.text(&store.meta.name),
                        "tile_id" => col.text(k.tile),
                        "band" => col.text(&k.band),
                        "month" => col.text(k.month),
                        "time" => col.time(Some(*t)),
                        "scene_id" => col.text(scene),
                        "valid_pixels" => col.int(r.map(|r| r.valid)),
                        "valid_fraction" => col.float(r.map(|r| r.valid as f64 / px)),
                        "min" => col.float(some.map(|r| r.min)),
                        "max" => col.float(some.map(|r| r.max)),
                        "mean" => col.float(some.map(|r| r.sum / r.valid as f64)),
                        _ => col.int(r.map(|r| r.bytes)),
                    })
                }
            });
        }
    })
}
