"""Writing tables: ``--format table|csv|json|ndjson`` to stdout, or ``--output FILE``
(format from the suffix: .parquet, .csv, .json, .ndjson). Times are ISO 8601 UTC in text."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, TextIO

import orjson
import polars as pl

from engine.errors import InputError

__all__ = ["FORMATS", "SUFFIXES", "emit_table", "output_kind", "to_text_frame"]

FORMATS = ("table", "csv", "json", "ndjson")
SUFFIXES = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".ndjson": "ndjson"}


def to_text_frame(df: pl.DataFrame) -> pl.DataFrame:
    """Datetimes as ``2024-08-08T23:54:00.000Z`` strings, for csv/json/table."""
    return df.with_columns(
        pl.col(c).dt.convert_time_zone("UTC").dt.strftime("%Y-%m-%dT%H:%M:%S%.3fZ")
        for c, t in df.schema.items()
        if isinstance(t, pl.Datetime)
    )


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        a = abs(v)
        if a >= 1000:
            return f"{v:.2f}"
        if a >= 1 or a == 0:
            return f"{v:.4f}"
        return f"{v:.4g}"
    return str(v)


def _table(df: pl.DataFrame, out: TextIO) -> None:
    from recorder.cliutil import write_table

    write_table(df.columns, [[_fmt(v) for v in r] for r in df.rows()], out)


def output_kind(output: Path) -> str:
    """The format an ``--output`` path's suffix names; InputError for any other suffix."""
    kind = SUFFIXES.get(output.suffix.lower())
    if kind is None:
        raise InputError(
            f"cannot tell the format of {output}; end it in .parquet, .csv, .json or .ndjson"
        )
    return kind


def emit_table(
    df: pl.DataFrame,
    fmt: str,
    output: Path | None = None,
    envelope: dict[str, Any] | None = None,
    out: TextIO | None = None,
) -> None:
    """Write ``df``; ``envelope`` (for json) wraps the rows as ``{..., "rows": [...]}``."""
    out = out or sys.stdout
    if output is not None:
        kind = output_kind(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        if kind == "parquet":
            df.write_parquet(output)
            return
        with open(output, "w") as f:
            emit_table(df, kind, None, envelope, f)
        return
    text = to_text_frame(df)
    if fmt == "table":
        _table(text, out)
    elif fmt == "csv":
        out.write(text.write_csv())
    elif fmt == "json":
        rows = text.to_dicts()
        body = {**envelope, "rows": rows} if envelope is not None else rows
        out.write(
            orjson.dumps(body, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode()
            + "\n"
        )
    elif fmt == "ndjson":
        for r in text.to_dicts():
            out.write(orjson.dumps(r).decode() + "\n")
    else:
        raise InputError(f"unknown format {fmt!r}; choose table, csv, json or ndjson")
