"""``engine evaluate`` over a year of 20 s windows: wall time and peak memory.

A window tape of ``--windows`` rows (default a year, 1,576,800) is synthesized directly (no
trades): persistent latent log-volatility (AR(1), phi 0.999 a window), an intraday cycle, trade
counts that follow it, and 5 % of windows flagged in clustered runs. The evaluation runs four
horizons (1, 5, 15, 30 min), the model and its three competitor flags, both metrics, in its own
process (``_measure.py``: wall time includes start-up and synthesis; the evaluation alone,
and its steps, are printed by the child).

    python bench/evaluate_bench.py                 # a year
    python bench/evaluate_bench.py --windows 60000 # a smoke run
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).parent))
from _measure import run_measured
from analysis_bench import timed_calls

YEAR = 365 * 86_400 // 20
T0_MS = 1_735_689_600_000  # 2025-01-01 UTC
HORIZONS = [("1m", 60_000), ("5m", 300_000), ("15m", 900_000), ("30m", 1_800_000)]
# The evaluation's steps: (label, functions of engine.evaluate), the first that exists is
# timed (so that the script also times older versions of the module).
STEPS = (
    ("design", ("design",)),
    ("forecasts", ("walk_forward_ols",)),
    ("adjustment", ("_adjusted_residuals", "residualize")),
    ("rotations", ("rotation_stats",)),
    ("row statistics", ("_row",)),
)


def synthetic_windows(n: int, every_s: int = 20, seed: int = 0) -> pl.DataFrame:
    """A complete grid of ``n`` windows with the columns ``engine evaluate`` reads."""
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed)
    phi = 0.999
    t = T0_MS + np.arange(n, dtype=np.int64) * every_s * 1000
    e = rng.normal(0, 0.8 * np.sqrt(1 - phi**2), n)
    h = lfilter([1.0], [1.0, -phi], e)
    season = 0.6 * np.cos(2 * np.pi * ((t % 86_400_000) / 86_400_000 - 0.6))
    sig = 8e-5 * np.sqrt(every_s) * np.exp(0.5 * (h + season))
    r = sig * rng.standard_normal(n)
    tc = rng.poisson(300 * np.exp(0.5 * (h + season)))
    close = 60_000 * np.exp(np.cumsum(r))
    run = np.repeat(np.tile([False, True], n), rng.geometric([1 / 190, 1 / 10] * n, 2 * n))[:n]
    return pl.DataFrame(
        {
            "window_start": pl.Series(t * 1000).cast(pl.Datetime("us", "UTC")),
            "trade_count": tc,
            "volume": tc * rng.lognormal(-6, 0.5, n),
            "close": close,
            "return": np.expm1(r),
            "volatility": close * sig * 0.5,
            "gap": np.zeros(n, dtype=bool),
            "prediction": pl.Series(np.where(run, -1, 1), dtype=pl.Int8),
        }
    )


def child(n: int) -> None:
    import engine.evaluate as evaluation
    from engine.horizons import horizons_for

    t = time.perf_counter()
    w = synthetic_windows(n)
    built = time.perf_counter() - t
    names = tuple(name for _, names in STEPS for name in names)
    with timed_calls(evaluation, names) as spent:
        t = time.perf_counter()
        ev = evaluation.evaluate(w, horizons_for(HORIZONS, 20_000), 20_000)
        took = time.perf_counter() - t
    timed = [(label, [name for name in names if name in spent]) for label, names in STEPS]
    steps = ", ".join(f"{label} {spent[names[0]]:.1f} s" for label, names in timed if names)
    model = [r for r in ev.rows if r["flag"] == "model" and r["metric"] == "log_rv"]
    print(
        f"synthesis {built:.1f} s; evaluate {took:.1f} s ({steps}); {len(ev.rows)} rows; "
        f"flag rate {ev.flag_rate:.3f}; model effects "
        + ", ".join(f"{r['horizon']} {r['effect']:.3f} (p {r['p_value']:.3f})" for r in model)
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--windows", type=int, default=YEAR)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.windows)
        return
    with tempfile.TemporaryDirectory(prefix="tapewatch-evaluate-bench-") as tmp:
        out = Path(tmp) / "child.txt"
        secs, rss = run_measured(
            [sys.executable, __file__, "--child", "--windows", str(args.windows)], stdout=out
        )
        print(out.read_text().strip())
    print(
        f"engine evaluate: {args.windows:,} windows of 20 s, 4 horizons, model + 3 competitors, "
        f"2 metrics: {secs:.1f} s wall (process), peak RSS {rss:,.0f} MB"
    )


if __name__ == "__main__":
    main()
