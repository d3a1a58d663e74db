"""Temporal reductions on the server (DESIGN §4b `reduce`, `into`) against
numpy over the same stored observations."""

import json
import os
import threading

import numpy as np
import pyarrow as pa
import pytest

from pixelquery_flight import InvalidRequest

UTM52 = "EPSG:32652"
# One 256 x 256 tile of a 10 m grid with 2560 m tiles.
X0, Y0 = 130 * 2560.0, 1625 * 2560.0
N = 256
INVALID_SCL = [0, 1, 3, 8, 9, 10]
MASK = {"band": "scl", "invalid": INVALID_SCL}


def dates(n, start="2024-05-20", step_hours=41):
    t0 = np.datetime64(start + "T02:00:00", "ms")
    return [str(t0 + np.timedelta64(k * step_hours, "h")) + "Z" for k in range(n)]


def make(client, name="s2", n_dates=30, seed=7):
    client.create_collection(name, bands=[{"name": "red", "dtype": "uint16", "nodata": 0},
                                          {"name": "nir", "dtype": "uint16", "nodata": 0},
                                          {"name": "scl", "dtype": "uint16"}],
                             grid={"crs": UTM52, "resolution": 10, "tile_span": 2560})
    rng = np.random.default_rng(seed)
    when = dates(n_dates)
    for k, t in enumerate(when):
        # Small integer ranges in the top rows make exact ties likely (for
        # percentiles and for the quality argmax).
        red = rng.integers(1, 3000, (N, N)).astype(np.uint16)
        nir = rng.integers(1, 6000, (N, N)).astype(np.uint16)
        red[:16] = rng.integers(1, 3, (16, N))
        nir[:16] = rng.integers(2, 4, (16, N))
        red[rng.random((N, N)) < 0.02] = 0  # nodata
        # A cloud that moves across the tile, its shadow, and a few
        # scattered defective pixels.
        rows, cols = np.mgrid[0:N, 0:N]
        cx, cy = (k * 37) % N, (k * 53) % N
        scl = np.full((N, N), 4, np.uint16)
        scl[(rows - cy) ** 2 + (cols - cx) ** 2 < 60 ** 2] = 9
        scl[(rows - cy - 30) ** 2 + (cols - cx - 30) ** 2 < 20 ** 2] = 3
        scl[rng.random((N, N)) < 0.01] = 1
        client.ingest(np.stack([red, nir, scl]), transform=[X0, 10, 0, Y0, 0, -10], crs=UTM52, time=t,
                      bands=["red", "nir", "scl"], collection=name, scene_id=f"s{k:03d}", resampling="nearest")
    return when


def stored(client, name="s2"):
    """Every stored observation: (times, {band: (values [t, px], valid [t, px])})."""
    t = client.query(name)
    times = sorted(set(t["time"].cast(pa.int64()).to_pylist()))
    index = {v: i for i, v in enumerate(times)}
    out = {}
    for r in range(t.num_rows):
        band = t["band"][r].as_py()
        vals, valid = out.setdefault(band, (np.zeros((len(times), N * N), np.uint16), np.zeros((len(times), N * N), bool)))
        i = index[t["time"][r].value]
        vals[i] = t["pixels"][r].values.to_numpy(zero_copy_only=False)
        valid[i] = t["mask"][r].values.to_numpy(zero_copy_only=False)
    return np.array(times, dtype="datetime64[ms]"), out


def rows_by(table):
    """Reduced rows: {(label, band): (values, valid)}."""
    out = {}
    for r in range(table.num_rows):
        out[(table["label"][r].as_py(), table["band"][r].as_py())] = (
            table["pixels"][r].values.to_numpy(zero_copy_only=False), table["mask"][r].values.to_numpy(zero_copy_only=False))
    return out


@pytest.fixture()
def cube(client):
    make(client)
    times, bands = stored(client)
    assert len(times) == 30
    scl, scl_ok = bands["scl"]
    clear = scl_ok & ~np.isin(scl, INVALID_SCL)
    return client, times, bands, clear


