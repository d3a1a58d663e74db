//! Server-side `mask`, `scale` and `compute` (DESIGN §4b) on tile, point
//! and load answers, against references computed here.

mod common;

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, UInt16Type};
use arrow_array::{ArrayRef, RecordBatch, UInt16Array, UInt8Array};
use common::*;
use pixelquery_client::{proto, Client};

const SINUSOIDAL: &str = "+proj=sinu +lon_0=0 +x_0=0 +y_0=0 +R=6378137 +units=m +no_defs";
const T0: i64 = 1_718_416_984_000; // 2024-06-15

/// A raster of exactly one tile, x4380_y1633, on the grid's lattice.
fn on_tile(collection: &str, scene: &str, time: i64, n: usize, bands: &[(&str, &str)]) -> proto::IngestRequest {
    let p = 2560.0 / n as f64;
    proto::IngestRequest {
        collection: collection.into(),
        scene_id: scene.into(),
        acquired_at_ms: time,
        crs: SINUSOIDAL.into(),
        geotransform: vec![4380.0 * 2560.0, p, 0.0, 1634.0 * 2560.0, 0.0, -p],
        width: n as u32,
        height: n as u32,
        bands: bands.iter().map(|(name, dtype)| proto::BandSpec { name: name.to_string(), dtype: dtype.to_string(), ..Default::default() }).collect(),
        ..Default::default()
    }
}

async fn put(client: &mut Client, req: proto::IngestRequest, columns: Vec<(&str, ArrayRef)>) {
    let n = req.width as usize;
    let cols = columns.into_iter().map(|(n, a)| (n.to_string(), a)).collect();
    client.ingest(&req, pixelquery_client::raster_batches(cols, None, n).unwrap()).await.unwrap();
}

/// The rows of a tile query: (band, time) -> (values as f64, mask).
fn rows(batches: &[RecordBatch]) -> Vec<(String, i64, Vec<f64>, Vec<bool>)> {
    let mut out = Vec::new();
    for b in batches {
        for r in 0..b.num_rows() {
            let band = b.column_by_name("band").unwrap().as_string::<i32>().value(r).to_string();
            let time = b.column_by_name("time").unwrap().as_primitive::<arrow_array::types::TimestampMillisecondType>().value(r);
            let px = b.column_by_name("pixels").unwrap().as_list::<i32>().value(r);
            let values: Vec<f64> = match px.as_primitive_opt::<Float32Type>() {
                Some(f) => f.values().iter().map(|v| *v as f64).collect(),
                None => px.as_primitive::<UInt16Type>().values().iter().map(|v| *v as f64).collect(),
            };
            let mask = b.column_by_name("mask").unwrap().as_list::<i32>().value(r).as_boolean().iter().map(|v| v.unwrap()).collect();
            out.push((band, time, values, mask));
        }
    }
    out.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
    out
}

fn q(collection: &str) -> proto::Query {
    proto::Query { collection: collection.into(), tiles: vec!["x4380_y1633".into()], ..Default::default() }
}

