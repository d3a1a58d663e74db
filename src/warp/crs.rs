//! CRS resolution and coordinate transforms through GDAL/OSR (PROJ).
//!
//! Every `SpatialRef` uses the traditional GIS axis order (x = easting or
//! longitude), whatever the authority says, so EPSG:4326 points are
//! `[lon, lat]` as in the wire contract. GDAL objects here are created, used
//! and dropped on one thread: callers build a [`Transformer`] per thread.

use gdal::spatial_ref::{AxisMappingStrategy, CoordTransform, SpatialRef};

use crate::error::{Error, Result};

/// Parses a CRS given as an EPSG code, WKT or PROJ string. A CRS GDAL cannot
/// read is the client's mistake: `Invalid { field, .. }`.
pub fn spatial_ref(field: &str, definition: &str) -> Result<SpatialRef> {
    let def = definition.trim();
    if def.is_empty() || def.len() > 16 * 1024 || def.contains('\0') {
        return Err(Error::invalid(field, def, "expected an EPSG code such as EPSG:32652, WKT or a PROJ string"));
    }
    let mut srs = SpatialRef::from_definition(def).map_err(|e| Error::invalid(field, def, &format!("GDAL cannot parse this CRS: {e}")))?;
    srs.set_axis_mapping_strategy(AxisMappingStrategy::TraditionalGisOrder);
    Ok(srs)
}

/// The WKT of a CRS definition (what chunk metadata and `describe` carry).
pub fn to_wkt(field: &str, definition: &str) -> Result<String> {
    spatial_ref(field, definition)?.to_wkt().map_err(Error::gdal("writing a CRS as WKT"))
}

/// Point transform between two CRSs; failed points become NaN.
pub struct Transformer {
    inner: CoordTransform,
}

impl Transformer {
    pub fn new(from: &SpatialRef, to: &SpatialRef) -> Result<Self> {
        let inner = CoordTransform::new(from, to).map_err(|e| Error::invalid("crs", "", &format!("no transform between the raster's CRS and the grid's: {e}")))?;
        Ok(Self { inner })
    }

    /// Transforms in place. Points PROJ cannot transform (outside a
    /// projection's domain) are set to NaN rather than failing the batch.
    pub fn transform(&self, xs: &mut [f64], ys: &mut [f64]) {
        debug_assert_eq!(xs.len(), ys.len());
        let n = xs.len().min(ys.len());
        if n == 0 {
            return;
        }
        let mut ok = vec![0i32; n];
        // SAFETY: the handle lives as long as `self.inner`; the slices are
        // `n` long; z may be null; `ok` receives one flag per point.
        unsafe {
            gdal_sys::OCTTransformEx(
                self.inner.to_c_hct(),
                n as i32,
                xs.as_mut_ptr(),
                ys.as_mut_ptr(),
                std::ptr::null_mut(),
                ok.as_mut_ptr(),
            );
        }
        for i in 0..n {
            if ok[i] == 0 || !xs[i].is_finite() || !ys[i].is_finite() {
                xs[i] = f64::NAN;
                ys[i] = f64::NAN;
            }
        }
    }
}