def test_masked_monthly_reducers_equal_numpy(cube):
    client, times, bands, clear = cube
    red, red_ok = bands["red"]
    valid = red_ok & clear
    x = np.where(valid, red.astype(np.float32), np.float32(np.nan))
    months = times.astype("datetime64[M]")
    labels = [str(m) for m in np.unique(months)]
    assert labels == ["2024-05", "2024-06", "2024-07"]
    refs = {
        "median": lambda a: np.nanmedian(a, axis=0),
        "p10": lambda a: np.nanpercentile(a, 10, axis=0),
        "mean": lambda a: np.nanmean(a, axis=0),
        "std": lambda a: np.nanstd(a, axis=0),
    }
    worst = {}
    with np.errstate(all="ignore"), _no_warn():
        for reducer, ref in refs.items():
            got = rows_by(client.query("s2", bands="red", mask=MASK, reduce={"period": "month", "reducer": reducer}))
            assert sorted(k[0] for k in got) == labels
            for m in np.unique(months):
                want = ref(x[months == m]).astype(np.float32)
                values, ok = got[(str(m), "red")]
                assert values.dtype == np.float32
                np.testing.assert_array_equal(ok, ~np.isnan(want), err_msg=f"{reducer} {m}")
                np.testing.assert_allclose(values[ok], want[ok], rtol=1e-6, err_msg=f"{reducer} {m}")
                worst[reducer] = max(worst.get(reducer, 0.0), float(np.max(np.abs(values[ok] - want[ok]) / np.abs(want[ok]).clip(1e-30))))
    print("worst relative difference:", json.dumps(worst))
    counts = rows_by(client.query("s2", bands="red", mask=MASK, reduce={"period": "month", "reducer": "count"}))
    for m in np.unique(months):
        values, ok = counts[(str(m), "red")]
        assert values.dtype == np.uint16 and ok.all()
        np.testing.assert_array_equal(values, valid[months == m].sum(axis=0))


class _no_warn:
    def __enter__(self):
        import warnings
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


def test_quality_ndvi_picks_every_band_at_the_argmax_with_ties_to_the_latest(cube):
    client, times, bands, clear = cube
    (red, red_ok), (nir, nir_ok) = bands["red"], bands["nir"]
    valid = red_ok & nir_ok & clear
    r32, n32 = red.astype(np.float32), nir.astype(np.float32)
    with np.errstate(all="ignore"):
        ndvi = (n32 - r32) / (n32 + r32)
    q = np.where(valid & np.isfinite(ndvi), ndvi, -np.inf)
    # Ties to the latest: argmax over reversed time takes the first maximum.
    latest = len(times) - 1 - np.argmax(q[::-1], axis=0)
    has = np.isfinite(q).any(axis=0)
    px = np.arange(N * N)
    tied = ((q == q.max(axis=0)) & np.isfinite(q)).sum(axis=0) > 1
    assert tied.sum() > 1000, "the test data must hold ties"
    got = rows_by(client.query("s2", bands=["red", "nir"], mask=MASK, compute={"ndvi": "(nir - red) / (nir + red)"},
                               reduce={"period": "all", "quality": "ndvi"}))
    assert {k[0] for k in got} == {"2024-05-20"}
    label = "2024-05-20"
    for band, values in (("red", r32), ("nir", n32)):
        v, ok = got[(label, band)]
        np.testing.assert_array_equal(ok, has)
        np.testing.assert_array_equal(v[has], values[latest, px][has])


def test_point_series_reduce_one_row_per_period(cube):
    client, times, bands, clear = cube
    red, red_ok = bands["red"]
    lon, lat = X0 + 10 * 100 + 5, Y0 - 10 * 20 - 5
    i = 20 * N + 100
    df = client.timeseries(lon, lat, "s2", crs=UTM52, bands="red", mask=MASK, reduce={"period": "month", "reducer": "max"})
    assert list(df["label"]) == ["2024-05", "2024-06", "2024-07"]
    months = times.astype("datetime64[M]")
    for m, row in zip(np.unique(months), df.itertuples()):
        ok = (red_ok & clear)[months == m, i]
        want = red[months == m, i][ok].max() if ok.any() else None
        assert (row.red_valid, row.red if ok.any() else None) == (bool(ok.any()), want)


def test_seasons_cross_the_year_boundary(client):
    client.create_collection("w", bands=[{"name": "red", "dtype": "uint16", "nodata": 0}], grid={"crs": UTM52, "resolution": 10, "tile_span": 2560})
    for k, t in enumerate(["2023-11-30T02:00:00Z", "2023-12-20T02:00:00Z", "2024-01-10T02:00:00Z", "2024-02-29T23:00:00Z",
                           "2024-03-01T00:00:00Z"]):
        client.ingest(np.full((1, 8, 8), 100 + k, np.uint16), transform=[X0, 10, 0, Y0, 0, -10], crs=UTM52, time=t,
                      bands="red", collection="w", scene_id=f"w{k}", resampling="nearest")
    t = client.query("w", reduce={"period": "season", "reducer": "count"})
    labels = t["label"].to_pylist()
    assert labels == ["2023-son", "2024-djf", "2024-mam"]
    djf = t.filter(pa.compute.equal(t["label"], "2024-djf"))
    assert djf["time"][0].as_py().isoformat().startswith("2023-12-01")
    assert int(np.max(djf["pixels"][0].values.to_numpy())) == 3


