//! End to end: a 1024 x 1024 uint16 raster in EPSG:32652 goes in with DoPut
//! (nearest) and every tile read back with DoGet matches `gdalwarp -r near`
//! of the same raster onto that tile's grid; point queries return the pixel's
//! value for each time.

mod common;

use std::process::Command;

use arrow_array::cast::AsArray;
use arrow_array::types::{TimestampMillisecondType, UInt16Type};
use arrow_array::Array;
use common::*;
use gdal::raster::Buffer;
use gdal::DriverManager;
use pixelquery::crs;
use pixelquery::grid::{GridSpec, TileId, DEFAULT_GRID_CRS};
use pixelquery_client::proto;

const SIZE: usize = 1024;
const T1: i64 = 1718416984000; // 2024-06-15T02:03:04Z
const T2: i64 = 1719799384000; // 2024-07-01T02:03:04Z

fn write_geotiff(path: &std::path::Path, values: &[u16], gt: [f64; 6]) {
    let driver = DriverManager::get_driver_by_name("GTiff").unwrap();
    let mut ds = driver.create_with_band_type::<u16, _>(path, SIZE, SIZE, 1).unwrap();
    ds.set_geo_transform(&gt).unwrap();
    ds.set_spatial_ref(&gdal::spatial_ref::SpatialRef::from_epsg(32652).unwrap()).unwrap();
    let mut band = ds.rasterband(1).unwrap();
    band.set_no_data_value(Some(0.0)).unwrap();
    let mut buf = Buffer::new((SIZE, SIZE), values.to_vec());
    band.write((0, 0), (SIZE, SIZE), &mut buf).unwrap();
}

