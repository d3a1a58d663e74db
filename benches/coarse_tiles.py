"""A 300 m raster (811 x 708 px, uint16, UTM) into two collections of one
server side by side: the tile span of the old default (2560 m: 9 px tiles)
and the new default (none given: 20 480 m, 68 px tiles). Prints bytes on
disk and the time of a bbox read of the whole raster (median of 5).

    .venv/bin/python benches/coarse_tiles.py [--binary target/release/pixelquery]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "clients", "python", "src"))
from pixelquery_flight import Client  # noqa: E402
from pixelquery_flight.testing import LocalServer  # noqa: E402


def du(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=None)
    args = ap.parse_args()
    w, h, res = 811, 708, 300.0
    rng = np.random.default_rng(7)
    data = rng.integers(1, 10000, size=(h, w), dtype=np.uint16)
    gt = (200000.0, res, 0.0, 4300000.0, 0.0, -res)
    with tempfile.TemporaryDirectory() as tmp, LocalServer(os.path.join(tmp, "wh"), binary=args.binary) as server, Client(server.uri) as c:
        rows = []
        for name, grid in [("span_2560", {"resolution": res, "tile_span": 2560}), ("default", {"resolution": res})]:
            info = c.create_collection(name, bands=[{"name": "v", "dtype": "uint16", "nodata": 0}], grid=grid)
            c.ingest(data, transform=gt, crs="EPSG:32652", time="2024-06-01", bands="v", collection=name)
            lon0, lat0, lon1, lat1 = 125.3, 36.2, 128.3, 38.9
            times = []
            for _ in range(5):
                t = time.perf_counter()
                table = c.query(name, bbox=[lon0, lat0, lon1, lat1])
                times.append(time.perf_counter() - t)
            rows.append((name, info["grid"]["tile_span"], info["grid"]["tile_px"], len(c.describe(name).get("warnings", [])) or len(info.get("warnings", [])),
                         table.num_rows, du(os.path.join(tmp, "wh", name)), statistics.median(times)))
        print("| collection | tile span m | tile px | warnings | tiles read | bytes on disk | bbox read s |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r[0]} | {r[1]:.0f} | {r[2]} | {r[3]} | {r[4]} | {r[5] / 1e6:.1f} MB | {r[6]:.3f} |")


if __name__ == "__main__":
    main()
