"""Rows 8 and 9 of the benchmark table: analysis-ready loads.

Row 8: a 20 km x 20 km, 4-band, 12-date load in UTM 52N at 10 m through
``Client.load``, beside what users would run instead: ``odc.stac.load`` of
the same source rasters as local COGs (STAC items made here with pystac, no
network), and ``gdalwarp -et 0`` over a VRT of the stored tiles (one run per
date and band, timed alone; exporting the tiles is not timed).

Row 9: the server's peak RSS while a client streams a load of 16384 x 16384
output pixels x 4 dates.
"""

from __future__ import annotations

import json
import pathlib
import statistics
import subprocess
import time
import warnings

import numpy as np
import pyarrow.flight as flight

UTM52 = "EPSG:32652"
BANDS = ["blue", "green", "red", "nir"]
DATES = 12
SIDE = 2200  # source scene edge, px of 10 m
X0, Y0 = 300_000.0, 4_200_000.0
BBOX = [X0 + 1000, Y0 - 21000, X0 + 21000, Y0 - 1000]  # 20 km x 20 km


def scene(k: int, b: int) -> np.ndarray:
    rows, cols = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32)
    v = 2000 + 300 * b + 800 * np.sin(rows / (37.0 + k) + b) + 600 * np.cos(cols / (53.0 + 2 * k))
    v = v.astype(np.uint16)
    v[400 + 40 * k:520 + 40 * k, 900:1100] = 0  # a cloud hole
    return v


def write_cogs(work: pathlib.Path):
    """One tiled DEFLATE GeoTIFF per date and band, as Sentinel-2 ships them."""
    import rasterio
    from rasterio.transform import Affine

    paths = {}
    for k in range(DATES):
        for b, name in enumerate(BANDS):
            path = work / f"S2_{k:02d}_{name}.tif"
            with rasterio.open(path, "w", driver="GTiff", width=SIDE, height=SIDE, count=1, dtype="uint16", crs=UTM52, nodata=0,
                               transform=Affine(10, 0, X0, 0, -10, Y0), tiled=True, blockxsize=512, blockysize=512, compress="deflate") as dst:
                dst.write(scene(k, b), 1)
            paths[(k, name)] = path
    return paths


def date(k: int) -> str:
    return f"2024-{1 + k:02d}-15T02:03:04Z"


def stac_items(paths):
    import pystac
    from pyproj import Transformer

    to_ll = Transformer.from_crs(UTM52, "EPSG:4326", always_xy=True)
    xs, ys = [X0, X0 + SIDE * 10, X0 + SIDE * 10, X0], [Y0, Y0, Y0 - SIDE * 10, Y0 - SIDE * 10]
    lon, lat = to_ll.transform(xs, ys)
    ring = [[a, b] for a, b in zip(lon, lat)] + [[lon[0], lat[0]]]
    items = []
    for k in range(DATES):
        item = pystac.Item(id=f"S2_{k:02d}", geometry={"type": "Polygon", "coordinates": [ring]},
                           bbox=[min(lon), min(lat), max(lon), max(lat)], datetime=np.datetime64(date(k)[:-1]).astype(object), properties={})
        item.properties.update({"proj:code": UTM52, "proj:shape": [SIDE, SIDE], "proj:transform": [10, 0, X0, 0, -10, Y0]})
        for name in BANDS:
            item.add_asset(name, pystac.Asset(href=str(paths[(k, name)]), media_type=pystac.MediaType.COG, roles=["data"],
                                              extra_fields={"raster:bands": [{"nodata": 0, "data_type": "uint16"}]}))
        items.append(item)
    return items


