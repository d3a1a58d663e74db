//! Storage guarantees through the server: deletes (scene, tile, time range)
//! are durable and atomic, compaction changes no row, recovery cuts what was
//! never committed, and concurrent writers and readers lose nothing.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::RecordBatch;
use common::*;
use pixelquery::grid::GridSpec;
use pixelquery_client::{proto, Client};

const DAY: i64 = 86_400_000;
const T0: i64 = 1717200000000; // 2024-06-01

/// A small raster exactly on the default grid at a pixel offset from tile
/// x0100_y0200, so scenes overlap in some tiles and not in others.
fn aligned_request(scene: &str, time_ms: i64, col_off: usize, row_off: usize, size: usize) -> proto::IngestRequest {
    let grid = GridSpec::default_at(10.0).unwrap();
    let gt = grid.tile_geotransform(pixelquery::grid::TileId::new(100, 200));
    let gt = [gt[0] + col_off as f64 * 10.0, 10.0, 0.0, gt[3] - row_off as f64 * 10.0, 0.0, -10.0];
    proto::IngestRequest { crs: pixelquery::grid::DEFAULT_GRID_CRS.into(), ..ingest_request("s2", scene, time_ms, gt, size, "nearest") }
}

/// Every row as (tile, time, scene, pixels, mask), sorted, for comparisons.
type Row = (String, i64, String, Vec<u16>, Vec<bool>);

fn rows(batches: &[RecordBatch]) -> Vec<Row> {
    let mut out = Vec::new();
    for b in batches {
        let tiles = b.column(0).as_string::<i32>();
        let times = b.column(2).as_primitive::<arrow_array::types::TimestampMillisecondType>();
        let scenes = b.column(3).as_string::<i32>();
        let px = b.column(4).as_list::<i32>();
        let mk = b.column(5).as_list::<i32>();
        for r in 0..b.num_rows() {
            out.push((
                tiles.value(r).to_string(),
                times.value(r),
                scenes.value(r).to_string(),
                px.value(r).as_primitive::<arrow_array::types::UInt16Type>().values().to_vec(),
                mk.value(r).as_boolean().iter().map(|v| v.unwrap()).collect(),
            ));
        }
    }
    out.sort_by(|a, b| (&a.0, a.1, &a.2).cmp(&(&b.0, b.1, &b.2)));
    out
}

async fn all_rows(client: &mut Client) -> Vec<Row> {
    rows(&client.query(&proto::Query { collection: "s2".into(), ..Default::default() }).await.unwrap())
}

