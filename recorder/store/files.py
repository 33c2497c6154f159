"""Reading the store back: NDJSON lines (tolerating a torn tail), the files of an hour and of a
day (``list_day``: the day file and its hours from one listing), the last stored trade, gaps
and the ids still being fetched.

Readers and compaction run at the same time. Compaction only ever adds a file (the hour's
Parquet, renamed in) before it deletes the files that went into it, and it brackets every
deletion with ``changing(root)``, which bumps ``state/generation`` to an odd number and back to
even. So a reader that lists an hour once and reads what it listed sees every trade (a file
that vanished under it raises FileNotFoundError: list again), and a reader that cannot list
atomically (DuckDB's globs) compares ``generation(root)`` before and after and reads again if
it moved.

A day merge (``recorder/store/days.py``) follows the same rule one level up: it renames the day
file in before it deletes the hour files that went into it (and their directories). So a reader
that lists a date directory once and then each hour directory it listed sees every trade, and
an hour directory that vanished in between raises FileNotFoundError: list the day again.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import orjson
import polars as pl

from recorder.errors import StoreError
from recorder.store import layout
from recorder.store.durable import atomic_write, check_writable
from recorder.store.schema import FIELDS, LINE_SCHEMA, PARQUET_SCHEMA, lines_to_table
from recorder.tracker import Missing

__all__ = [
    "DAY_HOURS_KEY",
    "BadLine",
    "DayFiles",
    "add_missing",
    "day_file_hours",
    "day_file_last",
    "hour_files",
    "init_store",
    "last_trade",
    "list_day",
    "parquet_problem",
    "parse_gaps",
    "read_gaps",
    "read_missing",
    "read_ndjson",
    "unreadable_parquet",
]

STORE_FORMAT = 1

# Key-value metadata of a day file: the hours of the day (0-23) it holds, e.g. "[0,1,2]".
DAY_HOURS_KEY = b"tapewatch.hours"
_HOUR_NAME = re.compile(r"hour=([01][0-9]|2[0-3])")


@dataclass(slots=True)
class BadLine:
    path: Path
    lineno: int  # 1-based
    raw: bytes


def init_store(root: Path) -> None:
    """Create the store skeleton (idempotent); StoreError if ``root`` cannot be written."""
    check_writable(root)
    (root / layout.TRADES).mkdir(exist_ok=True)
    seed = root / layout.SCHEMA_PARQUET
    if not seed.exists():
        buf = io.BytesIO()
        pl.DataFrame(schema=PARQUET_SCHEMA).write_parquet(buf)
        atomic_write(seed, buf.getvalue())
    if not (root / layout.SCHEMA_NDJSON).exists():
        atomic_write(root / layout.SCHEMA_NDJSON, b"")
    if not (root / layout.MARKER).exists():
        atomic_write(root / layout.MARKER, orjson.dumps({"format": STORE_FORMAT}))


def _valid_line(line: bytes) -> bool:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    if type(obj) is not dict or type(obj.get("recv_time")) is not int:
        return False
    data = (obj.get("frame") or {}).get("data") if type(obj.get("frame")) is dict else None
    source, item = (0, data) if type(data) is dict else (1, obj.get("rest"))
    return type(item) is dict and all(
        type(item.get(FIELDS[key][source])) is int for key in ("trade_id", "trade_time")
    )


def read_ndjson(path: Path) -> tuple[pl.DataFrame, list[BadLine]]:
    """Typed trade rows of one NDJSON hour file, plus the lines that do not parse (a torn
    last line after a crash, or corruption), which the caller quarantines."""
    return parse_ndjson(path.read_bytes(), path)


def parse_ndjson(
    data: bytes, path: Path, first_lineno: int = 1
) -> tuple[pl.DataFrame, list[BadLine]]:
    """Like ``read_ndjson`` for bytes already read (line numbers start at ``first_lineno``)."""
    if data.strip():
        try:
            lines = pl.read_ndjson(io.BytesIO(data), schema=LINE_SCHEMA)
            table = lines_to_table(lines)
            if table["trade_id"].null_count() == 0 and table["trade_time"].null_count() == 0:
                return table, []
        except Exception:
            pass
    good: list[bytes] = []
    bad: list[BadLine] = []
    for i, line in enumerate(data.split(b"\n"), first_lineno):
        if not line.strip():
            continue
        if _valid_line(line):
            good.append(line)
        else:
            bad.append(BadLine(path, i, line))
    if not good:
        return pl.DataFrame(schema=PARQUET_SCHEMA), bad
    lines = pl.read_ndjson(io.BytesIO(b"\n".join(good)), schema=LINE_SCHEMA)
    return lines_to_table(lines), bad


def hour_files(hour_dir: Path, include_active: bool = True) -> tuple[Path | None, list[Path]]:
    """(the Parquet file or None, the NDJSON files) of an hour, from one listing of the
    directory, so that a compaction finishing meanwhile cannot hide both copies of a trade."""
    try:
        names = os.listdir(hour_dir)
    except FileNotFoundError:
        return None, []
    return _files_of(hour_dir, names, include_active)


def _files_of(
    hour_dir: Path, names: list[str], include_active: bool
) -> tuple[Path | None, list[Path]]:
    ndjson = sorted(
        hour_dir / n
        for n in names
        if n.endswith(".ndjson") and not n.startswith(".")
        if include_active or n != layout.ACTIVE_NDJSON
    )
    return (hour_dir / layout.PARQUET if layout.PARQUET in names else None), ndjson


@dataclass(frozen=True, slots=True)
class DayFiles:
    """The files of one (symbol, day): its day file (or None) and, by hour index (hours since
    the epoch), each hour directory's (Parquet file or None, NDJSON files)."""

    path: Path  # the date directory
    day_file: Path | None
    hours: dict[int, tuple[Path | None, list[Path]]]

    @property
    def hour_parquet(self) -> dict[int, Path]:
        """The hour files (closed hours' Parquet), by hour index."""
        return {h: pq for h, (pq, _) in self.hours.items() if pq is not None}

    @property
    def ndjson(self) -> list[Path]:
        return [p for _, nd in self.hours.values() for p in nd]

    @property
    def mixed(self) -> bool:
        """A day file plus hour files: a merge that crashed midway, or trades stored into the
        day after it was merged. Readers deduplicate such a day on the trade id."""
        return self.day_file is not None and any(pq or nd for pq, nd in self.hours.values())


