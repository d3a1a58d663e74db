//! Serving: GetFlightInfo endpoints and totals, DoGet with time/band/bbox
//! filters, ListFlights, GetSchema, idempotent DoPut, multi-band rasters
//! with a `valid` column, bilinear, profiles and the grid's tile ids.

mod common;

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, UInt8Type};
use arrow_array::{ArrayRef, BooleanArray, Float32Array, UInt8Array};
use arrow_flight::FlightDescriptor;
use common::*;
use futures::TryStreamExt;
use pixelquery::crs;
use pixelquery::grid::{GridSpec, DEFAULT_GRID_CRS};
use pixelquery_client::proto;
use prost::Message;

const JUN: i64 = 1718416984000; // 2024-06-15T02:03:04Z
const JUL: i64 = 1719799384000; // 2024-07-01T02:03:04Z
const AUG: i64 = 1722477784000; // 2024-08-01T02:03:04Z

#[test]
fn proj_puts_known_places_in_the_earlier_pixelquery_tiles() {
    let grid = GridSpec::default_at(10.0).unwrap();
    let t = crs::Transformer::new(&crs::spatial_ref("t", "EPSG:4326").unwrap(), &crs::spatial_ref("t", DEFAULT_GRID_CRS).unwrap()).unwrap();
    for (lon, lat, id) in [(127.05, 37.55, "x4380_y1632"), (-122.42, 37.77, "x-4208_y1642")] {
        let (mut x, mut y) = ([lon], [lat]);
        t.transform(&mut x, &mut y);
        assert_eq!(grid.tile_of(x[0], y[0]).to_string(), id, "lon {lon} lat {lat}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_filter_by_time_band_and_area() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    create_red_collection(&mut client, "s2").await;
    let gt = utm_geotransform(300);
    let mut tiles = Vec::new();
    for (i, t) in [JUN, JUL, AUG].into_iter().enumerate() {
        let put = client.ingest(&ingest_request("s2", &format!("scene-{i}"), t, gt, 300, "bilinear"), red_batches(raster(300, i as u16), 300)).await.unwrap();
        assert!(!put.duplicate && put.observations > 0);
        tiles = put.tiles;
    }
    // Re-sending a scene adds nothing.
    let again = client.ingest(&ingest_request("s2", "scene-0", JUN, gt, 300, "bilinear"), red_batches(raster(300, 0), 300)).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.observations, 0);

    // Whole collection: one endpoint per (tile, month) chunk, exact totals.
    let all = client.flight_info(&proto::Query { collection: "s2".into(), ..Default::default() }).await.unwrap();
    assert_eq!(all.endpoint.len(), tiles.len() * 3);
    assert_eq!(all.total_records as usize, tiles.len() * 3);
    assert!(all.total_bytes > 0);
    let rows: usize = client.query(&proto::Query { collection: "s2".into(), ..Default::default() }).await.unwrap().iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, tiles.len() * 3);

    // Time filter: [JUL, AUG) holds one scene; end is exclusive.
    let q = proto::Query { collection: "s2".into(), start_ms: Some(JUL), end_ms: Some(AUG), ..Default::default() };
    let info = client.flight_info(&q).await.unwrap();
    assert_eq!(info.total_records as usize, tiles.len());
    let batches = client.query(&q).await.unwrap();
    for b in &batches {
        let scenes = b.column_by_name("scene_id").unwrap().as_string::<i32>();
        assert!(scenes.iter().all(|s| s == Some("scene-1")));
    }

    // A Query given straight to DoGet as the ticket, with a tile list.
    let direct =
        client.do_get(proto::Query { collection: "s2".into(), tiles: vec![tiles[0].clone()], ..Default::default() }.encode_to_vec().into()).await.unwrap();
    assert_eq!(direct.iter().map(|b| b.num_rows()).sum::<usize>(), 3);
    let schema = direct[0].schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["tile_id", "band", "time", "scene_id", "pixels", "mask"]);
    assert!(schema.metadata().contains_key("crs") && schema.metadata().contains_key("geotransform"));

    // bbox of about 40 m around lon 127.05, lat 37.55: that tile only (a 0.002 degree box would reach x4379).
    let bq = proto::Query { collection: "s2".into(), bbox: vec![127.0498, 37.5498, 127.0502, 37.5502], ..Default::default() };
    let binfo = client.flight_info(&bq).await.unwrap();
    assert_eq!(binfo.total_records, 3);
    // A bbox far away: nothing.
    let far = client.flight_info(&proto::Query { collection: "s2".into(), bbox: vec![10.0, 50.0, 10.1, 50.1], ..Default::default() }).await.unwrap();
    assert_eq!((far.endpoint.len(), far.total_records), (0, 0));

    // GetSchema of a query.
    let s =
        client.flight().get_schema(FlightDescriptor::new_cmd(proto::Query { collection: "s2".into(), ..Default::default() }.encode_to_vec())).await.unwrap();
    assert_eq!(s.field(4).name(), "pixels");

    // ListFlights: one FlightInfo per chunk, filterable by time.
    let listed: Vec<_> = client.flight().list_flights(bytes::Bytes::new()).await.unwrap().try_collect().await.unwrap();
    assert_eq!(listed.len(), tiles.len() * 3);
    let expr = serde_json::to_vec(&serde_json::json!({"collection": "s2", "start": "2024-08-01"})).unwrap();
    let august: Vec<_> = client.flight().list_flights(expr).await.unwrap().try_collect().await.unwrap();
    assert_eq!(august.len(), tiles.len());
    assert!(august.iter().all(|i| i.total_records == 1 && i.endpoint.len() == 1));

    // Actions.
    let d = client.describe("s2").await.unwrap();
    assert_eq!(d["scenes"], 3);
    assert_eq!(d["grid"]["tile_px"], 256);
    let l = client.list_collections().await.unwrap();
    assert_eq!(l[0]["name"], "s2");
    assert_eq!(client.health().await.unwrap()["status"], "ok");
    let actions: Vec<_> = client.flight().list_actions().await.unwrap().try_collect().await.unwrap();
    assert!(actions.iter().any(|a| a.r#type == "create_collection" && a.description.contains("profile")));

    // The catalog survives a restart.
    let dir = server.shutdown().await;
    let server = TestServer::start_in(dir).await;
    let mut client = server.client().await;
    let info = client.flight_info(&proto::Query { collection: "s2".into(), ..Default::default() }).await.unwrap();
    assert_eq!(info.total_records as usize, tiles.len() * 3);
    let dup = client.ingest(&ingest_request("s2", "scene-2", AUG, gt, 300, "bilinear"), red_batches(raster(300, 2), 300)).await.unwrap();
    assert!(dup.duplicate, "scene ids survive restarts");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_band_rasters_with_valid_column_and_aligned_grid() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client
        .create_collection(&serde_json::json!({
            "name": "mix",
            "bands": [{"name": "ndvi", "dtype": "float32", "resampling": "bilinear"}, {"name": "class", "dtype": "uint8", "nodata": 255}],
            "grid": {"resolution": 10}
        }))
        .await
        .unwrap();
    // A raster exactly on tile x0010_y0020 of the sinusoidal grid: pixels
    // must come back unchanged (bilinear at pixel centres is the identity).
    let grid = GridSpec::default_at(10.0).unwrap();
    let tile = pixelquery::grid::TileId::new(10, 20);
    let gt = grid.tile_geotransform(tile);
    let n = 256usize;
    let ndvi: Vec<f32> = (0..n * n).map(|i| (i % 1000) as f32 / 1000.0).collect();
    let class: Vec<u8> = (0..n * n).map(|i| (i % 7) as u8).collect();
    let valid: Vec<bool> = (0..n * n).map(|i| i % 10 != 0).collect();
    let bands: Vec<(String, ArrayRef)> =
        vec![("ndvi".into(), Arc::new(Float32Array::from(ndvi.clone()))), ("class".into(), Arc::new(UInt8Array::from(class.clone())))];
    let batches = pixelquery_client::raster_batches(bands, Some(BooleanArray::from(valid.clone())), n).unwrap();
    let req = serde_json::json!({
        "collection": "mix", "scene_id": "aligned", "acquired_at": "2024-06-15",
        "crs": DEFAULT_GRID_CRS, "geotransform": gt, "width": n, "height": n,
        "bands": [{"name": "ndvi", "dtype": "float32"}, {"name": "class", "dtype": "uint8", "nodata": 255}],
        "resampling": {"class": "nearest"}
    });
    let put = client.ingest_raw(serde_json::to_vec(&req).unwrap().into(), batches).await.unwrap();
    assert_eq!(put.tiles, vec![tile.to_string()]);
    assert_eq!(put.observations, 2);
    for band in ["ndvi", "class"] {
        let q = proto::Query { collection: "mix".into(), tiles: vec![tile.to_string()], bands: vec![band.into()], ..Default::default() };
        let b = &client.query(&q).await.unwrap()[0];
        let mask = b.column_by_name("mask").unwrap().as_list::<i32>().value(0);
        let mask: Vec<bool> = mask.as_boolean().iter().map(|v| v.unwrap()).collect();
        assert_eq!(mask, valid, "{band}: the valid column becomes the mask");
        let px = b.column_by_name("pixels").unwrap().as_list::<i32>().value(0);
        for k in (0..n * n).filter(|k| valid[*k]) {
            match band {
                "ndvi" => assert!((px.as_primitive::<Float32Type>().value(k) - ndvi[k]).abs() < 1e-6, "ndvi pixel {k}"),
                _ => assert_eq!(px.as_primitive::<UInt8Type>().value(k), class[k], "class pixel {k}"),
            }
        }
    }
    // Two bands of different types cannot share one stream.
    let err = client.do_get(proto::Query { collection: "mix".into(), ..Default::default() }.encode_to_vec().into()).await.unwrap_err();
    assert_eq!(err.status().unwrap().code(), tonic::Code::InvalidArgument);
    // A point series puts both bands side by side.
    let gx = gt[0] + 100.5 * gt[1];
    let gy = gt[3] + 3.5 * gt[5];
    let p = proto::Query { collection: "mix".into(), point: vec![gx, gy], bbox_crs: DEFAULT_GRID_CRS.into(), ..Default::default() };
    let b = &client.point(&p).await.unwrap()[0];
    let k = 3 * n + 100;
    assert_eq!(b.num_rows(), 1);
    assert_eq!(b.column_by_name("class").unwrap().as_primitive::<UInt8Type>().value(0), class[k]);
    assert_eq!(b.column_by_name("ndvi_valid").unwrap().as_boolean().value(0), valid[k]);

    // Profiles.
    let p = client.create_collection(&serde_json::json!({"name": "l8", "profile": "landsat8_l2"})).await.unwrap();
    assert_eq!(p["grid"]["tile_px"], 86);
    assert!(p["bands"].as_array().unwrap().iter().any(|b| b["name"] == "qa_pixel" && b["resampling"] == "nearest"));
    assert_eq!((p["qa"]["band"].as_str(), p["qa"]["kind"].as_str()), (Some("qa_pixel"), Some("bits")));
    assert_eq!(p["qa"]["cloud"], serde_json::json!([1, 2, 3, 4]));
    assert_eq!(p["bands"][3]["scale"], 2.75e-5);
    assert_eq!(p["bands"][3]["offset"], -0.2);
    let utm = client
        .create_collection(&serde_json::json!({"name": "utm", "profile": "sentinel2_l2a", "grid": {"crs": "EPSG:32652", "tile_span": 10240, "resolution": 20}}))
        .await
        .unwrap();
    assert_eq!(utm["grid"]["tile_px"], 512);
    assert_eq!(utm["qa"]["band"], "scl");
    assert_eq!(utm["qa"]["kind"], "classes");
    assert_eq!(utm["bands"][3]["name"], "red");
    assert_eq!(utm["bands"][3]["offset"], -0.1);
    assert!(utm["bands"][3]["offset_note"].as_str().unwrap().contains("04.00"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_data_type_round_trips() {
    use arrow_array::{Float64Array, Int16Array, Int32Array, UInt16Array, UInt32Array};
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let dtypes = ["uint8", "uint16", "int16", "uint32", "int32", "float32", "float64"];
    let bands: Vec<serde_json::Value> = dtypes.iter().map(|d| serde_json::json!({"name": format!("b_{d}"), "dtype": d})).collect();
    client.create_collection(&serde_json::json!({"name": "types", "bands": bands, "grid": {"resolution": 10}})).await.unwrap();
    let grid = GridSpec::default_at(10.0).unwrap();
    let tile = pixelquery::grid::TileId::new(-3, 5);
    let gt = grid.tile_geotransform(tile);
    let n = 256usize;
    let v = |i: usize| (i % 100) as i64;
    let columns: Vec<(String, ArrayRef)> = vec![
        ("b_uint8".into(), Arc::new(UInt8Array::from_iter_values((0..n * n).map(|i| v(i) as u8)))),
        ("b_uint16".into(), Arc::new(UInt16Array::from_iter_values((0..n * n).map(|i| v(i) as u16 * 600)))),
        ("b_int16".into(), Arc::new(Int16Array::from_iter_values((0..n * n).map(|i| -(v(i) as i16) * 300)))),
        ("b_uint32".into(), Arc::new(UInt32Array::from_iter_values((0..n * n).map(|i| v(i) as u32 * 40_000_000)))),
        ("b_int32".into(), Arc::new(Int32Array::from_iter_values((0..n * n).map(|i| -(v(i) as i32) * 20_000_000)))),
        ("b_float32".into(), Arc::new(Float32Array::from_iter_values((0..n * n).map(|i| v(i) as f32 * 0.25)))),
        ("b_float64".into(), Arc::new(Float64Array::from_iter_values((0..n * n).map(|i| v(i) as f64 * 1e300)))),
    ];
    let expected = columns.clone();
    let req = serde_json::json!({
        "collection": "types", "scene_id": "t", "acquired_at": 0, "crs": DEFAULT_GRID_CRS,
        "geotransform": gt, "width": n, "height": n, "bands": bands,
    });
    let put = client.ingest_raw(serde_json::to_vec(&req).unwrap().into(), pixelquery_client::raster_batches(columns, None, n).unwrap()).await.unwrap();
    assert_eq!(put.observations, 7);
    assert_eq!(put.tiles, vec!["x-0003_y0005"]);
    for (name, values) in expected {
        let q = proto::Query { collection: "types".into(), tiles: vec![tile.to_string()], bands: vec![name.clone()], ..Default::default() };
        let b = &client.query(&q).await.unwrap()[0];
        let px = b.column_by_name("pixels").unwrap().as_list::<i32>().value(0);
        assert_eq!(px.data_type(), values.data_type(), "{name}");
        assert_eq!(&px, &values, "{name}: an aligned raster is copied exactly");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_file_cut_behind_the_servers_back_is_an_error_not_a_crash() {
    // DoGet serves chunk bytes from a mapping; reading a mapping past the
    // end of its file would kill the process (SIGBUS).
    let server = TestServer::start().await;
    let mut client = server.client().await;
    create_red_collection(&mut client, "s2").await;
    client.ingest(&ingest_request("s2", "a", JUN, utm_geotransform(64), 64, "nearest"), red_batches(raster(64, 0), 64)).await.unwrap();
    // Read once, so the server holds the file mapped when it is cut.
    let all = proto::Query { collection: "s2".into(), ..Default::default() };
    let point = proto::Query { collection: "s2".into(), point: vec![127.05, 37.55], ..Default::default() };
    client.query(&all).await.unwrap();
    client.point(&point).await.unwrap();
    let chunks: Vec<_> = walk(&server.warehouse()).into_iter().filter(|p| p.to_string_lossy().ends_with(pixelquery::storage::paths::CHUNK_SUFFIX)).collect();
    assert!(!chunks.is_empty());
    for chunk in chunks {
        let len = std::fs::metadata(&chunk).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&chunk).unwrap().set_len(len / 2).unwrap();
    }
    let err = client.query(&all).await.unwrap_err();
    assert!(err.to_string().contains("committed"), "{err}");
    let err = client.point(&point).await.unwrap_err();
    assert!(err.to_string().contains("committed"), "{err}");
    // The server still answers.
    client.describe("s2").await.unwrap();
    server.shutdown().await;
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir).unwrap().flatten().flat_map(|e| if e.path().is_dir() { walk(&e.path()) } else { vec![e.path()] }).collect()
}

/// Sum of the body bytes of the FlightData messages a raw DoGet of `ticket` streams.
async fn wire_body_bytes(uri: &str, ticket: Vec<u8>) -> usize {
    let channel = tonic::transport::Endpoint::from_shared(uri.to_string()).unwrap().connect().await.unwrap();
    let mut raw = arrow_flight::flight_service_client::FlightServiceClient::new(channel);
    let stream = raw.do_get(arrow_flight::Ticket::new(ticket)).await.unwrap().into_inner();
    let messages: Vec<arrow_flight::FlightData> = stream.try_collect().await.unwrap();
    messages.iter().map(|m| m.data_body.len()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_collections_store_less_and_serve_the_same_rows() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let bands = serde_json::json!([{"name": "red", "dtype": "uint16", "nodata": 0}]);
    for (name, compression) in [
        ("plain", serde_json::json!({})),
        ("lz", serde_json::json!({"compression": "lz4"})),
        ("zs", serde_json::json!({"compression": "zstd", "compression_level": 9})),
    ] {
        let mut body = serde_json::json!({"name": name, "bands": bands, "grid": {"resolution": 10}});
        body.as_object_mut().unwrap().extend(compression.as_object().unwrap().clone());
        let made = client.create_collection(&body).await.unwrap();
        assert_eq!(
            made["compression"],
            if name == "plain" {
                "none"
            } else if name == "lz" {
                "lz4"
            } else {
                "zstd"
            }
        );
    }
    // Smooth values (as imagery is) with a nodata hole: compressible.
    let size = 300;
    let smooth: Vec<u16> =
        (0..size * size).map(|i| if (100..140).contains(&(i / size)) { 0 } else { ((i / size) / 4 * 3 + (i % size) / 4 + 1) as u16 }).collect();
    let gt = utm_geotransform(size);
    for name in ["plain", "lz", "zs"] {
        for (i, t) in [JUN, JUL].into_iter().enumerate() {
            client
                .ingest(&ingest_request(name, &format!("s{i}"), t, gt, size, "nearest"), red_batches(smooth.iter().map(|v| v + i as u16).collect(), size))
                .await
                .unwrap();
        }
    }
    let columns = |batches: Vec<arrow_array::RecordBatch>| -> Vec<Vec<ArrayRef>> { batches.iter().map(|b| b.columns()[2..].to_vec()).collect() };
    let all = |name: &str| proto::Query { collection: name.into(), ..Default::default() };
    let plain = columns(client.query(&all("plain")).await.unwrap());
    for name in ["lz", "zs"] {
        // The same rows, through the stored-bytes path, a decode, a point and a compaction.
        assert_eq!(columns(client.query(&all(name)).await.unwrap()), plain, "{name}");
        let decompressed = proto::Query { decompress: true, ..all(name) };
        assert_eq!(columns(client.query(&decompressed).await.unwrap()), plain, "{name} decompressed");
        let point = |c: &str| proto::Query { collection: c.into(), point: vec![127.05, 37.55], ..Default::default() };
        let point_columns = |b: Vec<arrow_array::RecordBatch>| -> Vec<Vec<ArrayRef>> { b.iter().map(|b| b.columns().to_vec()).collect() };
        assert_eq!(point_columns(client.point(&point(name)).await.unwrap()), point_columns(client.point(&point("plain")).await.unwrap()), "{name} point");
        // Stored smaller; sent as stored unless asked to decompress.
        let chunk_bytes = |c: &str| -> u64 {
            let files = walk(&server.warehouse().join(c));
            files.iter().filter(|p| p.to_string_lossy().ends_with(pixelquery::storage::paths::CHUNK_SUFFIX)).map(|p| std::fs::metadata(p).unwrap().len()).sum()
        };
        let (stored, plain_stored) = (chunk_bytes(name), chunk_bytes("plain"));
        assert!(stored * 2 < plain_stored, "{name}: {stored} bytes stored against {plain_stored}");
        let ticket = |c: &str, decompress: bool| format!(r#"{{"collection": "{c}", "decompress": {decompress}}}"#).into_bytes();
        let (as_stored, unpacked, reference) = (
            wire_body_bytes(&server.uri, ticket(name, false)).await,
            wire_body_bytes(&server.uri, ticket(name, true)).await,
            wire_body_bytes(&server.uri, ticket("plain", false)).await,
        );
        assert!(as_stored * 2 < reference, "{name}: {as_stored} bytes sent against {reference}");
        assert_eq!(unpacked, reference, "{name}: decompressed batches are the plain ones");
        client.action("compact", &serde_json::json!({"collection": name})).await.unwrap();
        assert_eq!(columns(client.query(&all(name)).await.unwrap()), plain, "{name} compacted");
    }
    for (body, field) in [
        (serde_json::json!({"name": "bad", "bands": bands, "grid": {"resolution": 10}, "compression": "gzip"}), "compression"),
        (serde_json::json!({"name": "bad", "bands": bands, "grid": {"resolution": 10}, "compression": "lz4", "compression_level": 3}), "compression_level"),
        (serde_json::json!({"name": "bad", "bands": bands, "grid": {"resolution": 10}, "compression": "zstd", "compression_level": 40}), "compression_level"),
    ] {
        let (code, message) = code_of(client.create_collection(&body).await);
        assert_eq!(code, tonic::Code::InvalidArgument, "{message}");
        assert!(message.contains(field), "{message}");
    }
    assert!(!server.warehouse().join("bad").exists());
    let (code, message) = code_of(client.do_get(br#"{"collection": "zs", "decompress": "yes"}"#.to_vec().into()).await);
    assert_eq!(code, tonic::Code::InvalidArgument, "{message}");
    assert!(message.contains("decompress") && message.contains("expected a boolean"), "{message}");
    server.shutdown().await;
}
