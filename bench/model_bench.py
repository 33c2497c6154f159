"""Walk-forward model figures, two modes.

Backends (the default): scikit-learn serial (as the prototype would), scikit-learn with 2
jobs, and the isotree backend serial and with 2 jobs, on the same windows; refits/s, time for a
year of 20 s windows (1,576,800 windows, 15,763 refits) extrapolated from the measured refits/s,
and agreement with the scikit-learn reference: the share of identical flags and the Spearman
rank correlation of scores. The last line is the reference against itself with another seed:
how much two scikit-learn forests that differ only in their random draws agree.

``--whole``: the real ``walk_forward`` of one backend (``--backend``, default the engine's)
over ``--windows`` windows, run as its own process: wall time of the whole process (start-up,
imports, reading the windows, scoring) and of the walk-forward alone, and peak RSS of the
process and any workers.

Windows come from a simulated store (``engine simulate``) of ``--days`` days, tiled to
``--windows`` rows.

    python bench/model_bench.py --days 3 --windows 60000
    python bench/model_bench.py --whole --windows 1576800     # a year of 20 s windows
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import run_measured

from engine import config
from engine.model import BACKENDS, ModelParams, walk_forward

YEAR_REFITS = (365 * 86400 // 20 - 500) // 100


def windows(days: float, n: int) -> pl.DataFrame:
    """``n`` 20 s windows: a simulated store of ``days`` days, tiled."""
    from engine.scan import open_store
    from engine.simulate import write_simulation
    from engine.windows import build_windows

    with tempfile.TemporaryDirectory() as tmp:
        write_simulation(Path(tmp), "SIMUSDT", days, 7)
        w = build_windows(open_store(Path(tmp), "SIMUSDT"), [20_000])[20_000]
    return pl.concat([w] * (-(-n // w.height)))[:n]


def backends(w: pl.DataFrame) -> None:
    from scipy.stats import spearmanr

    p = ModelParams(backend="sklearn")
    iso = replace(p, backend="isotree")

    def default(backend: str) -> str:
        return " (default)" if backend == config.BACKEND else ""

    paths = (
        ("scikit-learn serial (prototype)", p, 1),
        ("scikit-learn, 2 jobs" + default("sklearn"), p, 2),
        ("isotree, 1 job", iso, 1),
        ("isotree, 2 jobs" + default("isotree"), iso, 2),
        ("scikit-learn serial, seed 7", replace(p, seed=7), 1),
    )
    import isotree  # noqa: F401  (imports are not timed)
    import sklearn.ensemble  # noqa: F401

    runs = {}
    for name, params, jobs in paths:
        t = time.perf_counter()
        runs[name] = (walk_forward(w, params, jobs=jobs), time.perf_counter() - t)
    ref, serial = runs[paths[0][0]]
    refits = int(ref["refit"].max()) + 1
    ok = ref["score"].is_not_null().to_numpy()
    print(
        f"walk-forward, {w.height} windows of 20 s ({refits} refits, buffer 500, every 100, 100 trees)"
    )
    print(
        f"{'path':<38}{'refits/s':>10}{'time':>9}{'year (est.)':>13}{'speed-up':>10}{'same flags':>12}{'score rank corr':>17}"
    )
    for name, _, _ in paths:
        got, secs = runs[name]
        same = float(np.mean(got["prediction"].to_numpy()[ok] == ref["prediction"].to_numpy()[ok]))
        rho = spearmanr(got["score"].to_numpy()[ok], ref["score"].to_numpy()[ok]).statistic
        print(
            f"{name:<38}{refits / secs:>10.1f}{secs:>8.1f}s{YEAR_REFITS / (refits / secs):>12.0f}s"
            f"{serial / secs:>9.2f}x{same:>12.4f}{rho:>17.4f}"
        )


def whole(w: pl.DataFrame, backend: str, jobs: int) -> None:
    """Time ``walk_forward`` over ``w`` in a process of its own (``--run``)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "windows.parquet"
        w.write_parquet(path)
        out = Path(tmp) / "out.txt"
        cmd = [sys.executable, __file__, "--run", str(path), "--backend", backend]
        wall, rss = run_measured([*cmd, "--jobs", str(jobs)], stdout=out, tree=True)
        inner = float(out.read_text())
    refits = (w.height - 500) // 100
    print(
        f"walk_forward ({backend}, {jobs} jobs), {w.height:,} windows of 20 s ({refits:,} refits): "
        f"{wall:.1f} s whole process, {inner:.1f} s walk-forward, peak RSS {rss:.0f} MB"
    )


def run(path: Path, backend: str, jobs: int) -> None:
    """The child of ``whole``: print the walk-forward's own seconds."""
    w = pl.read_parquet(path)
    t = time.perf_counter()
    walk_forward(w, ModelParams(backend=backend), jobs=jobs)
    print(f"{time.perf_counter() - t:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--days", type=float, default=3)
    ap.add_argument("--windows", type=int, default=60_000)
    ap.add_argument("--whole", action="store_true", help="time one backend's whole walk-forward")
    ap.add_argument("--backend", choices=BACKENDS, default=config.BACKEND)
    ap.add_argument("--jobs", type=int, default=config.JOBS)
    ap.add_argument("--run", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run:
        run(args.run, args.backend, args.jobs)
    elif args.whole:
        whole(windows(args.days, args.windows), args.backend, args.jobs)
    else:
        backends(windows(args.days, args.windows))


if __name__ == "__main__":
    main()