def list_day(root: Path, symbol: str, day: int, include_active: bool = True) -> DayFiles:
    """The files of ``symbol``'s day ``day`` (days since the epoch) from one listing of its
    date directory and one of each hour directory in it. FileNotFoundError if an hour
    directory vanished between the two (a day merge finished meanwhile): list again."""
    d = layout.day_dir(root, symbol, day)
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return DayFiles(d, None, {})
    hours: dict[int, tuple[Path | None, list[Path]]] = {}
    for name in sorted(names):
        m = _HOUR_NAME.fullmatch(name)
        if m is None:
            continue
        try:
            entries = os.listdir(d / name)
        except NotADirectoryError:
            continue
        hours[day * 24 + int(m.group(1))] = _files_of(d / name, entries, include_active)
    return DayFiles(d, d / layout.PARQUET if layout.PARQUET in names else None, hours)


def day_file_hours(path: Path | str, filesystem: Any = None) -> list[int]:
    """The hours (hours since the epoch) a day file holds, from its footer's
    ``tapewatch.hours``; for a day file without it, those its trade times span.
    ``filesystem``: a pyarrow filesystem ``path`` is on (an object store), else local."""
    import pyarrow.parquet as pq

    _, day = layout.parse_day_dir(PurePosixPath(path).parent)
    meta = pq.read_metadata(path, filesystem=filesystem)
    listed = (meta.metadata or {}).get(DAY_HOURS_KEY)
    if listed is not None:
        return [day * 24 + h for h in orjson.loads(listed)]
    if filesystem is None:
        scan = pl.scan_parquet(path)
    else:
        got = pl.from_arrow(pq.read_table(path, columns=["trade_time"], filesystem=filesystem))
        assert isinstance(got, pl.DataFrame)
        scan = got.lazy()
    times = scan.select(
        lo=pl.col("trade_time").min().dt.epoch("ms"), hi=pl.col("trade_time").max().dt.epoch("ms")
    )
    lo, hi = times.collect().row(0)
    return [] if lo is None else list(range(lo // layout.HOUR_MS, hi // layout.HOUR_MS + 1))


def day_file_last(path: Path) -> tuple[int, int] | None:
    """(trade id, trade time UTC ms) of the highest trade in a day file, or None if it holds
    none. Day files are sorted by trade id, so only the last row group is read."""
    import pyarrow.parquet as pq

    f = pq.ParquetFile(path)
    try:
        for i in reversed(range(f.metadata.num_row_groups)):
            if f.metadata.row_group(i).num_rows:
                got = pl.from_arrow(f.read_row_group(i, columns=["trade_id", "trade_time"]))
                assert isinstance(got, pl.DataFrame)
                row = got.select(
                    pl.col("trade_id").max(),
                    pl.col("trade_time").sort_by("trade_id").last().dt.epoch("ms"),
                ).row(0)
                return int(row[0]), int(row[1])
    finally:
        f.close()
    return None


def hour_ndjson(hour_dir: Path, include_active: bool = True) -> list[Path]:
    """The NDJSON files of an hour; without the one a running writer may still append to."""
    return hour_files(hour_dir, include_active)[1]


_RELIST = 20  # listings of one hour before giving up on a store that keeps changing


def read_hour(hour_dir: Path, include_active: bool = True) -> tuple[pl.DataFrame, list[BadLine]]:
    """All rows of one hour directory (Parquet plus NDJSON), not yet deduplicated. A file
    that vanishes while read (compacted meanwhile) makes it list the hour again."""
    for _ in range(_RELIST):
        pq, ndjson = hour_files(hour_dir, include_active)
        frames, bad = [], []
        try:
            if pq is not None:
                frames.append(_read_stored_parquet(pq))
            for path in ndjson:
                table, b = read_ndjson(path)
                frames.append(table)
                bad.extend(b)
        except FileNotFoundError:
            continue
        if not frames:
            return pl.DataFrame(schema=PARQUET_SCHEMA), bad
        return pl.concat(frames, how="vertical"), bad
    raise StoreError(f"{hour_dir} kept changing while read; run the command again")


def _read_stored_parquet(pq: Path) -> pl.DataFrame:
    try:
        with open(pq, "rb") as f:  # one open: a file renamed over it meanwhile is not mixed in
            return pl.read_parquet(f).select(list(PARQUET_SCHEMA))
    except FileNotFoundError:
        raise
    except Exception as e:
        reason = str(e).splitlines()[0][:120]
        raise StoreError(
            f"{pq} is not a readable Parquet file ({reason}); "
            "run `recorder compact --repair` to rebuild it or move it aside and refetch its trades"
        ) from None


def parquet_problem(path: Path) -> str | None:
    """Why ``path`` is not a readable Parquet file (torn, truncated, not Parquet), or None.
    Reads only the footer, so checking every hour of a store is cheap."""
    import pyarrow.parquet as pq

    try:
        meta = pq.read_metadata(path)
        if meta.num_columns < len(PARQUET_SCHEMA):
            return f"{meta.num_columns} columns, expected {len(PARQUET_SCHEMA)}"
    except FileNotFoundError:
        return None  # compacted or repaired meanwhile
    except Exception as e:
        return str(e).splitlines()[0][:120] or type(e).__name__
    return None


def unreadable_parquet(root: Path, symbol: str | None = None) -> list[tuple[Path, str]]:
    """(file, reason) of every stored Parquet hour and day file whose footer cannot be read."""
    out = []
    symbols = [symbol] if symbol is not None else layout.symbol_dirs(root)
    for d in layout.hour_dirs(root, symbol) + [
        day for s in symbols for day in layout.day_dirs(root, s)
    ]:
        pq = d / layout.PARQUET
        problem = parquet_problem(pq) if pq.exists() else None
        if problem is not None:
            out.append((pq, problem))
    return out


def last_trade(root: Path, symbol: str, skip_unreadable: bool = False) -> tuple[int, int] | None:
    """(trade id, trade time UTC ms) of the highest stored trade of ``symbol``, or None.
    An unreadable Parquet file is a StoreError, or with ``skip_unreadable`` passed over.

    Ids grow with trade time, so only the newest days, and in a day its newest hour with
    trades and the end of its day file, need reading."""
    for d in reversed(layout.day_dirs(root, symbol)):
        for _ in range(_RELIST):
            try:
                found = _last_of_day(
                    list_day(root, symbol, layout.parse_day_dir(d)[1]), skip_unreadable
                )
                break
            except FileNotFoundError:  # merged meanwhile: list the day again
                continue
        else:
            raise StoreError(f"{d} kept changing while read; run the command again")
        if found is not None:
            return found
    return None


def _last_of_day(day: DayFiles, skip_unreadable: bool) -> tuple[int, int] | None:
    """The highest trade of one listed day: its newest hour with trades, or its day file's."""
    found: list[tuple[int, int]] = []
    for hour in sorted(day.hours, reverse=True):
        pq, ndjson = day.hours[hour]
        if pq is None and not ndjson:
            continue
        hour_dir = (pq or ndjson[0]).parent
        try:
            table, _ = read_hour(hour_dir)
        except StoreError:
            if skip_unreadable:
                continue
            raise
        if not table.height and not hour_dir.exists():
            raise FileNotFoundError(hour_dir)  # merged into the day file meanwhile
        if table.height:
            row = table.select(
                pl.col("trade_id").max(),
                pl.col("trade_time").sort_by("trade_id").last().dt.epoch("ms"),
            ).row(0)
            found.append((int(row[0]), int(row[1])))
            break
    if day.day_file is not None:
        problem = parquet_problem(day.day_file)
        if problem is not None and not skip_unreadable:
            raise StoreError(
                f"{day.day_file} is not a readable Parquet file ({problem}); "
                "move it aside and import that day's archive again (recorder fetch-archive)"
            )
        last = day_file_last(day.day_file) if problem is None else None
        if last is not None:
            found.append(last)
    return max(found) if found else None


def read_gaps(root: Path, symbol: str | None = None) -> list[dict]:
    """Gap records (ids that could not be fetched), optionally of one symbol."""
    path = root / layout.GAPS
    if not path.exists():
        return []
    return parse_gaps(path.read_bytes(), symbol)


def parse_gaps(data: bytes, symbol: str | None = None) -> list[dict]:
    """Gap records in the bytes of a gap log (``gaps/gaps.ndjson``), optionally of one
    symbol: ``{"symbol":"BTCUSDT","first_id":..,"last_id":..,"after_time":..,
    "before_time":..,"reason":"REST unavailable","recorded_at":..}`` per line."""
    out = []
    for line in data.splitlines():
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # a torn last record: the state file still lists those ids as missing
        if symbol is None or rec.get("symbol") == symbol:
            out.append(rec)
    return out


def read_missing(root: Path, symbol: str) -> list[Missing]:
    """Ids the recorder knew were missing and had not fetched yet when it last stopped."""
    path = root / layout.STATE / f"{symbol}.json"
    return _missing_in(path, _state_of(path))


def _state_of(path: Path) -> dict:
    """The JSON object in a state file ({} if there is none); StoreError if it is damaged."""
    if not path.exists():
        return {}
    try:
        state = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError:
        state = None
    if type(state) is not dict:
        raise StoreError(
            f"{path} is not a JSON object; move it aside and restart (the "
            "recorder then catches up from its last stored trade)"
        )
    return state


def _missing_in(path: Path, state: dict) -> list[Missing]:
    """The state's ``missing`` ranges, each ``[first_id, last_id, after_ms, before_ms]``."""
    ranges = state.get("missing", [])
    ok = type(ranges) is list and all(
        type(m) is list and len(m) == 4 and all(type(v) is int for v in m) and m[0] <= m[1]
        for m in ranges
    )
    if not ok:
        raise StoreError(
            f"{path}: 'missing' is not a list of [first_id, last_id, after_ms, "
            "before_ms] with first <= last; fix or move the file aside"
        )
    return [Missing(*m) for m in ranges]


def add_missing(root: Path, symbol: str, ranges: list[Missing]) -> None:
    """Add ``ranges`` to the ids the next ``recorder run`` of ``symbol`` fetches from REST
    (``state/SYMBOL.json``, ``"missing"``: ``[[first_id, last_id, after_ms, before_ms], ...]``).
    Only while no recorder runs (the caller holds the store lock): a running one rewrites it."""
    if not ranges:
        return
    path = root / layout.STATE / f"{symbol}.json"
    state = _state_of(path)
    have = _missing_in(path, state)
    new: list[Missing] = []
    for r in ranges:  # only ids not listed yet: a listed id would be fetched (and stored) twice
        pieces = [r]
        for h in have + new:
            pieces = [
                Missing(lo, hi, p.after_time, p.before_time)
                for p in pieces
                for lo, hi in (
                    (p.first, min(p.last, h.first - 1)),
                    (max(p.first, h.last + 1), p.last),
                )
                if lo <= hi
            ]
        new += pieces
    state["missing"] = [m.as_list() for m in sorted(have + new, key=lambda m: m.first)]
    atomic_write(path, orjson.dumps(state))
