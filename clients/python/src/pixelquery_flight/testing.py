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
