"""20 s windows, all features, five ways over the same stored trades, one table.

Each method runs as its own process (`--method`), so wall time includes start-up and reading,
and peak RSS is that process's own. Figures are medians of ``--repeats`` runs.

- tapewatch: ``engine windows`` (Polars ``group_by_dynamic``, a day at a time);
- duckdb: tapewatch's SQL build, ``tw_windows`` over the ``trades`` view (sql/windows.sql);
- pandas: the stored columns into a DataFrame, ``resample("20s")``;
- prototype: the prototype's way, a Python loop over one JSON frame per trade (only the loop is
  timed: the frames are made beforehand; its RSS includes them);
- floor: a bare scan of the same columns (read them and sum them), nothing else.

The prototype's loop runs on the first ``--prototype-trades`` trades only and is scaled
linearly to the span (it is a per-trade loop); the table says so.

    python bench/windows_bench.py --days 1 30
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from _measure import run_measured  # noqa: E402

T0 = 1_735_689_600_000  # 2025-01-01 UTC, where engine_bench.py builds its store
COLS = ["trade_id", "trade_time", "price", "qty", "is_buyer_maker"]


def _files(store: Path, days: int) -> list[Path]:
    from recorder.store.layout import hour_dir

    first = T0 // 3_600_000
    out = [
        hour_dir(store, "SIMUSDT", h) / "trades.parquet" for h in range(first, first + 24 * days)
    ]
    return [p for p in out if p.exists()]


def method(name: str, store: Path, days: int, limit: int) -> None:
    end = T0 + days * 86_400_000
    if name == "tapewatch":
        from engine.scan import open_store
        from engine.windows import build_windows

        w = build_windows(open_store(store, "SIMUSDT"), [20_000], T0, end)[20_000]
        assert w.height == days * 4320
    elif name == "duckdb":
        from engine.sqlviews import connect

        con = connect(store)
        n = con.execute(
            f"SELECT count(*) FROM tw_windows('SIMUSDT', 20000, {T0}, {end})"
        ).fetchone()
        assert n == (days * 4320,)
    elif name == "pandas":
        import pandas as pd

        df = pd.concat([pd.read_parquet(p, columns=COLS) for p in _files(store, days)])
        df = df.set_index("trade_time").sort_index(kind="stable")
        df["quote"] = df["price"] * df["qty"]
        df["buy"] = df["qty"].where(~df["is_buyer_maker"], 0.0)
        r = df.resample("20s", origin="epoch", closed="left", label="left")
        w = pd.DataFrame(
            {
                "trade_count": r["price"].count(),
                "volume": r["qty"].sum(),
                "quote_volume": r["quote"].sum(),
                "open": r["price"].first(),
                "high": r["price"].max(),
                "low": r["price"].min(),
                "close": r["price"].last(),
                "volatility": r["price"].std().fillna(0.0),
                "buy_volume": r["buy"].sum(),
            }
        )
        w["avg_trade_size"] = w["volume"] / w["trade_count"]
        w["return"] = w["close"] / w["open"] - 1
        w["vwap"] = w["quote_volume"] / w["volume"]
        assert len(w) >= days * 4320 - 1
    elif name == "prototype":
        import json
        import math

        import polars as pl

        files, rows = [], 0
        for f in _files(store, days):  # only as many hours as the sample needs
            files.append(f)
            rows += pl.scan_parquet(f).select(pl.len()).collect().item()
            if rows >= limit:
                break
        t = pl.read_parquet(files, columns=COLS).head(limit)
        frames = [
            json.dumps(
                {
                    "e": "trade",
                    "s": "SIMUSDT",
                    "t": r[0],
                    "p": f"{r[2]:.2f}",
                    "q": f"{r[3]:.5f}",
                    "T": r[1] // 1000,
                    "m": r[4],
                }
            )
            for r in t.select(
                pl.col("trade_id"),
                pl.col("trade_time").cast(pl.Int64),
                "price",
                "qty",
                "is_buyer_maker",
            ).iter_rows()
        ]
        start = time.perf_counter()
        windows: dict[int, dict] = {}
        for raw in frames:  # as the prototype's live collector: one frame at a time
            d = json.loads(raw)
            k = d["T"] // 20_000 * 20_000
            w = windows.get(k)
            if w is None:
                w = windows[k] = {"n": 0, "vol": 0.0, "quote": 0.0, "buy": 0.0, "prices": []}
            p, q = float(d["p"]), float(d["q"])
            w["n"] += 1
            w["vol"] += q
            w["quote"] += p * q
            if not d["m"]:
                w["buy"] += q
            w["prices"].append(p)
        for w in windows.values():
            ps = w["prices"]
            mean = sum(ps) / len(ps)
            w["volatility"] = (
                math.sqrt(sum((x - mean) ** 2 for x in ps) / (len(ps) - 1)) if len(ps) > 1 else 0.0
            )
            w["open"], w["close"], w["high"], w["low"] = ps[0], ps[-1], max(ps), min(ps)
        print(f"{time.perf_counter() - start:.6f} {len(frames)}")  # the loop alone: seconds, trades
    elif name == "floor":
        import polars as pl

        s = (
            pl.scan_parquet(_files(store, days))
            .select(COLS)
            .select(pl.all().cast(pl.Float64).sum())
            .collect()
        )
        assert s.height == 1


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--days", type=int, nargs="+", default=[1, 30])
    ap.add_argument("--rate", type=int, default=4_000_000, help="trades per day in the store")
    ap.add_argument("--work", type=Path, default=Path("/tmp/tapewatch-bench"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prototype-trades", type=int, default=1_000_000)
    ap.add_argument("--methods", default="tapewatch,duckdb,pandas,prototype,floor")
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.method:
        method(args.method, args.store, args.days[0], args.prototype_trades)
        return
    sys.path.insert(0, str(ROOT / "bench"))
    from engine_bench import build

    store = build(args.work, max(args.days), args.rate)
    print(
        f"20 s windows, all features; store: {max(args.days)} days x {args.rate:,} trades/day (synthetic); "
        f"median of {args.repeats} runs, whole process each"
    )
    print(
        f"{'days':>4} {'method':<10}{'wall s':>9}{'M trades/s':>12}{'peak RSS MB':>13}{'vs tapewatch':>14}"
    )
    for days in args.days:
        n = days * args.rate
        rows = {}
        for name in args.methods.split(","):
            cmd = [
                sys.executable,
                __file__,
                "--method",
                name,
                "--store",
                str(store),
                "--days",
                str(days),
                "--prototype-trades",
                str(args.prototype_trades),
            ]
            out = args.work / "prototype-loop.txt"
            reps = args.repeats if name != "pandas" or days == 1 else 1  # pandas at 30 days: ~13 GB
            runs, loops = [], []
            for _ in range(reps):
                runs.append(run_measured(cmd, stdout=out if name == "prototype" else None))
                if name == "prototype":  # the per-trade loop alone, scaled to the span
                    secs, done = out.read_text().split()
                    loops.append(float(secs) * n / int(done))
            wall = statistics.median(loops) if loops else statistics.median(r[0] for r in runs)
            rows[name] = (wall, max(r[1] for r in runs))
        base = rows.get("tapewatch", (None,))[0]
        for name, (wall, rss) in rows.items():
            note = (
                f" (its loop over {min(n, args.prototype_trades):,} frames, scaled)"
                if name == "prototype"
                else ""
            )
            ratio = f"{wall / base:.2f}x" if base else ""
            print(
                f"{days:>4} {name:<10}{wall:>9.2f}{n / wall / 1e6:>12.2f}{rss:>13.0f}{ratio:>14}{note}"
            )


if __name__ == "__main__":
    main()
