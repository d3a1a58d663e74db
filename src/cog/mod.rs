//! GeoTIFF/COG files to DoPut scenes: discover files, read what their names
//! and metadata say, group them into scenes (one multi-band file, or a
//! product's one-file-per-band set), and read them in row strips.
//!
//! Shared by the `pixelquery ingest` command (client side) and the
//! `ingest_path` action (server side). GDAL datasets are opened, read and
//! dropped on the thread that reads a scene.

pub mod names;
pub mod send;
pub mod stac;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, ArrowPrimitiveType, PrimitiveArray, RecordBatch};
use arrow_buffer::ScalarBuffer;
use arrow_schema::{Field, Schema, SchemaRef};
use gdal::raster::{GdalDataType, GdalType};
use gdal::{Dataset, Metadata};
use pixelquery_proto::v1 as pb;

use crate::collection::{validate_band_name, DType};
use crate::error::{Error, Result};
use crate::with_arrow_type;

/// A DoPut batch is cut to about this many bytes (whole rows).
pub const TARGET_BATCH_BYTES: usize = 4 << 20;

/// How files become scenes of one collection.
#[derive(Debug, Clone, Default)]
pub struct CogOptions {
    pub collection: String,
    /// The collection's band names, in order.
    pub collection_bands: Vec<String>,
    /// Explicit mapping of 1-based file band indexes to band names.
    pub band_map: Vec<(usize, String)>,
    /// Explicit acquisition time (epoch ms) for every file.
    pub time_ms: Option<i64>,
    /// Resampling for every band (empty: the collection's defaults).
    pub resampling: String,
    /// Replace scenes stored under the same id with another time or content.
    pub replace: bool,
    /// The collection's built-in profile, if it has one: products of
    /// another processing level are refused.
    pub profile: Option<String>,
    /// The processing baseline of every file (else each file's metadata or
    /// product id says it, if it does).
    pub baseline: Option<String>,
}

/// A file or scene that cannot be ingested, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub path: String,
    pub reason: String,
}

/// One scene to send: its request and where each band comes from.
#[derive(Debug, Clone)]
pub struct ScenePlan {
    pub request: pb::IngestRequest,
    /// `(file, 1-based band index)` per band of `request.bands`.
    pub sources: Vec<(String, usize)>,
    pub files: Vec<String>,
    /// Where the time came from.
    pub time_source: String,
    /// Pixel bytes the scene sends.
    pub bytes: u64,
}

/// Raster files under `paths` (directories recursively, links to
/// directories not followed; `.tif`, `.tiff`, any case), sorted. GDAL
/// `/vsi...` paths are taken as they are.
pub fn discover(paths: &[String]) -> (Vec<String>, Vec<Failure>) {
    let (mut files, mut failures) = (Vec::new(), Vec::new());
    let is_tiff = |p: &Path| p.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("tif") || e.eq_ignore_ascii_case("tiff"));
    for p in paths {
        if p.starts_with("/vsi") {
            files.push(p.clone());
            continue;
        }
        let path = PathBuf::from(p);
        if path.is_dir() {
            let mut stack = vec![path];
            while let Some(dir) = stack.pop() {
                match std::fs::read_dir(&dir) {
                    Ok(entries) => {
                        for e in entries.flatten() {
                            let q = e.path();
                            // Links to directories are not followed: a link
                            // loop would make the scan endless, and a link
                            // may lead out of an ingest root.
                            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
                            if is_dir {
                                stack.push(q);
                            } else if is_tiff(&q) && !q.is_dir() {
                                files.push(q.to_string_lossy().to_string());
                            }
                        }
                    }
                    Err(e) => failures.push(Failure { path: dir.display().to_string(), reason: format!("cannot list directory: {e}") }),
                }
            }
        } else if path.is_file() {
            files.push(p.clone());
        } else {
            failures.push(Failure { path: p.clone(), reason: "no such file or directory".into() });
        }
    }
    files.sort();
    files.dedup();
    (files, failures)
}

