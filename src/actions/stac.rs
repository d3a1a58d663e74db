//! `stac`: what a collection holds as STAC 1.0: a Collection and one Item
//! per scene (time, footprint, bands with the `proj`, `eo`, `raster` and
//! `processing` extensions), so STAC browsers and `pystac` can list the
//! warehouse.

use serde::Deserialize;
use serde_json::{json, Value};

use super::ActionDoc;
use crate::auth::Role;
use crate::collection;
use crate::crs;
use crate::error::{Error, Result};
use crate::state::AppState;
use crate::storage::CollectionStore;
use crate::wire::format_time;

pub const EXTENSIONS: [&str; 4] = [
    "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/processing/v1.1.0/schema.json",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    collection: String,
}

pub struct Stac(String);

impl Stac {
    pub const DOC: ActionDoc = ActionDoc {
        name: "stac",
        role: Role::Read,
        description: "A collection as STAC 1.0: {\"collection\": <STAC Collection>, \"items\": [<STAC Item per scene>]} with datetime, footprint (the scene's tiles, in EPSG:4326), proj/eo/raster fields of the bands and the processing baseline. Body: {\"collection\"}.",
        takes_write_slot: false,
    };

    pub fn parse(body: &[u8]) -> Result<Self> {
        let b: Body = serde_json::from_slice(body).map_err(|e| Error::invalid("action.body", e.to_string(), "expected {\"collection\": name}"))?;
        collection::validate_collection_name("collection", &b.collection)?;
        Ok(Stac(b.collection))
    }

    pub fn apply(self, state: &AppState) -> Result<Value> {
        let store = state.warehouse.collection(&self.0)?;
        catalog(&store)
    }
}

/// The STAC Collection and Items of `store`. Blocking (GDAL).
pub fn catalog(store: &CollectionStore) -> Result<Value> {
    let meta = &store.meta;
    let grid = meta.grid_spec();
    let scenes = store.scene_summaries();
    let to_lonlat = crs::cached(("grid.crs", &grid.crs), ("EPSG:4326", "EPSG:4326"))?;
    let epsg = meta.grid.crs.strip_prefix("EPSG:").and_then(|c| c.parse::<u32>().ok());
    let raster_bands: Vec<Value> = meta
        .bands
        .iter()
        .map(|b| {
            let mut r = json!({"name": b.name, "data_type": b.dtype.name(), "spatial_resolution": meta.grid.pixel_size});
            for (k, v) in [("nodata", b.nodata), ("scale", b.scale), ("offset", b.offset)] {
                if let Some(v) = v {
                    r[k] = json!(v);
                }
            }
            r
        })
        .collect();
    let eo_bands: Vec<Value> = meta.bands.iter().map(|b| json!({"name": b.name})).collect();
    let mut items = Vec::with_capacity(scenes.len());
    let mut extent: Option<[f64; 4]> = None;
    let (mut start, mut end) = (i64::MAX, i64::MIN);
    for (id, scene) in &scenes {
        let (ring, bbox) = crs::lonlat_footprint(&grid, &scene.tiles, &to_lonlat.transformer);
        extent = Some(extent.map_or(bbox, |e| [e[0].min(bbox[0]), e[1].min(bbox[1]), e[2].max(bbox[2]), e[3].max(bbox[3])]));
        (start, end) = (start.min(scene.time_ms), end.max(scene.time_ms));
        let mut properties = json!({
            "datetime": format_time(scene.time_ms),
            "proj:epsg": epsg,
            "proj:wkt2": meta.grid.crs_wkt,
            "eo:bands": eo_bands.iter().filter(|b| scene.bands.contains(b["name"].as_str().unwrap_or_default())).collect::<Vec<_>>(),
            "raster:bands": raster_bands.iter().filter(|b| scene.bands.contains(b["name"].as_str().unwrap_or_default())).collect::<Vec<_>>(),
            "pixelquery:tiles": scene.tiles.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
        });
        if let Some(baseline) = &scene.baseline {
            properties["processing:version"] = json!(baseline);
            if meta.profile.as_deref() == Some("sentinel2_l2a") {
                properties["s2:processing_baseline"] = json!(baseline);
            }
        }
        items.push(json!({
            "type": "Feature",
            "stac_version": "1.0.0",
            "stac_extensions": EXTENSIONS,
            "id": id,
            "collection": meta.name,
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "bbox": bbox,
            "properties": properties,
            "links": [
                {"rel": "collection", "href": "../collection.json", "type": "application/json"},
                {"rel": "parent", "href": "../collection.json", "type": "application/json"},
            ],
            "assets": {},
        }));
    }
    let extent = extent.unwrap_or([-180.0, -90.0, 180.0, 90.0]);
    let interval = if scenes.is_empty() { json!([[null, null]]) } else { json!([[format_time(start), format_time(end)]]) };
    let collection = json!({
        "type": "Collection",
        "stac_version": "1.0.0",
        "stac_extensions": EXTENSIONS,
        "id": meta.name,
        "description": format!("PixelQuery Flight collection {:?}: {} bands on a {} m grid", meta.name, meta.bands.len(), meta.grid.pixel_size),
        "license": "other",
        "extent": {"spatial": {"bbox": [extent]}, "temporal": {"interval": interval}},
        "summaries": {"eo:bands": eo_bands, "raster:bands": raster_bands, "proj:epsg": [epsg]},
        "links": items.iter().map(|i| json!({"rel": "item", "href": format!("./items/{}.json", i["id"].as_str().unwrap_or_default()), "type": "application/geo+json"})).collect::<Vec<_>>(),
    });
    Ok(json!({"collection": collection, "items": items}))
}
