//! STAC in: Items (an ItemCollection file, one Item file, or a folder of
//! Item files) whose assets are local GeoTIFF/COG files, as scenes. The
//! Item gives the scene id, the time (`datetime`, else `start_datetime`)
//! and the processing baseline; each raster asset gives its bands by
//! `eo:bands` (or STAC 1.1 `bands`) names, else by its key, matched to the
//! collection's bands directly or through the profile's band codes (`B04`
//! is `red`).

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{inspect, names, plan_group, CogOptions, Failure, Forced, Members, SceneKey, ScenePlan};

/// One Item: where it was read and what it says.
#[derive(Debug, Clone)]
pub struct Item {
    /// The file it came from (asset paths are relative to its folder).
    pub source: PathBuf,
    pub json: Value,
}

/// Whether `path` is STAC input: a `.json` file, or a folder holding
/// `.json` files.
pub fn is_stac(path: &str) -> bool {
    let p = Path::new(path);
    if p.is_dir() {
        return std::fs::read_dir(p).is_ok_and(|entries| entries.flatten().any(|e| is_json(&e.path())));
    }
    is_json(p)
}

fn is_json(p: &Path) -> bool {
    p.is_file() && p.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("json"))
}

/// The Items of STAC `paths` (files and folders of Item files).
pub fn read_items(paths: &[String]) -> (Vec<Item>, Vec<Failure>) {
    let (mut items, mut failures) = (Vec::new(), Vec::new());
    let mut files = Vec::new();
    for p in paths {
        let path = PathBuf::from(p);
        if path.is_dir() {
            let mut inside: Vec<PathBuf> = std::fs::read_dir(&path).map(|d| d.flatten().map(|e| e.path()).filter(|q| is_json(q)).collect()).unwrap_or_default();
            inside.sort();
            files.extend(inside);
        } else {
            files.push(path);
        }
    }
    for file in files {
        let fail = |reason: String| Failure { path: file.display().to_string(), reason };
        let text = match std::fs::read(&file) {
            Ok(t) => t,
            Err(e) => {
                failures.push(fail(format!("cannot read it: {e}")));
                continue;
            }
        };
        let json: Value = match serde_json::from_slice(&text) {
            Ok(v) => v,
            Err(e) => {
                failures.push(fail(format!("not JSON: {e}")));
                continue;
            }
        };
        match json["type"].as_str() {
            Some("FeatureCollection") => {
                for f in json["features"].as_array().into_iter().flatten() {
                    items.push(Item { source: file.clone(), json: f.clone() });
                }
            }
            Some("Feature") => items.push(Item { source: file.clone(), json }),
            other => failures.push(fail(format!("not a STAC Item or ItemCollection (type {other:?})"))),
        }
    }
    (items, failures)
}

/// An asset's local path: absolute, `file://`, or relative to the Item's
/// folder. Remote assets are not read (`None`).
fn local_path(item: &Item, href: &str) -> Option<String> {
    if href.contains("://") && !href.starts_with("file://") {
        return None;
    }
    let href = href.strip_prefix("file://").unwrap_or(href);
    let p = Path::new(href);
    let full = if p.is_absolute() { p.to_path_buf() } else { item.source.parent().unwrap_or(Path::new("")).join(p) };
    Some(full.to_string_lossy().to_string())
}

fn is_raster(key: &str, asset: &Value) -> bool {
    let href = asset["href"].as_str().unwrap_or_default().to_ascii_lowercase();
    let kind = asset["type"].as_str().unwrap_or_default();
    let roles = asset["roles"].as_array().map(|r| r.iter().filter_map(Value::as_str).collect::<Vec<_>>()).unwrap_or_default();
    let thumbnail = roles.iter().any(|r| matches!(*r, "thumbnail" | "overview" | "metadata")) || key == "thumbnail";
    !thumbnail && (kind.starts_with("image/tiff") || href.ends_with(".tif") || href.ends_with(".tiff"))
}

