"""The engine on a copy of the store in S3-compatible object storage (SeaweedFS on 127.0.0.1):
`recorder upload`, then `engine run --data-dir s3://bucket/prefix` gives the results of the
local store; the remote index reads the frames the local one reads; a copy that is not there,
an unreachable endpoint, and the commands that need a local store are one `Error:` line."""

from __future__ import annotations

from pathlib import Path

import orjson
import polars as pl
import pytest
from click.testing import CliRunner
from s3server import seaweedfs
from synth import tape, write_store

from engine.cli import main as engine_main
from engine.remote import RemoteStoreIndex
from engine.scan import StoreIndex, open_store
from recorder.cli import main as recorder_main
from recorder.store import layout
from recorder.store.days import merge_day

T0 = 1_723_075_200_000  # 2024-08-08 00:00 UTC
DAY0 = T0 // layout.DAY_MS
SMALL = ["--buffer", "60", "--retrain-every", "60", "--trees", "10", "--reps", "20", "--jobs", "1"]
GAP = {
    "symbol": "SIMUSDT",
    "first_id": 10**9,
    "last_id": 10**9,
    "after_time": T0 + 1_800_000,
    "before_time": T0 + 1_850_000,
    "reason": "REST unavailable",
    "recorded_at": 0,
}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture(scope="module")
def stores(s3, tmp_path_factory) -> tuple[Path, str]:
    """SIMUSDT from 2024-08-07 21:00 to 2024-08-08 03:00 UTC, with a recorded gap, and its copy
    at s3://tapewatch/copy. 2024-08-07 is a day file; 2024-08-08 was uploaded as hour files,
    then merged into a day file locally and uploaded again, so the copy holds that day's day
    file and its hour files beside it (an upload never deletes objects). An ETHUSDT day file."""
    root = tmp_path_factory.mktemp("local")
    write_store(root, "SIMUSDT", tape(T0 - 3 * layout.HOUR_MS, 6 * 3600, 1.5, seed=21))
    write_store(root, "ETHUSDT", tape(T0, 3600, 0.5, seed=22))
    (root / "gaps").mkdir()
    (root / layout.GAPS).write_bytes(orjson.dumps(GAP) + b"\n")
    merge_day(root, "SIMUSDT", DAY0 - 1)
    url = f"s3://{s3.bucket}/copy"
    upload(s3, root, url)
    merge_day(root, "SIMUSDT", DAY0)
    upload(s3, root, url)
    return root, url


def upload(s3, root: Path, url: str) -> None:
    r = CliRunner().invoke(
        recorder_main, ["upload", "--data-dir", str(root), "--to", url], env=s3.env
    )
    assert r.exit_code == 0, r.output


def engine(s3, *args: str, env: dict | None = None):
    return CliRunner().invoke(engine_main, list(args), env={**s3.env, **(env or {})})


def test_the_copy_holds_hour_files_beside_a_day_file_and_the_gap_log(s3, stores):
    from pyarrow import fs

    assert stores[1] == f"s3://{s3.bucket}/copy"
    listed = s3.filesystem().get_file_info(fs.FileSelector(f"{s3.bucket}/copy", recursive=True))
    keys = sorted(
        i.path.removeprefix(f"{s3.bucket}/copy/") for i in listed if i.type == fs.FileType.File
    )
    assert keys == [
        "gaps/gaps.ndjson",
        "trades/symbol=ETHUSDT/date=2024-08-08/hour=00/trades.parquet",
        "trades/symbol=SIMUSDT/date=2024-08-07/trades.parquet",
        "trades/symbol=SIMUSDT/date=2024-08-08/hour=00/trades.parquet",
        "trades/symbol=SIMUSDT/date=2024-08-08/hour=01/trades.parquet",
        "trades/symbol=SIMUSDT/date=2024-08-08/hour=02/trades.parquet",
        "trades/symbol=SIMUSDT/date=2024-08-08/trades.parquet",
    ]


def test_the_remote_index_reads_the_frames_of_the_local_one(s3, stores, monkeypatch):
    root, url = stores
    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    local, remote = open_store(root, "simusdt"), open_store(url, "simusdt")
    assert isinstance(local, StoreIndex) and isinstance(remote, RemoteStoreIndex)
    assert (remote.first_hour, remote.last_hour) == (local.first_hour, local.last_hour)
    assert remote.first_hour == T0 // layout.HOUR_MS - 3
    assert (
        remote.recorded_gaps() == local.recorded_gaps() == [(GAP["after_time"], GAP["before_time"])]
    )
    h = layout.HOUR_MS
    spans = [
        (T0 - layout.DAY_MS, T0),  # a whole day file
        (T0, T0 + layout.DAY_MS),  # a day file with hour files beside it (remote only)
        (T0 - 2 * h - 123, T0 + h + 456),  # parts of both days
        (T0 + 90 * 60_000, T0 + 100 * 60_000),  # ten minutes inside one hour
        (T0 + 5 * h, T0 + 6 * h),  # no trades
    ]
    for lo, hi in spans:
        want = local.load(lo, hi)
        got = remote.load(lo, hi)
        assert got.schema == want.schema
        assert got.equals(want), (lo, hi)
    assert (
        remote.load(T0, T0 + layout.DAY_MS).height == local.load(T0, T0 + layout.DAY_MS).height > 0
    )


