"""Dask over PixelQuery Flight: a query's endpoints read in parallel as a
``dask.dataframe`` (one partition per endpoint, each read by a worker from
the server its locations list first, failing over to the next), and a list
of files ingested by a ``dask.distributed`` cluster against a pool of
servers.

>>> import pixelquery_flight.dask as pqd
>>> df = pqd.read_query("grpc://127.0.0.1:8815", "s2", tiles=["x0001_y0002"])
>>> df.compute()

``Client.load(..., chunks={"x": 1024, "y": 1024})`` gives an xarray Dataset of
dask arrays whose windows any worker reads (by the server's URI and token,
from each endpoint's locations).
"""

from __future__ import annotations

import json
from typing import Any, Optional, Sequence

import pyarrow as pa
import pyarrow.flight as flight

from .client import Client


def _endpoint_args(info: flight.FlightInfo) -> list:
    """Each endpoint as plain data a worker can receive: ticket bytes and
    location URIs."""
    out = []
    for ep in info.endpoints:
        uris = [loc.uri.decode() if isinstance(loc.uri, bytes) else str(loc.uri) for loc in ep.locations]
        out.append((ep.ticket.ticket, uris))
    return out


def _read_one(args: tuple, uri: str, auth: Optional[str], schema: pa.Schema):
    ticket, locations = args
    endpoint = flight.FlightEndpoint(ticket, locations)
    with Client(uri, token=auth) as c:
        table = c.read_endpoint(endpoint)
    return table.cast(schema).to_pandas()


def read_query(uri: str, collection: str, *, token: Optional[str] = None, **query: Any):
    """The answer of ``Client.query(collection, **query)`` as a
    ``dask.dataframe`` with one partition per endpoint of its FlightInfo."""
    import dask.dataframe as dd

    with Client(uri, token=token) as c:
        q = c._steps(
            c._query(collection, query.get("tiles"), query.get("bbox"), query.get("bbox_crs", "EPSG:4326"), query.get("start"),
                     query.get("end"), query.get("bands")),
            query.get("mask"), query.get("scale", False), query.get("compute"), query.get("reduce"))
        info = c._flight.get_flight_info(flight.FlightDescriptor.for_command(json.dumps(q)), options=c._options)
    schema = info.schema
    parts = _endpoint_args(info)
    meta = schema.empty_table().to_pandas()
    if not parts:
        return dd.from_pandas(meta, npartitions=1)
    return dd.from_map(_read_one, parts, uri=uri, auth=token, schema=schema, meta=meta, enforce_metadata=False)


def _ingest_one(path: str, server: str, collection: str, token: Optional[str], kwargs: dict) -> dict:
    with Client(server, token=token) as c:
        result = c.ingest_cog(path, collection, **kwargs)
    return {"path": path, "server": server, **result}


def ingest_files(client, paths: Sequence[str], servers: Sequence[str], collection: str, *, token: Optional[str] = None,
                 **kwargs: Any) -> list:
    """Ingests ``paths`` (GeoTIFF/COG files every worker can read) with the
    ``dask.distributed`` ``client``: file ``i`` goes to ``servers[i %
    len(servers)]``. Returns one result per file (``path``, ``server`` and
    the DoPut answer), in order; a failed file raises its error."""
    if not servers:
        raise ValueError("servers: give at least one grpc://host:port")
    targets = [servers[i % len(servers)] for i in range(len(paths))]
    futures = client.map(_ingest_one, list(paths), targets, collection=collection, token=token, kwargs=dict(kwargs), pure=False)
    return client.gather(futures)
