"""The prototype's window files, read so its numbers can be reproduced exactly.

    timestamp,trade_count,volume,avg_trade_size,return,volatility,score,prediction
    2024-08-08 23:54:00,108,0.61531,0.0056973,-0.00012,4.32,0.031,1

The prototype skipped empty windows, so rows are irregular in time; a horizon ``H`` means the
next ``H / every`` rows, as it computed them (the prototype closed its windows live, so its
last row is a complete window). Rows with an empty ``score`` and ``prediction`` were not
scored.

A file that would silently change the numbers is refused, naming its first bad line (the
header is line 1): timestamps that are not times, not increasing or repeated; features
that are empty, not numbers, NaN or infinite; a trade count that is not a whole number of
at least 1; a score that is not finite; a prediction other than -1 (flagged) and 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from engine.errors import DataError
from engine.horizons import Horizon, forward_sum

__all__ = ["PROTOTYPE_COLUMNS", "prototype_moves", "read_prototype_csv"]

PROTOTYPE_COLUMNS = (
    "timestamp",
    "trade_count",
    "volume",
    "avg_trade_size",
    "return",
    "volatility",
    "score",
    "prediction",
)
_FEATURES = ("trade_count", "volume", "avg_trade_size", "return", "volatility")
_HEADER_LINES = 1


def read_prototype_csv(path: Path) -> pl.DataFrame:
    """The prototype's CSV, typed: ``timestamp`` as written, and ``window_start`` the same
    time parsed (UTC; a time without a zone is taken as UTC). DataError naming the file, and
    the line for a bad row."""
    try:
        df = pl.read_csv(path, infer_schema_length=0)
    except FileNotFoundError:
        raise DataError(f"{path} does not exist") from None
    except Exception as e:
        raise DataError(f"{path} is not a readable CSV file ({str(e).splitlines()[0]})") from None
    missing = [c for c in PROTOTYPE_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(
            f"{path} lacks the prototype's columns {', '.join(missing)}; "
            f"expected {','.join(PROTOTYPE_COLUMNS)}"
        )
    raw = df.select(pl.col(c).str.strip_chars() for c in PROTOTYPE_COLUMNS)
    try:
        ts = raw["timestamp"].str.to_datetime(strict=False, time_unit="us")
    except Exception:  # no format fits even the first timestamp
        ts = pl.Series("timestamp", [None] * raw.height, dtype=pl.Datetime("us"))
    num = {
        c: raw[c].replace("", None).cast(pl.Float64, strict=False) for c in PROTOTYPE_COLUMNS[1:]
    }
    problems: list[tuple[int, str]] = []  # (row, what): the first row's, in check order

    def first(bad: np.ndarray, what) -> None:
        idx = np.flatnonzero(bad)
        if len(idx):
            problems.append((int(idx[0]), what(int(idx[0]))))

    given = raw.select(pl.all().is_not_null() & (pl.all() != ""))
    first(~given["timestamp"].to_numpy(), lambda i: "timestamp is empty")
    first(
        (given["timestamp"] & ts.is_null()).to_numpy(),
        lambda i: f"timestamp {raw['timestamp'][i]!r} is not a time",
    )
    t = ts.dt.epoch("us").to_numpy()
    with np.errstate(invalid="ignore"):
        step = np.diff(t.astype(float))
    first(
        np.concatenate([[False], step == 0]),
        lambda i: f"timestamp {raw['timestamp'][i]} repeats line {i - 1 + _HEADER_LINES + 1}",
    )
    first(
        np.concatenate([[False], step < 0]),
        lambda i: (
            f"timestamp {raw['timestamp'][i]} is before line {i + _HEADER_LINES}'s "
            f"{raw['timestamp'][i - 1]}; rows must be in time order"
        ),
    )
    for c in PROTOTYPE_COLUMNS[1:]:
        v, g = num[c].to_numpy(), given[c].to_numpy()
        first(g & num[c].is_null().to_numpy(), lambda i, c=c: f"{c} {raw[c][i]!r} is not a number")
        with np.errstate(invalid="ignore"):
            first(g & ~np.isfinite(v), lambda i, c=c: f"{c} is {raw[c][i]}; it must be finite")
        if c in _FEATURES:
            first(~g, lambda i, c=c: f"{c} is empty")
    tc = num["trade_count"].to_numpy()
    with np.errstate(invalid="ignore"):
        first(
            np.isfinite(tc) & ((tc != np.round(tc)) | (tc < 1)),
            lambda i: f"trade_count {raw['trade_count'][i]} is not a whole number of trades (>= 1)",
        )
        pred = num["prediction"].to_numpy()
        first(
            np.isfinite(pred) & (pred != -1) & (pred != 1),
            lambda i: f"prediction {raw['prediction'][i]} is neither -1 (flagged) nor 1",
        )
    if problems:
        row, what = min(problems, key=lambda p: p[0])  # stable: the first check wins a tie
        raise DataError(f"{path} line {row + _HEADER_LINES + 1}: {what}")
    return pl.DataFrame(
        {
            "timestamp": raw["timestamp"],
            "window_start": (
                ts.dt.replace_time_zone("UTC")
                if getattr(ts.dtype, "time_zone", None) is None
                else ts.dt.convert_time_zone("UTC")
            ),
            "trade_count": num["trade_count"].cast(pl.Int64),
            **{c: num[c] for c in ("volume", "avg_trade_size", "return", "volatility", "score")},
            "prediction": num["prediction"].cast(pl.Int8),
        }
    )


def prototype_moves(rows: pl.DataFrame, horizons: Sequence[Horizon]) -> pl.DataFrame:
    """``abs_return_sum@<label>``: sum of |return| over the next k rows (null past the end)."""
    r = rows["return"].abs().fill_null(0.0).to_numpy()
    return pl.DataFrame(
        {
            f"abs_return_sum@{h.label}": pl.Series(forward_sum(r, h.k)).fill_nan(None)
            for h in horizons
        }
    )
