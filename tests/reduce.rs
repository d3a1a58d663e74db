//! Temporal reductions (DESIGN §4b `reduce`) through the Rust client:
//! period labels and bounds, every simple reducer against a reference
//! computed here, point answers, and bad requests naming their field.

mod common;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, TimestampMillisecondType, UInt16Type};
use arrow_array::{Array, ArrayRef, RecordBatch, UInt16Array};
use common::*;
use pixelquery_client::{proto, Client};

const SINUSOIDAL: &str = "+proj=sinu +lon_0=0 +x_0=0 +y_0=0 +R=6378137 +units=m +no_defs";
const N: usize = 64;
const DAY: i64 = 86_400_000;
/// 2023-11-25T03:00:00Z.
const T0: i64 = 1_700_881_200_000;

/// Dates every 9 days from T0 across the turn of the year, with values
/// that differ per pixel and date; pixel `i` is invalid (0) on date `d`
/// when `(i + d) % 5 == 0`.
fn value(i: usize, d: usize) -> u16 {
    if (i + d).is_multiple_of(5) {
        0
    } else {
        ((i * 7 + d * 131) % 1000 + 1) as u16
    }
}

const DATES: usize = 14;

async fn cube(client: &mut Client) {
    client
        .create_collection(&serde_json::json!({"name": "r", "grid": {"resolution": 40},
            "bands": [{"name": "red", "dtype": "uint16", "nodata": 0}]}))
        .await
        .unwrap();
    for d in 0..DATES {
        let p = 2560.0 / N as f64;
        let req = proto::IngestRequest {
            collection: "r".into(),
            scene_id: format!("d{d:02}"),
            acquired_at_ms: T0 + d as i64 * 9 * DAY,
            crs: SINUSOIDAL.into(),
            geotransform: vec![4380.0 * 2560.0, p, 0.0, 1634.0 * 2560.0, 0.0, -p],
            width: N as u32,
            height: N as u32,
            bands: vec![proto::BandSpec { name: "red".into(), dtype: "uint16".into(), nodata: Some(0.0), ..Default::default() }],
            ..Default::default()
        };
        let values: ArrayRef = std::sync::Arc::new(UInt16Array::from((0..N * N).map(|i| value(i, d)).collect::<Vec<_>>()));
        client.ingest(&req, pixelquery_client::raster_batches(vec![("red".into(), values)], None, N).unwrap()).await.unwrap();
    }
}

fn reduce(period: &str, reducer: &str) -> proto::Query {
    proto::Query {
        collection: "r".into(),
        tiles: vec!["x4380_y1633".into()],
        reduce: Some(proto::Reduce { period: period.into(), reducer: reducer.into(), ..Default::default() }),
        ..Default::default()
    }
}

/// (label, time, values as f64, mask) per row, in time order.
fn rows(batches: &[RecordBatch]) -> Vec<(String, i64, Vec<f64>, Vec<bool>)> {
    let mut out = Vec::new();
    for b in batches {
        for r in 0..b.num_rows() {
            let label = b.column_by_name("label").unwrap().as_string::<i32>().value(r).to_string();
            let time = b.column_by_name("time").unwrap().as_primitive::<TimestampMillisecondType>().value(r);
            let px = b.column_by_name("pixels").unwrap().as_list::<i32>().value(r);
            let values = match px.as_primitive_opt::<Float32Type>() {
                Some(f) => f.values().iter().map(|v| *v as f64).collect(),
                None => px.as_primitive::<UInt16Type>().values().iter().map(|v| *v as f64).collect(),
            };
            let mask = b.column_by_name("mask").unwrap().as_list::<i32>().value(r).as_boolean().iter().map(|v| v.unwrap()).collect();
            out.push((label, time, values, mask));
        }
    }
    out.sort_by_key(|r| r.1);
    out
}

