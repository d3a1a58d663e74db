"""Every public function of pixelquery_flight against a real server,
including the error paths."""

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest

import pixelquery_flight as pqf
from pixelquery_flight import Client
from pixelquery_flight.errors import translate

SINU = "+proj=sinu +lon_0=0 +x_0=0 +y_0=0 +R=6378137 +units=m +no_defs"
# Tile x4380_y1633's north-west corner on the default grid.
X0, Y0 = 4380 * 2560.0, 1634 * 2560.0
GT = (X0, 10.0, 0.0, Y0, 0.0, -10.0)


def pattern(h=300, w=400, offset=0):
    r, c = np.mgrid[0:h, 0:w]
    return ((r * 401 + c * 3) % 30000 + 1 + offset).astype(np.uint16)


def make(client, name="s2"):
    return client.create_collection(name, bands=[{"name": "red", "dtype": "uint16", "nodata": 0}, {"name": "nir", "dtype": "uint16", "nodata": 0}],
                                    grid={"resolution": 10})


def test_collections_describe_health_and_profiles(client):
    assert client.health()["status"] == "ok"
    assert client.collections() == []
    s2 = client.create_collection("sentinel", profile="sentinel2_l2a")
    assert s2["grid"]["tile_px"] == 256
    utm = client.create_collection("utm", bands=[{"name": "b", "dtype": "float32"}], grid={"crs": "EPSG:32652", "tile_span": 5120, "resolution": 20},
                                   resampling="bilinear")
    assert utm["grid"]["tile_px"] == 256 and utm["bands"][0]["resampling"] == "bilinear"
    assert [c["name"] for c in client.collections()] == ["sentinel", "utm"]
    assert client.describe("sentinel")["profile"] == "sentinel2_l2a"
    with pytest.raises(pqf.AlreadyExists, match="sentinel"):
        client.create_collection("sentinel", profile="sentinel2_l2a")
    with pytest.raises(pqf.InvalidRequest, match="profile"):
        client.create_collection("x", profile="modis")
    with pytest.raises(pqf.NotFound, match="nope") as e:
        client.describe("nope")
    assert isinstance(e.value.__cause__, pa.ArrowKeyError)


def test_numpy_round_trip_into_xarray_at_known_coordinates(client):
    make(client)
    red, nir = pattern(), pattern(offset=5)
    when = [dt.datetime(2024, 6, 15, 2, 3, 4), np.datetime64("2024-07-01T00:00:00"), "2024-08-01T00:00:00Z"]
    for k, t in enumerate(when):
        put = client.ingest(np.stack([red + k, nir + k]), transform=GT, crs=SINU, time=t, bands=["red", "nir"], collection="s2", nodata=0)
        assert put["observations"] == 8 and not put["duplicate"]
        assert sorted(put["tiles"]) == ["x4380_y1632", "x4380_y1633", "x4381_y1632", "x4381_y1633"]
    ds = client.to_xarray("s2", start="2024-06-01")
    assert set(ds.data_vars) == {"red", "nir"}
    assert ds["red"].dims == ("time", "y", "x") and ds.sizes["time"] == 3
    assert "PROJCS" in ds.attrs["crs"] or "PROJCRS" in ds.attrs["crs"]
    for (row, col) in [(0, 0), (17, 250), (299, 399), (150, 300)]:
        x, y = X0 + (col + 0.5) * 10, Y0 - (row + 0.5) * 10
        for k in range(3):
            v = ds["red"].isel(time=k).sel(x=x, y=y, method="nearest")
            assert float(v.x) == x and float(v.y) == y
            assert int(v) == int(red[row, col]) + k
            assert int(ds["nir"].isel(time=k).sel(x=x, y=y, method="nearest")) == int(nir[row, col]) + k
    # Outside the raster but inside its tiles: NaN.
    assert np.isnan(float(ds["red"].isel(time=0).sel(x=X0 + 450 * 10 + 5, y=Y0 - 5, method="nearest")))
    # A fill value instead of NaN keeps integers.
    filled = client.to_xarray("s2", tiles=["x4380_y1633"], bands="red", fill=0)
    assert filled["red"].dtype == np.uint16 and filled.sizes["x"] == 256

    # Point time series at the centre of pixel (row 10, col 20).
    df = client.timeseries(X0 + 205, Y0 - 105, "s2", crs=SINU)
    assert list(df["red"]) == [int(red[10, 20]) + k for k in range(3)]
    assert list(df["red_valid"]) == [True] * 3
    assert df.index.name == "time"
    june = client.timeseries(X0 + 205, Y0 - 105, "s2", crs=SINU, start="2024-06-01", end=dt.date(2024, 7, 1), bands=["nir"])
    assert list(june.columns) == ["scene_id", "tile_id", "nir", "nir_valid"] and len(june) == 1