/// What one file holds.
#[derive(Debug, Clone)]
struct FileInfo {
    path: String,
    stem: String,
    width: u32,
    height: u32,
    geotransform: [f64; 6],
    crs_wkt: String,
    dtypes: Vec<DType>,
    nodata: Vec<Option<f64>>,
    descriptions: Vec<String>,
    metadata: Vec<(String, String)>,
}

fn gdal_dtype(t: GdalDataType) -> Option<DType> {
    Some(match t {
        GdalDataType::UInt8 => DType::Uint8,
        GdalDataType::UInt16 => DType::Uint16,
        GdalDataType::Int16 => DType::Int16,
        GdalDataType::UInt32 => DType::Uint32,
        GdalDataType::Int32 => DType::Int32,
        GdalDataType::Float32 => DType::Float32,
        GdalDataType::Float64 => DType::Float64,
        _ => return None,
    })
}

/// Opens a raster to ingest with GDAL's GeoTIFF driver only (COGs are
/// GeoTIFFs): a VRT or any other format that names further files is
/// refused whatever its file name, so a file inside the ingest roots cannot
/// make GDAL read one outside them. GDAL is told the directory is empty, so
/// no sibling (an external mask or overview, maybe a link elsewhere) is
/// read either.
pub fn open_raster(path: &str) -> gdal::errors::Result<Dataset> {
    gdal::config::set_thread_local_config_option("GDAL_DISABLE_READDIR_ON_OPEN", "EMPTY_DIR")?;
    let options = gdal::DatasetOptions { open_flags: gdal::GdalOpenFlags::GDAL_OF_RASTER, allowed_drivers: Some(&["GTiff"]), ..Default::default() };
    Dataset::open_ex(path, options)
}

fn inspect(path: &str) -> Result<FileInfo, String> {
    let ds = open_raster(path).map_err(|_| "GDAL cannot open it as a raster (not a GeoTIFF/COG, or unreadable)".to_string())?;
    let (w, h) = ds.raster_size();
    let geotransform = ds.geo_transform().map_err(|_| "it has no geotransform (not georeferenced)".to_string())?;
    let crs_wkt = ds.spatial_ref().and_then(|s| s.to_wkt()).map_err(|_| "it has no CRS".to_string())?;
    let mut dtypes = Vec::new();
    let mut nodata = Vec::new();
    let mut descriptions = Vec::new();
    for i in 1..=ds.raster_count() {
        let b = ds.rasterband(i).map_err(|e| format!("band {i}: {e}"))?;
        dtypes.push(gdal_dtype(b.band_type()).ok_or_else(|| format!("band {i} has unsupported type {:?}", b.band_type()))?);
        nodata.push(b.no_data_value());
        descriptions.push(b.description().unwrap_or_default());
    }
    if dtypes.is_empty() {
        return Err("it has no raster bands".into());
    }
    let mut metadata = Vec::new();
    let mut domains = ds.metadata_domains();
    if !domains.iter().any(|d| d.is_empty()) {
        domains.push(String::new());
    }
    for d in domains.iter().filter(|d| !d.starts_with("xml:") && d.as_str() != "IMAGE_STRUCTURE" && d.as_str() != "DERIVED_SUBDATASETS") {
        for item in ds.metadata_domain(d).unwrap_or_default() {
            if let Some((k, v)) = item.split_once('=') {
                metadata.push((k.to_string(), v.to_string()));
            }
        }
    }
    let stem = Path::new(path).file_stem().and_then(|s| s.to_str()).unwrap_or(path).to_string();
    Ok(FileInfo { path: path.to_string(), stem, width: w as u32, height: h as u32, geotransform, crs_wkt, dtypes, nodata, descriptions, metadata })
}

/// The processing baseline a file's metadata (`PROCESSING_BASELINE`) or
/// its product id (`..._N0400_...`) gives.
fn baseline_of(info: &FileInfo, product: Option<&str>) -> Option<String> {
    if let Some((_, v)) = info.metadata.iter().find(|(k, _)| k.eq_ignore_ascii_case("PROCESSING_BASELINE")) {
        return Some(v.trim().to_string());
    }
    let names = [product.unwrap_or(""), info.stem.as_str()];
    names
        .iter()
        .flat_map(|n| n.split(['_', '.']))
        .find(|part| part.len() == 5 && part.starts_with('N') && part[1..].bytes().all(|b| b.is_ascii_digit()))
        .map(str::to_string)
}

