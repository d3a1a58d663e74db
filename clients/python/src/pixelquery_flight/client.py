"""The client: collections, numpy ingest, Arrow queries, xarray cubes and
pandas time series, all over plain ``pyarrow.flight`` with the server's JSON
wire forms (docs/protocol.md)."""

from __future__ import annotations

import concurrent.futures
import datetime as _dt
import hashlib
import json
import os
import zlib
from typing import Any, Iterable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight

from .errors import InvalidRequest, ServerError, mapped

#: DoPut batches are cut to about this many bytes (whole rows).
TARGET_BATCH_BYTES = 4 << 20
#: Reads with more endpoints than this show a progress bar (tqdm installed).
PROGRESS_MIN_ENDPOINTS = 16

TimeLike = Union[str, int, _dt.datetime, _dt.date, np.datetime64]


def _time(value: TimeLike) -> Union[str, int]:
    """A time in a wire form: RFC 3339 text or integer milliseconds (UTC)."""
    if isinstance(value, (bool,)):
        raise InvalidRequest(f"invalid time = {value!r}")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, str):
        return value
    if isinstance(value, np.datetime64):
        return int(value.astype("datetime64[ms]").astype(np.int64))
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        return value.isoformat()
    if isinstance(value, _dt.date):
        return value.isoformat()
    if hasattr(value, "isoformat"):  # pandas.Timestamp
        return _time(value.to_pydatetime())
    raise InvalidRequest(f"invalid time = {value!r}: give a datetime, date, ISO string or epoch milliseconds")


def _geotransform(transform: Any) -> list:
    """GDAL-order geotransform from a 6-sequence or an ``affine.Affine``."""
    if hasattr(transform, "to_gdal"):
        return [float(v) for v in transform.to_gdal()]
    gt = [float(v) for v in transform]
    if len(gt) != 6:
        raise InvalidRequest(f"invalid transform = {transform!r}: expected 6 numbers in GDAL order or an affine.Affine")
    return gt


def _crs(crs: Any) -> str:
    if isinstance(crs, int):
        return f"EPSG:{crs}"
    if hasattr(crs, "to_wkt"):  # rasterio / pyproj CRS
        return crs.to_wkt()
    return str(crs)


def _adbc_error(e: Exception) -> Exception:
    """The package exception for an ADBC driver error (its gRPC status)."""
    from .errors import NotFound, ServerError, Unauthorized

    text = str(e)
    for marker in ("; Detail", ". gRPC client debug context"):
        text = text.split(marker, 1)[0]
    status = getattr(e, "status_code", None)
    name = getattr(status, "name", "")
    if name in ("INVALID_ARGUMENT", "INVALID_DATA"):
        return InvalidRequest(text)
    if name == "NOT_FOUND":
        return NotFound(text)
    if name in ("UNAUTHENTICATED", "UNAUTHORIZED"):
        return Unauthorized(text)
    return ServerError(text)


