"""The server through plain pyarrow.flight: the README snippet, raw DoPut
and DoGet, point series, chunk files read by plain pyarrow, and errors."""

import json
import pathlib
import re

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def action(client, name, body=None):
    payload = json.dumps(body).encode() if body is not None else b""
    results = list(client.do_action(flight.Action(name, payload)))
    return json.loads(results[0].body.to_pybytes())


def put(client, descriptor: dict, columns: dict, rows_per_batch=128):
    """DoPut of whole-row strips; returns the PutResult metadata."""
    height, width = descriptor["height"], descriptor["width"]
    schema = pa.schema([(name, pa.from_numpy_dtype(arr.dtype)) for name, arr in columns.items()])
    writer, reader = client.do_put(flight.FlightDescriptor.for_command(json.dumps(descriptor)), schema)
    for top in range(0, height, rows_per_batch):
        arrays = [pa.array(arr[top:top + rows_per_batch].ravel()) for arr in columns.values()]
        writer.write_batch(pa.record_batch(arrays, schema=schema))
    writer.done_writing()
    buf = reader.read()
    writer.close()  # raises the server's error, if any
    return json.loads(buf.to_pybytes())


def readme_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- snippet: quickstart -->\s*```python\n(.*?)```", text, re.S)
    assert m, "README.md lost its quickstart snippet"
    return m.group(1)


def test_readme_snippet_runs_against_the_server(server):
    code = readme_snippet().replace("grpc://127.0.0.1:8815", server.uri)
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    # The snippet checks its own values; check what it left behind too.
    assert ns["result"]["observations"] >= 1 and not ns["result"]["duplicate"]
    assert ns["pixels"].shape == (256, 256)
    assert ns["mask"].any() and (ns["pixels"][ns["mask"]] == 1234).all()


def make_collection(client, name="s2"):
    return action(client, "create_collection", {
        "name": name,
        "bands": [{"name": "red", "dtype": "uint16", "nodata": 0}, {"name": "nir", "dtype": "uint16", "nodata": 0}],
        "grid": {"resolution": 10},
    })


# A 512 x 512 raster exactly on tiles x4380_y1632 .. x4381_y1633 of the
# default grid (sinusoidal, 10 m): pixels are copied, so values are exact.
X0, Y0 = 4380 * 2560.0, 1634 * 2560.0


def grid_raster(offset=0):
    rows, cols = np.mgrid[0:512, 0:512]
    red = (rows * 512 + cols) % 50000 + 1 + offset
    nir = red + 7
    return red.astype(np.uint16), nir.astype(np.uint16)


def descriptor(scene, when, **kw):
    d = {
        "collection": "s2", "scene_id": scene, "acquired_at": when,
        "crs": "+proj=sinu +lon_0=0 +x_0=0 +y_0=0 +R=6378137 +units=m +no_defs",
        "geotransform": [X0, 10, 0, Y0, 0, -10], "width": 512, "height": 512,
        "bands": [{"name": "red", "dtype": "uint16", "nodata": 0}, {"name": "nir", "dtype": "uint16", "nodata": 0}],
    }
    d.update(kw)
    return d


