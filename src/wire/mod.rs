//! Request decoding: the protobuf messages of `proto/` and their JSON forms
//! (`docs/protocol.md`) into validated domain requests.
//!
//! Both encodings meet in the generated protobuf structs: JSON is parsed into
//! a mirror struct, converted to the protobuf struct, and one validation path
//! turns that into an [`IngestSpec`] or [`QuerySpec`]. Bytes whose first
//! non-blank byte is `{` are JSON; anything else is protobuf.

mod collection;
mod command;
mod load;
mod steps;

pub use collection::build_collection;
pub use command::{Command, Expect, FLIGHT_SQL_TYPE_PREFIX, INGEST_TYPE_URL, QUERY_TYPE_URL};
pub use load::{Fuse, Geometry, GroupBy, LoadSpec, OutputSpec, Ring};
pub use steps::{MaskSpec, ReduceHow, ReduceSpec, StepsSpec};

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use pixelquery_proto::v1 as pb;
use prost::Message;
use serde::Deserialize;
use serde_json::Value;

use crate::collection::{validate_band_name, validate_collection_name, DType, Resampling};
use crate::error::{Error, Result};
use crate::grid::TileId;

/// Longest scene id; it is stored in every row and logged.
pub const MAX_SCENE_ID: usize = 256;

fn is_json(bytes: &[u8]) -> bool {
    bytes.iter().find(|b| !b.is_ascii_whitespace()).is_some_and(|b| *b == b'{')
}

fn decode<P: Message + Default, J: for<'de> Deserialize<'de> + TryInto<P, Error = Error>>(what: &str, bytes: &[u8]) -> Result<P> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(Error::invalid(what, "", "empty; expected a protobuf message or a JSON object"));
    }
    if is_json(bytes) {
        let j: J = serde_json::from_slice(bytes).map_err(|e| Error::invalid(what, String::from_utf8_lossy(bytes), &format!("malformed JSON: {e}")))?;
        j.try_into()
    } else {
        P::decode(bytes).map_err(|e| Error::invalid(what, format!("{} bytes", bytes.len()), &format!("malformed protobuf: {e}")))
    }
}

/// A time in JSON: RFC 3339, a plain date or date-time (UTC), or integer ms.
fn json_time(field: &str, v: &Value) -> Result<i64> {
    match v {
        Value::Number(n) => n.as_i64().ok_or_else(|| Error::invalid(field, n, "expected integer milliseconds since the epoch")),
        Value::String(s) => parse_time(field, s),
        other => Err(Error::invalid(field, other, "expected an RFC 3339 string or integer milliseconds")),
    }
}

/// Parses RFC 3339 (`2024-06-15T02:03:04Z`), a date-time without offset
/// (taken as UTC) or a plain date (`2024-06-15`, midnight UTC).
pub fn parse_time(field: &str, s: &str) -> Result<i64> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Ok(t.and_utc().timestamp_millis());
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).map(|t| t.and_utc().timestamp_millis()).unwrap_or_default());
    }
    Err(Error::invalid(field, s, "expected an RFC 3339 time such as 2024-06-15T02:03:04Z, a date such as 2024-06-15, or integer milliseconds"))
}

/// RFC 3339 text of epoch milliseconds (for JSON answers).
pub fn format_time(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)).unwrap_or_else(|| ms.to_string())
}

/// A nodata value in JSON: a number, or `"nan"` (any case) for float bands
/// (JSON has no NaN).
fn json_nodata<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<f64>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_f64().map(Some).ok_or_else(|| serde::de::Error::custom(format!("nodata {n} is not a number"))),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("nan") => Ok(Some(f64::NAN)),
        Some(other) => Err(serde::de::Error::custom(format!("nodata must be a number or \"nan\", not {other}"))),
    }
}

// ---- JSON mirrors of the protobuf messages ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BandJson {
    name: String,
    dtype: String,
    #[serde(default, deserialize_with = "json_nodata")]
    nodata: Option<f64>,
    #[serde(default)]
    scale: Option<f64>,
    #[serde(default)]
    offset: Option<f64>,
    #[serde(default)]
    resampling: Option<String>,
}

