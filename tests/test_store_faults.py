"""The store under hostile conditions (issue 9, items 11-15 and 17): stray directories and
non-ASCII symbols, a zip bomb, readers racing compaction, an import into hours the recorder
did not compact, a torn Parquet file, and temporaries left by a SIGKILL. Every check reads
real files back with Polars and DuckDB and compares exact values."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import orjson
import polars as pl
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import stored_rows, view_query
from synth import tape, write_store

from engine.cli import main as engine_main
from engine.scan import open_store
from engine.sqlviews import find_cli, query_frame, sql_file
from recorder.archive import import_archives
from recorder.cli import main as recorder_main
from recorder.compact import compact_hour, compact_store, lost_ids, sweep_temporaries
from recorder.store import init_store, layout, read_missing
from recorder.tracker import Missing

T0 = 1_723_075_200_000  # 2024-08-08T00:00:00Z
CAPTURE_TRADES = 19904


def capture_lines(frames: list[bytes]) -> dict[int, bytes]:
    """The recorder's NDJSON for each hour of a capture: one line per frame, as received."""
    out: dict[int, bytes] = {}
    for i, raw in enumerate(frames):
        hour = layout.hour_of(orjson.loads(raw)["data"]["T"])
        line = b'{"recv_time":%d,"frame":%s}\n' % (1_723_161_000_000_000 + i, raw)
        out[hour] = out.get(hour, b"") + line
    return out


def tape_lines(trades: pl.DataFrame, symbol: str) -> dict[int, bytes]:
    """Stream-frame NDJSON lines (as the recorder writes them) for synthetic trades, by hour."""
    out: dict[int, bytes] = {}
    for r in trades.iter_rows(named=True):
        ms = int(r["trade_time"].timestamp() * 1000)
        data = {
            "e": "trade",
            "E": ms + 1,
            "s": symbol,
            "t": r["trade_id"],
            "p": repr(r["price"]),
            "q": repr(r["qty"]),
            "T": ms,
            "m": r["is_buyer_maker"],
            "M": True,
        }
        frame = {"stream": f"{symbol.lower()}@trade", "data": data}
        line = orjson.dumps({"recv_time": ms * 1000 + 5000, "frame": frame}) + b"\n"
        out[layout.hour_of(ms)] = out.get(layout.hour_of(ms), b"") + line
    return out


def write_lines(root: Path, symbol: str, lines: dict[int, bytes], name: str) -> None:
    """Put NDJSON files into the hours, each renamed into place whole (as a seal would)."""
    init_store(root)
    for hour, data in lines.items():
        d = layout.hour_dir(root, symbol, hour)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".{name}.tmp-{os.getpid()}"
        tmp.write_bytes(data)
        os.replace(tmp, d / name)


def run(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=120
    )


def one_error(r) -> str:
    """The single ``Error:`` line of a failed CliRunner invocation."""
    assert r.exit_code == 1, (r.output, r.exception)
    assert r.stdout == "" and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    return r.stderr.rstrip("\n")


# -- 12: stray directories and non-ASCII symbols -----------------------------------------------


