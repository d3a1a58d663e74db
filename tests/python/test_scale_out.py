"""Scale-out on a real S3-compatible store (SeaweedFS on loopback): three
`pixelquery serve` processes on one bucket ingesting at once, scene ids sent
to two servers at once stored once, a server killed mid-ingest, endpoint
locations spread over the servers with failover, Dask reading every endpoint
in parallel, and the catalog read as a Delta table by `deltalake` and polars."""

import concurrent.futures
import socket
import threading
import time

import numpy as np
import pyarrow as pa
import pytest

from pixelquery_flight import Client
from pixelquery_flight.testing import LocalServer, SeaweedFS

BUCKET = "pqtest"
KEY, SECRET = "pixelquery-test", "pixelquery-test-secret-0123456789"
SINU = "+proj=sinu +lon_0=0 +x_0=0 +y_0=0 +R=6378137 +units=m +no_defs"
SIZE = 120
T0 = 1717200000000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with SeaweedFS(tmp_path_factory.mktemp("seaweed"), BUCKET, KEY, SECRET) as store:
        yield store.env


def _delta_options(env) -> dict:
    """storage_options of Python deltalake for the test store (reads only)."""
    return {"AWS_ENDPOINT_URL": env["AWS_ENDPOINT_URL"], "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"}


class Cluster:
    """Servers sharing `s3://pqtest/<prefix>`, each on a port fixed up front
    so that every one can be given all as --peers."""

    def __init__(self, env, prefix: str, n: int, tmp_path, extra=()):
        self.env, self.url, self.tmp, self.extra = env, f"s3://{BUCKET}/{prefix}", tmp_path, list(extra)
        self.ports = [_free_port() for _ in range(n)]
        self.uris = [f"grpc://127.0.0.1:{p}" for p in self.ports]
        self.servers = [self.start(i) for i in range(n)]

    def start(self, i: int) -> LocalServer:
        cache = self.tmp / f"copy-{i}-{time.monotonic_ns()}"
        args = ["--cache-dir", str(cache), "--advertise", self.uris[i], "--peers", ",".join(self.uris), *self.extra]
        return LocalServer(self.url, extra_args=args, listen=f"127.0.0.1:{self.ports[i]}", env=self.env)

    def stop(self):
        for s in self.servers:
            s.stop()


def scene(n: int, value: int = 0):
    """Scene n: SIZE x SIZE uint16 at a place within four tiles."""
    off_x, off_y = (n * 37) % 200, (n * 23) % 200
    x0, y0 = 100 * 2560.0 + off_x * 10, 201 * 2560.0 - off_y * 10
    data = np.full((SIZE, SIZE), (value or n) % 60000 + 1, dtype=np.uint16)
    return dict(array=data, transform=[x0, 10, 0, y0, 0, -10], crs=SINU, time=T0 + n * 3600_000, bands="red",
                collection="s2", scene_id=f"scene-{n}", nodata=0)


def create(client: Client):
    client.create_collection("s2", bands=[{"name": "red", "dtype": "uint16", "nodata": 0}], grid={"crs": SINU, "resolution": 10})


def scene_rows(table: pa.Table) -> dict:
    """scene id -> number of (tile, band) rows."""
    out: dict = {}
    for s in table["scene_id"].to_pylist():
        out[s] = out.get(s, 0) + 1
    return out


def test_three_servers_ingest_at_once_and_store_each_scene_once(s3, tmp_path):
    cluster = Cluster(s3, "three", 3, tmp_path)
    try:
        clients = [Client(u) for u in cluster.uris]
        create(clients[0])
        twice = list(range(60, 70))
        results: dict = {}

        def writer(k: int):
            for n in range(k * 20, k * 20 + 20):
                results[n] = clients[k].ingest(**scene(n))

        def double(n: int):
            a, b = Client(cluster.uris[n % 3]), Client(cluster.uris[(n + 1) % 3])
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                fa, fb = pool.submit(a.ingest, **scene(n)), pool.submit(b.ingest, **scene(n))
                results[n] = (fa.result(), fb.result())

        threads = [threading.Thread(target=writer, args=(k,)) for k in range(3)]
        threads += [threading.Thread(target=double, args=(n,)) for n in twice]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for n in twice:
            dups = [r["duplicate"] for r in results[n]]
            assert sorted(dups) == [False, True], f"scene {n}: {results[n]}"
        expected = {f"scene-{n}" for n in range(70)}
        tables = []
        for c in clients:
            assert c.describe("s2")["scenes"] == 70
            t = c.query("s2")
            rows = scene_rows(t)
            assert set(rows) == expected
            tables.append(t.sort_by([("scene_id", "ascending"), ("tile_id", "ascending")]))
        assert tables[0].equals(tables[1]) and tables[0].equals(tables[2])
        # Every (scene, tile) row once: no scene stored twice.
        keys = list(zip(tables[0]["scene_id"].to_pylist(), tables[0]["tile_id"].to_pylist()))
        assert len(keys) == len(set(keys))
    finally:
        cluster.stop()


