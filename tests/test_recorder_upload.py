"""`recorder run --upload-to` as a process, against a real S3-compatible server (SeaweedFS on
127.0.0.1) and the fake exchange: hours the recorder compacts arrive byte for byte and are
recorded in the ledger, the open hour stays local, an object store that is down or hangs
neither stops recording nor holds up SIGTERM, and without --upload-to nothing is attempted.

The store starts with 2024-08-08 hour 23 as NDJSON (closed by the wall clock, so compacted at
start); the stream goes on with the capture's next trades moved two hours into the future,
so their hour stays open for the whole test."""

from __future__ import annotations

import hashlib
import re
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import orjson
import pytest
from click.testing import CliRunner
from conftest import UNIT, in_a_future_hour
from fakebinance import FakeBinance
from prometheus_client.parser import text_string_to_metric_families
from pyarrow import fs
from s3server import ACCESS_KEY, REGION, SECRET_KEY, seaweedfs
from test_process import ndjson_lines, start, wait_until
from test_store import write_frames

from recorder.cli import main
from recorder.store import layout
from recorder.upload import LEDGER

MIDNIGHT = 1_723_161_600_000  # 2024-08-09 00:00 UTC: the capture crosses it
CLOSED = "trades/symbol=BTCUSDT/date=2024-08-08/hour=23/trades.parquet"
# Dummy credentials: with none, the AWS SDK would first ask the EC2 metadata service.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", "AWS_REGION": REGION}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture(scope="module")
def tape(frames_2024) -> tuple[list[bytes], list[bytes]]:
    """(hour 23 as captured, the next 3000 trades moved into an hour that is still to come)."""
    n = next(i for i, f in enumerate(frames_2024) if orjson.loads(f)["data"]["T"] >= MIDNIGHT)
    return frames_2024[:n], in_a_future_hour(frames_2024[n : n + 3000])


