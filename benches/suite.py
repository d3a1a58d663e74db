"""The benchmark table: every headline figure beside what a user would pick
instead, measured in the same run on the same machine (only ratios measured
together are stable on a shared machine). Run through `scripts/bench.sh`,
which builds in release mode and runs the Rust benches whose RESULT lines
this script folds in.

Anchors: a pyarrow in-memory Flight server serving the same bytes, pyarrow
Flight DoPut sinks keeping batches in memory or writing them durably as IPC
files per tile (each in its own process), loopback iperf3,
gdalwarp on the same raster and grid, odc-stac loading the same COGs
(rows 8 and 9: `load_rows.py`).

    python benches/suite.py --binary target/release/pixelquery [--results FILE...]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight

from pixelquery_flight import Client
from pixelquery_flight.testing import LocalServer, SeaweedFS

import load_rows

SINUSOIDAL = "+proj=sinu +lon_0=0 +x_0=0 +y_0=0 +R=6378137 +units=m +no_defs"
# Top-left corner of a block of whole 10 m grid tiles (2560 m) near Seoul.
GRID_X0, GRID_Y0 = 4380 * 2560.0, 1633 * 2560.0

ANCHOR = r'''
import sys, pyarrow as pa, pyarrow.flight as flight
class Anchor(flight.FlightServerBase):
    """pyarrow in-memory server: tables by ticket; DoPut keeps batches."""
    def __init__(self, tables):
        super().__init__("grpc://127.0.0.1:0")
        self.tables, self.kept = tables, []
    def do_get(self, context, ticket):
        return flight.RecordBatchStream(self.tables[ticket.ticket.decode()], options=OPTIONS)
    def do_put(self, context, descriptor, reader, writer):
        self.kept = [chunk.data for chunk in reader]
codec = sys.argv[1].removeprefix("--compression=") if sys.argv[1].startswith("--compression=") else None
OPTIONS = pa.ipc.IpcWriteOptions(compression=codec)
tables = {}
for path in sys.argv[2 if codec else 1:]:
    with pa.memory_map(path) as f:
        tables[path.rsplit("/", 1)[-1]] = pa.ipc.open_stream(f).read_all()
server = Anchor(tables)
print(server.port, flush=True)
server.serve()
'''

DURABLE_SINK = r'''
import json, os, sys, numpy as np, pyarrow as pa, pyarrow.flight as flight
from concurrent.futures import ThreadPoolExecutor
class DurableSink(flight.FlightServerBase):
    """pyarrow DoPut sink doing what ours promises: cuts the raster into
    256 px tiles, writes each tile's rows as an Arrow IPC file, fsyncs the
    files (8 at a time) and their directory, then answers."""
    def __init__(self, root):
        super().__init__("grpc://127.0.0.1:0")
        self.root = root
    def do_put(self, context, descriptor, reader, writer):
        d = json.loads(descriptor.command)
        table = reader.read_all()
        width, height, px = d["width"], d["height"], 256
        scene = os.path.join(self.root, d["scene_id"])
        os.makedirs(scene, exist_ok=True)
        fds = []
        for name in table.column_names:
            band = table.column(name).to_numpy().reshape(height, width)
            for ty in range(0, height, px):
                for tx in range(0, width, px):
                    tile = np.ascontiguousarray(band[ty:ty + px, tx:tx + px]).ravel()
                    batch = pa.record_batch([pa.array([d["scene_id"]]), pa.FixedSizeListArray.from_arrays(pa.array(tile), tile.size)], names=["scene_id", "pixels"])
                    path = os.path.join(scene, f"{name}_{tx // px}_{ty // px}.arrow")
                    with pa.OSFile(path, "wb") as f, pa.ipc.new_file(f, batch.schema) as w:
                        w.write_batch(batch)
                    fds.append(os.open(path, os.O_RDONLY))
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(os.fsync, fds))
        for fd in fds:
            os.close(fd)
        dfd = os.open(scene, os.O_RDONLY)
        os.fsync(dfd)
        os.close(dfd)
        writer.write(pa.py_buffer(json.dumps({"scene_id": d["scene_id"], "tiles": len(fds)}).encode()))
server = DurableSink(sys.argv[1])
print(server.port, flush=True)
server.serve()
'''


def timed(fn, repeat):
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def iperf3_gbs(seconds: int = 2) -> float | None:
    """Loopback TCP throughput of one iperf3 stream, GB/s (None without iperf3)."""
    import shutil
    import socket
    if shutil.which("iperf3") is None:
        return None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(["iperf3", "-s", "-1", "-B", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            out = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-J"], capture_output=True, text=True)
            if out.returncode == 0:
                try:
                    return json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"] / 8e9
                except (KeyError, ValueError):
                    # A run cut short answers without a summary; the
                    # one-shot server is gone: start another.
                    server.kill()
                    server = subprocess.Popen(["iperf3", "-s", "-1", "-B", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.1)
        return None
    finally:
        server.kill()


def anchor_copy(client, collection: str, work: pathlib.Path, *anchor_args):
    """Reads every endpoint of `collection` from our server and starts the
    pyarrow in-memory anchor serving the same tables: our tickets, the
    bytes read, the anchor process, its client and its tickets."""
    info = client.get_flight_info(flight.FlightDescriptor.for_command(json.dumps({"collection": collection})))
    tickets = [ep.ticket for ep in info.endpoints]
    files, total_bytes = [], 0
    for i, t in enumerate(tickets):
        tab = client.do_get(t).read_all()
        total_bytes += tab.nbytes
        path = work / f"anchor_{collection}_{i}.arrows"
        with pa.OSFile(str(path), "wb") as f, pa.ipc.new_stream(f, tab.schema) as w:
            w.write_table(tab)
        files.append(str(path))
    anchor = subprocess.Popen([sys.executable, "-c", ANCHOR, *anchor_args, *files], stdout=subprocess.PIPE, text=True)
    anchor_client = flight.connect(f"grpc://127.0.0.1:{anchor.stdout.readline().strip()}")
    return tickets, total_bytes, anchor, anchor_client, [flight.Ticket(pathlib.Path(p).name.encode()) for p in files]


def object_store_row(args, client, work, table, block, raster, read_all, total_bytes):
    """Row 13: row 1a's DoGet and row 2's raw DoPut, same data, on a server
    whose warehouse is on SeaweedFS (on the same 2 cores), against the local
    server, alternating."""
    store = SeaweedFS(work / "s3", bucket="bench")
    env = store.env
    s3_server = LocalServer("s3://bench/warehouse", ["--cache-dir", str(work / "s3-copy"), "--max-raster-mb", "8192"], binary=args.binary, env=env)
    try:
        s3_client = flight.connect(s3_server.uri)
        action(s3_client, "create_collection", {"name": "get", "bands": [{"name": "red", "dtype": "uint16", "nodata": 0}], "grid": {"resolution": 10}})
        for day in range(24):
            put(s3_client, aligned("get", f"g{day}", day, 2048, 1024, ["red"]), {"red": block})
        info = s3_client.get_flight_info(flight.FlightDescriptor.for_command(json.dumps({"collection": "get"})))
        s3_tickets = [ep.ticket for ep in info.endpoints]
        local_tickets = [ep.ticket for ep in client.get_flight_info(flight.FlightDescriptor.for_command(json.dumps({"collection": "get"}))).endpoints]
        ours, local = [], []
        for _ in range(ROUNDS):
            ours += timed(lambda: read_all(s3_client, s3_tickets, 1), 1)
            local += timed(lambda: read_all(client, local_tickets, 1), 1)
        gbs, lgbs = total_bytes / statistics.median(ours) / 1e9, total_bytes / statistics.median(local) / 1e9
        table.add("13a", f"DoGet stored chunks, 1 stream, GB/s, warehouse on SeaweedFS (served from the server's local copy; a ticket pinned to an applied version reads no log; median of {ROUNDS} alternating rounds)",
                  f"{gbs:.2f}", f"{lgbs:.2f} local warehouse", f"{gbs / lgbs:.2f}x", "-", "-")
        action(s3_client, "create_collection", {"name": "raw", "bands": [{"name": "red", "dtype": "uint16", "nodata": 0}], "grid": {"resolution": 10}})
        mb = raster.nbytes / 1e6
        ours, local = [], []
        for i in range(ROUNDS):
            ours.append(put(s3_client, aligned("raw", f"s{i}", i, 2560, 2560, ["red"]), {"red": raster}))
            local.append(put(client, aligned("raw", f"l{i}", 100 + i, 2560, 2560, ["red"]), {"red": raster}))
        ours, local = statistics.median(ours), statistics.median(local)
        table.add("13b", f"raw DoPut ({mb:.0f} MB uint16, 100 tiles: 100 objects and one Delta commit), MB/s, warehouse on SeaweedFS (median of {ROUNDS} alternating puts)",
                  f"{mb / ours:.0f}", f"{mb / local:.0f} local warehouse", f"{local / ours:.2f}x", "-", "-")
    finally:
        s3_server.stop()
        store.stop()


def rss_peak_kib(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def reset_rss_peak(pid: int) -> None:
    pathlib.Path(f"/proc/{pid}/clear_refs").write_text("5")


def action(client, name, body):
    return json.loads(list(client.do_action(flight.Action(name, json.dumps(body).encode())))[0].body.to_pybytes())


def put(client, descriptor: dict, columns: dict, batch_bytes=1 << 20) -> float:
    """DoPut of whole-row strips of about `batch_bytes`; returns seconds (the
    answer's metadata is kept in `put.last`)."""
    height, width = descriptor["height"], descriptor["width"]
    schema = pa.schema([(n, pa.from_numpy_dtype(a.dtype)) for n, a in columns.items()])
    row_bytes = sum(a.dtype.itemsize for a in columns.values()) * width
    rows = max(1, batch_bytes // row_bytes)
    t = time.perf_counter()
    writer, reader = client.do_put(flight.FlightDescriptor.for_command(json.dumps(descriptor)), schema)
    for top in range(0, height, rows):
        writer.write_batch(pa.record_batch([pa.array(a[top:top + rows].ravel()) for a in columns.values()], schema=schema))
    writer.done_writing()
    answer = reader.read()
    writer.close()
    elapsed = time.perf_counter() - t
    put.last = json.loads(answer.to_pybytes()) if answer is not None and answer.size else {}
    return elapsed


def aligned(collection, scene, minute, width, height, bands):
    """A raster on the 10 m grid's lattice (copied, not resampled), acquired
    `minute` minutes into 2024-06-01."""
    return {
        "collection": collection, "scene_id": scene, "acquired_at": f"2024-06-01T{minute // 60:02d}:{minute % 60:02d}:00Z",
        "crs": SINUSOIDAL, "geotransform": [GRID_X0, 10.0, 0.0, GRID_Y0, 0.0, -10.0],
        "width": width, "height": height, "bands": [{"name": b, "dtype": "uint16", "nodata": 0} for b in bands],
    }


class Table:
    def __init__(self):
        self.rows = []

    def add(self, n, name, ours, anchor, ratio, goal, met):
        self.rows.append((n, name, ours, anchor, ratio, goal, met))
        print(f"  row {n}: {name}: ours {ours}, anchor {anchor}, ratio {ratio}, goal {goal}: {met}", file=sys.stderr, flush=True)

    def markdown(self) -> str:
        lines = ["| # | figure | ours | anchor | ratio | goal | met |", "|---|---|---|---|---|---|---|"]
        lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in self.rows]
        return "\n".join(lines)


REPEATS = 3
ROUNDS = 15


def reproject(args, client, server, work, table):
    """Rows 3 and 7: a reprojecting DoPut of a Sentinel-2-sized band vs gdalwarp, and the server's peak RSS meanwhile.

    Each side runs REPEATS times and the medians are compared (single runs
    here swung 1.6x-3.3x: the disk's ext4 has no journal, so creating files
    gets slow for minutes after others were deleted). Each of our puts goes
    to a fresh collection, so every one creates its tiles' files, as each
    gdalwarp run creates its output."""
    n = args.size
    yy, xx = np.mgrid[0:n, 0:n]
    band = ((yy * 7 + xx * 3) % 20000 + 1).astype(np.uint16)
    del yy, xx
    band[n // 3:n // 3 + 200, n // 3:n // 3 + 300] = 0  # a nodata hole
    gt = [300000.0, 10.0, 0.0, 4200000.0, 0.0, -10.0]
    reset_rss_peak(server.proc.pid)
    base_kib = rss_peak_kib(server.proc.pid)
    ours = []
    for i in range(REPEATS):
        name = f"warp{i}"
        action(client, "create_collection", {"name": name, "bands": [{"name": "red", "dtype": "uint16", "nodata": 0}], "grid": {"resolution": 10}, "resampling": "bilinear"})
        descriptor = {"collection": name, "scene_id": "s2", "acquired_at": "2024-06-15T02:03:04Z", "crs": "EPSG:32652", "geotransform": gt,
                      "width": n, "height": n, "bands": [{"name": "red", "dtype": "uint16", "nodata": 0}], "resampling": "bilinear"}
        ours.append(put(client, descriptor, {"red": band}, batch_bytes=4 << 20))
    peak_kib = rss_peak_kib(server.proc.pid)
    seconds = statistics.median(ours)
    out_mpx = put.last["observations"] * 256 * 256 / 1e6
    tif = work / "s2.tif"
    src = work / "s2.raw"
    band.tofile(src)
    (work / "s2.hdr").write_text(f"ENVI\nsamples = {n}\nlines = {n}\nbands = 1\nheader offset = 0\nfile type = ENVI Standard\ndata type = 12\ninterleave = bsq\nbyte order = 0\n")
    subprocess.run(["gdal_translate", "-q", "-of", "GTiff", "-a_srs", "EPSG:32652", "-a_ullr", str(gt[0]), str(gt[3]), str(gt[0] + n * 10), str(gt[3] - n * 10),
                    "-a_nodata", "0", str(src), str(tif)], check=True)
    src.unlink()
    warped = work / "warped.tif"
    gdal = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        subprocess.run(["gdalwarp", "-q", "-overwrite", "-r", "bilinear", "-multi", "-wo", "NUM_THREADS=2", "-t_srs", SINUSOIDAL, "-tr", "10", "10", "-tap",
                        "-srcnodata", "0", "-dstnodata", "0", str(tif), str(warped)], check=True)
        gdal.append(time.perf_counter() - t)
    gdal_s = statistics.median(gdal)
    info = json.loads(subprocess.run(["gdalinfo", "-json", "-stats", str(warped)], check=True, capture_output=True, text=True).stdout)
    w, h = info["size"]
    gdal_mpx = w * h / 1e6
    valid_mpx = gdal_mpx * float(info["bands"][0]["metadata"][""]["STATISTICS_VALID_PERCENT"]) / 100
    # gdalwarp writes the bounding box of the sheared footprint (mostly
    # empty, which it skips cheaply); ours are the whole tiles touched. Both
    # rates count the same pixels: those with data in gdalwarp's output (the
    # footprint is the same on both sides), so the ratio is the time ratio.
    ours_rate, gdal_rate = valid_mpx / seconds, valid_mpx / gdal_s
    spread = lambda v: "/".join(f"{x:.1f}" for x in v)
    table.add("3", f"reprojecting DoPut {n}x{n} uint16 EPSG:32652 -> grid, bilinear, output Mpx with data per s (median of {REPEATS})",
              f"{ours_rate:.1f} ({valid_mpx:.0f} Mpx in {seconds:.1f} s; runs {spread(ours)} s; {out_mpx:.0f} Mpx of tiles)",
              f"{gdal_rate:.1f} gdalwarp -multi 2 threads ({valid_mpx:.0f} of {gdal_mpx:.0f} Mpx in {gdal_s:.1f} s; runs {spread(gdal)} s)",
              f"{ours_rate / gdal_rate:.2f}x", ">= 3x", "met" if ours_rate >= 3 * gdal_rate else "not met")
    table.add("7", f"server peak RSS while that {n}x{n} band streams in", f"{peak_kib / 1024:.0f} MiB (idle {base_kib / 1024:.0f} MiB)", "-", "-", "<= 512 MiB",
              "met" if peak_kib <= 512 * 1024 else "not met")
    del band


def point_series(client, rng, table):
    """Row 5: point time-series latency over 1000 observations x 4 bands."""
    bands4 = ["blue", "green", "red", "nir"]
    action(client, "create_collection", {"name": "pt", "bands": [{"name": b, "dtype": "uint16", "nodata": 0} for b in bands4], "grid": {"resolution": 10}})
    tile = {b: rng.integers(1, 10000, size=(256, 256), dtype=np.uint16) for b in bands4}
    for day in range(1000):
        put(client, aligned("pt", f"p{day}", day, 256, 256, bands4), tile)
    point = json.dumps({"collection": "pt", "point": [GRID_X0 + 1285.0, GRID_Y0 - 1285.0], "bbox_crs": SINUSOIDAL}).encode()
    first = client.do_get(flight.Ticket(point)).read_all()
    assert first.num_rows == 1000, first.num_rows
    lat = sorted(timed(lambda: client.do_get(flight.Ticket(point)).read_all(), 200))
    p50, p99 = lat[len(lat) // 2] * 1e3, lat[int(len(lat) * 0.99)] * 1e3
    table.add("5", "point time series, 1000 obs x 4 bands, p50 / p99 ms", f"{p50:.2f} / {p99:.2f}", "-", "-", "p50 <= 5 ms", "met" if p50 <= 5 else "not met")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--results", nargs="*", default=[], help="outputs of the Rust benches (RESULT lines)")
    ap.add_argument("--size", type=int, default=10980, help="side of the reprojected raster (row 3 and 7)")
    ap.add_argument("--out", help="also write the table (markdown) here")
    ap.add_argument("--only", default="123456789RSO", help="rows to run, e.g. 15 (R: row 11, the temporal reduce; S: row 12, SQL; O: row 13, object storage)")
    args = ap.parse_args()
    rust = {}
    for path in args.results:
        for m in re.finditer(r"^RESULT (.*)$", pathlib.Path(path).read_text(), re.M):
            for kv in m.group(1).split():
                k, v = kv.split("=")
                rust[k] = float(v)

    work = pathlib.Path(tempfile.mkdtemp(prefix="pixelquery-bench-", dir=os.environ.get("PIXELQUERY_BENCH_DIR", ".")))
    table = Table()
    server = LocalServer(work / "warehouse", ["--max-raster-mb", "8192"], binary=args.binary)
    client = flight.connect(server.uri)
    try:
        # ---- 1. DoGet of stored chunks vs a pyarrow in-memory server -----
        # (the anchor process also serves row 2's sink)
        action(client, "create_collection", {"name": "get", "bands": [{"name": "red", "dtype": "uint16", "nodata": 0}], "grid": {"resolution": 10}})
        rng = np.random.default_rng(1)
        block = rng.integers(1, 10000, size=(1024, 2048), dtype=np.uint16)  # 4 x 8 tiles
        for day in range(24):
            put(client, aligned("get", f"g{day}", day, 2048, 1024, ["red"]), {"red": block})
        tickets, total_bytes, anchor, anchor_client, anchor_tickets = anchor_copy(client, "get", work)

        def read_all(c, ts, parallel):
            if parallel == 1:
                for t in ts:
                    c.do_get(t).read_all()
                return
            threads = [threading.Thread(target=lambda part: [c.do_get(t).read_all() for t in part], args=(ts[k::parallel],)) for k in range(parallel)]
            [th.start() for th in threads]
            [th.join() for th in threads]

        # Rounds alternate ours and the anchor, so drift on this shared
        # machine hits both; the medians are compared (the best runs are
        # shown too: they swing more).
        wire = []
        for parallel in (1, 4) if "1" in args.only else ():
            ours, theirs = [], []
            for r in range(ROUNDS):
                ours += timed(lambda: read_all(client, tickets, parallel), 1)
                theirs += timed(lambda: read_all(anchor_client, anchor_tickets, parallel), 1)
                if r % 5 == 0:
                    wire += [g for g in [iperf3_gbs()] if g]
            gbs, agbs = total_bytes / statistics.median(ours) / 1e9, total_bytes / statistics.median(theirs) / 1e9
            best, abest = total_bytes / min(ours) / 1e9, total_bytes / min(theirs) / 1e9
            of_wire = f"; {gbs / statistics.median(wire):.0%} of iperf3" if wire else ""
            table.add("1" + ("a" if parallel == 1 else "b"), f"DoGet stored chunks, {parallel} stream(s), GB/s ({total_bytes / 1e6:.0f} MB, warm cache; median of {ROUNDS} alternating rounds, best in brackets)",
                      f"{gbs:.2f} ({best:.2f})", f"{agbs:.2f} ({abest:.2f}) pyarrow in-memory", f"{gbs / agbs:.2f}x ({best / abest:.2f}x){of_wire}", ">= 1.2x, >= 60% of iperf3",
                      "met" if gbs >= 1.2 * agbs and wire and gbs >= 0.6 * statistics.median(wire) else "not met")
        if wire:
            table.add("1c", f"loopback TCP, one iperf3 stream, GB/s (median of {len(wire)} runs of 2 s between row 1's rounds)", f"{statistics.median(wire):.2f}", "-", "-", "-", "-")

        # ---- 1d. DoGet of zstd-compressed chunks vs pyarrow sending the
        # same tables zstd-compressed (it compresses as it sends; ours sends
        # the stored bytes). Smooth values with 4 noisy low bits: ~0.6 of
        # their raw size with zstd.
        if "1" in args.only:
            action(client, "create_collection", {"name": "getz", "bands": [{"name": "red", "dtype": "uint16", "nodata": 0}], "grid": {"resolution": 10}, "compression": "zstd"})
            rows, cols = np.mgrid[0:1024, 0:2048]
            for day in range(24):
                smooth = ((rows * 3 + cols * 2 + day * 50) // 5 % 20000 + rng.integers(0, 16, size=rows.shape) + 1).astype(np.uint16)
                put(client, aligned("getz", f"z{day}", day, 2048, 1024, ["red"]), {"red": smooth})
            ztickets, zbytes, zanchor, zclient, zanchor_tickets = anchor_copy(client, "getz", work, "--compression=zstd")
            stored = sum(f.stat().st_size for f in (work / "warehouse" / "getz").rglob("*.arrow"))
            ours, theirs = [], []
            for _ in range(ROUNDS):
                ours += timed(lambda: read_all(client, ztickets, 1), 1)
                theirs += timed(lambda: read_all(zclient, zanchor_tickets, 1), 1)
            zanchor.kill()
            gbs, agbs = zbytes / statistics.median(ours) / 1e9, zbytes / statistics.median(theirs) / 1e9
            table.add("1d", f"DoGet zstd-compressed chunks, 1 stream, GB/s of decoded Arrow data ({zbytes / 1e6:.0f} MB, stored as {stored / zbytes:.2f} of that; median of {ROUNDS} alternating rounds)",
                      f"{gbs:.2f}", f"{agbs:.2f} pyarrow in-memory sending zstd", f"{gbs / agbs:.2f}x", "-", "-")

        # ---- 2. Raw DoPut on the grid (copy path, durable) vs a pyarrow sink
        action(client, "create_collection", {"name": "raw", "bands": [{"name": "red", "dtype": "uint16", "nodata": 0}], "grid": {"resolution": 10}})
        raster = rng.integers(1, 10000, size=(2560, 2560), dtype=np.uint16)  # 10 x 10 tiles, 13 MB
        mb = raster.nbytes / 1e6
        # Puts alternate ours and the sinks, as row 1's rounds do (blocks of
        # five each swung 0.27x-0.74x as the machine's load drifted). The
        # durable sink is the like-for-like anchor; the memory sink, which
        # keeps nothing, the upper bound.
        sink_dir = work / "durable_sink"
        sink_dir.mkdir()
        sink = subprocess.Popen([sys.executable, "-c", DURABLE_SINK, str(sink_dir)], stdout=subprocess.PIPE, text=True)
        sink_client = flight.connect(f"grpc://127.0.0.1:{sink.stdout.readline().strip()}")
        ours, durable, memory = [], [], []
        for i in range(ROUNDS):
            ours.append(put(client, aligned("raw", f"r{i}", i, 2560, 2560, ["red"]), {"red": raster}))
            durable.append(put(sink_client, aligned("raw", f"r{i}", i, 2560, 2560, ["red"]), {"red": raster}))
            memory.append(put(anchor_client, aligned("raw", f"r{i}", i, 2560, 2560, ["red"]), {"red": raster}))
        sink.kill()
        ours, durable, memory = statistics.median(ours), statistics.median(durable), statistics.median(memory)
        table.add("2", f"raw DoPut already on the grid ({mb:.0f} MB uint16, durable), MB/s (median of {ROUNDS} alternating puts)", f"{mb / ours:.0f}",
                  f"{mb / durable:.0f} pyarrow durable sink (IPC file per tile, fsync); {mb / memory:.0f} pyarrow memory sink",
                  f"{durable / ours:.2f}x durable; {memory / ours:.2f}x memory", ">= 1.0x durable", "met" if durable / ours >= 1.0 else "not met")
        anchor.kill()

        # ---- 13. The same reads and writes on the object-store backend ---
        if "O" in args.only:
            object_store_row(args, client, work, table, block, raster, read_all, total_bytes)

        if "3" in args.only or "7" in args.only:
            reproject(args, client, server, work, table)
        # ---- 4. Append cost (cargo bench --bench append) -----------------
        if "append_ms_0" in rust:
            r = rust["append_ms_1000"] / rust["append_ms_0"]
            table.add("4", "durable append at 1000 vs 0 observations (ms)", f"{rust['append_ms_1000']:.2f} / {rust['append_ms_0']:.2f}", "earlier PixelQuery 140 ms at 1000",
                      f"{r:.2f}", "<= 1.5", "met" if r <= 1.5 else "not met")

        # ---- 3b. The earlier PixelQuery's resampling micro-case -----------
        if "micro_kernel_ms" in rust:
            k, t = rust["micro_kernel_ms"], rust["micro_total_ms"]
            table.add("3b", "100x100 -> 256x256 bilinear micro-case, separable same-CRS path (kernel / with coordinates), ms", f"{k:.3f} / {t:.3f}",
                      "earlier Rust core 0.22, scipy 0.98 (published)", f"{0.22 / t:.2f}x vs earlier", "<= 0.05 ms", "met" if t <= 0.05 else "not met")
            if "general_kernel_ms" in rust:
                g = rust["general_kernel_ms"]
                table.add("3c", "same case through the per-pixel kernel of reprojecting ingests (kernel / with coordinates), ms",
                          f"{g:.3f} / {rust['general_total_ms']:.3f}", "-", f"{g * 1e6 / 65536:.1f} ns per pixel", "-", "-")
        # ---- 5. Point time series, 1000 observations x 4 bands -----------
        if "5" in args.only:
            point_series(client, rng, table)
        # ---- 8, 9. Analysis-ready loads -------------------------------------
        if "8" in args.only or "9" in args.only:
            pq = Client(server.uri)
            if "8" in args.only:
                load_rows.load_row(client, pq, work, table)
            if "9" in args.only:
                # A server of its own: the shared one's resident memory holds
                # the mapped chunk pages and arenas of every earlier row.
                mem = LocalServer(work / "warehouse-9", binary=args.binary)
                try:
                    load_rows.memory_row(flight.connect(mem.uri), Client(mem.uri), mem, table, rss_peak_kib, reset_rss_peak)
                finally:
                    mem.stop()
        # ---- 11. Temporal reduce ------------------------------------------
        if "R" in args.only:
            load_rows.reduce_row(Client(server.uri), table)
        # ---- 12. SQL over the catalog ---------------------------------------
        if "S" in args.only:
            load_rows.sql_row(Client(server.uri), work / "warehouse", table)
        # ---- 10. Pixel steps (cargo bench --bench pixel_steps) -------------
        if "steps_mpxs" in rust:
            load_rows.steps_row(rust, table)
        # ---- 6. Per-file COG ingest (cargo bench --bench cog_ingest) -----
        if "cog_ms" in rust:
            split = f" (server's DoPut {rust['cog_server_ms']:.0f}; client's read alone {rust['cog_read_ms']:.0f}; warp alone on one thread {rust['cog_scene_warp_ms']:.0f})" if "cog_read_ms" in rust and "cog_scene_warp_ms" in rust else ""
            if "cog_dir_ms" in rust:
                cpu = f" (CPU {rust['cog_dir_cpu_ms']:.0f} ms per file)" if "cog_dir_cpu_ms" in rust else ""
                split = f" one file after another{split}; {rust['cog_dir_ms']:.0f} per file ingesting the directory, 2 at once{cpu}"
            if "earlier_pq_legacy_ms" in rust:
                # Its default ingest stores Icechunk virtual references (no
                # pixels copied, nothing reprojected); its copying path is
                # the like-for-like one.
                earlier = (f"earlier PixelQuery 0.1.0 copying path (Arrow, resampled) {rust['earlier_pq_legacy_ms']:.0f}, its default virtual-reference ingest "
                           f"{rust.get('earlier_pq_dir_ms', float('nan')):.0f} (no pixel copy; 270 published); gdalwarp {rust['cog_gdalwarp_ms']:.0f}")
                vs = f"{rust['earlier_pq_legacy_ms'] / rust['cog_ms']:.1f}x vs earlier copying path"
            else:
                earlier = f"earlier PixelQuery 270 (published, not measured here); gdalwarp {rust['cog_gdalwarp_ms']:.0f}"
                vs = f"{270 / rust['cog_ms']:.1f}x vs published earlier"
            table.add("6", "per-file COG ingest, 1024x1024x4 uint16 LZW, ms", f"{rust['cog_ms']:.0f}{split}",
                      earlier, vs, "<= 40 ms directory, <= 55 ms one by one",
                      "met" if rust.get("cog_dir_ms", 1e9) <= 40 and rust["cog_ms"] <= 55 else "not met")
        if "cog_zstd_ratio" in rust:
            table.add("6b", "stored chunk bytes per byte of source COG, row 6's files (zstd level 3; per-file directory ingest ms with zstd in brackets)",
                      f"{rust['cog_zstd_ratio']:.2f} ({rust['cog_zstd_dir_ms']:.0f} ms)", f"{rust['cog_plain_ratio']:.2f} uncompressed chunks", "-", "<= 0.8", "met" if rust["cog_zstd_ratio"] <= 0.8 else "not met")
    finally:
        server.stop()
        subprocess.run(["rm", "-rf", str(work)])
    # Row numbers in order: 1a, 1b, ..., 9, 10, ..., 13b.
    table.rows.sort(key=lambda r: (int(re.match(r"\d+", r[0]).group()), r[0]))
    text = table.markdown()
    print(text)
    if args.out:
        pathlib.Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
