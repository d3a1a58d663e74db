//! Per-file COG ingest: 20 files of 1024 x 1024 x 4-band uint16 LZW COGs in
//! EPSG:32652, each read with GDAL, streamed with DoPut to a local server,
//! warped (bilinear) onto the default 10 m grid and committed; beside
//! `gdalwarp -r bilinear` of the same file to the same grid, and the earlier
//! PixelQuery's published 0.27 s per file. Goals: at most 40 ms per file
//! ingesting the directory, 55 ms one file after another.
//!
//! `cargo bench --bench cog_ingest` (release build; about a minute).

use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use gdal::raster::Buffer;
use gdal::DriverManager;
use pixelquery::cog::{self, CogOptions};
use pixelquery::config::Config;
use pixelquery::grid::DEFAULT_GRID_CRS;
use pixelquery::server;
use pixelquery_client::Client;

const FILES: usize = 20;
const SIZE: usize = 1024;
const EARLIER_S: f64 = 0.27;

/// CPU time of this process (every thread: client and server), ms.
fn cpu_ms() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    ms(u.ru_utime) + ms(u.ru_stime)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn make_cogs(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for f in 0..FILES {
        let src = dir.join(format!("src_{f}.tif"));
        let cog = dir.join(format!("scene_{f:02}_2024{:02}15.tif", 1 + f % 12));
        {
            let driver = DriverManager::get_driver_by_name("GTiff").unwrap();
            let mut ds = driver.create_with_band_type::<u16, _>(&src, SIZE, SIZE, 4).unwrap();
            // Scenes stepping east 2 km from lon 127.05, lat 37.55 (UTM 52N).
            ds.set_geo_transform(&[322600.0 + 2000.0 * f as f64, 10.0, 0.0, 4162800.0, 0.0, -10.0]).unwrap();
            ds.set_spatial_ref(&gdal::spatial_ref::SpatialRef::from_epsg(32652).unwrap()).unwrap();
            for b in 0..4 {
                let mut band = ds.rasterband(b + 1).unwrap();
                band.set_no_data_value(Some(0.0)).unwrap();
                let v: Vec<u16> = (0..SIZE * SIZE).map(|i| ((i / SIZE) * 7 + (i % SIZE) * 3 + b * 500 + f) as u16 % 20000 + 1).collect();
                band.write((0, 0), (SIZE, SIZE), &mut Buffer::new((SIZE, SIZE), v)).unwrap();
            }
        }
        assert!(Command::new("gdal_translate").args(["-q", "-of", "COG", "-co", "COMPRESS=LZW"]).arg(&src).arg(&cog).status().unwrap().success());
        std::fs::remove_file(&src).unwrap();
        out.push(cog.to_string_lossy().to_string());
    }
    out
}

