"""Closing an hour: its NDJSON (and any earlier Parquet) become one Parquet file.

Steps, each safe to crash in and to rerun:
1. read every row of the hour (Parquet plus NDJSON), quarantining lines that do not parse;
2. keep one row per trade id (the richest source), sort by trade id;
3. write under a temporary name, fsync, rename over ``trades.parquet``, fsync the directory;
4. read the file back and compare it with what was meant to be written;
5. only then delete the NDJSON files that went into it.
A crash before 5 leaves rows in both places; readers deduplicate and the next run repairs it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
import polars as pl

from recorder import layout
from recorder.errors import CompactionError
from recorder.schema import SOURCE_RANK
from recorder.store import BadLine, hour_ndjson, read_hour
from recorder.writer import fsync_dir

__all__ = ["CompactResult", "closed_hours", "compact_hour", "merge_rows", "write_parquet_atomic"]


@dataclass(slots=True)
class CompactResult:
    hour_dir: Path
    rows: int
    ndjson_files: int
    rejected_lines: int


def _quarantine(root: Path, bad: list[BadLine]) -> None:
    if not bad:
        return
    d = root / layout.REJECTS
    d.mkdir(parents=True, exist_ok=True)
    now = time.time()
    recs = b"".join(
        orjson.dumps(
            {
                "recv_time": int(now * 1e6),
                "reason": f"unparseable line {b.lineno} of {b.path.relative_to(root)}",
                "frame": b.raw.decode("utf-8", "replace"),
            }
        )
        + b"\n"
        for b in bad
    )
    with open(d / f"rejects-{time.strftime('%Y-%m-%d', time.gmtime(now))}.ndjson", "ab") as f:
        f.write(recs)
        f.flush()
        os.fsync(f.fileno())


def compact_hour(root: Path, hour_dir: Path, include_active: bool = True) -> CompactResult:
    """Compact one hour directory. A running recorder passes ``include_active=False``: the
    open file it may still append to is left for the next round."""
    ndjson = hour_ndjson(hour_dir, include_active)
    table, bad = read_hour(hour_dir, include_active)
    _quarantine(root, bad)
    table = merge_rows(table)
    final = hour_dir / layout.PARQUET
    write_parquet_atomic(table, final)
    for path in ndjson:
        path.unlink()
    if ndjson:
        fsync_dir(hour_dir)
    return CompactResult(hour_dir, table.height, len(ndjson), len(bad))


def merge_rows(table: pl.DataFrame) -> pl.DataFrame:
    """One row per trade id (the richest source: stream, then REST, then archive; among equals
    the first), sorted by trade id."""
    rank = pl.col("source").replace_strict(SOURCE_RANK, default=9, return_dtype=pl.Int8)
    return table.sort([pl.col("trade_id"), rank], maintain_order=True).unique(
        subset="trade_id", keep="first", maintain_order=True
    )


def write_parquet_atomic(table: pl.DataFrame, final: Path, staging: Path | None = None) -> None:
    """Write ``table`` as ``final``: temporary name, fsync, rename, fsync the directory, then
    read it back and compare. With ``staging``, the file is written there instead and only
    verified; the caller renames it into place later (all-or-nothing imports)."""
    target = staging or final
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    table.write_parquet(tmp, compression="zstd", compression_level=10, statistics=True)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, target)
    fsync_dir(target.parent)
    if not pl.read_parquet(target).equals(table):
        raise CompactionError(
            f"{target} did not read back as written; what it replaces was kept. "
            "Check the disk, then run the command again"
        )


def closed_hours(root: Path, now_ms: int, grace_ms: int) -> list[Path]:
    """Hour directories holding NDJSON whose hour ended more than ``grace_ms`` before now."""
    out = []
    for d in layout.hour_dirs(root):
        _, hour = layout.parse_hour_dir(d)
        if (hour + 1) * layout.HOUR_MS + grace_ms <= now_ms and any(d.glob("*.ndjson")):
            out.append(d)
    return out
