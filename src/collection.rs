//! Collections (`docs/protocol.md`, data model): bands, data types, resampling defaults, the grid,
//! and the built-in sensor profiles. Pure data and validation, no IO.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::grid::{GridSpec, DEFAULT_GRID_CRS, DEFAULT_TILE_SPAN};

/// Pixel data types accepted on the wire and stored in chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    Uint8,
    Uint16,
    Int16,
    Uint32,
    Int32,
    Float32,
    Float64,
}

impl DType {
    /// Whether every value of `self` is a value of `wider` (so a band of
    /// `self` is stored in a band of `wider` without loss).
    pub fn widens_to(self, wider: DType) -> bool {
        use DType::*;
        self == wider
            || matches!(
                (self, wider),
                (Uint8, Uint16 | Int16 | Uint32 | Int32 | Float32 | Float64)
                    | (Uint16, Uint32 | Int32 | Float32 | Float64)
                    | (Int16, Int32 | Float32 | Float64)
                    | (Uint32 | Int32 | Float32, Float64)
            )
    }

    pub const ALL: [DType; 7] = [DType::Uint8, DType::Uint16, DType::Int16, DType::Uint32, DType::Int32, DType::Float32, DType::Float64];

    /// Bytes per pixel.
    pub fn size(self) -> usize {
        match self {
            DType::Uint8 => 1,
            DType::Uint16 | DType::Int16 => 2,
            DType::Uint32 | DType::Int32 | DType::Float32 => 4,
            DType::Float64 => 8,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::Uint8 => "uint8",
            DType::Uint16 => "uint16",
            DType::Int16 => "int16",
            DType::Uint32 => "uint32",
            DType::Int32 => "int32",
            DType::Float32 => "float32",
            DType::Float64 => "float64",
        }
    }

    pub fn try_parse(field: &str, s: &str) -> Result<Self> {
        DType::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| Error::invalid(field, s, "expected one of uint8, uint16, int16, uint32, int32, float32, float64"))
    }

    pub fn arrow(self) -> arrow_schema::DataType {
        use arrow_schema::DataType as A;
        match self {
            DType::Uint8 => A::UInt8,
            DType::Uint16 => A::UInt16,
            DType::Int16 => A::Int16,
            DType::Uint32 => A::UInt32,
            DType::Int32 => A::Int32,
            DType::Float32 => A::Float32,
            DType::Float64 => A::Float64,
        }
    }

    /// The data type stored as arrow type `t`, if any.
    pub fn from_arrow(t: &arrow_schema::DataType) -> Option<Self> {
        DType::ALL.into_iter().find(|d| &d.arrow() == t)
    }

    /// Whether `v` is representable exactly in this type (for nodata values).
    pub fn holds(self, v: f64) -> bool {
        let int_in = |lo: f64, hi: f64| v.fract() == 0.0 && (lo..=hi).contains(&v);
        match self {
            DType::Uint8 => int_in(0.0, u8::MAX as f64),
            DType::Uint16 => int_in(0.0, u16::MAX as f64),
            DType::Int16 => int_in(i16::MIN as f64, i16::MAX as f64),
            DType::Uint32 => int_in(0.0, u32::MAX as f64),
            DType::Int32 => int_in(i32::MIN as f64, i32::MAX as f64),
            DType::Float32 => v.is_nan() || (v as f32) as f64 == v,
            DType::Float64 => true,
        }
    }
}

/// Runs `$body` with `$T` bound to the arrow primitive type of `$dtype`.
#[macro_export]
macro_rules! with_arrow_type {
    ($dtype:expr, $T:ident => $body:expr) => {{
        use arrow_array::types as __t;
        match $dtype {
            $crate::collection::DType::Uint8 => {
                type $T = __t::UInt8Type;
                $body
            }
            $crate::collection::DType::Uint16 => {
                type $T = __t::UInt16Type;
                $body
            }
            $crate::collection::DType::Int16 => {
                type $T = __t::Int16Type;
                $body
            }
            $crate::collection::DType::Uint32 => {
                type $T = __t::UInt32Type;
                $body
            }
            $crate::collection::DType::Int32 => {
                type $T = __t::Int32Type;
                $body
            }
            $crate::collection::DType::Float32 => {
                type $T = __t::Float32Type;
                $body
            }
            $crate::collection::DType::Float64 => {
                type $T = __t::Float64Type;
                $body
            }
        }
    }};
}