fn at(s: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periods_are_labelled_and_bounded_as_openeo_gives_them() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    cube(&mut client).await;
    let labels = |rows: &[(String, i64, Vec<f64>, Vec<bool>)]| rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>();
    // 2023-11-25 + 9 d steps: Nov 25; Dec 4, 13, 22, 31; Jan 9, 18, 27; Feb 5, 14, 23; Mar 3, 12, 21.
    let season = rows(&client.query(&reduce("season", "count")).await.unwrap());
    assert_eq!(labels(&season), ["2023-son", "2024-djf", "2024-mam"]);
    assert_eq!(season[1].1, at("2023-12-01T00:00:00Z"));
    assert_eq!(
        season.iter().map(|r| r.2.iter().sum::<f64>() as usize).sum::<usize>(),
        (0..DATES).map(|d| (0..N * N).filter(|i| value(*i, d) != 0).count()).sum::<usize>()
    );
    let month = rows(&client.query(&reduce("month", "count")).await.unwrap());
    assert_eq!(labels(&month), ["2023-11", "2023-12", "2024-01", "2024-02", "2024-03"]);
    let dekad = rows(&client.query(&reduce("dekad", "count")).await.unwrap());
    assert_eq!(labels(&dekad)[..4], ["2023-32", "2023-33", "2023-34", "2023-35"]);
    assert_eq!(dekad[3].1, at("2023-12-21T00:00:00Z"));
    let week = rows(&client.query(&reduce("week", "count")).await.unwrap());
    // Sunday 2023-12-31 is in ISO week 2023-52; Tuesday 2024-01-09 in 2024-02.
    assert!(labels(&week).contains(&"2023-52".to_string()) && labels(&week).contains(&"2024-02".to_string()), "{:?}", labels(&week));
    let mut days = reduce("P30D", "count");
    days.start_ms = Some(at("2023-12-01T00:00:00Z"));
    let days = rows(&client.query(&days).await.unwrap());
    assert_eq!(labels(&days), ["2023-12-01", "2023-12-31", "2024-01-30", "2024-02-29"]);
    let all = rows(&client.query(&reduce("all", "count")).await.unwrap());
    assert_eq!((labels(&all), all[0].1), (vec!["2023-11-25".to_string()], at("2023-11-25T00:00:00Z")));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reducer_equals_a_reference_and_points_get_a_row_per_period() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    cube(&mut client).await;
    let months: Vec<(String, Vec<usize>)> = {
        let mut m: Vec<(String, Vec<usize>)> = Vec::new();
        for d in 0..DATES {
            let t = chrono::DateTime::from_timestamp_millis(T0 + d as i64 * 9 * DAY).unwrap().format("%Y-%m").to_string();
            match m.last_mut() {
                Some((l, ds)) if *l == t => ds.push(d),
                _ => m.push((t, vec![d])),
            }
        }
        m
    };
    type Reference = fn(&[f64]) -> Option<f64>;
    let refs: [(&str, Reference); 6] = [
        ("min", |v| v.iter().copied().reduce(f64::min)),
        ("max", |v| v.iter().copied().reduce(f64::max)),
        ("sum", |v| (!v.is_empty()).then(|| v.iter().sum())),
        ("first", |v| v.first().copied()),
        ("last", |v| v.last().copied()),
        ("p100", |v| v.iter().copied().reduce(f64::max)),
    ];
    for (reducer, reference) in refs {
        let got = rows(&client.query(&reduce("month", reducer)).await.unwrap());
        assert_eq!(got.len(), months.len(), "{reducer}");
        for ((label, ds), (glabel, _, values, mask)) in months.iter().zip(&got) {
            assert_eq!(label, glabel);
            for i in 0..N * N {
                let valid: Vec<f64> = ds.iter().map(|d| value(i, *d) as f64).filter(|v| *v != 0.0).collect();
                match reference(&valid) {
                    Some(want) => assert!(mask[i] && values[i] == want, "{reducer} {label} px {i}: {} vs {want}", values[i]),
                    None => assert!(!mask[i] && values[i].is_nan(), "{reducer} {label} px {i}"),
                }
            }
        }
    }
    // A point: one row per month, the same values as the tile's pixel.
    let grid_x = 4380.0 * 2560.0 + 40.0 * 10.0 + 20.0;
    let grid_y = 1634.0 * 2560.0 - 40.0 * 3.0 - 20.0;
    let point = proto::Query { point: vec![grid_x, grid_y], bbox_crs: SINUSOIDAL.into(), tiles: vec![], ..reduce("month", "max") };
    let series = client.point(&point).await.unwrap();
    let b = &series[0];
    let labels: Vec<&str> = (0..b.num_rows()).map(|r| b.column_by_name("label").unwrap().as_string::<i32>().value(r)).collect();
    assert_eq!(labels, months.iter().map(|m| m.0.as_str()).collect::<Vec<_>>());
    let tile = rows(&client.query(&reduce("month", "max")).await.unwrap());
    let i = 3 * N + 10;
    for (r, t) in tile.iter().enumerate() {
        let v = b.column_by_name("red").unwrap().as_primitive::<Float32Type>();
        assert_eq!(
            (v.is_valid(r), if v.is_valid(r) { v.value(r) as f64 } else { f64::NAN }.to_bits()),
            (t.3[i], if t.3[i] { t.2[i] } else { f64::NAN }.to_bits())
        );
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_reductions_are_refused_naming_the_field_and_write_nothing() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    cube(&mut client).await;
    let quality = |q: &str| proto::Query { reduce: Some(proto::Reduce { period: "month".into(), quality: q.into(), ..Default::default() }), ..reduce("", "") };
    let both = proto::Query { reduce: Some(proto::Reduce { period: "month".into(), reducer: "max".into(), quality: "red".into() }), ..reduce("", "") };
    for (query, field) in [
        (reduce("month", "p101"), "reduce.reducer"),
        (reduce("month", "mode"), "reduce.reducer"),
        (reduce("P0D", "max"), "reduce.period"),
        (reduce("quarter", "max"), "reduce.period"),
        (quality("red +"), "reduce.quality"),
        (quality("blue"), "reduce.quality"),
        (both, "reduce"),
        (proto::Query { into: "r2".into(), reduce: None, ..reduce("", "") }, "into"),
        (proto::Query { into: "r".into(), ..reduce("month", "max") }, "into"),
        (proto::Query { into: "bad name!".into(), ..reduce("month", "max") }, "into"),
    ] {
        let (code, message) = code_of(client.query(&query).await);
        assert_eq!(code, tonic::Code::InvalidArgument, "{query:?}: {message}");
        assert!(message.contains(field), "{field}: {message}");
    }
    // into a collection with other bands: refused, nothing stored.
    client.create_collection(&serde_json::json!({"name": "other", "grid": {"resolution": 40}, "bands": [{"name": "nir", "dtype": "float32"}]})).await.unwrap();
    let (code, message) = code_of(client.query(&proto::Query { into: "other".into(), ..reduce("month", "max") }).await);
    assert_eq!(code, tonic::Code::InvalidArgument, "{message}");
    assert!(message.contains("into") && message.contains("red:float32"), "{message}");
    assert_eq!(client.describe("other").await.unwrap()["scenes"], 0);
    server.shutdown().await;
}
