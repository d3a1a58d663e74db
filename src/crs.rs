//! CRS resolution and coordinate transforms through GDAL/OSR (PROJ).
//!
//! Every `SpatialRef` uses the traditional GIS axis order (x = easting or
//! longitude), whatever the authority says, so EPSG:4326 points are
//! `[lon, lat]` as in the wire contract. GDAL objects here are created, used
//! and dropped on one thread: callers take a [`Transformer`] from the
//! thread's [`cached`] ones.

use std::cell::RefCell;
use std::rc::Rc;

use gdal::spatial_ref::{AxisMappingStrategy, CoordTransform, SpatialRef};

use crate::error::{Error, Result};

/// Parses a CRS given as an EPSG code, WKT or PROJ string. A CRS GDAL cannot
/// read is the client's mistake: `Invalid { field, .. }`.
pub fn spatial_ref(field: &str, definition: &str) -> Result<SpatialRef> {
    let def = definition.trim();
    if def.is_empty() || def.len() > 16 * 1024 || def.contains('\0') || !self_contained(def) {
        return Err(Error::invalid(
            field,
            def,
            "expected an EPSG code such as EPSG:32652, WKT, PROJJSON or a PROJ string (URLs, file names and +init= are not read)",
        ));
    }
    let mut srs = SpatialRef::from_definition(def).map_err(|e| Error::invalid(field, def, &format!("GDAL cannot parse this CRS: {e}")))?;
    srs.set_axis_mapping_strategy(AxisMappingStrategy::TraditionalGisOrder);
    Ok(srs)
}

/// Whether `def` has a form whose parsing reads no file and opens no
/// connection: `AUTH:CODE` (EPSG:32652, OGC:CRS84), an OGC URN, WKT (a
/// keyword and a bracket), PROJJSON (`{`) or a PROJ string without
/// `+init=`. GDAL's parser would otherwise fetch URLs and read files
/// (`.prj`, `.xml`) named by a client.
fn self_contained(def: &str) -> bool {
    let upper = def.to_ascii_uppercase();
    if def.starts_with('{') || upper.starts_with("URN:OGC:DEF:CRS:") {
        return true;
    }
    if def.starts_with('+') {
        return !upper.contains("INIT=");
    }
    let word = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
    if let Some((authority, code)) = def.split_once(':') {
        return word(authority) && word(code) && !authority.contains('.');
    }
    let keyword: String = def.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
    !keyword.is_empty() && def[keyword.len()..].trim_start().starts_with(['[', '('])
}

/// The WKT of a CRS definition (what chunk metadata and `describe` carry).
pub fn to_wkt(field: &str, definition: &str) -> Result<String> {
    spatial_ref(field, definition)?.to_wkt().map_err(Error::gdal("writing a CRS as WKT"))
}

/// A transform kept by [`cached`], and whether both ends are one CRS.
pub struct Cached {
    pub transformer: Transformer,
    pub same_crs: bool,
}

/// Pairs a thread keeps; the least recently used goes first.
const CACHED_PAIRS: usize = 8;

thread_local! {
    /// `(from, to)` definitions and their transform, most recent last.
    static PAIRS: RefCell<Vec<(String, String, Rc<Cached>)>> = const { RefCell::new(Vec::new()) };
}

/// The transform from `from = (field, definition)` to `to`, made once per
/// thread and pair: parsing two CRSs and asking PROJ for the operation
/// between them takes about a millisecond of database lookups, which a
/// point query would otherwise pay on every call (a fifth of its time).
/// `Rc`, not `Send`: the GDAL objects stay on the thread that made them.
/// Errors name the field whose definition GDAL cannot read.
pub fn cached((from_field, from): (&str, &str), (to_field, to): (&str, &str)) -> Result<Rc<Cached>> {
    let hit = PAIRS.with(|pairs| {
        let mut pairs = pairs.borrow_mut();
        let i = pairs.iter().position(|(f, t, _)| f == from && t == to)?;
        let pair = pairs.remove(i);
        let found = pair.2.clone();
        pairs.push(pair);
        Some(found)
    });
    if let Some(found) = hit {
        return Ok(found);
    }
    let (a, b) = (spatial_ref(from_field, from)?, spatial_ref(to_field, to)?);
    let made = Rc::new(Cached { transformer: Transformer::new(&a, &b)?, same_crs: a == b });
    PAIRS.with(|pairs| {
        let mut pairs = pairs.borrow_mut();
        if pairs.len() >= CACHED_PAIRS {
            pairs.remove(0);
        }
        pairs.push((from.to_string(), to.to_string(), made.clone()));
    });
    Ok(made)
}

/// Point transform between two CRSs; failed points become NaN.
pub struct Transformer {
    inner: CoordTransform,
}

impl Transformer {
    pub fn new(from: &SpatialRef, to: &SpatialRef) -> Result<Self> {
        let inner =
            CoordTransform::new(from, to).map_err(|e| Error::invalid("crs", "", &format!("no transform between the raster's CRS and the grid's: {e}")))?;
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
            gdal_sys::OCTTransformEx(self.inner.to_c_hct(), n as i32, xs.as_mut_ptr(), ys.as_mut_ptr(), std::ptr::null_mut(), ok.as_mut_ptr());
        }
        for i in 0..n {
            if ok[i] == 0 || !xs[i].is_finite() || !ys[i].is_finite() {
                xs[i] = f64::NAN;
                ys[i] = f64::NAN;
            }
        }
    }
}

