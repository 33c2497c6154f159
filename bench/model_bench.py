"""Walk-forward model figures: scikit-learn serial (as the prototype would), the default path,
and the numpy backend; refits/s, time for a year of 20 s windows, and agreement of flags and
scores with the scikit-learn reference on the same windows.

Windows come from a simulated store (``engine simulate``) of ``--days`` days, tiled to
``--windows`` rows; a year (1,576,800 windows, 15,763 refits) is extrapolated from the measured
refits/s unless ``--windows`` is a year.

    python bench/model_bench.py --days 3 --windows 60000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
from scipy.stats import spearmanr

from engine.model import ModelParams, walk_forward
from engine.scan import open_store
from engine.simulate import write_simulation
from engine.windows import build_windows

YEAR_REFITS = (365 * 86400 // 20 - 500) // 100


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--days", type=float, default=3)
    ap.add_argument("--windows", type=int, default=60_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        write_simulation(Path(tmp), "SIMUSDT", args.days, 7)
        w = build_windows(open_store(Path(tmp), "SIMUSDT"), [20_000])[20_000]
    w = pl.concat([w] * (-(-args.windows // w.height)))[: args.windows]
    p = ModelParams()
    runs = {}
    for name, params, jobs in (
        ("scikit-learn serial (prototype)", p, 1),
        ("scikit-learn, 2 jobs (default path)", p, 2),
        ("numpy backend, 2 jobs", replace(p, backend="numpy"), 2),
    ):
        t = time.perf_counter()
        runs[name] = walk_forward(w, params, jobs=jobs)
        runs[name + " secs"] = time.perf_counter() - t
    ref = runs["scikit-learn serial (prototype)"]
    refits = int(ref["refit"].max()) + 1
    print(
        f"walk-forward, {w.height} windows of 20 s ({refits} refits, buffer 500, every 100, 100 trees)"
    )
    print(
        f"{'path':<38}{'refits/s':>10}{'time':>9}{'year (est.)':>13}{'speed-up':>10}{'same flags':>12}{'score rank corr':>17}"
    )
    for name in (
        "scikit-learn serial (prototype)",
        "scikit-learn, 2 jobs (default path)",
        "numpy backend, 2 jobs",
    ):
        secs = runs[name + " secs"]
        serial = runs["scikit-learn serial (prototype) secs"]
        got = runs[name]
        ok = ref["score"].is_not_null().to_numpy()
        same = float(np.mean(got["prediction"].to_numpy()[ok] == ref["prediction"].to_numpy()[ok]))
        rho = spearmanr(got["score"].to_numpy()[ok], ref["score"].to_numpy()[ok]).statistic
        print(
            f"{name:<38}{refits / secs:>10.1f}{secs:>8.1f}s{YEAR_REFITS / (refits / secs):>12.0f}s"
            f"{serial / secs:>9.2f}x{same:>12.4f}{rho:>17.4f}"
        )


if __name__ == "__main__":
    main()