/// Scene id from product metadata, if the file carries one.
fn metadata_scene_id(info: &FileInfo) -> Option<String> {
    for key in ["LANDSAT_PRODUCT_ID", "PRODUCT_ID", "PRODUCT_URI"] {
        if let Some((_, v)) = info.metadata.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)) {
            let v = v.trim().trim_matches('"').trim_end_matches(".SAFE");
            if !v.is_empty() {
                return Some(v.to_string());
            }
        }
    }
    None
}

/// Which scene a file belongs to: files of one key form one scene (split by
/// pixel grid). `product` is the scene's id where the metadata or the file
/// name gives one; otherwise the id is `label` and a fingerprint of the
/// scene's file bytes ([`scene_id`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct SceneKey {
    group: String,
    product: Option<String>,
    label: String,
}

/// The bands one file contributes: `(1-based index, band name)`, and the
/// scene it belongs to.
fn file_bands(info: &FileInfo, opts: &CogOptions) -> Result<(SceneKey, Vec<(usize, String)>), String> {
    let known = |n: &str| opts.collection_bands.iter().any(|b| b == n);
    if opts.band_map.is_empty() && info.dtypes.len() == 1 && metadata_scene_id(info).is_none() {
        // A bare band file (`B04.tif`, `red.tif`): the files of one folder
        // are one scene (a STAC item downloaded into its own folder).
        let bare = names::band_file(&format!("x_{}", info.stem)).map(|(_, code)| code).filter(|c| c == &info.stem);
        let name = bare.as_deref().and_then(names::profile_band).filter(|n| known(n)).map(str::to_string).or_else(|| {
            let lower = info.stem.to_lowercase();
            (known(&lower) && (bare.is_some() || lower == info.stem)).then_some(lower)
        });
        if let Some(name) = name {
            let dir = Path::new(&info.path).parent().unwrap_or(Path::new(""));
            let label = dir.file_name().and_then(|s| s.to_str()).unwrap_or("scene").to_string();
            return Ok((SceneKey { group: format!("dir:{}", dir.display()), product: None, label }, vec![(1, name)]));
        }
    }
    if opts.band_map.is_empty() {
        if let Some((key, code)) = names::band_file(&info.stem) {
            let name = names::profile_band(&code).filter(|n| known(n)).map(str::to_string).or_else(|| Some(code.to_lowercase()).filter(|n| known(n)));
            let name = name.ok_or_else(|| {
                format!("band {code} (from the file name) is not a band of collection {:?} ({})", opts.collection, opts.collection_bands.join(", "))
            })?;
            if info.dtypes.len() != 1 {
                return Err(format!("a {code} band file should hold one band, it holds {}", info.dtypes.len()));
            }
            return Ok((SceneKey { group: format!("product:{key}"), product: Some(key.clone()), label: key }, vec![(1, name)]));
        }
    }
    let key = match metadata_scene_id(info) {
        Some(id) => SceneKey { group: format!("product:{id}"), product: Some(id.clone()), label: id },
        None => SceneKey { group: format!("file:{}", info.path), product: None, label: info.stem.clone() },
    };
    let count = info.dtypes.len();
    let bands: Vec<(usize, String)> = if !opts.band_map.is_empty() {
        for (i, n) in &opts.band_map {
            if *i == 0 || *i > count {
                return Err(format!("--bands names band {i}, the file has {count}"));
            }
            if !known(n) {
                return Err(format!("--bands names {n:?}, not a band of collection {:?} ({})", opts.collection, opts.collection_bands.join(", ")));
            }
        }
        opts.band_map.clone()
    } else if info.descriptions.iter().all(|d| known(d)) {
        info.descriptions.iter().enumerate().map(|(i, d)| (i + 1, d.clone())).collect()
    } else if count == opts.collection_bands.len() {
        opts.collection_bands.iter().enumerate().map(|(i, n)| (i + 1, n.clone())).collect()
    } else {
        return Err(format!(
            "cannot tell which of its {count} bands is which band of collection {:?} ({}): name them with --bands 1:{},...",
            opts.collection,
            opts.collection_bands.join(", "),
            opts.collection_bands.first().map(String::as_str).unwrap_or("name")
        ));
    };
    Ok((key, bands))
}

