"""Reading a symbol's trades from a copy of the store in object storage, read-only.

``recorder upload --to s3://bucket/prefix`` copies the closed Parquet files (hour files and day
files, under the same keys as the local paths) and the gap log ``gaps/gaps.ndjson``. The
engine reads such a copy with ``--data-dir s3://bucket/prefix``; the endpoint and credentials
come from the standard ``AWS_*`` variables (``AWS_ENDPOINT_URL`` for an S3-compatible server,
see ``recorder.store.objects``).

A copy holds no NDJSON and does not change while it is read (an upload only adds objects or
replaces one whole), so the reader is simple: the symbol's objects are listed once, when the
store is opened, and each chunk reads the listed objects of its days, several at a time, with
pyarrow's S3 filesystem, decoded by Polars. A chunk comes out as the local reader
(``engine/scan.py``) gives it for the same files: the same columns, a day file with hour files
beside it deduplicated on the trade id (the day file's copy first), sorted by time then id.
An upload after a day merge leaves the day's hour objects beside its new day file (it never
deletes objects): that day is read like a local mixed day, so each trade counts once.

Errors: ``DataError`` for a copy that is not there (no bucket, no store under the prefix, an
unknown symbol) or an object that is not Parquet; ``ObjectStoreError`` (a ``RecorderError``)
for an endpoint that cannot be reached or refuses the credentials.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import polars as pl

from engine.errors import DataError
from engine.scan import COLUMNS, DAY_MS, HeldHours, finish_chunk, in_span, parse_symbol
from recorder.store import layout
from recorder.store.files import day_file_hours, parse_gaps
from recorder.store.objects import (
    S3Settings,
    Target,
    bucket_exists,
    filesystem,
    no_bucket,
    parse_target,
    s3_errors,
)

__all__ = ["READERS", "RemoteStoreIndex", "open_remote"]

READERS = 8  # objects fetched at a time within a chunk (hour files of a day)
_WHERE = "pass --data-dir where `recorder upload --to` copied the store"


@dataclass
class RemoteStoreIndex(HeldHours):
    """Where one symbol's trades are in a copy: object paths (``bucket/prefix/trades/...``) of
    its hour files by hour index and of its day files by day index, as listed when opened."""

    target: Target
    symbol: str
    hours: dict[int, str]
    days: dict[int, str]
    s3: Any  # pyarrow.fs.S3FileSystem
    settings: S3Settings

    def _day_file_hours(self, path: str) -> list[int]:
        with s3_errors(self.settings, f"cannot read s3://{path}"):
            try:
                return day_file_hours(path, self.s3)
            except OSError:
                raise
            except Exception as e:  # pyarrow's ArrowInvalid: not Parquet
                raise _unreadable(path, e) from None

    def recorded_gaps(self) -> list[tuple[int, int]]:
        """(after_time, before_time) in UTC ms of ids the recorder could not fetch, from the
        copy's gap log (none if it has no gap log)."""
        path = self.target.path(layout.GAPS)
        with s3_errors(self.settings, f"cannot read s3://{path}"):
            try:
                with self.s3.open_input_stream(path) as f:
                    data = f.read()
            except FileNotFoundError:
                return []
        return [(g["after_time"], g["before_time"]) for g in parse_gaps(data, self.symbol)]

    def load(self, start_ms: int, end_ms: int) -> pl.DataFrame:
        """Trades with ``start_ms <= trade time < end_ms``, unique by id, sorted by time then id."""
        first_hour, last_hour = start_ms // layout.HOUR_MS, (end_ms - 1) // layout.HOUR_MS
        plain: list[str] = []  # read together, as the local reader scans them
        partial = False  # a day file is read beyond [start_ms, end_ms)
        mixed: list[tuple[str, list[str]]] = []  # (day file, hour files) deduplicated
        for day in range(start_ms // DAY_MS, (end_ms - 1) // DAY_MS + 1):
            lo, hi = max(first_hour, day * 24), min(last_hour, day * 24 + 23)
            hours = [self.hours[h] for h in range(lo, hi + 1) if h in self.hours]
            day_file = self.days.get(day)
            if day_file is not None and hours:
                mixed.append((day_file, hours))
                continue
            if day_file is not None:
                plain.append(day_file)
                partial |= start_ms > day * DAY_MS or end_ms < (day + 1) * DAY_MS
            plain += hours
        paths = plain + [p for day_file, hours in mixed for p in (day_file, *hours)]
        with ThreadPoolExecutor(max_workers=READERS, thread_name_prefix="tw-s3") as pool:
            got = dict(zip(paths, pool.map(self._read, paths), strict=True))
        parts = []
        if plain:
            t = pl.concat([got[p] for p in plain])
            parts.append(t.filter(in_span(start_ms, end_ms)) if partial else t)
        for day_file, hours in mixed:
            frames = [got[day_file].filter(in_span(start_ms, end_ms))] + [got[p] for p in hours]
            parts.append(pl.concat(frames).unique("trade_id", keep="first", maintain_order=True))
        return finish_chunk(parts, start_ms, end_ms)

    def _read(self, path: str) -> pl.DataFrame:
        """The columns of one Parquet object."""
        with (
            s3_errors(self.settings, f"cannot read s3://{path}"),
            self.s3.open_input_file(path) as f,
        ):
            data = f.read()
        try:
            return pl.read_parquet(io.BytesIO(data), columns=COLUMNS).select(COLUMNS)
        except Exception as e:
            raise _unreadable(path, e) from None


def _unreadable(path: str, e: Exception) -> DataError:
    reason = (str(e) or type(e).__name__).splitlines()[0][:120]
    return DataError(
        f"s3://{path} is not a readable Parquet file ({reason}); replace it with the file at "
        "the same path in the store it was copied from"
    )


def open_remote(url: str, symbol: str) -> RemoteStoreIndex:
    """The index of ``symbol`` (any case) in the copy at ``url`` (``s3://bucket/prefix``);
    DataError if there is no such bucket, no store under the prefix, or no such symbol."""
    from pyarrow import fs

    sym = parse_symbol(symbol)
    target = parse_target(url, "--data-dir")
    settings = S3Settings.from_env()
    s3 = filesystem(settings)
    if not bucket_exists(s3, target, settings):
        raise DataError(f"no store at {target.url}: {no_bucket(target, settings)}; {_WHERE}")
    trades = target.path(f"{layout.TRADES}/symbol={sym}")
    with s3_errors(settings, f"cannot list {target.url}"):
        found = s3.get_file_info(fs.FileSelector(trades, recursive=True, allow_not_found=True))
    hours: dict[int, str] = {}
    days: dict[int, str] = {}
    for info in found:
        path = PurePosixPath(info.path)
        if info.type != fs.FileType.File or path.name != layout.PARQUET:
            continue
        try:
            if path.parent.name.startswith("hour="):
                s, hour = layout.parse_hour_dir(path.parent)
                if s == sym:
                    hours[hour] = info.path
            else:
                s, day = layout.parse_day_dir(path.parent)
                if s == sym:
                    days[day] = info.path
        except ValueError:
            continue  # not a store partition (hour=05.old, date=garbage): skipped, as locally
    if not hours and not days:
        with s3_errors(settings, f"cannot list {target.url}"):
            top = s3.get_file_info(
                fs.FileSelector(target.path(layout.TRADES), allow_not_found=True)
            )
        have = sorted(
            name
            for name in (PurePosixPath(i.path).name.partition("symbol=")[2] for i in top)
            if layout.is_symbol(name)
        )
        if not top:
            raise DataError(f"no store at {target.url}; {_WHERE}")
        listed = ", ".join(have) if have else "no symbols yet"
        raise DataError(f"unknown symbol {sym}: the store at {target.url} has {listed}")
    return RemoteStoreIndex(
        target, sym, dict(sorted(hours.items())), dict(sorted(days.items())), s3, settings
    )