def test_bad_reductions_are_refused_naming_the_field(cube):
    client = cube[0]
    for reduce, field in [({"period": "month", "reducer": "mode"}, "reduce.reducer"),
                          ({"period": "fortnight", "reducer": "max"}, "reduce.period"),
                          ({"period": "month", "reducer": "p101"}, "reduce.reducer"),
                          ({"period": "P0D", "reducer": "max"}, "reduce.period"),
                          ({"period": "month", "quality": "(nir - "}, "reduce.quality"),
                          ({"period": "month", "quality": "swir"}, "reduce.quality")]:
        with pytest.raises(InvalidRequest, match=field.replace(".", r"\.")):
            client.query("s2", bands="red", reduce=reduce)


def stored_rows(client, name):
    """{(scene_id, band): (time, values, valid)} of a collection."""
    t = client.query(name)
    return {(t["scene_id"][r].as_py(), t["band"][r].as_py()): (t["time"][r].value, t["pixels"][r].values.to_numpy(zero_copy_only=False),
                                                               t["mask"][r].values.to_numpy(zero_copy_only=False)) for r in range(t.num_rows)}


def test_into_stores_the_reduce_as_a_collection_once(cube):
    client = cube[0]
    kw = dict(bands=["red", "nir"], mask=MASK, reduce={"period": "month", "reducer": "median"})
    answer = client.query("s2", **kw)
    first = client.query("s2", into="s2_monthly", **kw)
    assert first.to_pylist() == [{"collection": "s2_monthly", "observations": 6, "bytes": first["bytes"][0].as_py(), "duplicate": False}]
    assert "s2_monthly" in [c["name"] for c in client.collections()]
    d = client.describe("s2_monthly")
    assert d["scenes"] == 3 and [b["dtype"] for b in d["bands"]] == ["float32", "float32"]
    got = stored_rows(client, "s2_monthly")
    for r in range(answer.num_rows):
        label, band = answer["label"][r].as_py(), answer["band"][r].as_py()
        time, values, valid = got[(label, band)]
        assert time == answer["time"][r].value
        np.testing.assert_array_equal(valid, answer["mask"][r].values.to_numpy(zero_copy_only=False))
        np.testing.assert_array_equal(values[valid], answer["pixels"][r].values.to_numpy(zero_copy_only=False)[valid])
    again = client.query("s2", into="s2_monthly", **kw)
    assert again["duplicate"].to_pylist() == [True] and again["observations"].to_pylist() == [0]
    with pytest.raises(InvalidRequest, match="into"):
        client.query("s2", **{**kw, "bands": ["red"]}, into="s2_monthly")
    with pytest.raises(InvalidRequest, match="into"):
        client.query("s2", **kw, into="s2")
    with pytest.raises(InvalidRequest, match="into"):
        client.query("s2", bands="red", into="s2_other")


def test_into_survives_sigkill_during_its_commit(tmp_path):
    import threading
    import time as clock

    from pixelquery_flight import Client
    from pixelquery_flight.testing import LocalServer

    wh = tmp_path / "wh"
    kw = dict(bands=["red", "nir"], mask=MASK, reduce={"period": "P2D", "reducer": "mean"})
    with LocalServer(wh) as s, Client(s.uri) as c:
        make(c)
        want = rows_by(c.query("s2", **kw))
    seen = []
    for k, delay in enumerate([0.0, 0.05, 0.15, 0.4]):
        target = f"s2_p2d_{k}"
        s = LocalServer(wh)
        c = Client(s.uri)
        thread = threading.Thread(target=lambda: _swallow(lambda: c.query("s2", into=target, **kw)))
        thread.start()
        marker = wh / target / "pending"
        deadline = clock.monotonic() + 30
        while not marker.exists() and thread.is_alive() and clock.monotonic() < deadline:
            clock.sleep(0.002)
        clock.sleep(delay)
        s.kill()
        thread.join()
        c.close()
        s.stop()
        with LocalServer(wh) as s2, Client(s2.uri) as c2:
            names = [x["name"] for x in c2.collections()]
            if target in names:
                seen.append("whole")
                assert c2.describe(target)["scenes"] == len({k[0] for k in want})
            else:
                seen.append("absent")
            done = c2.query("s2", into=target, **kw)
            assert done["collection"].to_pylist() == [target]
            got = stored_rows(c2, target)
            assert {k for k in got} == set(want)
            for key, (values, valid) in want.items():
                np.testing.assert_array_equal(got[key][2], valid)
                np.testing.assert_array_equal(got[key][1][valid], values[valid])
    print("after SIGKILL:", seen)
    assert "absent" in seen


def _swallow(f):
    try:
        f()
    except Exception:
        pass