def test_locations_spread_and_fail_over_and_dask_reads_every_endpoint(s3, tmp_path):
    import pyarrow.flight as flight

    cluster = Cluster(s3, "spread", 3, tmp_path)
    try:
        c = Client(cluster.uris[0])
        create(c)
        for n in range(12):
            # Three months: a dozen chunks, so a dozen endpoints.
            c.ingest(**{**scene(n), "time": T0 + (n % 3) * 32 * 86400_000})
        info = c._flight.get_flight_info(flight.FlightDescriptor.for_command(b'{"collection": "s2"}'))
        endpoints = list(info.endpoints)
        assert len(endpoints) >= 6
        firsts: dict = {}
        for ep in endpoints:
            uris = [loc.uri.decode() for loc in ep.locations]
            assert sorted(uris) == sorted(cluster.uris)
            firsts[uris[0]] = firsts.get(uris[0], 0) + 1
        print(f"first locations over {len(endpoints)} endpoints: {sorted(firsts.values())}")
        assert all(firsts.get(u, 0) >= len(endpoints) / 6 for u in cluster.uris), firsts
        # Every ticket gives the same bytes from every server.
        for ep in endpoints:
            bodies = []
            for u in cluster.uris:
                reader = flight.connect(u).do_get(ep.ticket)
                sink = pa.BufferOutputStream()
                with pa.ipc.new_stream(sink, reader.schema) as w:
                    for chunk in reader:
                        w.write_batch(chunk.data)
                bodies.append(sink.getvalue().to_pybytes())
            assert bodies[0] == bodies[1] == bodies[2]
        whole = c.query("s2", parallel=3)

        # Dask: one partition per endpoint, read on two workers.
        from distributed import Client as DaskClient, LocalCluster
        import pixelquery_flight.dask as pqd

        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1") as lc, \
                DaskClient(lc) as dc:
            df = pqd.read_query(cluster.uris[1], "s2")
            assert df.npartitions == len(endpoints)
            got = df.compute()
            assert sorted(zip(got["scene_id"], got["tile_id"])) == sorted(zip(whole["scene_id"].to_pylist(), whole["tile_id"].to_pylist()))
            # A load as dask arrays: each window read by a worker process
            # from its endpoint's locations, equal to an in-process load.
            area = dict(bbox=[256000, 512000, 260000, 514560], bbox_crs=SINU, crs=SINU, resolution=10)
            lazy = c.load("s2", chunks={"x": 128, "y": 128}, **area)
            assert lazy["red"].data.npartitions > 1
            assert lazy.compute().identical(c.load("s2", **area))
            # Files ingested by the workers against the pool of servers.
            import rasterio
            from rasterio.transform import Affine
            paths = []
            for n in range(40, 44):
                sc = scene(n)
                p = tmp_path / f"scene_{n}.tif"
                with rasterio.open(p, "w", driver="GTiff", width=SIZE, height=SIZE, count=1, dtype="uint16", crs=SINU,
                                   transform=Affine.from_gdal(*sc["transform"]), nodata=0) as dst:
                    dst.write(sc["array"], 1)
                    dst.set_band_description(1, "red")
                    dst.update_tags(TIFFTAG_DATETIME="2024:06:01 00:00:00")
                paths.append(str(p))
            done = pqd.ingest_files(dc, paths, cluster.uris, "s2")
            assert [d["server"] for d in done] == [cluster.uris[i % 3] for i in range(4)]
            assert all(not d["duplicate"] for d in done)
            del dc
        assert c.describe("s2")["scenes"] == 16

        # One server stops: the same FlightInfo's endpoints fail over.
        cluster.servers[1].stop()
        again = c.query("s2", parallel=3)
        assert scene_rows(again) == scene_rows(c.query("s2"))
    finally:
        cluster.stop()