/// The collection band an asset or asset band name stands for.
fn band_of(name: &str, opts: &CogOptions) -> Option<String> {
    let known = |n: &str| opts.collection_bands.iter().any(|b| b == n);
    if known(name) {
        return Some(name.to_string());
    }
    let lower = name.to_lowercase();
    if known(&lower) {
        return Some(lower);
    }
    names::profile_band(&name.to_uppercase()).filter(|n| known(n)).map(str::to_string)
}

/// The Items' scenes. Blocking (GDAL).
pub fn plan_items(items: &[Item], opts: &CogOptions) -> (Vec<ScenePlan>, Vec<Failure>) {
    let (mut scenes, mut failures) = (Vec::new(), Vec::new());
    for item in items {
        let id = item.json["id"].as_str().unwrap_or_default().to_string();
        let what = format!("{} (Item {id:?})", item.source.display());
        let fail = |reason: String| Failure { path: what.clone(), reason };
        if let Err(e) = crate::wire::validate_scene_id("id", &id) {
            failures.push(fail(e.to_string()));
            continue;
        }
        let props = &item.json["properties"];
        let Some(when) = props["datetime"].as_str().or_else(|| props["start_datetime"].as_str()) else {
            failures.push(fail("the Item has no properties.datetime (nor start_datetime)".into()));
            continue;
        };
        let time_ms = match crate::wire::parse_time("properties.datetime", when) {
            Ok(t) => t,
            Err(e) => {
                failures.push(fail(e.to_string()));
                continue;
            }
        };
        let baseline = props["processing:version"].as_str().or_else(|| props["s2:processing_baseline"].as_str()).map(str::to_string);
        let mut members: Members = Vec::new();
        let mut unmapped = Vec::new();
        let assets = item.json["assets"].as_object().cloned().unwrap_or_default();
        for (key, asset) in assets.iter().filter(|(k, a)| is_raster(k, a)) {
            let Some(path) = asset["href"].as_str().and_then(|h| local_path(item, h)) else {
                unmapped.push(format!("{key} (not a local file)"));
                continue;
            };
            let named: Vec<String> = asset["eo:bands"]
                .as_array()
                .or_else(|| asset["bands"].as_array())
                .map(|bands| bands.iter().map(|b| b["name"].as_str().or_else(|| b["common_name"].as_str()).unwrap_or_default().to_string()).collect())
                .unwrap_or_default();
            let info = match inspect(&path) {
                Ok(i) => i,
                Err(reason) => {
                    failures.push(Failure { path: path.clone(), reason });
                    continue;
                }
            };
            let bands: Option<Vec<(usize, String)>> = if named.len() == info.dtypes.len() {
                named.iter().enumerate().map(|(i, n)| band_of(n, opts).map(|b| (i + 1, b))).collect()
            } else if info.dtypes.len() == 1 {
                band_of(key, opts).map(|b| vec![(1, b)])
            } else {
                None
            };
            match bands {
                Some(b) => members.push((info, b)),
                None => unmapped.push(key.clone()),
            }
        }
        if members.is_empty() {
            let reason = format!(
                "no raster asset maps to a band of collection {:?} ({}); assets not used: {}",
                opts.collection,
                opts.collection_bands.join(", "),
                if unmapped.is_empty() { "none".to_string() } else { unmapped.join(", ") }
            );
            failures.push(fail(reason));
            continue;
        }
        let key = SceneKey { group: format!("stac:{id}"), product: Some(id.clone()), label: id.clone() };
        let forced = Forced { scene_id: id, time_ms, baseline };
        plan_group(key, members, opts, Some(&forced), &mut scenes, &mut failures);
    }
    (scenes, failures)
}

/// The first raster asset's local path, to create a collection from.
pub fn first_asset(items: &[Item]) -> Option<String> {
    items.iter().find_map(|item| {
        let assets = item.json["assets"].as_object()?;
        assets.iter().filter(|(k, a)| is_raster(k, a)).find_map(|(_, a)| local_path(item, a["href"].as_str()?))
    })
}
