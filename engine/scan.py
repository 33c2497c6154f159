"""Reading a symbol's trades back from the store, one chunk (about a day) at a time.

Only the columns the windows need are read. Hours that are Parquet only are already unique
by trade id (compaction made them so) and are scanned directly; hours that still hold NDJSON
(the open hour, or what a crash left) are read with their Parquet and deduplicated. Memory is
bounded by one chunk, not by the length of history. The store is never written.

A closed day may be merged into a day file (``recorder compact --days``). A day is listed
once (``list_day``: its date directory, then each hour directory in it). A day file alone is
scanned directly, filtered to the chunk's times; a day file with hour files beside it (a merge
that crashed midway, or trades stored into the day after its merge) is read with them and
deduplicated, the day file's copy first.

The recorder may compact an hour while it is read: it renames the Parquet file in before it
deletes the NDJSON files, and a day merge renames the day file in before it deletes the hour
files. Exactly the files listed are read, so every trade is in what was read; a file or hour
directory that vanished before it was opened (or a Parquet file replaced under the reader)
fails the read, and the chunk is listed and read again. A reader never returns fewer trades
than the store held when it started.

``open_store`` also takes ``s3://bucket/prefix``, a copy made by ``recorder upload``: it then
returns a ``RemoteStoreIndex`` (``engine/remote.py``), read-only, whose ``load`` gives the
frames a local store with the same files gives. Both are a ``TradeIndex``, what the window
builder reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, overload

import polars as pl

from engine.errors import DataError, InputError
from recorder.store import layout, parse_ndjson, read_gaps
from recorder.store.files import DayFiles, day_file_hours, hour_files, list_day

__all__ = [
    "COLUMNS",
    "DAY_MS",
    "EMPTY_TRADES",
    "HeldHours",
    "StoreIndex",
    "TradeIndex",
    "finish_chunk",
    "in_span",
    "open_store",
    "parse_symbol",
]

_RELIST = 20  # reads of a chunk that keeps changing under the reader before giving up

COLUMNS = ["trade_id", "trade_time", "price", "qty", "is_buyer_maker"]
DAY_MS = 86_400_000
EMPTY_TRADES = pl.DataFrame(
    schema={
        "trade_id": pl.Int64,
        "trade_time": pl.Datetime("us", "UTC"),
        "price": pl.Float64,
        "qty": pl.Float64,
        "is_buyer_maker": pl.Boolean,
    }
)


class TradeIndex(Protocol):
    """One symbol's stored trades as the window builder reads them: a local ``StoreIndex``
    or a ``RemoteStoreIndex`` (a copy in object storage)."""

    symbol: str

    @property
    def first_hour(self) -> int: ...

    @property
    def last_hour(self) -> int: ...

    def recorded_gaps(self) -> list[tuple[int, int]]: ...

    def load(self, start_ms: int, end_ms: int) -> pl.DataFrame: ...


class TailCache:
    """Parsed NDJSON files kept between reads, so a follower of the open hour parses only
    the lines appended since its last look. A file that was replaced or shrank is reread; a
    last line without its newline is left for the next look."""

    def __init__(self) -> None:
        self._files: dict[Path, tuple[int, int, int, pl.DataFrame]] = {}
        self.recv_offset_ms: int | None = None  # usual receive time minus trade time

    def read(self, path: Path) -> pl.DataFrame:
        st = path.stat()
        inode, offset, lineno, table = self._files.get(path, (st.st_ino, 0, 1, EMPTY_TRADES))
        if inode != st.st_ino or st.st_size < offset:
            inode, offset, lineno, table = st.st_ino, 0, 1, EMPTY_TRADES
        if st.st_size > offset:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read(st.st_size - offset)
            end = data.rfind(b"\n") + 1
            if end:
                fresh, bad = parse_ndjson(data[:end], path, lineno)
                if bad:
                    raise _incomplete(path, bad[0].lineno)
                if fresh.height:
                    lag = (fresh["recv_time"] - fresh["trade_time"]).dt.total_milliseconds()
                    self.recv_offset_ms = int(lag.median())  # type: ignore[arg-type]
                table = pl.concat([table, fresh.select(COLUMNS)])
                offset += end
                lineno += data[:end].count(b"\n")
        self._files[path] = (inode, offset, lineno, table)
        return table

    def forget_missing(self) -> None:
        """Drop files that are gone (compacted): their trades are in Parquet now."""
        for p in [p for p in self._files if not p.exists()]:
            del self._files[p]


class HeldHours:
    """``first_hour`` and ``last_hour`` of an index of hour files (``hours``, by hour index)
    and day files (``days``, by day index), wherever they are: ``_day_file_hours`` reads
    which hours a day file holds."""

    hours: dict[int, Any]
    days: dict[int, Any]

    def _day_file_hours(self, path: Any) -> list[int]:
        raise NotImplementedError

    def _held(self, last: bool) -> int:
        """The first (or ``last``) hour stored, in an hour file or a day file."""
        pick = max if last else min
        candidates = [pick(self.hours)] if self.hours else []
        if self.days:
            held = self._day_file_hours(self.days[pick(self.days)])
            candidates += [pick(held)] if held else []
        return pick(candidates)

    @property
    def first_hour(self) -> int:
        return self._held(last=False)

    @property
    def last_hour(self) -> int:
        return self._held(last=True)


@dataclass
class StoreIndex(HeldHours):
    """Where one symbol's trades are: its hour directories by hour index (hours since the
    epoch), and its day files by day index (days since the epoch), as listed when opened."""

    root: Path
    symbol: str
    hours: dict[int, Path]
    tail: TailCache | None = None
    days: dict[int, Path] = field(default_factory=dict)

    def _day_file_hours(self, path: Path) -> list[int]:
        return day_file_hours(path)

    def recorded_gaps(self) -> list[tuple[int, int]]:
        """(after_time, before_time) in UTC ms of ids the recorder could not fetch."""
        return [(g["after_time"], g["before_time"]) for g in read_gaps(self.root, self.symbol)]

    def load(self, start_ms: int, end_ms: int) -> pl.DataFrame:
        """Trades with ``start_ms <= trade time < end_ms``, unique by id, sorted by time then id."""
        error: Exception | None = None
        for _ in range(_RELIST):
            try:
                return self._load(start_ms, end_ms)
            except (OSError, pl.exceptions.PolarsError) as e:  # compacted while read: again
                error = e
        raise DataError(
            f"the hours of {self.symbol} from {start_ms} ms kept changing while read "
            f"({(str(error) or type(error).__name__).splitlines()[0][:120]}); try again"
        )

    def _load(self, start_ms: int, end_ms: int) -> pl.DataFrame:
        first_hour, last_hour = start_ms // layout.HOUR_MS, (end_ms - 1) // layout.HOUR_MS
        parquet: list[Path] = []
        partial = False  # a day file is read beyond [start_ms, end_ms)
        mixed: list[pl.DataFrame] = []
        # Newest first (then put back in order): the recorder appends in arrival order, so a
        # trade seen in a later hour's file arrived after every trade of the earlier hours
        # that will be read next. A follower's clock, which runs from the latest trade it
        # sees, then never closes a window on a trade written while the files were read.
        for day in reversed(range(start_ms // layout.DAY_MS, (end_ms - 1) // layout.DAY_MS + 1)):
            files = list_day(self.root, self.symbol, day)
            hours = {h: f for h, f in files.hours.items() if first_hour <= h <= last_hour}
            if self.tail is not None:  # following a live store: hours appear
                self.hours.update((h, layout.hour_dir(self.root, self.symbol, h)) for h in hours)
            if files.day_file is not None and any(pq or nd for pq, nd in hours.values()):
                mixed.append(self._mixed_day(files, hours, start_ms, end_ms))
                continue
            if files.day_file is not None:
                parquet.append(files.day_file)
                partial |= start_ms > day * DAY_MS or end_ms < (day + 1) * DAY_MS
            for _, (pq, ndjson) in sorted(hours.items(), reverse=True):
                if ndjson:
                    mixed.append(self._mixed_hour(pq, ndjson))
                elif pq is not None:
                    parquet.append(pq)
        parquet.reverse()
        mixed.reverse()
        parts = ([_read_parquet(parquet, start_ms, end_ms, partial)] if parquet else []) + mixed
        return finish_chunk(parts, start_ms, end_ms)

    def _mixed_day(
        self,
        files: DayFiles,
        hours: dict[int, tuple[Path | None, list[Path]]],
        start_ms: int,
        end_ms: int,
    ) -> pl.DataFrame:
        """A day file with hour files beside it, deduplicated (the day file's copy first)."""
        frames = [_read_parquet([files.day_file], start_ms, end_ms, True)] if files.day_file else []
        newest_first = []  # as in ``_load``
        for _, (pq, ndjson) in sorted(hours.items(), reverse=True):
            if ndjson:
                newest_first.append(self._mixed_hour(pq, ndjson))
            elif pq is not None:
                newest_first.append(_read_parquet([pq]))
        frames += reversed(newest_first)
        return pl.concat(frames).unique("trade_id", keep="first", maintain_order=True)

    def _mixed_hour(self, pq: Path | None, ndjson: list[Path]) -> pl.DataFrame:
        """An hour with NDJSON (open, or left by a crash), deduplicated: the files of one
        listing. One that vanished (compacted meanwhile) raises FileNotFoundError."""
        frames = [_read_parquet([pq])] if pq is not None else []
        for path in ndjson:
            frames.append(self.tail.read(path) if self.tail else _read_ndjson(path))
        # A file renamed (sealed for compaction) after the listing, its name taken since by a
        # late trade's new file, was read as that new file: the hour is read again.
        if ndjson and hour_files(ndjson[0].parent)[1] != ndjson:
            raise FileNotFoundError(f"{ndjson[0].parent} changed while read")
        if self.tail is not None:
            self.tail.forget_missing()
        return pl.concat(frames).unique("trade_id", keep="first") if frames else EMPTY_TRADES


def in_span(start_ms: int, end_ms: int) -> pl.Expr:
    """True for trades with ``start_ms <= trade time < end_ms`` (UTC ms)."""
    lo, hi = (pl.lit(ms * 1000).cast(pl.Datetime("us", "UTC")) for ms in (start_ms, end_ms))
    return (pl.col("trade_time") >= lo) & (pl.col("trade_time") < hi)


def finish_chunk(parts: list[pl.DataFrame], start_ms: int, end_ms: int) -> pl.DataFrame:
    """A chunk's trades from the frames read for it (``parts``: unique by id together):
    those with ``start_ms <= trade time < end_ms``, sorted by time then id."""
    if not parts:
        return EMPTY_TRADES
    t = pl.concat(parts) if len(parts) > 1 else parts[0]
    first, last = t.select(
        first=pl.col("trade_time").min().dt.epoch("ms"),
        last=pl.col("trade_time").max().dt.epoch("ms"),
    ).row(0)
    if first is not None and (first < start_ms or last >= end_ms):  # else: a copy for nothing
        t = t.filter(in_span(start_ms, end_ms))
    # Compacted hours come sorted by id, and ids grow with time: if both columns are
    # already in order, sorting by (time, id) would change nothing (and costs a third of
    # a day's scan), so check instead.
    if t["trade_time"].is_sorted() and t["trade_id"].is_sorted():
        return t
    return t.sort("trade_time", "trade_id")


def _read_parquet(
    files: list[Path], start_ms: int = 0, end_ms: int = 0, filtered: bool = False
) -> pl.DataFrame:
    """The columns of ``files`` (``filtered``: only trades in [start_ms, end_ms), so that a
    day file read for a few hours skips its other row groups); a file that fails on its own is
    named in a DataError, any other failure (a file compacted or replaced meanwhile) is raised
    for the caller to retry."""
    try:
        scan = pl.scan_parquet(files).select(COLUMNS)
        if filtered:
            scan = scan.filter(in_span(start_ms, end_ms))
        return scan.collect()
    except Exception:
        for f in files:
            try:
                pl.read_parquet(f, columns=COLUMNS)
            except FileNotFoundError:
                raise
            except Exception as e:
                raise DataError(
                    f"{f} is not a readable Parquet file ({str(e).splitlines()[0][:120]}); "
                    "run `recorder compact --repair` (with the recorder stopped) to rebuild it "
                    "or move it aside and refetch its trades"
                ) from None
        raise


def _read_ndjson(path: Path) -> pl.DataFrame:
    data = path.read_bytes()  # once: a second read could see the line being written finished
    table, bad = parse_ndjson(data, path)
    # A last line without its newline in the open file is being written right now.
    if (
        bad
        and path.name == layout.ACTIVE_NDJSON
        and not data.endswith(b"\n")
        and bad[-1].lineno == data.count(b"\n") + 1
    ):
        bad = bad[:-1]
    if bad:
        raise _incomplete(path, bad[0].lineno)
    return table.select(COLUMNS)


def _incomplete(path: Path, lineno: int) -> DataError:
    return DataError(
        f"{path}: line {lineno} is not a complete trade; "
        "run `recorder compact` to quarantine it (while no recorder runs)"
    )


def parse_symbol(text: str) -> str:
    """``" btcusdt"`` -> ``"BTCUSDT"``: the one check of every engine ``--symbol``. InputError
    for anything but ASCII letters and digits (``ｅｔｈ`` passes ``str.isalnum``, not this)."""
    from recorder.cliutil import parse_symbol as ascii_symbol

    sym = ascii_symbol(text)
    if sym is None:
        raise InputError(
            f"symbol {text!r} is not ASCII letters and digits; give one like --symbol btcusdt"
        )
    return sym


@overload
def open_store(root: Path, symbol: str) -> StoreIndex: ...


@overload
def open_store(root: Path | str, symbol: str) -> TradeIndex: ...


def open_store(root: Path | str, symbol: str) -> TradeIndex:
    """The index of ``symbol`` (any case) in the store at ``root``, a folder or the
    ``s3://bucket/prefix`` of a copy (``recorder upload``); DataError if absent."""
    if isinstance(root, str):
        from recorder.store.objects import is_url

        if is_url(root):
            from engine.remote import open_remote

            return open_remote(root, symbol)
        root = Path(root)
    trades = root / layout.TRADES
    sym = parse_symbol(symbol)
    if not trades.is_dir():
        raise DataError(f"no store at {root}; pass --data-dir where `recorder run` writes")
    hours = {}
    for d in layout.hour_dirs(root, sym):
        hours[layout.parse_hour_dir(d)[1]] = d
    days = {}
    for d in layout.day_dirs(root, sym):
        if (d / layout.PARQUET).exists():
            days[layout.parse_day_dir(d)[1]] = d / layout.PARQUET
    if not hours and not days:
        have = layout.symbol_dirs(root)
        listed = ", ".join(have) if have else "no symbols yet"
        raise DataError(f"unknown symbol {sym}: the store at {root} has {listed}")
    return StoreIndex(root, sym, hours, days=days)


def chunk_bounds(first_ms: int, end_ms: int) -> Iterator[tuple[int, int]]:
    """Consecutive [lo, hi) spans of at most a UTC day covering [first_ms, end_ms)."""
    lo = first_ms
    while lo < end_ms:
        hi = min(end_ms, (lo // DAY_MS + 1) * DAY_MS)
        yield lo, hi
        lo = hi
