//! `pixelquery ingest` and the `ingest_path` action on COGs made with
//! `gdal_translate -of COG`: times from tags and names, band mapping from
//! flags, descriptions and product file names, values, failures, and
//! idempotent re-runs.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use arrow_array::cast::AsArray;
use arrow_array::types::{TimestampMillisecondType, UInt16Type};
use common::*;
use gdal::raster::Buffer;
use gdal::{DriverManager, Metadata};
use pixelquery_client::proto;

const SIZE: usize = 256;

fn four_bands() -> serde_json::Value {
    ["blue", "green", "red", "nir"].iter().map(|n| serde_json::json!({"name": n, "dtype": "uint16", "nodata": 0})).collect()
}

/// Writes a COG: `bands` uint16 bands (band b holds `pattern(r, c, 1000 * b)`),
/// 10 m EPSG:32652 around lon 127.05 lat 37.55, with metadata `tags`.
fn make_cog(path: &Path, bands: usize, tags: &[(&str, &str)], descriptions: &[&str]) {
    make_cog_with(path, bands, tags, descriptions, 0);
}

fn make_cog_with(path: &Path, bands: usize, tags: &[(&str, &str)], descriptions: &[&str], offset: u16) {
    let tmp = path.with_extension("src.tif");
    {
        let driver = DriverManager::get_driver_by_name("GTiff").unwrap();
        let mut ds = driver.create_with_band_type::<u16, _>(&tmp, SIZE, SIZE, bands).unwrap();
        ds.set_geo_transform(&utm_geotransform(SIZE)).unwrap();
        ds.set_spatial_ref(&gdal::spatial_ref::SpatialRef::from_epsg(32652).unwrap()).unwrap();
        for (k, v) in tags {
            ds.set_metadata_item(k, v, "").unwrap();
        }
        for b in 0..bands {
            let mut band = ds.rasterband(b + 1).unwrap();
            band.set_no_data_value(Some(0.0)).unwrap();
            if let Some(d) = descriptions.get(b) {
                band.set_description(d).unwrap();
            }
            let values: Vec<u16> = (0..SIZE * SIZE).map(|i| pattern(i / SIZE, i % SIZE, 1000 * b as u16 + offset)).collect();
            band.write((0, 0), (SIZE, SIZE), &mut Buffer::new((SIZE, SIZE), values)).unwrap();
        }
    }
    let ok = Command::new("gdal_translate").args(["-q", "-of", "COG", "-co", "COMPRESS=LZW"]).arg(&tmp).arg(path).status().unwrap().success();
    assert!(ok, "gdal_translate -of COG");
    std::fs::remove_file(&tmp).unwrap();
}

/// A COG like [`make_cog`]'s with no tags, its values shifted by `offset`
/// (so two files differ in content).
fn make_cog_offset(path: &Path, bands: usize, offset: u16) {
    make_cog_with(path, bands, &[], &[], offset);
}

/// Runs `pixelquery ingest --server SERVER ARGS` with `RUST_BACKTRACE=1`
/// (errors must still be one line): (ok, stdout, stderr).
fn cli(server: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pixelquery")).env("RUST_BACKTRACE", "1").arg("ingest").args(["--server", server]).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string(), String::from_utf8_lossy(&out.stderr).to_string())
}