def test_put_get_point_and_chunk_files(server):
    client = server.client()
    make_collection(client)
    red, nir = grid_raster()
    valid = np.ones((512, 512), dtype=bool)
    valid[10:20, 30:40] = False
    meta = put(client, descriptor("a", "2024-06-15T02:03:04Z"), {"red": red, "nir": nir, "valid": valid})
    assert sorted(meta["tiles"]) == ["x4380_y1632", "x4380_y1633", "x4381_y1632", "x4381_y1633"]
    assert meta["observations"] == 8 and meta["duplicate"] is False
    red2, nir2 = grid_raster(offset=100)
    put(client, descriptor("b", 1719799384000), {"red": red2, "nir": nir2})
    # A retry of scene "a" adds nothing.
    assert put(client, descriptor("a", "2024-06-15T02:03:04Z"), {"red": red, "nir": nir})["duplicate"] is True

    # GetFlightInfo + DoGet of the north-west tile, red only, June only.
    q = {"collection": "s2", "tiles": ["x4380_y1633"], "bands": ["red"], "start": "2024-06-01", "end": "2024-07-01"}
    info = client.get_flight_info(flight.FlightDescriptor.for_command(json.dumps(q)))
    assert info.total_records == 1 and len(info.endpoints) == 1
    table = client.do_get(info.endpoints[0].ticket).read_all()
    assert table.column_names == ["tile_id", "band", "time", "scene_id", "pixels", "mask"]
    assert table["scene_id"].to_pylist() == ["a"]
    gt = json.loads(table.schema.metadata[b"geotransform"])
    assert gt == [X0, 10.0, 0.0, Y0, 0.0, -10.0]
    pixels = table["pixels"][0].values.to_numpy().reshape(256, 256)
    mask = table["mask"][0].values.to_numpy(zero_copy_only=False).reshape(256, 256)
    np.testing.assert_array_equal(pixels[mask], red[:256, :256][mask])
    np.testing.assert_array_equal(mask, valid[:256, :256])

    # Point series at the centre of source pixel (row 300, col 260): both dates.
    x, y = X0 + 260.5 * 10, Y0 - 300.5 * 10
    crs = descriptor("", "")["crs"]
    series = client.do_get(flight.Ticket(json.dumps({"collection": "s2", "point": [x, y], "bbox_crs": crs}))).read_all()
    assert series.column_names == ["time", "scene_id", "tile_id", "red", "red_valid", "nir", "nir_valid"]
    assert series["scene_id"].to_pylist() == ["a", "b"]
    assert series["red"].to_pylist() == [int(red[300, 260]), int(red2[300, 260])]
    assert series["nir"].to_pylist() == [int(nir[300, 260]), int(nir2[300, 260])]
    assert series["tile_id"].to_pylist() == ["x4381_y1632"] * 2

    # ListFlights: one flight per chunk.
    flights = list(client.list_flights(json.dumps({"collection": "s2", "bands": ["nir"]}).encode()))
    assert len(flights) == 4 * 2  # 4 tiles x 2 months of nir
    assert {f.total_records for f in flights} == {1}

    # Chunk files open with plain pyarrow, no PixelQuery code.
    chunks = sorted(pathlib.Path(server.warehouse).glob("s2/tiles/*/*/*.arrow"))
    assert len(chunks) == 16
    june_red = pathlib.Path(server.warehouse) / "s2/tiles/x4380_y1633/2024-06/red.arrow"
    with pa.OSFile(str(june_red)) as f:
        t = pa.ipc.open_stream(f).read_all()
    assert t.num_rows == 1
    assert t.schema.field("time").type == pa.timestamp("ms", tz="UTC")
    assert t.schema.metadata[b"tile_id"] == b"x4380_y1633"
    assert b"crs" in t.schema.metadata and t.schema.metadata[b"tile_px"] == b"256"
    np.testing.assert_array_equal(t["pixels"][0].values.to_numpy().reshape(256, 256)[mask], red[:256, :256][mask])


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_compressed_chunk_files_open_with_plain_pyarrow(server, codec):
    client = server.client()
    made = action(client, "create_collection", {
        "name": "s2", "bands": [{"name": "red", "dtype": "uint16", "nodata": 0}, {"name": "nir", "dtype": "uint16", "nodata": 0}],
        "grid": {"resolution": 10}, "compression": codec,
    })
    assert made["compression"] == codec
    rows, cols = np.mgrid[0:512, 0:512]
    red = (rows // 4 * 3 + cols // 4 + 1).astype(np.uint16)
    nir = red + 7
    put(client, descriptor("a", "2024-06-15T02:03:04Z"), {"red": red, "nir": nir})
    june_red = pathlib.Path(server.warehouse) / "s2/tiles/x4380_y1633/2024-06/red.arrow"
    with pa.OSFile(str(june_red)) as f:
        t = pa.ipc.open_stream(f).read_all()
    np.testing.assert_array_equal(t["pixels"][0].values.to_numpy().reshape(256, 256), red[:256, :256])
    assert june_red.stat().st_size < 256 * 256 * 2 / 2
    # DoGet answers the same rows, as stored or decompressed on request.
    for ticket in ({"collection": "s2", "tiles": ["x4380_y1633"], "bands": ["red"]},
                   {"collection": "s2", "tiles": ["x4380_y1633"], "bands": ["red"], "decompress": True}):
        got = client.do_get(flight.Ticket(json.dumps(ticket))).read_all()
        assert got["pixels"].to_pylist() == t["pixels"].to_pylist()
    # The package client asks for either.
    from pixelquery_flight import Client

    c = Client(server.uri)
    for decompress in (False, True):
        got = c.query("s2", tiles=["x4380_y1633"], bands="red", decompress=decompress)
        assert got["pixels"].to_pylist() == t["pixels"].to_pylist()


def test_errors_map_to_pyarrow_exceptions(server):
    client = server.client()
    make_collection(client)
    before = sorted(p.relative_to(server.warehouse) for p in pathlib.Path(server.warehouse).rglob("*"))
    red, nir = grid_raster()
    with pytest.raises(pa.ArrowInvalid, match="bands\\[0\\].name"):
        put(client, descriptor("x", "2024-06-15", bands=[{"name": "blue", "dtype": "uint16"}]), {"blue": red})
    with pytest.raises(pa.ArrowInvalid, match="column nir"):
        put(client, descriptor("x", "2024-06-15"), {"red": red})
    with pytest.raises(pa.ArrowInvalid, match="start"):
        client.get_flight_info(flight.FlightDescriptor.for_command(json.dumps({"collection": "s2", "start": "2025-01-01", "end": "2024-01-01"})))
    with pytest.raises(pa.ArrowKeyError, match="nope"):
        client.get_flight_info(flight.FlightDescriptor.for_command(json.dumps({"collection": "nope"})))
    with pytest.raises(pa.ArrowInvalid, match="tiles\\[0\\]"):
        client.do_get(flight.Ticket(json.dumps({"collection": "s2", "tiles": ["x1_y2"]}))).read_all()
    after = sorted(p.relative_to(server.warehouse) for p in pathlib.Path(server.warehouse).rglob("*"))
    assert after == before


def test_actions_and_profiles(server):
    client = server.client()
    types = {a.type for a in client.list_actions()}
    assert {"health", "list_collections", "create_collection", "describe"} <= types
    assert action(client, "health")["status"] == "ok"
    s2 = action(client, "create_collection", {"name": "sentinel", "profile": "sentinel2_l2a"})
    assert s2["grid"]["tile_px"] == 256 and s2["profile"] == "sentinel2_l2a"
    assert any(b["name"] == "scl" and b["resampling"] == "nearest" for b in s2["bands"])
    planet = action(client, "create_collection", {"name": "planet", "profile": "planet_sr"})
    assert planet["grid"]["tile_px"] == 854
    names = [c["name"] for c in action(client, "list_collections")]
    assert names == ["planet", "sentinel"]
    assert action(client, "describe", {"collection": "sentinel"})["scenes"] == 0


def test_catalog_snapshot_is_geoparquet_and_delete_compact_work(server):
    import pyarrow.parquet as pq

    client = server.client()
    make_collection(client)
    red, nir = grid_raster()
    for i, when in enumerate(["2024-06-01", "2024-06-11", "2024-06-21"]):
        put(client, descriptor(f"s{i}", when), {"red": red + i, "nir": nir + i})
    assert action(client, "compact", {"collection": "s2"})["chunks_rewritten"] == 8
    snap = pq.read_table(pathlib.Path(server.warehouse) / "s2" / "catalog.parquet")
    assert snap.num_rows == 8  # 4 tiles x 2 bands, one month
    assert sum(snap["observations"].to_pylist()) == 24
    assert set(snap["generation"].to_pylist()) == {1}
    geo = json.loads(snap.schema.metadata[b"geo"])
    assert geo["primary_column"] == "geometry" and geo["columns"]["geometry"]["encoding"] == "WKB"
    assert geo["columns"]["geometry"]["crs"]["type"] in ("ProjectedCRS", "BoundCRS")
    red_rows = [r for r in snap.to_pylist() if r["tile_id"] == "x4380_y1633" and r["band"] == "red"]
    assert len(red_rows) == 1
    r = red_rows[0]
    assert r["scene_ids"] == ["s0", "s1", "s2"]
    assert r["min"] == float(red[:256, :256].min()) and r["max"] == float(red[:256, :256].max() + 2)
    assert len(r["geometry"]) == 93  # WKB polygon with 5 points
    # Deleting one scene rewrites every chunk; the chunk files stay plain Arrow.
    assert action(client, "delete", {"collection": "s2", "scene_id": "s1"})["rows_removed"] == 8
    q = {"collection": "s2", "tiles": ["x4380_y1633"], "bands": ["red"]}
    info = client.get_flight_info(flight.FlightDescriptor.for_command(json.dumps(q)))
    t = client.do_get(info.endpoints[0].ticket).read_all()
    assert t["scene_id"].to_pylist() == ["s0", "s2"]