/// A grid-CRS rectangle as a closed lon/lat ring, 8 points per edge.
pub fn lonlat_ring(b: [f64; 4], t: &Transformer) -> Vec<[f64; 2]> {
    const EDGE: usize = 8;
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    let corners = [(b[0], b[3]), (b[2], b[3]), (b[2], b[1]), (b[0], b[1])];
    for k in 0..4 {
        let ((x0, y0), (x1, y1)) = (corners[k], corners[(k + 1) % 4]);
        for i in 0..EDGE {
            let f = i as f64 / EDGE as f64;
            xs.push(x0 + f * (x1 - x0));
            ys.push(y0 + f * (y1 - y0));
        }
    }
    t.transform(&mut xs, &mut ys);
    // Counter-clockwise as GeoJSON wants: the corners above run clockwise.
    let mut ring: Vec<[f64; 2]> = xs.iter().zip(&ys).map(|(x, y)| [*x, *y]).rev().collect();
    ring.push(ring[0]);
    ring
}

/// The union of `tiles`' bounds as a lon/lat ring (8 points per edge) and
/// its lon/lat bounding box `[west, south, east, north]`.
pub fn lonlat_footprint(grid: &crate::grid::GridSpec, tiles: &std::collections::BTreeSet<crate::grid::TileId>, t: &Transformer) -> (Vec<[f64; 2]>, [f64; 4]) {
    let empty = [f64::INFINITY, f64::INFINITY, f64::NEG_INFINITY, f64::NEG_INFINITY];
    let b = tiles.iter().map(|t| grid.tile_bounds(*t)).fold(empty, |a, b| [a[0].min(b[0]), a[1].min(b[1]), a[2].max(b[2]), a[3].max(b[3])]);
    let ring = lonlat_ring(b, t);
    let bbox = ring.iter().fold(empty, |a, p| [a[0].min(p[0]), a[1].min(p[1]), a[2].max(p[0]), a[3].max(p[1])]);
    (ring, bbox)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_self_contained_definitions_are_parsed() {
        for ok in [
            "EPSG:32652",
            "OGC:CRS84",
            "urn:ogc:def:crs:EPSG::4326",
            "+proj=sinu +lon_0=0 +R=6378137 +units=m",
            "GEOGCS[\"WGS 84\"]",
            "{\"type\": \"GeographicCRS\"}",
        ] {
            assert!(self_contained(ok), "{ok}");
        }
        for bad in [
            "http://127.0.0.1:9/crs",
            "https://example.org/4326.prj",
            "/etc/some.prj",
            "./local.prj",
            "+init=epsg:4326",
            "+proj=longlat +init=x",
            "file.prj",
            "/vsicurl/http://x",
        ] {
            assert!(!self_contained(bad), "{bad}");
            assert!(spatial_ref("crs", bad).unwrap_err().to_string().contains("not read"), "{bad}");
        }
    }

    #[test]
    fn a_thread_keeps_its_recent_transforms_and_makes_each_once() {
        let grid = crate::grid::DEFAULT_GRID_CRS;
        let first = cached(("crs", "EPSG:4326"), ("grid.crs", grid)).unwrap();
        let again = cached(("crs", "EPSG:4326"), ("grid.crs", grid)).unwrap();
        assert!(Rc::ptr_eq(&first, &again));
        assert!(!first.same_crs);
        let (mut x, mut y) = ([127.05], [37.55]);
        again.transformer.transform(&mut x, &mut y);
        assert!((x[0] - 127.05f64.to_radians() * 6_378_137.0 * 37.55f64.to_radians().cos()).abs() < 1.0, "{}", x[0]);
        // The reverse is its own pair; one CRS to itself is `same_crs`.
        let back = cached(("grid.crs", grid), ("crs", "EPSG:4326")).unwrap();
        assert!(!Rc::ptr_eq(&first, &back));
        assert!(cached(("crs", grid), ("grid.crs", grid)).unwrap().same_crs);
        // Past CACHED_PAIRS others, the least recently used pair is made anew.
        for zone in 0..CACHED_PAIRS {
            cached(("crs", &format!("EPSG:{}", 32601 + zone)), ("grid.crs", grid)).unwrap();
        }
        assert!(!Rc::ptr_eq(&first, &cached(("crs", "EPSG:4326"), ("grid.crs", grid)).unwrap()));
        // Another thread makes its own.
        let other = std::thread::spawn(move || Rc::as_ptr(&cached(("crs", "EPSG:4326"), ("grid.crs", grid)).unwrap()) as usize).join().unwrap();
        assert_ne!(other, Rc::as_ptr(&again) as usize);
        // A definition GDAL cannot read names its field.
        let err = cached(("bbox_crs", "EPSG:99999999"), ("grid.crs", grid)).err().unwrap();
        assert!(err.to_string().contains("bbox_crs"), "{err}");
    }
}
