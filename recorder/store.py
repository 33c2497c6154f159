"""Reading the store back: NDJSON lines (tolerating a torn tail), the last stored trade,
gaps and state, and the lock that keeps two writers off one data directory."""

from __future__ import annotations

import fcntl
import io
import os
from dataclasses import dataclass
from pathlib import Path

import orjson
import polars as pl

from recorder import layout
from recorder.errors import StoreError, StoreLockedError
from recorder.schema import LINE_SCHEMA, PARQUET_SCHEMA, lines_to_table
from recorder.tracker import Missing
from recorder.writer import atomic_write, check_writable

__all__ = [
    "BadLine",
    "StoreLock",
    "init_store",
    "last_trade",
    "read_gaps",
    "read_missing",
    "read_ndjson",
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
    if type(data) is dict:
        return type(data.get("t")) is int and type(data.get("T")) is int
    rest = obj.get("rest")
    return type(rest) is dict and type(rest.get("id")) is int and type(rest.get("time")) is int


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


def hour_ndjson(hour_dir: Path, include_active: bool = True) -> list[Path]:
    """The NDJSON files of an hour; without the one a running writer may still append to."""
    return sorted(
        p for p in hour_dir.glob("*.ndjson") if include_active or p.name != layout.ACTIVE_NDJSON
    )


def read_hour(hour_dir: Path, include_active: bool = True) -> tuple[pl.DataFrame, list[BadLine]]:
    """All rows of one hour directory (Parquet plus NDJSON), not yet deduplicated."""
    frames, bad = [], []
    pq = hour_dir / layout.PARQUET
    if pq.exists():
        try:
            frames.append(pl.read_parquet(pq).select(list(PARQUET_SCHEMA)))
        except Exception as e:
            raise StoreError(f"{pq} is not a readable Parquet file ({e}); move it aside") from None
    for path in hour_ndjson(hour_dir, include_active):
        table, b = read_ndjson(path)
        frames.append(table)
        bad.extend(b)
    if not frames:
        return pl.DataFrame(schema=PARQUET_SCHEMA), bad
    return pl.concat(frames, how="vertical"), bad


def last_trade(root: Path, symbol: str) -> tuple[int, int] | None:
    """(trade id, trade time UTC ms) of the highest stored trade of ``symbol``, or None.

    Ids grow with trade time, so only the newest hour directories need reading."""
    for d in reversed(layout.hour_dirs(root, symbol)):
        table, _ = read_hour(d)
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
    if not path.exists():
        return []
    state = orjson.loads(path.read_bytes())
    return [Missing(*m) for m in state.get("missing", [])]


class StoreLock:
    """An exclusive lock on a data directory, held while a recorder runs or compaction runs."""

    def __init__(self, root: Path):
        self.path = root / layout.LOCK
        self._fd: int | None = None

    def __enter__(self) -> StoreLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StoreLockedError(
                f"{self.path.parent} is in use by another recorder (pid {holder}); "
                "stop it first, or use another --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