/// Resampling kernels. Masks and categorical bands default to nearest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resampling {
    Nearest,
    Bilinear,
    /// Cubic convolution (Keys, a = -0.5) over 4 x 4 source pixels.
    Cubic,
    /// Area-weighted mean of the source pixels under the target pixel.
    Average,
    /// Most frequent source value under the target pixel (area-weighted).
    Mode,
}

impl Resampling {
    pub fn name(self) -> &'static str {
        match self {
            Resampling::Nearest => "nearest",
            Resampling::Bilinear => "bilinear",
            Resampling::Cubic => "cubic",
            Resampling::Average => "average",
            Resampling::Mode => "mode",
        }
    }

    pub fn try_parse(field: &str, s: &str) -> Result<Self> {
        match s {
            "nearest" | "near" => Ok(Resampling::Nearest),
            "bilinear" => Ok(Resampling::Bilinear),
            "cubic" => Ok(Resampling::Cubic),
            "average" => Ok(Resampling::Average),
            "mode" => Ok(Resampling::Mode),
            _ => Err(Error::invalid(field, s, "expected nearest, bilinear, cubic, average or mode")),
        }
    }

    /// Whether the kernel needs each target pixel's footprint (its corners).
    pub fn needs_footprint(self) -> bool {
        matches!(self, Resampling::Average | Resampling::Mode)
    }
}

/// One band of a collection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Band {
    pub name: String,
    pub dtype: DType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodata: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<f64>,
    /// When the offset applies (products differ by processing version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset_note: Option<String>,
    pub resampling: Resampling,
}

/// How a QA / cloud band marks clear and cloudy pixels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QaRules {
    pub band: String,
    /// `classes`: the lists hold pixel values; `bits`: they hold bit
    /// positions (0 = least significant) that are set.
    pub kind: String,
    pub clear: Vec<u32>,
    pub cloud: Vec<u32>,
    pub fill: Vec<u32>,
    pub description: String,
}

/// The persisted form of a grid (what `describe` shows and collection.json holds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GridDoc {
    /// As the user gave it (EPSG code, WKT or PROJ string).
    pub crs: String,
    /// The same CRS as WKT, resolved by GDAL at creation.
    pub crs_wkt: String,
    pub tile_span: f64,
    pub resolution: f64,
    pub tile_px: u32,
    pub pixel_size: f64,
}

/// A collection as stored in `<warehouse>/<name>/collection.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Collection {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    pub bands: Vec<Band>,
    pub grid: GridDoc,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qa: Option<QaRules>,
    /// How chunk batches are stored: Arrow IPC buffer compression, which
    /// plain `pyarrow.ipc` and arrow-rs read as they are.
    #[serde(default)]
    pub compression: Compression,
    /// The zstd level; `None` is zstd's default (3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression_level: Option<i32>,
}

/// The codec of a collection's chunk batches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    Lz4,
    Zstd,
}

impl Compression {
    pub fn try_parse(field: &str, s: &str) -> Result<Self> {
        match s {
            "" | "none" => Ok(Compression::None),
            "lz4" => Ok(Compression::Lz4),
            "zstd" => Ok(Compression::Zstd),
            _ => Err(Error::invalid(field, s, "one of none, lz4, zstd")),
        }
    }

    /// Checks a level given with this codec: zstd takes 1..=22, the others none.
    pub fn check_level(self, field: &str, level: Option<i32>) -> Result<()> {
        match (self, level) {
            (_, None) => Ok(()),
            (Compression::Zstd, Some(l)) if (1..=22).contains(&l) => Ok(()),
            (Compression::Zstd, Some(l)) => Err(Error::invalid(field, l, "zstd levels are 1 to 22")),
            (_, Some(l)) => Err(Error::invalid(field, l, "only zstd takes a level")),
        }
    }
}

impl Collection {
    pub fn band(&self, name: &str) -> Option<&Band> {
        self.bands.iter().find(|b| b.name == name)
    }

    /// IPC write options for this collection's chunk batches.
    pub fn ipc_options(&self) -> Result<arrow_ipc::writer::IpcWriteOptions> {
        use arrow_ipc::CompressionType;
        let codec = match self.compression {
            Compression::None => return Ok(Default::default()),
            Compression::Lz4 => CompressionType::LZ4_FRAME,
            Compression::Zstd => CompressionType::ZSTD,
        };
        arrow_ipc::writer::IpcWriteOptions::default()
            .try_with_compression(Some(codec))
            .and_then(|o| o.try_with_compression_level(self.compression_level))
            .map_err(Error::arrow("setting chunk compression"))
    }

