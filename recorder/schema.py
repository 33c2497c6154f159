"""The stored trade table: Parquet columns and how NDJSON lines map onto them.

One row per trade, key ``(symbol, trade_id)``; ``symbol`` comes from the Hive path.

    column            type                 from the stream (``data``)   from REST
    trade_id          Int64                t                            id
    price, qty        Float64              p, q                         price, qty
    quote_qty         Float64 (nullable)   -                            quoteQty
    trade_time        Datetime(us, UTC)    T                            time
    event_time        Datetime(us, UTC)    E                            -
    is_buyer_maker    Boolean              m                            isBuyerMaker
    is_best_match     Boolean              M                            isBestMatch
    buyer_order_id    Int64 (nullable)     b (before 2024-06-18)        -
    seller_order_id   Int64 (nullable)     a (before 2024-06-18)        -
    recv_time         Datetime(us, UTC)    local receive time           local receive time
    source            String               "ws"                         "rest"   ("archive": import)
    event_type        String               e                            -
    extra             String (nullable)    JSON of unknown fields and of any p/q a float64
                                           cannot hold exactly
"""

from __future__ import annotations

from typing import Any

import polars as pl

__all__ = ["LINE_SCHEMA", "PARQUET_SCHEMA", "SOURCE_RANK", "lines_to_table"]

_US = pl.Datetime("us", "UTC")

PARQUET_SCHEMA: dict[str, pl.DataType] = {
    "trade_id": pl.Int64(),
    "price": pl.Float64(),
    "qty": pl.Float64(),
    "quote_qty": pl.Float64(),
    "trade_time": _US,
    "event_time": _US,
    "is_buyer_maker": pl.Boolean(),
    "is_best_match": pl.Boolean(),
    "buyer_order_id": pl.Int64(),
    "seller_order_id": pl.Int64(),
    "recv_time": _US,
    "source": pl.String(),
    "event_type": pl.String(),
    "extra": pl.String(),
}

# When the same trade is stored twice, keep the richest copy.
SOURCE_RANK = {"ws": 0, "rest": 1, "archive": 2}

_WS_DATA = pl.Struct(
    {
        "e": pl.String,
        "E": pl.Int64,
        "s": pl.String,
        "t": pl.Int64,
        "p": pl.String,
        "q": pl.String,
        "T": pl.Int64,
        "m": pl.Boolean,
        "M": pl.Boolean,
        "b": pl.Int64,
        "a": pl.Int64,
    }
)
_REST = pl.Struct(
    {
        "id": pl.Int64,
        "price": pl.String,
        "qty": pl.String,
        "quoteQty": pl.String,
        "time": pl.Int64,
        "isBuyerMaker": pl.Boolean,
        "isBestMatch": pl.Boolean,
    }
)
LINE_SCHEMA: dict[str, Any] = {
    "recv_time": pl.Int64,
    "extra": pl.String,
    "symbol": pl.String,
    "frame": pl.Struct({"stream": pl.String, "data": _WS_DATA}),
    "rest": _REST,
}


def _ms(expr: pl.Expr) -> pl.Expr:
    return (expr * 1000).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")


def lines_to_table(lines: pl.DataFrame) -> pl.DataFrame:
    """Typed trade rows (``PARQUET_SCHEMA``) from NDJSON lines read with ``LINE_SCHEMA``."""
    d = pl.col("frame").struct.field("data")
    r = pl.col("rest")
    is_ws = d.struct.field("t").is_not_null()
    out = lines.select(
        trade_id=pl.coalesce(d.struct.field("t"), r.struct.field("id")),
        price=pl.coalesce(d.struct.field("p"), r.struct.field("price")).cast(pl.Float64),
        qty=pl.coalesce(d.struct.field("q"), r.struct.field("qty")).cast(pl.Float64),
        quote_qty=r.struct.field("quoteQty").cast(pl.Float64),
        trade_time=_ms(pl.coalesce(d.struct.field("T"), r.struct.field("time"))),
        event_time=_ms(d.struct.field("E")),
        is_buyer_maker=pl.coalesce(d.struct.field("m"), r.struct.field("isBuyerMaker")),
        is_best_match=pl.coalesce(d.struct.field("M"), r.struct.field("isBestMatch")),
        buyer_order_id=d.struct.field("b"),
        seller_order_id=d.struct.field("a"),
        recv_time=pl.col("recv_time").cast(pl.Datetime("us")).dt.replace_time_zone("UTC"),
        source=pl.when(is_ws).then(pl.lit("ws")).otherwise(pl.lit("rest")),
        event_type=d.struct.field("e"),
        extra=pl.col("extra"),
    )
    return out.cast(PARQUET_SCHEMA)  # type: ignore[arg-type]