def test_stray_directories_are_skipped_once_and_never_counted(tmp_path, frames_2024):
    write_lines(tmp_path, "BTCUSDT", capture_lines(frames_2024), layout.ACTIVE_NDJSON)
    done = compact_store(tmp_path, 2**62, 0)
    assert [c.rows for c in done.compacted] == [9738, 10166]
    h23 = tmp_path / "trades/symbol=BTCUSDT/date=2024-08-08/hour=23"
    strays = [
        h23.with_name("hour=23.bak"),  # a copied, compacted hour
        h23.parent.with_name("date=garbage") / "hour=23",
        h23.parent.with_name("date=2024-02-30") / "hour=23",
        h23.with_name("hour=05.old"),  # holds NDJSON: the compactor used to die on it
        tmp_path / "trades/symbol=ｅｔｈ/date=2024-08-08/hour=23",
    ]
    for s in strays[:3] + strays[4:]:
        shutil.copytree(h23, s)
    strays[3].mkdir()
    (strays[3] / layout.ACTIVE_NDJSON).write_bytes(next(iter(capture_lines(frames_2024).values())))

    r = run("recorder.cli", "compact", "--data-dir", str(tmp_path))
    assert (r.returncode, r.stdout) == (
        0,
        "compacted 0 hours (0 trades); 0 unparseable lines quarantined\n",
    )
    assert sorted(r.stderr.splitlines()) == sorted(
        f"skipping {s}: not a store partition (symbol=ASCII capitals and digits, "
        "date=YYYY-MM-DD, hour=00..23); move it out of the store"
        for s in [*strays[:4], tmp_path / "trades/symbol=ｅｔｈ"]
    )

    # Every reader sees the 19,904 trades once: Polars over the layout, DuckDB's views, the
    # engine's windows.
    assert stored_rows(tmp_path)["trade_id"].n_unique() == stored_rows(tmp_path).height
    assert stored_rows(tmp_path).height == CAPTURE_TRADES
    assert view_query(tmp_path, "SELECT count(*), count(DISTINCT trade_id) FROM trades") == [
        (CAPTURE_TRADES, CAPTURE_TRADES)
    ]
    assert view_query(tmp_path, "SELECT DISTINCT symbol FROM trades") == [("BTCUSDT",)]
    assert query_frame(tmp_path, "SELECT count(*) AS n FROM trades")["n"].to_list() == [
        CAPTURE_TRADES
    ]
    args = ["windows", "--data-dir", str(tmp_path), "--symbol", "btcusdt", "--every", "1m"]
    r = CliRunner().invoke(engine_main, [*args, "--format", "csv"])
    assert r.exit_code == 0 and "Traceback" not in r.stderr
    w = pl.read_csv(r.stdout.encode())
    assert (w.height, w["trade_count"].sum()) == (12, CAPTURE_TRADES)


@pytest.mark.parametrize("command", ["simulate", "windows", "score", "horizons", "run", "watch"])
def test_every_engine_symbol_is_ascii_letters_and_digits(tmp_path, command):
    for bad in ("ｅｔｈ", "btc/usdt", "eth usdt", "*"):
        r = CliRunner().invoke(engine_main, [command, "--data-dir", str(tmp_path), "--symbol", bad])
        assert one_error(r) == (
            f"Error: symbol {bad!r} is not ASCII letters and digits; give one like --symbol btcusdt"
        )
    assert not (tmp_path / "trades").exists()


# -- 11: a zip bomb: bounded memory whatever the rows in one hour ---------------------------


def archive_zip(path: Path, ids: list[int], t0: int = T0) -> Path:
    rows = "".join(
        f"{i},{60000 + i % 97 / 100:.8f},{i % 13 / 1000 + 0.001:.8f},0.0,{t0 + i % 3_600_000},"
        f"{i % 2 == 0},True\n"
        for i in ids
    )
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(path.name.replace(".zip", ".csv"), rows)
    return path


def test_one_hour_of_many_blocks_is_spilled_and_merged_in_spans(tmp_path):
    n = 20_000
    ids = list(range(1, n + 1))
    random.Random(3).shuffle(ids)  # every block spans the whole hour: all runs overlap
    z = archive_zip(tmp_path / "BTCUSDT-trades-2024-08-08.zip", ids)
    root = tmp_path / "d"
    # ~350 rows a block: 58 blocks of one hour, merged in batches of 256 rows.
    r = import_archives(root, [z], block_bytes=16 << 10)
    assert (r.files, r.rows, r.new_rows, r.hours) == (1, n, n, 1)
    # Never the whole hour in memory: a few row groups of 64 rows per merged run (16 at a
    # time) and one output batch.
    assert 0 < r.peak_rows <= 16 * 64 * 2 + 2 * 256 < n / 5
    (final,) = root.glob("trades/**/trades.parquet")
    meta = pq.read_metadata(final)
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [256] * 78 + [32]
    t = pl.read_parquet(final)
    assert t["trade_id"].to_list() == list(range(1, n + 1))
    assert t["price"].to_list() == [60000 + i % 97 / 100 for i in range(1, n + 1)]
    assert t["trade_time"].dt.epoch("ms").to_list() == [T0 + i for i in range(1, n + 1)]
    assert t["is_buyer_maker"].to_list() == [i % 2 == 0 for i in range(1, n + 1)]
    assert view_query(root, "SELECT count(*), min(trade_id), max(trade_id) FROM trades") == [
        (n, 1, n)
    ]
    assert not list(root.glob(".import-*"))
    # Again, plus 500 new ids and 500 already stored: only the new ones count.
    again = archive_zip(tmp_path / "BTCUSDT-trades-2024-08-09.zip", list(range(n - 499, n + 501)))
    r = import_archives(root, [again], block_bytes=16 << 10)
    assert (r.rows, r.new_rows, r.hours) == (1000, 500, 1)
    assert pl.read_parquet(final)["trade_id"].to_list() == list(range(1, n + 501))
    inode = final.stat().st_ino
    r = import_archives(root, [again], block_bytes=16 << 10)
    assert (r.new_rows, r.hours, final.stat().st_ino) == (0, 0, inode)


