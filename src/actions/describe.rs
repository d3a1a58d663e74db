//! `describe`: a collection's bands, grid and counts, or one tile's chunks
//! with their statistics.

use pixelquery_proto::v1 as pb;
use serde_json::{json, Value};

use super::ActionDoc;
use crate::auth::Role;
use crate::collection;
use crate::error::Result;
use crate::grid::TileId;
use crate::state::AppState;
use crate::storage::CollectionStore;
use crate::wire::{self, format_time};

pub struct Describe(pb::Describe);

impl Describe {
    pub const DOC: ActionDoc = ActionDoc {
        name: "describe",
        role: Role::Read,
        description: "A collection's bands, grid and counts, or with \"tile\" that tile's chunks with their time range, observations, bytes, min/max/mean of valid pixels and footprint. Body: {\"collection\", \"tile\"?}.",
        takes_write_slot: false,
    };

    pub fn parse(body: &[u8]) -> Result<Self> {
        let d = wire::decode_describe(body)?;
        collection::validate_collection_name("collection", &d.collection)?;
        Ok(Describe(d))
    }

    pub fn apply(self, state: &AppState) -> Result<Value> {
        let d = self.0;
        let store = state.warehouse.collection(&d.collection)?;
        if d.tile.is_empty() {
            Ok(collection(&store))
        } else {
            let t = super::parse_tile("tile", &d.tile)?;
            Ok(tile(&store, t))
        }
    }
}

/// A collection as `describe` and `create_collection` answer it.
pub fn collection(c: &CollectionStore) -> Value {
    let mut v = serde_json::to_value(&c.meta).unwrap_or(Value::Null);
    let chunks = c.chunks(|_| true);
    let grid = c.meta.grid_spec();
    let times = chunks.iter().flat_map(|(_, e)| e.times.iter().copied());
    let (start, end) = times.fold((None::<i64>, None::<i64>), |(lo, hi), t| (Some(lo.map_or(t, |l| l.min(t))), Some(hi.map_or(t, |h| h.max(t)))));
    // The union of the footprints of the tiles holding data, in the grid's CRS.
    let footprint = chunks
        .iter()
        .filter_map(|(k, e)| crate::storage::snapshot::footprint(&grid, k.tile, &e.stats))
        .reduce(|a, b| [a[0].min(b[0]), a[1].min(b[1]), a[2].max(b[2]), a[3].max(b[3])]);
    if let Value::Object(m) = &mut v {
        m.insert("tiles".into(), c.tiles().len().into());
        m.insert("scenes".into(), c.scene_count().into());
        m.insert("processing_baselines".into(), serde_json::to_value(c.baselines()).unwrap_or(Value::Null));
        m.insert("chunks".into(), chunks.len().into());
        m.insert("start".into(), start.map(format_time).into());
        m.insert("end".into(), end.map(format_time).into());
        m.insert("footprint".into(), footprint.map(|f| f.to_vec()).into());
    }
    v
}

fn tile(c: &CollectionStore, tile: TileId) -> Value {
    let grid = c.meta.grid_spec();
    let chunks: Vec<Value> = c
        .chunks(|k| k.tile == tile)
        .iter()
        .map(|(k, e)| {
            json!({
                "month": k.month.to_string(),
                "band": k.band,
                "observations": e.times.len(),
                "bytes": e.len,
                "batches": e.appends.max(1),
                "start": e.times.iter().min().map(|t| format_time(*t)),
                "end": e.times.iter().max().map(|t| format_time(*t)),
                "valid_pixels": e.stats.valid,
                "min": (e.stats.valid > 0).then_some(e.stats.min),
                "max": (e.stats.valid > 0).then_some(e.stats.max),
                "mean": e.stats.mean(),
                "footprint": crate::storage::snapshot::footprint(&grid, tile, &e.stats),
            })
        })
        .collect();
    json!({
        "collection": c.meta.name,
        "tile": tile.to_string(),
        "bounds": grid.tile_bounds(tile),
        "geotransform": grid.tile_geotransform(tile),
        "tile_px": grid.tile_px,
        "chunks": chunks,
    })
}