/// Why a product (by its id or file name) does not fit the collection's
/// profile: a Level-1 product into a Level-2 profile carries no surface
/// reflectance, and the profile's scale/offset would be applied to it.
fn profile_mismatch(name: &str, profile: Option<&str>) -> Option<String> {
    let profile = profile?;
    let upper = name.to_ascii_uppercase();
    let landsat_l1 = ["_L1TP_", "_L1GT_", "_L1GS_"].iter().find(|l| upper.contains(*l));
    let level = match profile {
        "landsat8_l2" | "landsat9_l2" => landsat_l1.map(|l| format!("a Landsat Level-1 product ({})", l.trim_matches('_'))),
        "sentinel2_l2a" => upper.contains("MSIL1C").then(|| "a Sentinel-2 Level-1C product (top of atmosphere)".to_string()),
        _ => None,
    }?;
    Some(format!("{level} does not fit collection profile {profile} (Level-2 surface reflectance): its scale, offset and QA rules would be wrong; use a collection without this profile"))
}

fn acquisition_time(info: &FileInfo, opts: &CogOptions) -> Result<(i64, String), String> {
    if let Some(t) = opts.time_ms {
        return Ok((t, "--time".into()));
    }
    names::time_from_metadata(&info.metadata)
        .or_else(|| names::time_from_name(&info.stem))
        .ok_or_else(|| format!("no acquisition time found; tried {}", names::TIME_SOURCES))
}

/// A `create_collection` body for collection `name` that fits `path`: a
/// band per file band (named by `band_map`, else the band descriptions
/// where they are valid, distinct band names, else `b1`, `b2`, ...), with
/// its type and nodata, on the default grid at the file's pixel size
/// (measured in the grid's CRS at the file's centre). Blocking (GDAL).
pub fn collection_for_file(path: &str, name: &str, band_map: &[(usize, String)]) -> Result<serde_json::Value> {
    let info = inspect(path).map_err(|reason| Error::invalid("paths", path, &reason))?;
    let count = info.dtypes.len();
    let described = {
        let mut seen = std::collections::HashSet::new();
        info.descriptions.iter().all(|d| validate_band_name("band", d).is_ok() && d != "valid" && seen.insert(d.clone()))
    };
    let names: Vec<String> = (1..=count)
        .map(|i| match band_map.iter().find(|(j, _)| *j == i) {
            Some((_, n)) => n.clone(),
            None if described => info.descriptions[i - 1].clone(),
            None => format!("b{i}"),
        })
        .collect();
    let bands: Vec<serde_json::Value> = (0..count)
        .map(|i| {
            let mut b = serde_json::json!({"name": names[i], "dtype": info.dtypes[i].name()});
            if let Some(nd) = info.nodata[i].filter(|v| info.dtypes[i].holds(*v)) {
                b["nodata"] = if nd.is_nan() { "nan".into() } else { nd.into() };
            }
            b
        })
        .collect();
    // The pixel size in the default grid's units, at the file's centre.
    let gt = info.geotransform;
    let (cx, cy) = (gt[0] + gt[1] * info.width as f64 / 2.0, gt[3] + gt[5] * info.height as f64 / 2.0);
    let to_grid = crate::crs::cached(("crs", &info.crs_wkt), ("grid.crs", crate::grid::DEFAULT_GRID_CRS))?;
    let (mut xs, mut ys) = ([cx, cx + gt[1], cx], [cy, cy, cy + gt[5]]);
    to_grid.transformer.transform(&mut xs, &mut ys);
    let step = |k: usize| ((xs[k] - xs[0]).powi(2) + (ys[k] - ys[0]).powi(2)).sqrt();
    let resolution = step(1).min(step(2));
    if !(resolution.is_finite() && resolution > 0.0) {
        return Err(Error::invalid("paths", path, "its pixel size cannot be measured in the default grid's CRS"));
    }
    // Rounded to 4 significant digits: 10.0003 m pixels are 10 m pixels.
    let digits = 3 - resolution.log10().floor() as i32;
    let resolution = (resolution * 10f64.powi(digits)).round() / 10f64.powi(digits);
    Ok(serde_json::json!({"name": name, "bands": bands, "grid": {"resolution": resolution}}))
}

