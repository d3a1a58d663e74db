"""Flight SQL from the ADBC driver: the catalog tables against `describe`,
metadata calls, a join, the point-series table function against the Flight
point answer, auth and read-only refusals."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from pixelquery_flight import Client, InvalidRequest
from pixelquery_flight.errors import NotFound, Unauthorized
from pixelquery_flight.testing import LocalServer

dbapi = pytest.importorskip("adbc_driver_flightsql.dbapi")

UTM52 = "EPSG:32652"
X0, Y0 = 334_000.0, 4_160_000.0  # near lon 127.1, lat 37.6
DATES = ["2024-05-03T02:00:00Z", "2024-06-15T02:03:04Z", "2024-06-25T02:03:04Z", "2024-07-15T02:03:04Z"]


def fill(client, name="s2"):
    client.create_collection(name, bands=[{"name": "red", "dtype": "uint16", "nodata": 0},
                                          {"name": "nir", "dtype": "uint16", "nodata": 0}], grid={"resolution": 10})
    rng = np.random.default_rng(7)
    for k, when in enumerate(DATES):
        a = rng.integers(1, 5000, (2, 300, 300)).astype(np.uint16)
        a[:, :, : 20 * k] = 0  # a different nodata stripe per date
        client.ingest(a, transform=[X0, 10, 0, Y0, 0, -10], crs=UTM52, time=when, bands=["red", "nir"],
                      collection=name, scene_id=f"scene{k}", baseline="05.10" if k else None)


def rows(cursor, sql):
    cursor.execute(sql)
    return cursor.fetch_arrow_table()


def test_catalog_tables_equal_describe_and_join(server, client):
    fill(client)
    d = client.describe("s2")
    with dbapi.connect(server.uri, autocommit=True) as conn, conn.cursor() as cur:
        coll = rows(cur, "SELECT name, scenes, tiles, chunks, bands FROM collections").to_pylist()
        assert rows(cur, "SELECT count(*) AS n FROM chunks").column("n")[0].as_py() == d["chunks"]
        assert rows(cur, "SELECT count(*) AS n FROM observations").column("n")[0].as_py() == sum(
            c["observations"] for t in client.sql("SELECT DISTINCT tile_id FROM chunks").column("tile_id").to_pylist()
            for c in client.describe("s2", t)["chunks"])
        assert coll == [{"name": "s2", "scenes": d["scenes"], "tiles": d["tiles"], "chunks": d["chunks"], "bands": ["red", "nir"]}]
        for tile in sorted(t for t in rows(cur, "SELECT DISTINCT tile_id FROM chunks").column("tile_id").to_pylist()):
            got = rows(cur, f"SELECT band, sum(observations) AS n, sum(bytes) AS b FROM chunks WHERE tile_id = '{tile}' GROUP BY band ORDER BY band")
            want = {}
            for c in client.describe("s2", tile)["chunks"]:
                n, b = want.get(c["band"], (0, 0))
                want[c["band"]] = (n + c["observations"], b + c["bytes"])
            assert {r["band"]: (r["n"], r["b"]) for r in got.to_pylist()} == want, tile
        scenes = rows(cur, "SELECT scene_id, time, tiles, observations, processing_baseline, footprint FROM scenes ORDER BY scene_id")
        assert scenes.num_rows == d["scenes"] == len(DATES)
        assert scenes.column("processing_baseline").to_pylist() == [None, "05.10", "05.10", "05.10"]
        assert [t.isoformat() for t in scenes.column("time").to_pylist()] == [
            t.replace("Z", "+00:00") for t in DATES]
        # WKB polygon (little endian, type 3) around the data in lon/lat.
        wkb = scenes.column("footprint")[0].as_py()
        assert wkb[:5] == b"\x01\x03\x00\x00\x00"
        coords = np.frombuffer(wkb[13:], "<f8").reshape(-1, 2)
        assert coords[:, 0].min() < 127.12 < coords[:, 0].max() and coords[:, 1].min() < 37.56 < coords[:, 1].max()
        # A join: every scene's observations are its chunks' rows.
        joined = rows(cur, """SELECT s.scene_id, count(*) AS n, sum(o.valid_pixels) AS valid
                              FROM scenes s JOIN observations o ON s.collection = o.collection AND s.scene_id = o.scene_id
                              JOIN chunks c ON c.tile_id = o.tile_id AND c.band = o.band AND c.month = o.month
                              GROUP BY s.scene_id ORDER BY s.scene_id""").to_pylist()
        assert [r["n"] for r in joined] == scenes.column("observations").to_pylist()
        # Less valid pixels as the nodata stripe widens.
        assert [r["valid"] for r in joined] == sorted((r["valid"] for r in joined), reverse=True)
        # A chunk's valid pixels are the sum of its observations'.
        mismatched = rows(cur, """SELECT c.tile_id FROM chunks c JOIN
                                    (SELECT tile_id, band, month, sum(valid_pixels) AS v FROM observations GROUP BY tile_id, band, month) o
                                  ON c.tile_id = o.tile_id AND c.band = o.band AND c.month = o.month
                                  WHERE c.valid_pixels <> o.v""")
        assert mismatched.num_rows == 0
        objects = conn.adbc_get_objects().read_all().to_pylist()
        tables = objects[0]["catalog_db_schemas"][0]["db_schema_tables"]
        assert sorted(t["table_name"] for t in tables) == ["chunks", "collections", "observations", "scenes"]
        assert objects[0]["catalog_name"] == "pixelquery"
        assert conn.adbc_get_table_schema("chunks").field("observations").type == pa.uint64()
        assert "TABLE" in conn.adbc_get_table_types()


def test_observation_statistics_survive_compaction_delete_and_restart(tmp_path):
    server = LocalServer(tmp_path / "wh")
    try:
        with Client(server.uri) as client:
            fill(client)
            before = client.sql("SELECT tile_id, band, scene_id, valid_pixels, min, max, mean, bytes FROM observations "
                                "ORDER BY tile_id, band, scene_id").to_pylist()
            assert all(r["valid_pixels"] is not None and r["bytes"] > 0 for r in before)
            client.compact("s2")
            assert client.sql("SELECT max(batches) AS b FROM chunks").column("b")[0].as_py() == 1
            same = "SELECT tile_id, band, scene_id, valid_pixels, min, max, mean, bytes FROM observations ORDER BY tile_id, band, scene_id"
            assert client.sql(same).to_pylist() == before
            client.delete("s2", scene_id="scene1")
            after = client.sql(same).to_pylist()
            assert after == [r for r in before if r["scene_id"] != "scene1"]
        server.stop()
        server = LocalServer(tmp_path / "wh")
        with Client(server.uri) as client:
            assert client.sql(same).to_pylist() == after
            # The table reads the live catalog: a new scene shows at once.
            client.ingest(np.full((2, 50, 50), 9, np.uint16), transform=[X0, 10, 0, Y0, 0, -10], crs=UTM52,
                          time="2024-08-01T00:00:00Z", bands=["red", "nir"], collection="s2", scene_id="late")
            assert client.sql("SELECT count(*) AS n FROM scenes").column("n")[0].as_py() == 4
    finally:
        server.stop()


def test_point_series_equals_the_flight_point_answer(server, client):
    fill(client)
    from rasterio.warp import transform

    # Inside the rasters, right of the widest nodata stripe.
    xs, ys = [X0 + 1205, X0 + 2005, X0 + 2905], [Y0 - 1505, Y0 - 405, Y0 - 2905]
    lons, lats = transform(UTM52, "EPSG:4326", xs, ys)
    points = list(zip(lons, lats))
    for lon, lat in points:
        q = {"collection": "s2", "point": [lon, lat]}
        want = client._flight.do_get(flight.Ticket(json.dumps(q))).read_all()
        got = client.sql(f"SELECT * FROM point_series('s2', {lon}, {lat}) ORDER BY time")
        assert got.num_rows == len(DATES)
        assert got.schema.names == want.schema.names
        assert got.to_pylist() == want.sort_by("time").to_pylist()
        assert all(got.column("red_valid").to_pylist()), (lon, lat)
    # In a UTM CRS, and in a query with other tables.
    utm = client.sql(f"SELECT red FROM point_series('s2', {X0 + 1005}, {Y0 - 1005}, '{UTM52}') ORDER BY time")
    assert utm.num_rows == len(DATES)
    with pytest.raises(NotFound, match="nope"):
        client.sql("SELECT * FROM point_series('nope', 127.1, 37.5)")
    with pytest.raises(InvalidRequest, match="point_series"):
        client.sql("SELECT * FROM point_series('s2', 'east', 37.5)")


def test_writes_are_refused_and_change_nothing(server, client):
    fill(client)
    before = client.sql("SELECT * FROM chunks ORDER BY tile_id, band, month")
    for sql in ["INSERT INTO chunks (collection) VALUES ('x')", "DELETE FROM scenes", "CREATE TABLE t AS SELECT 1",
                "COPY (SELECT 1) TO 'out.csv'", "DROP TABLE chunks", "SET datafusion.execution.batch_size = 1"]:
        with pytest.raises(Unauthorized, match="read-only"):
            client.sql(sql)
    with pytest.raises(InvalidRequest, match="no_such_column"):
        client.sql("SELECT no_such_column FROM chunks")
    assert client.sql("SELECT * FROM chunks ORDER BY tile_id, band, month") == before
    assert client.describe("s2")["scenes"] == len(DATES)


READ = "read-token-0123456789abcdef"


def test_sql_needs_a_valid_token(tmp_path):
    access = tmp_path / "access"
    access.write_text(f"read {READ}\n")
    server = LocalServer(tmp_path / "wh", ["--auth-file", str(access)])
    try:
        with pytest.raises(Exception) as wrong:
            with dbapi.connect(server.uri, db_kwargs={"adbc.flight.sql.authorization_header": "Bearer wrong-token-0123456789abcdef"},
                               autocommit=True) as conn, conn.cursor() as cur:
                cur.execute("SELECT * FROM collections")
        assert "UNAUTHENTICATED" in str(wrong.value) or "Unauthenticated" in str(wrong.value), wrong.value
        with Client(server.uri, token=READ) as client:
            assert client.sql("SELECT count(*) AS n FROM collections").column("n")[0].as_py() == 0
    finally:
        server.stop()
