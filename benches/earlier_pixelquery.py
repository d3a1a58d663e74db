"""Row 6 anchor measured rather than quoted: the earlier PixelQuery (PyPI
`pixelquery==0.1.0`) ingesting the same directory of COGs in the same run.

In its own venv (created with pinned versions if missing or different), a
child process of that venv's python times, after an untimed warm-up ingest:
  dir     `pq.ingest(DIR)`, one call over the directory (median of --reps,
          each into a fresh store), total / files;
  file    `pq.ingest(FILE)` once per file into one store, median per file;
  legacy  `IngestionPipeline(storage_backend="arrow").ingest_cog` per file,
          library default workers; legacy_1w the same with max_workers=1;
  iceberg the same pipeline with storage_backend="iceberg" (median per file).
Nothing connects to the network after the venv exists.

    python benches/earlier_pixelquery.py --cogs DIR [--venv DIR] [--bands blue,green,red,nir] [--skip-legacy]
"""

import argparse, json, os, pathlib, shutil, statistics, subprocess, sys, tempfile, time

PINS = ["pixelquery[icechunk,legacy]==0.1.0", "icechunk==1.1.21", "virtualizarr==2.5.1", "virtual-tiff==0.5.0",
        "async-tiff==0.7.2", "zarr==3.1.6", "numcodecs==0.16.6", "obstore==0.12.1", "obspec-utils==0.9.0",
        "imagecodecs==2026.3.6", "rasterio==1.4.4", "numpy==2.4.6", "xarray==2026.9.0", "dask==2026.8.0",
        "pandas==3.1.1", "pyarrow==26.0.1", "scipy==1.17.1", "geopandas==1.2.0", "shapely==2.2.0",
        "pyiceberg==0.12.0", "duckdb==2.0.1", "SQLAlchemy==2.1.9"]


def store_bytes(path):
    return sum(p.stat().st_size for p in pathlib.Path(path).rglob("*") if p.is_file())


def child(a):
    import logging, warnings
    warnings.simplefilter("ignore")
    logging.disable(logging.ERROR)
    import pixelquery as pq
    from pixelquery.io.auto_ingest import _parse_date_from_filename
    work, files, bands = pathlib.Path(a.store), sorted(pathlib.Path(a.cogs).glob(a.glob)), a.bands.split(",")
    n = len(files)
    out = {"files": n, "mb": sum(f.stat().st_size for f in files) / n / 1e6}
    if a.child == "virtual":
        ingest = pq.ingest
        ingest(str(files[0]), warehouse=str(work / "warm"), band_names=bands, product_id="bench")
        dir_ms = []
        for rep in range(a.reps):
            t = time.perf_counter()
            r = ingest(a.cogs, warehouse=str(work / f"dir{rep}"), band_names=bands, product_id="bench", glob_pattern=a.glob)
            dir_ms.append((time.perf_counter() - t) * 1e3 / n)
            if r.scene_count != n or r.errors or len(list((work / f"dir{rep}/.icechunk/snapshots").iterdir())) != 2:
                raise SystemExit(f"directory ingest was not one batch commit of {n} scenes: {r} {r.errors[:3]}")
        file_ms = []
        for f in files:
            t = time.perf_counter()
            r = ingest(str(f), warehouse=str(work / "file"), band_names=bands, product_id="bench")
            file_ms.append((time.perf_counter() - t) * 1e3)
            if r.scene_count != 1 or r.errors:
                raise SystemExit(f"{f}: {r.errors}")
        out.update(dir_ms=statistics.median(dir_ms), file_ms=statistics.median(file_ms), store_kb=store_bytes(work / "dir0") / 1e3)
    else:
        from pixelquery.grid.tile_grid import FixedTileGrid
        from pixelquery.io.ingest import RUST_RESAMPLE_AVAILABLE, IngestionPipeline
        backend, workers = a.child.split(":")
        p = IngestionPipeline(str(work / a.child.replace(":", "_")), FixedTileGrid(),
                              max_workers=int(workers) or None, storage_backend=backend)
        ms, tiles = [], 0
        for f in files:
            t = time.perf_counter()
            tiles += len(p.ingest_cog(str(f), _parse_date_from_filename(f.name), "bench", dict(enumerate(bands, 1))))
            ms.append((time.perf_counter() - t) * 1e3)
        if tiles == 0:
            raise SystemExit(f"{a.child}: no tile written")
        out.update(ms=statistics.median(ms), tiles=tiles / n, rust=RUST_RESAMPLE_AVAILABLE,
                   store_mb=store_bytes(work / a.child.replace(":", "_")) / 1e6)
    print(json.dumps(out))


