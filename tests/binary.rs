//! The `pixelquery` binary itself: starts on port 0, prints its address,
//! answers over Flight, and stops on SIGINT.

mod common;

use std::process::Command;

use common::{serve_command, spawn_server};

#[tokio::test]
async fn binary_serves_on_a_free_port_and_stops_on_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, uri) = spawn_server(serve_command(&dir.path().join("wh")).args(["--shutdown-grace-secs", "5"]));
    let mut client = pixelquery_client::Client::connect(&uri).await.unwrap();
    assert_eq!(client.health().await.unwrap()["status"], "ok");
    assert!(dir.path().join("wh").is_dir(), "the warehouse is created");
    drop(client);
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc_kill(child.id() as i32, 2) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server did not stop within 20 s of SIGINT (grace is 5 s)");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(status.success(), "clean exit on SIGINT: {status:?}");
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

#[test]
fn binary_refuses_to_serve_beyond_loopback_without_auth() {
    let dir = tempfile::tempdir().unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_pixelquery")).args(["serve", "--listen", "0.0.0.0:0", "--warehouse"]).arg(dir.path().join("wh")).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--auth-file") && stderr.contains("0.0.0.0"), "{stderr}");
    assert!(!dir.path().join("wh").exists(), "nothing is created");

    // A bad access file is refused naming the line, never the secret.
    let access = dir.path().join("access");
    std::fs::write(&access, "read tooshort\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pixelquery"))
        .args(["serve", "--listen", "0.0.0.0:0", "--auth-file"])
        .arg(&access)
        .arg("--warehouse")
        .arg(dir.path().join("wh"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 1") && !stderr.contains("tooshort"), "{stderr}");

    // A connection cap of 0 would serve no one.
    let out =
        Command::new(env!("CARGO_BIN_EXE_pixelquery")).args(["serve", "--max-connections", "0", "--warehouse"]).arg(dir.path().join("wh")).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--max-connections") && stderr.contains('0'), "{stderr}");
    assert!(!dir.path().join("wh").exists(), "nothing is created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_doput_in_flight_at_sigterm_finishes_and_is_kept() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let (mut child, uri) = spawn_server(serve_command(&wh).args(["--shutdown-grace-secs", "20"]));
    let mut client = pixelquery_client::Client::connect(&uri).await.unwrap();
    client
        .create_collection(&serde_json::json!({"name": "s2", "bands": [{"name": "red", "dtype": "uint16", "nodata": 0}], "grid": {"resolution": 10}}))
        .await
        .unwrap();
    let request = pixelquery_client::proto::IngestRequest {
        collection: "s2".into(),
        scene_id: "in-flight".into(),
        acquired_at_ms: 1718416984000,
        crs: "EPSG:32652".into(),
        geotransform: vec![322000.0, 10.0, 0.0, 4158000.0, 0.0, -10.0],
        width: 64,
        height: 64,
        bands: vec![pixelquery_client::proto::BandSpec { name: "red".into(), dtype: "uint16".into(), nodata: Some(0.0), ..Default::default() }],
        ..Default::default()
    };
    let values: arrow_array::ArrayRef = std::sync::Arc::new(arrow_array::UInt16Array::from_iter_values((0..64 * 64).map(|i| (i % 900 + 1) as u16)));
    let whole = arrow_array::RecordBatch::try_from_iter([("red", values)]).unwrap();
    let batches = [whole.slice(0, 32 * 64), whole.slice(32 * 64, 32 * 64)];
    // Half the rows now, the rest after SIGTERM.
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(batches[0].clone()).await.unwrap();
    let mut writer = client.try_clone();
    let put = tokio::spawn(async move { writer.ingest_stream(&request, tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok)).await });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc_kill(child.id() as i32, 15) };
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    for b in &batches[1..] {
        tx.send(b.clone()).await.unwrap();
    }
    drop(tx);
    let summary = put.await.unwrap().expect("the in-flight DoPut completes within the grace period");
    assert!(!summary.duplicate && summary.observations > 0);
    drop(client);
    let status = child.wait().unwrap();
    assert!(status.success(), "clean exit after SIGTERM: {status:?}");
    // Acknowledged means kept: a new server over the same warehouse has it.
    let (mut again, uri) = spawn_server(&mut serve_command(&wh));
    let mut client = pixelquery_client::Client::connect(&uri).await.unwrap();
    let d = client.describe("s2").await.unwrap();
    assert_eq!(d["scenes"], 1, "{d}");
    drop(client);
    let _ = again.kill();
    let _ = again.wait();
}

/// A scene touching more chunks than the process may open files at once
/// (here 400 tiles under a limit of 256 descriptors) is ingested: appended
/// chunk files are synced and closed as the scene goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scene_touching_more_chunks_than_open_file_limit_is_ingested() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_pixelquery");
    let (mut child, uri) = spawn_server(
        Command::new("sh").arg("-c").arg(format!("ulimit -n 256 && exec {bin} serve --listen 127.0.0.1:0 --warehouse {}", dir.path().join("wh").display())),
    );
    let mut client = pixelquery_client::Client::connect(&uri).await.unwrap();
    client
        .create_collection(&serde_json::json!({"name": "big", "bands": [{"name": "red", "dtype": "uint16", "nodata": 0}], "grid": {"resolution": 10}}))
        .await
        .unwrap();
    // 20 x 20 tiles of 256 px on the grid's lattice (copied, not resampled).
    let size = 20 * 256;
    let grid = pixelquery::grid::GridSpec::default_at(10.0).unwrap();
    let gt = grid.tile_geotransform(pixelquery::grid::TileId::new(4380, 1632));
    let request = pixelquery_client::proto::IngestRequest {
        collection: "big".into(),
        scene_id: "many-tiles".into(),
        acquired_at_ms: 1718416984000,
        crs: pixelquery::grid::DEFAULT_GRID_CRS.into(),
        geotransform: gt.to_vec(),
        width: size as u32,
        height: size as u32,
        bands: vec![pixelquery_client::proto::BandSpec { name: "red".into(), dtype: "uint16".into(), nodata: Some(0.0), ..Default::default() }],
        ..Default::default()
    };
    let values: arrow_array::ArrayRef = std::sync::Arc::new(arrow_array::UInt16Array::from_iter_values((0..size * size).map(|i| (i % 999 + 1) as u16)));
    let batches = pixelquery_client::raster_batches(vec![("red".into(), values)], None, size).unwrap();
    let summary = client.ingest(&request, batches).await.expect("a 400-tile scene under a 256-descriptor limit");
    assert_eq!(summary.observations, 400);
    drop(client);
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_one_warehouse_is_refused_and_the_first_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let (mut first, uri) = spawn_server(&mut serve_command(&wh));
    let out = serve_command(&wh).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the second server must not start: {stderr}");
    assert!(stderr.contains("in use by another pixelquery process") && stderr.contains(&format!("pid {}", first.id())), "{stderr}");
    assert!(stderr.contains(wh.to_str().unwrap()), "names the directory: {stderr}");
    let mut client = pixelquery_client::Client::connect(&uri).await.unwrap();
    assert_eq!(client.health().await.unwrap()["status"], "ok");
    first.kill().unwrap();
    first.wait().unwrap();
    // Once the first is gone (however it ended) the warehouse opens again.
    let (mut again, uri) = spawn_server(&mut serve_command(&wh));
    assert_eq!(pixelquery_client::Client::connect(&uri).await.unwrap().health().await.unwrap()["status"], "ok");
    again.kill().unwrap();
    again.wait().unwrap();
}