def test_load_reduce_equals_the_tile_reduce_on_the_same_grid(cube):
    client = cube[0]
    bbox = [X0, Y0 - N * 10, X0 + N * 10, Y0]
    for reduce in ({"period": "month", "reducer": "median"}, {"period": "month", "reducer": "count"},
                   {"period": "all", "quality": "(nir - red) / (nir + red)"}):
        tiles = rows_by(client.query("s2", bands=["red", "nir"], mask=MASK, reduce=reduce))
        ds = client.load("s2", bands=["red", "nir"], bbox=bbox, bbox_crs=UTM52, crs=UTM52, resolution=10, resampling="nearest",
                         mask=MASK, reduce=reduce, chunks={"x": 128, "y": 128})
        labels = list(ds.label.values)
        assert labels == sorted({k[0] for k in tiles})
        for band in ("red", "nir"):
            cube_ = ds[band].values
            assert cube_.dtype == (np.uint16 if reduce.get("reducer") == "count" else np.float32)
            for k, label in enumerate(labels):
                values, ok = tiles[(label, band)]
                got = cube_[k].reshape(-1)
                np.testing.assert_array_equal(got[ok], values[ok])
                if got.dtype.kind == "f":
                    assert np.isnan(got[~ok]).all()


def _status_kib(pid, key):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def test_a_yearly_median_holds_about_one_years_observations_of_one_band(tmp_path):
    from pixelquery_flight import Client
    from pixelquery_flight.testing import LocalServer

    wh = tmp_path / "wh"
    days = 365
    with LocalServer(wh) as s, Client(s.uri) as c:
        c.create_collection("y", bands=[{"name": "red", "dtype": "uint16", "nodata": 0}], grid={"crs": UTM52, "resolution": 10, "tile_span": 2560})
        rng = np.random.default_rng(3)
        for k, t in enumerate(dates(days, start="2023-01-01", step_hours=24)):
            c.ingest(rng.integers(1, 10000, (1, N, N)).astype(np.uint16), transform=[X0, 10, 0, Y0, 0, -10], crs=UTM52, time=t,
                     bands="red", collection="y", scene_id=f"d{k:03d}", resampling="nearest")
    observation_bytes = days * N * N * 2 + days * N * N // 8
    # A fresh server. Its heap (RssAnon) is sampled while it answers; the
    # chunk files it maps to verify checksums are page cache (RssFile),
    # reported beside it.
    with LocalServer(wh) as s, Client(s.uri) as c:
        anon0, total0 = _status_kib(s.proc.pid, "RssAnon") * 1024, _status_kib(s.proc.pid, "VmRSS") * 1024
        peak = [anon0]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], _status_kib(s.proc.pid, "RssAnon") * 1024)
                stop.wait(0.001)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            t = c.query("y", reduce={"period": "year", "reducer": "median"})
        finally:
            stop.set()
            sampler.join()
        assert t.num_rows == 1 and t["label"].to_pylist() == ["2023"]
        anon = peak[0] - anon0
        total = _status_kib(s.proc.pid, "VmHWM") * 1024 - total0
    print(f"heap growth {anon / 2**20:.1f} MiB ({anon / observation_bytes:.2f}x), RSS with mapped files {total / 2**20:.1f} MiB "
          f"({total / observation_bytes:.2f}x), for {observation_bytes / 2**20:.1f} MiB of observations")
    assert anon < 1.5 * observation_bytes


def test_load_into_stores_the_windows_on_the_output_grid(cube):
    client = cube[0]
    bbox = [X0 + 210, Y0 - 2010, X0 + 2190, Y0 - 230]
    kw = dict(bands=["red", "nir"], bbox=bbox, bbox_crs=UTM52, crs=UTM52, resolution=20, resampling="average", mask=MASK,
              reduce={"period": "month", "reducer": "mean"})
    direct = client.load("s2", **kw)
    row = client.load("s2", **kw, into="s2_20m")
    assert row["collection"] == "s2_20m" and row["observations"] > 0 and not row["duplicate"]
    assert client.load("s2", **kw, into="s2_20m")["duplicate"]
    d = client.describe("s2_20m")
    assert (d["grid"]["resolution"], d["grid"]["tile_px"], d["scenes"]) == (20.0, 128, 3)
    stored = client.load("s2_20m", bands=["red", "nir"], bbox=bbox, bbox_crs=UTM52, crs=UTM52, resolution=20, resampling="nearest")
    assert list(stored.label.values) == list(direct.label.values) == ["2024-05", "2024-06", "2024-07"]
    np.testing.assert_array_equal(stored.time.values, direct.time.values)
    for band in ("red", "nir"):
        np.testing.assert_array_equal(stored[band].values, direct[band].values)
