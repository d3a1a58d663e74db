//! Row 10 of the benchmark table: NDVI with the Sentinel-2 QA mask and
//! scale over one 256 x 256 tile x 365 dates, evaluated the way the server
//! evaluates each observation of a tile answer (mask, scale, compute;
//! `query::observation`), two threads taking alternate dates. The inputs
//! are arrays in memory, as numexpr's and numpy's are in `suite.py`, which
//! builds the same arrays from the same formulas.
//!
//! Prints `RESULT steps_mpxs=<million pixels per second>`.

use std::sync::Arc;
use std::time::Instant;

use arrow_array::{ArrayRef, UInt16Array};
use pixelquery::collection::{profile, Collection, GridDoc};
use pixelquery::query::{observation, BandPixels, Outputs};

const N: usize = 256;
const DATES: usize = 365;

/// The bench arrays (also in `suite.py`): red, nir and SCL of date `d`.
fn date(d: usize) -> [Vec<u16>; 3] {
    let red = (0..N * N).map(|i| (1000 + (i * 7 + d * 13) % 2000) as u16).collect();
    let nir = (0..N * N).map(|i| (2000 + (i * 3 + d * 29) % 3000) as u16).collect();
    let scl = (0..N * N).map(|i| if (i / N + d * 40) % 160 < 40 { 9 } else { 4 }).collect();
    [red, nir, scl]
}

fn main() {
    let p = profile("sentinel2_l2a").unwrap();
    let meta = Collection {
        name: "bench".into(),
        profile: Some("sentinel2_l2a".into()),
        bands: p.bands.clone(),
        grid: GridDoc { crs: "EPSG:3857".into(), crs_wkt: String::new(), tile_span: 2560.0, resolution: 10.0, tile_px: N as u32, pixel_size: 10.0 },
        qa: Some(p.qa.clone()),
        compression: Default::default(),
        compression_level: None,
    };
    let spec = pixelquery::wire::decode_query(
        "ticket",
        br#"{"collection": "bench", "bands": ["ndvi"], "mask": "qa", "scale": true, "compute": {"ndvi": "(nir - red) / (nir + red)"}}"#,
    )
    .unwrap();
    let out = Outputs::resolve(&meta, &spec).unwrap();
    let names: Vec<&str> = out.inputs.iter().map(|b| b.name.as_str()).collect();
    let data: Vec<Vec<ArrayRef>> = (0..DATES)
        .map(|d| {
            let [red, nir, scl] = date(d);
            names
                .iter()
                .map(|n| {
                    let v = match *n {
                        "red" => red.clone(),
                        "nir" => nir.clone(),
                        _ => scl.clone(),
                    };
                    Arc::new(UInt16Array::from(v)) as ArrayRef
                })
                .collect()
        })
        .collect();
    let run = |first: usize| {
        let mut valid = 0usize;
        for d in (first..DATES).step_by(2) {
            let inputs = data[d].iter().map(|a| Some(BandPixels { values: a.clone(), valid: vec![true; N * N] })).collect();
            let outputs = observation(&out, &meta, inputs, N * N, Some("04.00"), 1_718_416_984_000);
            valid += outputs[0].1.iter().filter(|v| **v).count();
        }
        valid
    };
    run(0);
    let mut best = f64::INFINITY;
    let mut valid = 0;
    for _ in 0..5 {
        let t = Instant::now();
        valid = std::thread::scope(|s| {
            let a = s.spawn(|| run(0));
            let b = s.spawn(|| run(1));
            a.join().unwrap() + b.join().unwrap()
        });
        best = best.min(t.elapsed().as_secs_f64());
    }
    let mpx = (DATES * N * N) as f64 / 1e6;
    println!("NDVI + QA mask + scale, {N}x{N} x {DATES} dates: best of 5 {:.3} s, {:.0} Mpx/s, {valid} valid", best, mpx / best);
    println!("RESULT steps_mpxs={:.1} steps_valid={valid}", mpx / best);
}