def test_ingest_variants_query_and_idempotency(client):
    make(client)
    red = pattern()
    # 2-D masked array: its mask becomes the valid column.
    masked = np.ma.masked_array(red, mask=np.zeros_like(red, dtype=bool))
    masked.mask[:10, :10] = True
    put = client.ingest(masked, transform=GT, crs=SINU, time="2024-06-01", bands="red", collection="s2")
    # The same call again is recognised by its default scene id.
    again = client.ingest(masked, transform=GT, crs=SINU, time="2024-06-01", bands="red", collection="s2")
    assert again["duplicate"] and again["scene_id"] == put["scene_id"]
    t = client.query("s2", tiles="x4380_y1633", bands="red")
    assert t.num_rows == 1 and t.column_names == ["tile_id", "band", "time", "scene_id", "pixels", "mask"]
    mask = t["mask"][0].values.to_numpy(zero_copy_only=False).reshape(256, 256)
    assert not mask[:10, :10].any() and mask[10:, 10:].all()
    # Per-band masks with nodata; an affine-like transform; explicit valid.

    class Affine:
        def to_gdal(self):
            return GT

    stack = np.ma.masked_array(np.stack([red, red]), mask=np.zeros((2,) + red.shape, dtype=bool))
    stack.mask[0, 5, 5] = True
    put = client.ingest(stack, transform=Affine(), crs=SINU, time=1719792000000, bands=["red", "nir"], collection="s2", nodata=[0, 0],
                        resampling={"nir": "nearest"}, scene_id="two-bands")
    assert put["scene_id"] == "two-bands" and put["observations"] == 8
    valid = np.ones(red.shape, dtype=bool)
    valid[:, :5] = False
    client.ingest(red, transform=GT, crs=SINU, time=dt.date(2024, 8, 1), bands="red", collection="s2", valid=valid, scene_id="v")
    # Queries: time filter, bbox (lon/lat), progress bar.
    july = client.query("s2", start="2024-07-01", end="2024-08-01", progress=True)
    assert set(july["scene_id"].to_pylist()) == {"two-bands"} and july.num_rows == 8
    assert b"tile_px" in july.schema.metadata
    everything = client.query("s2", bbox=[127.0, 37.5, 127.2, 37.7])
    assert everything.num_rows == 4 + 8 + 4
    assert client.query("s2", bbox=[10, 50, 10.1, 50.1]).num_rows == 0
    # delete and compact.
    assert client.delete("s2", scene_id="v")["rows_removed"] == 4
    assert client.compact("s2")["chunks_rewritten"] >= 0
    assert client.delete("s2", start="2024-07-01", end=dt.datetime(2024, 8, 1, tzinfo=dt.timezone.utc))["rows_removed"] == 8
    assert client.query("s2").num_rows == 4


def test_ingest_cog_with_rasterio(client, tmp_path):
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import Affine

    make(client)
    red, nir = pattern(), pattern(offset=9)
    path = tmp_path / "scene.tif"
    with rasterio.open(path, "w", driver="GTiff", width=400, height=300, count=2, dtype="uint16", crs=SINU,
                       transform=Affine(10, 0, X0, 0, -10, Y0), nodata=0) as dst:
        dst.write(np.stack([red, nir]))
        dst.descriptions = ("red", "nir")
        dst.update_tags(TIFFTAG_DATETIME="2024:06:15 02:03:04")
    put = client.ingest_cog(str(path), "s2")
    assert put["observations"] == 8
    df = client.timeseries(X0 + 5, Y0 - 5, "s2", crs=SINU)
    assert df.index[0] == np.datetime64("2024-06-15T02:03:04") or str(df.index[0]).startswith("2024-06-15 02:03:04")
    assert int(df["nir"].iloc[0]) == int(nir[0, 0])
    with pytest.raises(pqf.InvalidRequest, match="bands"):
        client.ingest_cog(str(path), "s2", bands=["red", "swir"])


