"""A year of BTCUSDT-scale trades rerun end to end: `engine run`, and each step alone.

Builds (once, cached under --work) a synthetic store of ``--days`` days at ``--rate`` trades a
day (the same store as ``engine_bench.py``: 365 days x 4 M trades is ~1.46 billion trades,
~12 GB of Parquet hour files), then, in one run and on the same files:

- the floor: a bare DuckDB scan summing the five columns the windows read;
- ``engine run`` with the defaults (20 s windows, walk-forward model, horizons with 1,000
  bootstrap replicates, the verdict, plots) as its own process, ``--runs`` times (default 3:
  runs on this machine vary by up to ~8 %), each run's wall time and peak RSS of the whole
  process tree, and the median;
- each step alone, in one process, timed in turn: windows, walk-forward, horizons, evaluate.

    python bench/year_bench.py --days 365 --work /tmp/tapewatch-bench
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from _measure import run_measured  # noqa: E402
from engine_bench import T0, build, store_dir  # noqa: E402

COLUMNS = "trade_id, epoch_ms(trade_time), price, qty, is_buyer_maker::INT"


def end_iso(days: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime((T0 + days * 86_400_000) / 1000))


def bare_scan(store: Path, days: int) -> float:
    """Seconds for DuckDB to read and sum the windows' five columns of every hour file."""
    import duckdb

    from recorder.store.layout import hour_dir

    first = T0 // 3_600_000
    files = [
        str(hour_dir(store, "SIMUSDT", h) / "trades.parquet")
        for h in range(first, first + 24 * days)
    ]
    t = time.perf_counter()
    sums = ", ".join(f"sum({c})" for c in COLUMNS.split(", "))
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    con.execute(f"SELECT {sums} FROM read_parquet(?)", [files]).fetchall()
    return time.perf_counter() - t


def steps(store: Path, days: int) -> None:
    """Each step of `engine run` alone, in this process (``--steps``): one line per step."""
    from engine import config
    from engine.evaluate import evaluate_scored
    from engine.model import ModelParams
    from engine.pipeline import Settings, horizon_report, load_windows, score_windows

    s = Settings(
        store,
        "SIMUSDT",
        start_ms=T0,
        end_ms=T0 + days * 86_400_000,
        model=ModelParams(backend=config.BACKEND),
    )
    t = time.perf_counter()
    windows = load_windows(s)
    print(f"step windows {time.perf_counter() - t:.2f} s ({windows.height:,} windows)", flush=True)
    t = time.perf_counter()
    scored = score_windows(s, windows)
    print(f"step walk-forward {time.perf_counter() - t:.2f} s", flush=True)
    t = time.perf_counter()
    horizon_report(s, scored)
    print(f"step horizons {time.perf_counter() - t:.2f} s", flush=True)
    t = time.perf_counter()
    evaluate_scored(s, scored, ledger=False)
    print(f"step evaluate {time.perf_counter() - t:.2f} s", flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"steps peak RSS (this process) {peak:,.0f} MB", flush=True)


def _engine_run(store: Path, days: int) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB, the process tree) of one `engine run` with the defaults
    over ``days`` days, as its own process, into a results folder thrown away after."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "engine.cli",
            "run",
            "--data-dir",
            str(store),
            "--symbol",
            "simusdt",
            "--start",
            end_iso(0),
            "--end",
            end_iso(days),
            "--results",
            str(Path(tmp) / "run"),
        ]
        return run_measured(cmd, tree=True)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--rate", type=int, default=4_000_000, help="trades per day")
    ap.add_argument("--work", type=Path, default=Path("/tmp/tapewatch-bench"))
    ap.add_argument(
        "--runs", type=int, default=3, help="engine runs (the median is reported; default 3)"
    )
    ap.add_argument("--steps", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    store = store_dir(args.work, args.rate)
    if args.steps:
        steps(store, args.days)
        return
    t = time.perf_counter()
    build(args.work, args.days, args.rate)
    print(
        f"store: {args.days} days x {args.rate:,} trades/day ready in {time.perf_counter() - t:.0f} s"
    )
    print(f"floor: bare DuckDB scan {bare_scan(store, args.days):.2f} s")
    walls = []
    for i in range(args.runs):
        wall, rss = _engine_run(store, args.days)
        walls.append(wall)
        print(
            f"engine run {i + 1}: {wall:.1f} s, peak RSS {rss:,.0f} MB (process tree)", flush=True
        )
    if len(walls) > 1:
        walls.sort()
        print(
            f"engine run: median {walls[len(walls) // 2]:.1f} s of {len(walls)} "
            f"(from {walls[0]:.1f} to {walls[-1]:.1f} s)",
            flush=True,
        )
    wall, rss = run_measured(
        [
            sys.executable,
            __file__,
            "--steps",
            "--days",
            str(args.days),
            "--rate",
            str(args.rate),
            "--work",
            str(args.work),
        ],
        tree=True,
        echo=True,
    )
    print(f"steps alone: {wall:.1f} s in all, peak RSS {rss:,.0f} MB (process tree)")
    print(f"floor again: bare DuckDB scan {bare_scan(store, args.days):.2f} s")


if __name__ == "__main__":
    main()
