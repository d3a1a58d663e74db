//! The catalog as SQL tables, built from the live catalog when a statement
//! scans them: `collections`, `scenes`, `chunks`, `observations`.

use std::sync::Arc;

use arrow_array::builder::{ListBuilder, StringBuilder};
use arrow_array::{ArrayRef, BinaryArray, Float64Array, RecordBatch, StringArray, TimestampMillisecondArray, UInt32Array, UInt64Array};
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

/// Table `name` as it stands now, one batch. Blocking for `scenes` (the
/// footprints go through GDAL).
pub fn build(warehouse: &Warehouse, name: &str) -> Result<RecordBatch> {
    let schema = schema(name).ok_or_else(|| Error::not_found(format!("table {name:?}")))?;
    let stores = warehouse.collections();
    let columns = match name {
        "collections" => collections(&stores),
        "scenes" => scenes(&stores)?,
        "chunks" => chunks(&stores),
        _ => observations(&stores),
    };
    RecordBatch::try_new(schema, columns).map_err(Error::arrow("building a SQL table"))
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

fn chunks(stores: &[Arc<CollectionStore>]) -> Vec<ArrayRef> {
    let all: Vec<(&str, crate::storage::ChunkKey, crate::storage::ChunkEntry)> =
        stores.iter().flat_map(|s| s.chunks(|_| true).into_iter().map(|(k, e)| (s.meta.name.as_str(), k, e))).collect();
    let stat = |f: fn(&crate::storage::log::PixelStats) -> f64| -> ArrayRef {
        Arc::new(Float64Array::from(all.iter().map(|(_, _, e)| (e.stats.valid > 0).then(|| f(&e.stats))).collect::<Vec<_>>()))
    };
    vec![
        Arc::new(StringArray::from_iter_values(all.iter().map(|(c, _, _)| *c))),
        Arc::new(StringArray::from_iter_values(all.iter().map(|(_, k, _)| k.tile.to_string()))),
        Arc::new(StringArray::from_iter_values(all.iter().map(|(_, k, _)| k.band.as_str()))),
        Arc::new(StringArray::from_iter_values(all.iter().map(|(_, k, _)| k.month.to_string()))),
        Arc::new(UInt64Array::from_iter_values(all.iter().map(|(_, _, e)| e.times.len() as u64))),
        Arc::new(UInt64Array::from_iter_values(all.iter().map(|(_, _, e)| e.len))),
        Arc::new(UInt32Array::from_iter_values(all.iter().map(|(_, _, e)| e.appends.max(1)))),
        Arc::new(UInt32Array::from_iter_values(all.iter().map(|(_, _, e)| e.file.gen))),
        timestamps(all.iter().map(|(_, _, e)| e.times.iter().min().copied()).collect()),
        timestamps(all.iter().map(|(_, _, e)| e.times.iter().max().copied()).collect()),
        Arc::new(UInt64Array::from_iter_values(all.iter().map(|(_, _, e)| e.stats.valid))),
        stat(|s| s.min),
        stat(|s| s.max),
        stat(|s| s.sum / s.valid as f64),
    ]
}

fn observations(stores: &[Arc<CollectionStore>]) -> Vec<ArrayRef> {
    let (mut collection, mut tile, mut band, mut month, mut time, mut scene) = (vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut valid, mut fraction, mut min, mut max, mut mean, mut bytes) = (vec![], vec![], vec![], vec![], vec![], vec![]);
    for store in stores {
        let px = (store.meta.grid.tile_px as f64).powi(2);
        for (k, e) in store.chunks(|_| true) {
            let (tile_id, month_text) = (k.tile.to_string(), k.month.to_string());
            for (i, (t, s)) in e.times.iter().zip(&e.scenes).enumerate() {
                let r = e.row_stats.get(i).copied().flatten();
                let some = r.filter(|r| r.valid > 0);
                collection.push(store.meta.name.clone());
                tile.push(tile_id.clone());
                band.push(k.band.clone());
                month.push(month_text.clone());
                time.push(Some(*t));
                scene.push(s.to_string());
                valid.push(r.map(|r| r.valid));
                fraction.push(r.map(|r| r.valid as f64 / px));
                min.push(some.map(|r| r.min));
                max.push(some.map(|r| r.max));
                mean.push(some.map(|r| r.sum / r.valid as f64));
                bytes.push(r.map(|r| r.bytes));
            }
        }
    }
    vec![
        Arc::new(StringArray::from(collection)),
        Arc::new(StringArray::from(tile)),
        Arc::new(StringArray::from(band)),
        Arc::new(StringArray::from(month)),
        timestamps(time),
        Arc::new(StringArray::from(scene)),
        Arc::new(UInt64Array::from(valid)),
        Arc::new(Float64Array::from(fraction)),
        Arc::new(Float64Array::from(min)),
        Arc::new(Float64Array::from(max)),
        Arc::new(Float64Array::from(mean)),
        Arc::new(UInt64Array::from(bytes)),
    ]
}
