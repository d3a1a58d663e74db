//! The earlier PixelQuery's resampling micro-case: a 100 x 100 uint16
//! raster onto one 256 x 256 tile, bilinear, same CRS (its Rust core took
//! 0.22 ms, scipy 0.98 ms by its own report; GDAL's in-process RasterIO
//! 0.14 ms on this machine kind). Goal: at most 0.05 ms. Prints the kernel
//! alone and with the per-tile source coordinates computed, for the
//! separable path the server takes here (same CRS, north-up) and for the
//! general per-pixel kernel (the path of a reprojecting ingest), whose time
//! per output pixel bounds the reprojection throughput.
//!
//! `cargo bench --bench warp_kernel` (release build; a few seconds).

use std::time::Instant;

use pixelquery::collection::Resampling;
use pixelquery::crs;
use pixelquery::grid::{GridSpec, TileId};
use pixelquery::warp::{self, SourceBand, SourceGeometry};

const RUNS: usize = 2000;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Row 6's warp alone, on this thread: one 1024 x 1024 x 4-band uint16
/// scene in EPSG:32652 (10 m, near lon 127, lat 37.5) onto the default
/// 10 m grid, bilinear, every tile it touches: source coordinates per tile
/// and each band's kernel. Median of 15 runs, in ms.
fn cog_scene_warp() -> f64 {
    const SIZE: usize = 1024;
    let grid = GridSpec::default_at(10.0).expect("grid");
    let src = SourceGeometry::try_new(SIZE, SIZE, [322600.0, 10.0, 0.0, 4162800.0, 0.0, -10.0]).expect("geometry");
    let utm = crs::spatial_ref("crs", "EPSG:32652").expect("srs");
    let sinu = crs::spatial_ref("grid", &grid.crs).expect("srs");
    let (to_grid, to_source) = (crs::Transformer::new(&utm, &sinu).expect("transformer"), crs::Transformer::new(&sinu, &utm).expect("transformer"));
    let placement = warp::placement(&src, &grid, false);
    let scale = warp::scene_scale(&grid, &src, &to_grid, &to_source, placement);
    let tiles: Vec<TileId> = warp::footprint_tiles(&src, &grid, &to_grid).iter().collect();
    let bands: Vec<Vec<u16>> = (0..4).map(|b| (0..SIZE * SIZE).map(|i| ((i / SIZE) * 7 + (i % SIZE) * 3 + b * 500) as u16 % 20000 + 1).collect()).collect();
    let mut runs = Vec::new();
    let mut valid = 0usize;
    for _ in 0..15 {
        let t = Instant::now();
        valid = 0;
        for tile in &tiles {
            let coords = warp::tile_coords(&grid, *tile, &src, &to_source, false, placement, scale);
            if !coords.touches {
                continue;
            }
            // All bands at once, as the server warps them.
            let sources: Vec<SourceBand<'_, u16>> =
                bands.iter().map(|values| SourceBand { values, nodata: Some(0), valid: None, width: SIZE, height: SIZE }).collect();
            for (_, mask) in warp::resample_bands(&sources, &coords, Resampling::Bilinear, &[0; 4]) {
                valid += mask.iter().filter(|m| **m).count();
            }
        }
        runs.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let ms = median(runs);
    println!(
        "{:<48} {:>8.2} ms ({} tiles, {:.1} Mpx valid of 4 bands; scale {:.2} x {:.2})",
        "row 6's scene warp, one thread",
        ms,
        tiles.len(),
        valid as f64 / 1e6,
        scale.0,
        scale.1
    );
    ms
}

fn main() {
    // The server binary's malloc settings.
    pixelquery::pool::tune_malloc();
    // `cargo bench --bench warp_kernel -- scene`: the scene's warp alone
    // (for profiling it).
    if std::env::args().any(|a| a == "scene") {
        cog_scene_warp();
        return;
    }
    let grid = GridSpec::default_at(10.0).expect("grid");
    let tile = TileId::new(4380, 1632);
    let gt = grid.tile_geotransform(tile);
    // 100 x 100 source pixels covering the tile exactly (25.6 m pixels).
    let src = SourceGeometry::try_new(100, 100, [gt[0], 25.6, 0.0, gt[3], 0.0, -25.6]).expect("geometry");
    let values: Vec<u16> = (0..100 * 100).map(|i| (i * 7 % 5000 + 1) as u16).collect();
    let band = SourceBand { values: &values, nodata: Some(0), valid: None, width: 100, height: 100 };
    let srs = crs::spatial_ref("grid", &grid.crs).expect("srs");
    let to_source = crs::Transformer::new(&srs, &srs).expect("transformer");
    let placement = warp::placement(&src, &grid, true);
    assert_eq!(placement, warp::Placement::Axes);
    let time = |placement: warp::Placement, scale: (f64, f64)| {
        let coords = warp::tile_coords(&grid, tile, &src, &to_source, false, placement, scale);
        assert!(coords.touches);
        let (mut kernel, mut total) = (Vec::with_capacity(RUNS), Vec::with_capacity(RUNS));
        let mut checksum = 0u64;
        for _ in 0..RUNS {
            let t = Instant::now();
            let (out, mask) = warp::resample(&band, &coords, Resampling::Bilinear, 0);
            kernel.push(t.elapsed().as_secs_f64() * 1e3);
            checksum += out[1000] as u64 + mask[1000] as u64;
            let t = Instant::now();
            let c = warp::tile_coords(&grid, tile, &src, &to_source, false, placement, scale);
            let (out, _) = warp::resample(&band, &c, Resampling::Bilinear, 0);
            total.push(t.elapsed().as_secs_f64() * 1e3);
            checksum += out[2000] as u64;
        }
        (median(kernel), median(total), checksum)
    };
    let (k, t, sum_axes) = time(placement, (1.0, 1.0));
    let (gk, gt_, sum_general) = time(warp::Placement::General, (1.0, 1.0));
    // The kernel gdalwarp (and the server) widens along x for EPSG:32652 onto
    // the default sinusoidal grid at lon 127 (scale 0.42, 7 x 2 taps).
    let (wk, _, _) = time(warp::Placement::General, (0.42, 1.0));
    println!("100x100 -> 256x256 bilinear, uint16, same CRS (median of {RUNS}; checksums {sum_axes} {sum_general})");
    println!("{:<48} {:>8.4} ms", "separable kernel (resample)", k);
    println!("{:<48} {:>8.4} ms", "separable: source coordinates + kernel", t);
    println!("{:<48} {:>8.4} ms ({:.1} ns per pixel)", "general per-pixel kernel", gk, gk * 1e6 / 65536.0);
    println!("{:<48} {:>8.4} ms", "general: source coordinates + kernel", gt_);
    println!("{:<48} {:>8.4} ms ({:.1} ns per pixel)", "general kernel widened to x scale 0.42", wk, wk * 1e6 / 65536.0);
    println!("{:<48} {:>8.2} ms", "earlier PixelQuery Rust core (published)", 0.22);
    println!(
        "goal <= 0.05 ms: {}",
        if t <= 0.05 {
            "met"
        } else if k <= 0.05 {
            "met by the kernel alone"
        } else {
            "not met"
        }
    );
    let scene_ms = cog_scene_warp();
    // For scripts/bench.sh.
    println!("RESULT cog_scene_warp_ms={scene_ms:.2} micro_kernel_ms={k:.4} micro_total_ms={t:.4} general_kernel_ms={gk:.4} general_total_ms={gt_:.4} widened_kernel_ms={wk:.4}");
}