/// CRC-32 (IEEE, as zlib's) of the files' bytes one after another, in the
/// order given; `None` for GDAL `/vsi...` paths, which are not local files.
fn fingerprint(paths: &[String]) -> Result<Option<u32>, String> {
    if paths.iter().any(|p| p.starts_with("/vsi")) {
        return Ok(None);
    }
    let mut hasher = crc32fast::Hasher::new();
    for p in paths {
        let mut f = std::fs::File::open(p).map_err(|e| format!("cannot read it: {e}"))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = std::io::Read::read(&mut f, &mut buf).map_err(|e| format!("cannot read it: {e}"))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
    }
    Ok(Some(hasher.finalize()))
}

/// A scene's id: the product id where there is one, else the label and the
/// fingerprint of its files (`B04.tif` folders of two dates, or one file
/// with a corrected time, never share an id by name alone).
fn scene_id(product: Option<&str>, label: &str, fingerprint: Option<u32>) -> String {
    match (product, fingerprint) {
        (Some(p), _) => p.to_string(),
        (None, Some(f)) => format!("{label}_{f:08x}"),
        (None, None) => label.to_string(),
    }
}

/// Files of one scene, each with the bands it contributes.
type Members = Vec<(FileInfo, Vec<(usize, String)>)>;

/// Inspects `files` and groups them into scenes. Files that cannot be used
/// are returned as failures with their reason; the others still form scenes.
/// Blocking (GDAL).
pub fn plan(files: &[String], opts: &CogOptions) -> (Vec<ScenePlan>, Vec<Failure>) {
    let mut failures = Vec::new();
    // scene key -> files with their bands
    let mut groups: BTreeMap<SceneKey, Members> = BTreeMap::new();
    for path in files {
        match inspect(path).and_then(|info| file_bands(&info, opts).map(|(key, bands)| (info, key, bands))) {
            Ok((info, key, bands)) => groups.entry(key).or_default().push((info, bands)),
            Err(reason) => failures.push(Failure { path: path.clone(), reason }),
        }
    }
    let mut scenes = Vec::new();
    for (key, members) in groups {
        plan_group(key, members, opts, None, &mut scenes, &mut failures);
    }
    (scenes, failures)
}

/// What a STAC Item says of its scene, over what the files say.
#[derive(Debug, Clone)]
struct Forced {
    scene_id: String,
    time_ms: i64,
    baseline: Option<String>,
}