def export_tiles(client, work: pathlib.Path):
    """The stored tiles under the bbox as GeoTIFFs, one VRT per date and band."""
    import rasterio
    from rasterio.transform import Affine

    q = {"collection": "ld", "bbox": BBOX, "bbox_crs": UTM52}
    info = client.get_flight_info(flight.FlightDescriptor.for_command(json.dumps(q)))
    meta = {k.decode(): v.decode() for k, v in info.schema.metadata.items()}
    span, n, crs = float(meta["tile_span"]), int(meta["tile_px"]), meta["crs"]
    files: dict = {}
    for ep in info.endpoints:
        t = client.do_get(ep.ticket).read_all()
        for r in range(t.num_rows):
            tile, band, when = t["tile_id"][r].as_py(), t["band"][r].as_py(), t["time"][r].value
            ix, iy = (int(p[1:]) for p in tile.split("_"))
            px = t["pixels"][r].values.to_numpy(zero_copy_only=False).reshape(n, n).copy()
            px[~t["mask"][r].values.to_numpy(zero_copy_only=False).reshape(n, n)] = 0
            path = work / f"tile_{when}_{band}_{tile}.tif"
            with rasterio.open(path, "w", driver="GTiff", width=n, height=n, count=1, dtype="uint16", crs=crs, nodata=0,
                               transform=Affine(span / n, 0, ix * span, 0, -span / n, (iy + 1) * span)) as dst:
                dst.write(px, 1)
            files.setdefault((when, band), []).append(str(path))
    vrts = []
    for (when, band), paths in sorted(files.items()):
        vrt = work / f"mosaic_{when}_{band}.vrt"
        subprocess.run(["gdalbuildvrt", "-q", str(vrt), *paths], check=True)
        vrts.append(vrt)
    return vrts


def load_row(client, pq, work: pathlib.Path, table, repeats: int = 3):
    """Row 8."""
    import odc.stac

    pq.create_collection("ld", bands=[{"name": b, "dtype": "uint16", "nodata": 0} for b in BANDS], grid={"resolution": 10})
    paths = write_cogs(work)
    for k in range(DATES):
        pq.ingest(np.stack([scene(k, b) for b in range(len(BANDS))]), transform=[X0, 10, 0, Y0, 0, -10], crs=UTM52, time=date(k),
                  bands=BANDS, collection="ld", scene_id=f"S2_{k:02d}", resampling="bilinear")
    items = stac_items(paths)
    vrts = export_tiles(client, work)

    def run(crs: str, bbox, label: str, row: str):
        shape = (DATES, round((bbox[3] - bbox[1]) / 10), round((bbox[2] - bbox[0]) / 10))

        def ours():
            ds = pq.load("ld", bands=BANDS, bbox=bbox, bbox_crs=crs, crs=crs, resolution=10, resampling="bilinear")
            assert ds.red.shape == shape, ds.red.shape

        def odc_load():
            from odc.geo.geobox import GeoBox

            box = GeoBox.from_bbox(bbox, crs=crs, resolution=10)
            ds = odc.stac.load(items, bands=BANDS, geobox=box, resampling="bilinear", chunks={"x": 2048, "y": 2048}).load()
            assert ds.red.shape[0] == DATES, ds.red.shape

        def gdal():
            out = work / "warped.tif"
            for vrt in vrts:
                subprocess.run(["gdalwarp", "-q", "-overwrite", "-et", "0", "-r", "bilinear", "-multi", "-wo", "NUM_THREADS=2", "-t_srs", crs,
                                "-tr", "10", "10", "-te", *map(str, bbox), "-dstnodata", "0", str(vrt), str(out)], check=True)

        runs = {"ours": [], "odc": [], "gdal": []}
        for _ in range(repeats):
            for name, fn in (("ours", ours), ("odc", odc_load), ("gdal", gdal)):
                t = time.perf_counter()
                fn()
                runs[name].append(time.perf_counter() - t)
        o, s, g = (statistics.median(runs[k]) for k in ("ours", "odc", "gdal"))
        spread = lambda v: "/".join(f"{x:.1f}" for x in v)
        mpx = DATES * len(BANDS) * shape[1] * shape[2] / 1e6
        table.add(row, f"load 20x20 km, 4 bands x {DATES} dates, {label} 10 m bilinear ({mpx:.0f} Mpx), s (median of {repeats} alternating; runs)",
                  f"{o:.1f} ({spread(runs['ours'])})", f"odc.stac.load {s:.1f} ({spread(runs['odc'])}); gdalwarp -et 0 over the stored tiles {g:.1f} ({spread(runs['gdal'])})",
                  f"{s / o:.2f}x odc-stac, {g / o:.2f}x gdalwarp", ">= 3x odc-stac, >= 1x gdalwarp", "met" if s / o >= 3 and g / o >= 1 else "not met")

    # The sources' own CRS (odc-stac reads their pixels as they are), and
    # Korea's national grid (everyone resamples).
    run(UTM52, BBOX, "UTM 52N (the COGs' own grid)", "8")
    from pyproj import Transformer

    to_korea = Transformer.from_crs(UTM52, "EPSG:5179", always_xy=True)
    x, y = to_korea.transform((BBOX[0] + BBOX[2]) / 2, (BBOX[1] + BBOX[3]) / 2)
    x, y = round(x / 10) * 10, round(y / 10) * 10
    run("EPSG:5179", [x - 9000, y - 9000, x + 9000, y + 9000], "18x18 km in EPSG:5179 (Korea 2000)", "8b")


