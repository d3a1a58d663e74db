//! DoAction: collection management and server information. Bodies are JSON
//! objects (or the protobuf messages of `proto/`); results are JSON.

use std::collections::HashSet;

use serde_json::{json, Value};

use crate::collection::{self, Band, Collection, DType, GridDoc, Resampling, PROFILE_NAMES};
use crate::flight::AppState;
use crate::auth::Role;
use crate::error::{Error, Result};
use crate::grid::{GridSpec, TileId};
use crate::storage::{CollectionStore, Warehouse};
use crate::warp::crs;
use crate::wire::{self, format_time};
use pixelquery_proto::v1 as pb;

/// Every action: name and description (what `ListActions` returns).
pub const ACTIONS: [(&str, &str); 7] = [
    ("health", "Server status: {\"status\": \"ok\", \"version\", \"collections\", \"ingest\": {\"tiles_warped\", \"tiles_warped_while_streaming\", \"tiles_put_aside\", \"early_writers_yielded\"}}. Body: empty."),
    ("list_collections", "All collections with their bands, tile and scene counts. Body: empty."),
    (
        "create_collection",
        "Create a collection. Body: {\"name\", \"profile\": \"sentinel2_l2a\"|\"landsat8_l2\"|\"landsat9_l2\"|\"planet_sr\"} or {\"name\", \"bands\": [{\"name\", \"dtype\", \"nodata\", \"resampling\"}], \"grid\": {\"crs\", \"tile_span\", \"resolution\"}, \"resampling\"}; grid.crs and tile_span default to the sinusoidal 2560 m grid. Returns the collection as describe does.",
    ),
    ("describe", "A collection's bands, grid and counts, or with \"tile\" that tile's chunks with their time range, observations, bytes, min/max/mean of valid pixels and footprint. Body: {\"collection\", \"tile\"?}."),
    (
        "delete",
        "Delete rows durably and atomically. Body: {\"collection\", \"scene_id\"?, \"tile\"?, \"start\"?, \"end\"?} (at least one filter; given filters combine; end exclusive). A deleted scene can be ingested again. Returns {\"chunks_rewritten\", \"chunks_removed\", \"rows_removed\", \"scenes_removed\"}.",
    ),
    (
        "ingest_path",
        "The server reads GeoTIFF/COG files it can see (local paths, GDAL /vsi... paths) under its --ingest-root directories and ingests them as `pixelquery ingest` does. Body: {\"collection\", \"paths\": [...], \"bands\"?: \"1:blue,...\", \"time\"?, \"resampling\"?}. Returns {\"files\", \"scenes\": [...], \"failures\": [{\"path\", \"reason\"}]}.",
    ),
    ("compact", "Rewrite chunks holding several appended batches in time order (dropping the space of deleted rows), without blocking readers or writers; rows do not change. Never automatic: it reads the whole chunk. Body: {\"collection\", \"tiles\"?}. Returns {\"chunks_rewritten\"}."),
];

/// Runs one action. Blocking (GDAL for CRS checks, file IO); call it from a
/// blocking task of the server's runtime (`ingest_path` drives ingests on it).
/// The role an action needs when auth is on: writes need `write`; making
/// the server read its own files needs `admin`.
pub fn required_role(name: &str) -> Role {
    match name {
        "create_collection" | "delete" | "compact" => Role::Write,
        "ingest_path" => Role::Admin,
        _ => Role::Read,
    }
}