    pub fn grid_spec(&self) -> GridSpec {
        GridSpec { crs: self.grid.crs_wkt.clone(), tile_span: self.grid.tile_span, resolution: self.grid.resolution, tile_px: self.grid.tile_px }
    }

    /// Looks up band names given by a client; empty means all bands.
    pub fn select_bands(&self, field: &str, names: &[String]) -> Result<Vec<&Band>> {
        if names.is_empty() {
            return Ok(self.bands.iter().collect());
        }
        names
            .iter()
            .map(|n| {
                self.band(n).ok_or_else(|| {
                    let known: Vec<&str> = self.bands.iter().map(|b| b.name.as_str()).collect();
                    Error::invalid(field, n, &format!("no such band in collection {:?}; it has {}", self.name, known.join(", ")))
                })
            })
            .collect()
    }
}

/// Checks a collection name against `[a-z0-9_]{1,64}`.
pub fn validate_collection_name(field: &str, name: &str) -> Result<()> {
    validate_ident(field, name, 64)
}

/// Checks a band name against `[a-z0-9_]{1,32}`.
pub fn validate_band_name(field: &str, name: &str) -> Result<()> {
    validate_ident(field, name, 32)
}

fn validate_ident(field: &str, s: &str, max: usize) -> Result<()> {
    let ok = !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(field, s, &format!("must match [a-z0-9_]{{1,{max}}}")))
    }
}

/// A built-in sensor profile: its bands and native resolution.
pub struct Profile {
    pub name: &'static str,
    pub resolution: f64,
    pub bands: Vec<Band>,
    pub qa: QaRules,
}

fn band(name: &str, dtype: DType, nodata: Option<f64>, scale: Option<f64>, offset: Option<f64>, resampling: Resampling) -> Band {
    Band { name: name.to_string(), dtype, nodata, scale, offset, offset_note: None, resampling }
}

fn qa(band: &str, kind: &str, clear: &[u32], cloud: &[u32], fill: &[u32], description: &str) -> QaRules {
    QaRules { band: band.into(), kind: kind.into(), clear: clear.to_vec(), cloud: cloud.to_vec(), fill: fill.to_vec(), description: description.into() }
}

/// Built-in profiles by name. Reflectance bands resample bilinearly, QA and
/// classification bands with nearest.
pub fn profile(name: &str) -> Option<Profile> {
    use DType::*;
    use Resampling::*;
    let refl = |n: &str, scale: f64, offset: Option<f64>| band(n, Uint16, Some(0.0), Some(scale), offset, Bilinear);
    match name {
        // Sentinel-2 L2A, 10 m: reflectance = DN * 1e-4 + offset.
        "sentinel2_l2a" => {
            let note = "BOA_ADD_OFFSET -1000 DN (-0.1 reflectance) applies to products of processing baseline 04.00 (from 25 January 2022) and later; older products have no offset (use 0)";
            let mut bands: Vec<Band> = ["coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08", "nir09", "swir16", "swir22"]
                .iter()
                .map(|n| Band { offset_note: Some(note.into()), ..refl(n, 1e-4, Some(-0.1)) })
                .collect();
            bands.push(band("scl", Uint8, Some(0.0), None, None, Nearest));
            let qa = qa(
                "scl",
                "classes",
                &[4, 5, 6, 11],
                &[3, 8, 9, 10],
                &[0],
                "Scene Classification: 0 no data, 1 saturated/defective, 2 dark area, 3 cloud shadow, 4 vegetation, 5 not vegetated, 6 water, 7 unclassified, 8 cloud medium probability, 9 cloud high probability, 10 thin cirrus, 11 snow/ice",
            );
            Some(Profile { name: "sentinel2_l2a", resolution: 10.0, bands, qa })
        }
        // Landsat Collection 2 Level-2 surface reflectance, 30 m:
        // reflectance = DN * 2.75e-5 - 0.2; temperature = DN * 0.00341802 + 149 K.
        "landsat8_l2" | "landsat9_l2" => {
            let mut bands: Vec<Band> = ["coastal", "blue", "green", "red", "nir08", "swir16", "swir22"].iter().map(|n| refl(n, 2.75e-5, Some(-0.2))).collect();
            bands.push(band("lwir11", Uint16, Some(0.0), Some(0.00341802), Some(149.0), Bilinear));
            bands.push(band("qa_pixel", Uint16, Some(1.0), None, None, Nearest));
            let qa = qa(
                "qa_pixel",
                "bits",
                &[6],
                &[1, 2, 3, 4],
                &[0],
                "QA_PIXEL bits: 0 fill, 1 dilated cloud, 2 cirrus, 3 cloud, 4 cloud shadow, 5 snow, 6 clear, 7 water (8-15: confidence pairs); cloudy if any of bits 1-4 is set, clear if bit 6 is set",
            );
            let name = if name == "landsat8_l2" { "landsat8_l2" } else { "landsat9_l2" };
            Some(Profile { name, resolution: 30.0, bands, qa })
        }
        // PlanetScope surface reflectance, 3 m, with UDM2's clear map.
        "planet_sr" => {
            let mut bands: Vec<Band> = ["blue", "green", "red", "nir"].iter().map(|n| refl(n, 1e-4, None)).collect();
            bands.push(band("clear", Uint8, None, None, None, Nearest));
            let qa = qa("clear", "classes", &[1], &[0], &[], "UDM2 band 1 (clear map): 1 clear, 0 not clear (cloud, shadow, haze or snow)");
            Some(Profile { name: "planet_sr", resolution: 3.0, bands, qa })
        }
        _ => None,
    }
}