class Silent:
    """A TCP server on 127.0.0.1 that accepts connections and never answers: a hung object
    store. ``accepted`` counts connections; ``closed`` those the client closed since."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    @property
    def accepted(self) -> int:
        return len(self.conns)

    @property
    def closed(self) -> int:
        n = 0
        for c in self.conns:
            c.setblocking(False)
            try:
                while data := c.recv(65536):  # the request, never answered
                    del data
            except BlockingIOError:
                continue
            except OSError:
                pass
            n += 1
        return n

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


def recorder(tmp_path: Path, fake: FakeBinance, env: dict, *extra: str):
    return start(
        tmp_path / "data",
        fake,
        env,
        "--compact-grace",
        "0",
        "--compact-interval",
        "0.5",
        *extra,
    )


def status(root: Path) -> dict:
    path = root / layout.STATE / "recorder.json"
    return orjson.loads(path.read_bytes()) if path.exists() else {"stats": {}}


def ledger(root: Path) -> list[dict]:
    path = root / LEDGER
    return [orjson.loads(x) for x in path.read_bytes().splitlines()] if path.exists() else []


def stop(p) -> tuple[int, float, str]:
    """SIGTERM: (exit code, seconds to exit, the recorder's log)."""
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    rc = p.wait(20 * UNIT)
    return rc, time.monotonic() - t0, Path(p.log_path).read_text()


def test_closed_hours_are_uploaded_while_recording_and_the_open_hour_is_not(s3, tape, tmp_path):
    closed, stream = tape
    data = tmp_path / "data"
    write_frames(data, closed)
    url = f"s3://{s3.bucket}/live"
    with FakeBinance(stream, rate=3000) as fake:
        # --upload-interval is an hour: the copy of hour 23 follows its compaction.
        p = recorder(
            tmp_path, fake, s3.env, "--upload-to", url, "--upload-interval", "3600",
            "--metrics-addr", "127.0.0.1:0",
        )  # fmt: skip
        try:
            wait_until(lambda: [e["key"] for e in ledger(data)] == [CLOSED], 20, "the upload")
            fake.threadsafe(fake.start_market)
            wait_until(lambda: ndjson_lines(data) == len(stream), 20, "the open hour's trades")
            port = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/", Path(p.log_path).read_text())
            assert port, Path(p.log_path).read_text()
            seen: list[tuple[dict, dict]] = []

            def settled() -> bool:
                # The status file is a snapshot written every few seconds; the metrics are live.
                # A run may follow the one that copied the hour (a compaction that ends during a
                # run asks for another; it copies nothing and stamps a later last_upload_ms), so
                # wait until the snapshot and the metrics describe the same last run.
                st = status(data)["stats"]
                text = httpx.get(f"http://127.0.0.1:{port[1]}/metrics").text
                m = {
                    s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
                }
                seen[:] = [(st, m)]
                last = m.get("tapewatch_recorder_last_upload_timestamp_seconds")
                return st.get("files_uploaded") == 1 and last == st["last_upload_ms"] / 1000

            wait_until(settled, 10, "the status and the metrics to agree")
            ((stats, samples),) = seen
            # `recorder upload` beside the running recorder: no lock to fight over.
            r = CliRunner().invoke(
                main, ["upload", "--data-dir", str(data), "--to", url], env=s3.env
            )
            assert (r.exit_code, r.stderr) == (0, "")
            assert r.stdout.startswith("uploaded 0 files (0.0 MB")
            assert r.stdout.endswith(f"to {url}; 1 already uploaded\n")
        finally:
            rc, seconds, log = stop(p)
    assert rc == 0 and seconds < 5 * UNIT, log
    assert "Traceback" not in log and " failed" not in log
    local = (data / CLOSED).read_bytes()
    fsys = s3.filesystem()
    listed = fsys.get_file_info(fs.FileSelector(f"{s3.bucket}/live", recursive=True))
    assert [i.path for i in listed if i.type == fs.FileType.File] == [f"{s3.bucket}/live/{CLOSED}"]
    with fsys.open_input_stream(f"{s3.bucket}/live/{CLOSED}") as f:
        assert f.read() == local
    (entry,) = ledger(data)
    assert (entry["to"], entry["size"]) == (url, len(local))
    assert entry["sha256"] == hashlib.sha256(local).hexdigest()
    # The open hour holds the stream's trades, as NDJSON only, and stayed local.
    (open_hour,) = [d for d in layout.hour_dirs(data) if not (d / layout.PARQUET).exists()]
    assert sum(f.read_bytes().count(b"\n") for f in open_hour.glob("*.ndjson")) == len(stream)
    assert stats["files_uploaded"] == 1 and stats["bytes_uploaded"] == len(local)
    assert stats["upload_failures"] == 0
    assert abs(stats["last_upload_ms"] / 1000 - time.time()) < 60
    p_ = "tapewatch_recorder_"
    assert samples[p_ + "files_uploaded_total"] == 1
    assert samples[p_ + "bytes_uploaded_total"] == len(local)
    assert samples[p_ + "upload_failures_total"] == 0
    assert samples[p_ + "last_upload_timestamp_seconds"] == stats["last_upload_ms"] / 1000


def test_a_hung_object_store_holds_up_neither_recording_nor_sigterm(tape, tmp_path):
    closed, stream = tape
    data = tmp_path / "data"
    write_frames(data, closed)
    silent = Silent()
    try:
        with FakeBinance(stream, rate=3000) as fake:
            p = recorder(
                tmp_path, fake, CREDENTIALS,
                "--upload-to", "s3://tapewatch/x", "--endpoint-url", silent.url,
                "--upload-interval", "0.5",
            )  # fmt: skip
            try:
                wait_until(lambda: silent.accepted >= 1, 20, "an upload to start")
                fake.threadsafe(fake.start_market)
                wait_until(lambda: ndjson_lines(data) >= 2000, 20, "trades while it hangs")
                wait_until((data / CLOSED).exists, 20, "compaction, which goes on too")
                stats = status(data)["stats"]
            finally:
                rc, seconds, log = stop(p)
            # The upload process was killed, not left waiting: its connection is closed.
            wait_until(lambda: silent.closed == silent.accepted, 5, "the upload to end")
    finally:
        silent.close()
    assert rc == 0 and seconds < 5 * UNIT, log
    assert "stopped:" in log and "Traceback" not in log
    assert (stats["files_uploaded"], stats["upload_failures"]) == (0, 0)
    assert not (data / LEDGER).exists()


def test_an_unreachable_object_store_is_counted_and_retried(tape, tmp_path):
    closed, stream = tape
    data = tmp_path / "data"
    write_frames(data, closed)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with FakeBinance(stream, rate=3000) as fake:
        p = recorder(
            tmp_path, fake, CREDENTIALS,
            "--upload-to", "s3://tapewatch/x", "--endpoint-url", f"http://127.0.0.1:{port}",
            "--upload-interval", "0.5",
        )  # fmt: skip
        try:
            wait_until(lambda: fake.connections == 1, 20, "the recorder to connect")
            fake.threadsafe(fake.start_market)
            wait_until(lambda: status(data)["stats"].get("upload_failures", 0) >= 2, 20, "retries")
            wait_until(lambda: ndjson_lines(data) >= 2000, 20, "trades")
        finally:
            rc, seconds, log = stop(p)
    assert rc == 0 and seconds < 5 * UNIT, log
    assert (
        f"upload to s3://tapewatch/x failed, retried in 0.5 s: cannot open s3://tapewatch/x: "
        f"cannot reach http://127.0.0.1:{port}; check --endpoint-url (AWS_ENDPOINT_URL) and "
        "the network ("
    ) in log
    assert not (data / LEDGER).exists()


def test_a_failed_upload_is_retried_until_it_succeeds(s3, tape, tmp_path):
    """A bucket created after the recorder started: the next run copies what is closed."""
    closed, stream = tape
    data = tmp_path / "data"
    write_frames(data, closed)
    bucket = "created-later"
    with FakeBinance(stream, rate=3000) as fake:
        p = recorder(
            tmp_path, fake, s3.env, "--upload-to", f"s3://{bucket}/x", "--upload-interval", "0.5"
        )
        try:
            wait_until(
                lambda: status(data)["stats"].get("upload_failures", 0) >= 1, 20, "a failure"
            )
            create_bucket(s3, bucket)
            wait_until(lambda: [e["key"] for e in ledger(data)] == [CLOSED], 20, "the upload")
            wait_until(lambda: status(data)["stats"]["files_uploaded"] == 1, 10, "the status")
        finally:
            rc, _, log = stop(p)
    assert rc == 0, log
    assert (
        f"upload to s3://{bucket}/x failed, retried in 0.5 s: bucket '{bucket}' does not exist "
        f"at {s3.endpoint_url} (if that is not the S3 server, check --endpoint-url "
        "(AWS_ENDPOINT_URL)); create it first"
    ) in log
    with s3.filesystem().open_input_stream(f"{bucket}/x/{CLOSED}") as f:
        assert f.read() == (data / CLOSED).read_bytes()


def create_bucket(s3, name: str) -> None:
    fs.S3FileSystem(
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        region=REGION,
        endpoint_override=s3.endpoint_url.split("://", 1)[1],
        scheme="http",
        allow_bucket_creation=True,
    ).create_dir(name)


def test_without_upload_to_nothing_is_attempted(tape, tmp_path):
    closed, stream = tape
    data = tmp_path / "data"
    write_frames(data, closed)
    silent = Silent()  # the endpoint the environment names, were anything to use it
    try:
        with FakeBinance(stream, rate=3000) as fake:
            p = recorder(tmp_path, fake, {**CREDENTIALS, "AWS_ENDPOINT_URL": silent.url})
            try:
                wait_until(lambda: (data / CLOSED).exists(), 20, "compaction")
                wait_until(lambda: status(data)["stats"].get("hours_compacted") == 1, 10, "status")
                time.sleep(0.5 * UNIT)
            finally:
                rc, _, log = stop(p)
        assert silent.accepted == 0
    finally:
        silent.close()
    assert rc == 0, log
    assert not (data / LEDGER).exists()
    assert not any("upload" in k for k in status(data)["stats"])
    assert "upload" not in log


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["--upload-to", "/tmp/elsewhere"],
            "Error: '/tmp/elsewhere' is not an s3:// URL; give one like --upload-to "
            "s3://my-bucket/tapewatch",
        ),
        (
            ["--upload-to", "s3://tapewatch/x", "--endpoint-url", "127.0.0.1:8333"],
            "Error: endpoint '127.0.0.1:8333' is not an http(s):// URL; give one like "
            "--endpoint-url http://127.0.0.1:8333",
        ),
    ],
)
def test_a_malformed_destination_is_one_error_line_before_anything_starts(tmp_path, args, line):
    data = tmp_path / "data"
    r = CliRunner().invoke(
        main, ["run", "--symbols", "btcusdt", "--data-dir", str(data), *args], env=CREDENTIALS
    )
    assert (r.exit_code, r.stdout, r.stderr) == (1, "", line + "\n")
    assert not data.exists()
