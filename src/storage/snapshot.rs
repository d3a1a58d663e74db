//! The catalog as a GeoParquet file (`<collection>/catalog.parquet`), so
//! DuckDB, pandas or QGIS can inspect a warehouse without the server.
//!
//! One row per chunk: tile, band, month, time range, observations, bytes,
//! generation, statistics of valid pixels, every row's time and scene id,
//! and the footprint of its valid pixels as a WKB polygon in the grid's CRS
//! (GeoParquet 1.0 `geo` metadata carries the CRS as PROJJSON). It is
//! written atomically after compaction and at start-up, and says how many
//! log records it reflects; the catalog log stays the source of truth.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{ListBuilder, StringBuilder, TimestampMillisecondBuilder};
use arrow_array::{ArrayRef, BinaryArray, Float64Array, RecordBatch, StringArray, TimestampMillisecondArray, UInt32Array, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::collection::Collection;
use crate::error::{Error, Result};
use crate::grid::{GridSpec, TileId};
use crate::storage::log::PixelStats;
use crate::storage::{ChunkEntry, ChunkKey};

/// Grid-CRS bounds `[min_x, min_y, max_x, max_y]` of a chunk's valid pixels.
pub fn footprint(grid: &GridSpec, tile: TileId, s: &PixelStats) -> Option<[f64; 4]> {
    if s.valid == 0 {
        return None;
    }
    let gt = grid.tile_geotransform(tile);
    let [c0, r0, c1, r1] = s.bbox.map(|v| v as f64);
    Some([gt[0] + c0 * gt[1], gt[3] + r1 * gt[5], gt[0] + c1 * gt[1], gt[3] + r0 * gt[5]])
}

/// A rectangle as a little-endian WKB polygon.
fn wkb_rectangle([x0, y0, x1, y1]: [f64; 4]) -> Vec<u8> {
    let mut b = Vec::with_capacity(93);
    b.push(1u8);
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&5u32.to_le_bytes());
    for (x, y) in [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)] {
        b.extend_from_slice(&x.to_le_bytes());
        b.extend_from_slice(&y.to_le_bytes());
    }
    b
}

fn ts_field(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Timestamp(arrow_schema::TimeUnit::Millisecond, Some("UTC".into())), nullable)
}

/// Writes the snapshot of `chunks` to `path` atomically. Blocking.
pub fn write(path: &Path, meta: &Collection, chunks: &[(ChunkKey, ChunkEntry)], log_records: u64) -> Result<()> {
    let grid = meta.grid_spec();
    let prints: Vec<Option<[f64; 4]>> = chunks.iter().map(|(k, e)| footprint(&grid, k.tile, &e.stats)).collect();
    let mut times = ListBuilder::new(TimestampMillisecondBuilder::new().with_timezone("UTC")).with_field(Arc::new(ts_field("item", false)));
    let mut scenes = ListBuilder::new(StringBuilder::new()).with_field(Arc::new(Field::new("item", DataType::Utf8, false)));
    for (_, e) in chunks {
        times.values().append_slice(&e.times);
        times.append(true);
        for s in &e.scenes {
            scenes.values().append_value(s);
        }
        scenes.append(true);
    }
    let stat = |f: fn(&PixelStats) -> f64| Float64Array::from(chunks.iter().map(|(_, e)| (e.stats.valid > 0).then(|| f(&e.stats))).collect::<Vec<_>>());
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(chunks.iter().map(|(k, _)| k.tile.to_string()))),
        Arc::new(StringArray::from_iter_values(chunks.iter().map(|(k, _)| k.band.clone()))),
        Arc::new(StringArray::from_iter_values(chunks.iter().map(|(k, _)| k.month.to_string()))),
        Arc::new(TimestampMillisecondArray::from(chunks.iter().map(|(_, e)| e.times.iter().min().copied()).collect::<Vec<_>>()).with_timezone("UTC")),
        Arc::new(TimestampMillisecondArray::from(chunks.iter().map(|(_, e)| e.times.iter().max().copied()).collect::<Vec<_>>()).with_timezone("UTC")),
        Arc::new(UInt64Array::from_iter_values(chunks.iter().map(|(_, e)| e.times.len() as u64))),
        Arc::new(UInt64Array::from_iter_values(chunks.iter().map(|(_, e)| e.len))),
        Arc::new(UInt32Array::from_iter_values(chunks.iter().map(|(_, e)| e.file.gen))),
        Arc::new(UInt64Array::from_iter_values(chunks.iter().map(|(_, e)| e.stats.valid))),
        Arc::new(stat(|s| s.min)),
        Arc::new(stat(|s| s.max)),
        Arc::new(Float64Array::from(chunks.iter().map(|(_, e)| e.stats.mean()).collect::<Vec<_>>())),
        Arc::new(times.finish()),
        Arc::new(scenes.finish()),
        Arc::new(BinaryArray::from_iter(prints.iter().map(|p| p.map(wkb_rectangle)))),
    ];
    let fields = vec![
        Field::new("tile_id", DataType::Utf8, false),
        Field::new("band", DataType::Utf8, false),
        Field::new("month", DataType::Utf8, false),
        ts_field("start", true),
        ts_field("end", true),
        Field::new("observations", DataType::UInt64, false),
        Field::new("bytes", DataType::UInt64, false),
        Field::new("generation", DataType::UInt32, false),
        Field::new("valid_pixels", DataType::UInt64, false),
        Field::new("min", DataType::Float64, true),
        Field::new("max", DataType::Float64, true),
        Field::new("mean", DataType::Float64, true),
        Field::new("times", columns[12].data_type().clone(), false),
        Field::new("scene_ids", columns[13].data_type().clone(), false),
        Field::new("geometry", DataType::Binary, true),
    ];
    let bbox =
        prints.iter().flatten().fold(None::<[f64; 4]>, |acc, p| Some(acc.map_or(*p, |a| [a[0].min(p[0]), a[1].min(p[1]), a[2].max(p[2]), a[3].max(p[3])])));
    let projjson: serde_json::Value = crate::crs::spatial_ref("grid.crs", &meta.grid.crs_wkt)?
        .to_projjson()
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(serde_json::Value::Null);
    let mut geo_column = serde_json::json!({"encoding": "WKB", "geometry_types": ["Polygon"], "crs": projjson});
    if let Some(b) = bbox {
        geo_column["bbox"] = serde_json::json!(b);
    }
    let geo = serde_json::json!({"version": "1.0.0", "primary_column": "geometry", "columns": {"geometry": geo_column}});
    let metadata = HashMap::from([
        ("geo".to_string(), geo.to_string()),
        ("pixelquery".to_string(), serde_json::json!({"collection": meta.name, "log_records": log_records, "tile_px": grid.tile_px}).to_string()),
    ]);
    let schema = Arc::new(Schema::new(fields).with_metadata(metadata));
    let batch = RecordBatch::try_new(schema.clone(), columns).map_err(Error::arrow("building the catalog snapshot"))?;
    let props = WriterProperties::builder().set_compression(Compression::SNAPPY).build();
    let parquet_err = |e: parquet::errors::ParquetError| Error::Internal(format!("encoding the catalog snapshot: {e}"));
    let mut w = ArrowWriter::try_new(Vec::new(), schema, Some(props)).map_err(parquet_err)?;
    w.write(&batch).map_err(parquet_err)?;
    let bytes = w.into_inner().map_err(parquet_err)?;
    super::local::write_atomic(path, "parquet.tmp", &bytes)
}
