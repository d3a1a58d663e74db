"""Crash safety: writers ingest scenes in a loop while the server is killed
with SIGKILL at random moments, 22 times. Afterwards every acknowledged scene
is present exactly once, no scene is partial, and every chunk file opens
with plain pyarrow (the restarted server reads them all with arrow-rs)."""

import collections
import json
import pathlib
import random
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.flight as flight

from pixelquery_flight.testing import LocalServer

SINU = "+proj=sinu +lon_0=0 +x_0=0 +y_0=0 +R=6378137 +units=m +no_defs"
SIZE = 160


def geometry(n: int):
    """Pixel offset of scene n from tile x0100_y0200's corner, and how many
    tiles (observations) it covers."""
    off_x, off_y = (n * 53) % 200, (n * 29) % 200
    tiles = (2 if off_x + SIZE > 256 else 1) * (2 if off_y + SIZE > 256 else 1)
    return off_x, off_y, tiles


def ingest(client, n: int):
    off_x, off_y, _ = geometry(n)
    x0, y0 = 100 * 2560.0 + off_x * 10, 201 * 2560.0 - off_y * 10
    desc = {
        "collection": "crash", "scene_id": f"scene-{n}", "acquired_at": 1717200000000 + n * 3600_000,
        "crs": SINU, "geotransform": [x0, 10, 0, y0, 0, -10], "width": SIZE, "height": SIZE,
        "bands": [{"name": "red", "dtype": "uint16", "nodata": 0}],
    }
    red = np.full((SIZE, SIZE), n % 60000 + 1, dtype=np.uint16)
    schema = pa.schema([("red", pa.uint16())])
    writer, reader = client.do_put(flight.FlightDescriptor.for_command(json.dumps(desc)), schema)
    for top in range(0, SIZE, 40):
        writer.write_batch(pa.record_batch([pa.array(red[top:top + 40].ravel())], schema=schema))
    writer.done_writing()
    buf = reader.read()
    writer.close()
    return json.loads(buf.to_pybytes())


def test_sigkill_at_random_moments_loses_nothing(tmp_path):
    warehouse = tmp_path / "warehouse"
    rng = random.Random(20261124)
    acked: dict[str, int] = {}
    lock = threading.Lock()
    counter = iter(range(10**9))
    kills = 0
    for round_ in range(22):
        server = LocalServer(warehouse)
        client = flight.connect(server.uri)
        if round_ == 0:
            list(client.do_action(flight.Action("create_collection", json.dumps(
                {"name": "crash", "bands": [{"name": "red", "dtype": "uint16", "nodata": 0}], "grid": {"resolution": 10}}).encode())))

        def writer():
            c = flight.connect(server.uri)
            while True:
                with lock:
                    n = next(counter)
                try:
                    meta = ingest(c, n)
                except Exception:
                    return  # the server died under us
                with lock:
                    acked[meta["scene_id"]] = meta["observations"]

        threads = [threading.Thread(target=writer) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(rng.uniform(0.05, 0.5))
        server.kill()
        kills += 1
        for t in threads:
            t.join(timeout=60)
            assert not t.is_alive()

    assert kills >= 20
    assert len(acked) > 20, f"only {len(acked)} scenes were acknowledged"
    server = LocalServer(warehouse)
    try:
        client = flight.connect(server.uri)
        q = json.dumps({"collection": "crash"})
        info = client.get_flight_info(flight.FlightDescriptor.for_command(q))
        tables = [client.do_get(ep.ticket).read_all() for ep in info.endpoints]
        rows = pa.concat_tables(tables) if tables else None
        per_scene = collections.Counter(rows["scene_id"].to_pylist()) if rows is not None else collections.Counter()
        for scene, observations in acked.items():
            assert per_scene[scene] == observations, f"acknowledged {scene}: {per_scene[scene]} of {observations} observations"
        # Scenes committed whose answer was lost in the kill are whole too.
        for scene, count in per_scene.items():
            assert count == geometry(int(scene.split("-")[1]))[2], f"{scene} is partial: {count} observations"
        lengths = pc.list_value_length(rows["pixels"]).to_pylist()
        assert set(lengths) == {256 * 256}
        # Every chunk file opens with plain pyarrow, with exactly the served rows.
        file_rows = 0
        for path in pathlib.Path(warehouse).glob("crash/tiles/*/*/*.arrow"):
            with pa.OSFile(str(path)) as f:
                t = pa.ipc.open_stream(f).read_all()
            assert set(pc.list_value_length(t["pixels"]).to_pylist()) <= {256 * 256}
            file_rows += t.num_rows
        assert file_rows == rows.num_rows == info.total_records
        print(f"{kills} kills, {len(acked)} acknowledged scenes, {len(per_scene)} present, {rows.num_rows} observations")
    finally:
        server.stop()
