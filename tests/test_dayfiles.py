"""Day files (issue 13): closed days merged into one Parquet file per (symbol, day), atomically
and verified; a merge interrupted at every step and run again; readers (engine, DuckDB views,
archive import, status) that see each trade exactly once whatever mix of hour and day files a
day holds. Every check reads real files back with Polars and DuckDB."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import duckdb
import numpy as np
import orjson
import polars as pl
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import view_query
from synth import tape, write_store

from engine.scan import open_store
from engine.sqlviews import connect, query_frame
from engine.windows import build_windows
from recorder.archive import import_archives
from recorder.cli import main as recorder_main
from recorder.compact import merge_days
from recorder.status import store_status
from recorder.store import changing, layout
from recorder.store.days import merge_day
from recorder.store.files import day_file_hours
from recorder.store.schema import PARQUET_SCHEMA

T0 = 1_723_075_200_000  # 2024-08-08T00:00:00Z
D0 = T0 // layout.DAY_MS
START = T0 + 20 * 3_600_000  # the tape: 2024-08-08 20:00 to 2024-08-10 02:00
HOURS = 30
EVERY = [20_000, 780_000]  # 13 min does not divide a day
TOTAL = "SELECT count(*), count(DISTINCT trade_id), sum(trade_id), epoch_ms(min(trade_time)), epoch_ms(max(trade_time)) FROM trades"


@pytest.fixture(scope="module")
def trades() -> pl.DataFrame:
    return tape(START, HOURS * 3600, 0.2, seed=31).sort("trade_id")


@pytest.fixture
def store(tmp_path, trades) -> Path:
    write_store(tmp_path / "store", "SIMUSDT", trades)
    return tmp_path / "store"


def files_of(root: Path) -> tuple[int, int]:
    """(hour files, day files) in the store."""
    hours = len(list(root.glob("trades/*/*/hour=*/trades.parquet")))
    return hours, len(list(root.glob("trades/*/*/trades.parquet")))


def compact_days(root: Path):
    return CliRunner().invoke(
        recorder_main, ["compact", "--days", "--grace", "0", "--data-dir", str(root)]
    )


def sql_windows(root: Path, every: int) -> pl.DataFrame:
    end = START + HOURS * 3_600_000
    q = f"SELECT * FROM tw_windows('simusdt', {every}, {T0}, {end}) ORDER BY window_start"
    return connect(root).sql(q).pl()


def assert_same_sql_windows(a: pl.DataFrame, b: pl.DataFrame) -> None:
    """Two SQL builds: exact where no sum is involved (DuckDB sums in any order)."""
    exact = ["window_start", "trade_count", "open", "high", "low", "close", "parkinson_variance"]
    assert a.select(exact).equals(b.select(exact))
    for c in set(a.columns) - set(exact):
        x, y = a[c].cast(pl.Float64).to_numpy(), b[c].cast(pl.Float64).to_numpy()
        same = (np.isnan(x) & np.isnan(y)) | (abs(x - y) <= 1e-9 * (abs(y) + 1e-3))
        assert same.all(), c


def snapshot(root: Path, every: list[int] = EVERY) -> dict:
    """Everything a reader sees: the engine's windows and trades, the SQL windows, the view."""
    index = open_store(root, "SIMUSDT")
    return {
        "span": (index.first_hour, index.last_hour),
        "windows": build_windows(index, every),
        "trades": index.load(T0, T0 + 3 * layout.DAY_MS),
        "sql": {e: sql_windows(root, e) for e in every},
        "view": view_query(root, TOTAL),
    }


def assert_same_view(a: dict, b: dict) -> None:
    assert a["span"] == b["span"]
    assert a["windows"].keys() == b["windows"].keys()
    for e in a["windows"]:
        assert a["windows"][e].equals(b["windows"][e]), e
        assert_same_sql_windows(a["sql"][e], b["sql"][e])
    assert a["trades"].equals(b["trades"])
    assert a["view"] == b["view"]


def day_file(root: Path, day: int) -> Path:
    return layout.day_dir(root, "SIMUSDT", day) / layout.PARQUET


