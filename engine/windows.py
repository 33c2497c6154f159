"""Time windows of trade features on a complete, epoch-aligned UTC grid.

Window ``[start, start + every)`` is labelled by ``start`` (UTC), by trade time, with trades in
trade-id order. Windows with no trades are present (``trade_count = 0``). Features:

    trade_count, volume (sum qty), quote_volume (sum price*qty), avg_trade_size (volume/count),
    open/high/low/close (first/max/min/last price), return (close/open - 1),
    volatility (sample sd of prices, ddof 1, in USD; 0 below 2 trades),
    realized_variance (sum of squared tick log returns ln(p_i / p_(i-1)) between consecutive
        trades of the window; 0 below 2 trades),
    parkinson_variance (Parkinson's range estimator ln(high / low)^2 / (4 ln 2); 0 without
        trades), vwap (quote_volume/volume),
    buy_volume (qty of taker buys: is_buyer_maker false), gap (touched by missing trade ids)

Undefined values of an empty window (prices, return, avg size, vwap) are null.

``volatility`` is the prototype's (USD, so it grows with the price level). The two variances
are in squared log return per window and do not depend on the price level. Realized variance
counts only the changes between trades of the same window: the change from the previous
window's last trade is left out, so a window is a function of its own trades (the batch build
over day chunks, the live watcher and the SQL build agree, and an empty window in between
changes nothing). Both include the bid-ask bounce of trade prices: realized variance once per
price change (so in a quiet market it grows with the trade count), the range at most once per
window (high at the ask, low at the bid).

``build_windows`` makes every window in one pass over the days, in this process. The same
windows, bit for bit, come from independent tasks of about a day on an executor
(``build_windows_with``): ``span_tasks`` cuts the range where no window of any size straddles
two tasks, ``build_span`` builds one task's windows from its trades alone, and ``assemble``
joins them and adds what crosses task boundaries (the id gaps between tasks, the recorded
gaps, the trimming to the stored trades)::

    span_tasks ──> [SpanTask, ...] ──executor.map(build_span)──> [SpanWindows, ...] ──assemble
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from engine.errors import DataError, InputError
from engine.scan import DAY_MS, EMPTY_TRADES, StoreIndex, TradeIndex, chunk_bounds

if TYPE_CHECKING:
    from engine.executors import Executor

__all__ = [
    "WINDOW_COLUMNS",
    "SpanTask",
    "SpanWindows",
    "assemble",
    "build_span",
    "build_windows",
    "build_windows_with",
    "id_gaps",
    "mark_gaps",
    "roll_up",
    "span_tasks",
    "window_features",
]

WINDOW_COLUMNS = [
    "window_start",
    "trade_count",
    "volume",
    "quote_volume",
    "avg_trade_size",
    "open",
    "high",
    "low",
    "close",
    "return",
    "volatility",
    "realized_variance",
    "parkinson_variance",
    "vwap",
    "buy_volume",
    "gap",
]
_UTC = pl.Datetime("us", "UTC")
# Parkinson (1980): E[ln(high/low)^2] = 4 ln 2 sigma^2. A product by the reciprocal (Polars
# turns a division by a constant into one anyway), written the same way in sql/windows.sql.
_PARKINSON = 1 / (4 * math.log(2))


def _square(x: pl.Expr) -> pl.Expr:
    return x * x  # a product, as the SQL build does: bit for bit the same as DuckDB's


def _ts(ms: int) -> pl.Expr:
    return pl.lit(ms * 1000).cast(_UTC)


def _within(trades: pl.DataFrame, lo_ms: int, hi_ms: int) -> pl.DataFrame:
    """The trades (sorted by time) with ``lo_ms <= time < hi_ms``, without a copy when all are."""
    if trades.is_empty():
        return trades
    first, last = trades["trade_time"][0], trades["trade_time"][-1]
    if first >= _dt(lo_ms) and last < _dt(hi_ms):
        return trades
    return trades.filter((pl.col("trade_time") >= _ts(lo_ms)) & (pl.col("trade_time") < _ts(hi_ms)))


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(0, UTC) + timedelta(milliseconds=ms)


def _per_trade(t: pl.DataFrame, every_ms: int, lo_ms: int, hi_ms: int) -> pl.DataFrame:
    """Per trade of ``t`` (sorted by time, within ``[lo_ms, hi_ms)``): ``_r2``, the squared
    log return ln(p_i / p_(i-1)) from the previous trade of its window (0 for a window's first
    trade: the shift stays inside the window), and ``_rel``, its price less its window's first
    price (better conditioned than the price; exactly 0 when flat).

    In numpy on whole columns: ``ln`` there is vectorised (~0.5 ns a trade against Polars'
    ~7, which made the realized variance over half of the features' time), and each value
    depends only on its window's trades, so a window built alone (live) and within a day
    (batch) get the same per-trade values. On a CPU with AVX-512 numpy's ``ln`` is its own,
    not the C library's (which Polars and DuckDB use): it differs by 1 ulp for a few ratios
    in 10,000 on some price grids, so a realized variance may differ from the SQL build's
    in the last bit (about 1e-16 relative; the tests allow 1e-12)."""
    ts = t["trade_time"].dt.cast_time_unit("us").to_physical().to_numpy()
    p = t["price"].to_numpy()
    n = len(p)
    # The first trade of each window, whose starts are the multiples of every_ms (as
    # group_by_dynamic's; from the one holding lo_ms, should lo_ms not be one).
    edges = np.arange(lo_ms // every_ms * every_ms, hi_ms, every_ms, dtype=np.int64) * 1000
    starts = np.unique(np.searchsorted(ts, edges))
    starts = starts[starts < n]
    r2 = np.empty(n)
    r2[:1] = 0.0  # the first trade starts a window
    tail = r2[1:]
    rel = np.repeat(p[starts], np.diff(starts, append=n))
    with np.errstate(all="ignore"):  # as Polars: a zero or infinite price gives inf or NaN
        np.divide(p[1:], p[:-1], out=tail)
        np.log(tail, out=tail)
        np.multiply(tail, tail, out=tail)
        np.subtract(p, rel, out=rel)
    r2[starts] = 0.0
    return t.with_columns(_r2=pl.Series(r2), _rel=pl.Series(rel))


def window_features(
    trades: pl.DataFrame, every_ms: int, lo_ms: int, hi_ms: int, moments: bool = False
) -> pl.DataFrame:
    """Windows of ``every_ms`` starting at every multiple of it in ``[lo_ms, hi_ms)``
    (both multiples of ``every_ms``), from trades sorted by time then id. With ``moments``,
    also ``_dmean`` and ``_var``, the mean and sample variance of the prices less the window's
    first price: what ``roll_up`` needs to combine volatility exactly."""
    t = _per_trade(_within(trades, lo_ms, hi_ms), every_ms, lo_ms, hi_ms)
    rel = pl.col("_rel")
    extra = {"_dmean": rel.mean(), "_var": rel.var(ddof=1)} if moments else {}
    agg = (
        t.set_sorted("trade_time")
        # Taker buys' quantity as a column of its own, summed below (a filter inside the
        # aggregation cost an eighth of it); a null is_buyer_maker is not a buy, as in SQL.
        .with_columns(
            _buy=pl.when(~pl.col("is_buyer_maker")).then(pl.col("qty")).otherwise(0.0),
            _pq=pl.col("price") * pl.col("qty"),
        )
        .group_by_dynamic("trade_time", every=f"{every_ms}ms", closed="left", label="left")
        .agg(
            trade_count=pl.len().cast(pl.Int64),
            volume=pl.col("qty").sum(),
            quote_volume=pl.col("_pq").sum(),
            open=pl.col("price").first(),
            high=pl.col("price").max(),
            low=pl.col("price").min(),
            close=pl.col("price").last(),
            volatility=rel.std(ddof=1),
            # ln of the ratio, not a difference of lns: exactly 0 for an unchanged price, and
            # the SQL build's operations (the order of the sum differs, and numpy's ln may
            # differ from DuckDB's in the last bit: ``_per_trade``).
            realized_variance=pl.col("_r2").sum(),
            buy_volume=pl.col("_buy").sum(),
            **extra,
        )
        .rename({"trade_time": "window_start"})
    )
    return _on_grid(agg, every_ms, lo_ms, hi_ms, list(extra))


def _on_grid(
    agg: pl.DataFrame, every_ms: int, lo_ms: int, hi_ms: int, extra: Sequence[str] = ()
) -> pl.DataFrame:
    """The windows with trades (``agg``) on the complete grid, empty windows filled in, and
    the features derived from the aggregates."""
    grid = pl.DataFrame(
        {
            "window_start": pl.datetime_range(
                _ts(lo_ms), _ts(hi_ms), f"{every_ms}ms", closed="left", eager=True
            ).cast(_UTC)
        }
    )
    return (
        grid.join(agg, on="window_start", how="left")
        .with_columns(
            pl.col("trade_count", "volume", "quote_volume", "buy_volume").fill_null(0),
            pl.col("volatility", "realized_variance").fill_null(0.0),
            parkinson_variance=(
                _square((pl.col("high") / pl.col("low")).log()) * _PARKINSON
            ).fill_null(0.0),
        )
        .with_columns(
            avg_trade_size=pl.when(pl.col("trade_count") > 0).then(
                pl.col("volume") / pl.col("trade_count")
            ),
            **{"return": pl.col("close") / pl.col("open") - 1},
            vwap=pl.when(pl.col("volume") > 0).then(pl.col("quote_volume") / pl.col("volume")),
            gap=pl.lit(False),
        )
        .select(*WINDOW_COLUMNS, *extra)
    )


def roll_up(fine: pl.DataFrame, every_ms: int, lo_ms: int, hi_ms: int) -> pl.DataFrame:
    """Windows of ``every_ms`` in ``[lo_ms, hi_ms)`` from finer windows built with
    ``moments`` (their size divides ``every_ms``; they cover the span). Equal to building
    from the trades, up to the order of sums:

    - counts and sums add; open, close, high, low are the first, last, max and min;
    - volatility combines the finer windows' means and variances (Chan et al.), each taken
      about the coarse window's open price, so a flat window stays exactly 0;
    - realized variance adds the finer windows' own and the tick returns between them:
      from the close of one finer window with trades to the open of the next, in the same
      coarse window.
    """
    key = pl.col("window_start").dt.truncate(f"{every_ms}ms")
    n = pl.col("trade_count").cast(pl.Float64)
    f = (
        fine.filter(
            (pl.col("trade_count") > 0)
            & (pl.col("window_start") >= _ts(lo_ms))
            & (pl.col("window_start") < _ts(hi_ms))
        )
        .with_columns(_key=key)
        .with_columns(
            _d=(pl.col("open") - pl.col("open").first().over("_key")) + pl.col("_dmean"),
            _bridge=pl.when(pl.col("_key") == pl.col("_key").shift())
            .then(_square((pl.col("open") / pl.col("close").shift()).log()))
            .otherwise(0.0),
        )
    )
    n_all = pl.col("trade_count").sum().cast(pl.Float64)
    mean_d = (n * pl.col("_d")).sum() / n_all
    m2 = ((n - 1) * pl.col("_var").fill_null(0.0)).sum() + (n * (pl.col("_d") - mean_d) ** 2).sum()
    agg = (
        f.group_by("_key", maintain_order=True)
        .agg(
            trade_count=pl.col("trade_count").sum(),
            volume=pl.col("volume").sum(),
            quote_volume=pl.col("quote_volume").sum(),
            open=pl.col("open").first(),
            high=pl.col("high").max(),
            low=pl.col("low").min(),
            close=pl.col("close").last(),
            volatility=pl.when(n_all > 1).then((m2 / (n_all - 1)).sqrt()),
            realized_variance=pl.col("realized_variance").sum() + pl.col("_bridge").sum(),
            buy_volume=pl.col("buy_volume").sum(),
        )
        .rename({"_key": "window_start"})
    )
    return _on_grid(agg, every_ms, lo_ms, hi_ms)


def mark_gaps(
    windows: pl.DataFrame, every_ms: int, gaps: Sequence[tuple[int, int]]
) -> pl.DataFrame:
    """Set ``gap`` on every window that overlaps a span ``[after_ms, before_ms]`` in which
    trades are missing (vectorized: a difference array over the window starts)."""
    if not gaps or windows.is_empty():
        return windows
    starts = windows["window_start"].dt.epoch("ms").to_numpy()
    g = np.asarray(gaps, dtype=np.int64)
    lo = np.searchsorted(starts, g[:, 0] - every_ms, side="right")
    hi = np.searchsorted(starts, g[:, 1], side="right")
    mark = np.zeros(len(starts) + 1, dtype=np.int64)
    np.add.at(mark, lo, 1)
    np.add.at(mark, hi, -1)
    touched = np.cumsum(mark[:-1]) > 0
    return windows.with_columns(gap=pl.Series(touched) | pl.col("gap"))


def id_gaps(trades: pl.DataFrame, prev: tuple[int, int] | None) -> list[tuple[int, int]]:
    """Spans (UTC ms) between consecutive stored trades whose ids are not consecutive."""
    if trades.is_empty():
        return []
    # numpy on the id column, not a frame of shifted columns: this runs on every day's
    # millions of trades, and the times are only looked up where the ids jump.
    ids = trades["trade_id"].to_numpy()
    at = np.flatnonzero(np.diff(ids) > 1)
    out = []
    if prev is not None and ids[0] - prev[0] > 1:
        out.append((prev[1], _ms(trades, 0)))
    if len(at):
        ms = trades["trade_time"].dt.epoch("ms").to_numpy()
        out += zip(ms[at].tolist(), ms[at + 1].tolist(), strict=True)
    return out


def _ms(trades: pl.DataFrame, i: int) -> int:
    """UTC ms of trade ``i``."""
    return int(trades["trade_time"].slice(i, 1).dt.epoch("ms")[0])


def _prefetched(index: TradeIndex, bounds: Sequence[tuple[int, int]]) -> Iterator[pl.DataFrame]:
    """``index.load`` of each chunk, the next one read on a thread while the caller works on
    this one: reading (Parquet decoding) and the aggregation overlap, and at most two chunks
    are in memory."""
    if not bounds:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tw-read") as pool:
        ahead = pool.submit(index.load, *bounds[0])
        for nxt in bounds[1:]:
            fresh = ahead.result()
            ahead = pool.submit(index.load, *nxt)
            yield fresh
        yield ahead.result()


def build_windows(
    index: TradeIndex,
    everies: Sequence[int],
    start_ms: int | None = None,
    end_ms: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_final: Callable[[pl.DataFrame], None] | None = None,
) -> dict[int, pl.DataFrame]:
    """Windows for each size in ``everies`` (ms) from one scan of the store.

    Without ``start_ms``/``end_ms`` the grid runs from the first to the last stored trade.
    Trades are read a day at a time; a window that straddles a chunk boundary is finished
    with the next chunk, so any size works, including ones that do not divide a day. Only
    the finest size, and sizes it does not divide, are built from the trades; the others are
    rolled up from the finest (``roll_up``), which costs next to nothing.

    ``on_final`` (one size only) is handed the windows during the scan, in time order, as
    soon as their ``gap`` is known: once the next chunk with trades has been read (a jump in
    the ids between two chunks touches the windows on both sides of it; one inside a later
    chunk cannot reach back). It sees every window with trades the table will hold, the same
    values; the table may drop empty windows at either end."""
    if on_final is not None and len(set(everies)) != 1:
        raise ValueError("on_final needs exactly one window size")
    first = index.first_hour * 3_600_000 if start_ms is None else start_ms
    end = (index.last_hour + 1) * 3_600_000 if end_ms is None else end_ms
    if end <= first:
        raise DataError("the time range is empty; --end must be after --start")
    # Windows are always complete: from the window holding `first` to the one holding `end - 1`.
    span = {e: (first // e * e, -(-end // e) * e) for e in everies}
    fine = min(everies)
    rolled = [e for e in dict.fromkeys(everies) if e != fine and e % fine == 0]
    direct = [e for e in dict.fromkeys(everies) if e not in rolled]
    # The finest size is built over every span it is rolled up into.
    stop = dict(span)
    stop[fine] = (
        min(span[e][0] for e in [fine, *rolled]),
        max(span[e][1] for e in [fine, *rolled]),
    )
    lo = {e: stop[e][0] for e in direct}
    end_all = max(stop[e][1] for e in direct)
    done: dict[int, list[pl.DataFrame]] = {e: [] for e in direct}
    carry = EMPTY_TRADES
    prev: tuple[int, int] | None = None
    gaps: list[tuple[int, int]] = list(index.recorded_gaps())
    seen_first: int | None = None
    seen_last: int | None = None
    bounds = list(chunk_bounds(min(lo.values()), end_all))
    every = everies[0]
    pending: list[pl.DataFrame] = []  # built, their gaps not yet known (for on_final)
    for n, (fresh, (_, c_hi)) in enumerate(zip(_prefetched(index, bounds), bounds, strict=True)):
        gaps += id_gaps(fresh, prev)
        if not fresh.is_empty():
            if on_final is not None:
                for w in pending:  # their gaps are all known now
                    on_final(mark_gaps(w, every, gaps))
                pending = []
            last_row = fresh.select(
                pl.col("trade_id").last(), pl.col("trade_time").last().dt.epoch("ms")
            ).row(0)
            prev = (int(last_row[0]), int(last_row[1]))
            seen_first = (
                seen_first
                if seen_first is not None
                else int(fresh["trade_time"][0].timestamp() * 1000)
            )
            seen_last = prev[1]
        trades = pl.concat([carry, fresh]) if not carry.is_empty() else fresh
        for e in direct:
            hi = stop[e][1] if c_hi >= stop[e][1] else c_hi // e * e
            if hi > lo[e]:
                done[e].append(
                    window_features(trades, e, lo[e], hi, moments=bool(rolled) and e == fine)
                )
                if on_final is not None:
                    pending.append(done[e][-1])
                lo[e] = hi
        keep_from = min(lo.values())
        carry = trades.filter(pl.col("trade_time") >= _ts(keep_from))
        if progress:
            progress(n + 1, len(bounds))
    if on_final is not None:
        for w in pending:
            on_final(mark_gaps(w, every, gaps))
    built = {
        e: pl.concat(done[e]) if done[e] else window_features(EMPTY_TRADES, e, 0, 0, e == fine)
        for e in direct
    }
    for e in rolled:
        built[e] = roll_up(built[fine], e, *span[e])
    out = {}
    for e in everies:
        lo_e, hi_e = span[e]
        w = (
            built[e]
            .filter((pl.col("window_start") >= _ts(lo_e)) & (pl.col("window_start") < _ts(hi_e)))
            .select(WINDOW_COLUMNS)
        )
        if start_ms is None and end_ms is None and seen_first is not None and seen_last is not None:
            w = w.filter(
                (pl.col("window_start") >= _ts(seen_first // e * e))
                & (pl.col("window_start") <= _ts(seen_last // e * e))
            )
        out[e] = mark_gaps(w, e, gaps)
    return out


# Tasks: the same windows built a span at a time, on an executor.


@dataclass(frozen=True)
class _Plan:
    """Which windows a build makes over ``[first_ms, end_ms)``, as ``build_windows`` does:
    ``span`` per size (from the window holding ``first_ms`` to the one holding ``end_ms - 1``),
    the finest size and the sizes rolled up from it, and ``stop``, where each size built from
    the trades is built (the finest over every span it is rolled up into)."""

    span: dict[int, tuple[int, int]]
    fine: int
    rolled: list[int]
    direct: list[int]
    stop: dict[int, tuple[int, int]]

    @property
    def read(self) -> tuple[int, int]:
        """The UTC ms whose trades the build reads (and checks for id gaps)."""
        return min(lo for lo, _ in self.stop.values()), max(hi for _, hi in self.stop.values())


def _plan(everies: Sequence[int], first: int, end: int) -> _Plan:
    span = {e: (first // e * e, -(-end // e) * e) for e in everies}
    fine = min(everies)
    rolled = [e for e in dict.fromkeys(everies) if e != fine and e % fine == 0]
    direct = [e for e in dict.fromkeys(everies) if e not in rolled]
    stop = {e: span[e] for e in direct}
    stop[fine] = (
        min(span[e][0] for e in [fine, *rolled]),
        max(span[e][1] for e in [fine, *rolled]),
    )
    return _Plan(span, fine, rolled, direct, stop)


def _range(index: StoreIndex, start_ms: int | None, end_ms: int | None) -> tuple[int, int]:
    """``[start_ms, end_ms)``, by default the stored hours; DataError when it is empty."""
    first = index.first_hour * 3_600_000 if start_ms is None else start_ms
    end = (index.last_hour + 1) * 3_600_000 if end_ms is None else end_ms
    if end <= first:
        raise DataError("the time range is empty; --end must be after --start")
    return first, end


def _day(ms: int) -> str:
    return _dt(ms).date().isoformat()


@dataclass(frozen=True)
class SpanTask:
    """One task of a window build: the windows of every size in ``everies`` (ms) that start
    in ``[lo_ms, hi_ms)`` (UTC ms), from the trades of ``symbol`` in the store at ``root``.
    ``first_ms`` and ``end_ms`` are the whole build's range, which decides each size's grid."""

    root: Path
    symbol: str
    everies: tuple[int, ...]
    first_ms: int
    end_ms: int
    lo_ms: int
    hi_ms: int

    @property
    def name(self) -> str:
        """``BTCUSDT 2024-08-08``, or ``BTCUSDT 2024-08-08..2024-08-09``: the UTC dates of the
        span, less what a boundary moved on past the span's last midnight (to a multiple of
        every size: less than their least common multiple) adds to it."""
        lo = _day(self.lo_ms)
        hi = _day(max(self.lo_ms, self.hi_ms - math.lcm(*self.everies)))
        return f"{self.symbol} {lo}" if lo == hi else f"{self.symbol} {lo}..{hi}"


@dataclass(frozen=True)
class SpanWindows:
    """What one ``SpanTask`` gives: the windows of each size that start in its span
    (``WINDOW_COLUMNS``, ``gap`` not yet set), the first and last stored trade in the span as
    (trade id, UTC ms), None for a span without trades, and the id gaps (UTC ms) inside it."""

    lo_ms: int
    hi_ms: int
    windows: dict[int, pl.DataFrame]
    first: tuple[int, int] | None
    last: tuple[int, int] | None
    gaps: tuple[tuple[int, int], ...]


def span_tasks(
    index: StoreIndex,
    everies: Sequence[int],
    start_ms: int | None = None,
    end_ms: int | None = None,
    days: int = 1,
) -> list[SpanTask]:
    """The window build of ``build_windows`` (same arguments) cut into tasks of about
    ``days`` UTC days, in time order, together covering every trade the build reads.

    No window may straddle two tasks, so a boundary is a multiple of every size: a UTC
    midnight (every ``days`` days from the first) moved on to the first multiple of the
    sizes' least common multiple at or after it. When every size divides a day, that is the
    midnight itself; for 7 s it is at most 7 s later. A least common multiple longer than
    ``days`` days makes the tasks that long (one task when it exceeds the range), so memory is
    bounded by the longer of the two."""
    if days < 1:
        raise InputError(f"tasks of {days} days: give at least 1")
    first, end = _range(index, start_ms, end_ms)
    lo, hi = _plan(everies, first, end).read
    step = math.lcm(*everies)
    cuts = range((lo // DAY_MS + days) * DAY_MS, hi, days * DAY_MS)
    edges = [lo, *sorted({b for c in cuts if (b := -(-c // step) * step) < hi}), hi]
    return [
        SpanTask(index.root, index.symbol, tuple(everies), first, end, a, b)
        for a, b in itertools.pairwise(edges)
    ]


def build_span(task: SpanTask) -> SpanWindows:
    """The windows of one task, from its trades (read a UTC day at a time, held together):
    a pure function of the store, so a task can run anywhere and be tried again."""
    plan = _plan(task.everies, task.first_ms, task.end_ms)
    # ``load`` lists the files of each day it reads: the task need not carry the whole index.
    index = StoreIndex(task.root, task.symbol, {})
    chunks = [index.load(a, b) for a, b in chunk_bounds(task.lo_ms, task.hi_ms)]
    trades = pl.concat(chunks) if len(chunks) > 1 else chunks[0]

    def within(lo_hi: tuple[int, int]) -> tuple[int, int]:
        return max(lo_hi[0], task.lo_ms), min(lo_hi[1], task.hi_ms)

    built = {}
    for e in plan.direct:
        lo, hi = within(plan.stop[e])
        if lo < hi:
            moments = bool(plan.rolled) and e == plan.fine
            built[e] = window_features(trades, e, lo, hi, moments)
    windows = {}
    for e in dict.fromkeys(task.everies):
        lo, hi = within(plan.span[e])
        if lo < hi:
            w = roll_up(built[plan.fine], e, lo, hi) if e in plan.rolled else built[e]
            windows[e] = w.filter(
                (pl.col("window_start") >= _ts(lo)) & (pl.col("window_start") < _ts(hi))
            ).select(WINDOW_COLUMNS)
    ends = trades.select(
        pl.col("trade_id").first().alias("first_id"),
        pl.col("trade_time").first().dt.epoch("ms").alias("first_ms"),
        pl.col("trade_id").last().alias("last_id"),
        pl.col("trade_time").last().dt.epoch("ms").alias("last_ms"),
    ).row(0)
    return SpanWindows(
        task.lo_ms,
        task.hi_ms,
        windows,
        first=None if trades.is_empty() else (int(ends[0]), int(ends[1])),
        last=None if trades.is_empty() else (int(ends[2]), int(ends[3])),
        gaps=tuple(id_gaps(trades, None)),
    )


def assemble(
    index: StoreIndex,
    everies: Sequence[int],
    start_ms: int | None,
    end_ms: int | None,
    parts: Sequence[SpanWindows],
) -> dict[int, pl.DataFrame]:
    """``build_windows`` (same arguments) from the results of its ``span_tasks``, in order:
    the spans' windows one after the other, gaps flagged from the recorded gaps, the id gaps
    inside each span and those between the last trade of a span and the first of the next
    span with trades; without a range, trimmed to the first and last trade seen. ValueError
    when ``parts`` do not cover the build's span one after the other."""
    first, end = _range(index, start_ms, end_ms)
    plan = _plan(everies, first, end)
    edges = [plan.read[0], *(p.hi_ms for p in parts)]
    if [p.lo_ms for p in parts] != edges[:-1] or edges[-1] != plan.read[1]:
        raise ValueError("the parts are not the results of this build's span_tasks, in order")
    gaps: list[tuple[int, int]] = list(index.recorded_gaps())
    for p in parts:
        gaps += p.gaps
    ends = [(p.first, p.last) for p in parts if p.first is not None and p.last is not None]
    for (_, last), (first_next, _) in itertools.pairwise(ends):
        if first_next[0] - last[0] > 1:  # ids not consecutive, as ``id_gaps`` judges them
            gaps.append((last[1], first_next[1]))
    out = {}
    for e in everies:
        w = pl.concat([p.windows[e] for p in parts if e in p.windows])
        if start_ms is None and end_ms is None and ends:
            seen_first, seen_last = ends[0][0][1], ends[-1][1][1]
            w = w.filter(
                (pl.col("window_start") >= _ts(seen_first // e * e))
                & (pl.col("window_start") <= _ts(seen_last // e * e))
            )
        out[e] = mark_gaps(w, e, gaps)
    return out


def build_windows_with(
    executor: Executor,
    index: StoreIndex,
    everies: Sequence[int],
    start_ms: int | None = None,
    end_ms: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    days: int = 1,
) -> dict[int, pl.DataFrame]:
    """``build_windows`` as independent tasks of about ``days`` UTC days on ``executor``:
    each task holds its days' trades, this process only the windows. ``progress(done,
    total)`` counts finished tasks. The same tables as ``build_windows``, bit for bit."""
    tasks = span_tasks(index, everies, start_ms, end_ms, days)
    parts = executor.map(
        build_span,
        tasks,
        lambda t: t.name,
        (lambda stage, done, total: progress(done, total)) if progress else _no_progress,
        "windows",
    )
    return assemble(index, everies, start_ms, end_ms, parts)


def _no_progress(stage: str, done: int, total: int) -> None:
    pass