# -- 14: importing into hours that still hold the recorder's NDJSON -------------------------


def test_import_over_uncompacted_hours_keeps_the_recorders_copy(tmp_path, frames_2024):
    from test_archive import csv_rows, make_zip, trades_of

    write_lines(tmp_path, "BTCUSDT", capture_lines(frames_2024), layout.ACTIVE_NDJSON)
    trades = trades_of(frames_2024)
    z = make_zip(tmp_path / "BTCUSDT-trades-2024-08-08.zip", csv_rows(trades, "ms"))
    r = import_archives(tmp_path, [z])
    assert (r.rows, r.new_rows) == (CAPTURE_TRADES, 0)
    extra = {**trades[-1], "t": trades[-1]["t"] + 1, "T": trades[-1]["T"] + 5}
    z2 = make_zip(tmp_path / "BTCUSDT-trades-2024-08-09.zip", csv_rows([*trades, extra], "ms"))
    r = import_archives(tmp_path, [z2])
    assert (r.rows, r.new_rows, r.hours) == (CAPTURE_TRADES + 1, 1, 1)
    by_source = "SELECT source, count(*), count(event_time) FROM trades GROUP BY 1 ORDER BY 1"
    want = [("archive", 1, 0), ("ws", CAPTURE_TRADES, CAPTURE_TRADES)]
    assert view_query(tmp_path, by_source) == want
    index = open_store(tmp_path, "BTCUSDT")
    span = (index.first_hour * layout.HOUR_MS, (index.last_hour + 1) * layout.HOUR_MS)
    assert index.load(*span).height == CAPTURE_TRADES + 1
    compact_store(tmp_path, 2**62, 0)
    assert view_query(tmp_path, by_source) == want
    rows = stored_rows(tmp_path)
    assert rows.group_by("source").len().sort("source").rows() == [
        ("archive", 1),
        ("ws", CAPTURE_TRADES),
    ]


# -- 13: readers while hours compact ---------------------------------------------------------


