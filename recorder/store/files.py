"""Reading the store back: NDJSON lines (tolerating a torn tail), the files of an hour, the
last stored trade, gaps and the ids still being fetched.

Readers and compaction run at the same time. Compaction only ever adds a file (the hour's
Parquet, renamed in) before it deletes the files that went into it, and it brackets every
deletion with ``changing(root)``, which bumps ``state/generation`` to an odd number and back to
even. So a reader that lists an hour once and reads what it listed sees every trade (a file
that vanished under it raises FileNotFoundError: list again), and a reader that cannot list
atomically (DuckDB's globs) compares ``generation(root)`` before and after and reads again if
it moved.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import orjson
import polars as pl

from recorder.errors import StoreError
from recorder.store import layout
from recorder.store.durable import atomic_write, check_writable
from recorder.store.schema import FIELDS, LINE_SCHEMA, PARQUET_SCHEMA, lines_to_table
from recorder.tracker import Missing

__all__ = [
    "BadLine",
    "add_missing",
    "hour_files",
    "init_store",
    "last_trade",
    "parquet_problem",
    "read_gaps",
    "read_missing",
    "read_ndjson",
    "unreadable_parquet",
]

STORE_FORMAT = 1


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
    ndjson = sorted(
        hour_dir / n
        for n in names
        if n.endswith(".ndjson") and not n.startswith(".")
        if include_active or n != layout.ACTIVE_NDJSON
    )
    return (hour_dir / layout.PARQUET if layout.PARQUET in names else None), ndjson


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
    """(file, reason) of every stored Parquet hour whose footer cannot be read."""
    out = []
    for d in layout.hour_dirs(root, symbol):
        pq = d / layout.PARQUET
        problem = parquet_problem(pq) if pq.exists() else None
        if problem is not None:
            out.append((pq, problem))
    return out


def last_trade(root: Path, symbol: str, skip_unreadable: bool = False) -> tuple[int, int] | None:
    """(trade id, trade time UTC ms) of the highest stored trade of ``symbol``, or None.
    An unreadable Parquet file is a StoreError, or with ``skip_unreadable`` passed over.

    Ids grow with trade time, so only the newest hour directories need reading."""
    for d in reversed(layout.hour_dirs(root, symbol)):
        try:
            table, _ = read_hour(d)
        except StoreError:
            if skip_unreadable:
                continue
            raise
        if table.height:
            row = table.select(
                pl.col("trade_id").max(),
                pl.col("trade_time").sort_by("trade_id").last().dt.epoch("ms"),
            ).row(0)
            return int(row[0]), int(row[1])
    return None


def read_gaps(root: Path, symbol: str | None = None) -> list[dict]:
    """Gap records (ids that could not be fetched), optionally of one symbol."""
    path = root / layout.GAPS
    if not path.exists():
        return []
    out = []
    for line in path.read_bytes().splitlines():
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
