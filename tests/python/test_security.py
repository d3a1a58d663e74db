"""Auth and TLS from pyarrow: a server with an access file and a certificate
made at test time (openssl), reached with `tls_root_certs`, bearer tokens
and Flight Handshake; roles enforced."""

import json
import subprocess

import numpy as np
import pyarrow.flight as flight
import pytest

from pixelquery_flight import Client
from pixelquery_flight.errors import Unauthorized
from pixelquery_flight.testing import LocalServer

READ = "read-token-0123456789abcdef"
WRITE = "write-token-0123456789abcdef"
PASSWORD = "alice-password-0123"


@pytest.fixture()
def secure_server(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost"],
        check=True, capture_output=True,
    )
    access = tmp_path / "access"
    access.write_text(f"read {READ}\nwrite {WRITE}\nwrite alice:{PASSWORD}\n")
    s = LocalServer(tmp_path / "warehouse", ["--auth-file", str(access), "--tls-cert", str(cert), "--tls-key", str(key)])
    s.cert = cert.read_bytes()
    yield s
    s.stop()


def bearer(token):
    return flight.FlightCallOptions(headers=[(b"authorization", b"Bearer " + token.encode())])


def health(client, options=None):
    results = list(client.do_action(flight.Action("health", b""), options=options or flight.FlightCallOptions()))
    return json.loads(results[0].body.to_pybytes())


def test_pyarrow_reaches_a_tls_server_with_tokens_and_handshake(secure_server):
    assert secure_server.uri.startswith("grpc+tls://localhost:")
    client = flight.connect(secure_server.uri, tls_root_certs=secure_server.cert)
    with pytest.raises(flight.FlightUnauthenticatedError, match="authorization"):
        health(client)
    with pytest.raises(flight.FlightUnauthenticatedError, match="invalid"):
        health(client, bearer("wrong-token-0123456789abcdef"))
    assert health(client, bearer(READ))["status"] == "ok"

    header = client.authenticate_basic_token("alice", PASSWORD)
    assert header[0] == b"authorization" and header[1].startswith(b"Bearer ")
    assert health(client, flight.FlightCallOptions(headers=[header]))["status"] == "ok"
    with pytest.raises(flight.FlightUnauthenticatedError):
        client.authenticate_basic_token("alice", "not-the-password-at-all")

    # A read token may not create.
    body = json.dumps({"name": "s2", "profile": "sentinel2_l2a"}).encode()
    with pytest.raises(flight.FlightUnauthorizedError, match="write role"):
        list(client.do_action(flight.Action("create_collection", body), options=bearer(READ)))
    assert list(secure_server.warehouse.glob("s2")) == []


def test_a_client_without_the_ca_cannot_connect(secure_server):
    client = flight.connect(secure_server.uri)
    with pytest.raises(flight.FlightError):
        health(client, bearer(READ))


def test_package_client_roundtrip_over_tls_with_roles(secure_server):
    writer = Client(secure_server.uri, user="alice", password=PASSWORD, tls_root_certs=secure_server.cert)
    writer.create_collection("s2", bands=[{"name": "red", "dtype": "uint16", "nodata": 0}], grid={"resolution": 10})
    data = np.full((64, 64), 321, dtype=np.uint16)
    writer.ingest(data, transform=(322000.0, 10.0, 0.0, 4158000.0, 0.0, -10.0), crs="EPSG:32652",
                  time="2024-06-15T02:03:04Z", collection="s2", bands=["red"])
    reader = Client(secure_server.uri, token=READ, tls_root_certs=secure_server.cert)
    table = reader.query("s2")
    assert table.num_rows > 0
    with pytest.raises(Unauthorized):
        reader.ingest(data, transform=(322000.0, 10.0, 0.0, 4158000.0, 0.0, -10.0), crs="EPSG:32652",
                      time="2024-06-16T02:03:04Z", collection="s2", bands=["red"])
