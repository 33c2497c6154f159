"""Day files: a closed day's hour files merged into one Parquet file per (symbol, day).

``DATA_DIR/trades/symbol=S/date=D/trades.parquet`` holds the day's trades with the hour files'
columns (``PARQUET_SCHEMA``), sorted by trade id, unique by id, one or more row groups per hour;
its key-value metadata ``tapewatch.hours`` lists the hours of the day it holds. Fewer files:
24 hour files become one, which is what object storage and a store of many symbols need.

``merge_day`` works like compaction, one level up. Each step is safe to crash in and to rerun:

1. list the day once (``list_day``): its day file, if any, and its hour files. A day with
   NDJSON left is not closed: refused;
2. per hour: the day file's rows of that hour and the hour file's rows, one row per trade id
   (``merge_rows``; among equals the day file's copy), sorted by id;
3. write them under a temporary name (``.trades.parquet.tmp-PID``) and fsync it;
4. read it back row group by row group: the same rows as written (a digest of every value),
   ids strictly increasing through the file;
5. inside ``changing(root)``: rename it over ``trades.parquet``, fsync the date directory, then
   delete each hour file that went into it (unchanged since it was read) and its directory
   once empty, and fsync again. If the day file already held every row of every hour file
   (a rerun after a crash in this step), the new file is dropped and only the hours go.

A crash in 1-4 leaves the hours as they were (and a temporary the next run sweeps, its pid
being dead). A crash in 5 leaves the day file plus some hour files whose trades it holds: every
reader deduplicates such a day on the trade id (``DayFiles.mixed``), so no trade is lost or seen
twice, and the next merge only deletes those hours. Trades stored into the day after its merge
(a late backfill, an archive import) are hour files beside the day file in the same way, and
the next merge folds them in.

DuckDB's views list a store's day files and hour files with separate globs, so whatever adds
an hour file beside a day file does so inside ``changing(root)`` (an import's
``HourSpool.commit``), or while that hour still has NDJSON, which the views read with it
(compaction): a query that ran meanwhile is run again, and never counts a trade twice.

Errors: ``StoreError`` (the day is not closed, or a file cannot be read: run
``recorder compact`` or ``--repair`` first) and ``CompactionError`` (what was written did not
read back, or a row lies outside its day; the hours were kept).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import polars as pl
import pyarrow.parquet as pq

from recorder.errors import CompactionError, StoreError
from recorder.store import layout
from recorder.store.durable import changing, fsync_dir
from recorder.store.files import (
    DAY_HOURS_KEY,
    DayFiles,
    day_file_hours,
    list_day,
    parquet_problem,
)
from recorder.store.schema import (
    ARROW_SCHEMA,
    PARQUET_SCHEMA,
    PARQUET_WRITE,
    ROW_GROUP_ROWS,
    merge_rows,
)

__all__ = ["ROW_GROUP_ROWS", "DayMerge", "day_rows", "merge_day"]

log = logging.getLogger("recorder")


_EMPTY = pl.DataFrame(schema=PARQUET_SCHEMA)


@dataclass(frozen=True, slots=True)
class DayMerge:
    """What ``merge_day`` did to one (symbol, day)."""

    symbol: str
    day: int  # days since the epoch
    path: Path  # the day file
    rows: int  # trades the day file holds
    hour_files: int  # hour files folded in and deleted
    rewritten: bool  # False when the day file already held their trades (a repair)


class _Unordered(Exception):
    """An hour's first id is not above the previous hour's last: sort the whole day."""


def day_rows(day_file: Path, hour: int) -> pl.DataFrame:
    """The rows of a day file whose trade time lies in ``hour`` (hours since the epoch), in
    the file's order (by trade id); only the row groups whose times overlap it are read."""
    lo, hi = (
        pl.lit(h * layout.HOUR_MS * 1000).cast(PARQUET_SCHEMA["trade_time"])
        for h in (hour, hour + 1)
    )
    rows = pl.scan_parquet(day_file).filter(
        (pl.col("trade_time") >= lo) & (pl.col("trade_time") < hi)
    )
    return rows.select(list(PARQUET_SCHEMA)).collect()


def _digest(table: pl.DataFrame) -> tuple[int, int]:
    """(rows, a checksum of every value): to check a file read back without keeping it."""
    return table.height, int(table.hash_rows(seed=11).to_numpy().sum(dtype=np.uint64))