/// One scene's files (split by pixel grid) into scene plans.
fn plan_group(key: SceneKey, members: Members, opts: &CogOptions, forced: Option<&Forced>, scenes: &mut Vec<ScenePlan>, failures: &mut Vec<Failure>) {
    // Bands on different pixel grids (10 m and 20 m files of one
    // product) cannot share one DoPut: one scene per grid.
    let mut by_grid: Vec<Members> = Vec::new();
    for m in members {
        match by_grid
            .iter_mut()
            .find(|g| g[0].0.geotransform == m.0.geotransform && (g[0].0.width, g[0].0.height) == (m.0.width, m.0.height) && g[0].0.crs_wkt == m.0.crs_wkt)
        {
            Some(g) => g.push(m),
            None => by_grid.push(vec![m]),
        }
    }
    let split = by_grid.len() > 1;
    for group in by_grid {
        let first = &group[0].0;
        let mut paths: Vec<String> = group.iter().map(|(i, _)| i.path.clone()).collect();
        paths.sort();
        let fail_all = |reason: String, failures: &mut Vec<Failure>| failures.extend(paths.iter().map(|p| Failure { path: p.clone(), reason: reason.clone() }));
        // Checked before the files are read for their fingerprint.
        let profile = opts.profile.as_deref();
        if let Some(reason) = profile_mismatch(&key.label, profile).or_else(|| group.iter().find_map(|(i, _)| profile_mismatch(&i.stem, profile))) {
            fail_all(reason, failures);
            continue;
        }
        let fingerprint = match fingerprint(&paths) {
            Ok(f) => f,
            Err(reason) => {
                fail_all(reason, failures);
                continue;
            }
        };
        let base = forced.map(|f| f.scene_id.clone()).unwrap_or_else(|| scene_id(key.product.as_deref(), &key.label, fingerprint));
        let scene_id = if split { format!("{base}_{}m", (first.geotransform[1].abs() * 100.0).round() / 100.0) } else { base };
        let time = forced.map(|f| Ok((f.time_ms, "the STAC Item's datetime".to_string()))).unwrap_or_else(|| acquisition_time(first, opts));
        let (time_ms, time_source) = match time {
            Ok(t) => t,
            Err(reason) => {
                fail_all(reason, failures);
                continue;
            }
        };
        let mut bands = Vec::new();
        let mut sources = Vec::new();
        let mut bytes = 0u64;
        let mut dup = None;
        for (info, file_bands) in &group {
            for (idx, name) in file_bands {
                if bands.iter().any(|b: &pb::BandSpec| &b.name == name) {
                    dup = Some(name.clone());
                }
                let dtype = info.dtypes[idx - 1];
                let nodata = info.nodata[idx - 1].filter(|v| dtype.holds(*v));
                bands.push(pb::BandSpec { name: name.clone(), dtype: dtype.name().into(), nodata, ..Default::default() });
                sources.push((info.path.clone(), *idx));
                bytes += dtype.arrow().primitive_width().unwrap_or(8) as u64 * info.width as u64 * info.height as u64;
            }
        }
        if let Some(name) = dup {
            fail_all(format!("band {name} comes from two files of scene {scene_id}"), failures);
            continue;
        }
        let request = pb::IngestRequest {
            collection: opts.collection.clone(),
            scene_id,
            acquired_at_ms: time_ms,
            crs: first.crs_wkt.clone(),
            geotransform: first.geotransform.to_vec(),
            width: first.width,
            height: first.height,
            bands,
            resampling: opts.resampling.clone(),
            resampling_by_band: Default::default(),
            fingerprint: fingerprint.map(|f| format!("crc32:{f:08x}")).unwrap_or_default(),
            replace: opts.replace,
            processing_baseline: opts
                .baseline
                .clone()
                .or_else(|| forced.and_then(|f| f.baseline.clone()))
                .or_else(|| baseline_of(first, key.product.as_deref()))
                .unwrap_or_default(),
        };
        scenes.push(ScenePlan { request, sources, files: paths, time_source, bytes });
    }
}

fn read_strip<T: ArrowPrimitiveType>(ds: &Dataset, band: usize, row: usize, rows: usize, width: usize) -> Result<ArrayRef>
where
    T::Native: GdalType + Copy,
{
    let b = ds.rasterband(band).map_err(Error::gdal(format!("opening band {band}")))?;
    let buf = b
        .read_as::<T::Native>((0, row as isize), (width, rows), (width, rows), None)
        .map_err(Error::gdal(format!("reading rows {row}..{} of band {band}", row + rows)))?;
    let (_, data) = buf.into_shape_and_vec();
    Ok(Arc::new(PrimitiveArray::<T>::new(ScalarBuffer::from(data), None)))
}

