"""Archive import: a Binance-format zip of ``--trades`` synthetic trades (monthly file name)
imported by ``recorder import-archive`` as its own process; prints trades/s and peak RSS.
``--one-hour N`` adds a zip bomb: N trades all in one hour (memory must not grow with it).

    python bench/import_bench.py --trades 10000000
    python bench/import_bench.py --trades 3000000 --one-hour 30000000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).parent))
from _measure import run_measured

T0 = 1_722_470_400_000  # 2024-08-01 UTC (milliseconds, as in 2024 archives)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--trades", type=int, default=10_000_000)
    ap.add_argument(
        "--one-hour", type=int, default=0, help="Also import this many trades in one hour."
    )
    args = ap.parse_args()
    measure(args.trades, 31 * 86_400_000 * args.trades / 120_000_000, "")  # ~120 M a month
    if args.one_hour:
        measure(args.one_hour, 3_600_000, " in one hour")


def measure(n: int, span: float, label: str) -> None:
    """Build a zip of ``n`` trades over ``span`` ms, import it, print one line of figures."""
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp:
        z = Path(tmp) / "BTCUSDT-trades-2024-08.zip"
        df = pl.DataFrame(
            {
                "id": np.arange(1, n + 1),
                "price": np.round(60000 + np.cumsum(rng.choice([-1, 0, 1], n)) * 0.01, 2),
                "qty": np.round(rng.lognormal(-7, 1.5, n), 5),
                "quote": 0.0,
                "time": T0 + np.sort(rng.integers(0, int(span), n)),
                "m": np.where(rng.random(n) < 0.5, "True", "False"),
                "M": "True",
            }
        )
        csv = Path(tmp) / "BTCUSDT-trades-2024-08.csv"
        df.write_csv(csv, include_header=False, float_precision=8)
        with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            zf.write(csv, csv.name)
        csv.unlink()
        del df
        secs, rss = run_measured(
            [
                sys.executable,
                "-m",
                "recorder.cli",
                "import-archive",
                "--data-dir",
                str(Path(tmp) / "d"),
                str(z),
            ]
        )
        pq = sum(p.stat().st_size for p in (Path(tmp) / "d").glob("trades/symbol=*/**/*.parquet"))
        print(
            f"import-archive: {n:,} trades{label} ({z.stat().st_size / 1e6:.0f} MB zip) in {secs:.1f} s = {n / secs:,.0f} trades/s, "
            f"peak RSS {rss:.0f} MB, Parquet {pq / n:.1f} bytes/trade"
        )


if __name__ == "__main__":
    main()
