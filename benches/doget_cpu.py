"""Where row 1a's time goes: the data of row 1a (24 scenes of 4 x 8
tiles, uint16) read over one stream from our server and from the pyarrow
in-memory anchor, alternating, with the CPU seconds each process spent:
the pyarrow client (this process) and the server (ours or the anchor).

    .venv/bin/python benches/doget_cpu.py --binary target/release/pixelquery

A server whose CPU per round is well below the round's wall time, while the
client's is close to it, leaves the client as the bound.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np
from pyarrow import flight

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import suite  # noqa: E402  (the row's own data and anchor)
from pixelquery_flight.testing import LocalServer  # noqa: E402


def cpu_s(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="pixelquery-doget-", dir=os.environ.get("PIXELQUERY_BENCH_DIR", ".")))
    server = LocalServer(work / "warehouse", [], binary=args.binary)
    client = flight.connect(server.uri)
    try:
        suite.action(client, "create_collection", {"name": "get", "bands": [{"name": "red", "dtype": "uint16", "nodata": 0}], "grid": {"resolution": 10}})
        block = np.random.default_rng(1).integers(1, 10000, size=(1024, 2048), dtype=np.uint16)
        for day in range(24):
            suite.put(client, suite.aligned("get", f"g{day}", day, 2048, 1024, ["red"]), {"red": block})
        tickets, total, anchor, anchor_client, anchor_tickets = suite.anchor_copy(client, "get", work)
        rows = {"ours": [], "pyarrow in-memory": []}
        for _ in range(args.rounds):
            for name, c, ts, pid in (("ours", client, tickets, server.proc.pid), ("pyarrow in-memory", anchor_client, anchor_tickets, anchor.pid)):
                wall, me, srv = time.perf_counter(), time.process_time(), cpu_s(pid)
                for t in ts:
                    c.do_get(t).read_all()
                rows[name].append((time.perf_counter() - wall, time.process_time() - me, cpu_s(pid) - srv))
        print(f"row 1a data: {total / 1e6:.0f} MB over one stream, median of {args.rounds} alternating rounds")
        print(f"{'server':<20} {'GB/s':>6} {'wall s':>7} {'client CPU s':>13} {'server CPU s':>13}")
        for name, runs in rows.items():
            wall, me, srv = (statistics.median(r[i] for r in runs) for i in range(3))
            print(f"{name:<20} {total / wall / 1e9:6.2f} {wall:7.3f} {me:13.3f} {srv:13.3f}")
        anchor.kill()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