impl From<BandJson> for pb::BandSpec {
    fn from(b: BandJson) -> Self {
        pb::BandSpec { name: b.name, dtype: b.dtype, nodata: b.nodata, scale: b.scale, offset: b.offset, resampling: b.resampling.unwrap_or_default() }
    }
}

/// `resampling`: one method for all bands, or a map band -> method.
#[derive(Deserialize)]
#[serde(untagged)]
enum ResamplingJson {
    All(String),
    PerBand(BTreeMap<String, String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IngestJson {
    collection: String,
    scene_id: String,
    acquired_at: Value,
    crs: String,
    geotransform: Vec<f64>,
    width: u32,
    height: u32,
    bands: Vec<BandJson>,
    #[serde(default)]
    resampling: Option<ResamplingJson>,
    #[serde(default)]
    fingerprint: Option<String>,
    /// Read by hand, so that a value of another type names the field.
    #[serde(default)]
    replace: Option<Value>,
    #[serde(default)]
    processing_baseline: Option<String>,
}

impl TryFrom<IngestJson> for pb::IngestRequest {
    type Error = Error;
    fn try_from(j: IngestJson) -> Result<Self> {
        let (resampling, resampling_by_band) = match j.resampling {
            None => (String::new(), Default::default()),
            Some(ResamplingJson::All(s)) => (s, Default::default()),
            Some(ResamplingJson::PerBand(m)) => (String::new(), m.into_iter().collect()),
        };
        Ok(pb::IngestRequest {
            collection: j.collection,
            scene_id: j.scene_id,
            acquired_at_ms: json_time("acquired_at", &j.acquired_at)?,
            crs: j.crs,
            geotransform: j.geotransform,
            width: j.width,
            height: j.height,
            bands: j.bands.into_iter().map(Into::into).collect(),
            resampling,
            resampling_by_band,
            fingerprint: j.fingerprint.unwrap_or_default(),
            replace: match j.replace {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => b,
                Some(other) => return Err(Error::invalid("replace", other, "expected true or false")),
            },
            processing_baseline: j.processing_baseline.unwrap_or_default(),
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryJson {
    collection: String,
    #[serde(default)]
    tiles: Vec<String>,
    #[serde(default)]
    bbox: Vec<f64>,
    #[serde(default)]
    bbox_crs: String,
    #[serde(default)]
    start: Option<Value>,
    #[serde(default)]
    end: Option<Value>,
    #[serde(default)]
    bands: Vec<String>,
    #[serde(default)]
    point: Vec<f64>,
    #[serde(default)]
    geometry: Option<Value>,
    #[serde(default)]
    geometry_crs: String,
    #[serde(default)]
    output: Option<Value>,
    #[serde(default)]
    groupby: String,
    #[serde(default)]
    fuse: String,
    #[serde(default)]
    mask: Option<Value>,
    #[serde(default)]
    scale: Option<Value>,
    #[serde(default)]
    compute: Option<Value>,
    #[serde(default)]
    reduce: Option<Value>,
    #[serde(default)]
    into: String,
    #[serde(default)]
    decompress: bool,
    #[serde(default)]
    as_of: Option<i64>,
}

/// An optional JSON time (absent or null: `None`).
pub(crate) fn opt_time(field: &str, v: Option<Value>) -> Result<Option<i64>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => json_time(field, &v).map(Some),
    }
}

impl TryFrom<QueryJson> for pb::Query {
    type Error = Error;
    fn try_from(j: QueryJson) -> Result<Self> {
        Ok(pb::Query {
            collection: j.collection,
            tiles: j.tiles,
            bbox: j.bbox,
            bbox_crs: j.bbox_crs,
            start_ms: opt_time("start", j.start)?,
            end_ms: opt_time("end", j.end)?,
            bands: j.bands,
            point: j.point,
            geometry: load::geometry_from_json(j.geometry)?,
            geometry_crs: j.geometry_crs,
            output: match j.output {
                None | Some(Value::Null) => None,
                Some(v) => Some(load::output_from_json(v)?),
            },
            groupby: j.groupby,
            fuse: j.fuse,
            mask: steps::mask_from_json(j.mask)?,
            scale: match j.scale {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => b,
                Some(other) => return Err(Error::invalid("scale", other, "expected true or false")),
            },
            compute: steps::compute_from_json(j.compute)?,
            reduce: steps::reduce_from_json(j.reduce)?,
            into: j.into,
            decompress: j.decompress,
            as_of: j.as_of,
        })
    }
}

/// The JSON form of a `Query` (endpoint tickets are JSON so that they can
/// be read, logged and rebuilt by hand).
pub fn query_message_json(q: &pb::Query) -> Vec<u8> {
    let mut m = serde_json::Map::new();
    m.insert("collection".into(), q.collection.clone().into());
    let mut put = |k: &str, v: Value, present: bool| {
        if present {
            m.insert(k.into(), v);
        }
    };
    put("tiles", q.tiles.clone().into(), !q.tiles.is_empty());
    put("bbox", q.bbox.clone().into(), !q.bbox.is_empty());
    put("bbox_crs", q.bbox_crs.clone().into(), !q.bbox_crs.is_empty());
    put("start", q.start_ms.into(), q.start_ms.is_some());
    put("end", q.end_ms.into(), q.end_ms.is_some());
    put("bands", q.bands.clone().into(), !q.bands.is_empty());
    put("point", q.point.clone().into(), !q.point.is_empty());
    put("geometry", serde_json::from_str(&q.geometry).unwrap_or(Value::Null), !q.geometry.is_empty());
    put("geometry_crs", q.geometry_crs.clone().into(), !q.geometry_crs.is_empty());
    put("output", q.output.as_ref().map(load::output_to_json).unwrap_or(Value::Null), q.output.is_some());
    put("groupby", q.groupby.clone().into(), !q.groupby.is_empty());
    put("fuse", q.fuse.clone().into(), !q.fuse.is_empty());
    put("mask", q.mask.as_ref().map(steps::mask_to_json).unwrap_or(Value::Null), q.mask.is_some());
    put("scale", Value::Bool(q.scale), q.scale);
    put("compute", Value::Object(q.compute.iter().map(|(k, v)| (k.clone(), Value::from(v.clone()))).collect()), !q.compute.is_empty());
    put("reduce", q.reduce.as_ref().map(steps::reduce_to_json).unwrap_or(Value::Null), q.reduce.is_some());
    put("into", q.into.clone().into(), !q.into.is_empty());
    put("decompress", Value::Bool(q.decompress), q.decompress);
    put("as_of", q.as_of.map(Value::from).unwrap_or(Value::Null), q.as_of.is_some());
    serde_json::to_vec(&Value::Object(m)).unwrap_or_default()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CriteriaJson {
    #[serde(default)]
    collection: String,
    #[serde(default)]
    bbox: Vec<f64>,
    #[serde(default)]
    bbox_crs: String,
    #[serde(default)]
    start: Option<Value>,
    #[serde(default)]
    end: Option<Value>,
    #[serde(default)]
    bands: Vec<String>,
}

impl TryFrom<CriteriaJson> for pb::Criteria {
    type Error = Error;
    fn try_from(j: CriteriaJson) -> Result<Self> {
        Ok(pb::Criteria {
            collection: j.collection,
            bbox: j.bbox,
            bbox_crs: j.bbox_crs,
            start_ms: opt_time("start", j.start)?,
            end_ms: opt_time("end", j.end)?,
            bands: j.bands,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GridJson {
    #[serde(default)]
    crs: String,
    #[serde(default)]
    tile_span: f64,
    resolution: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateCollectionJson {
    name: String,
    #[serde(default)]
    profile: String,
    #[serde(default)]
    bands: Vec<BandJson>,
    #[serde(default)]
    grid: Option<GridJson>,
    #[serde(default)]
    resampling: String,
    #[serde(default)]
    compression: String,
    #[serde(default)]
    compression_level: Option<i32>,
}

impl TryFrom<CreateCollectionJson> for pb::CreateCollection {
    type Error = Error;
    fn try_from(j: CreateCollectionJson) -> Result<Self> {
        Ok(pb::CreateCollection {
            name: j.name,
            profile: j.profile,
            bands: j.bands.into_iter().map(Into::into).collect(),
            grid: j.grid.map(|g| pb::GridSpec { crs: g.crs, tile_span: g.tile_span, resolution: g.resolution }),
            resampling: j.resampling,
            compression: j.compression,
            compression_level: j.compression_level,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DescribeJson {
    collection: String,
    #[serde(default)]
    tile: String,
}

impl TryFrom<DescribeJson> for pb::Describe {
    type Error = Error;
    fn try_from(j: DescribeJson) -> Result<Self> {
        Ok(pb::Describe { collection: j.collection, tile: j.tile })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteJson {
    collection: String,
    #[serde(default)]
    scene_id: String,
    #[serde(default)]
    tile: String,
    #[serde(default)]
    start: Option<Value>,
    #[serde(default)]
    end: Option<Value>,
}

impl TryFrom<DeleteJson> for pb::Delete {
    type Error = Error;
    fn try_from(j: DeleteJson) -> Result<Self> {
        Ok(pb::Delete { collection: j.collection, scene_id: j.scene_id, tile: j.tile, start_ms: opt_time("start", j.start)?, end_ms: opt_time("end", j.end)? })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompactJson {
    collection: String,
    #[serde(default)]
    tiles: Vec<String>,
}

impl TryFrom<CompactJson> for pb::Compact {
    type Error = Error;
    fn try_from(j: CompactJson) -> Result<Self> {
        Ok(pb::Compact { collection: j.collection, tiles: j.tiles })
    }
}

pub fn decode_delete(bytes: &[u8]) -> Result<pb::Delete> {
    decode::<_, DeleteJson>("action.body", bytes)
}

pub fn decode_compact(bytes: &[u8]) -> Result<pb::Compact> {
    decode::<_, CompactJson>("action.body", bytes)
}

// ---- validated domain requests ----

/// A band of an incoming raster.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceBand {
    pub name: String,
    pub dtype: DType,
    pub nodata: Option<f64>,
    /// Explicit resampling for this band, if the request gave one.
    pub resampling: Option<Resampling>,
}

/// A validated `DoPut` descriptor. Collection-dependent checks (band names,
/// dtypes) happen in ingest, which knows the collection.
#[derive(Debug, Clone, PartialEq)]
pub struct IngestSpec {
    pub collection: String,
    pub scene_id: String,
    pub acquired_at_ms: i64,
    pub crs: String,
    pub geotransform: [f64; 6],
    pub width: u32,
    pub height: u32,
    pub bands: Vec<SourceBand>,
    /// The client's fingerprint of the content, if it gave one.
    pub fingerprint: Option<String>,
    /// Replace a scene stored under this id with another time or content.
    pub replace: bool,
    /// The product's processing baseline, normalised to `NN.NN`.
    pub baseline: Option<String>,
}

pub fn decode_ingest(bytes: &[u8]) -> Result<IngestSpec> {
    ingest_spec(decode::<_, IngestJson>("descriptor.cmd", bytes)?)
}

/// A scene id: 1 to [`MAX_SCENE_ID`] bytes without control characters.
pub fn validate_scene_id(field: &str, id: &str) -> Result<()> {
    if id.is_empty() || id.len() > MAX_SCENE_ID || id.chars().any(|c| c.is_control()) {
        return Err(Error::invalid(field, id, &format!("must be 1 to {MAX_SCENE_ID} bytes without control characters")));
    }
    Ok(())
}

/// Validates an `IngestRequest` into what the ingest pipeline takes.
pub fn ingest_spec(r: pb::IngestRequest) -> Result<IngestSpec> {
    validate_collection_name("collection", &r.collection)?;
    validate_scene_id("scene_id", &r.scene_id)?;
    if r.fingerprint.len() > 128 || r.fingerprint.chars().any(|c| c.is_control()) {
        return Err(Error::invalid("fingerprint", &r.fingerprint, "must be at most 128 bytes without control characters"));
    }
    let baseline = match r.processing_baseline.trim() {
        "" => None,
        b => Some(
            crate::compute::parse_baseline(b)
                .map(|h| format!("{:02}.{:02}", h / 100, h % 100))
                .ok_or_else(|| Error::invalid("processing_baseline", b, "expected a processing baseline such as 04.00 or N0400"))?,
        ),
    };
    if r.crs.trim().is_empty() {
        return Err(Error::invalid("crs", &r.crs, "required: an EPSG code such as EPSG:32652, WKT or a PROJ string"));
    }
    let gt: [f64; 6] = r.geotransform.as_slice().try_into().map_err(|_| Error::invalid("geotransform", &r.geotransform, "expected 6 numbers in GDAL order"))?;
    if gt.iter().any(|v| !v.is_finite()) {
        return Err(Error::invalid("geotransform", gt, "all 6 numbers must be finite"));
    }
    let det = gt[1] * gt[5] - gt[2] * gt[4];
    if gt[1] == 0.0 || gt[5] == 0.0 || det == 0.0 || !det.is_finite() {
        return Err(Error::invalid("geotransform", gt, "pixel width (element 1) and height (element 5) must be non-zero"));
    }
    if r.width == 0 || r.height == 0 {
        return Err(Error::invalid("width/height", (r.width, r.height), "must both be > 0"));
    }
    if r.bands.is_empty() {
        return Err(Error::invalid("bands", "[]", "at least one band is required"));
    }
    let default = if r.resampling.is_empty() { None } else { Some(Resampling::try_parse("resampling", &r.resampling)?) };
    let mut bands: Vec<SourceBand> = Vec::with_capacity(r.bands.len());
    for (i, b) in r.bands.iter().enumerate() {
        let field = format!("bands[{i}]");
        validate_band_name(&format!("{field}.name"), &b.name)?;
        if b.name == "valid" {
            return Err(Error::invalid(&format!("{field}.name"), &b.name, "`valid` is the reserved mask column"));
        }
        if bands.iter().any(|o| o.name == b.name) {
            return Err(Error::invalid(&format!("{field}.name"), &b.name, "band listed twice"));
        }
        let dtype = DType::try_parse(&format!("{field}.dtype"), &b.dtype)?;
        if let Some(nd) = b.nodata {
            if !dtype.holds(nd) {
                return Err(Error::invalid(&format!("{field}.nodata"), nd, &format!("not representable as {}", dtype.name())));
            }
        }
        let per_band = match r.resampling_by_band.get(&b.name) {
            Some(m) => Some(Resampling::try_parse(&format!("resampling.{}", b.name), m)?),
            None => default,
        };
        bands.push(SourceBand { name: b.name.clone(), dtype, nodata: b.nodata, resampling: per_band });
    }
    if let Some(unknown) = r.resampling_by_band.keys().find(|k| !bands.iter().any(|b| &b.name == *k)) {
        return Err(Error::invalid("resampling", unknown, "names a band that is not in bands"));
    }
    Ok(IngestSpec {
        collection: r.collection,
        scene_id: r.scene_id,
        acquired_at_ms: r.acquired_at_ms,
        crs: r.crs,
        geotransform: gt,
        width: r.width,
        height: r.height,
        bands,
        fingerprint: (!r.fingerprint.is_empty()).then_some(r.fingerprint),
        replace: r.replace,
        baseline,
    })
}

/// Where a query looks.
#[derive(Debug, Clone, PartialEq)]
pub enum Area {
    /// Every tile of the collection.
    All,
    Tiles(Vec<TileId>),
    /// `[min_x, min_y, max_x, max_y]` in `crs`.
    BBox {
        bbox: [f64; 4],
        crs: String,
    },
    /// One location's time series.
    Point {
        xy: [f64; 2],
        crs: String,
    },
}

/// A validated `Query` (or ListFlights criteria).
#[derive(Debug, Clone, PartialEq)]
pub struct QuerySpec {
    /// Empty only for ListFlights criteria without a collection.
    pub collection: String,
    pub area: Area,
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
    pub bands: Vec<String>,
    /// The analysis-ready keys (DESIGN §4b), if any: the answer is then
    /// resampled onto an output grid and served in windows.
    pub load: Option<LoadSpec>,
    /// `mask`, `scale`, `compute`.
    pub steps: StepsSpec,
    /// Send stored compressed batches decompressed.
    pub decompress: bool,
    /// The catalog version the answer is pinned to (object storage).
    pub as_of: Option<i64>,
}

impl QuerySpec {
    /// Whether `t` lies in `[start, end)`.
    pub fn time_matches(&self, t: i64) -> bool {
        self.start_ms.is_none_or(|s| t >= s) && self.end_ms.is_none_or(|e| t < e)
    }
}

const DEFAULT_BBOX_CRS: &str = "EPSG:4326";

/// Most tile ids one query may list.
pub const MAX_QUERY_TILES: usize = 10_000;

/// Validates a query (ListFlights criteria arrive as a query without tiles
/// or point); an empty collection is allowed for criteria only.
fn validate_query(q: pb::Query) -> Result<QuerySpec> {
    let pb::Query {
        collection,
        tiles,
        bbox,
        bbox_crs,
        start_ms,
        end_ms,
        bands,
        point,
        geometry,
        geometry_crs,
        output,
        groupby,
        fuse,
        mask,
        scale,
        compute,
        reduce,
        into,
        decompress,
        as_of,
    } = q;
    let load = load::load_spec(&geometry, &geometry_crs, output, &groupby, &fuse)?;
    let steps = steps::steps_spec(mask, scale, compute, reduce, into)?;
    if steps.into.is_some() && !point.is_empty() {
        return Err(Error::invalid("into", steps.into.as_deref().unwrap_or_default(), "a point answer cannot be stored as a collection; reduce an area"));
    }
    if load.is_some() && !point.is_empty() {
        return Err(Error::invalid(
            "point",
            &point,
            "a point answer takes none of geometry, output, groupby and fuse yet; query the area with a bbox and output instead",
        ));
    }
    if !collection.is_empty() {
        validate_collection_name("collection", &collection)?;
    }
    for (i, b) in bands.iter().enumerate() {
        validate_band_name(&format!("bands[{i}]"), b)?;
    }
    if !steps.compute.is_empty() && bands.is_empty() {
        return Err(Error::invalid("bands", "[]", "with compute, list the bands the answer holds (stored bands and computed names)"));
    }
    if let (Some(s), Some(e)) = (start_ms, end_ms) {
        if s >= e {
            return Err(Error::invalid("start", format_time(s), &format!("must be before end ({})", format_time(e))));
        }
    }
    let crs = if bbox_crs.trim().is_empty() { DEFAULT_BBOX_CRS.to_string() } else { bbox_crs };
    let chosen = [!tiles.is_empty(), !bbox.is_empty(), !point.is_empty()].iter().filter(|b| **b).count();
    if chosen > 1 {
        return Err(Error::invalid("tiles/bbox/point", "several given", "give at most one of tiles, bbox and point"));
    }
    if tiles.len() > MAX_QUERY_TILES {
        return Err(Error::invalid(
            "tiles",
            format!("{} tile ids", tiles.len()),
            &format!("a query names at most {MAX_QUERY_TILES} tiles; use a bbox for larger areas"),
        ));
    }
    let area = if !tiles.is_empty() {
        let ids = tiles
            .iter()
            .enumerate()
            .map(|(i, t)| t.parse::<TileId>().map_err(|e| Error::invalid(&format!("tiles[{i}]"), t, &e.to_string())))
            .collect::<Result<Vec<_>>>()?;
        Area::Tiles(ids)
    } else if !bbox.is_empty() {
        let b: [f64; 4] = bbox.as_slice().try_into().map_err(|_| Error::invalid("bbox", &bbox, "expected [min_x, min_y, max_x, max_y]"))?;
        if b.iter().any(|v| !v.is_finite()) || b[0] > b[2] || b[1] > b[3] {
            return Err(Error::invalid("bbox", b, "expected finite [min_x, min_y, max_x, max_y] with min <= max"));
        }
        Area::BBox { bbox: b, crs }
    } else if !point.is_empty() {
        let p: [f64; 2] = point.as_slice().try_into().map_err(|_| Error::invalid("point", &point, "expected [x, y]"))?;
        if p.iter().any(|v| !v.is_finite()) {
            return Err(Error::invalid("point", p, "coordinates must be finite"));
        }
        Area::Point { xy: p, crs }
    } else {
        Area::All
    };
    Ok(QuerySpec { collection, area, start_ms, end_ms, bands, load, steps, decompress, as_of })
}

/// Decodes a `Query` (GetFlightInfo / GetSchema cmd, or a DoGet ticket).
pub fn decode_query(field: &str, bytes: &[u8]) -> Result<QuerySpec> {
    query_spec(decode::<_, QueryJson>(field, bytes)?)
}

/// Validates a `Query` (its collection required) into a plan's input.
pub fn query_spec(q: pb::Query) -> Result<QuerySpec> {
    validate_collection_name("collection", &q.collection)?;
    validate_query(q)
}

/// Decodes ListFlights criteria; empty bytes mean everything.
pub fn decode_criteria(bytes: &[u8]) -> Result<QuerySpec> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(QuerySpec {
            collection: String::new(),
            area: Area::All,
            start_ms: None,
            end_ms: None,
            bands: vec![],
            load: None,
            steps: StepsSpec::default(),
            decompress: false,
            as_of: None,
        });
    }
    let c: pb::Criteria = decode::<_, CriteriaJson>("criteria.expression", bytes)?;
    validate_query(pb::Query {
        collection: c.collection,
        bbox: c.bbox,
        bbox_crs: c.bbox_crs,
        start_ms: c.start_ms,
        end_ms: c.end_ms,
        bands: c.bands,
        ..Default::default()
    })
}

impl QuerySpec {
    /// The query as a message again (to narrow it into endpoint tickets).
    pub fn to_message(&self) -> pb::Query {
        let mut q =
            pb::Query { collection: self.collection.clone(), start_ms: self.start_ms, end_ms: self.end_ms, bands: self.bands.clone(), ..Default::default() };
        match &self.area {
            Area::All => {}
            Area::Tiles(t) => q.tiles = t.iter().map(|t| t.to_string()).collect(),
            Area::BBox { bbox, crs } => (q.bbox, q.bbox_crs) = (bbox.to_vec(), crs.clone()),
            Area::Point { xy, crs } => (q.point, q.bbox_crs) = (xy.to_vec(), crs.clone()),
        }
        let st = &self.steps;
        q.mask = st.mask.as_ref().map(|m| match m {
            MaskSpec::Qa => pb::Mask { qa: true, ..Default::default() },
            MaskSpec::Invalid { band, values } => pb::Mask { band: band.clone(), invalid: values.clone(), ..Default::default() },
            MaskSpec::Valid { band, values } => pb::Mask { band: band.clone(), valid: values.clone(), ..Default::default() },
            MaskSpec::Bits { band, bits } => pb::Mask { band: band.clone(), bits: bits.clone(), ..Default::default() },
        });
        q.scale = st.scale;
        q.compute = st.compute.iter().cloned().collect();
        q.reduce = st.reduce.as_ref().map(ReduceSpec::to_message);
        q.into = st.into.clone().unwrap_or_default();
        q.decompress = self.decompress;
        q.as_of = self.as_of;
        if let Some(l) = &self.load {
            if let Some(g) = &l.geometry {
                (q.geometry, q.geometry_crs) = (g.text.clone(), g.crs.clone());
            }
            let o = &l.output;
            q.output = Some(pb::Output {
                crs: o.crs.clone().unwrap_or_default(),
                resolution: o.resolution.map(|(x, y)| vec![x, y]).unwrap_or_default(),
                resampling: o.resampling.map(|r| r.name().to_string()).unwrap_or_default(),
                resampling_by_band: o.resampling_by_band.iter().map(|(b, r)| (b.clone(), r.name().to_string())).collect(),
                window: o.window,
                at: o.at.map(|(r, c)| vec![r, c]).unwrap_or_default(),
            });
            (q.groupby, q.fuse) = (l.groupby.name().to_string(), l.fuse.name().to_string());
        }
        q
    }
}

/// Encodes a query as the JSON ticket of one endpoint.
pub fn query_json(
    collection: &str,
    tiles: &[String],
    bands: &[String],
    (start_ms, end_ms): (Option<i64>, Option<i64>),
    decompress: bool,
    as_of: Option<i64>,
) -> Vec<u8> {
    let mut m = serde_json::Map::new();
    m.insert("collection".into(), collection.into());
    m.insert("tiles".into(), tiles.into());
    m.insert("bands".into(), bands.into());
    if let Some(s) = start_ms {
        m.insert("start".into(), s.into());
    }
    if let Some(e) = end_ms {
        m.insert("end".into(), e.into());
    }
    if decompress {
        m.insert("decompress".into(), true.into());
    }
    if let Some(v) = as_of {
        m.insert("as_of".into(), v.into());
    }
    serde_json::to_vec(&Value::Object(m)).unwrap_or_default()
}

pub fn decode_create_collection(bytes: &[u8]) -> Result<pb::CreateCollection> {
    decode::<_, CreateCollectionJson>("action.body", bytes)
}

pub fn decode_describe(bytes: &[u8]) -> Result<pb::Describe> {
    decode::<_, DescribeJson>("action.body", bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INGEST: &str = r#"{"collection": "s2", "scene_id": "S2A_20240615_T52SCG",
        "acquired_at": "2024-06-15T02:03:04Z", "crs": "EPSG:32652",
        "geotransform": [300000, 10, 0, 4200000, 0, -10], "width": 1024, "height": 1024,
        "bands": [{"name": "red", "dtype": "uint16", "nodata": 0}, {"name": "nir", "dtype": "uint16", "nodata": 0}],
        "resampling": "bilinear"}"#;

    #[test]
    fn json_and_protobuf_ingest_requests_agree() {
        let from_json = decode_ingest(INGEST.as_bytes()).unwrap();
        assert_eq!(from_json.acquired_at_ms, 1718416984000);
        assert_eq!(from_json.bands[1].resampling, Some(Resampling::Bilinear));
        let pb = pb::IngestRequest {
            collection: "s2".into(),
            scene_id: "S2A_20240615_T52SCG".into(),
            acquired_at_ms: 1718416984000,
            crs: "EPSG:32652".into(),
            geotransform: vec![300000.0, 10.0, 0.0, 4200000.0, 0.0, -10.0],
            width: 1024,
            height: 1024,
            bands: ["red", "nir"]
                .iter()
                .map(|n| pb::BandSpec { name: n.to_string(), dtype: "uint16".into(), nodata: Some(0.0), ..Default::default() })
                .collect(),
            resampling: "bilinear".into(),
            resampling_by_band: Default::default(),
            ..Default::default()
        };
        assert_eq!(decode_ingest(&pb.encode_to_vec()).unwrap(), from_json);
    }

    #[test]
    fn times_parse_in_every_documented_form() {
        assert_eq!(parse_time("t", "2024-01-01").unwrap(), 1704067200000);
        assert_eq!(parse_time("t", "2024-01-01T00:00:00").unwrap(), 1704067200000);
        assert_eq!(parse_time("t", "2024-01-01T09:00:00+09:00").unwrap(), 1704067200000);
        assert!(parse_time("t", "yesterday").is_err());
        let q = decode_query("ticket", br#"{"collection": "s2", "start": 1704067200000, "end": "2024-02-01"}"#).unwrap();
        assert_eq!((q.start_ms, q.end_ms), (Some(1704067200000), Some(1706745600000)));
    }

    #[test]
    fn bad_requests_name_the_field() {
        let cases: [(&str, &str); 6] = [
            (r#"{"collection": "s2", "start": "2024-02-01", "end": "2024-01-01"}"#, "start"),
            (r#"{"collection": "s2", "tiles": ["x1_y1"]}"#, "tiles[0]"),
            (r#"{"collection": "S2"}"#, "collection"),
            (r#"{"collection": "s2", "bbox": [1, 2, 3]}"#, "bbox"),
            (r#"{"collection": "s2", "colection": "x"}"#, "ticket"),
            (r#"{"collection": "s2", "point": [1, 2], "tiles": ["x0001_y0001"]}"#, "tiles/bbox/point"),
        ];
        for (json, field) in cases {
            match decode_query("ticket", json.as_bytes()) {
                Err(Error::Invalid { field: f, .. }) => assert_eq!(f, field, "{json}"),
                other => panic!("{json}: {other:?}"),
            }
        }
    }

    #[test]
    fn endpoint_tickets_decode_back() {
        let t = query_json("s2", &["x4380_y1632".into()], &["red".into()], (Some(5), Some(9)), false, None);
        let q = decode_query("ticket", &t).unwrap();
        assert_eq!(q.area, Area::Tiles(vec![TileId::new(4380, 1632)]));
        assert_eq!((q.start_ms, q.end_ms, q.bands), (Some(5), Some(9), vec!["red".to_string()]));
    }
}