pub const PROFILE_NAMES: [&str; 4] = ["sentinel2_l2a", "landsat8_l2", "landsat9_l2", "planet_sr"];

/// Fewest pixels across a tile of a default tile span.
pub const MIN_DEFAULT_TILE_PX: f64 = 64.0;

/// Fewer pixels across a tile than this get a warning: every tile costs a
/// file per band and month, and reads open one per tile.
pub const SMALL_TILE_PX: u32 = 32;

/// Fills in the default grid where a request leaves it out. The default
/// tile span is 2560 m times the smallest power of two that gives tiles of
/// at least [`MIN_DEFAULT_TILE_PX`] pixels at `resolution` (300 m data:
/// 20 480 m tiles of 68 px), so coarse tiles still nest in the default
/// grid's.
pub fn grid_defaults(crs: &str, tile_span: f64, resolution: f64) -> (String, f64) {
    let crs = if crs.trim().is_empty() { DEFAULT_GRID_CRS.to_string() } else { crs.to_string() };
    if tile_span != 0.0 {
        return (crs, tile_span);
    }
    let mut span = DEFAULT_TILE_SPAN;
    if resolution.is_finite() && resolution > 0.0 {
        for _ in 0..24 {
            if (span / resolution).ceil() >= MIN_DEFAULT_TILE_PX {
                break;
            }
            span *= 2.0;
        }
    }
    (crs, span)
}

/// What a person creating `meta` should know: tiles so small that the
/// warehouse holds a file per few pixels.
pub fn grid_warnings(meta: &Collection) -> Vec<String> {
    let px = meta.grid.tile_px;
    if px >= SMALL_TILE_PX {
        return Vec::new();
    }
    vec![format!(
        "tiles of {px} x {px} px (tile_span {} at resolution {}): every tile is a file per band and month, so the warehouse grows and reads slow down; a tile_span giving {} px or more suits this resolution (leave it out for the default)",
        meta.grid.tile_span, meta.grid.resolution, MIN_DEFAULT_TILE_PX
    )]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_tile_spans_grow_with_the_resolution_in_powers_of_two() {
        for (res, span) in [(10.0, 2560.0), (30.0, 2560.0), (3.0, 2560.0), (60.0, 5120.0), (300.0, 20480.0), (1000.0, 81920.0)] {
            let (crs, got) = grid_defaults("", 0.0, res);
            assert_eq!((crs.as_str(), got), (DEFAULT_GRID_CRS, span), "resolution {res}");
            assert!((got / res).ceil() >= MIN_DEFAULT_TILE_PX, "resolution {res}: {got}");
        }
        assert_eq!(grid_defaults("EPSG:32652", 5000.0, 300.0), ("EPSG:32652".to_string(), 5000.0), "an explicit span is kept");
    }
}