/// Reads a planned scene in strips of whole rows (about
/// [`TARGET_BATCH_BYTES`] each), calling `emit` per batch until it returns
/// false. Blocking (GDAL); call it on the thread that should own the
/// datasets.
pub fn read_scene(plan: &ScenePlan, mut emit: impl FnMut(RecordBatch) -> bool) -> Result<()> {
    let mut datasets: BTreeMap<&str, Dataset> = BTreeMap::new();
    for f in &plan.files {
        datasets.insert(f.as_str(), open_raster(f).map_err(Error::gdal(format!("opening {f}")))?);
    }
    let width = plan.request.width as usize;
    let height = plan.request.height as usize;
    let dtypes: Vec<DType> = plan.request.bands.iter().map(|b| DType::try_parse("dtype", &b.dtype)).collect::<Result<_>>()?;
    let fields: Vec<Field> = plan.request.bands.iter().zip(&dtypes).map(|(b, d)| Field::new(&b.name, d.arrow(), false)).collect();
    let schema: SchemaRef = Arc::new(Schema::new(fields));
    let row_bytes: usize = dtypes.iter().map(|d| d.arrow().primitive_width().unwrap_or(8)).sum::<usize>() * width;
    let rows_per_batch = (TARGET_BATCH_BYTES / row_bytes.max(1)).max(1);
    let mut row = 0;
    while row < height {
        let n = rows_per_batch.min(height - row);
        let mut columns = Vec::with_capacity(dtypes.len());
        for ((file, idx), dtype) in plan.sources.iter().zip(&dtypes) {
            let ds = datasets.get(file.as_str()).ok_or_else(|| Error::Internal(format!("{file} was not opened")))?;
            columns.push(with_arrow_type!(*dtype, T => read_strip::<T>(ds, *idx, row, n, width))?);
        }
        let batch = RecordBatch::try_new(schema.clone(), columns).map_err(Error::arrow("building a raster strip"))?;
        if !emit(batch) {
            return Ok(());
        }
        row += n;
    }
    Ok(())
}