def test_readers_never_undercount_while_hours_compact(tmp_path):
    hours, rounds = 12, 2
    trades = tape(T0, hours * 3600, 0.1, seed=5)
    lines = tape_lines(trades, "SIMUSDT")
    write_lines(tmp_path, "SIMUSDT", lines, "trades-1.ndjson")
    total = trades.height
    stop = threading.Event()
    compactions = []
    counts: dict[str, list[int]] = {"engine": [], "duckdb": []}
    errors: list[BaseException] = []

    def compactor() -> None:
        # Pauses shorter and longer than a query (about 0.06 s), so that compactions land at
        # every point of a read; a reader that always met one would give up (DataError).
        pause = random.Random(13)
        try:
            for rnd in range(rounds):
                for d in layout.hour_dirs(tmp_path, "SIMUSDT"):
                    compactions.append(compact_hour(tmp_path, d).rows)
                    time.sleep(pause.uniform(0.01, 0.12))
                # Late copies of every trade land in the compacted hours; compact again.
                write_lines(tmp_path, "SIMUSDT", lines, f"trades-{rnd + 2}.ndjson")
        except BaseException as e:
            errors.append(e)
        finally:
            stop.set()

    def engine_reader() -> None:
        try:
            while not stop.is_set():
                index = open_store(tmp_path, "SIMUSDT")
                counts["engine"].append(index.load(T0, T0 + hours * 3_600_000).height)
        except BaseException as e:
            errors.append(e)

    def duckdb_reader() -> None:
        try:
            while not stop.is_set():
                f = query_frame(
                    tmp_path, "SELECT count(*) AS n, count(DISTINCT trade_id) AS d FROM trades"
                )
                counts["duckdb"].append(f.row(0)[0] if f.row(0)[0] == f.row(0)[1] else -1)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=f) for f in (compactor, engine_reader, duckdb_reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert len(compactions) == rounds * hours and sum(compactions) == rounds * total
    assert len(counts["engine"]) >= 10 and len(counts["duckdb"]) >= 5
    assert set(counts["engine"]) == {total} and set(counts["duckdb"]) == {total}
    assert view_query(tmp_path, "SELECT count(*) FROM trades") == [(total,)]


# -- 15: a torn Parquet file ---------------------------------------------------------------


def hour_edges(trades: pl.DataFrame, hour: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    h = trades.filter(pl.col("trade_time").dt.epoch("ms") // layout.HOUR_MS == hour)
    return h.head(1), h.tail(1)


def ms(frame: pl.DataFrame) -> int:
    return int(frame["trade_time"].dt.epoch("ms")[0])


def test_torn_parquet_is_named_flagged_and_repaired_by_refetching(tmp_path):
    trades = tape(T0, 3 * 3600, 0.5, seed=8)
    write_store(tmp_path, "SIMUSDT", trades)
    h0 = T0 // layout.HOUR_MS
    torn = layout.hour_dir(tmp_path, "SIMUSDT", h0 + 1) / layout.PARQUET
    data = torn.read_bytes()
    torn.write_bytes(data[: len(data) // 2])

    def engine(*args):
        return CliRunner().invoke(engine_main, list(args))

    r = engine("sql", "SELECT 1 AS one", "--data-dir", str(tmp_path), "--format", "csv")
    assert (r.exit_code, r.stdout) == (0, "one\n1\n")
    msg = one_error(engine("sql", "SELECT count(*) FROM trades", "--data-dir", str(tmp_path)))
    assert msg.startswith("Error: DuckDB: ") and f"{torn}" in msg
    assert msg.endswith("`recorder compact --repair` mends them")
    msg = one_error(engine("windows", "--data-dir", str(tmp_path), "--symbol", "simusdt"))
    assert msg.startswith(f"Error: {torn} is not a readable Parquet file (")
    cli = find_cli()
    assert cli
    shell = subprocess.run(
        [
            cli,
            "-csv",
            "-cmd",
            f"SET VARIABLE data_dir='{tmp_path}'",
            "-cmd",
            f".read {sql_file('views.sql')}",
            "-c",
            "SELECT count(*) AS n FROM gaps",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (shell.returncode, shell.stdout, shell.stderr) == (0, "n\n0\n", "")

    r = CliRunner().invoke(
        recorder_main, ["status", "--data-dir", str(tmp_path), "--format", "json"]
    )
    (row,) = orjson.loads(r.stdout)["symbols"]
    assert [f["path"] for f in row["unreadable_parquet"]] == [str(torn)]
    assert row["last_trade_id"] == trades["trade_id"][-1]
    r = CliRunner().invoke(recorder_main, ["status", "--data-dir", str(tmp_path)])
    assert r.exit_code == 0
    (flag,) = [line for line in r.stdout.splitlines() if line.startswith("unreadable ")]
    assert flag.startswith(f"unreadable {torn}: ")
    assert flag.endswith("run `recorder compact --repair` (with the recorder stopped)")
    r = CliRunner().invoke(recorder_main, ["compact", "--data-dir", str(tmp_path)])
    assert r.exit_code == 1
    assert r.stderr.startswith(f"Error: 1 unreadable Parquet file(s): {torn} (")
    assert r.stderr.count("\n") == 1

    r = CliRunner().invoke(recorder_main, ["compact", "--data-dir", str(tmp_path), "--repair"])
    assert r.exit_code == 0, r.output
    (aside,) = torn.parent.glob("trades.parquet.corrupt-*")
    assert aside.read_bytes() == data[: len(data) // 2] and not torn.exists()
    _, last0 = hour_edges(trades, h0)
    first2, _ = hour_edges(trades, h0 + 2)
    lost = trades.filter(pl.col("trade_time").dt.epoch("ms") // layout.HOUR_MS == h0 + 1)
    want = Missing(
        int(last0["trade_id"][0]) + 1, int(first2["trade_id"][0]) - 1, ms(last0), ms(first2)
    )
    assert (want.first, want.last) == (lost["trade_id"][0], lost["trade_id"][-1])
    assert read_missing(tmp_path, "SIMUSDT") == [want]
    assert orjson.loads((tmp_path / "state/SIMUSDT.json").read_bytes()) == {
        "missing": [want.as_list()]
    }
    assert r.stdout.splitlines()[1] == (
        f"repaired {torn}: moved aside as {aside.name}; 0 trades rebuilt from NDJSON; "
        f"ids to refetch on the next `recorder run`: {want.first}..{want.last}"
    )
    assert view_query(tmp_path, "SELECT count(*) FROM trades") == [(trades.height - lost.height,)]
    r = CliRunner().invoke(
        recorder_main, ["status", "--data-dir", str(tmp_path), "--format", "json"]
    )
    assert orjson.loads(r.stdout)["symbols"][0]["unreadable_parquet"] == []
    # Repairing again changes nothing and lists no id twice.
    compact_store(tmp_path, 2**62, 0, repair=True)
    assert read_missing(tmp_path, "SIMUSDT") == [want]


def test_torn_parquet_with_ndjson_is_rebuilt_and_only_the_rest_refetched(tmp_path):
    trades = tape(T0, 3 * 3600, 0.5, seed=9)
    h0 = T0 // layout.HOUR_MS
    hour1 = trades.filter(pl.col("trade_time").dt.epoch("ms") // layout.HOUR_MS == h0 + 1)
    kept = hour1.tail(hour1.height // 3)  # these were still in NDJSON when the file tore
    write_store(tmp_path, "SIMUSDT", trades)
    write_lines(tmp_path, "SIMUSDT", tape_lines(kept, "SIMUSDT"), "trades-7.ndjson")
    torn = layout.hour_dir(tmp_path, "SIMUSDT", h0 + 1) / layout.PARQUET
    torn.write_bytes(torn.read_bytes()[:100])
    init_store(tmp_path)
    (tmp_path / "state").mkdir(exist_ok=True)
    (tmp_path / "state/SIMUSDT.json").write_bytes(b'{"missing":[[1,2,0,0]],"other":1}')

    done = compact_store(tmp_path, 2**62, 0, repair=True)
    (rep,) = done.repaired
    _, last0 = hour_edges(trades, h0)
    want = Missing(
        int(last0["trade_id"][0]) + 1, int(kept["trade_id"][0]) - 1, ms(last0), ms(kept.head(1))
    )
    assert (rep.rows, rep.refetch, rep.unknown) == (kept.height, [want], False)
    state = orjson.loads((tmp_path / "state/SIMUSDT.json").read_bytes())
    assert state == {"missing": [[1, 2, 0, 0], want.as_list()], "other": 1}
    rebuilt = pl.read_parquet(torn)
    assert rebuilt["trade_id"].to_list() == kept["trade_id"].to_list()
    assert rebuilt["price"].to_list() == kept["price"].to_list()
    assert not list(torn.parent.glob("*.ndjson"))
    assert view_query(tmp_path, "SELECT count(*) FROM trades") == [
        (trades.height - hour1.height + kept.height,)
    ]


def test_lost_ids_between_neighbours():
    held = pl.DataFrame(
        {"trade_id": [15, 16, 20], "trade_time": [150, 160, 200]},  # UTC ms
        schema={"trade_id": pl.Int64, "trade_time": pl.Datetime("ms", "UTC")},
    )
    assert lost_ids((10, 100), held, (25, 250)) == (
        [Missing(11, 14, 100, 150), Missing(17, 19, 160, 200), Missing(21, 24, 200, 250)],
        False,
    )
    assert lost_ids((10, 100), held.clear(), (25, 250)) == ([Missing(11, 24, 100, 250)], False)
    assert lost_ids((10, 100), held.clear(), None) == ([], False)  # the recorder sees it itself
    assert lost_ids(None, held, None) == ([Missing(17, 19, 160, 200)], True)


# -- 17: temporaries of a killed compaction --------------------------------------------------


def test_temporaries_of_dead_processes_are_removed(tmp_path):
    write_store(tmp_path, "SIMUSDT", tape(T0, 2 * 3600, 0.2, seed=4))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    h0, h1 = layout.hour_dirs(tmp_path)
    stale = [
        h0 / f".trades.parquet.tmp-{dead.pid}",
        h1 / f".trades.parquet.tmp-{dead.pid}",
        tmp_path / "state" / f".SIMUSDT.json.tmp-{dead.pid}",
    ]
    (tmp_path / "state").mkdir()
    for p in stale:
        p.write_bytes(b"x" * 1000)
    staging = tmp_path / f".import-{dead.pid}"
    (staging / "spill").mkdir(parents=True)
    (staging / "spill" / "part-1.parquet").write_bytes(b"x")
    live = h1 / f".trades.parquet.tmp-{os.getpid()}"
    live.write_bytes(b"mine")
    (h0 / "trades-1.ndjson").write_bytes(b"")

    r = compact_hour(tmp_path, h0)  # a compaction clears its own hour
    assert r.rows == pl.read_parquet(h0 / layout.PARQUET).height
    assert not stale[0].exists() and stale[1].exists()
    res = CliRunner().invoke(recorder_main, ["compact", "--data-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert sorted(res.stdout.splitlines()[1:]) == sorted(
        f"removed {p}, left by a process that stopped" for p in [stale[1], stale[2], staging]
    )
    assert [p.exists() for p in [*stale, staging, live]] == [False] * 4 + [True]
    assert sweep_temporaries(h1) == []
    assert view_query(tmp_path, "SELECT count(*) FROM trades")[0][0] == sum(
        pl.read_parquet(d / layout.PARQUET).height for d in (h0, h1)
    )


@pytest.mark.parametrize("follow", [False, True], ids=["batch", "follower"])
def test_an_hour_sealed_between_listing_and_read_is_read_again(
    tmp_path, frames_2024, monkeypatch, follow
):
    """The recorder seals an hour's open NDJSON (renames it for compaction) just after a
    reader listed the hour, and a late trade for the hour (a REST fill) starts a new
    ``trades.ndjson``: the reader must not take that new file for the whole hour."""
    import engine.scan as scan
    from engine.scan import TailCache
    from recorder.frames import decode_frame
    from recorder.writer import StoreWriter

    frames = frames_2024[:1001]  # all in hour 23
    init_store(tmp_path)
    w = StoreWriter(tmp_path)
    hours = []

    def put(raws: list[bytes]) -> None:
        for raw in raws:
            f = decode_frame(raw, 1_723_161_600_000_000, frozenset({"BTCUSDT"}))
            hours.append(layout.hour_of(f.trade_time))
            w.append([(f.symbol, hours[-1], f.line)])
        w.sync()

    put(frames[:1000])
    span = (hours[0] * layout.HOUR_MS, (hours[0] + 1) * layout.HOUR_MS)
    index = open_store(tmp_path, "BTCUSDT")
    if follow:
        index.tail = TailCache()
        assert index.load(*span).height == 1000
    listed = scan.list_day

    def list_then_seal(*args, **kwargs):
        files = listed(*args, **kwargs)
        if len(hours) == 1000:
            w.seal("BTCUSDT", hours[0])
            put(frames[1000:])  # the late trade
        return files

    monkeypatch.setattr(scan, "list_day", list_then_seal)
    got = index.load(*span)
    w.close()
    assert got["trade_id"].to_list() == [orjson.loads(f)["data"]["t"] for f in frames]
