"""The example notebook runs top to bottom against a real server, and its
figures are real images."""

import base64
import os
import pathlib
import struct

import nbformat
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[2]

NOTEBOOK = ROOT / "clients" / "python" / "examples" / "quickstart.ipynb"


def png_size(data: bytes):
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def test_quickstart_notebook_executes(server, monkeypatch, tmp_path):
    monkeypatch.setenv("PIXELQUERY_URI", server.uri)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    out = pathlib.Path(os.environ.get("PIXELQUERY_NOTEBOOK_OUT", tmp_path / "quickstart.executed.ipynb"))
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out)
    images = [base64.b64decode(o["data"]["image/png"]) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 4, f"expected two maps, a time-series plot and the monthly median maps, got {len(images)} images"
    for img in images:
        w, h = png_size(img)
        assert w > 200 and h > 100 and len(img) > 5000
    # The UTM load: 200 x 200 pixels of 20 m, one slice per date.
    load = [c for c in nb.cells if c.cell_type == "code" and "client.load(" in c.source][0]
    text = "".join(o["data"].get("text/plain", "") for o in load.outputs if "data" in o)
    assert "time: 4" in text and "y: 200" in text and "x: 200" in text, text
    # The time series saw all four dates at the point.
    last = [c for c in nb.cells if c.cell_type == "code" and "ts[[" in c.source][0]
    html = "".join(o["data"].get("text/plain", "") for o in last.outputs if "data" in o)
    assert html.count("2024-0") >= 4, html
