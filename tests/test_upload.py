"""`recorder upload` against a real S3-compatible server (SeaweedFS on 127.0.0.1): every
closed file arrives byte for byte, a rerun copies nothing, an interrupted run resumes, and
--delete-local deletes only files whose copies were verified."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import polars as pl
import pytest
from click.testing import CliRunner
from conftest import UNIT
from s3server import seaweedfs
from synth import tape, write_store

from recorder.cli import main
from recorder.store import layout
from recorder.store.days import merge_day
from recorder.store.objects import S3Settings, parse_target
from recorder.upload import LEDGER, closed_files, upload_store

T0 = 1_723_075_200_000  # 2024-08-08 00:00 UTC


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


def small_store(root: Path) -> list[str]:
    """BTCUSDT: day 2024-08-07 merged into a day file plus 3 hours of 2024-08-08, the last one
    still open (NDJSON); ETHUSDT: 2 hours. Returns the keys of the closed files."""
    write_store(root, "BTCUSDT", tape(T0 - 3 * layout.HOUR_MS, 3 * 3600, 0.2, seed=1))
    merge_day(root, "BTCUSDT", T0 // layout.DAY_MS - 1)
    write_store(root, "BTCUSDT", tape(T0, 3 * 3600, 0.2, seed=2, first_id=10_000))
    write_store(root, "ETHUSDT", tape(T0, 2 * 3600, 0.2, seed=3))
    open_hour = layout.hour_dir(root, "BTCUSDT", T0 // layout.HOUR_MS + 2)
    (open_hour / layout.ACTIVE_NDJSON).write_bytes(b"")
    return [p.relative_to(root).as_posix() for p in closed_files(root)]


def run(s3, *args: str, env: dict | None = None):
    return CliRunner().invoke(main, ["upload", *args], env={**s3.env, **(env or {})})


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def remote_bytes(s3, key: str) -> bytes | None:
    from pyarrow import fs

    fsys = s3.filesystem()
    if fsys.get_file_info(key).type == fs.FileType.NotFound:
        return None
    with fsys.open_input_stream(key) as f:
        return f.read()


def test_closed_files_are_hour_files_without_ndjson_and_day_files(tmp_path):
    keys = small_store(tmp_path)
    assert keys == [
        "trades/symbol=BTCUSDT/date=2024-08-07/trades.parquet",
        "trades/symbol=BTCUSDT/date=2024-08-08/hour=00/trades.parquet",
        "trades/symbol=BTCUSDT/date=2024-08-08/hour=01/trades.parquet",
        "trades/symbol=ETHUSDT/date=2024-08-08/hour=00/trades.parquet",
        "trades/symbol=ETHUSDT/date=2024-08-08/hour=01/trades.parquet",
    ]


def test_upload_copies_every_closed_file_and_a_rerun_copies_nothing(s3, tmp_path):
    keys = small_store(tmp_path)
    url = f"s3://{s3.bucket}/roundtrip/a"
    r = run(s3, "--data-dir", str(tmp_path), "--to", url)
    assert r.exit_code == 0, r.output
    assert r.output.startswith("uploaded 5 files (")
    assert r.output.endswith(f"to {url}; 0 already uploaded\n")
    for key in keys:
        local = tmp_path / key
        remote = pl.read_parquet(f"{url}/{key}", storage_options=s3.storage_options)
        assert remote.equals(pl.read_parquet(local))
        assert remote_bytes(s3, f"{s3.bucket}/roundtrip/a/{key}") == local.read_bytes()
    # The open hour (NDJSON) stays local.
    assert (
        remote_bytes(
            s3,
            f"{s3.bucket}/roundtrip/a/trades/symbol=BTCUSDT/date=2024-08-08/hour=02/trades.parquet",
        )
        is None
    )
    ledger = [orjson.loads(line) for line in (tmp_path / LEDGER).read_bytes().splitlines()]
    assert [(e["to"], e["key"]) for e in ledger] == [(url, k) for k in keys]
    for e in ledger:
        local = tmp_path / e["key"]
        assert (e["size"], e["mtime_ns"]) == (local.stat().st_size, local.stat().st_mtime_ns)
        assert e["sha256"] == sha(local.read_bytes())

    again = run(s3, "--data-dir", str(tmp_path), "--to", url)
    assert again.exit_code == 0, again.output
    assert again.output.startswith("uploaded 0 files (0.0 MB")
    assert again.output.endswith("; 5 already uploaded\n")

    # A re-compacted hour (new content, new mtime) goes again; another prefix is another copy.
    hour = tmp_path / keys[1]
    pl.read_parquet(hour).head(10).write_parquet(hour)
    changed = run(s3, "--data-dir", str(tmp_path), "--to", url)
    assert changed.output.startswith("uploaded 1 files (")
    assert remote_bytes(s3, f"{s3.bucket}/roundtrip/a/{keys[1]}") == hour.read_bytes()
    other = run(s3, "--data-dir", str(tmp_path), "--to", f"s3://{s3.bucket}/roundtrip/b/")
    assert other.output.startswith("uploaded 5 files (")


def test_an_object_gone_from_the_destination_is_sent_again(s3, tmp_path):
    """The ledger names s3://bucket/prefix, not the server: the same URL on a fresh server
    (or a bucket emptied since) must not pass for uploaded. Each run lists the destination
    once, and a recorded file whose object is missing, or of another size, goes again."""
    keys = small_store(tmp_path)
    url = f"s3://{s3.bucket}/gone"
    assert run(s3, "--data-dir", str(tmp_path), "--to", url).exit_code == 0
    fsys = s3.filesystem()
    fsys.delete_file(f"{s3.bucket}/gone/{keys[0]}")
    with fsys.open_output_stream(f"{s3.bucket}/gone/{keys[2]}") as f:
        f.write(b"not the file")
    again = run(s3, "--data-dir", str(tmp_path), "--to", url)
    assert again.exit_code == 0, again.output
    assert again.output.startswith("uploaded 2 files (") and again.output.endswith(
        "; 3 already uploaded\n"
    )
    for key in (keys[0], keys[2]):
        assert remote_bytes(s3, f"{s3.bucket}/gone/{key}") == (tmp_path / key).read_bytes()


def test_an_interrupted_upload_resumes_and_overwrites_a_partial_object(s3, tmp_path):
    keys = small_store(tmp_path)
    target = parse_target(f"s3://{s3.bucket}/interrupted", "--to")
    settings = _settings(s3)

    def stop_after_first(stage, done, total):
        raise KeyboardInterrupt  # Ctrl+C right after the first file was recorded

    with pytest.raises(KeyboardInterrupt):
        upload_store(tmp_path, target, settings, progress=stop_after_first)
    assert len((tmp_path / LEDGER).read_bytes().splitlines()) == 1
    # What an interruption mid-copy can leave: a torn object, and a torn ledger line.
    fsys = s3.filesystem()
    with fsys.open_output_stream(target.path(keys[2])) as out:
        out.write((tmp_path / keys[2]).read_bytes()[:100])
    with open(tmp_path / LEDGER, "ab") as f:
        f.write(b'{"to":"s3://tapewa')

    r = upload_store(tmp_path, target, settings)
    assert (r.copied, r.skipped) == (4, 1)
    for key in keys:
        assert remote_bytes(s3, target.path(key)) == (tmp_path / key).read_bytes()
    assert upload_store(tmp_path, target, settings).copied == 0


def _settings(s3) -> S3Settings:
    env = s3.env
    return S3Settings(
        endpoint_url=env["AWS_ENDPOINT_URL"],
        access_key=env["AWS_ACCESS_KEY_ID"],
        secret_key=env["AWS_SECRET_ACCESS_KEY"],
        region=env["AWS_REGION"],
    )


def test_a_killed_upload_process_resumes(s3, tmp_path):
    for i, sym in enumerate(["AAAUSDT", "BBBUSDT", "CCCUSDT"]):
        write_store(tmp_path, sym, tape(T0, 8 * 3600, 2.0, seed=10 + i))
    keys = [p.relative_to(tmp_path).as_posix() for p in closed_files(tmp_path)]
    url = f"s3://{s3.bucket}/killed"
    cmd = [sys.executable, "-m", "recorder.cli", "upload", "--data-dir", str(tmp_path), "--to", url]
    out = subprocess.DEVNULL
    proc = subprocess.Popen(cmd, env={**os.environ, **s3.env}, stdout=out, stderr=out)
    ledger = tmp_path / LEDGER
    deadline = time.monotonic() + 30 * UNIT
    while proc.poll() is None and not (ledger.exists() and ledger.read_bytes().count(b"\n") >= 1):
        assert time.monotonic() < deadline, "no file was uploaded in time"
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10 * UNIT)
    before = ledger.read_bytes().count(b"\n")
    assert 1 <= before <= len(keys)

    r = run(s3, "--data-dir", str(tmp_path), "--to", url)
    assert r.exit_code == 0, r.output
    assert r.output.startswith(f"uploaded {len(keys) - before} files (")
    for key in keys:
        assert remote_bytes(s3, f"{s3.bucket}/killed/{key}") == (tmp_path / key).read_bytes()


def test_delete_local_deletes_only_verified_copies(s3, tmp_path):
    keys = small_store(tmp_path)
    url = f"s3://{s3.bucket}/deleting"
    assert run(s3, "--data-dir", str(tmp_path), "--to", url).exit_code == 0
    # Gone from the bucket behind our back: its ledger line no longer proves a copy, so it
    # is copied again (then deletable).
    s3.filesystem().delete_file(f"{s3.bucket}/deleting/{keys[3]}")
    # Changed since its upload: copied again (then deletable).
    pl.read_parquet(tmp_path / keys[0]).head(5).write_parquet(tmp_path / keys[0])

    r = run(s3, "--data-dir", str(tmp_path), "--to", url, "--delete-local")
    assert r.exit_code == 0, r.output
    assert r.output.startswith("uploaded 2 files (")
    assert r.output.endswith("; 3 already uploaded; deleted 3 local files\n")
    # Deleted: BTCUSDT's day file and hour 00, ETHUSDT's hour 00 (copied again). Kept: each
    # symbol's newest file (the recorder resumes from it) and the open hour.
    left = [k for k in keys if (tmp_path / k).exists()]
    assert left == [keys[2], keys[4]]
    assert (
        layout.hour_dir(tmp_path, "BTCUSDT", T0 // layout.HOUR_MS + 2) / layout.ACTIVE_NDJSON
    ).exists()
    for key in (keys[0], keys[1], keys[3]):
        assert remote_bytes(s3, f"{s3.bucket}/deleting/{key}") is not None


def test_a_copy_changed_on_the_server_keeps_its_file_and_goes_again(s3, tmp_path):
    """The same size, other bytes (found by a hostile review: the size alone let
    --delete-local delete the only good copy): the file stays, and the next run sends it."""
    keys = small_store(tmp_path)
    url = f"s3://{s3.bucket}/tampered"
    assert run(s3, "--data-dir", str(tmp_path), "--to", url).exit_code == 0
    victim = tmp_path / keys[1]
    with s3.filesystem().open_output_stream(f"{s3.bucket}/tampered/{keys[1]}") as f:
        f.write(bytes(victim.stat().st_size))  # zeros, the same size
    r = run(s3, "--data-dir", str(tmp_path), "--to", url, "--delete-local")
    assert r.exit_code == 0, r.output
    assert r.output == (
        f"uploaded 0 files (0.0 MB, 0.0 MB/s) to {url}; 5 already uploaded; deleted 2 local "
        "files; 1 copies had changed on the server since they were verified: their files are "
        "kept and go again on the next run\n"
    )
    assert victim.exists() and not (tmp_path / keys[0]).exists()
    again = run(s3, "--data-dir", str(tmp_path), "--to", url)
    assert again.output.startswith("uploaded 1 files (")
    assert remote_bytes(s3, f"{s3.bucket}/tampered/{keys[1]}") == victim.read_bytes()


def test_the_gap_log_is_copied_sent_again_when_it_grows_and_never_deleted(s3, tmp_path):
    keys = small_store(tmp_path)
    gaps = tmp_path / layout.GAPS
    gaps.parent.mkdir()
    line = {"symbol": "BTCUSDT", "first_id": 7, "last_id": 9, "after_time": T0, "before_time": T0}
    gaps.write_bytes(orjson.dumps(line) + b"\n")
    url = f"s3://{s3.bucket}/gaps"
    r = run(s3, "--data-dir", str(tmp_path), "--to", url)
    assert r.exit_code == 0, r.output
    assert r.output.startswith("uploaded 6 files (")
    assert remote_bytes(s3, f"{s3.bucket}/gaps/{layout.GAPS}") == gaps.read_bytes()
    ledger = [orjson.loads(x) for x in (tmp_path / LEDGER).read_bytes().splitlines()]
    assert [e["key"] for e in ledger] == [*keys, layout.GAPS]
    assert ledger[-1]["sha256"] == sha(gaps.read_bytes())
    assert run(s3, "--data-dir", str(tmp_path), "--to", url).output.endswith(
        "; 6 already uploaded\n"
    )
    # A new gap recorded: the log is sent again, verified.
    with open(gaps, "ab") as f:
        f.write(orjson.dumps({**line, "first_id": 20, "last_id": 20}) + b"\n")
    r = run(s3, "--data-dir", str(tmp_path), "--to", url, "--delete-local")
    assert r.exit_code == 0, r.output
    assert r.output.startswith("uploaded 1 files (")
    assert remote_bytes(s3, f"{s3.bucket}/gaps/{layout.GAPS}") == gaps.read_bytes()
    assert gaps.read_bytes().count(b"\n") == 2  # kept: it is the store's record, not a copy


def test_a_rerun_without_delete_local_keeps_every_file(s3, tmp_path):
    keys = small_store(tmp_path)
    for _ in range(2):
        assert run(s3, "--data-dir", str(tmp_path), "--to", f"s3://{s3.bucket}/keep").exit_code == 0
    assert all((tmp_path / k).exists() for k in keys)


@pytest.mark.parametrize(
    ("args", "env", "line"),
    [
        (
            ["--to", "/tmp/elsewhere"],
            {},
            "Error: '/tmp/elsewhere' is not an s3:// URL; give one like --to s3://my-bucket/tapewatch",
        ),
        (
            ["--to", "s3://B_ad/x"],
            {},
            "Error: 's3://B_ad/x' does not name a valid bucket; give one like --to s3://my-bucket/tapewatch",
        ),
        (
            ["--to", "s3://tapewatch/x", "--endpoint-url", "127.0.0.1:1"],
            {},
            "Error: endpoint '127.0.0.1:1' is not an http(s):// URL; give one like --endpoint-url http://127.0.0.1:8333",
        ),
        (
            ["--to", "s3://no-such-bucket/x"],
            {},
            "Error: bucket 'no-such-bucket' does not exist at {endpoint} (if that is not the S3 "
            "server, check --endpoint-url (AWS_ENDPOINT_URL)); create it first",
        ),
    ],
)
def test_bad_input_is_one_error_line(s3, tmp_path, args, env, line):
    small_store(tmp_path)
    r = run(s3, "--data-dir", str(tmp_path), *args, env=env)
    assert (r.exit_code, r.output) == (1, line.replace("{endpoint}", s3.endpoint_url) + "\n")


def test_no_store_is_one_error_line(s3, tmp_path):
    r = run(s3, "--data-dir", str(tmp_path / "none"), "--to", f"s3://{s3.bucket}/x")
    assert (r.exit_code, r.output) == (
        1,
        f"Error: no store at {tmp_path / 'none'}; pass --data-dir where `recorder run` writes\n",
    )


def test_unreachable_endpoint_and_bad_credentials_are_one_error_line(s3, tmp_path):
    small_store(tmp_path)
    to = ["--data-dir", str(tmp_path), "--to", f"s3://{s3.bucket}/x"]
    r = run(s3, *to, "--endpoint-url", "http://127.0.0.1:1")
    assert r.exit_code == 1
    assert r.output.startswith(
        f"Error: cannot open s3://{s3.bucket}/x: cannot reach http://127.0.0.1:1; "
        "check --endpoint-url (AWS_ENDPOINT_URL) and the network ("
    )
    assert r.output.count("\n") == 1
    r = run(s3, *to, env={"AWS_SECRET_ACCESS_KEY": "wrong"})
    assert r.exit_code == 1
    assert r.output.startswith(
        f"Error: cannot open s3://{s3.bucket}/x: {s3.endpoint_url} refused the credentials; "
        "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY ("
    )
    assert r.output.count("\n") == 1
    assert not (tmp_path / LEDGER).exists()
