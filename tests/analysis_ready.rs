//! Analysis-ready loads (DESIGN §4b) against a real server: accuracy
//! against `gdalwarp -et 0` over a mosaic of the stored tiles, seams
//! between windows, solar-day grouping and fusing, and bad requests.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, TimestampMillisecondType, UInt16Type, UInt32Type};
use arrow_array::{ArrayRef, RecordBatch, UInt16Array};
use common::*;
use gdal::raster::Buffer;
use gdal::DriverManager;
use pixelquery::grid::{GridSpec, TileId};
use pixelquery_client::{proto, Client};

const T0: i64 = 1_718_416_984_000; // 2024-06-15T02:03:04Z
const HOUR: i64 = 3_600_000;

/// A load assembled: per slice (time, label) and band, the whole output's
/// pixels (as f64) and mask, row-major.
struct Loaded {
    width: usize,
    height: usize,
    geotransform: [f64; 6],
    slices: BTreeMap<(i64, String, String), Slice>,
}

/// A slice's pixels and mask.
type Slice = (Vec<f64>, Vec<bool>);

fn pixels_f64(list: &ArrayRef) -> Vec<f64> {
    if let Some(a) = list.as_primitive_opt::<UInt16Type>() {
        return a.values().iter().map(|v| *v as f64).collect();
    }
    list.as_primitive::<Float32Type>().values().iter().map(|v| *v as f64).collect()
}

fn assemble(schema: &arrow_schema::Schema, batches: &[RecordBatch]) -> Loaded {
    let meta = schema.metadata();
    let width: usize = meta["width"].parse().unwrap();
    let height: usize = meta["height"].parse().unwrap();
    let geotransform: Vec<f64> = serde_json::from_str(&meta["geotransform"]).unwrap();
    let mut slices = BTreeMap::new();
    for b in batches {
        for r in 0..b.num_rows() {
            let time = b.column_by_name("time").unwrap().as_primitive::<TimestampMillisecondType>().value(r);
            let label = b.column_by_name("label").unwrap().as_string::<i32>().value(r).to_string();
            let band = b.column_by_name("band").unwrap().as_string::<i32>().value(r).to_string();
            let u = |name: &str| b.column_by_name(name).unwrap().as_primitive::<UInt32Type>().value(r) as usize;
            let (row, col, h, w) = (u("row"), u("col"), u("height"), u("width"));
            let px = pixels_f64(&b.column_by_name("pixels").unwrap().as_list::<i32>().value(r));
            let mask: Vec<bool> = b.column_by_name("mask").unwrap().as_list::<i32>().value(r).as_boolean().iter().map(|v| v.unwrap()).collect();
            assert_eq!((px.len(), mask.len()), (h * w, h * w));
            let (all, all_mask) = slices.entry((time, label, band)).or_insert_with(|| (vec![0.0; width * height], vec![false; width * height]));
            for i in 0..h {
                for j in 0..w {
                    all[(row + i) * width + col + j] = px[i * w + j];
                    all_mask[(row + i) * width + col + j] = mask[i * w + j];
                }
            }
        }
    }
    Loaded { width, height, geotransform: geotransform.try_into().unwrap(), slices }
}

async fn load(client: &mut Client, q: &proto::Query) -> Loaded {
    let (schema, batches) = client.load(q).await.expect("load");
    assemble(&schema, &batches)
}

fn output(crs: &str, resolution: f64, resampling: &str, window: u32) -> Option<proto::Output> {
    Some(proto::Output { crs: crs.into(), resolution: vec![resolution], resampling: resampling.into(), window, ..Default::default() })
}

