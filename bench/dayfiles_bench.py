"""Day files at BTCUSDT scale: file counts and bytes before and after `recorder compact --days`.

Builds (once, cached under --work) a synthetic store of ``--days`` days at ``--rate`` trades a
day as Parquet hour files (the same builder and trades as ``engine_bench.py`` and
``year_bench.py``, in a store of its own: ``WORK/store-RATE``, never compacted), copies it to
``WORK/compacted-RATE``, and on the copy:

- counts Parquet files (hour files, day files), directories under ``trades/`` and bytes;
- counts the trades with DuckDB (``read_parquet`` with Hive partitioning over the hour-file
  glob and the day-file glob): rows, distinct ids, sum of ids;
- runs the real ``recorder compact --days --data-dir COPY`` as its own process (as a user
  would): wall time, CPU time, peak RSS (its VmHWM), seconds per day merged, MB/s of hour files;
- counts files, bytes and trades again. The trade figures must be the same before and after;
- times ``recorder compact`` with nothing to do, before (over the hour files) and after (over
  the day files): every run first reads every Parquet footer in the store, a fixed cost that
  grows with the file count.

The days run from 2025-01-01; days that have not ended yet are not merged.

    python bench/dayfiles_bench.py --days 14 --rate 4000000 --work /tmp/tapewatch-bench/dayfiles
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from _measure import run_measured  # noqa: E402
from engine_bench import build  # noqa: E402

HOUR_GLOB = "trades/*/*/hour=*/trades.parquet"
DAY_GLOB = "trades/*/*/trades.parquet"


def census(store: Path) -> dict[str, int]:
    """Hour files, day files, their bytes, and the directories under ``trades/``."""
    hours = list(store.glob(HOUR_GLOB))
    days = list(store.glob(DAY_GLOB))
    dirs = sum(len(ds) for _, ds, _ in os.walk(store / "trades"))
    return {
        "hour_files": len(hours),
        "day_files": len(days),
        "hour_bytes": sum(p.stat().st_size for p in hours),
        "day_bytes": sum(p.stat().st_size for p in days),
        "dirs": dirs,
    }


def trades(store: Path) -> tuple[int, int, int]:
    """(rows, distinct trade ids, sum of trade ids) of every hour file and day file, by DuckDB
    over the two Hive globs (a day file has no ``hour=`` key, so each kind has its own)."""
    import duckdb

    parts = [
        f"SELECT trade_id FROM read_parquet('{store / glob}', hive_partitioning = true)"
        for glob in (HOUR_GLOB, DAY_GLOB)
        if next(store.glob(glob), None) is not None
    ]
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    q = f"SELECT count(*), count(DISTINCT trade_id), sum(trade_id) FROM ({' UNION ALL '.join(parts)})"
    rows, distinct, total = con.execute(q).fetchone()
    return int(rows), int(distinct), int(total)


def recorder_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "recorder"  # the venv's console script
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "recorder.cli"]


def compact(store: Path, log: Path, days: bool) -> tuple[float, float, float]:
    """(wall s, CPU s, peak RSS MB) of ``recorder compact [--days]`` as its own process."""
    cmd = [*recorder_cmd(), "compact", *(["--days"] if days else []), "--data-dir", str(store)]
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall, rss = run_measured(cmd, log)
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime), rss


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--days", type=int, default=14)
    ap.add_argument("--rate", type=int, default=4_000_000, help="trades per day")
    ap.add_argument("--work", type=Path, default=Path("/tmp/tapewatch-bench/dayfiles"))
    args = ap.parse_args()
    if args.work.resolve() == Path("/tmp/tapewatch-bench").resolve():
        ap.error("--work must not be the year's directory: its store is shared, and compacted here")

    t = time.perf_counter()
    pristine = build(args.work, args.days, args.rate)
    print(
        f"store: {args.days} days x {args.rate:,} trades/day ready in {time.perf_counter() - t:.0f} s"
    )
    store = args.work / f"compacted-{args.rate}"
    shutil.rmtree(store, ignore_errors=True)
    shutil.copytree(pristine, store, ignore=shutil.ignore_patterns(".day-*"))

    before, n_before = census(store), trades(store)
    log = args.work / f"compact-{args.rate}.out"
    check = compact(store, log, days=False)  # nothing to compact: only the footer checks
    wall, cpu, rss = compact(store, log, days=True)
    said = log.read_text().strip().splitlines()[-1]
    merged = int(re.match(r"merged (\d+) days", said).group(1))  # type: ignore[union-attr]
    after, n_after = census(store), trades(store)
    rerun = compact(store, log, days=True)  # nothing left to merge

    mb = 1e6
    files_b = before["hour_files"] + before["day_files"]
    files_a = after["hour_files"] + after["day_files"]
    bytes_b = before["hour_bytes"] + before["day_bytes"]
    bytes_a = after["hour_bytes"] + after["day_bytes"]
    n = n_before[0]
    rows = [
        (
            "Parquet files",
            f"{files_b:,}",
            f"{files_a:,}",
            f"{files_b / max(files_a, 1):.1f}x fewer",
        ),
        (
            "  hour / day files",
            f"{before['hour_files']:,} / {before['day_files']:,}",
            f"{after['hour_files']:,} / {after['day_files']:,}",
            "",
        ),
        ("directories under trades/", f"{before['dirs']:,}", f"{after['dirs']:,}", ""),
        (
            "Parquet MB",
            f"{bytes_b / mb:,.1f}",
            f"{bytes_a / mb:,.1f}",
            f"{bytes_a / bytes_b - 1:+.1%}",
        ),
        ("MB per day", f"{bytes_b / mb / args.days:,.2f}", f"{bytes_a / mb / args.days:,.2f}", ""),
        ("bytes per trade", f"{bytes_b / n:.2f}", f"{bytes_a / max(n_after[0], 1):.2f}", ""),
        (
            "mean file KB",
            f"{bytes_b / 1e3 / max(files_b, 1):,.0f}",
            f"{bytes_a / 1e3 / max(files_a, 1):,.0f}",
            "",
        ),
        ("trades (DuckDB count)", f"{n_before[0]:,}", f"{n_after[0]:,}", ""),
        ("  distinct ids", f"{n_before[1]:,}", f"{n_after[1]:,}", ""),
    ]
    print(f"{'':<26} {'before (hours)':>16} {'after (days)':>16}")
    for label, b, a, note in rows:
        print(f"{label:<26} {b:>16} {a:>16}  {note}".rstrip())
    same = n_before == n_after and n_before[0] == n_before[1]
    print(
        f"trades before and after: {'SAME' if same else 'DIFFERENT'} "
        "(rows, distinct ids and sum of ids, by DuckDB over both globs)"
    )
    print(f"recorder says: {said}")
    print(
        f"recorder compact --days: {wall:.1f} s wall, {cpu:.1f} s CPU, peak RSS {rss:,.0f} MB; "
        f"{wall / max(merged, 1):.2f} s per day merged, {before['hour_bytes'] / mb / wall:.1f} MB/s "
        f"of hour files, {wall / n * 1e9:.0f} ns wall and {cpu / n * 1e9:.0f} ns CPU a trade"
    )
    # Every `recorder compact` reads the footer of every Parquet file in the store first.
    print(
        f"recorder compact with nothing to do: {check[0]:.2f} s wall, {check[1]:.2f} s CPU over "
        f"{files_b:,} hour files; --days again, nothing to merge: {rerun[0]:.2f} s wall, "
        f"{rerun[1]:.2f} s CPU over {files_a:,} files"
    )
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