class Client:
    """A connection to one PixelQuery Flight server.

    >>> c = Client("grpc://127.0.0.1:8815")
    >>> c.collections()
    """

    def __init__(
        self,
        uri: str,
        token: Optional[str] = None,
        tls_root_certs: Optional[Union[str, bytes]] = None,
        user: Optional[str] = None,
        password: Optional[str] = None,
    ):
        """``token``: a bearer token of the server's access file; or
        ``user``/``password``, traded for a session token by Flight
        Handshake. ``tls_root_certs``: PEM of the CA of a ``grpc+tls://``
        server with a private certificate."""
        kwargs: dict = {}
        if tls_root_certs is not None:
            kwargs["tls_root_certs"] = tls_root_certs.encode() if isinstance(tls_root_certs, str) else tls_root_certs
        self.uri = uri
        with mapped():
            self._flight = flight.connect(uri, **kwargs)
            if user is not None:
                headers = [self._flight.authenticate_basic_token(user, password or "")]
            else:
                headers = [(b"authorization", b"Bearer " + token.encode())] if token else []
        self._options = flight.FlightCallOptions(headers=headers)
        self._authorization = headers[0][1].decode() if headers else None
        self._token = self._authorization[len("Bearer "):] if self._authorization else None
        self._tls_root_certs = kwargs.get("tls_root_certs")
        self._peers: dict = {}

    def close(self) -> None:
        for peer in self._peers.values():
            peer.close()
        self._flight.close()

    def _peer(self, uri: str) -> flight.FlightClient:
        """A connection to another server of the warehouse (an endpoint's
        location), made once."""
        if uri == self.uri:
            return self._flight
        if uri not in self._peers:
            kwargs = {"tls_root_certs": self._tls_root_certs} if self._tls_root_certs is not None else {}
            self._peers[uri] = flight.connect(uri, **kwargs)
        return self._peers[uri]

    def read_endpoint(self, endpoint: flight.FlightEndpoint) -> pa.Table:
        """One endpoint's table: from its first location, failing over to
        the next while a server is unreachable, then to this client's
        server; an endpoint without locations is read from this client's
        server. Every server of a warehouse returns the same table."""
        uris = [loc.uri.decode() if isinstance(loc.uri, bytes) else str(loc.uri) for loc in endpoint.locations]
        if self.uri not in uris:
            uris.append(self.uri)
        last: Optional[Exception] = None
        for uri in uris:
            try:
                with mapped():
                    return self._peer(uri).do_get(endpoint.ticket, options=self._options).read_all()
            except ServerError as e:
                if not isinstance(e.__cause__, flight.FlightUnavailableError):
                    raise
                last = e
        raise last  # type: ignore[misc]

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- actions -------------------------------------------------------

    def _action(self, name: str, body: Optional[Mapping] = None) -> Any:
        payload = json.dumps(body).encode() if body is not None else b""
        with mapped():
            results = list(self._flight.do_action(flight.Action(name, payload), options=self._options))
        return json.loads(results[0].body.to_pybytes()) if results else None

    def health(self) -> dict:
        """Server status."""
        return self._action("health")

    def collections(self) -> list:
        """Every collection with its bands and tile and scene counts."""
        return self._action("list_collections")

    def describe(self, name: str, tile: Optional[str] = None) -> dict:
        """A collection's bands, grid and counts; with ``tile``, that tile's
        chunks with their statistics."""
        body = {"collection": name}
        if tile is not None:
            body["tile"] = tile
        return self._action("describe", body)

    def sql(self, query: str) -> pa.Table:
        """Runs a read-only SQL statement over Flight SQL (through the ADBC
        driver, ``pip install adbc-driver-flightsql``) and returns its
        answer. Tables: ``collections``, ``scenes``, ``chunks``,
        ``observations``; ``point_series(collection, lon, lat)`` for one
        location's pixels (docs/protocol.md, SQL)."""
        try:
            from adbc_driver_flightsql import DatabaseOptions, dbapi
        except ImportError as e:  # pragma: no cover - depends on the install
            raise ImportError("Client.sql needs the ADBC Flight SQL driver: pip install adbc-driver-flightsql") from e
        import adbc_driver_manager

        db_kwargs = {DatabaseOptions.AUTHORIZATION_HEADER.value: self._authorization} if self._authorization else {}
        try:
            with dbapi.connect(self.uri, db_kwargs=db_kwargs, autocommit=True) as conn, conn.cursor() as cur:
                cur.execute(query)
                return cur.fetch_arrow_table()
        except adbc_driver_manager.Error as e:
            raise _adbc_error(e) from e

    def stac(self, name: str) -> dict:
        """The collection as STAC 1.0: ``{"collection": <Collection>,
        "items": [<Item per scene>]}`` (``pystac.Collection.from_dict`` and
        ``pystac.Item.from_dict`` read them)."""
        return self._action("stac", {"collection": name})

    def create_collection(self, name: str, *, profile: Optional[str] = None, bands: Optional[Sequence[Mapping]] = None,
                          grid: Optional[Mapping] = None, resampling: Optional[str] = None,
                          compression: Optional[str] = None, compression_level: Optional[int] = None) -> dict:
        """Creates a collection from a built-in ``profile`` (``sentinel2_l2a``,
        ``landsat8_l2``, ``landsat9_l2``, ``planet_sr``) or from ``bands``
        (``[{"name", "dtype", "nodata", "resampling"}]``) and a ``grid``
        (``{"resolution": 10}`` on the default sinusoidal grid, or with
        ``"crs"`` and ``"tile_span"``). ``compression`` (``"none"``,
        ``"lz4"``, ``"zstd"`` with ``compression_level`` 1-22) compresses
        stored chunks with Arrow IPC buffer compression. Returns its
        description."""
        body: dict = {"name": name}
        if compression is not None:
            body["compression"] = compression
        if compression_level is not None:
            body["compression_level"] = compression_level
        if profile is not None:
            body["profile"] = profile
        if bands is not None:
            body["bands"] = list(bands)
        if grid is not None:
            body["grid"] = dict(grid)
        if resampling is not None:
            body["resampling"] = resampling
        return self._action("create_collection", body)

    def delete(self, collection: str, *, scene_id: Optional[str] = None, tile: Optional[str] = None,
               start: Optional[TimeLike] = None, end: Optional[TimeLike] = None) -> dict:
        """Deletes a scene, a tile or a time range (filters combine)."""
        body: dict = {"collection": collection}
        for k, v in (("scene_id", scene_id), ("tile", tile)):
            if v is not None:
                body[k] = v
        for k, v in (("start", start), ("end", end)):
            if v is not None:
                body[k] = _time(v)
        return self._action("delete", body)

    def ingest_path(self, paths: Union[str, Sequence[str]], collection: str, *, bands: Optional[str] = None,
                    time: Optional[TimeLike] = None, replace: bool = False) -> dict:
        """Has the server read GeoTIFF/COG files it can see (under its
        ``--ingest-root``) and ingest them as ``pixelquery ingest`` does;
        returns the report (``files``, ``scenes``, ``failures``)."""
        body: dict = {"collection": collection, "paths": [paths] if isinstance(paths, str) else list(paths)}
        if bands is not None:
            body["bands"] = bands
        if time is not None:
            body["time"] = _time(time)
        if replace:
            body["replace"] = True
        return self._action("ingest_path", body)

    def compact(self, collection: str, tiles: Optional[Sequence[str]] = None) -> dict:
        """Rewrites chunks of many appended batches as one batch each."""
        body: dict = {"collection": collection}
        if tiles:
            body["tiles"] = list(tiles)
        return self._action("compact", body)

    # ---- ingest --------------------------------------------------------

    def ingest(self, array: np.ndarray, *, transform: Any, crs: Any, time: TimeLike, bands: Union[str, Sequence[str]],
               collection: str, scene_id: Optional[str] = None, nodata: Any = None, valid: Optional[np.ndarray] = None,
               resampling: Union[None, str, Mapping[str, str]] = None, fingerprint: Optional[str] = None,
               replace: bool = False, baseline: Optional[str] = None) -> dict:
        """Sends one raster with DoPut, streamed in row strips.

        ``array`` is 2-D ``(height, width)`` or band-first 3-D
        ``(bands, height, width)``; a ``numpy.ma.MaskedArray``'s mask marks
        invalid pixels. ``transform`` is a GDAL geotransform or an
        ``affine.Affine``; ``crs`` an EPSG code, ``"EPSG:32652"``, WKT or a
        rasterio/pyproj CRS. ``nodata`` is one value or one per band;
        ``valid`` an optional boolean ``(height, width)`` mask for all bands.
        ``scene_id`` defaults to a hash of the pixels, place and time, so a
        retry of the same call is recognised (``"duplicate": True``).
        ``fingerprint`` (any short string naming the content) makes the
        server refuse a scene id stored with other content; ``replace``
        replaces a scene stored under this id with another time or content.
        Returns the server's PutResult: scene_id, tiles, observations,
        bytes, elapsed_ms, duplicate.
        """
        mask = None
        if isinstance(array, np.ma.MaskedArray):
            mask = np.ma.getmaskarray(array)
            array = np.ma.getdata(array)
        data = np.asarray(array)
        if data.ndim == 2:
            data = data[np.newaxis]
            mask = None if mask is None else mask[np.newaxis]
        if data.ndim != 3:
            raise InvalidRequest(f"invalid array shape = {array.shape}: expected (height, width) or (bands, height, width)")
        names = [bands] if isinstance(bands, str) else list(bands)
        if len(names) != data.shape[0]:
            raise InvalidRequest(f"invalid bands = {names!r}: {data.shape[0]} bands in the array")
        nbands, height, width = data.shape
        nodatas = list(nodata) if isinstance(nodata, (list, tuple, np.ndarray)) else [nodata] * nbands
        if len(nodatas) != nbands:
            raise InvalidRequest(f"invalid nodata = {nodata!r}: one value or one per band")
        valid_all = None if valid is None else np.asarray(valid, dtype=bool)
        if valid_all is not None and valid_all.shape != (height, width):
            raise InvalidRequest(f"invalid valid shape = {valid_all.shape}: expected {(height, width)}")
        if mask is not None:
            if (mask == mask[:1]).all():
                shared = ~mask[0]
                valid_all = shared if valid_all is None else (valid_all & shared)
            else:
                # Masks differ per band: masked pixels become each band's nodata.
                data = data.copy()
                for b in range(nbands):
                    if nodatas[b] is None:
                        raise InvalidRequest(f"invalid nodata = None for band {names[b]!r}: a per-band mask needs a nodata value to write")
                    data[b][mask[b]] = nodatas[b]
        dtype = data.dtype
        try:
            pa_type = pa.from_numpy_dtype(dtype)
        except (pa.ArrowNotImplementedError, TypeError) as e:
            raise InvalidRequest(f"invalid array dtype = {dtype}") from e
        gt = _geotransform(transform)
        when = _time(time)
        if scene_id is None:
            h = hashlib.sha256()
            h.update(json.dumps([collection, when, _crs(crs), gt, names]).encode())
            h.update(np.ascontiguousarray(data).tobytes())
            if valid_all is not None:
                h.update(np.packbits(valid_all).tobytes())
            scene_id = f"{collection}-{h.hexdigest()[:24]}"
        band_specs = []
        for name, nd in zip(names, nodatas):
            spec: dict = {"name": name, "dtype": str(np.dtype(dtype))}
            if nd is not None:
                spec["nodata"] = float(nd)
            band_specs.append(spec)
        descriptor = {
            "collection": collection, "scene_id": scene_id, "acquired_at": when, "crs": _crs(crs),
            "geotransform": gt, "width": int(width), "height": int(height), "bands": band_specs,
        }
        if resampling is not None:
            descriptor["resampling"] = resampling if isinstance(resampling, str) else dict(resampling)
        if fingerprint is not None:
            descriptor["fingerprint"] = fingerprint
        if replace:
            descriptor["replace"] = True
        if baseline is not None:
            descriptor["processing_baseline"] = str(baseline)
        fields = [pa.field(n, pa_type, nullable=False) for n in names]
        if valid_all is not None:
            fields.append(pa.field("valid", pa.bool_(), nullable=False))
        schema = pa.schema(fields)
        row_bytes = max(1, width * (dtype.itemsize * nbands + (1 if valid_all is not None else 0)))
        rows_per_batch = max(1, TARGET_BATCH_BYTES // row_bytes)
        with mapped():
            writer, reader = self._flight.do_put(flight.FlightDescriptor.for_command(json.dumps(descriptor)), schema, options=self._options)
            try:
                for top in range(0, height, rows_per_batch):
                    cols = [pa.array(np.ascontiguousarray(data[b, top:top + rows_per_batch]).ravel()) for b in range(nbands)]
                    if valid_all is not None:
                        cols.append(pa.array(valid_all[top:top + rows_per_batch].ravel()))
                    writer.write_batch(pa.record_batch(cols, schema=schema))
                writer.done_writing()
                buf = reader.read()
            finally:
                writer.close()  # raises the server's error, if any
        return json.loads(buf.to_pybytes())

    def ingest_cog(self, path: str, collection: str, *, bands: Optional[Sequence[str]] = None, time: Optional[TimeLike] = None,
                   scene_id: Optional[str] = None, resampling: Union[None, str, Mapping[str, str]] = None,
                   replace: bool = False) -> dict:
        """Reads a GeoTIFF/COG with rasterio and ingests it. Band names come
        from ``bands`` or the file's band descriptions; the time from ``time``
        or the file's ``TIFFTAG_DATETIME`` / ``ACQUISITIONDATETIME`` tags.
        The scene id is the one ``pixelquery ingest`` and ``ingest_path``
        give the same file (:func:`cog_scene_id`), so a file is one scene
        whichever way it came in."""
        try:
            import rasterio
        except ImportError as e:
            raise ImportError("ingest_cog needs rasterio: pip install 'pixelquery-flight[cog]'") from e
        with rasterio.open(path) as src:
            data = src.read(masked=False)
            names = list(bands) if bands is not None else [d for d in src.descriptions]
            if any(not n for n in names):
                raise InvalidRequest(f"invalid bands = {names!r}: {path} has unnamed bands; pass bands=[...]")
            if time is None:
                tags = src.tags()
                raw = tags.get("TIFFTAG_DATETIME") or tags.get("ACQUISITIONDATETIME")
                if raw is None:
                    raise InvalidRequest(f"invalid time = None: {path} has no TIFFTAG_DATETIME or ACQUISITIONDATETIME tag; pass time=")
                time = raw.replace(":", "-", 2).replace(" ", "T") if len(raw) >= 19 and raw[4] == ":" else raw
            nodata = list(src.nodatavals)
            auto_id, fingerprint = cog_scene_id(path, _all_tags(src), names, src.count)
            return self.ingest(data, transform=src.transform, crs=src.crs, time=time, bands=names, collection=collection,
                               scene_id=scene_id or auto_id, nodata=nodata, resampling=resampling, fingerprint=fingerprint,
                               replace=replace)

    # ---- queries -------------------------------------------------------

    @staticmethod
    def _steps(q: dict, mask, scale, compute, reduce=None, into=None) -> dict:
        """Adds the per-observation steps: ``mask`` (``"qa"`` or a band
        rule such as ``{"band": "scl", "invalid": [3, 8, 9, 10]}``),
        ``scale`` (physical values) and ``compute`` (``{"ndvi": "(nir -
        red) / (nir + red)"}``; name computed bands in ``bands``), then
        ``reduce`` (``{"period": "month", "reducer": "median"}`` or
        ``{"period": "year", "quality": "ndvi"}``) and ``into`` (store the
        reduced answer as that collection)."""
        if reduce is not None:
            q["reduce"] = dict(reduce)
        if into is not None:
            q["into"] = into
        if mask is not None:
            q["mask"] = mask if isinstance(mask, str) else dict(mask)
        if scale:
            q["scale"] = True
        if compute:
            q["compute"] = dict(compute)
            if "bands" not in q:
                q["bands"] = list(compute)
        return q

    @staticmethod
    def _query(collection: str, tiles, bbox, bbox_crs, start, end, bands, point=None) -> dict:
        q: dict = {"collection": collection}
        if tiles is not None:
            q["tiles"] = [tiles] if isinstance(tiles, str) else list(tiles)
        if bbox is not None:
            q["bbox"] = [float(v) for v in bbox]
        if point is not None:
            q["point"] = [float(v) for v in point]
        if bbox_crs is not None and (bbox is not None or point is not None):
            q["bbox_crs"] = _crs(bbox_crs)
        if start is not None:
            q["start"] = _time(start)
        if end is not None:
            q["end"] = _time(end)
        if bands is not None:
            q["bands"] = [bands] if isinstance(bands, str) else list(bands)
        return q

    def query(self, collection: str, *, tiles: Union[None, str, Sequence[str]] = None, bbox: Optional[Sequence[float]] = None,
              bbox_crs: Any = "EPSG:4326", start: Optional[TimeLike] = None, end: Optional[TimeLike] = None,
              bands: Union[None, str, Sequence[str]] = None, progress: Optional[bool] = None, max_workers: int = 4,
              mask: Union[None, str, Mapping] = None, scale: bool = False, compute: Optional[Mapping[str, str]] = None,
              reduce: Optional[Mapping[str, str]] = None, into: Optional[str] = None,
              parallel: Optional[int] = None, decompress: bool = False) -> pa.Table:
        """Observations as an Arrow table (``tile_id``, ``band``, ``time``,
        ``scene_id``, ``pixels``, ``mask``), fetched endpoint by endpoint in
        parallel. ``start`` is inclusive, ``end`` exclusive. Grid metadata
        (``crs``, ``tile_px``, ``tile_span``, ``pixel_size``) is in the
        schema metadata. ``mask``, ``scale``, ``compute`` and ``reduce``
        apply on the server (see ``load``); reduced rows carry ``label``
        (the period) and ``time`` (its start). With ``into`` the reduced
        answer is stored as that collection and the table is one row:
        ``collection``, ``observations``, ``bytes``, ``duplicate``.

        ``parallel`` endpoints are read at once (default ``max_workers``),
        each from the first server its locations list, failing over to the
        next: with several servers on one warehouse the reads spread.
        A compressed collection's batches arrive as stored (pyarrow decodes
        them); ``decompress=True`` has the server send them decoded."""
        max_workers = parallel or max_workers
        q = self._steps(self._query(collection, tiles, bbox, bbox_crs, start, end, bands), mask, scale, compute, reduce, into)
        if decompress:
            q["decompress"] = True
        with mapped():
            info = self._flight.get_flight_info(flight.FlightDescriptor.for_command(json.dumps(q)), options=self._options)
        endpoints = list(info.endpoints)
        schema = info.schema
        if not endpoints:
            return schema.empty_table()
        bar = None
        if progress or (progress is None and len(endpoints) >= PROGRESS_MIN_ENDPOINTS):
            try:
                from tqdm import tqdm
                bar = tqdm(total=len(endpoints), unit="chunk", desc=collection)
            except ImportError:
                bar = None

        def fetch(ep):
            t = self.read_endpoint(ep)
            if bar is not None:
                bar.update(1)
            return t

        try:
            with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
                tables = list(pool.map(fetch, endpoints))
        finally:
            if bar is not None:
                bar.close()
        tables = [t.replace_schema_metadata(schema.metadata) for t in tables]
        return pa.concat_tables(tables)

    def to_xarray(self, collection: str, *, tiles: Union[None, str, Sequence[str]] = None, bbox: Optional[Sequence[float]] = None,
                  bbox_crs: Any = "EPSG:4326", start: Optional[TimeLike] = None, end: Optional[TimeLike] = None,
                  bands: Union[None, str, Sequence[str]] = None, fill: Any = np.nan, progress: Optional[bool] = None):
        """The query as an ``xarray.Dataset``: one variable per band with
        dims ``time``, ``y``, ``x``; tiles mosaicked into one array over the
        tiles found; coordinates at pixel centres in the grid's CRS (WKT in
        ``attrs["crs"]``); masked or missing pixels hold ``fill`` (NaN by
        default, which makes the values float)."""
        import xarray as xr

        table = self.query(collection, tiles=tiles, bbox=bbox, bbox_crs=bbox_crs, start=start, end=end, bands=bands, progress=progress)
        meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        n = int(meta["tile_px"])
        span = float(meta["tile_span"])
        px = float(meta["pixel_size"])
        attrs = {"crs": meta.get("crs", ""), "collection": collection, "pixel_size": px, "tile_px": n}
        if table.num_rows == 0:
            return xr.Dataset(attrs=attrs)
        tile_ids = table["tile_id"].to_pylist()
        ixy = [_parse_tile(t) for t in tile_ids]
        ix0 = min(i for i, _ in ixy)
        ix1 = max(i for i, _ in ixy)
        iy0 = min(j for _, j in ixy)
        iy1 = max(j for _, j in ixy)
        width, height = (ix1 - ix0 + 1) * n, (iy1 - iy0 + 1) * n
        times = np.array(sorted(set(table["time"].cast(pa.int64()).to_pylist())), dtype="datetime64[ms]")
        t_index = {int(t.astype(np.int64)): k for k, t in enumerate(times)}
        band_names = table["band"].to_pylist()
        row_times = table["time"].cast(pa.int64()).to_pylist()
        variables = {}
        for band in dict.fromkeys(band_names):
            rows = [r for r, b in enumerate(band_names) if b == band]
            sample = table["pixels"][rows[0]].values.type.to_pandas_dtype()
            nan_fill = isinstance(fill, float) and np.isnan(fill)
            # NaN needs floats; another fill keeps the band's type if it fits.
            out_dtype = np.result_type(sample, np.float32) if nan_fill else np.result_type(sample, np.min_scalar_type(fill))
            cube = np.full((len(times), height, width), fill, dtype=out_dtype)
            for r in rows:
                ix, iy = ixy[r]
                values = table["pixels"][r].values.to_numpy(zero_copy_only=False).reshape(n, n)
                mask = table["mask"][r].values.to_numpy(zero_copy_only=False).reshape(n, n)
                r0, c0 = (iy1 - iy) * n, (ix - ix0) * n
                np.copyto(cube[t_index[row_times[r]], r0:r0 + n, c0:c0 + n], values, where=mask, casting="unsafe")
            variables[band] = (("time", "y", "x"), cube)
        x = ix0 * span + (np.arange(width) + 0.5) * px
        y = (iy1 + 1) * span - (np.arange(height) + 0.5) * px
        return xr.Dataset(variables, coords={"time": times, "y": y, "x": x}, attrs=attrs)

    def load(self, collection: str, *, bands: Union[None, str, Sequence[str]] = None, bbox: Optional[Sequence[float]] = None,
             bbox_crs: Any = "EPSG:4326", geometry: Optional[Mapping] = None, geometry_crs: Any = "EPSG:4326",
             time: Optional[Sequence[TimeLike]] = None, start: Optional[TimeLike] = None, end: Optional[TimeLike] = None,
             crs: Any = None, resolution: Union[None, float, Sequence[float]] = None,
             resampling: Union[None, str, Mapping[str, str]] = None, groupby: Optional[str] = None, fuse: Optional[str] = None,
             chunks: Optional[Mapping[str, int]] = None, window: Optional[int] = None, max_workers: int = 4,
             mask: Union[None, str, Mapping] = None, scale: bool = False, compute: Optional[Mapping[str, str]] = None,
             reduce: Optional[Mapping[str, str]] = None, into: Optional[str] = None, parallel: Optional[int] = None):
        """An analysis-ready load as an ``xarray.Dataset`` (dims ``time``,
        ``y``, ``x``; one variable per band), resampled on the server from
        the stored tiles onto the grid of ``crs`` and ``resolution`` (pixel
        edges at multiples of it), like ``odc.stac.load``.

        The area is ``bbox`` (in ``bbox_crs``) and/or ``geometry`` (a GeoJSON
        Polygon or MultiPolygon in ``geometry_crs``; pixels whose centre lies
        outside are masked). ``time`` is ``(start, end)``, end exclusive.
        ``groupby`` is ``time``, ``scene`` or ``solar_day``; ``fuse`` is
        ``first``, ``last``, ``min``, ``max`` or ``mean``. Masked pixels are
        NaN in float bands and the band's nodata (or 0) otherwise.

        ``mask`` (``"qa"``: the collection's cloud rules, or
        ``{"band": "scl", "invalid": [...]}`` / ``"bits"`` / ``"valid"``),
        ``scale=True`` (``value * scale + offset``, Sentinel-2's offset per
        processing baseline) and ``compute`` (``{"ndvi": "(nir - red) /
        (nir + red)"}``) run on the server: mask and scale per observation
        before the warp, compute after the fuse. ``reduce`` (``{"period":
        "month", "reducer": "median"}``, or ``"quality": "<expr>"`` for
        best-pixel composites) reduces each period per pixel, last: ``time``
        is then the period's start and ``label`` its name (``2024-06``).
        With ``into`` the reduced load is stored instead as that collection
        (on the output grid, in whole tiles; pixels outside the area
        invalid) and the answer is a dict: ``collection``,
        ``observations``, ``bytes``, ``duplicate``.

        With ``chunks`` (as for dask: ``{"x": 1024, "y": 1024}``; ``{}``
        for the server's default windows) the variables are dask arrays with
        one chunk per server window, fetched only when computed. The CRS is
        on the ``spatial_ref`` coordinate in the CF form rioxarray and
        odc-geo read. ``parallel`` windows are read at once (default
        ``max_workers``), each from the first server its endpoint lists,
        failing over to the next."""
        import xarray as xr

        max_workers = parallel or max_workers

        if time is not None:
            if isinstance(time, (str, bytes)) or len(time) != 2:
                raise InvalidRequest(f"invalid time = {time!r}: expected (start, end)")
            start, end = time
        q = self._steps(self._query(collection, None, bbox, bbox_crs, start, end, bands), mask, scale, compute, reduce, into)
        if geometry is not None:
            q["geometry"] = dict(geometry)
            q["geometry_crs"] = _crs(geometry_crs)
        out: dict = {}
        if crs is not None:
            out["crs"] = _crs(crs)
        if resolution is not None:
            out["resolution"] = [float(v) for v in resolution] if isinstance(resolution, (list, tuple)) else float(resolution)
        if resampling is not None:
            out["resampling"] = resampling if isinstance(resampling, str) else dict(resampling)
        size = window or (chunks or {}).get("x") or (chunks or {}).get("y")
        if size:
            out["window"] = int(size)
        q["output"] = out
        if groupby is not None:
            q["groupby"] = groupby
        if fuse is not None:
            q["fuse"] = fuse
        if into is not None:
            with mapped():
                return self._flight.do_get(flight.Ticket(json.dumps(q)), options=self._options).read_all().to_pylist()[0]
        with mapped():
            info = self._flight.get_flight_info(flight.FlightDescriptor.for_command(json.dumps(q)), options=self._options)
        meta = {k.decode(): v.decode() for k, v in (info.schema.metadata or {}).items()}
        width, height = int(meta["width"]), int(meta["height"])
        gt = json.loads(meta["geotransform"])
        times = np.array(json.loads(meta["times"]), dtype="int64").astype("datetime64[ms]")
        labels = json.loads(meta["labels"])
        band_names = json.loads(meta["bands"])
        dtype = np.dtype(info.schema.field("pixels").type.value_type.to_pandas_dtype())
        described = {b["name"]: b for b in self.describe(collection).get("bands", [])}
        t_index = {int(t): k for k, t in enumerate(times.astype(np.int64))}
        win = int(size or 1024)

        def fill_of(band):
            if dtype.kind == "f":
                return np.nan
            if reduce is not None:
                return 0
            nodata = described.get(band, {}).get("nodata")
            return 0 if nodata is None else nodata

        # Endpoint tickets are JSON queries narrowed to one window and band.
        blocks: dict = {}
        for ep in info.endpoints:
            t = json.loads(ep.ticket.ticket)
            row, col = t["output"]["at"]
            blocks[(t["bands"][0], row, col)] = ep

        def endpoint_of(band, row, col):
            ep = blocks.get((band, row, col))
            return None if ep is None else (ep.ticket.ticket, [loc.uri.decode() if isinstance(loc.uri, bytes) else str(loc.uri) for loc in ep.locations])

        rows = [(r, min(win, height - r)) for r in range(0, height, win)]
        cols = [(c, min(win, width - c)) for c in range(0, width, win)]
        variables = {}
        if chunks is not None:
            import dask
            import dask.array as da

            # Each window is read by whichever process computes it (a dask
            # worker): by URI and token, from its endpoint's locations.
            access = (self.uri, self._token, self._tls_root_certs)
            for band in band_names:
                grid = [[da.from_delayed(dask.delayed(_window)(access, endpoint_of(band, r, c), (len(times), h, w), dtype, fill_of(band), t_index),
                                         shape=(len(times), h, w), dtype=dtype)
                         for c, w in cols] for r, h in rows]
                variables[band] = da.block([grid])
        else:
            # Each window is written straight into its slice of the band's cube.
            jobs = []
            for band in band_names:
                cube = variables[band] = np.empty((len(times), height, width), dtype=dtype)
                jobs += [(band, r, c, cube[:, r:r + h, c:c + w]) for r, h in rows for c, w in cols]

            def fetch(band, row, col, out):
                _window(self, endpoint_of(band, row, col), out.shape, dtype, fill_of(band), t_index, out=out)

            with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
                list(pool.map(lambda j: fetch(*j), jobs))
        wkt = meta["crs"]
        spatial_ref = xr.Variable((), 0, attrs={"crs_wkt": wkt, "spatial_ref": wkt, "GeoTransform": " ".join(str(v) for v in gt)})
        data_vars = {b: xr.Variable(("time", "y", "x"), v, attrs={"grid_mapping": "spatial_ref", "nodata": fill_of(b)})
                     for b, v in variables.items()}
        x = gt[0] + (np.arange(width) + 0.5) * gt[1]
        y = gt[3] + (np.arange(height) + 0.5) * gt[5]
        coords = {"time": times, "y": y, "x": x, "label": ("time", labels), "spatial_ref": spatial_ref}
        return xr.Dataset(data_vars, coords=coords, attrs={"collection": collection, "groupby": meta.get("groupby", "time"),
                                                           "fuse": meta.get("fuse", "last")})

    def timeseries(self, lon: float, lat: float, collection: str, *, crs: Any = "EPSG:4326", start: Optional[TimeLike] = None,
                   end: Optional[TimeLike] = None, bands: Union[None, str, Sequence[str]] = None,
                   mask: Union[None, str, Mapping] = None, scale: bool = False, compute: Optional[Mapping[str, str]] = None,
                   reduce: Optional[Mapping[str, str]] = None):
        """One location's time series as a ``pandas.DataFrame`` indexed by
        time: ``scene_id``, ``tile_id``, and per band the value (NaN when
        invalid) and ``<band>_valid``. ``lon``/``lat`` are x/y in ``crs``.
        With ``reduce``, one row per period (``label``; time = its start)."""
        q = self._steps(self._query(collection, None, None, crs, start, end, bands, point=(lon, lat)), mask, scale, compute, reduce)
        with mapped():
            table = self._flight.do_get(flight.Ticket(json.dumps(q)), options=self._options).read_all()
        df = table.to_pandas()
        if "time" in df:
            df = df.set_index("time")
        return df


def _window(reader, endpoint, shape, dtype, fill, t_index, out=None) -> np.ndarray:
    """One window of a load as a ``(time, y, x)`` array (``out`` when
    given): ``fill`` where no observation is valid. ``endpoint`` is
    ``(ticket bytes, location URIs)`` or None (no data there); ``reader`` a
    Client, or ``(uri, token, tls_root_certs)`` to connect from another
    process."""
    block = np.empty(shape, dtype=dtype) if out is None else out
    block[...] = fill
    if endpoint is None:
        return block
    ep = flight.FlightEndpoint(endpoint[0], endpoint[1])
    if isinstance(reader, Client):
        table = reader.read_endpoint(ep)
    else:
        uri, token, tls = reader
        with Client(uri, token=token, tls_root_certs=tls) as c:
            table = c.read_endpoint(ep)
    h, w = shape[1], shape[2]
    row_times = table["time"].cast(pa.int64()).to_pylist()
    for r in range(table.num_rows):
        values = table["pixels"][r].values.to_numpy(zero_copy_only=False).reshape(h, w)
        mask = table["mask"][r].values.to_numpy(zero_copy_only=False).reshape(h, w)
        np.copyto(block[t_index[row_times[r]]], values, where=mask, casting="unsafe")
    return block


def _parse_tile(tile_id: str) -> tuple:
    x, y = tile_id[1:].split("_y")
    return int(x), int(y)


def _all_tags(src) -> dict:
    """A rasterio dataset's metadata items of every domain the CLI reads."""
    tags = dict(src.tags())
    for ns in src.tag_namespaces() or []:
        if ns.startswith("xml:") or ns in ("IMAGE_STRUCTURE", "DERIVED_SUBDATASETS"):
            continue
        for k, v in src.tags(ns=ns).items():
            tags.setdefault(k, v)
    return tags


def _band_file(stem: str):
    """``(product, band code)`` of a product band file name such as
    ``T52SCG_20240615T020304_B04_10m`` (the CLI's rule), else None."""
    parts = stem.split("_")
    for i in range(len(parts) - 1, 0, -1):
        p = parts[i]
        if (len(p) == 3 and p.startswith("B") and (p[1:].isdigit() or p == "B8A")) or p in ("SCL", "AOT", "WVP"):
            return "_".join(parts[:i]), p
        if parts[i - 1] in ("SR", "ST") and p.startswith("B") and len(p) > 1 and p[1:].isdigit():
            return "_".join(parts[:i - 1]), f"{parts[i - 1]}_{p}"
        if parts[i - 1] == "QA" and p in ("PIXEL", "RADSAT"):
            return "_".join(parts[:i - 1]), f"QA_{p}"
    return None


def cog_scene_id(path: str, tags: Optional[Mapping[str, str]] = None, band_names: Sequence[str] = (),
                 band_count: int = 0) -> Tuple[str, str]:
    """The scene id and content fingerprint ``pixelquery ingest`` gives a
    one-file scene: the product id of the metadata (``LANDSAT_PRODUCT_ID``,
    ``PRODUCT_ID``, ``PRODUCT_URI``) or of a product band file name, else
    ``<label>_<crc32 of the file's bytes, 8 hex>``, where the label is the
    file's folder for a one-band file named as a band (``B04.tif``,
    ``red.tif``: a STAC item's folder) and the file stem otherwise; the
    fingerprint is ``crc32:<8 hex>``."""
    crc = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            crc = zlib.crc32(block, crc)
    fingerprint = f"crc32:{crc:08x}"
    upper = {k.upper(): v for k, v in (tags or {}).items()}
    for key in ("LANDSAT_PRODUCT_ID", "PRODUCT_ID", "PRODUCT_URI"):
        v = str(upper.get(key, "")).strip().strip('"')
        if v.endswith(".SAFE"):
            v = v[:-5]
        if v:
            return v, fingerprint
    stem = os.path.splitext(os.path.basename(path))[0]
    bare = _band_file("x_" + stem)
    if band_count == 1 and ((bare is not None and bare[1] == stem) or stem in band_names):
        label = os.path.basename(os.path.dirname(os.path.abspath(path))) or "scene"
        return f"{label}_{crc:08x}", fingerprint
    product = _band_file(stem)
    if product is not None:
        return product[0], fingerprint
    return f"{stem}_{crc:08x}", fingerprint
