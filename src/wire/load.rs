//! The analysis-ready keys of a `Query` (`geometry`, `output`, `groupby`,
//! `fuse`; DESIGN §4b) and their validation. Pure: CRS definitions are kept
//! as given and resolved by the query layer.

use std::collections::BTreeMap;

use pixelquery_proto::v1 as pb;
use serde_json::Value;

use crate::collection::Resampling;
use crate::error::{Error, Result};

/// Default output window edge in pixels.
pub const DEFAULT_WINDOW: u32 = 1024;
/// Smallest and largest window edge.
pub const MIN_WINDOW: u32 = 16;
pub const MAX_WINDOW: u32 = 8192;
/// Most vertices of a query geometry.
pub const MAX_GEOMETRY_VERTICES: usize = 10_000;

/// How the observations of an output answer form slices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GroupBy {
    /// One slice per acquisition time.
    #[default]
    Time,
    /// One slice per scene id.
    Scene,
    /// One slice per local solar date of the scene.
    SolarDay,
}

impl GroupBy {
    fn parse(s: &str) -> Result<Self> {
        match s {
            "" | "time" => Ok(GroupBy::Time),
            "scene" => Ok(GroupBy::Scene),
            "solar_day" => Ok(GroupBy::SolarDay),
            other => Err(Error::invalid("groupby", other, "expected time, scene or solar_day")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GroupBy::Time => "time",
            GroupBy::Scene => "scene",
            GroupBy::SolarDay => "solar_day",
        }
    }
}

/// How the observations of one slice combine per pixel (valid values only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fuse {
    First,
    #[default]
    Last,
    Min,
    Max,
    /// float32.
    Mean,
}

impl Fuse {
    fn parse(s: &str) -> Result<Self> {
        match s {
            "first" => Ok(Fuse::First),
            "" | "last" => Ok(Fuse::Last),
            "min" => Ok(Fuse::Min),
            "max" => Ok(Fuse::Max),
            "mean" => Ok(Fuse::Mean),
            other => Err(Error::invalid("fuse", other, "expected first, last, min, max or mean")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Fuse::First => "first",
            Fuse::Last => "last",
            Fuse::Min => "min",
            Fuse::Max => "max",
            Fuse::Mean => "mean",
        }
    }
}

/// A ring of `[x, y]` positions, closed (the last equals the first).
pub type Ring = Vec<[f64; 2]>;

/// A validated GeoJSON Polygon or MultiPolygon: polygons of rings (the
/// first the shell, the rest holes), in `crs`.
#[derive(Debug, Clone, PartialEq)]
pub struct Geometry {
    pub polygons: Vec<Vec<Ring>>,
    pub crs: String,
    /// The GeoJSON as sent (for endpoint tickets).
    pub text: String,
}

/// The grid an output answer is resampled onto, as the query gave it.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputSpec {
    /// `None`: the collection's.
    pub crs: Option<String>,
    /// `(x, y)` pixel size in CRS units; `None`: the collection's.
    pub resolution: Option<(f64, f64)>,
    pub resampling: Option<Resampling>,
    pub resampling_by_band: BTreeMap<String, Resampling>,
    pub window: u32,
    /// Only the window with this top-left `(row, col)` output pixel.
    pub at: Option<(u64, u64)>,
}

/// The analysis-ready part of a query.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadSpec {
    pub geometry: Option<Geometry>,
    pub output: OutputSpec,
    pub groupby: GroupBy,
    pub fuse: Fuse,
}