/// Reads a planned scene on a blocking thread into a small channel and
/// returns it as a stream of strips, so a file is sent while it is read, in
/// bounded memory. `on_batch` sees each strip first. The reader stops when
/// the stream is dropped; a read error is the stream's last item. Needs a
/// Tokio runtime context (an async task or a blocking task of the runtime).
pub fn stream_scene(plan: &ScenePlan, on_batch: impl Fn(&RecordBatch) + Send + 'static) -> tokio_stream::wrappers::ReceiverStream<Result<RecordBatch>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<RecordBatch>>(2);
    let plan = plan.clone();
    tokio::task::spawn_blocking(move || {
        let res = read_scene(&plan, |batch| {
            on_batch(&batch);
            tx.blocking_send(Ok(batch)).is_ok()
        });
        if let Err(e) = res {
            let _ = tx.blocking_send(Err(e));
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

impl ScenePlan {
    /// One failure per file of the scene, all for `reason`.
    pub fn failures<'a>(&'a self, reason: &'a str) -> impl Iterator<Item = Failure> + 'a {
        self.files.iter().map(move |f| Failure { path: f.clone(), reason: reason.to_string() })
    }
}

/// Parses `--bands 1:blue,2:green`.
pub fn parse_band_map(s: &str) -> Result<Vec<(usize, String)>> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (i, n) = p.split_once(':').ok_or_else(|| Error::invalid("bands", p, "expected INDEX:NAME, e.g. 1:blue"))?;
            let i: usize = i.trim().parse().map_err(|_| Error::invalid("bands", p, "the index must be a number from 1"))?;
            crate::collection::validate_band_name("bands", n.trim())?;
            Ok((i, n.trim().to_string()))
        })
        .collect()
}

/// Whether `path` is `root` or lies below it, component by component (a
/// root `.../drop` does not admit `.../drop_evil`).
fn below(path: &str, root: &str) -> bool {
    let root = root.trim_end_matches('/');
    path.strip_prefix(root).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// `path` made absolute and cleaned of `.` and `..` without touching the
/// file system.
fn lexical(path: &str) -> Option<PathBuf> {
    let mut out = if Path::new(path).is_absolute() { PathBuf::new() } else { std::env::current_dir().ok()? };
    for c in Path::new(path).components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    Some(out)
}

/// Accepts a path for server-side ingest only under an allowed root. A
/// path outside every root, by its text alone, gets one answer before the
/// file system is touched (so the answer tells nothing of what exists
/// there); then local paths are resolved (symlinks) and must still lie
/// below a root directory. `/vsi...` paths must lie below a root given as
/// such a prefix and hold no `..` segment.
pub fn check_allowed(path: &str, roots: &[String]) -> Result<String> {
    if roots.is_empty() {
        return Err(Error::invalid("paths", path, "server-side ingest is disabled: start the server with --ingest-root DIR"));
    }
    if path.contains('\0') || path.len() > 4096 {
        return Err(Error::invalid("paths", path, "not a usable path"));
    }
    if path.starts_with("/vsi") {
        let ok = !path.split('/').any(|seg| seg == "..") && roots.iter().any(|r| r.starts_with("/vsi") && below(path, r));
        return if ok { Ok(path.to_string()) } else { Err(Error::invalid("paths", path, "outside the server's allowed ingest roots")) };
    }
    let outside = || Error::invalid("paths", path, "outside the server's allowed ingest roots");
    let text = lexical(path).ok_or_else(outside)?;
    // The roots as configured and as resolved (a root may be reached
    // through a link); resolving the server's own roots tells a client
    // nothing.
    let local_roots: Vec<PathBuf> =
        roots.iter().filter(|r| !r.starts_with("/vsi")).flat_map(|r| [lexical(r), std::fs::canonicalize(r).ok()]).flatten().collect();
    if !local_roots.iter().any(|r| text.starts_with(r)) {
        return Err(outside());
    }
    let resolved = std::fs::canonicalize(path).map_err(|e| Error::invalid("paths", path, &format!("cannot be read by the server: {e}")))?;
    for r in roots.iter().filter(|r| !r.starts_with("/vsi")) {
        if let Ok(root) = std::fs::canonicalize(r) {
            if resolved.starts_with(&root) {
                return Ok(resolved.to_string_lossy().to_string());
            }
        }
    }
    Err(Error::invalid("paths", path, "outside the server's allowed ingest roots"))
}

#[cfg(test)]
mod profile_tests {
    use super::{check_allowed, discover, profile_mismatch};

    #[test]
    fn ingest_roots_are_whole_path_components_and_outside_paths_get_one_answer() {
        let roots = vec!["/vsis3/bucket/drop".to_string()];
        assert!(check_allowed("/vsis3/bucket/drop/a.tif", &roots).is_ok());
        assert!(check_allowed("/vsis3/bucket/drop_evil/a.tif", &roots).is_err(), "a sibling sharing the prefix");
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("drop");
        std::fs::create_dir(&root).unwrap();
        std::fs::create_dir(dir.path().join("drop_evil")).unwrap();
        std::fs::write(dir.path().join("drop_evil").join("a.tif"), b"").unwrap();
        let roots = vec![root.to_string_lossy().to_string()];
        let outside = |p: &std::path::Path| check_allowed(p.to_str().unwrap(), &roots).unwrap_err().to_string();
        // Existing or not, outside is outside: the same answer.
        let exists = outside(&dir.path().join("drop_evil").join("a.tif"));
        let missing = outside(&dir.path().join("drop_evil").join("none.tif"));
        assert!(exists.contains("outside the server's allowed ingest roots"), "{exists}");
        assert_eq!(exists.replace("a.tif", ""), missing.replace("none.tif", ""));
        assert!(outside(&root.join("..").join("drop_evil").join("a.tif")).contains("outside"));
    }

    #[test]
    fn a_directory_link_loop_ends_the_scan() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("x_20240601.tif"), b"").unwrap();
        std::os::unix::fs::symlink(dir.path(), sub.join("loop")).unwrap();
        let (files, failures) = discover(&[dir.path().to_string_lossy().to_string()]);
        assert_eq!(files.len(), 1, "{files:?}");
        assert!(failures.is_empty(), "{failures:?}");
    }

    #[test]
    fn level_one_products_do_not_go_into_level_two_profiles() {
        let l1 = "LC08_L1TP_116034_20240615_20240620_02_T1";
        let reason = profile_mismatch(l1, Some("landsat8_l2")).unwrap();
        assert!(reason.contains("Level-1 product (L1TP)") && reason.contains("landsat8_l2"), "{reason}");
        assert!(profile_mismatch("LC08_L2SP_116034_20240615_20240620_02_T1", Some("landsat8_l2")).is_none());
        assert!(profile_mismatch("S2A_MSIL1C_20240615T020301_N0510_R060_T52SCG_20240615T035214", Some("sentinel2_l2a")).is_some());
        assert!(profile_mismatch("S2A_MSIL2A_20240615T020301_N0510_R060_T52SCG_20240615T035214", Some("sentinel2_l2a")).is_none());
        assert!(profile_mismatch(l1, None).is_none(), "a collection without a profile takes anything");
    }
}