async fn scene_rows(client: &mut Client) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in all_rows(client).await {
        *m.entry(r.2).or_insert(0) += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_are_durable_and_scenes_can_come_back() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    create_red_collection(&mut client, "s2").await;
    // Three scenes over tiles x0100..x0101 (300 px from offset 100).
    for (i, t) in [T0, T0 + DAY, T0 + 40 * DAY].into_iter().enumerate() {
        let put = client.ingest(&aligned_request(&format!("s{i}"), t, 100, 100, 300), red_batches(raster(300, i as u16), 300)).await.unwrap();
        assert_eq!(put.observations, 4, "{:?}", put.tiles);
    }
    assert_eq!(scene_rows(&mut client).await, BTreeMap::from([("s0".into(), 4), ("s1".into(), 4), ("s2".into(), 4)]));

    // Delete one scene.
    let d = client.action("delete", &serde_json::json!({"collection": "s2", "scene_id": "s1"})).await.unwrap();
    assert_eq!(d["rows_removed"], 4);
    assert_eq!(d["scenes_removed"], serde_json::json!(["s1"]));
    assert_eq!(scene_rows(&mut client).await, BTreeMap::from([("s0".into(), 4), ("s2".into(), 4)]));
    // Unknown scene: NotFound, nothing changes.
    let err = client.action("delete", &serde_json::json!({"collection": "s2", "scene_id": "s1"})).await.unwrap_err();
    assert_eq!(err.status().unwrap().code(), tonic::Code::NotFound);
    // Delete one tile of every scene.
    let d = client.action("delete", &serde_json::json!({"collection": "s2", "tile": "x0100_y0200"})).await.unwrap();
    assert_eq!(d["rows_removed"], 2);
    // Delete a time range: July holds s2.
    let d = client.action("delete", &serde_json::json!({"collection": "s2", "start": "2024-07-01", "end": "2024-08-01"})).await.unwrap();
    assert_eq!(d["rows_removed"], 3);
    assert_eq!(d["scenes_removed"], serde_json::json!(["s2"]));
    let after: BTreeMap<String, usize> = scene_rows(&mut client).await;
    assert_eq!(after, BTreeMap::from([("s0".into(), 3)]));

    // A deleted scene can be ingested again, once.
    let again = client.ingest(&aligned_request("s1", T0 + DAY, 100, 100, 300), red_batches(raster(300, 1), 300)).await.unwrap();
    assert!(!again.duplicate);
    assert!(client.ingest(&aligned_request("s1", T0 + DAY, 100, 100, 300), red_batches(raster(300, 1), 300)).await.unwrap().duplicate);
    let before_restart = all_rows(&mut client).await;

    // Everything survives a restart; superseded chunk generations are gone.
    let dir = server.shutdown().await;
    let server = TestServer::start_in(dir).await;
    let mut client = server.client().await;
    assert_eq!(all_rows(&mut client).await, before_restart);
    let files = snapshot(&server.warehouse()).into_keys().filter(|p| p.extension().is_some_and(|e| e == "arrow")).count();
    let info = client.flight_info(&proto::Query { collection: "s2".into(), ..Default::default() }).await.unwrap();
    assert_eq!(files, info.endpoint.len(), "one file per chunk");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_changes_no_row_and_does_not_block_writers() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    create_red_collection(&mut client, "s2").await;
    for i in 0..12i64 {
        // Out of time order on purpose.
        let t = T0 + ((i * 7) % 12) * DAY;
        client.ingest(&aligned_request(&format!("a{i}"), t, 10, 10, 100), red_batches(raster(100, i as u16), 100)).await.unwrap();
    }
    let before = all_rows(&mut client).await;
    let d = client.action("describe", &serde_json::json!({"collection": "s2", "tile": "x0100_y0200"})).await.unwrap();
    assert_eq!(d["chunks"][0]["batches"], 12);
    // Writers keep going while compaction runs.
    let uri = server.uri.clone();
    let writer = tokio::spawn(async move {
        let mut c = Client::connect(&uri).await.unwrap();
        for i in 0..6i64 {
            c.ingest(&aligned_request(&format!("b{i}"), T0 + (20 + i) * DAY, 10, 10, 100), red_batches(raster(100, 50 + i as u16), 100)).await.unwrap();
        }
    });
    let c = client.action("compact", &serde_json::json!({"collection": "s2"})).await.unwrap();
    assert_eq!(c["chunks_rewritten"], 1);
    writer.await.unwrap();
    let after = all_rows(&mut client).await;
    assert_eq!(after.len(), before.len() + 6);
    let kept: Vec<Row> = after.iter().filter(|r| r.2.starts_with('a')).cloned().collect();
    assert_eq!(kept, before, "compaction changed no row");
    client.action("compact", &serde_json::json!({"collection": "s2"})).await.unwrap();
    let d = client.action("describe", &serde_json::json!({"collection": "s2", "tile": "x0100_y0200"})).await.unwrap();
    assert_eq!(d["chunks"][0]["batches"], 1);
    assert_eq!(d["chunks"][0]["observations"], 18);
    assert!(d["chunks"][0]["mean"].as_f64().unwrap() > 0.0);
    assert_eq!(all_rows(&mut client).await, after);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_cuts_uncommitted_bytes_and_orphan_files() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    create_red_collection(&mut client, "s2").await;
    client.ingest(&aligned_request("s0", T0, 0, 0, 64), red_batches(raster(64, 0), 64)).await.unwrap();
    let before = all_rows(&mut client).await;
    let dir = server.shutdown().await;
    let wh = dir.path().join("warehouse");
    let chunk = wh.join("s2/tiles/x0100_y0200/2024-06/red.arrow");
    let committed = std::fs::metadata(&chunk).unwrap().len();
    // A write the server died in: bytes past the committed length, a chunk
    // generation no commit names, a torn catalog record.
    std::fs::OpenOptions::new().append(true).open(&chunk).unwrap().write_all(&[0xff; 100]).unwrap();
    let orphan = wh.join("s2/tiles/x0100_y0200/2024-06/red.3.arrow");
    std::fs::write(&orphan, b"half a rewrite").unwrap();
    let new_tile = wh.join("s2/tiles/x0999_y0999/2024-06");
    std::fs::create_dir_all(&new_tile).unwrap();
    std::fs::write(new_tile.join("red.arrow"), b"never committed").unwrap();
    std::fs::OpenOptions::new().append(true).open(wh.join("s2/catalog.log")).unwrap().write_all(&[7, 0, 0, 0, 1, 2]).unwrap();

    let server = TestServer::start_in(dir).await;
    let mut client = server.client().await;
    assert_eq!(all_rows(&mut client).await, before);
    assert_eq!(std::fs::metadata(&chunk).unwrap().len(), committed);
    assert!(!orphan.exists() && !new_tile.join("red.arrow").exists());
    // And it keeps working.
    client.ingest(&aligned_request("s1", T0 + DAY, 0, 0, 64), red_batches(raster(64, 1), 64)).await.unwrap();
    assert_eq!(all_rows(&mut client).await.len(), 2);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_writers_and_four_readers() {
    const WRITERS: usize = 8;
    const SCENES: usize = 25;
    let server = TestServer::start().await;
    let mut client = server.client().await;
    create_red_collection(&mut client, "s2").await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for r in 0..4 {
        let (uri, stop) = (server.uri.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut c = Client::connect(&uri).await.unwrap();
            let mut reads = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let q = if r % 2 == 0 {
                    proto::Query { collection: "s2".into(), ..Default::default() }
                } else {
                    proto::Query {
                        collection: "s2".into(),
                        point: vec![100.0 * 2560.0 + 1280.0, 201.0 * 2560.0 - 50.0],
                        bbox_crs: pixelquery::grid::DEFAULT_GRID_CRS.into(),
                        ..Default::default()
                    }
                };
                let batches = if r % 2 == 0 { c.query(&q).await.expect("reader query") } else { c.point(&q).await.expect("reader point") };
                for b in &batches {
                    if let Some(px) = b.column_by_name("pixels") {
                        let px = px.as_list::<i32>();
                        for i in 0..b.num_rows() {
                            assert_eq!(px.value(i).len(), 256 * 256, "a reader saw a partial observation");
                        }
                    }
                }
                reads += 1;
            }
            reads
        }));
    }
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let uri = server.uri.clone();
        writers.push(tokio::spawn(async move {
            let mut c = Client::connect(&uri).await.unwrap();
            for s in 0..SCENES {
                // Overlapping rasters: every scene touches tile x0100_y0200,
                // some also the tiles east and south of it.
                let off = (w * 37 + s * 11) % 200;
                let req = aligned_request(&format!("w{w}-s{s}"), T0 + (s as i64) * DAY + w as i64, off, off / 2, 128);
                let put = c.ingest(&req, red_batches(raster(128, (w * 100 + s) as u16), 128)).await.expect("writer ingest");
                assert!(!put.duplicate);
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let mut total_reads = 0;
    for r in readers {
        total_reads += r.await.unwrap();
    }
    assert!(total_reads > 0);
    // Exact counts: every scene present exactly once in each tile it touched.
    let counts = scene_rows(&mut client).await;
    assert_eq!(counts.len(), WRITERS * SCENES);
    for w in 0..WRITERS {
        for s in 0..SCENES {
            let off = (w * 37 + s * 11) % 200;
            let cols = if off + 128 > 256 { 2 } else { 1 };
            let rows = if off / 2 + 128 > 256 { 2 } else { 1 };
            assert_eq!(counts[&format!("w{w}-s{s}")], cols * rows, "scene w{w}-s{s}");
        }
    }
    eprintln!("{} scenes by {WRITERS} writers, {total_reads} reads by 4 readers, no errors", WRITERS * SCENES);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_snapshot_follows_commits_in_the_background_and_chunks_stay_as_appended() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    create_red_collection(&mut client, "s2").await;
    let snapshot_path = server.warehouse().join("s2/catalog.parquet");
    let n = pixelquery::storage::SNAPSHOT_EVERY as i64 + 3;
    // The snapshot of the empty collection; a commit's snapshot differs.
    // (Comparing modification times failed once puts got fast: the file
    // system stamps them with a clock that ticks every few milliseconds.)
    let empty = std::fs::read(&snapshot_path).unwrap();
    // Out of time order on purpose: reads sort, nothing is rewritten.
    for i in 0..n {
        client.ingest(&aligned_request(&format!("a{i}"), T0 + (n - i) * 3_600_000, 0, 0, 32), red_batches(raster(32, i as u16), 32)).await.unwrap();
    }
    let rows = all_rows(&mut client).await;
    assert_eq!(rows.len() as i64, n);
    assert!(rows.windows(2).all(|w| w[0] <= w[1]), "rows come back in time order");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if std::fs::read(&snapshot_path).is_ok_and(|b| b != empty) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no snapshot written after {n} commits");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let d = client.action("describe", &serde_json::json!({"collection": "s2", "tile": "x0100_y0200"})).await.unwrap();
    assert_eq!(d["chunks"][0]["batches"].as_i64().unwrap(), n, "no automatic rewrite");
    server.shutdown().await;
}

/// Collection `s2` with one uint16 band `red` on the 10 m grid, for tests
/// that open a warehouse directly.
fn red_collection_meta() -> pixelquery::collection::Collection {
    pixelquery::wire::build_collection(proto::CreateCollection {
        name: "s2".into(),
        bands: vec![proto::BandSpec { name: "red".into(), dtype: "uint16".into(), nodata: Some(0.0), ..Default::default() }],
        grid: Some(proto::GridSpec { resolution: 10.0, ..Default::default() }),
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn a_reader_holding_a_deleted_chunk_cannot_remove_its_successor() {
    use arrow_array::{BooleanArray, UInt16Array};
    use pixelquery::grid::TileId;
    use pixelquery::storage::{Observation, Warehouse};

    let dir = tempfile::tempdir().unwrap();
    let meta = red_collection_meta();
    let obs = |v: u16| Observation {
        tile: TileId::new(1, 1),
        band: "red".into(),
        pixels: std::sync::Arc::new(UInt16Array::from(vec![v; 256 * 256])),
        mask: BooleanArray::from(vec![true; 256 * 256]),
    };
    let scenes_of = |store: &pixelquery::storage::CollectionStore| -> Vec<String> {
        store
            .chunks(|_| true)
            .iter()
            .flat_map(|(_, e)| store.read_chunk(e).unwrap())
            .flat_map(|b| b.column(3).as_string::<i32>().iter().map(|s| s.unwrap().to_string()).collect::<Vec<_>>())
            .collect()
    };
    {
        let wh = Warehouse::open(dir.path()).unwrap();
        let store = wh.create_collection(meta).unwrap();
        store.append_scene("a", T0, vec![obs(1)]).unwrap();
        // A reader plans with the chunk, then the chunk is deleted whole and
        // a new scene creates it again before the reader lets go.
        let held = store.chunks(|_| true);
        let d = store.delete(|_| true, |_, _, s| s == "a", &[]).unwrap();
        assert_eq!(d.chunks_removed, 1);
        store.append_scene("b", T0, vec![obs(2)]).unwrap();
        drop(held);
        assert_eq!(scenes_of(&store), vec!["b"]);
    }
    // And after a restart.
    let wh = Warehouse::open(dir.path()).unwrap();
    assert_eq!(scenes_of(&wh.collection("s2").unwrap()), vec!["b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_windows_read_the_same_rows_from_appended_and_compacted_chunks() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    create_red_collection(&mut client, "s2").await;
    const H: i64 = 3_600_000;
    for i in 0..40 {
        client.ingest(&aligned_request(&format!("w{i}"), T0 + i * H, 0, 0, 32), red_batches(raster(32, i as u16), 32)).await.unwrap();
    }
    let window = |start: i64, end: i64| proto::Query { collection: "s2".into(), start_ms: Some(start), end_ms: Some(end), ..Default::default() };
    let windows = [window(T0 + 10 * H, T0 + 30 * H), window(T0 + 3 * H, T0 + 4 * H), window(T0, T0 + 40 * H), window(T0 + 39 * H, T0 + 99 * H)];
    let mut appended = Vec::new();
    for w in &windows {
        appended.push(rows(&client.query(w).await.unwrap()));
    }
    assert_eq!(appended.iter().map(Vec::len).collect::<Vec<_>>(), vec![20, 1, 40, 1]);
    assert!(appended[0].iter().all(|r| r.1 >= T0 + 10 * H && r.1 < T0 + 30 * H));
    // Compaction writes messages of several rows; windows now cut through them.
    let out = client.action("compact", &serde_json::json!({"collection": "s2"})).await.unwrap();
    assert_eq!(out["chunks_rewritten"], 1);
    for (w, before) in windows.iter().zip(&appended) {
        let batches = client.query(w).await.unwrap();
        let times: Vec<i64> =
            batches.iter().flat_map(|b| b.column(2).as_primitive::<arrow_array::types::TimestampMillisecondType>().values().to_vec()).collect();
        assert!(times.is_sorted(), "rows come in time order");
        assert_eq!(&rows(&batches), before, "window {:?}..{:?}", w.start_ms, w.end_ms);
    }
    server.shutdown().await;
}

/// A scene of nine one-band observations on tiles (0..3, 0..3), pixels
/// `v + k` on the k-th tile.
fn nine_tiles(v: u16) -> Vec<pixelquery::storage::Observation> {
    use arrow_array::{BooleanArray, UInt16Array};
    (0..9)
        .map(|k| pixelquery::storage::Observation {
            tile: pixelquery::grid::TileId::new(k % 3, k / 3),
            band: "red".into(),
            pixels: Arc::new(UInt16Array::from(vec![v + k as u16; 256 * 256])),
            mask: BooleanArray::from(vec![true; 256 * 256]),
        })
        .collect()
}

/// Every stored observation's scene and first pixel, sorted.
fn first_pixels(store: &pixelquery::storage::CollectionStore) -> Vec<(String, u16)> {
    let mut v: Vec<(String, u16)> = store
        .chunks(|_| true)
        .iter()
        .flat_map(|(_, e)| store.read_chunk(e).unwrap())
        .flat_map(|b| {
            let scenes: Vec<String> = b.column(3).as_string::<i32>().iter().map(|s| s.unwrap().to_string()).collect();
            let px = b.column(4).as_list::<i32>().clone();
            scenes.into_iter().enumerate().map(move |(i, s)| (s, px.value(i).as_primitive::<arrow_array::types::UInt16Type>().value(0))).collect::<Vec<_>>()
        })
        .collect();
    v.sort();
    v
}

/// What [`first_pixels`] gives for scene `name` of [`nine_tiles`]`(v)`.
fn nine_firsts(name: &str, v: u16) -> Vec<(String, u16)> {
    (0..9u16).map(|k| (name.to_string(), v + k)).collect()
}

/// A scene of nine chunk files (new directories included) commits and
/// reads back, before and after a restart, with either way of making it
/// durable: one `syncfs` (`--sync fs`, the default for 8 files or more) or
/// an `fdatasync` per file and directory (`--sync per-file`).
#[test]
fn a_large_scene_commits_with_either_sync_mode() {
    use pixelquery::storage::{SyncMode, Warehouse, WriteOptions};

    for sync in [SyncMode::FileSystem, SyncMode::PerFile] {
        let dir = tempfile::tempdir().unwrap();
        let options = WriteOptions { sync, ..Default::default() };
        let want = [nine_firsts("a", 100), nine_firsts("b", 200)].concat();
        {
            let wh = Warehouse::open_with(dir.path(), options).unwrap();
            let store = wh.create_collection(red_collection_meta()).unwrap();
            assert_eq!(store.append_scene("a", T0, nine_tiles(100)).unwrap().observations, 9, "{sync:?}");
            assert_eq!(store.append_scene("b", T0 + 1000, nine_tiles(200)).unwrap().observations, 9, "{sync:?}");
            assert_eq!(first_pixels(&store), want, "{sync:?}");
        }
        let wh = Warehouse::open_with(dir.path(), options).unwrap();
        assert_eq!(first_pixels(&wh.collection("s2").unwrap()), want, "{sync:?} after a restart");
    }
}

/// Pages of `path` in the page cache, and pages the file spans.
#[cfg(target_os = "linux")]
fn cached_pages(path: &std::path::Path) -> (usize, usize) {
    extern "C" {
        fn mincore(addr: *mut std::ffi::c_void, length: usize, vec: *mut u8) -> std::ffi::c_int;
    }
    let file = std::fs::File::open(path).unwrap();
    // SAFETY: the file is not written while mapped (the test's writes
    // are committed); the map is only passed to mincore.
    let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
    let pages = map.len().div_ceil(4096);
    let mut vec = vec![0u8; pages];
    // SAFETY: `map` is a live mapping of `map.len()` bytes and `vec` holds
    // one byte per page of it.
    assert_eq!(unsafe { mincore(map.as_ptr() as *mut _, map.len(), vec.as_mut_ptr()) }, 0, "{}", std::io::Error::last_os_error());
    (vec.iter().filter(|b| **b & 1 == 1).count(), pages)
}

/// A commit drops the pages it wrote from the page cache once durable (off
/// the acknowledgement's path), all but each file's partial last page,
/// which the next append writes into; with `keep_written_pages` they stay.
/// Either way the scenes read back the same.
#[cfg(target_os = "linux")]
#[test]
fn commits_and_rewrites_drop_the_pages_they_wrote_unless_told_to_keep_them() {
    use pixelquery::storage::{Warehouse, WriteOptions};

    fn chunk_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                chunk_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "arrow") {
                out.push(p);
            }
        }
    }
    // Cached and total pages over `files`.
    let cached = |files: &[std::path::PathBuf]| files.iter().map(|f| cached_pages(f)).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    for keep in [false, true] {
        // On the disk (a tmpfs /tmp would keep every page).
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let wh = Warehouse::open_with(dir.path(), WriteOptions { keep_written_pages: keep, ..Default::default() }).unwrap();
        let store = wh.create_collection(red_collection_meta()).unwrap();
        store.append_scene("a", T0, nine_tiles(100)).unwrap();
        store.append_scene("b", T0 + 1000, nine_tiles(200)).unwrap();
        let mut files = Vec::new();
        chunk_files(dir.path(), &mut files);
        assert_eq!(files.len(), 9);
        let (mut now, total) = cached(&files);
        assert!(total >= 9 * 64, "{total} pages");
        if keep {
            assert_eq!(now, total, "kept pages");
        } else {
            // The drop runs on the sync threads after the commit.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while now > files.len() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(20));
                now = cached(&files).0;
            }
            assert!(now <= files.len(), "{now} of {total} pages still cached");
        }
        assert_eq!(first_pixels(&store), [nine_firsts("a", 100), nine_firsts("b", 200)].concat(), "keep {keep}");

        // Compaction and delete rewrite whole chunk files: theirs go too.
        let settled = |what: &str| {
            let mut files = Vec::new();
            chunk_files(dir.path(), &mut files);
            assert_eq!(files.len(), 9, "{what}");
            let (now, total) = cached(&files);
            if keep {
                assert_eq!(now, total, "{what}: kept pages");
            } else {
                assert!(now <= files.len(), "{what}: {now} of {total} pages still cached");
            }
        };
        assert_eq!(store.compact(None).unwrap().chunks_rewritten, 9);
        settled("compacted");
        assert_eq!(store.delete(|_| true, |_, _, s| s == "a", &[]).unwrap().chunks_rewritten, 9);
        settled("rewritten by a delete");
        assert_eq!(first_pixels(&store), nine_firsts("b", 200), "keep {keep}");
    }
}

/// A scene replacing one stored under its id: its rows and the old
/// scene's removal commit together. Until the commit (and when the writer
/// is dropped uncommitted) the old scene is all there; after it, and after
/// a restart, only the new one, beside the other scenes of its chunks.
#[test]
fn a_replacing_scene_swaps_the_old_one_in_one_commit() {
    use pixelquery::storage::{Encoded, Warehouse};

    let dir = tempfile::tempdir().unwrap();
    let encoded = |store: &pixelquery::storage::CollectionStore, id: &str, t: i64, v: u16| -> Vec<Encoded> {
        nine_tiles(v).into_iter().map(|o| Encoded::new(&store.meta, id, t, o).unwrap()).collect()
    };
    {
        let wh = Warehouse::open(dir.path()).unwrap();
        let store = wh.create_collection(red_collection_meta()).unwrap();
        store.append_scene("a", T0, nine_tiles(100)).unwrap();
        store.append_scene("b", T0 + 1000, nine_tiles(200)).unwrap();
        let before = snapshot(dir.path());
        // Another time under id "a": refused without replace.
        let refused = store.begin_scene("a", T0 + 2000, None, false).err().expect("refused");
        assert!(refused.to_string().contains("already exists"), "{refused}");
        // Replacing, then dropped uncommitted: nothing changes.
        let mut w = store.begin_scene("a", T0 + 2000, None, true).unwrap().expect("a writer");
        w.append(&encoded(&store, "a", T0 + 2000, 300)).unwrap();
        assert_eq!(first_pixels(&store), [nine_firsts("a", 100), nine_firsts("b", 200)].concat());
        drop(w);
        assert_eq!(snapshot(dir.path()), before, "an uncommitted replacement leaves the files as they were");
        // Replacing and committed.
        let mut w = store.begin_scene("a", T0 + 2000, None, true).unwrap().expect("a writer");
        w.append(&encoded(&store, "a", T0 + 2000, 300)).unwrap();
        w.commit().unwrap();
        assert_eq!(first_pixels(&store), [nine_firsts("a", 300), nine_firsts("b", 200)].concat());
        assert_eq!(store.scene("a").map(|s| s.time_ms), Some(T0 + 2000));
        assert_eq!(store.scene_count(), 2);
    }
    let wh = Warehouse::open(dir.path()).unwrap();
    let store = wh.collection("s2").unwrap();
    assert_eq!(first_pixels(&store), [nine_firsts("a", 300), nine_firsts("b", 200)].concat());
    assert_eq!(store.scene("a").map(|s| s.time_ms), Some(T0 + 2000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_reads_as_data_loss_and_verify_finds_exactly_it() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    create_red_collection(&mut client, "s2").await;
    const H: i64 = 3_600_000;
    const DAY: i64 = 24 * H;
    // Three observations appended to one chunk, one in the next month's.
    for (i, t) in [T0, T0 + H, T0 + 2 * H, T0 + 40 * DAY].into_iter().enumerate() {
        client.ingest(&aligned_request(&format!("w{i}"), t, 0, 0, 256), red_batches(raster(256, i as u16), 256)).await.unwrap();
    }
    let all = || proto::Query { collection: "s2".into(), ..Default::default() };
    let point = |start: Option<i64>| proto::Query {
        collection: "s2".into(),
        point: vec![100.0 * 2560.0 + 1280.0, 201.0 * 2560.0 - 1280.0],
        bbox_crs: pixelquery::grid::DEFAULT_GRID_CRS.into(),
        start_ms: start,
        ..Default::default()
    };
    let intact = rows(&client.query(&all()).await.unwrap());
    assert_eq!(intact.len(), 4);
    let report = client.action("verify", &serde_json::json!({})).await.unwrap();
    assert_eq!((report["observations"].as_u64(), report["damaged"].as_array().map(Vec::len)), (Some(4), Some(0)), "{report}");

    // One byte in the middle of the second observation's pixels flips.
    let mut files: Vec<(u64, PathBuf)> = snapshot(&server.warehouse())
        .into_iter()
        .filter(|(p, _)| p.extension().is_some_and(|e| e == "arrow"))
        .map(|(p, bytes)| (bytes.len() as u64, p))
        .collect();
    files.sort();
    let [(one, _), (three, path)] = &files[..] else { panic!("two chunk files: {files:?}") };
    let per_obs = (three - one) / 2;
    let at = three - per_obs - per_obs / 2;
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at as usize] ^= 0x10;
    std::fs::write(path, &bytes).unwrap();

    // Every read touching it says DataLoss, naming what, never a path.
    for (what, err) in [("query", client.query(&all()).await.map(|_| ())), ("point", client.point(&point(None)).await.map(|_| ()))] {
        let (code, msg) = code_of(err);
        assert_eq!(code, tonic::Code::DataLoss, "{what}: {msg}");
        for part in ["collection s2", "tile x0100_y0200", "band red", "scene w1"] {
            assert!(msg.contains(part), "{what}: {msg} lacks {part}");
        }
        assert!(!msg.contains('/') || !msg.contains(".arrow"), "{what}: a path in {msg}");
    }
    // What does not touch it still reads: the later observation of that
    // chunk, and the other chunk.
    let later = rows(&client.query(&proto::Query { start_ms: Some(T0 + 2 * H), ..all() }).await.unwrap());
    assert_eq!(later.iter().map(|r| r.2.as_str()).collect::<Vec<_>>(), vec!["w2", "w3"]);
    assert_eq!(later, intact[2..].to_vec());
    assert_eq!(client.point(&point(Some(T0 + 2 * H))).await.unwrap().iter().map(|b| b.num_rows()).sum::<usize>(), 2);

    let report = client.action("verify", &serde_json::json!({"collection": "s2"})).await.unwrap();
    let damaged = report["damaged"].as_array().unwrap();
    assert_eq!(damaged.len(), 1, "{report}");
    assert_eq!((damaged[0]["scene_id"].as_str(), damaged[0]["band"].as_str(), damaged[0]["tile"].as_str()), (Some("w1"), Some("red"), Some("x0100_y0200")));
    // Compaction refuses to carry damaged bytes into a new generation.
    let (code, _) = code_of(client.action("compact", &serde_json::json!({"collection": "s2"})).await);
    assert_eq!(code, tonic::Code::DataLoss);

    // Point reads check a message the first time they touch it (then
    // trust it until the server restarts): once it failed, it fails again.
    assert_eq!(code_of(client.point(&point(None)).await).0, tonic::Code::DataLoss);

    // Deleting the damaged scene is possible and leaves the rest whole.
    client.action("delete", &serde_json::json!({"collection": "s2", "scene_id": "w1"})).await.unwrap();
    let left = rows(&client.query(&all()).await.unwrap());
    assert_eq!(left, [&intact[..1], &intact[2..]].concat());
    let report = client.action("verify", &serde_json::json!({})).await.unwrap();
    assert_eq!((report["observations"].as_u64(), report["damaged"].as_array().map(Vec::len)), (Some(3), Some(0)), "{report}");
    assert_eq!(client.point(&point(None)).await.unwrap().iter().map(|b| b.num_rows()).sum::<usize>(), 3);
    server.shutdown().await;
}

/// A scene's encoded tiles held until its commit are bounded by bytes, not
/// only by count: past the limit they are appended as they come, and the
/// scene still commits whole.
#[test]
fn a_scene_holds_a_bounded_number_of_bytes_before_its_commit() {
    use arrow_array::{BooleanArray, UInt16Array};
    use pixelquery::grid::TileId;
    use pixelquery::storage::{Encoded, SceneCommit, Warehouse};

    let dir = tempfile::tempdir().unwrap();
    let wh = Warehouse::open(dir.path()).unwrap();
    let store = wh.create_collection(red_collection_meta()).unwrap();
    let tile = |k: i64| {
        let obs = pixelquery::storage::Observation {
            tile: TileId::new(k, 1),
            band: "red".into(),
            pixels: std::sync::Arc::new(UInt16Array::from(vec![k as u16 + 1; 256 * 256])),
            mask: BooleanArray::from(vec![true; 256 * 256]),
        };
        vec![Encoded::new(&store.meta, "big", T0, obs).unwrap()]
    };
    let limit = 300_000; // about two tiles of 128 KiB
    let mut commit = SceneCommit::new(&store, "big", T0, None, false, 10, Default::default()).with_pending_limit(limit);
    let mut most = 0;
    for k in 0..10 {
        commit.add(k as usize, tile(k)).unwrap();
        most = most.max(commit.held_bytes());
    }
    assert!(most <= limit + 140_000, "held {most} bytes");
    let outcome = commit.commit().unwrap();
    assert_eq!((outcome.observations, outcome.duplicate), (10, false));
    assert_eq!(store.chunks(|_| true).len(), 10);
}
