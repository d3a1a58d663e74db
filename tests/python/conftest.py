"""pytest fixtures: the real `pixelquery` binary on a free port over a
temporary warehouse, reached with pyarrow.flight."""

import os
import pathlib
import subprocess

import pyarrow.flight as flight
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _binary() -> str:
    path = os.environ.get("PIXELQUERY_BIN", str(ROOT / "target" / "debug" / "pixelquery"))
    if not os.path.exists(path):
        pytest.fail(f"server binary {path} not found: run `cargo build --bin pixelquery` or set PIXELQUERY_BIN")
    return path


class Server:
    def __init__(self, warehouse: pathlib.Path):
        self.warehouse = warehouse
        self.proc = subprocess.Popen(
            [_binary(), "serve", "--warehouse", str(warehouse), "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline()
        if not line.startswith("pixelquery listening on "):
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line!r} {self.proc.stderr.read()}")
        self.uri = "grpc://" + line.rsplit(" ", 1)[1].strip()

    def client(self) -> flight.FlightClient:
        return flight.connect(self.uri)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture()
def server(tmp_path):
    s = Server(tmp_path / "warehouse")
    yield s
    s.stop()
