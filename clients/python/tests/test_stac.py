"""STAC out (the `stac` action and `pixelquery stac`) read by pystac and
stac-pydantic, and STAC in (`pixelquery ingest items.json`)."""

import pathlib

import numpy as np
import pytest

from pixelquery_flight import InvalidRequest

UTM52 = "EPSG:32652"


def test_stac_lists_every_scene_with_time_footprint_and_bands(client):
    pystac = pytest.importorskip("pystac")
    client.create_collection("s2", bands=[{"name": "red", "dtype": "uint16", "nodata": 0},
                                          {"name": "nir", "dtype": "uint16", "nodata": 0}], grid={"resolution": 10})
    x0, y0 = 334_000.0, 4_160_000.0  # near lon 127.1, lat 37.6
    for k, when in enumerate(["2024-06-15T02:03:04Z", "2024-07-15T02:03:04Z"]):
        client.ingest(np.full((2, 100, 100), 500 + k, np.uint16), transform=[x0, 10, 0, y0, 0, -10], crs=UTM52, time=when,
                      bands=["red", "nir"], collection="s2", scene_id=f"scene{k}", baseline="05.10" if k else None)
    out = client.stac("s2")
    collection = pystac.Collection.from_dict(out["collection"])
    assert collection.id == "s2"
    items = [pystac.Item.from_dict(i) for i in out["items"]]
    assert [i.id for i in items] == ["scene0", "scene1"]
    assert [i.datetime.isoformat() for i in items] == ["2024-06-15T02:03:04+00:00", "2024-07-15T02:03:04+00:00"]
    for item in items:
        lon0, lat0, lon1, lat1 = item.bbox
        # The tiles holding the scene cover its location.
        assert lon0 <= 127.12 <= lon1 and lat0 <= 37.56 <= lat1, item.bbox
        assert lon1 - lon0 < 0.2
        assert [b["name"] for b in item.properties["eo:bands"]] == ["red", "nir"]
        assert item.properties["raster:bands"][0]["data_type"] == "uint16"
    assert items[1].properties["processing:version"] == "05.10"
    assert "processing:version" not in items[0].properties
    lo, hi = collection.extent.temporal.intervals[0]
    assert (lo.isoformat(), hi.isoformat()) == ("2024-06-15T02:03:04+00:00", "2024-07-15T02:03:04+00:00")
    with pytest.raises(InvalidRequest, match="collection"):
        client.stac("no such!")


def _band_file(path, values, when):
    import rasterio
    from rasterio.transform import Affine

    with rasterio.open(path, "w", driver="GTiff", width=300, height=200, count=1, dtype="uint16", crs=UTM52,
                       transform=Affine(10, 0, 334_000.0, 0, -10, 4_160_000.0), nodata=0) as dst:
        dst.write(values[None])
        dst.update_tags(TIFFTAG_DATETIME=when)


def _chunks(warehouse):
    root = warehouse / "s2" / "tiles"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.arrow"))}


def test_stac_out_then_in_gives_identical_chunks(tmp_path):
    """`pixelquery stac` exports Items that stac-pydantic validates; those
    Items, with their source files as assets, ingest through `pixelquery
    ingest items.json` into chunks byte-identical to ingesting the files."""
    import json
    import subprocess

    pytest.importorskip("rasterio")
    stac_pydantic = pytest.importorskip("stac_pydantic")
    pystac = pytest.importorskip("pystac")
    from pixelquery_flight import Client
    from pixelquery_flight.testing import LocalServer, find_binary

    rng = np.random.default_rng(3)
    files = tmp_path / "files"
    dates = {"2024-06-15": "2024:06:15 02:03:04", "2024-07-20": "2024:07:20 02:03:04"}
    for day, tag in dates.items():
        (files / day).mkdir(parents=True)
        for code in ("B04", "B08"):
            values = rng.integers(1, 4000, (200, 300)).astype(np.uint16)
            values[:5] = 0
            _band_file(files / day / f"{code}.tif", values, tag)
    bands = [{"name": "red", "dtype": "uint16", "nodata": 0}, {"name": "nir", "dtype": "uint16", "nodata": 0}]

    def run(*args):
        out = subprocess.run([find_binary(), *args], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return out.stdout

    direct, via_stac = LocalServer(tmp_path / "direct"), LocalServer(tmp_path / "via_stac")
    try:
        for s in (direct, via_stac):
            with Client(s.uri) as c:
                c.create_collection("s2", bands=bands, grid={"resolution": 10})
        report = json.loads(run("ingest", "--server", direct.uri, "--collection", "s2", "--json", str(files)))
        assert len(report["scenes"]) == 2 and not report["failures"], report

        out = tmp_path / "catalog"
        run("stac", "s2", "--server", direct.uri, "--out", str(out))
        collection = pystac.Collection.from_file(str(out / "collection.json"))
        assert collection.id == "s2"
        items = [json.loads(p.read_text()) for p in sorted((out / "items").glob("*.json"))]
        assert len(items) == 2
        for item in items:
            stac_pydantic.Item.model_validate(item)
            # The scene id starts with the folder its band files came from.
            day = next(d for d in dates if item["id"].startswith(d))
            item["assets"] = {code: {"href": str(files / day / f"{code}.tif"), "type": "image/tiff; application=geotiff",
                                     "roles": ["data"], "eo:bands": [{"name": code}]} for code in ("B04", "B08")}
            item["assets"]["thumbnail"] = {"href": "https://example.invalid/thumb.png", "roles": ["thumbnail"]}
        (tmp_path / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": items}))

        report = json.loads(run("ingest", "--server", via_stac.uri, "--collection", "s2", "--json", str(tmp_path / "items.json")))
        assert sorted(s["scene_id"] for s in report["scenes"]) == sorted(i["id"] for i in items), report
        assert not report["failures"], report
        a, b = _chunks(tmp_path / "direct"), _chunks(tmp_path / "via_stac")
        assert a.keys() == b.keys() and len(a) >= 4
        assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]]

        # A folder of Item files (relative hrefs) ingests too: the scenes are known, nothing is added.
        folder = tmp_path / "folder"
        folder.mkdir()
        for item in items:
            for asset in item["assets"].values():
                if asset["href"].startswith("/"):
                    asset["href"] = "../" + pathlib.Path(asset["href"]).relative_to(tmp_path).as_posix()
            (folder / f"{item['id']}.json").write_text(json.dumps(item))
        report = json.loads(run("ingest", "--server", via_stac.uri, "--collection", "s2", "--json", str(folder)))
        assert [s["duplicate"] for s in report["scenes"]] == [True, True], report
        assert _chunks(tmp_path / "via_stac") == b

        # An Item whose assets name no band of the collection is a failure with its reason; nothing is written.
        bad = dict(items[0], id="no-bands", assets={"B02": {"href": str(files / "2024-06-15" / "B04.tif"), "eo:bands": [{"name": "B02"}],
                                                            "type": "image/tiff"}})
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        out_bad = subprocess.run([find_binary(), "ingest", "--server", via_stac.uri, "--collection", "s2", "--json", str(tmp_path / "bad.json")],
                                 capture_output=True, text=True)
        assert out_bad.returncode != 0
        failure = json.loads(out_bad.stdout)["failures"][0]
        assert "no raster asset maps to a band" in failure["reason"] and "B02" in failure["reason"], failure
        assert _chunks(tmp_path / "via_stac") == b
    finally:
        direct.stop()
        via_stac.stop()
