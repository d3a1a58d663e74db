//! `create_collection` requests validated into a [`Collection`]: a profile
//! or explicit bands, and a grid whose CRS and tile span default to the
//! default grid's.

use crate::collection::{self, Band, Collection, Compression, DType, GridDoc, Resampling, PROFILE_NAMES};
use crate::crs;
use crate::error::{Error, Result};
use crate::grid::GridSpec;
use pixelquery_proto::v1 as pb;

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
        let resampling = if b.resampling.is_empty() {
            default_resampling.unwrap_or(Resampling::Nearest)
        } else {
            Resampling::try_parse(&format!("{field}.resampling"), &b.resampling)?
        };
        bands.push(Band { name: b.name.clone(), dtype, nodata: b.nodata, scale: b.scale, offset: b.offset, offset_note: None, resampling });
    }
    if bands.is_empty() {
        return Err(Error::invalid("bands", "[]", "a collection needs a profile or at least one band"));
    }
    let g = req.grid.unwrap_or_default();
    let resolution = if g.resolution == 0.0 {
        profile_res.ok_or_else(|| Error::invalid("grid.resolution", 0.0, "must be a number > 0 (required without a profile)"))?
    } else {
        g.resolution
    };
    let (crs_def, span) = collection::grid_defaults(&g.crs, g.tile_span, resolution);
    let spec = GridSpec::try_new(crs_def.clone(), span, resolution).map_err(|e| match e {
        crate::grid::GridError::TileSpan(v) => Error::invalid("grid.tile_span", v, "must be a finite number > 0"),
        other => Error::invalid("grid.resolution", resolution, &other.to_string()),
    })?;
    let crs_wkt = crs::to_wkt("grid.crs", &crs_def)?;
    let compression = Compression::try_parse("compression", &req.compression)?;
    compression.check_level("compression_level", req.compression_level)?;
    Ok(Collection {
        name: req.name,
        profile,
        bands,
        grid: GridDoc { crs: crs_def, crs_wkt, tile_span: spec.tile_span, resolution, tile_px: spec.tile_px, pixel_size: spec.pixel_size() },
        qa,
        compression,
        compression_level: req.compression_level,
    })
}
