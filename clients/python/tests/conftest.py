"""The package's tests run against the real server binary."""

import pytest
from pixelquery_flight import Client
from pixelquery_flight.testing import LocalServer


@pytest.fixture()
def server(tmp_path):
    s = LocalServer(tmp_path / "warehouse")
    yield s
    s.stop()


@pytest.fixture()
def client(server):
    with Client(server.uri) as c:
        yield c