/// JSON `output` (read by hand so that a value of the wrong type names its
/// field).
pub(super) fn output_from_json(v: Value) -> Result<pb::Output> {
    let Value::Object(mut m) = v else { return Err(Error::invalid("output", v, "expected an object")) };
    let mut out = pb::Output::default();
    let text = |m: &mut serde_json::Map<String, Value>, key: &str| -> Result<String> {
        match m.remove(key) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s),
            Some(other) => Err(Error::invalid(&format!("output.{key}"), other, "expected a string")),
        }
    };
    out.crs = text(&mut m, "crs")?;
    out.resolution = match m.remove("resolution") {
        None | Some(Value::Null) => vec![],
        Some(Value::Number(n)) => vec![n.as_f64().unwrap_or(f64::NAN)],
        Some(Value::Array(a)) => {
            a.iter().map(|v| v.as_f64().ok_or_else(|| Error::invalid("output.resolution", v, "expected numbers"))).collect::<Result<Vec<f64>>>()?
        }
        Some(other) => return Err(Error::invalid("output.resolution", other, "expected a number or [x, y]")),
    };
    match m.remove("resampling") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => out.resampling = s,
        Some(Value::Object(per)) => {
            for (band, method) in per {
                let Value::String(method) = method else { return Err(Error::invalid(&format!("output.resampling.{band}"), method, "expected a method name")) };
                out.resampling_by_band.insert(band, method);
            }
        }
        Some(other) => return Err(Error::invalid("output.resampling", other, "expected a method or a map band -> method")),
    }
    out.window = match m.remove("window") {
        None | Some(Value::Null) => 0,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(w) if w > 0 && w <= u32::MAX as u64 => w as u32,
            _ => return Err(Error::invalid("output.window", n, &format!("expected a whole number of pixels, {MIN_WINDOW} to {MAX_WINDOW}"))),
        },
        Some(other) => return Err(Error::invalid("output.window", other, "expected a number of pixels")),
    };
    out.at = match m.remove("at") {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(a)) => {
            a.iter().map(|v| v.as_u64().ok_or_else(|| Error::invalid("output.at", v, "expected [row, col]"))).collect::<Result<Vec<u64>>>()?
        }
        Some(other) => return Err(Error::invalid("output.at", other, "expected [row, col]")),
    };
    if let Some(key) = m.keys().next() {
        return Err(Error::invalid(&format!("output.{key}"), key, "unknown key; expected crs, resolution, resampling, window"));
    }
    Ok(out)
}

/// JSON `geometry`: a GeoJSON object, kept as text.
pub(super) fn geometry_from_json(v: Option<Value>) -> Result<String> {
    match v {
        None | Some(Value::Null) => Ok(String::new()),
        Some(v @ Value::Object(_)) => Ok(v.to_string()),
        Some(other) => Err(Error::invalid("geometry", other, "expected a GeoJSON Polygon or MultiPolygon object")),
    }
}

/// The JSON form of an `Output` message (for endpoint tickets).
pub(super) fn output_to_json(o: &pb::Output) -> Value {
    let mut m = serde_json::Map::new();
    if !o.crs.is_empty() {
        m.insert("crs".into(), o.crs.clone().into());
    }
    if !o.resolution.is_empty() {
        m.insert("resolution".into(), o.resolution.clone().into());
    }
    if !o.resampling_by_band.is_empty() {
        m.insert("resampling".into(), Value::Object(o.resampling_by_band.iter().map(|(k, v)| (k.clone(), Value::from(v.clone()))).collect()));
    } else if !o.resampling.is_empty() {
        m.insert("resampling".into(), o.resampling.clone().into());
    }
    if o.window != 0 {
        m.insert("window".into(), o.window.into());
    }
    if !o.at.is_empty() {
        m.insert("at".into(), o.at.clone().into());
    }
    Value::Object(m)
}

/// Validates the analysis-ready keys of a query; `None` when it has none.
/// A `geometry`, `groupby` or `fuse` without `output` loads onto the
/// collection's own grid.
pub(super) fn load_spec(geometry: &str, geometry_crs: &str, output: Option<pb::Output>, groupby: &str, fuse: &str) -> Result<Option<LoadSpec>> {
    if geometry.is_empty() && output.is_none() && groupby.is_empty() && fuse.is_empty() {
        return Ok(None);
    }
    let geometry = if geometry.is_empty() {
        None
    } else {
        let crs = if geometry_crs.trim().is_empty() { "EPSG:4326".to_string() } else { geometry_crs.to_string() };
        Some(Geometry { polygons: parse_geometry(geometry)?, crs, text: geometry.to_string() })
    };
    let o = output.unwrap_or_default();
    let resolution = match o.resolution.as_slice() {
        [] => None,
        [r] => Some((*r, *r)),
        [x, y] => Some((*x, *y)),
        other => return Err(Error::invalid("output.resolution", other, "expected one number or [x, y]")),
    };
    if let Some((x, y)) = resolution {
        if !(x.is_finite() && x > 0.0 && y.is_finite() && y > 0.0) {
            return Err(Error::invalid("output.resolution", o.resolution, "must be finite and > 0"));
        }
    }
    let window = if o.window == 0 { DEFAULT_WINDOW } else { o.window };
    if !(MIN_WINDOW..=MAX_WINDOW).contains(&window) {
        return Err(Error::invalid("output.window", window, &format!("must be {MIN_WINDOW} to {MAX_WINDOW} pixels")));
    }
    let resampling = if o.resampling.is_empty() { None } else { Some(Resampling::try_parse("output.resampling", &o.resampling)?) };
    let resampling_by_band =
        o.resampling_by_band.iter().map(|(b, m)| Ok((b.clone(), Resampling::try_parse(&format!("output.resampling.{b}"), m)?))).collect::<Result<_>>()?;
    let at = match o.at.as_slice() {
        [] => None,
        [r, c] => Some((*r, *c)),
        other => return Err(Error::invalid("output.at", other, "expected [row, col]")),
    };
    let crs = (!o.crs.trim().is_empty()).then(|| o.crs.clone());
    Ok(Some(LoadSpec {
        geometry,
        output: OutputSpec { crs, resolution, resampling, resampling_by_band, window, at },
        groupby: GroupBy::parse(groupby)?,
        fuse: Fuse::parse(fuse)?,
    }))
}

