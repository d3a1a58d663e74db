"""pytest fixtures: the real `pixelquery` binary on a free port over a
temporary warehouse (see pixelquery_flight.testing)."""

import pytest
from pixelquery_flight.testing import LocalServer


class Server(LocalServer):
    def client(self):
        import pyarrow.flight as flight

        return flight.connect(self.uri)


@pytest.fixture()
def server(tmp_path):
    s = Server(tmp_path / "warehouse")
    yield s
    s.stop()