/// A smooth uint16 raster with a nodata hole at rows 200..240, columns
/// 150..230 (for `phase` below 10).
fn smooth(size: usize, phase: f64) -> Vec<u16> {
    (0..size * size)
        .map(|i| {
            let (r, c) = (i / size, i % size);
            if phase < 10.0 && (200..240).contains(&r) && (150..230).contains(&c) {
                0
            } else {
                (2000.0 + 800.0 * (r as f64 / 23.0 + phase).sin() + 600.0 * (c as f64 / 31.0).cos()) as u16
            }
        })
        .collect()
}

/// A 10 m raster of `size` px centred near (lon, lat) in `crs`.
fn geotransform_near(crs: &str, lon: f64, lat: f64, size: usize) -> [f64; 6] {
    let from = pixelquery::crs::spatial_ref("t", "EPSG:4326").unwrap();
    let to = pixelquery::crs::spatial_ref("t", crs).unwrap();
    let (mut x, mut y) = ([lon], [lat]);
    pixelquery::crs::Transformer::new(&from, &to).unwrap().transform(&mut x, &mut y);
    let half = size as f64 * 5.0;
    [(x[0] / 10.0).floor() * 10.0 - half, 10.0, 0.0, (y[0] / 10.0).floor() * 10.0 + half, 0.0, -10.0]
}

/// Ingests `values` as a `size` x `size` raster placed by `(crs, gt)`.
async fn put(client: &mut Client, collection: &str, scene: &str, time: i64, (crs, gt, size): (&str, [f64; 6], usize), values: Vec<u16>) {
    let mut req = ingest_request(collection, scene, time, gt, size, "bilinear");
    req.crs = crs.into();
    let a: ArrayRef = std::sync::Arc::new(UInt16Array::from(values));
    client.ingest(&req, pixelquery_client::raster_batches(vec![("red".into(), a)], None, size).unwrap()).await.unwrap();
}

/// The stored tiles of one observation as GeoTIFFs (masked pixels = 0, the
/// nodata) in one VRT, then `gdalwarp -et 0` onto the load's grid.
async fn reference(client: &mut Client, collection: &str, time: i64, loaded: &Loaded, t_srs: &str, method: &str, dir: &Path) -> Vec<f64> {
    let q = proto::Query { collection: collection.into(), start_ms: Some(time), end_ms: Some(time + 1), ..Default::default() };
    let desc = client.describe(collection).await.unwrap();
    let grid = GridSpec::try_new(desc["grid"]["crs"].as_str().unwrap(), desc["grid"]["tile_span"].as_f64().unwrap(), 10.0).unwrap();
    let n = grid.tile_px as usize;
    let mut files = Vec::new();
    for b in client.query(&q).await.unwrap() {
        for r in 0..b.num_rows() {
            let tile: TileId = b.column_by_name("tile_id").unwrap().as_string::<i32>().value(r).parse().unwrap();
            let px = b.column_by_name("pixels").unwrap().as_list::<i32>().value(r);
            let mask = b.column_by_name("mask").unwrap().as_list::<i32>().value(r);
            let values: Vec<u16> =
                px.as_primitive::<UInt16Type>().values().iter().zip(mask.as_boolean().iter()).map(|(v, m)| if m.unwrap() { *v } else { 0 }).collect();
            let path = dir.join(format!("{time}_{tile}.tif"));
            let driver = DriverManager::get_driver_by_name("GTiff").unwrap();
            let mut ds = driver.create_with_band_type::<u16, _>(&path, n, n, 1).unwrap();
            ds.set_geo_transform(&grid.tile_geotransform(tile)).unwrap();
            ds.set_spatial_ref(&gdal::spatial_ref::SpatialRef::from_definition(&grid.crs).unwrap()).unwrap();
            let mut band = ds.rasterband(1).unwrap();
            band.set_no_data_value(Some(0.0)).unwrap();
            band.write((0, 0), (n, n), &mut Buffer::new((n, n), values)).unwrap();
            files.push(path);
        }
    }
    let vrt = dir.join(format!("{time}.vrt"));
    assert!(Command::new("gdalbuildvrt").arg("-q").arg(&vrt).args(&files).status().unwrap().success());
    let out = dir.join(format!("{time}_{method}.tif"));
    let gt = loaded.geotransform;
    let te = [gt[0], gt[3] + gt[5] * loaded.height as f64, gt[0] + gt[1] * loaded.width as f64, gt[3]];
    let ok = Command::new("gdalwarp")
        .args(["-q", "-overwrite", "-et", "0", "-r", method, "-t_srs", t_srs, "-dstnodata", "0", "-tr"])
        .args([gt[1].to_string(), (-gt[5]).to_string()])
        .arg("-te")
        .args(te.iter().map(|v| v.to_string()))
        .arg(&vrt)
        .arg(&out)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let (w, h) = (loaded.width, loaded.height);
    gdal::Dataset::open(&out).unwrap().rasterband(1).unwrap().read_as::<u16>((0, 0), (w, h), (w, h), None).unwrap().data().iter().map(|v| *v as f64).collect()
}