/// Parses and checks a GeoJSON Polygon or MultiPolygon (a Feature holding
/// one is taken too): rings closed, of at least 4 positions, finite, not
/// crossing themselves or each other.
fn parse_geometry(text: &str) -> Result<Vec<Vec<Ring>>> {
    let bad = |why: &str| Error::invalid("geometry", text, why);
    let v: Value = serde_json::from_str(text).map_err(|e| bad(&format!("malformed JSON: {e}")))?;
    let v = match v.get("type").and_then(Value::as_str) {
        Some("Feature") => v.get("geometry").cloned().unwrap_or(Value::Null),
        _ => v,
    };
    let coords = v.get("coordinates").ok_or_else(|| bad("expected a GeoJSON Polygon or MultiPolygon with coordinates"))?;
    let polygons: Vec<&Value> = match v.get("type").and_then(Value::as_str) {
        Some("Polygon") => vec![coords],
        Some("MultiPolygon") => coords.as_array().map(|a| a.iter().collect()).unwrap_or_default(),
        _ => return Err(bad("expected type Polygon or MultiPolygon")),
    };
    let mut out = Vec::new();
    let mut vertices = 0;
    for (p, poly) in polygons.iter().enumerate() {
        let rings = poly.as_array().ok_or_else(|| bad(&format!("polygon {p}: expected a list of rings")))?;
        let mut parsed = Vec::new();
        for (r, ring) in rings.iter().enumerate() {
            let at = |why: &str| bad(&format!("polygon {p}, ring {r}: {why}"));
            let positions = ring.as_array().ok_or_else(|| at("expected a list of positions"))?;
            let ring: Ring = positions
                .iter()
                .map(|pos| match pos.as_array().map(|a| a.iter().map(Value::as_f64).collect::<Vec<_>>()) {
                    Some(xy) if xy.len() >= 2 && xy[0].is_some_and(f64::is_finite) && xy[1].is_some_and(f64::is_finite) => {
                        Ok([xy[0].unwrap_or_default(), xy[1].unwrap_or_default()])
                    }
                    _ => Err(at(&format!("position {pos} is not [x, y] of finite numbers"))),
                })
                .collect::<Result<_>>()?;
            if ring.len() < 4 {
                return Err(at("a ring needs at least 4 positions"));
            }
            if ring.first() != ring.last() {
                return Err(at("a ring must end where it starts"));
            }
            vertices += ring.len();
            if vertices > MAX_GEOMETRY_VERTICES {
                return Err(bad(&format!("more than {MAX_GEOMETRY_VERTICES} vertices; simplify the geometry")));
            }
            if ring_area(&ring) == 0.0 {
                return Err(at("the ring encloses no area"));
            }
            parsed.push(ring);
        }
        if parsed.is_empty() {
            return Err(bad(&format!("polygon {p} has no rings")));
        }
        if let Some((a, b)) = crossing(&parsed) {
            return Err(bad(&format!("polygon {p} crosses itself (edges {a} and {b})")));
        }
        out.push(parsed);
    }
    if out.is_empty() {
        return Err(bad("the geometry is empty"));
    }
    Ok(out)
}

/// Twice the signed area of a closed ring.
fn ring_area(ring: &[[f64; 2]]) -> f64 {
    ring.windows(2).map(|w| w[0][0] * w[1][1] - w[1][0] * w[0][1]).sum()
}

