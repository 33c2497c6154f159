"""Engine figures at BTCUSDT scale: windows over N days, and walk-forward scoring.

Builds (once, cached under --work) a synthetic store of ``--days`` days at ``--rate`` trades a
day, then times whole ``engine windows`` processes (20 s windows, all features) and reports
trades/s and peak RSS; then times walk-forward scoring on ``--model-windows`` 20 s windows and
extrapolates to a year (1,576,800 windows, 15,763 refits) from the measured refits/s.

    python bench/engine_bench.py --days 30 --work /tmp/tapewatch-bench
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from _measure import run_measured  # noqa: E402

T0 = 1_735_689_600_000  # 2025-01-01 UTC
YEAR_WINDOWS = 365 * 86400 // 20


def store_dir(work: Path, rate: int) -> Path:
    """The store ``build`` makes: sizes on BTCUSDT's 0.00001 lot step, as every one of the
    23,048 real trades in tests/data is, and files written as compaction writes them (ids and
    times delta-encoded: ``recorder.store.schema.PARQUET_WRITE``), hence ``-lot-delta``. The
    earlier stores: ``store-RATE`` (sizes to 8 random places, all distinct; a year of 23 GB
    that the page cache of a 24 GB machine cannot hold) and ``store-RATE-lot`` (written plain,
    as Polars writes: a year of 16 GB)."""
    return work / f"store-{rate}-lot-delta"


def build(work: Path, days: int, rate: int) -> Path:
    from synth import tape, write_store

    store = store_dir(work, rate)
    for d in range(days):
        marker = store / f".day-{d}"
        if marker.exists():
            continue
        t = tape(
            T0 + d * 86_400_000,
            86400,
            rate / 86400,
            seed=d,
            first_id=1 + d * 10 * rate,
            qty_decimals=5,
        )
        write_store(store, "SIMUSDT", t)
        marker.touch()
    return store


def run_windows(store: Path, days: int) -> tuple[float, float]:
    end = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime((T0 + days * 86_400_000) / 1000))
    cmd = [
        sys.executable,
        "-m",
        "engine.cli",
        "windows",
        "--data-dir",
        str(store),
        "--symbol",
        "simusdt",
        "--every",
        "20s",
        "--start",
        "2025-01-01",
        "--end",
        end,
        "--output",
        str(store.parent / "w.parquet"),
    ]
    return run_measured(cmd)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--rate", type=int, default=4_000_000, help="trades per day")
    ap.add_argument("--work", type=Path, default=Path("/tmp/tapewatch-bench"))
    ap.add_argument("--model-windows", type=int, default=60_000, help="0: skip the model figure")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    t = time.perf_counter()
    store = build(args.work, args.days, args.rate)
    print(
        f"store: {args.days} days x {args.rate:,} trades/day ready in {time.perf_counter() - t:.0f} s"
    )
    for days in sorted({1, args.days}):
        wall, rss = run_windows(store, days)
        n = days * args.rate
        print(
            f"windows 20s, {days:>3} days ({n / 1e6:.0f} M trades): {wall:6.2f} s whole process, "
            f"{n / wall / 1e6:.1f} M trades/s, peak RSS {rss:.0f} MB"
        )

    if args.model_windows <= 0:  # model figures come from bench/model_bench.py
        return
    import polars as pl

    from engine.model import ModelParams, walk_forward

    w = pl.read_parquet(store_dir(args.work, args.rate).parent / "w.parquet")
    w = pl.concat([w] * (-(-args.model_windows // w.height)))[: args.model_windows]
    refits = (args.model_windows - 500) // 100
    t = time.perf_counter()
    walk_forward(w, ModelParams(), jobs=args.jobs)
    secs = time.perf_counter() - t
    rate = refits / secs
    print(
        f"walk-forward ({ModelParams().backend}, {args.jobs} jobs): {refits} refits in {secs:.1f} s = {rate:.0f} refits/s; "
        f"a year of 20 s windows ({(YEAR_WINDOWS - 500) // 100} refits) ~ {(YEAR_WINDOWS - 500) // 100 / rate:.0f} s"
    )


if __name__ == "__main__":
    main()