def test_errors_are_mapped_and_nothing_is_written(client, server):
    make(client)
    red = pattern()
    with pytest.raises(pqf.InvalidRequest, match=r"bands\[0\].name") as e:
        client.ingest(red, transform=GT, crs=SINU, time="2024-06-01", bands="blue", collection="s2")
    assert isinstance(e.value.__cause__, pa.ArrowInvalid)
    with pytest.raises(pqf.InvalidRequest, match="crs"):
        client.ingest(red, transform=GT, crs="EPSG:999999", time="2024-06-01", bands="red", collection="s2")
    with pytest.raises(pqf.NotFound, match="nope"):
        client.ingest(red, transform=GT, crs=SINU, time="2024-06-01", bands="red", collection="nope")
    with pytest.raises(pqf.InvalidRequest, match="start"):
        client.query("s2", start="2025-01-01", end="2024-01-01")
    with pytest.raises(pqf.InvalidRequest, match="shape"):
        client.ingest(np.zeros(5, dtype=np.uint16), transform=GT, crs=SINU, time=0, bands="red", collection="s2")
    with pytest.raises(pqf.InvalidRequest, match="transform"):
        client.ingest(red, transform=(1, 2, 3), crs=SINU, time=0, bands="red", collection="s2")
    with pytest.raises(pqf.InvalidRequest, match="time"):
        client.ingest(red, transform=GT, crs=SINU, time=object(), bands="red", collection="s2")
    with pytest.raises(pqf.NotFound):
        client.delete("s2", scene_id="never")
    assert client.query("s2").num_rows == 0
    assert issubclass(pqf.NotFound, pqf.PixelQueryError) and issubclass(pqf.ServerError, pqf.PixelQueryError)
    # Codes the server has no way to send yet map too.
    assert isinstance(translate(flight.FlightUnauthenticatedError("no token")), pqf.Unauthorized)
    assert isinstance(translate(flight.FlightUnauthorizedError("read-only")), pqf.Unauthorized)
    assert isinstance(translate(flight.FlightInternalError("boom")), pqf.ServerError)
    # An unreachable server is a ServerError.
    server.stop()
    with pytest.raises(pqf.ServerError):
        Client(server.uri).health()


def test_one_file_is_one_scene_through_python_the_cli_and_ingest_path(tmp_path):
    """The same GeoTIFF sent by ingest_cog, `pixelquery ingest` and the
    ingest_path action gets one scene id: stored once, then skipped."""
    import json
    import subprocess

    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import Affine

    from pixelquery_flight.testing import LocalServer, find_binary

    files = tmp_path / "files"
    files.mkdir()
    path = files / "field.tif"
    with rasterio.open(path, "w", driver="GTiff", width=400, height=300, count=2, dtype="uint16", crs=SINU,
                       transform=Affine(10, 0, X0, 0, -10, Y0), nodata=0) as dst:
        dst.write(np.stack([pattern(), pattern(offset=9)]))
        dst.descriptions = ("red", "nir")
        dst.update_tags(TIFFTAG_DATETIME="2024:06:15 02:03:04")
    scene_id, fingerprint = pqf.cog_scene_id(str(path))
    assert scene_id.startswith("field_") and fingerprint.startswith("crc32:")
    with LocalServer(tmp_path / "wh", ["--ingest-root", str(files)]) as server, Client(server.uri) as client:
        make(client)
        put = client.ingest_cog(str(path), "s2")
        assert put["scene_id"] == scene_id and not put["duplicate"]
        out = subprocess.run([find_binary(), "ingest", "--server", server.uri, "--collection", "s2", "--json", str(path)],
                             capture_output=True, text=True, check=True)
        cli = json.loads(out.stdout)["scenes"][0]
        assert cli["scene_id"] == scene_id and cli["duplicate"], cli
        action = client.ingest_path(str(path), "s2")
        assert action["scenes"][0]["scene_id"] == scene_id and action["scenes"][0]["duplicate"], action
        assert client.describe("s2")["scenes"] == 1
        # The same file with another time is refused, naming --replace.
        with pytest.raises(pqf.AlreadyExists, match="replace"):
            client.ingest_cog(str(path), "s2", time="2024-07-01")
        assert client.ingest_cog(str(path), "s2", time="2024-07-01", replace=True)["scene_id"] == scene_id
        assert client.describe("s2")["scenes"] == 1
