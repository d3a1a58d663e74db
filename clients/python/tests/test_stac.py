"""STAC out: the `stac` action's Collection and Items read by pystac."""

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