/// (time, scene, value) of band `band` at the source pixel (row 100, col 60).
/// Whether `id` is the id of a scene without a product id: `label`, then
/// the CRC-32 of its file bytes in 8 hex digits.
fn labelled(id: &str, label: &str) -> bool {
    id.strip_prefix(label).and_then(|rest| rest.strip_prefix('_')).is_some_and(|h| h.len() == 8 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

async fn point_series(client: &mut pixelquery_client::Client, collection: &str, band: &str) -> Vec<(i64, String, Option<u16>)> {
    // The grid pixel whose centre is nearest the source pixel's centre holds
    // its value (nearest resampling); query at the source pixel centre.
    let gt = utm_geotransform(SIZE);
    let (x, y) = (gt[0] + 60.5 * 10.0, gt[3] - 100.5 * 10.0);
    let q = proto::Query { collection: collection.into(), point: vec![x, y], bbox_crs: "EPSG:32652".into(), bands: vec![band.into()], ..Default::default() };
    let b = &client.point(&q).await.unwrap()[0];
    let t = b.column_by_name("time").unwrap().as_primitive::<TimestampMillisecondType>();
    let s = b.column_by_name("scene_id").unwrap().as_string::<i32>();
    let v = b.column_by_name(band).unwrap().as_primitive::<UInt16Type>();
    (0..b.num_rows()).map(|i| (t.value(i), s.value(i).to_string(), (!arrow_array::Array::is_null(v, i)).then(|| v.value(i)))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_ingests_cogs_with_times_bands_failures_and_idempotency() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client
        .create_collection(&serde_json::json!({
            "name": "four", "grid": {"resolution": 10},
            "bands": four_bands()
        }))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("nested");
    std::fs::create_dir(&sub).unwrap();
    // A: time from TIFFTAG_DATETIME, bands in the file's order reversed by --bands.
    make_cog(&dir.path().join("field_a.tif"), 4, &[("TIFFTAG_DATETIME", "2024:06:15 02:03:04")], &[]);
    // B: time from the file name only, nested a directory down.
    make_cog(&sub.join("field_20240701.tif"), 4, &[], &[]);
    // C: no time anywhere: fails, the others still go in.
    make_cog(&dir.path().join("field_c.tif"), 4, &[], &[]);
    let d = dir.path().to_str().unwrap();
    let (ok, stdout, stderr) = cli(&server.uri, &["--collection", "four", "--bands", "1:nir,2:red,3:green,4:blue", "--jobs", "2", d]);
    assert!(!ok, "a failed file makes the exit non-zero");
    assert!(stdout.contains("ingested 2 of 3 files as 2 scenes"), "{stdout}");
    assert!(stderr.contains("field_c.tif: no acquisition time found; tried --time, GDAL metadata"), "{stderr}");
    assert!(stderr.contains("ingested field_a"), "plain log lines when not a terminal: {stderr}");

    let series = point_series(&mut client, "four", "nir").await;
    assert_eq!(series.len(), 2);
    assert!(series[0].0 == 1718416984000 && labelled(&series[0].1, "field_a"), "{series:?}");
    assert!(series[1].0 == 1719792000000 && labelled(&series[1].1, "field_20240701"), "{series:?}");
    // --bands put file band 1 (offset 0) into nir and band 4 (offset 3000) into blue.
    assert_eq!(series[0].2, Some(pattern(100, 60, 0)));
    assert_eq!(point_series(&mut client, "four", "blue").await[0].2, Some(pattern(100, 60, 3000)));

    // Re-running as before stores nothing and says so.
    let (_, stdout, _) = cli(&server.uri, &["--collection", "four", "--bands", "1:nir,2:red,3:green,4:blue", d]);
    assert!(stdout.contains("0 stored, 2 skipped (already stored)"), "{stdout}");

    // With --time, C goes in; A and B are stored with other times, so they
    // are refused (not skipped) and name --replace; --json shows the report.
    let args = ["--collection", "four", "--bands", "1:nir,2:red,3:green,4:blue", "--time", "2024-08-01", "--json", d];
    let (ok, stdout, _) = cli(&server.uri, &args);
    assert!(!ok);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let scenes = report["scenes"].as_array().unwrap();
    assert_eq!(scenes.len(), 1, "{report}");
    let c = &scenes[0];
    assert!(labelled(c["scene_id"].as_str().unwrap(), "field_c"), "{c}");
    assert_eq!((c["time_source"].as_str(), c["acquired_at"].as_str()), (Some("--time"), Some("2024-08-01T00:00:00.000Z")));
    let failures = report["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 2, "{report}");
    for f in failures {
        let reason = f["reason"].as_str().unwrap();
        assert!(reason.contains("already exists") && reason.contains("acquisition time") && reason.contains("--replace"), "{reason}");
    }
    assert_eq!(point_series(&mut client, "four", "nir").await.len(), 3);

    // --replace stores A and B at the new time in place of the old scenes.
    let (ok, stdout, stderr) = cli(&server.uri, &[&args[..8], &["--replace", d]].concat());
    assert!(ok, "{stdout}{stderr}");
    let series = point_series(&mut client, "four", "nir").await;
    assert_eq!(series.len(), 3, "{series:?}");
    assert!(series.iter().all(|s| s.0 == 1722470400000), "{series:?}");

    // Unknown collection without --profile: a clear error.
    let (ok, _, stderr) = cli(&server.uri, &["--collection", "nope", d]);
    assert!(!ok && stderr.contains("give --profile"), "{stderr}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn product_band_files_group_into_one_scene() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    // A Sentinel-2 scene as one file per band; the collection comes from
    // the profile; band names from the file names; time from the names.
    for code in ["B04", "B08"] {
        make_cog(&dir.path().join(format!("T52SCG_20240615T020304_{code}_10m.tif")), 1, &[], &[]);
    }
    // A multi-band file whose band descriptions name the bands.
    make_cog(&dir.path().join("described_2024-06-20.tif"), 2, &[], &["swir16", "blue"]);
    let (ok, stdout, stderr) = cli(&server.uri, &["--collection", "s2", "--profile", "sentinel2_l2a", "--resampling", "nearest", dir.path().to_str().unwrap()]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("ingested 3 of 3 files as 2 scenes"), "{stdout}");
    let mut client = server.client().await;
    let red = point_series(&mut client, "s2", "red").await;
    assert_eq!(red, vec![(1718416984000, "T52SCG_20240615T020304".to_string(), Some(pattern(100, 60, 0)))]);
    assert_eq!(point_series(&mut client, "s2", "nir").await[0].1, "T52SCG_20240615T020304");
    let swir = point_series(&mut client, "s2", "swir16").await;
    assert!(labelled(&swir[0].1, "described_2024-06-20") && swir[0].2 == Some(pattern(100, 60, 0)), "{swir:?}");
    let d = client.describe("s2").await.unwrap();
    assert_eq!(d["scenes"], 2);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_path_reads_only_under_allowed_roots() {
    let files = tempfile::tempdir().unwrap();
    let root: PathBuf = files.path().join("allowed");
    std::fs::create_dir(&root).unwrap();
    make_cog(&root.join("field_20240615.tif"), 4, &[], &["blue", "green", "red", "nir"]);
    make_cog(&files.path().join("secret_20240615.tif"), 4, &[], &[]);
    std::os::unix::fs::symlink(files.path().join("secret_20240615.tif"), root.join("link_20240615.tif")).unwrap();
    let roots = vec![root.to_string_lossy().to_string()];
    let server = TestServer::start_with(tempfile::tempdir().unwrap(), |c| c.ingest_roots = roots).await;
    let mut client = server.client().await;
    client
        .create_collection(&serde_json::json!({"name": "four", "grid": {"resolution": 10},
            "bands": four_bands()}))
        .await
        .unwrap();
    let before = snapshot(&server.warehouse());
    for bad in [files.path().join("secret_20240615.tif"), root.join("../secret_20240615.tif"), PathBuf::from("/etc/passwd")] {
        let err = client.action("ingest_path", &serde_json::json!({"collection": "four", "paths": [bad]})).await.unwrap_err();
        let status = err.status().unwrap();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{bad:?}");
        assert!(status.message().contains("paths"), "{}", status.message());
    }
    assert_eq!(snapshot(&server.warehouse()), before);
    // The directory: its own file goes in; the link leading outside does not.
    let report = client.action("ingest_path", &serde_json::json!({"collection": "four", "paths": [root]})).await.unwrap();
    assert_eq!(report["scenes"].as_array().unwrap().len(), 1, "{report}");
    assert!(labelled(report["scenes"][0]["scene_id"].as_str().unwrap(), "field_20240615"), "{report}");
    assert_eq!(report["failures"][0]["reason"], "outside the server's allowed ingest roots");
    assert_eq!(point_series(&mut client, "four", "nir").await[0].2, Some(pattern(100, 60, 3000)));
    server.shutdown().await;

    // No roots configured: disabled.
    let server = TestServer::start().await;
    let mut client = server.client().await;
    create_red_collection(&mut client, "s2").await;
    let err = client.action("ingest_path", &serde_json::json!({"collection": "s2", "paths": ["/tmp"]})).await.unwrap_err();
    assert!(err.status().unwrap().message().contains("disabled"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_signs_in_with_a_token_or_a_user_and_password() {
    let server = TestServer::start_with(tempfile::tempdir().unwrap(), with_auth).await;
    let mut client = server.client().await;
    client.set_token(WRITE_TOKEN).unwrap();
    client.create_collection(&serde_json::json!({"name": "four", "grid": {"resolution": 10}, "bands": four_bands()})).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    make_cog(&dir.path().join("field_20240601.tif"), 4, &[], &[]);
    make_cog(&dir.path().join("field_20240602.tif"), 4, &[], &[]);
    let file = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (ok, _, stderr) = cli(&server.uri, &["--collection", "four", &file("field_20240601.tif")]);
    assert!(!ok && stderr.contains("unauthenticated"), "{stderr}");
    let (ok, _, stderr) = cli(&server.uri, &["--collection", "four", "--user", "alice", "--password", "wrong-password-0123", &file("field_20240601.tif")]);
    assert!(!ok && stderr.contains("--user/--password"), "{stderr}");
    assert!(!stderr.contains("wrong-password-0123"), "the password is never printed: {stderr}");
    let (ok, stdout, stderr) = cli(&server.uri, &["--collection", "four", "--user", "alice", "--password", "alice-password-0123", &file("field_20240601.tif")]);
    assert!(ok, "{stdout}{stderr}");
    let (ok, stdout, stderr) = cli(&server.uri, &["--collection", "four", "--token", WRITE_TOKEN, &file("field_20240602.tif")]);
    assert!(ok, "{stdout}{stderr}");
    assert_eq!(point_series(&mut client, "four", "nir").await.len(), 2);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_named_files_of_different_dates_keep_every_date() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client.create_collection(&serde_json::json!({"name": "four", "grid": {"resolution": 10}, "bands": four_bands()})).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // One file name in two date folders, each ingested with its --time.
    for (folder, offset) in [("dA/2020-01", 0u16), ("dB/2020-02", 1)] {
        std::fs::create_dir_all(dir.path().join(folder)).unwrap();
        make_cog_offset(&dir.path().join(folder).join("scene.tif"), 4, offset);
    }
    for (folder, time) in [("dA/2020-01", "2020-01-01"), ("dB/2020-02", "2020-02-01")] {
        let path = dir.path().join(folder).join("scene.tif");
        let (ok, stdout, stderr) = cli(&server.uri, &["--collection", "four", "--time", time, path.to_str().unwrap()]);
        assert!(ok && stdout.contains("1 stored"), "{stdout}{stderr}");
    }
    let series = point_series(&mut client, "four", "nir").await;
    assert_eq!(series.iter().map(|s| s.0).collect::<Vec<_>>(), vec![1577836800000, 1580515200000], "{series:?}");

    // STAC-style folders of one file per band: each folder is one scene.
    client.create_collection(&serde_json::json!({"name": "s2", "profile": "sentinel2_l2a"})).await.unwrap();
    for (item, offset) in [("S2_item_a", 0u16), ("S2_item_b", 7)] {
        std::fs::create_dir_all(dir.path().join("stac").join(item)).unwrap();
        for code in ["B04", "B08"] {
            make_cog_offset(&dir.path().join("stac").join(item).join(format!("{code}.tif")), 1, offset);
        }
    }
    let (ok, stdout, stderr) = cli(&server.uri, &["--collection", "s2", "--time", "2024-06-01", "--json", dir.path().join("stac").to_str().unwrap()]);
    assert!(ok, "{stdout}{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let ids: Vec<&str> = report["scenes"].as_array().unwrap().iter().map(|s| s["scene_id"].as_str().unwrap()).collect();
    assert!(ids.len() == 2 && labelled(ids[0], "S2_item_a") && labelled(ids[1], "S2_item_b"), "{report}");
    assert_eq!(point_series(&mut client, "s2", "nir").await.len(), 2);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_errors_name_what_to_do() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client.create_collection(&serde_json::json!({"name": "four", "grid": {"resolution": 10}, "bands": four_bands()})).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    make_cog(&dir.path().join("field_20240601.tif"), 4, &[], &[]);
    let file = dir.path().join("field_20240601.tif");
    let file = file.to_str().unwrap();
    let run = |server: &str, args: &[&str]| {
        let (ok, _, stderr) = cli(server, args);
        (ok, stderr)
    };
    // A URL without its scheme, and a port nobody listens on.
    let port = server.uri.rsplit(':').next().unwrap().to_string();
    let (ok, stderr) = run(&format!("127.0.0.1:{port}"), &["--collection", "four", file]);
    assert!(!ok && stderr.contains("invalid --server") && stderr.contains("expected grpc://host:port"), "{stderr}");
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_uri = format!("grpc://{}", dead.local_addr().unwrap());
    drop(dead);
    let (ok, stderr) = run(&dead_uri, &["--collection", "four", file]);
    assert!(!ok && stderr.contains(&dead_uri) && stderr.contains("cannot connect") && stderr.contains("pixelquery serve"), "{stderr}");
    assert!(!stderr.contains("stack backtrace") && !stderr.contains("internal error"), "one line, no backtrace: {stderr}");
    // A file that is no raster is named, with what is wrong with it.
    let junk = dir.path().join("notes_20240601.tif");
    std::fs::write(&junk, b"not a raster").unwrap();
    let (ok, stderr) = run(&server.uri, &["--collection", "four", junk.to_str().unwrap()]);
    assert!(!ok && stderr.contains("notes_20240601.tif: GDAL cannot open it as a raster"), "{stderr}");
    assert!(!stderr.contains("NULL pointer"), "{stderr}");
    // A Level-1C product into a Level-2A profile collection: refused with the reason.
    let l1c = dir.path().join("S2A_MSIL1C_20240615T020301_N0510_R060_T52SCG_20240615T035214_B04.tif");
    make_cog(&l1c, 1, &[], &[]);
    let (ok, stderr) = run(&server.uri, &["--collection", "l2a", "--profile", "sentinel2_l2a", l1c.to_str().unwrap()]);
    assert!(!ok && stderr.contains("Level-1C product") && stderr.contains("sentinel2_l2a"), "{stderr}");
    // NaN as the nodata of a float band, in JSON.
    client
        .create_collection(&serde_json::json!({"name": "f", "grid": {"resolution": 10}, "bands": [{"name": "v", "dtype": "float32", "nodata": "nan"}]}))
        .await
        .unwrap();
    let desc = serde_json::json!({"collection": "f", "scene_id": "nan", "acquired_at": "2024-06-01", "crs": "EPSG:32652",
        "geotransform": utm_geotransform(8), "width": 8, "height": 8, "bands": [{"name": "v", "dtype": "float32", "nodata": "NaN"}]});
    let values: Vec<f32> = (0..64).map(|i| if i % 2 == 0 { f32::NAN } else { i as f32 }).collect();
    let batch =
        arrow_array::RecordBatch::try_from_iter([("v", std::sync::Arc::new(arrow_array::Float32Array::from(values)) as arrow_array::ArrayRef)]).unwrap();
    let put = client.ingest_raw(bytes::Bytes::from(serde_json::to_vec(&desc).unwrap()), vec![batch]).await.unwrap();
    assert!(put.observations > 0, "{put:?}");
    let bad = serde_json::json!({"name": "g", "grid": {"resolution": 10}, "bands": [{"name": "v", "dtype": "float32", "nodata": "none"}]});
    let err = client.create_collection(&bad).await.unwrap_err();
    assert!(err.to_string().contains("nodata must be a number"), "{err}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narrower_integer_types_are_widened_losslessly_and_narrowing_is_refused() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client.create_collection(&serde_json::json!({"name": "four", "grid": {"resolution": 10}, "bands": four_bands()})).await.unwrap();
    let put = |scene: &str, dtype: &str| {
        bytes::Bytes::from(
            serde_json::to_vec(&serde_json::json!({"collection": "four", "scene_id": scene, "acquired_at": "2024-06-01", "crs": "EPSG:32652",
                "geotransform": utm_geotransform(SIZE), "width": SIZE, "height": SIZE, "bands": [{"name": "nir", "dtype": dtype, "nodata": 0}]}))
            .unwrap(),
        )
    };
    let bytes: Vec<u8> = (0..SIZE * SIZE).map(|i| (pattern(i / SIZE, i % SIZE, 0) % 250) as u8 + 1).collect();
    let batch = arrow_array::RecordBatch::try_from_iter([("nir", std::sync::Arc::new(arrow_array::UInt8Array::from(bytes)) as arrow_array::ArrayRef)]).unwrap();
    let summary = client.ingest_raw(put("bytes", "uint8"), vec![batch]).await.unwrap();
    assert!(summary.observations > 0, "{summary:?}");
    let series = point_series(&mut client, "four", "nir").await;
    assert_eq!(series[0].2, Some((pattern(100, 60, 0) % 250) + 1), "uint8 values stored as the same uint16 values");
    let signed = arrow_array::RecordBatch::try_from_iter([(
        "nir",
        std::sync::Arc::new(arrow_array::Int16Array::from(vec![-5i16; SIZE * SIZE])) as arrow_array::ArrayRef,
    )])
    .unwrap();
    let err = client.ingest_raw(put("signed", "int16"), vec![signed]).await.unwrap_err();
    let status = err.status().unwrap();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("bands[0].dtype") && status.message().contains("without loss"), "{}", status.message());
    server.shutdown().await;
}

/// Runs `pixelquery collection ARGS --server SERVER`; (ok, stdout as JSON, stderr).
fn collection_cli(server: &str, args: &[&str]) -> (bool, serde_json::Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pixelquery")).arg("collection").args(args).args(["--server", server]).output().unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.success(), json, String::from_utf8_lossy(&out.stderr).to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collections_are_made_and_managed_from_the_cli() {
    let server = TestServer::start().await;
    let uri = server.uri.as_str();
    let (ok, made, stderr) = collection_cli(uri, &["create", "fields", "--bands", "red:uint16:0,nir:uint16:0,t:float32:nan", "--resolution", "10"]);
    assert!(ok, "{stderr}");
    assert_eq!((made["grid"]["tile_px"].as_u64(), made["bands"][2]["dtype"].as_str()), (Some(256), Some("float32")), "{made}");
    let (ok, _, stderr) = collection_cli(uri, &["create", "bad", "--bands", "red"]);
    assert!(!ok && stderr.contains("--bands") && stderr.contains("name:dtype"), "{stderr}");

    // --create: a 4-band byte file makes its own collection, and goes in.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("drone_20240615.tif");
    {
        let driver = DriverManager::get_driver_by_name("GTiff").unwrap();
        let mut ds = driver.create_with_band_type::<u8, _>(&path, 64, 64, 4).unwrap();
        ds.set_geo_transform(&[utm_geotransform(64)[0], 0.5, 0.0, utm_geotransform(64)[3], 0.0, -0.5]).unwrap();
        ds.set_spatial_ref(&gdal::spatial_ref::SpatialRef::from_epsg(32652).unwrap()).unwrap();
        for b in 1..=4 {
            let mut band = ds.rasterband(b).unwrap();
            band.write((0, 0), (64, 64), &mut Buffer::new((64, 64), vec![(b * 40) as u8; 64 * 64])).unwrap();
        }
    }
    let (ok, stdout, stderr) = cli(uri, &["--collection", "drone", "--create", path.to_str().unwrap()]);
    assert!(ok && stdout.contains("1 stored"), "{stdout}{stderr}");
    let (ok, d, stderr) = collection_cli(uri, &["describe", "drone"]);
    assert!(ok, "{stderr}");
    let dtypes: Vec<&str> = d["bands"].as_array().unwrap().iter().map(|b| b["dtype"].as_str().unwrap()).collect();
    assert_eq!(dtypes, ["uint8"; 4], "{d}");
    assert_eq!(d["bands"][0]["name"], "b1");
    // 0.5 m UTM pixels measured in the sinusoidal grid at 37.5 N.
    assert!(d["grid"]["resolution"].as_f64().is_some_and(|r| (0.45..=0.5).contains(&r)), "{d}");
    assert_eq!((d["scenes"].as_u64(), d["start"].as_str()), (Some(1), Some("2024-06-15T00:00:00.000Z")), "{d}");
    assert_eq!(d["footprint"].as_array().map(Vec::len), Some(4), "{d}");

    let (ok, list, _) = collection_cli(uri, &["list"]);
    assert!(ok);
    assert_eq!(list.as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect::<Vec<_>>(), ["drone", "fields"]);
    let (ok, gone, stderr) = collection_cli(uri, &["delete", "drone"]);
    assert!(ok && gone["deleted"] == "drone", "{stderr}");
    let (ok, _, stderr) = collection_cli(uri, &["describe", "drone"]);
    assert!(!ok && stderr.contains("not found"), "{stderr}");
    // Gone for good: after a restart too, and the name can be used again.
    let wh = server.shutdown().await;
    assert!(!wh.path().join("drone").exists());
    let server = TestServer::start_in(wh).await;
    let (ok, list, _) = collection_cli(&server.uri, &["list"]);
    assert!(ok && list.as_array().unwrap().len() == 1, "{list}");
    let (ok, _, stderr) = cli(&server.uri, &["--collection", "drone", "--create", path.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    server.shutdown().await;
}

/// A VRT inside the ingest root naming a file outside it (under its own
/// name or saved as `.tif`) is refused: GDAL opens ingest files with the
/// GeoTIFF driver only, so no outside pixel comes in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vrt_files_cannot_pull_outside_pixels_into_an_ingest() {
    let files = tempfile::tempdir().unwrap();
    let root: PathBuf = files.path().join("allowed");
    std::fs::create_dir(&root).unwrap();
    let secret = files.path().join("secret_20240615.tif");
    make_cog(&secret, 4, &[], &["blue", "green", "red", "nir"]);
    let vrt = root.join("mosaic_20240616.vrt");
    let ok = std::process::Command::new("gdal_translate").args(["-q", "-of", "VRT"]).arg(&secret).arg(&vrt).status().unwrap().success();
    assert!(ok, "gdal_translate -of VRT");
    let xml = std::fs::read_to_string(&vrt).unwrap();
    std::fs::write(root.join("disguised_20240617.tif"), xml.replace("relativeToVRT=\"1\">", &format!("relativeToVRT=\"0\">{}/", files.path().display())))
        .unwrap();
    let roots = vec![root.to_string_lossy().to_string()];
    let server = TestServer::start_with(tempfile::tempdir().unwrap(), |c| c.ingest_roots = roots).await;
    let mut client = server.client().await;
    client.create_collection(&serde_json::json!({"name": "four", "grid": {"resolution": 10}, "bands": four_bands()})).await.unwrap();
    let before = snapshot(&server.warehouse());
    for path in [vrt.clone(), root.join("disguised_20240617.tif"), root.clone()] {
        match client.action("ingest_path", &serde_json::json!({"collection": "four", "paths": [path]})).await {
            Ok(report) => assert!(report["scenes"].as_array().is_none_or(|s| s.is_empty()), "{path:?}: {report}"),
            Err(e) => assert_eq!(e.status().map(|s| s.code()), Some(tonic::Code::InvalidArgument), "{path:?}: {e}"),
        }
    }
    assert_eq!(snapshot(&server.warehouse()), before, "nothing stored");
    server.shutdown().await;
}