def test_merge_keeps_every_trade_column_and_order_and_every_window(store, trades):
    before = snapshot(store)
    assert before["view"][0][:2] == (trades.height, trades.height)
    assert files_of(store) == (HOURS, 0)

    r = compact_days(store)
    assert (r.exit_code, r.stdout) == (
        0,
        "compacted 0 hours (0 trades); 0 unparseable lines quarantined\n"
        f"merged 3 days into day files ({trades.height} trades, {HOURS} hour files removed)\n",
    )
    assert files_of(store) == (0, 3)
    assert not list(store.glob("trades/*/*/hour=*"))  # the hour directories went too
    assert_same_view(before, snapshot(store))

    # Read back by Polars: each day file is its day's trades, same columns, sorted by id.
    for day in (D0, D0 + 1, D0 + 2):
        back = pl.read_parquet(day_file(store, day))
        ms = pl.col("trade_time").dt.epoch("ms")
        want = trades.filter(ms // layout.DAY_MS == day)
        assert back.schema == pl.Schema(PARQUET_SCHEMA)
        assert back.equals(want)
        assert day_file_hours(day_file(store, day)) == sorted(
            set((want["trade_time"].dt.epoch("ms") // layout.HOUR_MS).to_list())
        )
    # ... and by DuckDB, as any Hive reader would glob the day files.
    got = duckdb.sql(
        f"SELECT symbol, date, count(*), min(trade_id), max(trade_id), sum(qty) "
        f"FROM read_parquet('{store}/trades/*/*/trades.parquet', hive_partitioning = true) "
        "GROUP BY ALL ORDER BY date"
    ).fetchall()
    per_day = (
        trades.group_by((pl.col("trade_time").dt.date()).alias("date"))
        .agg(
            pl.len(),
            pl.col("trade_id").min().alias("lo"),
            pl.col("trade_id").max().alias("hi"),
            pl.col("qty").sum(),
        )
        .sort("date")
    )
    assert [g[:5] for g in got] == [("SIMUSDT", *row[:4]) for row in per_day.rows()]
    assert [g[5] for g in got] == pytest.approx(per_day["qty"].to_list(), rel=1e-12)

    r = compact_days(store)  # idempotent
    assert r.stdout.endswith("merged 0 days into day files (0 trades, 0 hour files removed)\n")
    assert files_of(store) == (0, 3)


def test_only_closed_days_without_ndjson_are_merged(store, trades):
    end = (D0 + 1) * layout.DAY_MS
    assert merge_days(store, end + 999, 1000) == []  # the first day ended less than 1 s ago
    late = layout.hour_dir(store, "SIMUSDT", (D0 + 1) * 24 + 5) / "trades-1.ndjson"
    late.write_bytes(b"")  # the middle day still has NDJSON; the last one has not ended
    merged = merge_days(store, end + layout.DAY_MS + 1000, 1000)
    assert [(m.day, m.hour_files, m.rows) for m in merged] == [
        (D0, 4, pl.read_parquet(day_file(store, D0)).height)
    ]
    assert files_of(store) == (HOURS - 4, 1)


# -- a crash at each step, then the same command again -----------------------------------------


class Crash(Exception):
    pass


def crash_at(monkeypatch, step: str, after: int = 0) -> None:
    """Make the merge fail at ``step``: writing a row group, reading it back, renaming the day
    file in, or deleting the hour files (after ``after`` of them went)."""
    if step == "write":
        real_write = pq.ParquetWriter.write_table
        calls = iter(range(10**6))

        def write_table(self, *a, **k):
            if next(calls) == after:
                raise Crash("disk full")
            return real_write(self, *a, **k)

        monkeypatch.setattr(pq.ParquetWriter, "write_table", write_table)
    elif step == "verify":
        real_read = pq.ParquetFile.read_row_group

        def read_row_group(self, i, *a, **k):
            table = real_read(self, i, *a, **k)
            return table.slice(1) if i == after else table  # a row lost on the way back

        monkeypatch.setattr(pq.ParquetFile, "read_row_group", read_row_group)
    elif step == "rename":
        real_replace = os.replace

        def replace(src, dst, *a, **k):
            if Path(dst).name == layout.PARQUET and Path(dst).parent.name.startswith("date="):
                raise Crash("power cut")
            return real_replace(src, dst, *a, **k)

        monkeypatch.setattr(os, "replace", replace)
    else:
        real_unlink = Path.unlink
        deleted = iter(range(10**6))

        def unlink(self, *a, **k):
            if self.parent.name.startswith("hour=") and next(deleted) == after:
                raise Crash("power cut")
            return real_unlink(self, *a, **k)

        monkeypatch.setattr(Path, "unlink", unlink)


@pytest.mark.parametrize(
    ("step", "after", "left"),
    [
        ("write", 3, (24, 0)),  # the day's 24 hours as they were, no temporary
        ("verify", 5, (24, 0)),
        ("rename", 0, (24, 0)),
        ("delete", 0, (24, 1)),  # the day file in, every hour file still there
        ("delete", 17, (7, 1)),  # the day file and the 7 hours not deleted yet
    ],
)
def test_a_merge_interrupted_at_any_step_loses_and_duplicates_nothing(
    store, trades, monkeypatch, step, after, left
):
    before = snapshot(store, [780_000])
    with monkeypatch.context() as m:
        crash_at(m, step, after)
        with pytest.raises(Exception, match=r"disk full|power cut|did not read back"):
            merge_day(store, "SIMUSDT", D0 + 1)
    day_dir = layout.day_dir(store, "SIMUSDT", D0 + 1)
    hours = len(list(day_dir.glob("hour=*/trades.parquet")))
    assert (hours, int(day_file(store, D0 + 1).exists())) == left
    assert [p.name for p in day_dir.iterdir() if p.name.startswith(".")] == []
    # Every reader sees each trade once, whatever the day holds now.
    assert_same_view(before, snapshot(store, [780_000]))
    status = store_status(store)["symbols"][0]
    assert (status["hours_parquet"], status["day_files"]) == (HOURS - 24 + left[0], left[1])

    r = compact_days(store)  # the same command again finishes the job
    assert r.exit_code == 0, r.output
    assert files_of(store) == (0, 3)
    for day in (D0, D0 + 1, D0 + 2):  # the store a merge without a crash leaves
        ms = pl.col("trade_time").dt.epoch("ms")
        want = trades.filter(ms // layout.DAY_MS == day)
        assert pl.read_parquet(day_file(store, day)).equals(want)
    assert view_query(store, TOTAL) == before["view"]


KILLED_MERGE = """
import os, signal, sys
from pathlib import Path
import pyarrow.parquet as pq
from recorder.store.days import merge_day

step, root = sys.argv[1], Path(sys.argv[2])
if step == "write":
    real = pq.ParquetWriter.write_table
    calls = []
    def write_table(self, *a, **k):
        calls.append(1)
        if len(calls) == 4:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, *a, **k)
    pq.ParquetWriter.write_table = write_table
else:
    real = Path.unlink
    deleted = []
    def unlink(self, *a, **k):
        if self.parent.name.startswith("hour="):
            deleted.append(self)
            if len(deleted) == 3:
                os.kill(os.getpid(), signal.SIGKILL)
        return real(self, *a, **k)
    Path.unlink = unlink
merge_day(root, "SIMUSDT", int(sys.argv[3]))
"""


@pytest.mark.parametrize(("step", "left"), [("write", (24, 0)), ("delete", (22, 1))])
def test_a_merge_killed_midway_is_finished_by_running_it_again(store, step, left):
    before = view_query(store, TOTAL)
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_MERGE, step, str(store), str(D0 + 1)],
        stderr=subprocess.PIPE,
    )
    _, err = child.communicate(timeout=60)
    assert child.returncode == -9, err
    day_dir = layout.day_dir(store, "SIMUSDT", D0 + 1)
    hours = len(list(day_dir.glob("hour=*/trades.parquet")))
    assert (hours, int(day_file(store, D0 + 1).exists())) == left
    temporaries = [p.name for p in day_dir.iterdir() if p.name.startswith(".")]
    assert temporaries == ([f".trades.parquet.tmp-{child.pid}"] if step == "write" else [])
    assert view_query(store, TOTAL) == before

    r = compact_days(store)
    assert r.exit_code == 0, r.output
    if step == "write":  # the killed process's half-written file is swept by its dead pid
        assert f"removed {day_dir / temporaries[0]}, left by a process that stopped" in r.stdout
    assert files_of(store) == (0, 3)
    assert [p.name for p in day_dir.iterdir()] == [layout.PARQUET]
    assert view_query(store, TOTAL) == before


# -- readers while days merge ------------------------------------------------------------------


def late_copies(root: Path, trades: pl.DataFrame) -> None:
    """Copies of every trade land as hour files beside the day files, each renamed in inside
    the generation bracket, as an import does (``HourSpool.commit``)."""
    hours = trades.with_columns(_h=pl.col("trade_time").dt.epoch("ms") // layout.HOUR_MS)
    for (hour,), part in hours.group_by("_h"):
        d = layout.hour_dir(root, "SIMUSDT", int(hour))
        d.mkdir(parents=True, exist_ok=True)
        part.drop("_h").sort("trade_id").write_parquet(d / ".late.tmp")
        with changing(root):
            os.replace(d / ".late.tmp", d / layout.PARQUET)


def test_readers_never_miss_or_double_count_while_days_merge(store, trades):
    total = trades.height
    stop = threading.Event()
    errors: list[BaseException] = []
    counts: dict[str, list[int]] = {"engine": [], "duckdb": []}
    merges = []

    def merger() -> None:
        pause = random.Random(7)
        try:
            for _ in range(2):
                for day in (D0, D0 + 1, D0 + 2):
                    merges.append(merge_day(store, "SIMUSDT", day).hour_files)
                    time.sleep(pause.uniform(0.01, 0.1))
                late_copies(store, trades)
        except BaseException as e:
            errors.append(e)
        finally:
            stop.set()

    def engine_reader() -> None:
        try:
            while not stop.is_set():
                t = open_store(store, "SIMUSDT").load(T0, T0 + 3 * layout.DAY_MS)
                counts["engine"].append(t.height if t["trade_id"].is_unique().all() else -1)
        except BaseException as e:
            errors.append(e)

    def duckdb_reader() -> None:
        try:
            while not stop.is_set():
                f = query_frame(store, "SELECT count(*), count(DISTINCT trade_id) FROM trades")
                counts["duckdb"].append(f.row(0)[0] if f.row(0)[0] == f.row(0)[1] else -1)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=f) for f in (merger, engine_reader, duckdb_reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert merges == [4, 24, 2] * 2
    assert len(counts["engine"]) >= 5 and len(counts["duckdb"]) >= 3
    assert set(counts["engine"]) == {total} and set(counts["duckdb"]) == {total}
    assert files_of(store) == (HOURS, 3)  # the last round's late copies, not merged yet


# -- status, archive import, torn day files ----------------------------------------------------


def test_status_shows_hour_files_and_day_files(store, trades):
    merge_day(store, "SIMUSDT", D0 + 1)
    row = store_status(store)["symbols"][0]
    assert (row["hours_parquet"], row["hours_ndjson"]) == (6, 0)
    assert (row["day_files"], row["hours_in_day_files"]) == (1, 24)
    merge_day(store, "SIMUSDT", D0 + 2)  # the last trade is in a day file now
    row = store_status(store)["symbols"][0]
    assert (row["hours_parquet"], row["day_files"], row["hours_in_day_files"]) == (4, 2, 26)
    assert row["last_trade_id"] == trades["trade_id"].max()
    want = trades["trade_time"].max().strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"  # type: ignore[union-attr]
    assert row["last_trade_time"] == want
    r = CliRunner().invoke(recorder_main, ["status", "--data-dir", str(store)])
    lines = r.output.splitlines()
    assert lines[1].split() == [
        "symbol",
        "last_trade_id",
        "last_trade_time",
        "behind_seconds",
        "hours_parquet",
        "hours_ndjson",
        "day_files",
        "hours_in_day_files",
        "gaps",
        "gap_trades",
    ]
    assert lines[2].split()[4:] == ["4", "0", "2", "26", "0", "0"]


def archive_of(path: Path, rows: pl.DataFrame) -> Path:
    csv = rows.select(
        "trade_id",
        pl.col("price").cast(pl.String),
        pl.col("qty").cast(pl.String),
        pl.lit("0.0").alias("quote_qty"),
        pl.col("trade_time").dt.epoch("ms"),
        pl.col("is_buyer_maker").cast(pl.String).str.to_titlecase(),
        pl.lit("True").alias("is_best_match"),
    ).write_csv(include_header=False)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(path.name.replace(".zip", ".csv"), csv)
    return path


def test_import_into_a_merged_day_is_folded_into_its_day_file(tmp_path, trades):
    # The store misses every 10th trade of the middle day; the archive holds the whole day.
    ms = pl.col("trade_time").dt.epoch("ms")
    middle = trades.filter(ms // layout.DAY_MS == D0 + 1)
    missing = middle.filter(pl.col("trade_id") % 10 == 0)
    write_store(tmp_path, "SIMUSDT", trades.join(missing, on="trade_id", how="anti"))
    merge_days(tmp_path, 2**62, 0)
    zip_path = archive_of(tmp_path / "SIMUSDT-trades-2024-08-09.zip", middle)

    r = import_archives(tmp_path, [zip_path])
    assert (r.rows, r.new_rows, r.hours, r.days_merged) == (
        middle.height,
        missing.height,
        24,
        1,
    )
    assert files_of(tmp_path) == (0, 3)
    back = pl.read_parquet(day_file(tmp_path, D0 + 1))
    assert back["trade_id"].to_list() == middle["trade_id"].to_list()
    # The stored copies stay as they were; the new ones are the archive's.
    assert back.filter(pl.col("trade_id") % 10 != 0).equals(
        middle.filter(pl.col("trade_id") % 10 != 0)
    )
    assert set(back.filter(pl.col("trade_id") % 10 == 0)["source"]) == {"archive"}
    assert view_query(tmp_path, "SELECT count(*), count(DISTINCT trade_id) FROM trades") == [
        (trades.height, trades.height)
    ]
    again = import_archives(tmp_path, [zip_path])  # nothing new: nothing written
    assert (again.new_rows, again.hours, again.days_merged) == (0, 0, 0)
    assert files_of(tmp_path) == (0, 3)


def test_a_torn_day_file_is_named_and_blocks_only_its_day(store):
    merge_day(store, "SIMUSDT", D0)
    torn = day_file(store, D0)
    torn.write_bytes(torn.read_bytes()[:-100])
    row = store_status(store)["symbols"][0]
    assert [u["path"] for u in row["unreadable_parquet"]] == [str(torn)]
    r = compact_days(store)
    assert r.exit_code == 1
    assert r.stderr.startswith(f"Error: 1 unreadable Parquet file(s): {torn} (")
    assert r.stderr.endswith(
        "run `recorder compact --repair` (stop the recorder first); a torn day file cannot be "
        "rebuilt: move it aside and import its day again\n"
    )
    assert files_of(store) == (0, 3)  # the other days were merged all the same


def test_day_file_metadata_is_plain_json(store):
    merge_day(store, "SIMUSDT", D0 + 2)
    meta = pq.read_metadata(day_file(store, D0 + 2)).metadata
    assert orjson.loads(meta[b"tapewatch.hours"]) == [0, 1]


def test_a_day_whose_ids_do_not_grow_with_its_hours_is_sorted_as_a_whole(tmp_path, trades):
    # Two hours whose ids interleave (as no exchange writes them, but a store may hold them),
    # one trade stored in both: the day file is still sorted and unique by id.
    ms = pl.col("trade_time").dt.epoch("ms")
    day = trades.filter(ms // layout.DAY_MS == D0 + 2)
    odd = day.with_columns(trade_id=pl.col("trade_id") * 2 - (ms // layout.HOUR_MS % 2) * 3)
    write_store(tmp_path, "SIMUSDT", odd)
    twice = odd.filter(ms // layout.HOUR_MS % 2 == 1).head(1)
    h0 = layout.hour_dir(tmp_path, "SIMUSDT", (D0 + 2) * 24) / layout.PARQUET
    pl.concat([pl.read_parquet(h0), twice]).sort("trade_id").write_parquet(h0)
    merged = merge_day(tmp_path, "SIMUSDT", D0 + 2)
    back = pl.read_parquet(merged.path)
    assert back.equals(odd.sort("trade_id")) and merged.rows == odd.height
