//! A DoPut is warped while it streams: tiles whose source rows have all
//! arrived are warped before the last row comes, nothing is visible until
//! the stream ends whole, and the result equals the same raster sent at
//! once.

mod common;

use std::time::{Duration, Instant};

use arrow_array::cast::AsArray;
use arrow_array::types::UInt16Type;
use arrow_array::RecordBatch;
use common::*;
use pixelquery_client::{proto, Client};

const SIZE: usize = 1024;
const T: i64 = 1718416984000;

/// A put of `values` (in strips of 32 rows) with every strip sent but the
/// last, which it returns with the sender that holds the put open.
async fn put_all_but_last(
    client: &Client,
    req: proto::IngestRequest,
    values: &[u16],
) -> (tokio::sync::mpsc::Sender<RecordBatch>, tokio::task::JoinHandle<pixelquery_client::Result<pixelquery_client::PutSummary>>, RecordBatch) {
    let mut strips: Vec<RecordBatch> = values.chunks(32 * SIZE).flat_map(|c| red_batches(c.to_vec(), SIZE)).collect();
    let last = strips.pop().unwrap();
    let (tx, put) = held_ingest(client, req);
    for b in strips {
        tx.send(b).await.unwrap();
    }
    (tx, put, last)
}

/// Each tile's pixels and mask in `collection` (its one observation at `at`, or its only one).
async fn tiles(client: &mut Client, collection: &str, tiles: &[String], at: Option<i64>) -> Vec<(Vec<u16>, Vec<bool>)> {
    let mut out = Vec::new();
    for tile in tiles {
        let q = proto::Query { collection: collection.into(), tiles: vec![tile.clone()], start_ms: at, end_ms: at.map(|t| t + 1), ..Default::default() };
        let batches = client.query(&q).await.unwrap();
        assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 1, "{collection} {tile}");
        let b = &batches[0];
        let pixels = b.column_by_name("pixels").unwrap().as_list::<i32>().value(0).as_primitive::<UInt16Type>().values().to_vec();
        let mask = b.column_by_name("mask").unwrap().as_list::<i32>().value(0).as_boolean().iter().map(|v| v.unwrap()).collect();
        out.push((pixels, mask));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiles_are_warped_while_rows_stream_and_equal_a_raster_sent_at_once() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    create_red_collection(&mut client, "streamed").await;
    create_red_collection(&mut client, "at_once").await;
    let gt = utm_geotransform(SIZE);
    let values = raster(SIZE, 0);
    let (tx, put, last) = put_all_but_last(&client, ingest_request("streamed", "s", T, gt, SIZE, "bilinear"), &values).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let warped = loop {
        let health = client.health().await.unwrap();
        let n = health["ingest"]["tiles_warped_while_streaming"].as_u64().expect("health reports ingest counters");
        if n > 0 {
            break n;
        }
        assert!(Instant::now() < deadline, "no tile was warped before the last row: {health}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let listed = client.list_collections().await.unwrap();
    let streamed_entry = listed.as_array().unwrap().iter().find(|c| c["name"] == "streamed").unwrap().clone();
    assert_eq!(streamed_entry["scenes"], 0, "nothing is visible before the stream ends: {streamed_entry}");
    tx.send(last).await.unwrap();
    drop(tx);
    let streamed = put.await.unwrap().expect("the streamed put commits");
    assert!((warped as usize) < streamed.tiles.len(), "tiles needing the last rows wait for them");

    let at_once = client.ingest(&ingest_request("at_once", "s", T, gt, SIZE, "bilinear"), red_batches(values, SIZE)).await.unwrap();
    assert_eq!(streamed.tiles, at_once.tiles);
    assert_eq!(streamed.observations, at_once.observations);
    let a = tiles(&mut client, "streamed", &streamed.tiles, None).await;
    let b = tiles(&mut client, "at_once", &at_once.tiles, None).await;
    for (k, tile) in streamed.tiles.iter().enumerate() {
        assert!(a[k] == b[k], "tile {tile} differs between the streamed and the at-once put");
    }
    assert!(a.iter().any(|(_, m)| m.iter().any(|v| !v)) && a.iter().any(|(_, m)| m.iter().any(|v| *v)));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_past_the_declared_height_fail_even_after_every_tile_was_warped() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    create_red_collection(&mut client, "s2").await;
    let before = snapshot(&server.warehouse());
    let mut batches = red_batches(raster(256, 0), 256);
    batches.push(batches[0].slice(0, 256));
    let (code, msg) = code_of(client.ingest(&ingest_request("s2", "s", T, utm_geotransform(256), 256, "bilinear"), batches).await);
    assert_eq!(code, tonic::Code::InvalidArgument, "{msg}");
    assert!(msg.contains("more values than width x height"), "{msg}");
    assert_eq!(snapshot(&server.warehouse()), before, "a rejected put writes nothing");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_scenes_of_more_than_256_tiles_into_one_collection_both_commit() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    create_red_collection(&mut client, "big").await;
    // 25 x 25 tiles on the grid's lattice (copied), written side by side:
    // each takes the collection's writer after its first 256 warped tiles.
    let size = 25 * 256;
    let values: Vec<u16> = (0..size * size).map(|i| (i % 977) as u16 + 1).collect();
    let batches = red_batches(values, size);
    let puts: Vec<_> = (0..2)
        .map(|k| {
            let mut c = client.try_clone();
            let mut req = ingest_request("big", &format!("s{k}"), T + k, [2560.0 * 3.0, 10.0, 0.0, 2560.0 * 40.0, 0.0, -10.0], size, "nearest");
            req.crs = pixelquery::grid::DEFAULT_GRID_CRS.into();
            let batches = batches.clone();
            tokio::spawn(async move { c.ingest(&req, batches).await })
        })
        .collect();
    for put in puts {
        let summary = tokio::time::timeout(Duration::from_secs(120), put)
            .await
            .expect("both puts finish")
            .unwrap()
            .expect("commits (a bounded result channel deadlocked here)");
        assert_eq!(summary.observations, 25 * 25);
    }
    let listed = client.list_collections().await.unwrap();
    assert_eq!(listed[0]["scenes"], 2, "{listed}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scene_writing_while_it_streams_lets_another_writer_go_first() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    create_red_collection(&mut client, "shared").await;
    create_red_collection(&mut client, "alone").await;
    let gt = utm_geotransform(SIZE);
    let values = raster(SIZE, 0);
    let (tx, first, last) = put_all_but_last(&client, ingest_request("shared", "a", T, gt, SIZE, "bilinear"), &values).await;
    // The writer was free: the first scene's tiles are appended while its
    // last rows are held back (its chunk directories appear).
    let tiles_dir = server.warehouse().join("shared").join("tiles");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !tiles_dir.is_dir() {
        assert!(Instant::now() < deadline, "no tile was appended while the stream was held");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Another writer of the collection goes first instead of waiting for the stalled stream.
    let other = ingest_request("shared", "b", T + 1, gt, SIZE, "bilinear");
    let second = tokio::time::timeout(Duration::from_secs(60), client.ingest(&other, red_batches(raster(SIZE, 7), SIZE)))
        .await
        .expect("the second writer is not held up by a stalled stream")
        .unwrap();
    let health = client.health().await.unwrap();
    assert_eq!(health["ingest"]["early_writers_yielded"], 1, "{health}");
    tx.send(last).await.unwrap();
    drop(tx);
    let first = first.await.unwrap().expect("the first scene commits after all");
    let listed = client.list_collections().await.unwrap();
    let shared = listed.as_array().unwrap().iter().find(|c| c["name"] == "shared").unwrap().clone();
    assert_eq!(shared["scenes"], 2, "{shared}");
    // Each scene whole: the same pixels as each raster put on its own.
    let alone = client.ingest(&ingest_request("alone", "a", T, gt, SIZE, "bilinear"), red_batches(values, SIZE)).await.unwrap();
    let alone_b = client.ingest(&ingest_request("alone", "b", T + 1, gt, SIZE, "bilinear"), red_batches(raster(SIZE, 7), SIZE)).await.unwrap();
    assert_eq!((&first.tiles, &second.tiles), (&alone.tiles, &alone_b.tiles));
    for (scene, at) in [(&first, T), (&second, T + 1)] {
        let got = tiles(&mut client, "shared", &scene.tiles, Some(at)).await;
        let want = tiles(&mut client, "alone", &scene.tiles, Some(at)).await;
        assert!(got == want, "scene at {at} differs from the same raster put alone");
    }
    server.shutdown().await;
}