def test_kill_mid_ingest_loses_no_acknowledged_scene_and_gc_removes_orphans(s3, tmp_path):
    # A short request timeout: gc may then take objects 15 s old.
    cluster = Cluster(s3, "crash", 2, tmp_path, ["--request-timeout-secs", "5"])
    try:
        a, b = Client(cluster.uris[0]), Client(cluster.uris[1])
        create(a)
        acked, stalls = set(), []
        stop = threading.Event()

        def steady():
            n = 1000
            while not stop.is_set():
                t = time.monotonic()
                b.ingest(**scene(n))
                stalls.append(time.monotonic() - t)
                acked.add(f"scene-{n}")
                n += 1

        def doomed():
            n = 2000
            while True:
                try:
                    a.ingest(**scene(n))
                except Exception:
                    return
                acked.add(f"scene-{n}")
                n += 1

        threads = [threading.Thread(target=steady), threading.Thread(target=doomed)]
        for t in threads:
            t.start()
        time.sleep(3)
        cluster.servers[0].kill()
        time.sleep(2)
        stop.set()
        for t in threads:
            t.join()
        print(f"kill -9: {len(acked)} scenes acknowledged, the other server's longest put {max(stalls):.3f} s over {len(stalls)} puts")
        assert max(stalls) < 2.0, f"the other server's puts stalled {max(stalls):.2f} s"
        cluster.servers[0] = cluster.start(0)
        for uri in cluster.uris:
            c = Client(uri)
            rows = scene_rows(c.query("s2"))
            assert acked <= set(rows), acked - set(rows)
            # No partial scene: each has its (tile, band) rows, the same on
            # every server; exactly once each.
            for sid, count in rows.items():
                n = int(sid.split("-")[1])
                sc = scene(n)
                off_x, off_y = (n * 37) % 200, (n * 23) % 200
                tiles = (2 if off_x + SIZE > 256 else 1) * (2 if off_y + SIZE > 256 else 1)
                assert count == tiles, (sid, count, tiles, sc["transform"])
        before = Client(cluster.uris[1]).query("s2").sort_by([("scene_id", "ascending"), ("tile_id", "ascending")])
        time.sleep(16)
        gc = Client(cluster.uris[0])._action("gc", {"collection": "s2", "older_than_secs": 15})
        # Left: exactly the objects committed rows name.
        import deltalake
        from pyarrow import fs

        named = deltalake.DeltaTable(f"s3://{BUCKET}/crash/s2/_catalog", storage_options=_delta_options(s3)).to_pyarrow_table()
        s3fs = fs.S3FileSystem(access_key=KEY, secret_key=SECRET, endpoint_override=s3["AWS_ENDPOINT_URL"].split("//")[1], scheme="http",
                               region="us-east-1")
        stored = {f.path.split("/s2/", 1)[1] for f in s3fs.get_file_info(fs.FileSelector(f"{BUCKET}/crash/s2/tiles", recursive=True))
                  if f.type == fs.FileType.File}
        assert stored == set(named["object"].to_pylist()), (gc, len(stored), named.num_rows)
        print(f"gc: {gc}; {len(stored)} objects left, each named by a committed row")
        after = Client(cluster.uris[1]).query("s2").sort_by([("scene_id", "ascending"), ("tile_id", "ascending")])
        assert before.equals(after)
    finally:
        cluster.stop()


def test_catalog_is_a_delta_table_deltalake_and_polars_read(s3, tmp_path):
    import deltalake
    import polars as pl

    cluster = Cluster(s3, "delta", 1, tmp_path)
    try:
        c = Client(cluster.uris[0])
        create(c)
        for n in range(5):
            c.ingest(**scene(n))
        options = _delta_options(s3)
        url = f"s3://{BUCKET}/delta/s2/_catalog"
        table = deltalake.DeltaTable(url, storage_options=options).to_pyarrow_table()
        assert len(set(table["scene_id"].to_pylist())) == c.describe("s2")["scenes"] == 5
        frame = pl.read_delta(url, storage_options=options)
        assert frame["scene_id"].n_unique() == 5
        # A delete is a Delta commit too: Delta readers no longer see it.
        c.delete("s2", scene_id="scene-4")
        table = deltalake.DeltaTable(url, storage_options=options).to_pyarrow_table()
        assert sorted(set(table["scene_id"].to_pylist())) == [f"scene-{n}" for n in range(4)]
        assert c.describe("s2")["scenes"] == 4
        assert set(frame.columns) >= {"scene_id", "acquired_at", "tile_id", "band", "object", "bytes"}
        # A compaction merges the table's files (one per scene) into one;
        # the rows Delta readers see do not change.
        delta = deltalake.DeltaTable(url, storage_options=options)
        assert len(delta.file_uris()) == 4
        rows_before = delta.to_pyarrow_table().sort_by("object")
        # (The delete above left every chunk one batch: only the table's
        # files are merged.)
        assert c.compact("s2")["chunks_rewritten"] == 0
        delta = deltalake.DeltaTable(url, storage_options=options)
        assert len(delta.file_uris()) == 1
        assert delta.history(1)[0]["operation"] == "OPTIMIZE"
        assert delta.to_pyarrow_table().sort_by("object").equals(rows_before)
        # A delete by tile takes that tile's rows out of the table.
        tile = rows_before["tile_id"][0].as_py()
        out = c.delete("s2", tile=tile)
        assert out["rows_removed"] == sum(1 for t in rows_before["tile_id"].to_pylist() if t == tile)
        left = deltalake.DeltaTable(url, storage_options=options).to_pyarrow_table()
        assert tile not in set(left["tile_id"].to_pylist())
        assert left.num_rows == rows_before.num_rows - out["rows_removed"]
    finally:
        cluster.stop()