fn ndvi() -> std::collections::HashMap<String, String> {
    [("ndvi".to_string(), "(nir - red) / (nir + red)".to_string())].into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndvi_matches_numpy_and_is_invalid_exactly_where_it_should_be() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client
        .create_collection(&serde_json::json!({"name": "nd", "grid": {"resolution": 10},
            "bands": [{"name": "red", "dtype": "uint16", "nodata": 0}, {"name": "nir", "dtype": "uint16", "nodata": 0}]}))
        .await
        .unwrap();
    let n = 256;
    let red: Vec<u16> = (0..n * n).map(|i| ((i / n * 7 + i % n * 13) % 3000) as u16).collect();
    let nir: Vec<u16> = (0..n * n).map(|i| ((i / n * 11 + i % n * 3) % 5000) as u16).collect();
    let mut req = on_tile("nd", "a", T0, n, &[("red", "uint16"), ("nir", "uint16")]);
    req.bands.iter_mut().for_each(|b| b.nodata = Some(0.0));
    put(&mut client, req, vec![("red", Arc::new(UInt16Array::from(red.clone()))), ("nir", Arc::new(UInt16Array::from(nir.clone())))]).await;
    let answer = rows(&client.query(&proto::Query { bands: vec!["ndvi".into(), "red".into()], compute: ndvi(), ..q("nd") }).await.unwrap());
    assert_eq!(answer.len(), 2);
    let (_, _, values, mask) = answer.iter().find(|r| r.0 == "ndvi").unwrap();
    let (mut valid, mut worst) = (0, 0.0f64);
    for i in 0..n * n {
        let (r, ni) = (red[i] as f64, nir[i] as f64);
        let should = red[i] != 0 && nir[i] != 0 && r + ni != 0.0;
        assert_eq!(mask[i], should, "pixel {i}: red {r} nir {ni}");
        if should {
            valid += 1;
            worst = worst.max((values[i] - (ni - r) / (ni + r)).abs());
        }
    }
    eprintln!("NDVI: {valid} valid pixels, largest difference from the float64 reference {worst:e}");
    assert!(worst <= 1e-6 && valid > 60_000, "{worst} {valid}");
    // Stored bands come back as float32 beside the computed one.
    let (_, _, red_back, red_mask) = answer.iter().find(|r| r.0 == "red").unwrap();
    assert!((0..n * n).all(|i| red_mask[i] == (red[i] != 0) && (!red_mask[i] || red_back[i] == red[i] as f64)));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qa_masks_follow_the_profiles() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let n_of = |desc: &serde_json::Value| desc["grid"]["tile_px"].as_u64().unwrap() as usize;
    // Sentinel-2 SCL: classes 0-11 across the columns.
    let desc = client.create_collection(&serde_json::json!({"name": "s2", "profile": "sentinel2_l2a"})).await.unwrap();
    let n = n_of(&desc);
    let scl: Vec<u8> = (0..n * n).map(|i| (i % n % 12) as u8).collect();
    let red = vec![500u16; n * n];
    put(
        &mut client,
        on_tile("s2", "s", T0, n, &[("red", "uint16"), ("scl", "uint8")]),
        vec![("red", Arc::new(UInt16Array::from(red.clone()))), ("scl", Arc::new(UInt8Array::from(scl.clone())))],
    )
    .await;
    let masked = |mask: proto::Mask| proto::Query { bands: vec!["red".into()], mask: Some(mask), ..q("s2") };
    let qa = proto::Mask { qa: true, ..Default::default() };
    let (_, _, _, mask) = &rows(&client.query(&masked(qa.clone())).await.unwrap())[0];
    for (i, m) in mask.iter().enumerate() {
        assert_eq!(*m, [4, 5, 6, 11].contains(&scl[i]), "SCL {}", scl[i]);
    }
    let explicit = proto::Mask { band: "scl".into(), invalid: vec![0, 1, 3, 8, 9, 10], ..Default::default() };
    let (_, _, _, mask) = &rows(&client.query(&masked(explicit)).await.unwrap())[0];
    assert!(mask.iter().enumerate().all(|(i, m)| *m != [0, 1, 3, 8, 9, 10].contains(&scl[i])));
    // Landsat QA_PIXEL: the clear word, and words with each of bits 1-4 set.
    let desc = client.create_collection(&serde_json::json!({"name": "l8", "profile": "landsat8_l2"})).await.unwrap();
    let n = n_of(&desc);
    let words = [21824u16, 21824 | 2, 21824 | 4, 21824 | 8, 21824 | 16, 21952];
    let qa_pixel: Vec<u16> = (0..n * n).map(|i| words[i % words.len()]).collect();
    put(
        &mut client,
        on_tile("l8", "l", T0, n, &[("red", "uint16"), ("qa_pixel", "uint16")]),
        vec![("red", Arc::new(UInt16Array::from(vec![9000u16; n * n]))), ("qa_pixel", Arc::new(UInt16Array::from(qa_pixel.clone())))],
    )
    .await;
    let (_, _, _, mask) = &rows(&client.query(&proto::Query { bands: vec!["red".into()], mask: Some(qa.clone()), ..q("l8") }).await.unwrap())[0];
    for (i, m) in mask.iter().enumerate() {
        assert_eq!(*m, qa_pixel[i] == 21824 || qa_pixel[i] == 21952, "QA_PIXEL {}", qa_pixel[i]);
    }
    // PlanetScope UDM2's clear band.
    let desc = client.create_collection(&serde_json::json!({"name": "ps", "profile": "planet_sr"})).await.unwrap();
    let n = n_of(&desc);
    let clear: Vec<u8> = (0..n * n).map(|i| (i % 3 == 0) as u8).collect();
    put(
        &mut client,
        on_tile("ps", "p", T0, n, &[("red", "uint16"), ("clear", "uint8")]),
        vec![("red", Arc::new(UInt16Array::from(vec![700u16; n * n]))), ("clear", Arc::new(UInt8Array::from(clear.clone())))],
    )
    .await;
    for mask in [qa, proto::Mask { band: "clear".into(), valid: vec![1], ..Default::default() }] {
        let (_, _, _, got) = &rows(&client.query(&proto::Query { bands: vec!["red".into()], mask: Some(mask), ..q("ps") }).await.unwrap())[0];
        assert!(got.iter().enumerate().all(|(i, m)| *m == (clear[i] == 1)));
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_applies_each_scenes_offset() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let desc = client.create_collection(&serde_json::json!({"name": "s2", "profile": "sentinel2_l2a"})).await.unwrap();
    let n = desc["grid"]["tile_px"].as_u64().unwrap() as usize;
    for (scene, baseline, day) in [("new", "04.00", 0), ("old", "N0301", 1)] {
        let mut req = on_tile("s2", scene, T0 + day * 86_400_000, n, &[("red", "uint16")]);
        req.processing_baseline = baseline.into();
        put(&mut client, req, vec![("red", Arc::new(UInt16Array::from(vec![1000u16; n * n])))]).await;
    }
    let got = rows(&client.query(&proto::Query { bands: vec!["red".into()], scale: true, ..q("s2") }).await.unwrap());
    assert_eq!(got.len(), 2);
    assert!(got[0].2.iter().all(|v| v.abs() < 1e-6), "baseline 04.00: {}", got[0].2[0]);
    assert!(got[1].2.iter().all(|v| (v - 0.1).abs() < 1e-6), "baseline 03.01: {}", got[1].2[0]);
    let desc = client.create_collection(&serde_json::json!({"name": "l8", "profile": "landsat8_l2"})).await.unwrap();
    let n = desc["grid"]["tile_px"].as_u64().unwrap() as usize;
    put(&mut client, on_tile("l8", "l", T0, n, &[("red", "uint16")]), vec![("red", Arc::new(UInt16Array::from(vec![7273u16; n * n])))]).await;
    let got = rows(&client.query(&proto::Query { bands: vec!["red".into()], scale: true, ..q("l8") }).await.unwrap());
    assert!(got[0].2.iter().all(|v| (v - 0.0000075).abs() < 1e-7), "Landsat DN 7273: {}", got[0].2[0]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn point_and_load_answers_equal_the_tile_answer() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let desc = client.create_collection(&serde_json::json!({"name": "s2", "profile": "sentinel2_l2a"})).await.unwrap();
    let n = desc["grid"]["tile_px"].as_u64().unwrap() as usize;
    for day in 0..4usize {
        let red: Vec<u16> = (0..n * n).map(|i| 1000 + ((i * 7 + day * 13) % 2000) as u16).collect();
        let nir: Vec<u16> = (0..n * n).map(|i| 2000 + ((i * 3 + day * 29) % 3000) as u16).collect();
        let scl: Vec<u8> = (0..n * n).map(|i| if (i / n + day * 40) % 160 < 40 { 9 } else { 4 }).collect();
        let mut req = on_tile("s2", &format!("d{day}"), T0 + day as i64 * 5 * 86_400_000, n, &[("red", "uint16"), ("nir", "uint16"), ("scl", "uint8")]);
        req.processing_baseline = "04.00".into();
        put(
            &mut client,
            req,
            vec![("red", Arc::new(UInt16Array::from(red))), ("nir", Arc::new(UInt16Array::from(nir))), ("scl", Arc::new(UInt8Array::from(scl)))],
        )
        .await;
    }
    let steps = |q: proto::Query| proto::Query {
        bands: vec!["ndvi".into()],
        compute: ndvi(),
        mask: Some(proto::Mask { qa: true, ..Default::default() }),
        scale: true,
        ..q
    };
    let tiles = rows(&client.query(&steps(q("s2"))).await.unwrap());
    assert_eq!(tiles.len(), 4);
    // A point: the pixel at row 50, column 70 of the tile.
    let (x, y) = (4380.0 * 2560.0 + 70.5 * 10.0, 1634.0 * 2560.0 - 50.5 * 10.0);
    let point = proto::Query { collection: "s2".into(), point: vec![x, y], bbox_crs: SINUSOIDAL.into(), ..Default::default() };
    let series = client.point(&steps(point)).await.unwrap();
    let ndvi = series[0].column_by_name("ndvi").unwrap().as_primitive::<Float32Type>().clone();
    let valid = series[0].column_by_name("ndvi_valid").unwrap().as_boolean().clone();
    assert_eq!(ndvi.len(), 4);
    let k = 50 * n + 70;
    let mut masked = 0;
    for (d, (_, _, values, mask)) in tiles.iter().enumerate() {
        assert_eq!(valid.value(d), mask[k], "date {d}");
        masked += !mask[k] as usize;
        if mask[k] {
            assert_eq!(ndvi.value(d) as f64, values[k], "date {d}");
        }
    }
    assert!((1..4).contains(&masked), "the point is clouded on some dates: {masked}");
    // A load on the grid's own lattice (nearest) holds the same pixels.
    let load = proto::Query { output: Some(proto::Output { resampling: "nearest".into(), ..Default::default() }), ..steps(q("s2")) };
    let (_, batches) = client.load(&load).await.unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 4);
    for b in &batches {
        for r in 0..b.num_rows() {
            let time = b.column_by_name("time").unwrap().as_primitive::<arrow_array::types::TimestampMillisecondType>().value(r);
            let (_, _, values, mask) = tiles.iter().find(|t| t.1 == time).unwrap();
            let px = b.column_by_name("pixels").unwrap().as_list::<i32>().value(r);
            let px = px.as_primitive::<Float32Type>();
            let m = b.column_by_name("mask").unwrap().as_list::<i32>().value(r);
            let m = m.as_boolean();
            assert_eq!(px.len(), n * n);
            assert!((0..n * n).all(|i| m.value(i) == mask[i] && (!mask[i] || px.value(i) as f64 == values[i])));
        }
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_expressions_name_the_expression_and_the_position() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client
        .create_collection(&serde_json::json!({"name": "c", "grid": {"resolution": 10},
            "bands": [{"name": "red", "dtype": "uint16", "nodata": 0}, {"name": "nir", "dtype": "uint16", "nodata": 0}]}))
        .await
        .unwrap();
    let n = 256;
    put(&mut client, on_tile("c", "a", T0, n, &[("red", "uint16")]), vec![("red", Arc::new(UInt16Array::from(vec![5u16; n * n])))]).await;
    let deep = format!("{}red{}", "(".repeat(100), ")".repeat(100));
    let many = vec!["red"; 200].join("+");
    let long = format!("red + {}", "1".repeat(1100));
    for (expr, want) in [
        ("blue + red", "position 0"),
        ("sqrt(red, nir)", "arguments"),
        ("frobnicate(red)", "unknown function"),
        (many.as_str(), "nodes"),
        (long.as_str(), "longer than"),
        (deep.as_str(), "nested"),
        ("red + ñ", "ASCII"),
        ("", "empty"),
        ("red +", "position 5"),
    ] {
        let query = proto::Query { bands: vec!["x".into()], compute: [("x".to_string(), expr.to_string())].into(), ..q("c") };
        let (code, message) = code_of(client.query(&query).await);
        assert_eq!(code, tonic::Code::InvalidArgument, "{expr:?}: {message}");
        assert!(message.contains("compute.x") && message.contains(want), "{expr:?}: {message}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_masks_baselines_and_scale_are_refused_naming_the_field() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client
        .create_collection(&serde_json::json!({"name": "c", "grid": {"resolution": 10},
            "bands": [{"name": "red", "dtype": "uint16", "nodata": 0}, {"name": "scl", "dtype": "uint8"}]}))
        .await
        .unwrap();
    let mask = |m: proto::Mask| proto::Query { mask: Some(m), ..q("c") };
    for (query, field, want) in [
        (mask(proto::Mask { band: "cloud".into(), invalid: vec![9], ..Default::default() }), "mask.band", "no such band"),
        (mask(proto::Mask { band: "scl".into(), invalid: vec![9], valid: vec![4], ..Default::default() }), "mask", "exactly one"),
        (mask(proto::Mask { band: "scl".into(), ..Default::default() }), "mask", "exactly one"),
        (mask(proto::Mask { band: "scl".into(), bits: vec![64], ..Default::default() }), "mask.bits", "0 to 63"),
        (mask(proto::Mask { qa: true, ..Default::default() }), "mask", "no QA rules"),
    ] {
        let (code, message) = code_of(client.query(&query).await);
        assert_eq!(code, tonic::Code::InvalidArgument, "{field}: {message}");
        assert!(message.contains(field) && message.contains(want), "{field}: {message}");
    }
    // JSON: scale must be a boolean.
    let (code, message) = code_of(client.do_get(br#"{"collection": "c", "scale": "yes"}"#.to_vec().into()).await);
    assert_eq!(code, tonic::Code::InvalidArgument, "{message}");
    assert!(message.contains("scale") && message.contains("true or false"), "{message}");
    // An ingest with a baseline that is none: refused, nothing stored.
    let mut req = on_tile("c", "b", T0, 16, &[("red", "uint16")]);
    req.processing_baseline = "latest".into();
    let values: ArrayRef = Arc::new(UInt16Array::from(vec![7u16; 256]));
    let (code, message) = code_of(client.ingest(&req, pixelquery_client::raster_batches(vec![("red".into(), values)], None, 16).unwrap()).await);
    assert_eq!(code, tonic::Code::InvalidArgument, "{message}");
    assert!(message.contains("processing_baseline") && message.contains("latest"), "{message}");
    assert_eq!(client.describe("c").await.unwrap()["scenes"], 0);
    server.shutdown().await;
}
