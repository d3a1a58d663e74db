"""Re-runs two of the denial-of-service attacks of issue #20 against a
server binary and prints what a well-behaved client sees meanwhile:

1. 1 100 idle connections: each opens TCP, sends the HTTP/2 preface and
   SETTINGS (a live connection) and then nothing.
2. 530 stalled readers: DoGet streams of a 21 MB chunk that are opened
   and never read (over 6 connections, as HTTP/2 allows 200 streams each).

Under each, `health` (DoAction) latency from a fresh client, and a DoGet of
the same chunk by another client.

    python benches/attacks.py --binary target/release/pixelquery
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import socket
import statistics
import sys
import tempfile
import threading
import time

import numpy as np
import pyarrow.flight as flight

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "clients" / "python" / "src"))
from pixelquery_flight import Client  # noqa: E402
from pixelquery_flight.testing import LocalServer  # noqa: E402

UTM = "EPSG:32652"
X0, Y0 = 130 * 2560.0, 1625 * 2560.0


def health_ms(uri: str, n: int = 20) -> tuple[float, float]:
    """p50 and max of `health` from a new connection each time, ms."""
    times = []
    for _ in range(n):
        t = time.perf_counter()
        c = flight.connect(uri)
        list(c.do_action(flight.Action("health", b"")))
        c.close()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), max(times)


def rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    work = pathlib.Path(tempfile.mkdtemp(prefix="pixelquery-attacks-"))
    with LocalServer(work / "warehouse", binary=args.binary) as server:
        uri, pid = server.uri, server.proc.pid
        pq = Client(uri)
        pq.create_collection("a", bands=[{"name": "red", "dtype": "uint16"}], grid={"crs": UTM, "resolution": 10, "tile_span": 2560})
        rng = np.random.default_rng(1)
        for k in range(160):
            pq.ingest(rng.integers(1, 10000, (1, 256, 256)).astype(np.uint16), transform=[X0, 10, 0, Y0, 0, -10], crs=UTM,
                      time=f"2024-06-01T00:{k // 60:02d}:{k % 60:02d}Z", bands="red", collection="a", scene_id=f"a{k}", resampling="nearest")
        info = flight.connect(uri).get_flight_info(flight.FlightDescriptor.for_command(json.dumps({"collection": "a"})))
        ticket = info.endpoints[0].ticket
        size = flight.connect(uri).do_get(ticket).read_all().nbytes

        def doget_s() -> float:
            t = time.perf_counter()
            flight.connect(uri).do_get(ticket).read_all()
            return time.perf_counter() - t

        rows = []
        p50, worst = health_ms(uri)
        rows.append(("quiet server", p50, worst, doget_s(), rss_mib(pid), "-"))

        # 1. Idle live connections.
        preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
        idle = []
        for _ in range(1100):
            s = socket.create_connection(("127.0.0.1", int(uri.rsplit(":", 1)[1])))
            s.sendall(preface)
            idle.append(s)
        time.sleep(1)
        p50, worst = health_ms(uri)
        rows.append(("1 100 idle HTTP/2 connections open", p50, worst, doget_s(), rss_mib(pid), f"{len(idle)} open"))
        for s in idle:
            s.close()

        # 2. Stalled readers.
        clients = [flight.connect(uri) for _ in range(6)]
        readers = []
        lock = threading.Lock()

        def open_stalled(c, n):
            for _ in range(n):
                r = c.do_get(ticket)
                with lock:
                    readers.append(r)

        threads = [threading.Thread(target=open_stalled, args=(c, 530 // 6 + (1 if i < 530 % 6 else 0))) for i, c in enumerate(clients)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        time.sleep(2)
        p50, worst = health_ms(uri)
        rows.append(("530 DoGet readers that never read", p50, worst, doget_s(), rss_mib(pid), f"{len(readers)} open"))
        for c in clients:
            c.close()

    print(f"| attack | health p50 ms | health max ms | DoGet of the {size / 1e6:.0f} MB chunk, s | server RSS MiB | |")
    print("|---|---|---|---|---|---|")
    for name, p50, worst, get, rss, note in rows:
        print(f"| {name} | {p50:.1f} | {worst:.1f} | {get:.2f} | {rss:.0f} | {note} |")


if __name__ == "__main__":
    main()