/// Agreement of a slice with the reference: pixels valid in both within
/// `tolerance`, and masks away from any mask edge.
fn agreement(ours: &[f64], mask: &[bool], gdal: &[f64], w: usize, h: usize, tolerance: f64) -> (f64, usize, f64, usize) {
    let (mut close, mut both, mut equal, mut compared) = (0, 0, 0, 0);
    let gv = |r: usize, c: usize| gdal[r * w + c] != 0.0;
    for r in 0..h {
        for c in 0..w {
            let k = r * w + c;
            if mask[k] && gv(r, c) {
                both += 1;
                close += ((ours[k] - gdal[k]).abs() <= tolerance) as usize;
            }
            let edge =
                r == 0 || c == 0 || r + 1 == h || c + 1 == w || [(r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)].iter().any(|&(a, b)| gv(a, b) != gv(r, c));
            if !edge {
                compared += 1;
                equal += (mask[k] == gv(r, c)) as usize;
            }
        }
    }
    (100.0 * close as f64 / both.max(1) as f64, both, 100.0 * equal as f64 / compared.max(1) as f64, compared)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_in_utm_match_gdalwarp_over_the_stored_tiles() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    create_red_collection(&mut client, "ar").await;
    let size = 512;
    put(&mut client, "ar", "z52", T0, ("EPSG:32652", geotransform_near("EPSG:32652", 127.05, 37.55, size), size), smooth(size, 0.0)).await;
    put(&mut client, "ar", "z51", T0 + HOUR, ("EPSG:32651", geotransform_near("EPSG:32651", 127.05, 37.55, size), size), smooth(size, 1.0)).await;
    let (e, n) = utm52(127.05, 37.55);
    let bbox = vec![e - 1500.0, n - 1300.0, e + 1400.0, n + 1500.0];
    let dir = tempfile::tempdir().unwrap();
    for (resolution, method, tolerance, need) in [(20.0, "average", 1.0, 99.9), (10.0, "bilinear", 1.0, 99.9), (10.0, "nearest", 0.0, 99.99)] {
        let q = proto::Query {
            collection: "ar".into(),
            bbox: bbox.clone(),
            bbox_crs: "EPSG:32652".into(),
            output: output("EPSG:32652", resolution, method, 128),
            ..Default::default()
        };
        let loaded = load(&mut client, &q).await;
        assert_eq!(loaded.slices.len(), 2, "one slice per scene");
        assert_eq!(loaded.geotransform[1], resolution);
        assert_eq!(loaded.geotransform[0] % resolution, 0.0, "pixel edges on multiples of the resolution");
        for ((time, label, _), (ours, mask)) in &loaded.slices {
            let gdal = reference(&mut client, "ar", *time, &loaded, "EPSG:32652", method, dir.path()).await;
            let (close, both, masks, compared) = agreement(ours, mask, &gdal, loaded.width, loaded.height, tolerance);
            eprintln!(
                "{method} at {resolution} m, {label}: {close:.3} % of {both} valid pixels within {tolerance} DN; masks equal on {masks:.3} % of {compared}"
            );
            assert!(both > 10_000, "{both}");
            assert!(close >= need, "{method} {label}: {close} %");
            assert!(masks >= 99.9, "{method} {label}: masks {masks} %");
        }
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_are_seamless() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    create_red_collection(&mut client, "seam").await;
    let size = 512;
    put(&mut client, "seam", "a", T0, ("EPSG:32652", geotransform_near("EPSG:32652", 127.05, 37.55, size), size), smooth(size, 0.0)).await;
    let (e, n) = utm52(127.05, 37.55);
    let (x0, y1) = ((e / 10.0).floor() * 10.0 - 900.0, (n / 10.0).floor() * 10.0 + 900.0);
    // 180 x 180 pixels: 3 x 3 windows of 64 (the last 52 wide).
    let area = |x0: f64, y1: f64, w: f64, h: f64| vec![x0, y1 - h, x0 + w, y1];
    for method in ["bilinear", "cubic", "nearest", "average"] {
        let q = |bbox: Vec<f64>, window: u32| proto::Query {
            collection: "seam".into(),
            bbox,
            bbox_crs: "EPSG:32652".into(),
            output: output("EPSG:32652", 10.0, method, window),
            ..Default::default()
        };
        let whole = load(&mut client, &q(area(x0, y1, 1800.0, 1800.0), 1024)).await;
        let tiled = load(&mut client, &q(area(x0, y1, 1800.0, 1800.0), 64)).await;
        assert_eq!((whole.width, whole.height), (180, 180));
        let key = whole.slices.keys().next().unwrap().clone();
        let differ = |a: &Slice, b: &Slice| (0..a.0.len()).filter(|&k| (a.0[k], a.1[k]) != (b.0[k], b.1[k])).count();
        assert_eq!(differ(&whole.slices[&key], &tiled.slices[&key]), 0, "{method}: 3 x 3 windows equal one window");
        assert!(whole.slices[&key].1.iter().filter(|m| **m).count() > 25_000);
        for (wr, wc) in [(0, 0), (1, 2), (2, 1)] {
            let (w, h) = (if wc == 2 { 52 } else { 64 }, if wr == 2 { 52 } else { 64 });
            let alone = load(&mut client, &q(area(x0 + wc as f64 * 640.0, y1 - wr as f64 * 640.0, w as f64 * 10.0, h as f64 * 10.0), 1024)).await;
            assert_eq!((alone.width, alone.height), (w, h));
            let (px, mask) = &alone.slices[&key];
            let (big, big_mask) = &whole.slices[&key];
            for r in 0..h {
                for c in 0..w {
                    let k = (wr * 64 + r) * 180 + wc * 64 + c;
                    assert_eq!((px[r * w + c], mask[r * w + c]), (big[k], big_mask[k]), "{method}: window ({wr}, {wc}) pixel ({r}, {c})");
                }
            }
        }
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn solar_days_group_and_fuse_deterministically() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    create_red_collection(&mut client, "sd").await;
    let size = 256;
    // Two overlapping scenes 30 s apart, shifted by 100 m.
    let gt = geotransform_near("EPSG:32652", 127.05, 37.55, size);
    let mut shifted = gt;
    shifted[0] += 100.0;
    put(&mut client, "sd", "first", T0, ("EPSG:32652", gt, size), smooth(size, 0.0)).await;
    put(&mut client, "sd", "second", T0 + 30_000, ("EPSG:32652", shifted, size), smooth(size, 2.0)).await;
    let (e, n) = utm52(127.05, 37.55);
    let q = |groupby: &str, fuse: &str| proto::Query {
        collection: "sd".into(),
        bbox: vec![e - 1000.0, n - 1000.0, e + 1000.0, n + 1000.0],
        bbox_crs: "EPSG:32652".into(),
        output: output("EPSG:32652", 10.0, "bilinear", 64),
        groupby: groupby.into(),
        fuse: fuse.into(),
        ..Default::default()
    };
    let per_time = load(&mut client, &q("time", "")).await;
    assert_eq!(per_time.slices.len(), 2);
    let obs: Vec<&Slice> = per_time.slices.values().collect();
    for fuse in ["last", "mean", "first", "min", "max"] {
        let runs: Vec<(Vec<u8>, Loaded)> = five_runs(&mut client, &q("solar_day", fuse)).await;
        assert!(runs.windows(2).all(|w| w[0].0 == w[1].0), "{fuse}: five runs byte-identical");
        let fused = &runs[0].1;
        assert_eq!(fused.slices.len(), 1, "{fuse}: one slice for one overpass");
        let ((time, label, _), (px, mask)) = fused.slices.iter().next().unwrap();
        assert_eq!((*time, label.as_str()), (T0, "2024-06-15"));
        for k in 0..px.len() {
            let valid: Vec<f64> = obs.iter().filter(|o| o.1[k]).map(|o| o.0[k]).collect();
            assert_eq!(mask[k], !valid.is_empty(), "{fuse} mask at {k}");
            if valid.is_empty() {
                continue;
            }
            let want = match fuse {
                "last" => *valid.last().unwrap(),
                "first" => valid[0],
                "min" => valid.iter().copied().fold(f64::INFINITY, f64::min),
                "max" => valid.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                _ => ((valid.iter().sum::<f64>() / valid.len() as f64) as f32) as f64,
            };
            assert_eq!(px[k], want, "{fuse} at {k}");
        }
    }
    server.shutdown().await;
}

/// Five runs of a load: the raw bytes of every batch, and the first run.
async fn five_runs(client: &mut Client, q: &proto::Query) -> Vec<(Vec<u8>, Loaded)> {
    let mut out = Vec::new();
    for _ in 0..5 {
        let (schema, batches) = client.load(q).await.unwrap();
        let mut bytes = Vec::new();
        for b in &batches {
            for c in b.columns() {
                let data = c.to_data();
                for buf in data.buffers() {
                    bytes.extend_from_slice(buf.as_slice());
                }
                for child in data.child_data() {
                    for buf in child.buffers() {
                        bytes.extend_from_slice(buf.as_slice());
                    }
                }
            }
        }
        out.push((bytes, assemble(&schema, &batches)));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenes_across_midnight_utc_at_the_antimeridian_are_one_solar_day() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    create_red_collection(&mut client, "am").await;
    let size = 128;
    let gt = geotransform_near("EPSG:32660", 179.9, 10.0, size);
    let evening = pixelquery::wire::parse_time("t", "2024-06-14T23:55:00Z").unwrap();
    put(&mut client, "am", "late", evening, ("EPSG:32660", gt, size), smooth(size, 0.0)).await;
    put(&mut client, "am", "early", evening + 600_000, ("EPSG:32660", gt, size), smooth(size, 1.0)).await;
    let q = proto::Query { collection: "am".into(), output: Some(proto::Output::default()), groupby: "solar_day".into(), ..Default::default() };
    let loaded = load(&mut client, &q).await;
    let labels: Vec<&str> = loaded.slices.keys().map(|k| k.1.as_str()).collect();
    assert_eq!(labels, ["2024-06-15"]);
    let by_time = load(&mut client, &proto::Query { groupby: "time".into(), ..q.clone() }).await;
    assert_eq!(by_time.slices.len(), 2);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_loads_name_the_field_and_write_nothing() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    create_red_collection(&mut client, "bad").await;
    let size = 128;
    put(&mut client, "bad", "a", T0, ("EPSG:32652", geotransform_near("EPSG:32652", 127.05, 37.55, size), size), smooth(size, 0.0)).await;
    let before = snapshot(&server.warehouse());
    let base = proto::Query { collection: "bad".into(), bbox: vec![127.0, 37.5, 127.1, 37.6], output: Some(proto::Output::default()), ..Default::default() };
    let with_output = |o: proto::Output| proto::Query { output: Some(o), ..base.clone() };
    let bow_tie = r#"{"type": "Polygon", "coordinates": [[[127, 37.5], [127.1, 37.6], [127.1, 37.5], [127, 37.55], [127, 37.5]]]}"#;
    let cases: Vec<(proto::Query, &str)> = vec![
        (with_output(proto::Output { crs: "EPSG:99999999".into(), ..Default::default() }), "output.crs"),
        (with_output(proto::Output { resolution: vec![0.0], ..Default::default() }), "output.resolution"),
        (with_output(proto::Output { resolution: vec![f64::NAN], ..Default::default() }), "output.resolution"),
        (with_output(proto::Output { window: 8, ..Default::default() }), "output.window"),
        (with_output(proto::Output { crs: "EPSG:4326".into(), resolution: vec![1e-7], window: 16, ..Default::default() }), "output.window"),
        (proto::Query { geometry: r#"{"type": "MultiPolygon", "coordinates": []}"#.into(), ..base.clone() }, "geometry"),
        (proto::Query { geometry: bow_tie.into(), ..base.clone() }, "geometry"),
        (proto::Query { groupby: "week".into(), ..base.clone() }, "groupby"),
        (proto::Query { fuse: "median".into(), ..base.clone() }, "fuse"),
    ];
    for (q, field) in cases {
        let (code, message) = code_of(client.flight_info(&q).await);
        assert_eq!(code, tonic::Code::InvalidArgument, "{field}: {message}");
        assert!(message.contains(field), "{field}: {message}");
        let (code, _) = code_of(client.do_get(bytes::Bytes::from(prost::Message::encode_to_vec(&q))).await);
        assert_eq!(code, tonic::Code::InvalidArgument, "{field}");
    }
    assert_eq!(snapshot(&server.warehouse()), before, "a bad load writes nothing");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_geometry_masks_and_endpoints_are_windows_and_bands() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    create_red_collection(&mut client, "geo").await;
    let size = 512;
    put(&mut client, "geo", "a", T0, ("EPSG:32652", geotransform_near("EPSG:32652", 127.05, 37.55, size), size), smooth(size, 10.0)).await;
    let (e, n) = utm52(127.05, 37.55);
    let (e, n) = ((e / 10.0).floor() * 10.0, (n / 10.0).floor() * 10.0);
    // A triangle in UTM: pixels whose centre lies outside are invalid.
    let tri = [[e - 1000.0, n - 1000.0], [e + 1000.0, n - 1000.0], [e - 1000.0, n + 1000.0], [e - 1000.0, n - 1000.0]];
    let geometry = serde_json::json!({"type": "Polygon", "coordinates": [tri]}).to_string();
    let q = proto::Query {
        collection: "geo".into(),
        geometry,
        geometry_crs: "EPSG:32652".into(),
        output: output("EPSG:32652", 10.0, "nearest", 64),
        ..Default::default()
    };
    let info = client.flight_info(&q).await.unwrap();
    let loaded = load(&mut client, &q).await;
    assert_eq!((loaded.width, loaded.height), (200, 200));
    // 4 x 4 windows; those wholly outside the triangle's box are none here.
    assert_eq!(info.endpoint.len(), 16);
    assert_eq!(info.total_records, 16);
    let (_, mask) = loaded.slices.values().next().unwrap();
    for r in 0..200 {
        for c in 0..200 {
            // The centre of pixel (r, c) lies inside when c < r (on the
            // hypotenuse when c == r).
            if c != r {
                assert_eq!(mask[r * 200 + c], c < r, "pixel ({r}, {c})");
            }
        }
    }
    server.shutdown().await;
}
