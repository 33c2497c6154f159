"""The prototype's window files, read so its numbers can be reproduced exactly.

    timestamp,trade_count,volume,avg_trade_size,return,volatility,score,prediction
    2024-08-08 23:54:00,108,0.61531,0.0056973,-0.00012,4.32,0.031,1

The prototype skipped empty windows, so rows are irregular in time; a horizon ``H`` means the
next ``H / every`` rows, as it computed them. Rows with an empty ``prediction`` were not scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

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


def read_prototype_csv(path: Path) -> pl.DataFrame:
    """The prototype's CSV, typed; DataError naming the file for anything unusable."""
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
    try:
        return df.select(
            pl.col("timestamp"),
            pl.col("trade_count").cast(pl.Int64),
            *(
                pl.col(c).cast(pl.Float64)
                for c in ("volume", "avg_trade_size", "return", "volatility")
            ),
            pl.col("score").replace("", None).cast(pl.Float64),
            pl.col("prediction").replace("", None).cast(pl.Float64).cast(pl.Int8),
        )
    except Exception as e:
        raise DataError(
            f"{path} has a value that is not a number ({str(e).splitlines()[0][:100]})"
        ) from None


def prototype_moves(rows: pl.DataFrame, horizons: Sequence[Horizon]) -> pl.DataFrame:
    """``abs_return_sum@<label>``: sum of |return| over the next k rows (null past the end)."""
    r = rows["return"].abs().fill_null(0.0).to_numpy()
    return pl.DataFrame(
        {
            f"abs_return_sum@{h.label}": pl.Series(forward_sum(r, h.k)).fill_nan(None)
            for h in horizons
        }
    )
