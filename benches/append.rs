//! Append cost against chunk size: the median cost of committing one
//! 256 x 256 uint16 observation with its mask (write, fsync, catalog log
//! record, fsync) to a chunk already holding 0, 10, 100 and 1000
//! observations, measured side by side in one run. Goal: 1000:0 <= 1.5.
//!
//! `cargo bench --bench append` (release build; about a minute).

use std::sync::Arc;
use std::time::Instant;

use arrow_array::{ArrayRef, BooleanArray, UInt16Array};
use pixelquery::grid::TileId;
use pixelquery::storage::{Observation, Warehouse};
use pixelquery::wire::build_collection;
use pixelquery_proto::v1 as pb;

/// The earlier PixelQuery 0.1.0 (PyPI), measured on this machine kind and
/// given in the issue: its append rewrote the whole chunk.
const EARLIER_MS: [(usize, f64); 2] = [(100, 17.0), (1000, 140.0)];
const SAMPLES: usize = 31;

fn observation(tile: TileId, seed: u16) -> Observation {
    let n = 256 * 256;
    let pixels: ArrayRef = Arc::new(UInt16Array::from_iter_values((0..n).map(|i| (i as u16).wrapping_mul(31).wrapping_add(seed) | 1)));
    let mask = BooleanArray::from((0..n).map(|i| i % 17 != 0).collect::<Vec<_>>());
    Observation { tile, band: "red".into(), pixels, mask }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let dir = tempfile::tempdir_in(std::env::var("PIXELQUERY_BENCH_DIR").unwrap_or_else(|_| ".".into())).expect("temp dir");
    let wh = Warehouse::open(dir.path()).expect("warehouse");
    let meta = build_collection(pb::CreateCollection {
        name: "bench".into(),
        bands: vec![pb::BandSpec { name: "red".into(), dtype: "uint16".into(), nodata: Some(0.0), ..Default::default() }],
        grid: Some(pb::GridSpec { resolution: 10.0, ..Default::default() }),
        ..Default::default()
    })
    .expect("collection");
    let store = wh.create_collection(meta).expect("create");
    const T0: i64 = 1717200000000; // June 2024: every append lands in one month
    let mut scene = 0u64;
    let mut next = || {
        scene += 1;
        format!("scene-{scene}")
    };
    let mut results = Vec::new();
    for (i, held) in [0usize, 10, 100, 1000].into_iter().enumerate() {
        let mut samples = Vec::with_capacity(SAMPLES);
        if held == 0 {
            // Each sample appends to a chunk of its own, new and empty (this
            // includes creating its file and directories).
            for s in 0..SAMPLES {
                let obs = observation(TileId::new(10 + s as i64, 900), s as u16);
                let t = Instant::now();
                store.append_scene(&next(), T0, vec![obs]).expect("append");
                samples.push(t.elapsed().as_secs_f64() * 1e3);
            }
        } else {
            let tile = TileId::new(i as i64, 0);
            for k in 0..held {
                store.append_scene(&next(), T0 + k as i64, vec![observation(tile, k as u16)]).expect("fill");
            }
            for s in 0..SAMPLES {
                let obs = observation(tile, s as u16);
                let t = Instant::now();
                store.append_scene(&next(), T0 + (held + s) as i64, vec![obs]).expect("append");
                samples.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        results.push((held, median(samples)));
    }
    println!("append one 256x256 uint16 observation + mask, durable (median of {SAMPLES})");
    println!("{:>22} {:>12} {:>22}", "observations in chunk", "ms", "earlier PixelQuery ms");
    for (held, ms) in &results {
        let earlier = EARLIER_MS.iter().find(|(h, _)| h == held).map(|(_, m)| format!("{m:.0}")).unwrap_or_else(|| "-".into());
        println!("{held:>22} {ms:>12.3} {earlier:>22}");
    }
    println!("ratio 1000:0 = {:.2} (goal <= 1.5; the 0 case also creates the chunk's file and directories)", results[3].1 / results[0].1);
    println!("ratio 1000:10 = {:.2}", results[3].1 / results[1].1);
    for (held, earlier) in EARLIER_MS {
        let ours = results.iter().find(|(h, _)| *h == held).map(|r| r.1).unwrap_or(f64::NAN);
        println!("at {held}: {:.1}x faster than the earlier PixelQuery's {earlier:.0} ms", earlier / ours);
    }
    // For scripts/bench.sh.
    println!("RESULT append_ms_0={:.4} append_ms_1000={:.4}", results[0].1, results[3].1);
}
