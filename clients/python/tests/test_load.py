"""Client.load: analysis-ready windows from the server as an xarray
Dataset, eager and dask-backed, with the CRS where rioxarray reads it."""

import numpy as np
import pytest

from pixelquery_flight import InvalidRequest

UTM52 = "EPSG:32652"
# 10 m UTM 52N, 600 x 600 pixels near lon 127.05, lat 37.55.
X0, Y0 = 334_000.0, 4_160_000.0


def smooth(offset=0.0):
    rows, cols = np.mgrid[0:600, 0:600]
    return (2000 + 800 * np.sin(rows / 23.0 + offset) + 600 * np.cos(cols / 31.0)).astype(np.uint16)


@pytest.fixture()
def loaded(client):
    client.create_collection("s2", bands=[{"name": "red", "dtype": "uint16", "nodata": 0},
                                          {"name": "nir", "dtype": "uint16", "nodata": 0}], grid={"resolution": 10})
    for k, when in enumerate(["2024-06-15T02:03:04Z", "2024-06-15T02:03:34Z", "2024-06-20T02:03:04Z"]):
        red = smooth(k)
        client.ingest(np.stack([red, red + 100]), transform=[X0, 10, 0, Y0, 0, -10], crs=UTM52, time=when,
                      bands=["red", "nir"], collection="s2", scene_id=f"scene{k}", resampling="bilinear")
    return client


def test_load_in_utm_gives_a_dataset_on_the_requested_grid(loaded):
    bbox = [X0 + 1000, Y0 - 3000, X0 + 3000, Y0 - 1000]
    ds = loaded.load("s2", bands=["red", "nir"], bbox=bbox, bbox_crs=UTM52, crs=UTM52, resolution=20,
                     resampling="average", window=64)
    assert set(ds.data_vars) == {"red", "nir"}
    assert ds.red.dims == ("time", "y", "x")
    assert ds.sizes["x"] == 100 and ds.sizes["y"] == 100 and ds.sizes["time"] == 3
    # Pixel centres on the 20 m lattice, north up.
    assert ds.x.values[0] == bbox[0] + 10 and ds.y.values[0] == bbox[3] - 10
    assert np.all(np.diff(ds.y.values) == -20)
    assert list(ds.label.values) == ["scene0", "scene1", "scene2"]
    assert ds.red.dtype == np.uint16
    # The values follow the scene: nir is red + 100 where both are valid.
    red, nir = ds.red.values.astype(float), ds.nir.values.astype(float)
    valid = (red > 0) & (nir > 0)
    assert valid.mean() > 0.99
    assert np.abs(nir[valid] - red[valid] - 100).max() <= 1
    # CF grid mapping, as rioxarray reads it.
    rio = pytest.importorskip("rioxarray")
    assert rio is not None
    assert ds.red.rio.crs.to_epsg() == 32652
    assert tuple(ds.red.rio.transform())[:6] == (20.0, 0.0, bbox[0], 0.0, -20.0, bbox[3])


def test_solar_day_groups_and_dask_chunks_match_the_eager_load(loaded):
    bbox = [X0 + 1000, Y0 - 3000, X0 + 3000, Y0 - 1000]
    kw = dict(bands="red", bbox=bbox, bbox_crs=UTM52, crs=UTM52, resolution=10, groupby="solar_day", fuse="mean")
    eager = loaded.load("s2", window=64, **kw)
    assert eager.sizes["time"] == 2
    assert list(eager.label.values) == ["2024-06-15", "2024-06-20"]
    assert eager.red.dtype == np.float32
    lazy = loaded.load("s2", chunks={"x": 64, "y": 64}, **kw)
    dask = pytest.importorskip("dask")
    assert dask is not None
    assert lazy.red.chunks[1][0] == 64 and lazy.red.chunks[2][0] == 64
    np.testing.assert_array_equal(lazy.red.values, eager.red.values)
    # One slice of the mean is the mean of the two scenes of that day.
    per_time = loaded.load("s2", window=64, **{**kw, "groupby": "time", "fuse": "last"})
    pair = per_time.red.values[:2].astype(np.float64)
    both = (pair > 0).all(axis=0)
    np.testing.assert_allclose(eager.red.values[0][both], pair.mean(axis=0)[both].astype(np.float32))


def test_a_bad_load_is_refused_with_its_field(loaded):
    with pytest.raises(InvalidRequest, match="output.resolution"):
        loaded.load("s2", bbox=[127.0, 37.5, 127.1, 37.6], resolution=-1)
    with pytest.raises(InvalidRequest, match="groupby"):
        loaded.load("s2", bbox=[127.0, 37.5, 127.1, 37.6], groupby="week")


def test_mask_scale_and_compute_on_query_load_and_timeseries(client):
    refl = dict(dtype="uint16", nodata=0, scale=1e-4, offset=-0.1)
    client.create_collection("s2", bands=[dict(name="red", **refl), dict(name="nir", **refl), dict(name="scl", dtype="uint16", nodata=0)],
                             grid={"resolution": 10})
    # One tile of the default grid, on its lattice: pixels are copied.
    x0, y0 = 4380 * 2560.0, 1634 * 2560.0
    rows, cols = np.mgrid[0:256, 0:256]
    red = (1000 + (rows * 7 + cols) % 2000).astype(np.uint16)
    nir = (3000 + (rows + cols * 3) % 3000).astype(np.uint16)
    scl = np.where(cols < 64, 9, 4).astype(np.uint8)  # a cloud over the first quarter
    sinu = "+proj=sinu +lon_0=0 +x_0=0 +y_0=0 +R=6378137 +units=m +no_defs"
    client.ingest(np.stack([red, nir, scl.astype(np.uint16)]), transform=[x0, 10, 0, y0, 0, -10], crs=sinu,
                  time="2024-06-15T02:03:04Z", bands=["red", "nir", "scl"], collection="s2", scene_id="a", baseline="04.00")
    steps = dict(mask={"band": "scl", "invalid": [3, 8, 9, 10]}, scale=True, compute={"ndvi": "(nir - red) / (nir + red)"})
    want = ((nir * 1e-4 - 0.1) - (red * 1e-4 - 0.1)) / ((nir * 1e-4 - 0.1) + (red * 1e-4 - 0.1))
    table = client.query("s2", bands=["ndvi"], **steps)
    assert table.num_rows == 1 and table["band"][0].as_py() == "ndvi"
    got = table["pixels"][0].values.to_numpy().reshape(256, 256)
    mask = table["mask"][0].values.to_numpy(zero_copy_only=False).reshape(256, 256)
    assert (mask == (cols >= 64)).all()
    np.testing.assert_allclose(got[mask], want[mask], atol=1e-6)
    ds = client.load("s2", bbox=[x0, y0 - 2560, x0 + 2560, y0], bbox_crs=sinu, resampling="nearest", window=128, **steps)
    np.testing.assert_array_equal(np.isnan(ds.ndvi.values[0]), ~mask)
    np.testing.assert_allclose(ds.ndvi.values[0][mask], got[mask])
    ts = client.timeseries(x0 + 1000.5, y0 - 500.5, "s2", crs=sinu, **steps)
    assert ts["ndvi_valid"].tolist() == [True]
    assert abs(ts["ndvi"].iloc[0] - got[50, 100]) < 1e-7