def test_engine_run_on_the_copy_gives_the_local_results(s3, stores, tmp_path, monkeypatch):
    root, url = stores
    args = [
        "run",
        "--symbol",
        "simusdt",
        "--every",
        "30s",
        "--horizons",
        "1m,5m",
        "--no-plots",
        *SMALL,
    ]
    r = engine(s3, *args, "--data-dir", str(root), "--format", "json")
    assert r.exit_code == 0, r.output
    monkeypatch.chdir(tmp_path)
    r = engine(s3, *args, "--data-dir", url, "--format", "json")
    assert r.exit_code == 0, r.output
    assert r.stderr.endswith("results in results/SIMUSDT-30s\n")
    here, there = tmp_path / "results" / "SIMUSDT-30s", root / "results" / "SIMUSDT-30s"
    for name in ("windows.parquet", "scores.parquet"):
        assert pl.read_parquet(here / name).equals(pl.read_parquet(there / name)), name
    windows = pl.read_parquet(here / "windows.parquet")
    assert windows.height == 6 * 120
    flagged = windows.filter("gap")["window_start"].dt.epoch("ms").to_list()
    assert flagged == [T0 + 1_800_000, T0 + 1_830_000]  # the recorded gap, read from the copy
    ours, theirs = (orjson.loads((d / "horizons.json").read_bytes()) for d in (here, there))
    assert ours["rows"] and ours["rows"] == theirs["rows"]
    for key in ("parameters", "flag_rate", "scored_windows", "comparisons"):
        assert ours[key] == theirs[key]
    assert ours["evaluate"]["rows"] == theirs["evaluate"]["rows"]
    assert "detection" not in ours or ours["detection"] is None
    # The ledger sits beside the results, in the current folder.
    assert (tmp_path / "results" / "ledger.ndjson").read_bytes().count(b"\n") == len(
        ours["evaluate"]["rows"]
    )


@pytest.mark.parametrize(
    ("url", "symbol", "env", "line"),
    [
        (
            "s3://no-such-bucket/copy",
            "simusdt",
            {},
            "Error: no store at s3://no-such-bucket/copy: bucket 'no-such-bucket' does not "
            "exist at {endpoint} (if that is not the S3 server, check AWS_ENDPOINT_URL); "
            "pass --data-dir where `recorder upload --to` copied the store",
        ),
        (
            "s3://tapewatch/nothing-here",
            "simusdt",
            {},
            "Error: no store at s3://tapewatch/nothing-here; pass --data-dir where "
            "`recorder upload --to` copied the store",
        ),
        (
            "s3://tapewatch/copy",
            "btcusdt",
            {},
            "Error: unknown symbol BTCUSDT: the store at s3://tapewatch/copy has ETHUSDT, SIMUSDT",
        ),
        (
            "s3://B_ad/copy",
            "simusdt",
            {},
            "Error: 's3://B_ad/copy' does not name a valid bucket; give one like "
            "--data-dir s3://my-bucket/tapewatch",
        ),
        (
            "s3://tapewatch/copy",
            "simusdt",
            {"AWS_ENDPOINT_URL": "127.0.0.1:1"},
            "Error: endpoint '127.0.0.1:1' is not an http(s):// URL; give one like "
            "AWS_ENDPOINT_URL=http://127.0.0.1:8333",
        ),
        (
            "gs://tapewatch/copy",
            "simusdt",
            {},
            "Error: 'gs://tapewatch/copy' is not an s3:// URL; give one like "
            "--data-dir s3://my-bucket/tapewatch",
        ),
    ],
)
def test_a_copy_that_is_not_there_is_one_error_line(s3, stores, url, symbol, env, line):
    r = engine(s3, "windows", "--data-dir", url, "--symbol", symbol, "--every", "30s", env=env)
    assert (r.exit_code, r.output) == (1, line.replace("{endpoint}", s3.endpoint_url) + "\n")


def test_an_unreachable_endpoint_is_one_error_line(s3, stores):
    r = engine(
        s3, "run", "--data-dir", stores[1], "--symbol", "simusdt",
        env={"AWS_ENDPOINT_URL": "http://127.0.0.1:1"},
    )  # fmt: skip
    assert r.exit_code == 1
    assert r.output.startswith(
        "Error: cannot open s3://tapewatch/copy: cannot reach http://127.0.0.1:1; "
        "check AWS_ENDPOINT_URL and the network ("
    )
    assert r.output.count("\n") == 1


def test_sql_and_watch_refuse_a_copy_and_say_why(s3, stores):
    url = stores[1]
    r = engine(s3, "sql", "SELECT 1", "--data-dir", url)
    assert (r.exit_code, r.output) == (
        1,
        f"Error: --data-dir {url} is a copy in object storage: engine sql needs a local store "
        "(DuckDB reads s3:// only through its httpfs extension, which it downloads at run time; "
        'see "DuckDB and object storage" in docs/scaling.md); query a local copy, or run '
        "engine windows, score or run on the s3:// store\n",
    )
    r = engine(s3, "watch", "--data-dir", url, "--symbol", "simusdt")
    assert (r.exit_code, r.output) == (
        1,
        f"Error: --data-dir {url} is a copy in object storage: engine watch follows the store "
        "the recorder is writing, on local disk; give the recorder's --data-dir\n",
    )


@pytest.mark.parametrize("key", ["date=2024-08-08/hour=00", "date=2024-08-08"])
def test_an_object_that_is_not_parquet_is_one_error_line(s3, stores, key):
    path = f"{s3.bucket}/broken-{key[-2:]}/trades/symbol=SIMUSDT/{key}/trades.parquet"
    with s3.filesystem().open_output_stream(path) as out:
        out.write(b"not parquet")
    url = f"s3://{s3.bucket}/broken-{key[-2:]}"
    r = engine(s3, "windows", "--data-dir", url, "--symbol", "simusdt", "--every", "30s")
    assert r.exit_code == 1
    assert r.output.startswith(f"Error: s3://{path} is not a readable Parquet file (")
    assert r.output.endswith(
        "); replace it with the file at the same path in the store it was copied from\n"
    )
    assert r.output.count("\n") == 1