/// Two edges of a polygon's rings that cross or touch (other than
/// neighbours of one ring sharing their vertex), numbered in ring order.
fn crossing(rings: &[Ring]) -> Option<(usize, usize)> {
    let edges: Vec<(usize, usize, [f64; 2], [f64; 2])> =
        rings.iter().enumerate().flat_map(|(r, ring)| ring.windows(2).enumerate().map(move |(i, w)| (r, i, w[0], w[1]))).collect();
    let orient = |a: [f64; 2], b: [f64; 2], c: [f64; 2]| ((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])).signum();
    let on = |a: [f64; 2], b: [f64; 2], c: [f64; 2]| c[0] >= a[0].min(b[0]) && c[0] <= a[0].max(b[0]) && c[1] >= a[1].min(b[1]) && c[1] <= a[1].max(b[1]);
    for (i, &(ri, ei, a, b)) in edges.iter().enumerate() {
        for (j, &(rj, ej, c, d)) in edges.iter().enumerate().skip(i + 1) {
            if ri == rj {
                let n = rings[ri].len() - 1;
                if ej == ei + 1 || (ei == 0 && ej == n - 1) {
                    continue;
                }
            }
            if a[0].max(b[0]) < c[0].min(d[0]) || c[0].max(d[0]) < a[0].min(b[0]) || a[1].max(b[1]) < c[1].min(d[1]) || c[1].max(d[1]) < a[1].min(b[1]) {
                continue;
            }
            let (o1, o2, o3, o4) = (orient(a, b, c), orient(a, b, d), orient(c, d, a), orient(c, d, b));
            let proper = o1 != o2 && o3 != o4 && o1 != 0.0 && o2 != 0.0 && o3 != 0.0 && o4 != 0.0;
            let touching = (o1 == 0.0 && on(a, b, c)) || (o2 == 0.0 && on(a, b, d)) || (o3 == 0.0 && on(c, d, a)) || (o4 == 0.0 && on(c, d, b));
            if proper || touching {
                return Some((i, j));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn square(x0: f64, y0: f64, s: f64) -> String {
        format!(r#"{{"type": "Polygon", "coordinates": [[[{x0}, {y0}], [{}, {y0}], [{}, {}], [{x0}, {}], [{x0}, {y0}]]]}}"#, x0 + s, x0 + s, y0 + s, y0 + s)
    }

    #[test]
    fn polygons_parse_and_bad_ones_are_named() {
        assert_eq!(parse_geometry(&square(0.0, 0.0, 1.0)).unwrap()[0][0].len(), 5);
        let bow_tie = r#"{"type": "Polygon", "coordinates": [[[0, 0], [2, 2], [2, 0], [0, 1], [0, 0]]]}"#;
        assert!(parse_geometry(bow_tie).unwrap_err().to_string().contains("crosses itself"));
        let empty = r#"{"type": "MultiPolygon", "coordinates": []}"#;
        assert!(parse_geometry(empty).unwrap_err().to_string().contains("empty"));
        let open = r#"{"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1]]]}"#;
        assert!(parse_geometry(open).unwrap_err().to_string().contains("end where it starts"));
        let flat = r#"{"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [2, 0], [0, 0]]]}"#;
        assert!(parse_geometry(flat).is_err());
        let holed = r#"{"type": "Polygon", "coordinates": [[[0, 0], [4, 0], [4, 4], [0, 4], [0, 0]], [[1, 1], [2, 1], [2, 2], [1, 2], [1, 1]]]}"#;
        assert_eq!(parse_geometry(holed).unwrap()[0].len(), 2);
        let hole_out = r#"{"type": "Polygon", "coordinates": [[[0, 0], [4, 0], [4, 4], [0, 4], [0, 0]], [[3, 3], [5, 3], [5, 5], [3, 5], [3, 3]]]}"#;
        assert!(parse_geometry(hole_out).is_err());
    }

    #[test]
    fn output_keys_are_checked() {
        let o = |json: &str| output_from_json(serde_json::from_str(json).unwrap()).and_then(|o| load_spec("", "", Some(o), "", ""));
        assert_eq!(o(r#"{"resolution": [10, 20]}"#).unwrap().unwrap().output.resolution, Some((10.0, 20.0)));
        for (json, field) in [
            (r#"{"resolution": 0}"#, "output.resolution"),
            (r#"{"resolution": -5}"#, "output.resolution"),
            (r#"{"window": 8}"#, "output.window"),
            (r#"{"resampling": "sinc"}"#, "output.resampling"),
            (r#"{"crs": 5}"#, "output.crs"),
            (r#"{"colour": 1}"#, "output.colour"),
        ] {
            match o(json) {
                Err(Error::Invalid { field: f, .. }) => assert_eq!(f, field, "{json}"),
                other => panic!("{json}: {other:?}"),
            }
        }
        assert!(load_spec("", "", None, "week", "").is_err());
        assert!(load_spec("", "", None, "", "median").is_err());
        assert!(load_spec("", "", None, "", "").unwrap().is_none());
    }
}