def ensure_venv(venv):
    py = venv / "bin" / "python"
    check = ("import importlib.metadata as m, sys\nfor s in sys.argv[1:]:\n n, v = s.split('==')\n"
             " try: ok = m.version(n.split('[')[0]) == v\n except m.PackageNotFoundError: ok = False\n"
             " ok or sys.exit(1)")
    if py.exists() and subprocess.run([str(py), "-c", check, *PINS]).returncode == 0:
        return py
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *PINS], check=True)
    return py


def run(py, mode, a, store):
    cmd = [str(py), __file__, "--child", mode, "--cogs", a.cogs, "--bands", a.bands, "--glob", a.glob,
           "--reps", str(a.reps), "--store", store]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if p.returncode != 0:
        sys.exit(f"earlier PixelQuery {mode} failed:\n{p.stderr[-3000:]}{p.stdout[-1000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main():
    bench = os.environ.get("PIXELQUERY_BENCH_DIR")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--venv", default=os.path.join(bench or tempfile.gettempdir(), "earlier-venv"))
    ap.add_argument("--cogs", required=True, help="directory of the COGs")
    ap.add_argument("--bands", default="blue,green,red,nir")
    ap.add_argument("--glob", default="*.tif", help="which files of --cogs to ingest")
    ap.add_argument("--reps", type=int, default=3, help="repeats of the directory ingest")
    ap.add_argument("--skip-legacy", action="store_true", help="only the default (virtual) path")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a)
    a.cogs = str(pathlib.Path(a.cogs).resolve())
    py = ensure_venv(pathlib.Path(a.venv).resolve())
    store = tempfile.mkdtemp(prefix="earlier-pq-", dir=bench)
    try:
        v = run(py, "virtual", a, store)
        res = {"earlier_pq_dir_ms": v["dir_ms"], "earlier_pq_file_ms": v["file_ms"]}
        print(f"MODE dir/file: pq.ingest, its default path: Icechunk virtual references; per file rasterio reads the header "
              f"(CRS, bounds), virtual-tiff lists IFD 0's tile byte ranges and they go into a local Icechunk repo; "
              f"dir = one call, one commit for {v['files']} files; file = one call and one commit per file")
        print(f"NOTE dir/file copy, decode, reproject and grid no pixels: the store holds only references to the COGs "
              f"({v['store_kb']:.0f} kB for {v['files']} files of {v['mb']:.1f} MB); pixels are decoded from the original "
              f"COGs at query time, on each scene's own pixel grid. Not the same work as our read + warp + commit.")
        if not a.skip_legacy:
            for key, mode in (("legacy", "arrow:0"), ("legacy_1w", "arrow:1"), ("iceberg", "iceberg:1")):
                r = run(py, mode, a, store)
                res[f"earlier_pq_{key}_ms"] = r["ms"]
            print(f"MODE legacy: pixelquery.io.ingest.IngestionPipeline (extra 'legacy'; pq.ingest does not use it), one "
                  f"ingest_cog per file: reads each 2.56 km tile's window (the UTM box of the WGS84 tile) with rasterio, "
                  f"rescales it to 256x256 with scipy zoom (bilinear, axis-aligned, no per-pixel reprojection; Rust "
                  f"core {'used' if r['rust'] else 'not published, scipy fallback'}), {r['tiles']:.0f} tile-bands per file; "
                  f"legacy = Arrow IPC file per tile/month/band rewritten on append + GeoParquet, library default workers "
                  f"({os.cpu_count()}, a process pool per file); legacy_1w = same, one worker; iceberg = pyiceberg table, "
                  f"SQLite catalog, sequential")
        print("RESULT " + " ".join(f"{k}={x:.2f}" for k, x in res.items()))
    finally:
        shutil.rmtree(store, ignore_errors=True)


if __name__ == "__main__":
    main()
