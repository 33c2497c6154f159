"""Horizons over a year, the sweep grid versus separate runs, and storage figures.

1. Horizons: 1,576,800 windows of 20 s (a year; synthetic features, 5 % flagged), four
   horizons (1, 5, 15, 30 min), both metrics, with the block bootstrap (``--reps``), as its
   own process (``_measure.py``): wall time (start-up and synthesis included) and peak RSS,
   then each step's seconds as the child timed them (``compare``'s parts in brackets).
2. Sweep: 10 s, 20 s, 30 s and 60 s windows over ``--days`` days of the engine_bench store,
   one scan for the grid versus four separate builds.
3. Storage: the real capture (19,904 trades) and one synthetic hour at BTCUSDT scale
   (``--hour-trades``) written through the recorder's writer as NDJSON, then compacted:
   bytes per trade in each, and compaction time.

    python bench/analysis_bench.py --days 30
    python bench/analysis_bench.py --only horizons   # the year's horizon table alone
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from _measure import run_measured  # noqa: E402

T0 = 1_735_689_600_000
STEPS = ("horizons", "sweep", "storage")
# compare()'s parts: (label, functions of engine.horizons), the first that exists is timed
# (so that the script also times older versions of the module).
PARTS = (
    ("propensity", ("propensity_strata",)),
    ("block lengths", ("_block_estimates", "block_length")),
    ("tables", ("_table_columns",)),
    ("bootstrap", ("_block_sums", "block_sums")),
    ("Mann-Whitney", ("_mann_whitney_greater", "scipy mannwhitneyu")),
)


@contextlib.contextmanager
def timed_calls(module: ModuleType, names: tuple[str, ...]) -> Iterator[dict[str, float]]:
    """Seconds spent in each of ``module``'s functions ``names`` (those it has) while the
    block runs, calls from inside the module included: the functions are wrapped in place
    and put back afterwards."""
    saved = {name: getattr(module, name) for name in names if hasattr(module, name)}
    spent = dict.fromkeys(saved, 0.0)

    def wrap(name, f):
        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return f(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - t

        return timed

    for name, f in saved.items():
        setattr(module, name, wrap(name, f))
    try:
        yield spent
    finally:
        for name, f in saved.items():
            setattr(module, name, f)


def horizon_windows(n: int) -> pl.DataFrame:
    """``n`` scored 20 s windows: gamma volatility, returns that scale with it, 5 % flagged."""
    rng = np.random.default_rng(0)
    vol = rng.gamma(2.0, 2.0, n)
    ret = rng.normal(0, 1e-4, n) * vol
    return pl.DataFrame(
        {
            "window_start": pl.datetime_range(
                pl.datetime(2025, 1, 1, time_zone="UTC"),
                pl.datetime(2025, 1, 1, time_zone="UTC") + pl.duration(seconds=20 * (n - 1)),
                "20s",
                eager=True,
            ),
            "trade_count": np.full(n, 900),
            "gap": np.zeros(n, dtype=bool),
            "return": ret,
            "close": 60_000 * np.exp(np.cumsum(ret)),
            "volatility": vol,
            "prediction": pl.Series(np.where(rng.random(n) < 0.05, -1, 1), dtype=pl.Int8),
        }
    )


def horizons_child(n: int, reps: int) -> None:
    """The horizon table over ``n`` windows, in this process: one line of step times."""
    from scipy import stats

    import engine.horizons as hz

    t = time.perf_counter()
    w = horizon_windows(n)
    synthesis = time.perf_counter() - t
    hs = hz.horizons_for(
        [("1m", 60_000), ("5m", 300_000), ("15m", 900_000), ("30m", 1_800_000)], 20_000
    )
    steps = ("forward_moves", "group_windows", "adjustment_covariates", "compare")
    parts = tuple(name for _, names in PARTS for name in names)
    with timed_calls(hz, steps + parts) as spent, timed_calls(stats, ("mannwhitneyu",)) as mw:
        moves = hz.forward_moves(w, hs)
        groups = hz.group_windows(w, "trailing", 500)
        cov = hz.adjustment_covariates(w)
        rows = hz.compare(moves, groups, cov, hs, reps=reps)
    spent["scipy mannwhitneyu"] = mw["mannwhitneyu"]
    timed = [(label, [name for name in names if name in spent]) for label, names in PARTS]
    inner = ", ".join(f"{label} {spent[names[0]]:.1f} s" for label, names in timed if names)
    print(
        f"synthesis {synthesis:.1f} s, "
        + ", ".join(f"{name} {spent[name]:.1f} s" for name in steps)
        + f" ({inner}); {len(rows)} rows"
    )


def horizons(n: int, reps: int) -> None:
    cmd = [sys.executable, __file__, "--child-horizons", "--windows", str(n), "--reps", str(reps)]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "steps.txt"
        secs, rss = run_measured(cmd, stdout=out)
        steps = out.read_text().strip()
    print(
        f"horizons: {n:,} windows x 4 horizons x 2 metrics, {reps} bootstrap reps: "
        f"{secs:.1f} s whole process, peak RSS {rss:,.0f} MB; steps: {steps}"
    )


def sweep(store: Path, days: int) -> None:
    from engine.scan import open_store
    from engine.windows import build_windows

    sizes = [10_000, 20_000, 30_000, 60_000]
    end = T0 + days * 86_400_000
    t = time.perf_counter()
    build_windows(open_store(store, "SIMUSDT"), sizes, T0, end)
    grid = time.perf_counter() - t
    t = time.perf_counter()
    for e in sizes:
        build_windows(open_store(store, "SIMUSDT"), [e], T0, end)
    apart = time.perf_counter() - t
    print(
        f"sweep 10s/20s/30s/60s over {days} days: one scan {grid:.1f} s, four runs {apart:.1f} s "
        f"({apart / grid:.2f}x)"
    )


def storage(hour_trades: int) -> None:
    from recorder.compact import compact_hour
    from recorder.frames import decode_frame
    from recorder.store import init_store
    from recorder.store.layout import hour_of
    from recorder.writer import StoreWriter

    capture = ROOT / "recorder" / "samples" / "btcusdt-trade-2024-08-08T2354Z.combined.jsonl.gz"
    with gzip.open(capture) as f:
        real = f.read().splitlines()
    sys.path.insert(0, str(ROOT / "bench"))
    from recorder_flood import frames as synthetic

    start = T0 - T0 % 3_600_000
    hour = [f.encode() for f in synthetic(hour_trades, start)]
    # recorder_flood's clock runs 50 trades a ms; spread them over the hour instead
    step = 3_600_000 / hour_trades
    for label, raws, symbol, fix in (
        ("real capture", real, "BTCUSDT", None),
        ("synthetic hour", hour, "BTCUSDT", step),
    ):
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            init_store(root)
            w = StoreWriter(root)
            batch = []
            for i, raw in enumerate(raws):
                if fix:
                    ms = int(start + i * fix)
                    raw = raw.replace(b'"T":%d' % (start + i // 50), b'"T":%d' % ms)
                f = decode_frame(raw, time.time_ns() // 1000, frozenset({symbol}))
                batch.append((f.symbol, hour_of(f.trade_time), f.line))
            w.append(batch)
            w.close()
            nd = sum(p.stat().st_size for p in root.glob("trades/**/*.ndjson"))
            dirs = sorted({p.parent for p in root.glob("trades/symbol=*/*/*/trades.ndjson")})
            t = time.perf_counter()
            for d in dirs:
                compact_hour(root, d)
            secs = time.perf_counter() - t
            pq = sum(p.stat().st_size for p in root.glob("trades/symbol=*/**/trades.parquet"))
            n = len(raws)
            print(
                f"storage, {label} ({n:,} trades, {len(dirs)} hour files): NDJSON {nd / n:.1f} bytes/trade, "
                f"Parquet {pq / n:.1f} bytes/trade; compaction {secs:.2f} s ({secs / len(dirs):.2f} s an hour)"
            )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--windows", type=int, default=365 * 86400 // 20)
    ap.add_argument("--reps", type=int, default=1000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--rate", type=int, default=4_000_000)
    ap.add_argument("--work", type=Path, default=Path("/tmp/tapewatch-bench"))
    ap.add_argument("--hour-trades", type=int, default=170_000)
    ap.add_argument(
        "--only", default=",".join(STEPS), help="comma-separated steps to run: " + ", ".join(STEPS)
    )
    ap.add_argument("--child-horizons", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_horizons:
        horizons_child(args.windows, args.reps)
        return
    only = args.only.split(",")
    if unknown := set(only) - set(STEPS):
        ap.error(f"unknown steps {', '.join(sorted(unknown))}; choose from {', '.join(STEPS)}")
    from engine_bench import build

    if "horizons" in only:
        horizons(args.windows, args.reps)
    if "sweep" in only:
        sweep(build(args.work, args.days, args.rate), args.days)
    if "storage" in only:
        storage(args.hour_trades)


if __name__ == "__main__":
    main()