def memory_row(client, pq, server, table, rss_peak_kib, reset_rss_peak):
    """Row 9."""
    from concurrent.futures import ThreadPoolExecutor

    sinu = "+proj=sinu +lon_0=0 +x_0=0 +y_0=0 +R=6378137 +units=m +no_defs"
    gx, gy = 4380 * 2560.0, 1633 * 2560.0
    pq.create_collection("mem", bands=[{"name": "red", "dtype": "uint16", "nodata": 0}], grid={"resolution": 10})
    rows, cols = np.mgrid[0:256, 0:256]
    for k in range(4):
        red = ((rows * 256 + cols + k) % 50000 + 1).astype(np.uint16)
        pq.ingest(red, transform=[gx, 10, 0, gy, 0, -10], crs=sinu, time=f"2024-06-0{k + 1}", bands="red", collection="mem", scene_id=f"m{k}")
    side = 16384 * 0.1
    q = {"collection": "mem", "bbox": [gx, gy - side, gx + side, gy], "bbox_crs": sinu,
         "output": {"resolution": 0.1, "resampling": "bilinear", "window": 1024}}
    info = client.get_flight_info(flight.FlightDescriptor.for_command(json.dumps(q)))
    meta = {k.decode(): v.decode() for k, v in info.schema.metadata.items()}
    assert (meta["width"], meta["height"]) == ("16384", "16384"), meta
    reset_rss_peak(server.proc.pid)
    idle = rss_peak_kib(server.proc.pid)
    t = time.perf_counter()

    def drain(ep):
        n = 0
        for chunk in client.do_get(ep.ticket):
            n += chunk.data.num_rows
        return n

    with ThreadPoolExecutor(4) as pool:
        slices = sum(pool.map(drain, info.endpoints))
    seconds = time.perf_counter() - t
    peak = rss_peak_kib(server.proc.pid)
    assert slices == 256 * 4, slices
    gb = 16384 * 16384 * 4 * 2 / 1e9
    table.add("9", f"server peak RSS while a client streams a 16384x16384 x 4-date load ({gb:.1f} GB of uint16, 4 streams, {seconds:.0f} s)",
              f"{peak / 1024:.0f} MiB (idle {idle / 1024:.0f} MiB)", "-", "-", "<= 600 MiB", "met" if peak <= 600 * 1024 else "not met")