/// gdalwarp of `src` onto one tile of the 10 m default grid.
fn gdalwarp_tile(src: &std::path::Path, grid: &GridSpec, tile: TileId, dir: &std::path::Path) -> Vec<u16> {
    let out = dir.join(format!("{tile}.tif"));
    let b = grid.tile_bounds(tile);
    let n = grid.tile_px.to_string();
    let status = Command::new("gdalwarp")
        .args(["-q", "-overwrite", "-r", "near", "-t_srs", DEFAULT_GRID_CRS, "-srcnodata", "0", "-dstnodata", "0", "-ts", &n, &n, "-te"])
        .args(b.iter().map(|v| v.to_string()))
        .arg(src)
        .arg(&out)
        .status()
        .expect("gdalwarp runs (apt-get install gdal-bin)");
    assert!(status.success());
    let ds = gdal::Dataset::open(&out).unwrap();
    let px = grid.tile_px as usize;
    ds.rasterband(1).unwrap().read_as::<u16>((0, 0), (px, px), (px, px), None).unwrap().data().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiles_match_gdalwarp_and_points_return_pixel_values() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    create_red_collection(&mut client, "s2").await;

    let gt = utm_geotransform(SIZE);
    let scene1 = raster(SIZE, 0);
    let put = client.ingest(&ingest_request("s2", "scene-1", T1, gt, SIZE, "nearest"), red_batches(scene1.clone(), SIZE)).await.unwrap();
    assert!(!put.duplicate);
    assert!(put.tiles.contains(&"x4380_y1632".to_string()), "tiles: {:?}", put.tiles);
    assert_eq!(put.observations as usize, put.tiles.len());
    // A second date with other values, for the point series.
    let put2 = client.ingest(&ingest_request("s2", "scene-2", T2, gt, SIZE, "nearest"), red_batches(raster(SIZE, 1000), SIZE)).await.unwrap();
    assert_eq!(put2.tiles, put.tiles);

    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src.tif");
    write_geotiff(&src, &scene1, gt);
    let grid = GridSpec::default_at(10.0).unwrap();
    let (mut agree, mut valid_union, mut hole_checked) = (0usize, 0usize, false);
    for tile in &put.tiles {
        let query = proto::Query { collection: "s2".into(), tiles: vec![tile.clone()], end_ms: Some(T1 + 1), ..Default::default() };
        let batches = client.query(&query).await.unwrap();
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows, 1, "one observation of scene-1 in tile {tile}");
        let b = &batches[0];
        assert_eq!(b.column_by_name("tile_id").unwrap().as_string::<i32>().value(0), tile);
        let pixels = b.column_by_name("pixels").unwrap().as_list::<i32>().value(0);
        let pixels = pixels.as_primitive::<UInt16Type>().values().to_vec();
        let mask = b.column_by_name("mask").unwrap().as_list::<i32>().value(0);
        let mask: Vec<bool> = mask.as_boolean().iter().map(|v| v.unwrap()).collect();
        let tile_id: TileId = tile.parse().unwrap();
        let expected = gdalwarp_tile(&src, &grid, tile_id, work.path());
        for k in 0..expected.len() {
            let gdal_valid = expected[k] != 0;
            if gdal_valid || mask[k] {
                valid_union += 1;
                if gdal_valid && mask[k] && expected[k] == pixels[k] {
                    agree += 1;
                }
            }
        }
        // The nodata hole (source rows 400..480, cols 300..420) is masked.
        let (hx, hy) = (gt[0] + 360.5 * 10.0, gt[3] - 440.5 * 10.0);
        let (mut x, mut y) = ([hx], [hy]);
        let to_grid = crs::Transformer::new(&crs::spatial_ref("t", "EPSG:32652").unwrap(), &crs::spatial_ref("t", DEFAULT_GRID_CRS).unwrap()).unwrap();
        to_grid.transform(&mut x, &mut y);
        if grid.tile_of(x[0], y[0]) == tile_id {
            let (c, r) = grid.pixel_of(tile_id, x[0], y[0]).unwrap();
            assert!(!mask[r as usize * 256 + c as usize], "the hole's centre must be masked");
            hole_checked = true;
        }
    }
    assert!(hole_checked);
    let ratio = agree as f64 / valid_union as f64;
    eprintln!("nearest vs gdalwarp: {agree} of {valid_union} valid pixels equal ({:.4} %)", ratio * 100.0);
    assert!(ratio >= 0.999, "only {:.4} % of valid pixels equal gdalwarp", ratio * 100.0);

    // Point query at a known lon/lat: the value of the grid pixel holding it.
    let (lon, lat) = (127.05, 37.55);
    let q = proto::Query { collection: "s2".into(), point: vec![lon, lat], ..Default::default() };
    let batches = client.point(&q).await.unwrap();
    assert_eq!(batches.len(), 1);
    let b = &batches[0];
    assert_eq!(b.num_rows(), 2);
    let times = b.column_by_name("time").unwrap().as_primitive::<TimestampMillisecondType>();
    assert_eq!((times.value(0), times.value(1)), (T1, T2));
    assert_eq!(b.column_by_name("tile_id").unwrap().as_string::<i32>().value(0), "x4380_y1632");
    let values = b.column_by_name("red").unwrap().as_primitive::<UInt16Type>();
    let valid = b.column_by_name("red_valid").unwrap().as_boolean();
    // Expected: the grid pixel's centre mapped to the source, nearest pixel.
    let from = crs::spatial_ref("t", "EPSG:4326").unwrap();
    let sinu = crs::spatial_ref("t", DEFAULT_GRID_CRS).unwrap();
    let (mut x, mut y) = ([lon], [lat]);
    crs::Transformer::new(&from, &sinu).unwrap().transform(&mut x, &mut y);
    let tile = grid.tile_of(x[0], y[0]);
    let (c, r) = grid.pixel_of(tile, x[0], y[0]).unwrap();
    let tgt = grid.tile_geotransform(tile);
    let (mut cx, mut cy) = ([tgt[0] + (c as f64 + 0.5) * tgt[1]], [tgt[3] + (r as f64 + 0.5) * tgt[5]]);
    crs::Transformer::new(&sinu, &crs::spatial_ref("t", "EPSG:32652").unwrap()).unwrap().transform(&mut cx, &mut cy);
    let (sc, sr) = (((cx[0] - gt[0]) / 10.0).floor() as usize, ((gt[3] - cy[0]) / 10.0).floor() as usize);
    assert!(valid.value(0) && valid.value(1));
    assert_eq!(values.value(0), pattern(sr, sc, 0));
    assert_eq!(values.value(1), pattern(sr, sc, 1000));
    assert!(!values.is_null(0));

    server.shutdown().await;
}
