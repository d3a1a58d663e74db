//! Resampling kernels against `gdalwarp` on the same input and target grid:
//! cubic from EPSG:32652 onto the default sinusoidal grid, bilinear and
//! cubic from EPSG:4326 onto it and from EPSG:3857 onto a UTM collection
//! grid, and average and mode of a 3 m raster down to a 10 m UTM collection
//! grid, each with a nodata hole.
//!
//! gdalwarp widens bilinear and cubic when downsampling by a scale it
//! derives per warp chunk from the chunk's window (clipped at the raster's
//! edges), so a tile only partly covered gets another kernel than a full
//! one. The server uses one scale per scene (`warp::scene_scale`, seamless
//! tiles); the reference runs are given that scale (`-wo XSCALE/YSCALE`).

mod common;

use std::path::Path;
use std::process::Command;

use arrow_array::cast::AsArray;
use arrow_array::types::{UInt16Type, UInt8Type};
use arrow_array::{ArrayRef, UInt16Array, UInt8Array};
use common::*;
use gdal::raster::{Buffer, GdalType};
use gdal::DriverManager;
use pixelquery::grid::{GridSpec, TileId};
use pixelquery_client::proto;

fn write_tif<T: GdalType + Copy>(path: &Path, values: &[T], w: usize, h: usize, gt: [f64; 6], crs: &str) {
    let driver = DriverManager::get_driver_by_name("GTiff").unwrap();
    let mut ds = driver.create_with_band_type::<T, _>(path, w, h, 1).unwrap();
    ds.set_geo_transform(&gt).unwrap();
    ds.set_spatial_ref(&gdal::spatial_ref::SpatialRef::from_definition(crs).unwrap()).unwrap();
    let mut band = ds.rasterband(1).unwrap();
    band.set_no_data_value(Some(0.0)).unwrap();
    band.write((0, 0), (w, h), &mut Buffer::new((w, h), values.to_vec())).unwrap();
}

/// The kernel scale the server uses for a scene (see the module docs).
fn scene_scale(crs: &str, gt: [f64; 6], size: usize, grid: &GridSpec) -> (f64, f64) {
    use pixelquery::crs::{spatial_ref, Transformer};
    use pixelquery::warp;
    let (from, to) = (spatial_ref("t", crs).unwrap(), spatial_ref("t", &grid.crs).unwrap());
    let src = warp::SourceGeometry::try_new(size, size, gt).unwrap();
    let placement = warp::placement(&src, grid, from == to);
    warp::scene_scale(grid, &src, &Transformer::new(&from, &to).unwrap(), &Transformer::new(&to, &from).unwrap(), placement)
}

fn gdalwarp<T: GdalType + Copy>(src: &Path, out: &Path, method: &str, t_srs: &str, grid: &GridSpec, tile: TileId, scale: (f64, f64)) -> Vec<T> {
    let b = grid.tile_bounds(tile);
    let n = grid.tile_px.to_string();
    let (xscale, yscale) = (format!("XSCALE={}", scale.0), format!("YSCALE={}", scale.1));
    let ok = Command::new("gdalwarp")
        .args(["-q", "-overwrite", "-r", method, "-t_srs", t_srs, "-srcnodata", "0", "-dstnodata", "0", "-wo", &xscale, "-wo", &yscale, "-ts", &n, &n, "-te"])
        .args(b.iter().map(|v| v.to_string()))
        .arg(src)
        .arg(out)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let px = grid.tile_px as usize;
    gdal::Dataset::open(out).unwrap().rasterband(1).unwrap().read_as::<T>((0, 0), (px, px), (px, px), None).unwrap().data().to_vec()
}

/// Pixels valid in both within 1 DN; masks equal away from mask edges.
struct Agreement {
    within_one: usize,
    both_valid: usize,
    mask_equal: usize,
    mask_compared: usize,
}