def steps_row(rust: dict, table):
    """Row 10: NDVI with the QA mask and scale over one 256 x 256 tile x
    365 dates: the server's per-observation evaluation (`cargo bench
    --bench pixel_steps`) against numexpr (2 threads) and numpy on the same
    arrays in memory."""
    import numexpr

    n, dates = 256, 365
    i = np.arange(n * n, dtype=np.int64)
    d = np.arange(dates, dtype=np.int64)[:, None]
    red = (1000 + (i * 7 + d * 13) % 2000).astype(np.uint16)
    nir = (2000 + (i * 3 + d * 29) % 3000).astype(np.uint16)
    scl = np.where((i // n + d * 40) % 160 < 40, 9, 4).astype(np.uint16)
    numexpr.set_num_threads(2)
    expr = "where((scl == 4) | (scl == 5) | (scl == 6) | (scl == 11), ((nir * 1e-4 - 0.1) - (red * 1e-4 - 0.1)) / ((nir * 1e-4 - 0.1) + (red * 1e-4 - 0.1)), nan)"

    def with_numexpr():
        return numexpr.evaluate(expr, local_dict={"red": red, "nir": nir, "scl": scl, "nan": np.float32(np.nan)})

    def with_numpy():
        r, v = red * 1e-4 - 0.1, nir * 1e-4 - 0.1
        return np.where(np.isin(scl, [4, 5, 6, 11]), (v - r) / (v + r), np.nan).astype(np.float32)

    mpx = n * n * dates / 1e6
    best = lambda fn: min(timed(fn) for _ in range(5))
    ne, npy = mpx / best(with_numexpr), mpx / best(with_numpy)
    valid = int(np.isfinite(with_numexpr()).sum())
    ours = rust["steps_mpxs"]
    assert int(rust["steps_valid"]) == valid, (rust["steps_valid"], valid)
    table.add("10", f"NDVI + QA mask + scale, 256x256 x {dates} dates in memory, Mpx/s (best of 5, 2 threads)", f"{ours:.0f}",
              f"numexpr {ne:.0f}, numpy {npy:.0f}", f"{ours / ne:.2f}x numexpr, {ours / npy:.2f}x numpy", ">= 2x numexpr",
              "met" if ours >= 2 * ne else "not met")


def reduce_row(pq, table, repeats: int = 5):
    """Row 11: a masked monthly median of one 256 x 256 tile over 365
    dates: the server's answer (read from its chunks, reduced, sent: the
    client's GetFlightInfo and DoGets timed) against numpy ``nanmedian``
    and xarray ``groupby("time.month").median()`` on the same arrays
    already in memory (masked to NaN beforehand, not timed)."""
    import xarray as xr

    utm, n, days = "EPSG:32652", 256, 365
    x0, y0 = 130 * 2560.0, 1625 * 2560.0
    pq.create_collection("year", bands=[{"name": "red", "dtype": "uint16", "nodata": 0}, {"name": "scl", "dtype": "uint16"}],
                         grid={"crs": utm, "resolution": 10, "tile_span": 2560})
    rng = np.random.default_rng(11)
    rows, cols = np.mgrid[0:n, 0:n]
    times = np.datetime64("2023-01-01T02:00", "ms") + np.arange(days) * np.timedelta64(1, "D")
    red = rng.integers(1, 10000, (days, n, n)).astype(np.uint16)
    scl = np.full((days, n, n), 4, np.uint16)
    for k in range(days):
        cx, cy = (k * 37) % n, (k * 53) % n
        scl[k][(rows - cy) ** 2 + (cols - cx) ** 2 < 70 ** 2] = 9
        pq.ingest(np.stack([red[k], scl[k]]), transform=[x0, 10, 0, y0, 0, -10], crs=utm, time=str(times[k]) + "Z", bands=["red", "scl"],
                  collection="year", scene_id=f"y{k:03d}", resampling="nearest")
    mask = {"band": "scl", "invalid": [0, 1, 3, 8, 9, 10]}
    x = np.where(np.isin(scl, [0, 1, 3, 8, 9, 10]), np.float32(np.nan), red.astype(np.float32))
    months = times.astype("datetime64[M]")
    da = xr.DataArray(x, dims=("time", "y", "x"), coords={"time": times})

    def ours():
        return pq.query("year", bands="red", mask=mask, reduce={"period": "month", "reducer": "median"})

    def numpy_():
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return [np.nanmedian(x[months == m], axis=0) for m in np.unique(months)]

    def xarray_():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return da.groupby("time.month").median().values

    got = ours()
    want = numpy_()
    for r in range(got.num_rows):
        v = got["pixels"][r].values.to_numpy(zero_copy_only=False).reshape(n, n)
        m = got["mask"][r].values.to_numpy(zero_copy_only=False).reshape(n, n)
        ref = want[int(str(got["label"][r].as_py())[5:]) - 1]
        assert np.array_equal(m, ~np.isnan(ref)) and np.allclose(v[m], ref[m], rtol=1e-6), got["label"][r]
    t_ours, t_np, t_xr = [], [], []
    for _ in range(repeats):
        t_ours.append(timed(ours))
        t_np.append(timed(numpy_))
        t_xr.append(timed(xarray_))
    o, a, b = (statistics.median(t) for t in (t_ours, t_np, t_xr))
    table.add("11", f"masked monthly median, 256x256 x {days} dates, s (server: read, reduce, send; anchors on arrays in memory; median of {repeats} alternating)",
              f"{o:.3f}", f"numpy nanmedian {a:.3f}, xarray groupby {b:.3f}", f"{a / o:.1f}x numpy, {b / o:.1f}x xarray", ">= 3x numpy",
              "met" if a / o >= 3 else "not met")


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def sql_row(pq, warehouse, table, repeats: int = 30):
    """Row 12: ``SELECT band, count(*), sum(bytes) FROM chunks GROUP BY
    band`` over a catalog of about 100 000 chunks, through Flight SQL (ADBC,
    one connection, statement planned and run per call), against DuckDB over
    the GeoParquet snapshot of the same catalog (in process, file cached)."""
    import duckdb
    from adbc_driver_flightsql import dbapi

    utm = "EPSG:32652"
    bands = [f"b{i}" for i in range(5)]
    # 16 px tiles: a 512 x 512 raster touches 1 024 tiles; 5 bands x 20
    # months of scenes make 102 400 chunks.
    pq.create_collection("many", bands=[{"name": b, "dtype": "uint8", "nodata": 0} for b in bands],
                         grid={"crs": utm, "resolution": 10, "tile_span": 160})
    x0, y0 = 2000 * 160.0, 26000 * 160.0
    pixels = np.ones((len(bands), 512, 512), np.uint8)
    for month in range(20):
        when = f"{2020 + month // 12}-{month % 12 + 1:02d}-05T00:00:00Z"
        pq.ingest(pixels, transform=[x0, 10, 0, y0, 0, -10], crs=utm, time=when, bands=bands, collection="many",
                  scene_id=f"m{month}", resampling="nearest")
    pq.compact("many")  # writes the GeoParquet snapshot (each chunk already holds one batch)
    snapshot = pathlib.Path(warehouse) / "many" / "catalog.parquet"
    sql = "SELECT band, count(*) AS n, sum(bytes) AS b FROM chunks WHERE collection = 'many' GROUP BY band ORDER BY band"
    duck_sql = f"SELECT band, count(*) AS n, sum(bytes) AS b FROM read_parquet('{snapshot}') GROUP BY band ORDER BY band"
    con = duckdb.connect()
    with dbapi.connect(pq.uri, autocommit=True) as conn, conn.cursor() as cur:
        def ours():
            cur.execute(sql)
            return cur.fetch_arrow_table()

        def duck():
            out = con.sql(duck_sql).arrow()
            return out.read_all() if hasattr(out, "read_all") else out

        a, b = ours(), duck()
        assert a.column("n").to_pylist() == [int(v) for v in b.column("n").to_pylist()], (a, b)
        assert a.column("b").to_pylist() == [int(v) for v in b.column("b").to_pylist()]
        chunks = sum(a.column("n").to_pylist())
        t_ours, t_duck = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            ours()
            t_ours.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            duck()
            t_duck.append(time.perf_counter() - t0)
    p_ours, p_duck = statistics.median(t_ours) * 1e3, statistics.median(t_duck) * 1e3
    table.add("12", f"SQL `count(*), sum(bytes) ... GROUP BY band` over {chunks} chunks, p50 ms (Flight SQL via ADBC; median of {repeats} alternating)",
              f"{p_ours:.1f}", f"{p_duck:.1f} DuckDB over the GeoParquet snapshot", f"{p_duck / p_ours:.2f}x", "-", "-")