fn main() {
    // The server binary's malloc settings.
    pixelquery::pool::tune_malloc();
    if std::env::var("RUST_LOG").is_ok() {
        tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_writer(std::io::stderr).init();
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let work = tempfile::tempdir_in(std::env::var("PIXELQUERY_BENCH_DIR").unwrap_or_else(|_| ".".into())).unwrap();
    let files = make_cogs(work.path());
    if let Some(keep) = std::env::var_os("PIXELQUERY_KEEP_COGS") {
        // The same files for the earlier PixelQuery (benches/earlier_pixelquery.py).
        std::fs::create_dir_all(&keep).unwrap();
        for f in &files {
            let p = std::path::Path::new(f);
            std::fs::copy(p, std::path::Path::new(&keep).join(p.file_name().unwrap())).unwrap();
        }
    }
    let mb = std::fs::metadata(&files[0]).unwrap().len() as f64 / 1e6;

    // gdalwarp of each file onto the same 10 m sinusoidal grid.
    let mut warp_ms = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let out = work.path().join(format!("warped_{i}.tif"));
        let t = Instant::now();
        let ok = Command::new("gdalwarp")
            .args(["-q", "-overwrite", "-r", "bilinear", "-t_srs", DEFAULT_GRID_CRS, "-tr", "10", "10", "-tap", "-srcnodata", "0", "-dstnodata", "0"])
            .arg(f)
            .arg(&out)
            .status()
            .unwrap()
            .success();
        warp_ms.push(t.elapsed().as_secs_f64() * 1e3);
        assert!(ok);
    }

    let ingest_ms = rt.block_on(async {
        let config = Config::for_warehouse(work.path().join("warehouse"));
        let cfg = config.clone();
        let state = tokio::task::spawn_blocking(move || server::open_state(&cfg)).await.unwrap().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri = format!("grpc://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let srv = tokio::spawn(async move {
            server::run(listener, state, &config, async {
                let _ = rx.await;
            })
            .await
            .unwrap()
        });
        let mut client = Client::connect(&uri).await.unwrap();
        let band_specs: Vec<serde_json::Value> =
            ["blue", "green", "red", "nir"].iter().map(|n| serde_json::json!({"name": n, "dtype": "uint16", "nodata": 0})).collect();
        client
            .create_collection(&serde_json::json!({"name": "bench", "grid": {"resolution": 10}, "resampling": "bilinear", "bands": band_specs}))
            .await
            .unwrap();
        let bands: Vec<String> = ["blue", "green", "red", "nir"].iter().map(|s| s.to_string()).collect();
        let opts = Arc::new(CogOptions { collection: "bench".into(), collection_bands: bands, ..Default::default() });
        let mut times = Vec::new();
        let mut server_ms = Vec::new();
        for f in &files {
            let t = Instant::now();
            let (file, o) = (vec![f.clone()], opts.clone());
            let (scenes, failures) = tokio::task::spawn_blocking(move || cog::plan(&file, &o)).await.unwrap();
            assert!(failures.is_empty(), "{failures:?}");
            let put = cog::send::send_scene(&mut client, &scenes[0]).await.unwrap();
            times.push(t.elapsed().as_secs_f64() * 1e3);
            server_ms.push(put.elapsed_ms as f64);
            assert_eq!(put.observations % 4, 0);
        }
        // The same files as `pixelquery ingest DIR` sends them: planned
        // together, two scenes at once (its default `--jobs`), so one
        // file's reading overlaps another's warp; into a new collection.
        // Then again into a zstd-compressed collection: its ingest time and
        // the bytes it stores per byte of source COG.
        let (mut dir_ms, mut dir_cpu) = (Vec::new(), Vec::new());
        for (name, compression) in [("bench_dir", "none"), ("bench_zstd", "zstd")] {
            client
                .create_collection(
                    &serde_json::json!({"name": name, "grid": {"resolution": 10}, "resampling": "bilinear", "bands": band_specs, "compression": compression}),
                )
                .await
                .unwrap();
            let dir_opts = CogOptions { collection: name.into(), ..(*opts).clone() };
            let (t, cpu) = (Instant::now(), cpu_ms());
            let all = files.clone();
            let (scenes, failures) = tokio::task::spawn_blocking(move || cog::plan(&all, &dir_opts)).await.unwrap();
            let report = cog::send::send_all(&client, scenes, failures, files.len(), 2).await;
            dir_ms.push(t.elapsed().as_secs_f64() * 1e3 / files.len() as f64);
            dir_cpu.push((cpu_ms() - cpu) / files.len() as f64);
            assert!(report.failures.is_empty() && report.scenes.len() == files.len(), "{:?}", report.failures);
        }
        let _ = tx.send(());
        drop(client);
        let _ = srv.await;
        (times, server_ms, dir_ms[0], dir_ms[1], dir_cpu[0])
    });
    let (ingest_ms, server_ms, dir_ms, zstd_ms, dir_cpu) = ingest_ms;
    let source_bytes: u64 = files.iter().map(|f| std::fs::metadata(f).unwrap().len()).sum();
    let chunk_bytes = |collection: &str| -> u64 {
        fn walk(dir: &std::path::Path) -> u64 {
            std::fs::read_dir(dir)
                .unwrap()
                .flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        walk(&e.path())
                    } else if e.path().extension().is_some_and(|x| x == "arrow") {
                        e.metadata().unwrap().len()
                    } else {
                        0
                    }
                })
                .sum()
        }
        walk(&work.path().join("warehouse").join(collection).join("tiles"))
    };
    let (plain_ratio, zstd_ratio) = (chunk_bytes("bench_dir") as f64 / source_bytes as f64, chunk_bytes("bench_zstd") as f64 / source_bytes as f64);
    // The client's part alone: planning and reading every strip (GDAL's
    // LZW decoding), nothing sent.
    let opts = CogOptions {
        collection: "bench".into(),
        collection_bands: ["blue", "green", "red", "nir"].iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let read_ms = median(
        files
            .iter()
            .map(|f| {
                let t = Instant::now();
                let (scenes, _) = cog::plan(std::slice::from_ref(f), &opts);
                cog::read_scene(&scenes[0], |_| true).unwrap();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    );

    let ours = median(ingest_ms);
    let warp = median(warp_ms);
    println!("per-file ingest of {FILES} COGs, 1024x1024x4 uint16 LZW ({mb:.1} MB each), EPSG:32652 -> 10 m sinusoidal grid, bilinear");
    println!("{:<52} {:>10}", "", "median ms");
    println!("{:<52} {:>10.1}", "one file after another (read + DoPut + warp + commit)", ours);
    println!("{:<52} {:>10.1}", "  of which the server's DoPut (receive, warp, commit)", median(server_ms.clone()));
    println!("{:<52} {:>10.1}", "  the client's plan and read alone (nothing sent)", read_ms);
    println!("{:<52} {:>10.1}", "the whole directory, 2 files at once, per file", dir_ms);
    println!("{:<52} {:>10.1}", "  CPU time of client and server per file", dir_cpu);
    println!("{:<52} {:>10.1}", "the whole directory into a zstd collection, per file", zstd_ms);
    println!("{:<52} {:>10.1}", "gdalwarp -r bilinear, same file, same grid", warp);
    println!("{:<52} {:>10.1}", "earlier PixelQuery (published)", EARLIER_S * 1e3);
    println!(
        "ratio gdalwarp / ours = {:.2}; earlier / ours = {:.1}; goals <= 40 ms directory, <= 55 ms one by one: {}",
        warp / ours,
        EARLIER_S * 1e3 / ours,
        if dir_ms <= 40.0 && ours <= 55.0 { "met" } else { "not met" }
    );
    // For scripts/bench.sh.
    println!("stored chunk bytes per byte of source COG: {plain_ratio:.2} uncompressed, {zstd_ratio:.2} zstd");
    println!(
        "RESULT cog_ms={ours:.2} cog_gdalwarp_ms={warp:.2} cog_server_ms={:.2} cog_read_ms={read_ms:.2} cog_dir_ms={dir_ms:.2} cog_dir_cpu_ms={dir_cpu:.2} cog_zstd_dir_ms={zstd_ms:.2} cog_plain_ratio={plain_ratio:.3} cog_zstd_ratio={zstd_ratio:.3}",
        median(server_ms)
    );
}
