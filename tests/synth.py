"""Synthetic trade tapes written straight into the store as Parquet hours (test data)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import polars as pl

from recorder.store import init_store, layout
from recorder.store.schema import PARQUET_SCHEMA, write_parquet


def tape(
    start_ms: int,
    seconds: float,
    rate: float,
    seed: int,
    first_id: int = 1,
    qty_decimals: int = 8,
) -> pl.DataFrame:
    """Trades with bursty arrivals, a tick-grid random-walk price and lognormal sizes, to
    ``qty_decimals`` places (BTCUSDT's lot step is 0.00001: 5)."""
    rng = np.random.default_rng(seed)
    n = rng.poisson(rate * seconds)
    # Bursts: a quarter of the trades crowd into short clusters.
    base = rng.uniform(0, seconds * 1000, n)
    centers = rng.uniform(0, seconds * 1000, max(1, n // 400))
    burst = rng.random(n) < 0.25
    base[burst] = centers[rng.integers(0, len(centers), burst.sum())] + rng.exponential(
        800, burst.sum()
    )
    t = np.sort(np.clip(base, 0, seconds * 1000 - 1)).astype(np.int64) + start_ms
    price = np.round(60000 + np.cumsum(rng.choice([-1, 0, 0, 1], n)) * 0.01, 2)
    qty = np.round(rng.lognormal(-6, 1.5, n), qty_decimals)
    return pl.DataFrame(
        {
            "trade_id": np.arange(first_id, first_id + n, dtype=np.int64),
            "price": price,
            "qty": qty,
            "quote_qty": None,
            "trade_time": t * 1000,
            "event_time": t * 1000 + 1,
            "is_buyer_maker": rng.random(n) < 0.5,
            "is_best_match": True,
            "buyer_order_id": None,
            "seller_order_id": None,
            "recv_time": t * 1000 + 5000,
            "source": "archive",
            "event_type": "trade",
            "extra": None,
        }
    ).cast(PARQUET_SCHEMA)  # type: ignore[arg-type]


def write_store(root: Path, symbol: str, trades: pl.DataFrame) -> None:
    """One Parquet file per hour, as compaction (or an archive import) leaves them."""
    init_store(root)
    hours = trades.with_columns(_h=pl.col("trade_time").dt.epoch("ms") // layout.HOUR_MS)
    for (hour,), part in hours.group_by("_h"):
        d = layout.hour_dir(root, symbol, int(hour))
        d.mkdir(parents=True, exist_ok=True)
        write_parquet(part.drop("_h").sort("trade_id"), d / layout.PARQUET)


def write_recorded_gap(root: Path, symbol: str, after_ms: int, before_ms: int) -> None:
    """A gap the recorder could not fetch, in ``gaps/gaps.ndjson`` as the recorder logs it."""
    (root / "gaps").mkdir(exist_ok=True)
    line = {
        "symbol": symbol,
        "first_id": 10**9,
        "last_id": 10**9,
        "after_time": after_ms,
        "before_time": before_ms,
        "reason": "REST unavailable",
        "recorded_at": 0,
    }
    with open(root / "gaps" / "gaps.ndjson", "ab") as f:
        f.write(orjson.dumps(line) + b"\n")


def window_frame(
    rng: np.random.Generator,
    t: np.ndarray,
    h: np.ndarray,
    season: np.ndarray,
    flags: str,
    f: np.ndarray,
    returns: Callable[[np.random.Generator, np.ndarray], np.ndarray],
    rate: float = 0.05,
    boost: float = 1.0,
    boost_windows: int = 15,
) -> pl.DataFrame:
    """Windows (no trades) at UTC ms ``t`` with latent log-variance ``h`` plus ``season``: the
    window log returns are ``returns(rng, variance)``, trade counts follow exp(h / 2), the
    price sd measures the volatility with a little noise. ``flags``: ``planted`` (independent
    Bernoulli(rate) flags, each multiplying the variance of the next ``boost_windows`` windows
    by ``boost``, compounding when they overlap), ``volatility`` (the window's own price sd
    above its 1 - rate quantile), anything else: the flags ``f`` as given."""
    n = len(t)
    var = (8e-5**2 * 20) * np.exp(h + season)
    if flags == "planted":
        f = rng.random(n) < rate
        c = np.concatenate([[0], np.cumsum(f)])
        i = np.arange(n)
        var = var * boost ** (c[i] - c[np.maximum(i - boost_windows, 0)])  # flags in i-15..i-1
    r = returns(rng, var)
    tc = rng.poisson(300 * np.exp(0.5 * (h + season)))
    close = 60_000 * np.exp(np.cumsum(r))
    m = np.maximum(tc - 1, 1)
    volatility = 0.5 * close * np.sqrt(var * rng.chisquare(m) / m)
    if flags == "volatility":
        rel = volatility / close
        f = rel > np.quantile(rel, 1 - rate)
    return pl.DataFrame(
        {
            "window_start": pl.Series(t * 1000).cast(pl.Datetime("us", "UTC")),
            "trade_count": tc.astype(np.int64),
            "volume": tc * rng.lognormal(-6, 0.5, n),
            "close": close,
            "return": np.expm1(r),
            "volatility": volatility,
            "gap": np.zeros(n, dtype=bool),
            "prediction": pl.Series(np.where(f, -1, 1), dtype=pl.Int8),
        }
    )