pub fn run(state: &AppState, name: &str, body: &[u8]) -> Result<Value> {
    let warehouse: &Warehouse = &state.warehouse;
    match name {
        "health" => Ok(json!({
            "status": "ok",
            "version": env!("CARGO_PKG_VERSION"),
            "collections": warehouse.collections().len(),
            "ingest": {
                "tiles_warped": warehouse.counters.tiles_warped.load(std::sync::atomic::Ordering::Relaxed),
                "tiles_warped_while_streaming": warehouse.counters.tiles_warped_while_streaming.load(std::sync::atomic::Ordering::Relaxed),
                "tiles_put_aside": warehouse.counters.tiles_put_aside.load(std::sync::atomic::Ordering::Relaxed),
                "early_writers_yielded": warehouse.counters.early_writers_yielded.load(std::sync::atomic::Ordering::Relaxed),
            },
        })),
        "list_collections" => Ok(Value::Array(warehouse.collections().iter().map(|c| summary(c)).collect())),
        "create_collection" => {
            let meta = build_collection(wire::decode_create_collection(body)?)?;
            let store = warehouse.create_collection(meta)?;
            Ok(describe(&store))
        }
        "describe" => {
            let d = wire::decode_describe(body)?;
            collection::validate_collection_name("collection", &d.collection)?;
            let store = warehouse.collection(&d.collection)?;
            if d.tile.is_empty() {
                Ok(describe(&store))
            } else {
                let tile: TileId = d.tile.parse().map_err(|e: crate::grid::GridError| Error::invalid("tile", &d.tile, &e.to_string()))?;
                Ok(describe_tile(&store, tile))
            }
        }
        "delete" => {
            let d = wire::decode_delete(body)?;
            collection::validate_collection_name("collection", &d.collection)?;
            let store = warehouse.collection(&d.collection)?;
            Ok(serde_json::to_value(delete(&store, d)?).unwrap_or(Value::Null))
        }
        "ingest_path" => Ok(serde_json::to_value(ingest_path(state, body)?).unwrap_or(Value::Null)),
        "compact" => {
            let c = wire::decode_compact(body)?;
            collection::validate_collection_name("collection", &c.collection)?;
            let store = warehouse.collection(&c.collection)?;
            let tiles = parse_tiles(&c.tiles)?;
            let out = store.compact(if tiles.is_empty() { None } else { Some(&tiles) })?;
            Ok(json!({"chunks_rewritten": out.chunks_rewritten}))
        }
        other => Err(Error::invalid(
            "action.type",
            other,
            &format!("unknown action; available: {}", ACTIONS.iter().map(|a| a.0).collect::<Vec<_>>().join(", ")),
        )),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct IngestPathBody {
    collection: String,
    paths: Vec<String>,
    #[serde(default)]
    bands: Option<String>,
    #[serde(default)]
    time: Option<Value>,
    #[serde(default)]
    resampling: Option<String>,
}

/// Server-side file ingest: every path must lie under an allowed root
/// (otherwise nothing is read or written); then the files are planned and
/// each scene is read on its own thread and fed to the DoPut pipeline.
fn ingest_path(state: &AppState, body: &[u8]) -> Result<crate::cog::send::IngestReport> {
    let started = std::time::Instant::now();
    let b: IngestPathBody = serde_json::from_slice(body).map_err(|e| Error::invalid("action.body", String::from_utf8_lossy(body), &format!("malformed JSON: {e}")))?;
    collection::validate_collection_name("collection", &b.collection)?;
    let store = state.warehouse.collection(&b.collection)?;
    if b.paths.is_empty() {
        return Err(Error::invalid("paths", "[]", "give at least one file or directory"));
    }
    let paths = b.paths.iter().map(|p| crate::cog::check_allowed(p, &state.ingest_roots)).collect::<Result<Vec<_>>>()?;
    let time_ms = wire::opt_time("time", b.time)?;
    let opts = crate::cog::CogOptions {
        collection: b.collection.clone(),
        collection_bands: store.meta.bands.iter().map(|b| b.name.clone()).collect(),
        band_map: b.bands.as_deref().map(crate::cog::parse_band_map).transpose()?.unwrap_or_default(),
        time_ms,
        resampling: b.resampling.unwrap_or_default(),
    };
    let (files, mut failures) = crate::cog::discover(&paths);
    // A directory may hold links leading outside the roots: check each file.
    let (files, outside): (Vec<String>, Vec<String>) = files.into_iter().partition(|f| crate::cog::check_allowed(f, &state.ingest_roots).is_ok());
    failures.extend(outside.into_iter().map(|path| crate::cog::Failure { path, reason: "outside the server's allowed ingest roots".into() }));
    let (scenes, more) = crate::cog::plan(&files, &opts);
    failures.extend(more);
    let handle = tokio::runtime::Handle::current();
    let mut report = crate::cog::send::IngestReport { files: files.len(), ..Default::default() };
    for plan in scenes {
        let spec = match wire::decode_ingest(&prost::Message::encode_to_vec(&plan.request)) {
            Ok(s) => s,
            Err(e) => {
                failures.extend(plan.failures(&e.to_string()));
                continue;
            }
        };
        let put = handle.block_on(async { crate::ingest::ingest(state.warehouse.clone(), state.ingest.clone(), spec, crate::cog::stream_scene(&plan, |_| {})).await });
        match put {
            Ok(put) => {
                report.megabytes += plan.bytes as f64 / 1e6;
                report.scenes.push(crate::cog::send::SceneResult::new(&plan, &put));
            }
            Err(e) => failures.extend(plan.failures(&e.to_string())),
        }
    }
    report.failures = failures.into_iter().map(Into::into).collect();
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

fn parse_tiles(tiles: &[String]) -> Result<HashSet<TileId>> {
    tiles.iter().enumerate().map(|(i, t)| t.parse().map_err(|e: crate::grid::GridError| Error::invalid(&format!("tiles[{i}]"), t, &e.to_string()))).collect()
}

fn delete(store: &CollectionStore, d: pb::Delete) -> Result<crate::storage::RewriteOutcome> {
    let tile: Option<TileId> = if d.tile.is_empty() { None } else { Some(d.tile.parse().map_err(|e: crate::grid::GridError| Error::invalid("tile", &d.tile, &e.to_string()))?) };
    let scene = (!d.scene_id.is_empty()).then_some(d.scene_id.clone());
    let (start, end) = (d.start_ms, d.end_ms);
    if tile.is_none() && scene.is_none() && start.is_none() && end.is_none() {
        return Err(Error::invalid("action.body", "no filter", "give scene_id, tile, start or end (to drop a whole collection, delete its time range)"));
    }
    if let (Some(s), Some(e)) = (start, end) {
        if s >= e {
            return Err(Error::invalid("start", format_time(s), &format!("must be before end ({})", format_time(e))));
        }
    }
    if let Some(s) = &scene {
        if !store.has_scene(s) {
            return Err(Error::not_found(format!("scene {s:?} in collection {:?}", store.meta.name)));
        }
    }
    let forget: Vec<String> = scene.iter().cloned().collect();
    let in_range = move |t: i64| start.is_none_or(|s| t >= s) && end.is_none_or(|e| t < e);
    store.delete(
        |k| tile.is_none_or(|t| k.tile == t) && start.is_none_or(|s| k.month.end_ms() > s) && end.is_none_or(|e| k.month.start_ms() < e),
        |t, s| in_range(t) && scene.as_deref().is_none_or(|id| id == s),
        if tile.is_none() && start.is_none() && end.is_none() { &forget } else { &[] },
    )
}

fn summary(c: &CollectionStore) -> Value {
    json!({
        "name": c.meta.name,
        "profile": c.meta.profile,
        "bands": c.meta.bands.iter().map(|b| b.name.clone()).collect::<Vec<_>>(),
        "resolution": c.meta.grid.resolution,
        "tiles": c.tiles().len(),
        "scenes": c.scene_count(),
    })
}

fn describe(c: &CollectionStore) -> Value {
    let mut v = serde_json::to_value(&c.meta).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.insert("tiles".into(), c.tiles().len().into());
        m.insert("scenes".into(), c.scene_count().into());
        m.insert("chunks".into(), c.chunks(|_| true).len().into());
    }
    v
}

fn describe_tile(c: &CollectionStore, tile: TileId) -> Value {
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

/// Validates a create_collection request into a collection.
pub fn build_collection(req: pb::CreateCollection) -> Result<Collection> {
    collection::validate_collection_name("name", &req.name)?;
    let default_resampling = if req.resampling.is_empty() { None } else { Some(Resampling::try_parse("resampling", &req.resampling)?) };
    let (profile, mut bands, profile_res, qa) = if req.profile.is_empty() {
        (None, Vec::new(), None, None)
    } else {
        let p = collection::profile(&req.profile)
            .ok_or_else(|| Error::invalid("profile", &req.profile, &format!("unknown profile; built-in: {}", PROFILE_NAMES.join(", "))))?;
        if !req.bands.is_empty() {
            return Err(Error::invalid("bands", req.bands.len(), "give either a profile or bands, not both"));
        }
        (Some(p.name.to_string()), p.bands, Some(p.resolution), Some(p.qa))
    };
    for (i, b) in req.bands.iter().enumerate() {
        let field = format!("bands[{i}]");
        collection::validate_band_name(&format!("{field}.name"), &b.name)?;
        if b.name == "valid" || bands.iter().any(|o: &Band| o.name == b.name) {
            return Err(Error::invalid(&format!("{field}.name"), &b.name, "duplicate or reserved band name"));
        }
        let dtype = DType::try_parse(&format!("{field}.dtype"), &b.dtype)?;
        if let Some(nd) = b.nodata {
            if !dtype.holds(nd) {
                return Err(Error::invalid(&format!("{field}.nodata"), nd, &format!("not representable as {}", dtype.name())));
            }
        }
        let resampling = if b.resampling.is_empty() { default_resampling.unwrap_or(Resampling::Nearest) } else { Resampling::try_parse(&format!("{field}.resampling"), &b.resampling)? };
        bands.push(Band { name: b.name.clone(), dtype, nodata: b.nodata, scale: b.scale, offset: b.offset, offset_note: None, resampling });
    }
    if bands.is_empty() {
        return Err(Error::invalid("bands", "[]", "a collection needs a profile or at least one band"));
    }
    let g = req.grid.unwrap_or_default();
    let resolution = if g.resolution == 0.0 { profile_res.ok_or_else(|| Error::invalid("grid.resolution", 0.0, "must be a number > 0 (required without a profile)"))? } else { g.resolution };
    let (crs_def, span) = collection::grid_defaults(&g.crs, g.tile_span);
    let spec = GridSpec::try_new(crs_def.clone(), span, resolution).map_err(|e| match e {
        crate::grid::GridError::TileSpan(v) => Error::invalid("grid.tile_span", v, "must be a finite number > 0"),
        other => Error::invalid("grid.resolution", resolution, &other.to_string()),
    })?;
    let crs_wkt = crs::to_wkt("grid.crs", &crs_def)?;
    Ok(Collection {
        name: req.name,
        profile,
        bands,
        grid: GridDoc { crs: crs_def, crs_wkt, tile_span: spec.tile_span, resolution, tile_px: spec.tile_px, pixel_size: spec.pixel_size() },
        qa,
    })
}