def _stamp(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


def _read_hour_file(path: Path, day: int) -> pl.DataFrame:
    rows = pl.read_parquet(path).select(list(PARQUET_SCHEMA)).cast(pl.Schema(PARQUET_SCHEMA))
    ms = rows.select(
        lo=pl.col("trade_time").min().dt.epoch("ms"), hi=pl.col("trade_time").max().dt.epoch("ms")
    ).row(0)
    if ms[0] is not None and (ms[0] // layout.DAY_MS != day or ms[1] // layout.DAY_MS != day):
        raise CompactionError(
            f"{path} holds trades of another day; move it out of the store and import them "
            "again (recorder import-archive); its day was not merged"
        )
    return rows


def _hours_of(files: DayFiles, day: int, changed: list[bool]) -> Iterator[pl.DataFrame]:
    """Each hour's merged rows, oldest hour first; ``changed[0]`` becomes True once an hour
    file holds a trade the day file does not, or a richer copy of one."""
    hour_files = files.hour_parquet
    kept = 0
    for hour in range(day * 24, day * 24 + 24):
        old = day_rows(files.day_file, hour) if files.day_file is not None else _EMPTY
        kept += old.height
        if hour not in hour_files:
            yield old
            continue
        merged = merge_rows(pl.concat([old, _read_hour_file(hour_files[hour], day)]))
        if not merged.equals(old):
            changed[0] = True
        yield merged
    if files.day_file is not None and kept != pq.read_metadata(files.day_file).num_rows:
        raise CompactionError(
            f"{files.day_file} holds trades outside its day; move it aside and import the day "
            "again; nothing was changed"
        )


def _write(tmp: Path, batches: Iterator[pl.DataFrame], hours: list[int]) -> list[tuple[int, int]]:
    """Batches (each sorted by id) as row groups of at most ROW_GROUP_ROWS; digests of each.
    _Unordered if a batch's first id is not above the previous batch's last."""
    schema = ARROW_SCHEMA.with_metadata({DAY_HOURS_KEY: orjson.dumps(hours)})
    digests: list[tuple[int, int]] = []
    last: int | None = None
    with pq.ParquetWriter(tmp, schema, **PARQUET_WRITE) as out:
        for batch in batches:
            if not batch.height:
                continue
            if last is not None and batch["trade_id"][0] <= last:
                raise _Unordered
            for start in range(0, batch.height, ROW_GROUP_ROWS):
                part = batch.slice(start, ROW_GROUP_ROWS)
                out.write_table(part.to_arrow().cast(schema), row_group_size=ROW_GROUP_ROWS)
                digests.append(_digest(part))
            last = batch["trade_id"][-1]
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    return digests


def _verify(tmp: Path, digests: list[tuple[int, int]], final: Path) -> int:
    """Read the written file back: the rows written, ids strictly increasing; its rows."""
    f = pq.ParquetFile(tmp)
    try:
        ok = f.metadata.num_row_groups == len(digests)
        last = None
        for i, want in enumerate(digests if ok else []):
            back = pl.from_arrow(f.read_row_group(i))
            assert isinstance(back, pl.DataFrame)
            back = back.cast(pl.Schema(PARQUET_SCHEMA))
            ids = back["trade_id"]
            ok = (
                _digest(back) == want
                and (ids.diff().drop_nulls() > 0).all()
                and (last is None or ids[0] > last)
            )
            if not ok:
                break
            last = ids[-1]
    finally:
        f.close()
    if not ok:
        raise CompactionError(
            f"the merged {final} did not read back as written; the hours were kept. "
            "Check the disk, then run the command again"
        )
    return sum(rows for rows, _ in digests)


def merge_day(root: Path, symbol: str, day: int) -> DayMerge:
    """Merge the hour files of ``symbol``'s day ``day`` (days since the epoch) into its day
    file, then delete them; see the module docstring for the steps and what a crash leaves.
    Idempotent: a day with no hour files is left alone. Run only while no recorder or
    import writes the store (the caller holds the store lock)."""
    for _ in range(20):
        try:
            files = list_day(root, symbol, day)
            break
        except FileNotFoundError:
            continue
    else:
        raise StoreError(f"{layout.day_dir(root, symbol, day)} kept changing; run it again")
    final = files.path / layout.PARQUET
    if files.ndjson:
        raise StoreError(
            f"{files.ndjson[0]} is not compacted yet, so its day is not closed; "
            "run `recorder compact` first"
        )
    hour_files = files.hour_parquet
    if not hour_files:
        rows = pq.read_metadata(final).num_rows if files.day_file is not None else 0
        return DayMerge(symbol, day, final, rows, 0, False)
    for path in [*hour_files.values(), *([final] if files.day_file is not None else [])]:
        problem = parquet_problem(path)
        if problem is not None:
            raise StoreError(
                f"{path} is not a readable Parquet file ({problem}); its day was not merged: "
                "run `recorder compact --repair` first"
            )
    stamps = {h: _stamp(p) for h, p in hour_files.items()}
    held = day_file_hours(final) if files.day_file is not None else []
    hours = sorted({h - day * 24 for h in [*held, *hour_files]})
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    changed = [files.day_file is None]
    try:
        try:
            digests = _write(tmp, _hours_of(files, day, changed), hours)
        except _Unordered:  # ids do not grow with the hours: sort the day as a whole
            whole = merge_rows(pl.concat(list(_hours_of(files, day, changed))))
            digests = _write(tmp, iter([whole]), hours)
        rows = _verify(tmp, digests, final)
        if not changed[0]:  # the day file already holds every trade: only the hours go
            tmp.unlink()
        with changing(root):
            if changed[0]:
                os.replace(tmp, final)
                fsync_dir(files.path)
            _delete_hours(hour_files, stamps)
            fsync_dir(files.path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return DayMerge(symbol, day, final, rows, len(hour_files), changed[0])


def _delete_hours(hour_files: dict[int, Path], stamps: dict[int, tuple[int, int, int]]) -> None:
    """Delete the hour files that went into the day file, and their directories once empty.
    A file replaced since it was read (which no locked store should see) is kept for the
    next merge."""
    for hour, path in hour_files.items():
        if _stamp(path) != stamps[hour]:
            log.warning("%s changed while its day was merged; kept for the next merge", path)
            continue
        path.unlink()
        # Kept if something else is in it (a torn file moved aside).
        with contextlib.suppress(OSError):
            path.parent.rmdir()