fn compare(ours: &[f64], mask: &[bool], gdal: &[f64], n: usize, acc: &mut Agreement) {
    let gv = |r: usize, c: usize| gdal[r * n + c] != 0.0;
    for r in 0..n {
        for c in 0..n {
            let k = r * n + c;
            if mask[k] && gv(r, c) {
                acc.both_valid += 1;
                if (ours[k] - gdal[k]).abs() <= 1.0 {
                    acc.within_one += 1;
                }
            }
            // The one-pixel ring around any mask edge (and the tile border)
            // is where kernels may legitimately disagree.
            let edge =
                r == 0 || c == 0 || r + 1 == n || c + 1 == n || [(r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)].iter().any(|&(a, b)| gv(a, b) != gv(r, c));
            if !edge {
                acc.mask_compared += 1;
                if mask[k] == gv(r, c) {
                    acc.mask_equal += 1;
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_case<T: GdalType + Copy + Into<f64>>(
    collection: serde_json::Value,
    crs: &str,
    gt: [f64; 6],
    size: usize,
    values: Vec<T>,
    column: ArrayRef,
    dtype: &str,
    method: &str,
) -> Agreement {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let desc = client.create_collection(&collection).await.unwrap();
    let grid_crs = desc["grid"]["crs"].as_str().unwrap().to_string();
    let grid = GridSpec::try_new(grid_crs.clone(), desc["grid"]["tile_span"].as_f64().unwrap(), desc["grid"]["resolution"].as_f64().unwrap()).unwrap();
    let name = collection["name"].as_str().unwrap().to_string();
    let req = proto::IngestRequest {
        collection: name.clone(),
        scene_id: "s".into(),
        acquired_at_ms: 0,
        crs: crs.into(),
        geotransform: gt.to_vec(),
        width: size as u32,
        height: size as u32,
        bands: vec![proto::BandSpec { name: "v".into(), dtype: dtype.into(), nodata: Some(0.0), ..Default::default() }],
        resampling: method.into(),
        resampling_by_band: Default::default(),
        ..Default::default()
    };
    let put = client.ingest(&req, pixelquery_client::raster_batches(vec![("v".into(), column)], None, size).unwrap()).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src.tif");
    write_tif(&src, &values, size, size, gt, crs);
    let scale = scene_scale(crs, gt, size, &grid);
    eprintln!("{method} from {crs}: scene kernel scale {scale:?}");
    let mut acc = Agreement { within_one: 0, both_valid: 0, mask_equal: 0, mask_compared: 0 };
    for tile in &put.tiles {
        let t: TileId = tile.parse().unwrap();
        let b = &client.query(&proto::Query { collection: name.clone(), tiles: vec![tile.clone()], ..Default::default() }).await.unwrap()[0];
        let px = b.column_by_name("pixels").unwrap().as_list::<i32>().value(0);
        let ours: Vec<f64> = match dtype {
            "uint8" => px.as_primitive::<UInt8Type>().values().iter().map(|v| *v as f64).collect(),
            _ => px.as_primitive::<UInt16Type>().values().iter().map(|v| *v as f64).collect(),
        };
        let mask: Vec<bool> = b.column_by_name("mask").unwrap().as_list::<i32>().value(0).as_boolean().iter().map(|v| v.unwrap()).collect();
        let gdal: Vec<f64> =
            gdalwarp::<T>(&src, &work.path().join(format!("{tile}.tif")), method, &grid_crs, &grid, t, scale).into_iter().map(Into::into).collect();
        compare(&ours, &mask, &gdal, grid.tile_px as usize, &mut acc);
    }
    server.shutdown().await;
    let pct = |a: usize, b: usize| 100.0 * a as f64 / b.max(1) as f64;
    eprintln!(
        "{method}: {:.3} % of {} pixels valid in both within 1 DN; masks equal on {:.3} % of {} pixels off the edge ring",
        pct(acc.within_one, acc.both_valid),
        acc.both_valid,
        pct(acc.mask_equal, acc.mask_compared),
        acc.mask_compared
    );
    acc
}

fn smooth(size: usize, hole: (std::ops::Range<usize>, std::ops::Range<usize>)) -> Vec<u16> {
    (0..size * size)
        .map(|i| {
            let (r, c) = (i / size, i % size);
            if hole.0.contains(&r) && hole.1.contains(&c) {
                0
            } else {
                (2000.0 + 800.0 * (r as f64 / 23.0).sin() + 600.0 * (c as f64 / 31.0).cos()) as u16
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cubic_from_utm_matches_gdalwarp() {
    let size = 512;
    let values = smooth(size, (200..260, 100..180));
    let column: ArrayRef = std::sync::Arc::new(UInt16Array::from(values.clone()));
    let coll = serde_json::json!({"name": "c", "bands": [{"name": "v", "dtype": "uint16", "nodata": 0}], "grid": {"resolution": 10}});
    let a = run_case(coll, "EPSG:32652", utm_geotransform(size), size, values, column, "uint16", "cubic").await;
    assert!(a.within_one as f64 >= 0.999 * a.both_valid as f64);
    assert!(a.mask_equal as f64 >= 0.999 * a.mask_compared as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn average_and_mode_of_3m_down_to_10m_match_gdalwarp() {
    let size = 1200; // 3.6 km at 3 m
    let (e, n) = utm52(127.05, 37.55);
    let gt = [(e / 30.0).floor() * 30.0 + 1.0, 3.0, 0.0, (n / 30.0).floor() * 30.0 + 2.0, 0.0, -3.0];
    let utm_grid = serde_json::json!({"crs": "EPSG:32652", "tile_span": 2560, "resolution": 10});

    let values = smooth(size, (500..620, 300..400));
    let column: ArrayRef = std::sync::Arc::new(UInt16Array::from(values.clone()));
    let coll = serde_json::json!({"name": "a", "bands": [{"name": "v", "dtype": "uint16", "nodata": 0}], "grid": utm_grid});
    let a = run_case(coll, "EPSG:32652", gt, size, values, column, "uint16", "average").await;
    assert!(a.within_one as f64 >= 0.99 * a.both_valid as f64);

    let classes: Vec<u8> = (0..size * size)
        .map(|i| {
            let (r, c) = (i / size, i % size);
            if (500..620).contains(&r) && (300..400).contains(&c) {
                0
            } else {
                ((r / 9 + c / 13) % 5 + 1) as u8
            }
        })
        .collect();
    let column: ArrayRef = std::sync::Arc::new(UInt8Array::from(classes.clone()));
    let coll = serde_json::json!({"name": "m", "bands": [{"name": "v", "dtype": "uint8", "nodata": 0}], "grid": utm_grid});
    let m = run_case(coll, "EPSG:32652", gt, size, classes, column, "uint8", "mode").await;
    assert!(m.within_one as f64 >= 0.99 * m.both_valid as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adjacent_tiles_have_no_seam() {
    // Bilinear from UTM onto two neighbouring tiles: their edge columns equal
    // one exact (`-et 0`) gdalwarp of the area spanning both tiles. The
    // source is steep (up to ~35 DN per pixel), so a tile computed from a
    // source window clipped at its edge would be off by many DN there.
    let size = 512;
    let values = smooth(size, (0..0, 0..0));
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client
        .create_collection(&serde_json::json!({"name": "s", "bands": [{"name": "v", "dtype": "uint16", "nodata": 0}], "grid": {"resolution": 10}}))
        .await
        .unwrap();
    let gt = utm_geotransform(size);
    let req = proto::IngestRequest {
        collection: "s".into(),
        bands: vec![proto::BandSpec { name: "v".into(), dtype: "uint16".into(), nodata: Some(0.0), ..Default::default() }],
        ..ingest_request("s", "s", 0, gt, size, "bilinear")
    };
    client
        .ingest(
            &req,
            pixelquery_client::raster_batches(vec![("v".into(), std::sync::Arc::new(UInt16Array::from(values.clone())) as ArrayRef)], None, size).unwrap(),
        )
        .await
        .unwrap();
    let (west, east) = (TileId::new(4380, 1632), TileId::new(4381, 1632));
    let read = |b: &arrow_array::RecordBatch| -> Vec<u16> {
        b.column_by_name("pixels").unwrap().as_list::<i32>().value(0).as_primitive::<UInt16Type>().values().to_vec()
    };
    let w = read(&client.query(&proto::Query { collection: "s".into(), tiles: vec![west.to_string()], ..Default::default() }).await.unwrap()[0]);
    let e = read(&client.query(&proto::Query { collection: "s".into(), tiles: vec![east.to_string()], ..Default::default() }).await.unwrap()[0]);
    server.shutdown().await;
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src.tif");
    write_tif(&src, &values, size, size, gt, "EPSG:32652");
    let grid = GridSpec::default_at(10.0).unwrap();
    let [x0, y0, _, y1] = grid.tile_bounds(west);
    let x1 = grid.tile_bounds(east)[2];
    let out = work.path().join("both.tif");
    let scale = scene_scale("EPSG:32652", gt, size, &grid);
    let (xscale, yscale) = (format!("XSCALE={}", scale.0), format!("YSCALE={}", scale.1));
    let ok = Command::new("gdalwarp")
        .args([
            "-q",
            "-et",
            "0",
            "-r",
            "bilinear",
            "-t_srs",
            pixelquery::grid::DEFAULT_GRID_CRS,
            "-srcnodata",
            "0",
            "-dstnodata",
            "0",
            "-wo",
            &xscale,
            "-wo",
            &yscale,
            "-ts",
            "512",
            "256",
            "-te",
        ])
        .args([x0, y0, x1, y1].iter().map(|v| v.to_string()))
        .arg(&src)
        .arg(&out)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let both: Vec<u16> =
        gdal::Dataset::open(&out).unwrap().rasterband(1).unwrap().read_as::<u16>((0, 0), (512, 256), (512, 256), None).unwrap().data().to_vec();
    let (mut compared, mut equal) = (0, 0);
    for r in 0..256 {
        for (ours, theirs) in [(w[r * 256 + 255], both[r * 512 + 255]), (e[r * 256], both[r * 512 + 256])] {
            if ours != 0 && theirs != 0 {
                compared += 1;
                equal += ((ours as i32 - theirs as i32).abs() <= 1) as usize;
            }
        }
    }
    eprintln!("seam: {equal} of {compared} edge pixels within 1 DN of one warp over both tiles");
    assert!(compared > 300, "the raster covers the seam ({compared} pixels)");
    assert!(equal as f64 >= 0.999 * compared as f64);
}

/// A geotransform in `crs` whose top-left corner is at lon 127.02, lat 37.57.
fn corner_geotransform(crs: &str, pixel: f64) -> [f64; 6] {
    let from = pixelquery::crs::spatial_ref("t", "EPSG:4326").unwrap();
    let to = pixelquery::crs::spatial_ref("t", crs).unwrap();
    let (mut x, mut y) = ([127.02], [37.57]);
    pixelquery::crs::Transformer::new(&from, &to).unwrap().transform(&mut x, &mut y);
    [x[0], pixel, 0.0, y[0], 0.0, -pixel]
}

async fn smooth_case(name: &str, epsg: u32, pixel: f64, grid: serde_json::Value, method: &str) -> Agreement {
    let size = 512;
    let values = smooth(size, (200..260, 100..180));
    let column: ArrayRef = std::sync::Arc::new(UInt16Array::from(values.clone()));
    let coll = serde_json::json!({"name": name, "bands": [{"name": "v", "dtype": "uint16", "nodata": 0}], "grid": grid});
    let crs = format!("EPSG:{epsg}");
    run_case(coll, &crs, corner_geotransform(&crs, pixel), size, values, column, "uint16", method).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bilinear_and_cubic_from_lon_lat_match_gdalwarp() {
    // 0.0001 degree pixels: about 8.8 m east-west and 11.1 m north-south.
    for method in ["bilinear", "cubic"] {
        let a = smooth_case("g", 4326, 0.0001, serde_json::json!({"resolution": 10}), method).await;
        assert!(a.within_one as f64 >= 0.999 * a.both_valid as f64, "{method}");
        assert!(a.mask_equal as f64 >= 0.999 * a.mask_compared as f64, "{method}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bilinear_and_cubic_from_web_mercator_to_a_utm_grid_match_gdalwarp() {
    // 12 m Web Mercator pixels are about 9.5 m on the ground at 37.5 N.
    let utm_grid = serde_json::json!({"crs": "EPSG:32652", "tile_span": 2560, "resolution": 10});
    for method in ["bilinear", "cubic"] {
        let a = smooth_case("m", 3857, 12.0, utm_grid.clone(), method).await;
        assert!(a.within_one as f64 >= 0.999 * a.both_valid as f64, "{method}");
        assert!(a.mask_equal as f64 >= 0.999 * a.mask_compared as f64, "{method}");
    }
}

/// A Lambert conformal conic CRS with no EPSG code: WKT is all it has.
const WKT_ONLY: &str = r#"PROJCS["unnamed LCC",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],PROJECTION["Lambert_Conformal_Conic_2SP"],PARAMETER["standard_parallel_1",30],PARAMETER["standard_parallel_2",45],PARAMETER["latitude_of_origin",37],PARAMETER["central_meridian",127],PARAMETER["false_easting",0],PARAMETER["false_northing",0],UNIT["metre",1]]"#;

/// A smooth raster with scattered nodata holes, as clouds masked upstream
/// leave them: discs of radius 0 (one pixel) to 6, at fixed pseudo-random
/// places.
fn holed(size: usize) -> Vec<u16> {
    let mut v = smooth(size, (0..0, 0..0));
    let mut seed = 0x9e37_79b9_u32;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed as usize
    };
    for _ in 0..400 {
        let (r0, c0, rad) = (next() % size, next() % size, next() % 7);
        let rad2 = (rad * rad) as isize;
        for dr in -(rad as isize)..=rad as isize {
            for dc in -(rad as isize)..=rad as isize {
                let (r, c) = (r0 as isize + dr, c0 as isize + dc);
                if dr * dr + dc * dc <= rad2 && (0..size as isize).contains(&r) && (0..size as isize).contains(&c) {
                    v[r as usize * size + c as usize] = 0;
                }
            }
        }
    }
    v
}

/// gdalwarp leaves a target pixel invalid when the source pixel under its
/// centre is invalid, for bilinear and cubic too: nodata areas must not
/// shrink on ingest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masks_around_scattered_holes_match_gdalwarp() {
    let size = 512;
    let values = holed(size);
    let holes = values.iter().filter(|v| **v == 0).count();
    assert!(holes > size * size / 50, "holes cover {holes} pixels");
    for (name, crs, pixel) in [("g", "EPSG:4326", 0.0001), ("w", WKT_ONLY, 9.0)] {
        for method in ["bilinear", "cubic"] {
            let column: ArrayRef = std::sync::Arc::new(UInt16Array::from(values.clone()));
            let coll = serde_json::json!({"name": name, "bands": [{"name": "v", "dtype": "uint16", "nodata": 0}], "grid": {"resolution": 10}});
            let a = run_case(coll, crs, corner_geotransform(crs, pixel), size, values.clone(), column, "uint16", method).await;
            assert!(a.mask_compared > 100_000, "{name} {method}: {} pixels compared", a.mask_compared);
            assert!(a.mask_equal as f64 >= 0.999 * a.mask_compared as f64, "{name} {method}: masks equal on {} of {}", a.mask_equal, a.mask_compared);
            assert!(a.within_one as f64 >= 0.999 * a.both_valid as f64, "{name} {method}");
        }
    }
}
