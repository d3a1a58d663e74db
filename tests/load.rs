//! Load: 32 concurrent clients against the real `pixelquery` binary on
//! loopback for `PIXELQUERY_LOAD_SECS` (default 60) seconds: 8 write scenes
//! with DoPut, 24 read (GetFlightInfo + DoGet over a time window, point time
//! series). Zero errors allowed; the server's resident memory after warm-up
//! must stay flat; p50/p99 per call kind are printed.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use pixelquery_client::{proto, Client};

const SIZE: usize = 128;
const T0: i64 = 1_700_000_000_000;
const MINUTE: i64 = 60_000;

/// `(anonymous, file-backed)` resident KiB of a process. File-backed pages
/// are chunk files mapped for point reads: page cache the kernel reclaims,
/// not the server's own memory.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok()).unwrap_or(0);
    (field("RssAnon:"), field("RssFile:"))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[derive(Default)]
struct Latencies {
    put: Vec<f64>,
    query: Vec<f64>,
    point: Vec<f64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_clients_for_a_minute_without_an_error() {
    let env = |name: &str, default: u64| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let secs = env("PIXELQUERY_LOAD_SECS", 60);
    let (writers, readers) = (env("PIXELQUERY_LOAD_WRITERS", 8) as usize, env("PIXELQUERY_LOAD_READERS", 24) as usize);
    let dir = tempfile::tempdir().unwrap();
    let (mut child, uri) = spawn_server(serve_command(&dir.path().join("wh")).env("RUST_LOG", "warn"));
    let pid = child.id();

    let mut admin = Client::connect(&uri).await.unwrap();
    create_red_collection(&mut admin, "load").await;
    let gt = utm_geotransform(SIZE);
    let batches = red_batches(raster(SIZE, 0), SIZE);
    let (lon, lat) = (127.05, 37.55);

    let started = Instant::now();
    let end = started + Duration::from_secs(secs);
    let scenes = Arc::new(AtomicU64::new(0));
    let lat_all = Arc::new(Mutex::new(Latencies::default()));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for w in 0..writers + readers {
        let (uri, scenes, lat_all, errors, batches) = (uri.clone(), scenes.clone(), lat_all.clone(), errors.clone(), batches.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(&uri).await.expect("connect");
            let mut mine = Latencies::default();
            let mut i = 0u64;
            while Instant::now() < end {
                i += 1;
                let t = Instant::now();
                let result = if w < writers {
                    let n = scenes.fetch_add(1, Ordering::Relaxed) as i64;
                    let req = ingest_request("load", &format!("scene-{n}"), T0 + n * MINUTE, gt, SIZE, "nearest");
                    let r = client.ingest(&req, batches.clone()).await.map(|_| ());
                    mine.put.push(t.elapsed().as_secs_f64() * 1e3);
                    r
                } else if i.is_multiple_of(3) {
                    let q = proto::Query { collection: "load".into(), point: vec![lon, lat], ..Default::default() };
                    let r = client.point(&q).await.map(|_| ());
                    mine.point.push(t.elapsed().as_secs_f64() * 1e3);
                    r
                } else {
                    // A ten-minute window among the scenes written so far.
                    let done = scenes.load(Ordering::Relaxed).max(1) as i64;
                    let from = T0 + ((i as i64 * 7919 + w as i64 * 104_729) % done) * MINUTE;
                    let q = proto::Query {
                        collection: "load".into(),
                        bbox: vec![lon - 0.005, lat - 0.005, lon + 0.005, lat + 0.005],
                        start_ms: Some(from),
                        end_ms: Some(from + 10 * MINUTE),
                        ..Default::default()
                    };
                    let r = client.query(&q).await.map(|_| ());
                    mine.query.push(t.elapsed().as_secs_f64() * 1e3);
                    r
                };
                if let Err(e) = result {
                    errors.lock().unwrap().push(e.to_string());
                }
            }
            let mut all = lat_all.lock().unwrap();
            all.put.extend(mine.put);
            all.query.extend(mine.query);
            all.point.extend(mine.point);
        }));
    }
    // Resident memory once a second; warm-up is the first quarter.
    let mut rss = Vec::new();
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss.push((started.elapsed().as_secs_f64(), rss_kib(pid)));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let _ = child.kill();
    let _ = child.wait();

    let lat = std::mem::take(&mut *lat_all.lock().unwrap());
    eprintln!("load: {secs} s, {writers} writers + {readers} readers, {} scenes written", scenes.load(Ordering::Relaxed));
    for (name, mut v) in [("DoPut 128x128", lat.put), ("GetFlightInfo+DoGet window", lat.query), ("point series DoGet", lat.point)] {
        v.sort_by(f64::total_cmp);
        eprintln!("  {name:28} n={:6}  p50 {:8.2} ms  p99 {:8.2} ms", v.len(), percentile(&v, 0.5), percentile(&v, 0.99));
    }
    // Flat: no trend after warm-up (the first quarter). In-flight calls
    // make it swing, so compare the highest reading of the last third with
    // the highest of the second quarter (anonymous memory).
    let in_range = |a: f64, b: f64| rss.iter().filter(|(t, _)| *t >= secs as f64 * a && *t < secs as f64 * b).map(|(_, r)| r.0).max().unwrap_or(0);
    let (early, late) = (in_range(0.25, 0.5), in_range(0.67, 1.01));
    let all_peak = rss.iter().map(|(_, r)| r.0).max().unwrap_or(0);
    let file_peak = rss.iter().map(|(_, r)| r.1).max().unwrap_or(0);
    eprintln!(
        "  server RSS (anonymous): peak after warm-up {} MiB (2nd quarter), {} MiB (last third); overall peak {} MiB; mapped chunk pages peak {} MiB",
        early / 1024,
        late / 1024,
        all_peak / 1024,
        file_peak / 1024
    );
    let errors = errors.lock().unwrap();
    assert!(errors.is_empty(), "{} errors, first: {:?}", errors.len(), errors.first());
    assert!(late <= early + early / 4 + 32 * 1024, "RSS grew after warm-up: {early} KiB -> {late} KiB");
}
