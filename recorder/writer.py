"""Appending to the store: open-hour NDJSON files, rejects, gap records, small state files.

A ``StoreWriter`` is used from one thread only (the recorder gives it a dedicated executor), so
writes happen in the order they were queued: a gap's state record is on disk before the trade
that revealed it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import BinaryIO

import orjson

from recorder.errors import StoreError
from recorder.store import layout
from recorder.store.durable import atomic_write, fsync_dir

__all__ = ["StoreWriter"]


def _open_append(path: Path) -> BinaryIO:
    """Open for append; if a crash left a torn last line, end it so the next line starts clean."""
    f = open(path, "ab", buffering=1 << 16)  # noqa: SIM115 - held open across calls
    if f.tell() > 0:
        with open(path, "rb") as r:
            r.seek(-1, os.SEEK_END)
            if r.read(1) != b"\n":
                f.write(b"\n")
    return f


class StoreWriter:
    """Append-only writer for one data directory."""

    def __init__(self, root: Path):
        self.root = root
        self._files: dict[tuple[str, int], BinaryIO] = {}
        self._dirty: set[BinaryIO] = set()
        self._new_dirs: set[Path] = set()
        self._rejects: BinaryIO | None = None
        self._rejects_day = ""
        self.bytes_written = 0

    def append(self, batch: list[tuple[str, int, bytes]]) -> None:
        """Append trade lines ``(symbol, hour index, line)`` to their open-hour files."""
        groups: dict[tuple[str, int], list[bytes]] = {}
        for symbol, hour, line in batch:
            groups.setdefault((symbol, hour), []).append(line)
        for key, lines in groups.items():
            f = self._files.get(key)
            if f is None:
                f = self._open(key)
            data = b"".join(lines)
            f.write(data)
            self.bytes_written += len(data)
            self._dirty.add(f)

    def _open(self, key: tuple[str, int]) -> BinaryIO:
        d = layout.hour_dir(self.root, *key)
        if not d.is_dir():
            d.mkdir(parents=True, exist_ok=True)
            self._new_dirs.update((d, d.parent, d.parent.parent))
        path = d / layout.ACTIVE_NDJSON
        if not path.exists():
            self._new_dirs.add(d)
        f = self._files[key] = _open_append(path)
        return f

    def reject(self, line: bytes, now_s: float) -> None:
        """Quarantine one frame (a line made by ``frames.reject_line``)."""
        day = time.strftime("%Y-%m-%d", time.gmtime(now_s))
        if self._rejects is None or day != self._rejects_day:
            if self._rejects is not None:
                self._rejects.close()
            d = self.root / layout.REJECTS
            d.mkdir(parents=True, exist_ok=True)
            self._rejects = _open_append(d / f"rejects-{day}.ndjson")
            self._rejects_day = day
        self._rejects.write(line)
        self._dirty.add(self._rejects)

    def sync(self) -> None:
        """Flush and fsync everything written since the last call."""
        for f in self._dirty:
            f.flush()
            os.fsync(f.fileno())
        self._dirty.clear()
        for d in sorted(self._new_dirs, key=lambda p: len(p.parts), reverse=True):
            fsync_dir(d)
        self._new_dirs.clear()

    def seal(self, symbol: str, hour: int) -> None:
        """Take an hour's open NDJSON out of use (renamed for compaction); later trades for
        the hour start a new file."""
        f = self._files.pop((symbol, hour), None)
        if f is not None:
            f.flush()
            os.fsync(f.fileno())
            self._dirty.discard(f)
            f.close()
        d = layout.hour_dir(self.root, symbol, hour)
        active = d / layout.ACTIVE_NDJSON
        if active.exists():
            os.rename(active, d / layout.sealed_name(time.time_ns()))
            fsync_dir(d)

    def check_linked(self) -> None:
        """StoreError if a file we append to was deleted (``rm -rf data/trades``): appends
        would go to a file nobody can read."""
        for f in [*self._files.values(), self._rejects]:
            if f is not None and os.fstat(f.fileno()).st_nlink == 0:
                raise StoreError(
                    f"{f.name} was deleted while being written; stopping so that a restart "
                    "records into the store on disk and backfills what was lost"
                )

    def record_gaps(self, records: list[dict]) -> None:
        """Append gap records (ids that could not be fetched) and fsync them at once."""
        path = self.root / layout.GAPS
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as f:
            f.write(b"".join(orjson.dumps(r) + b"\n" for r in records))
            f.flush()
            os.fsync(f.fileno())

    def write_state(self, name: str, state: dict) -> None:
        atomic_write(self.root / layout.STATE / f"{name}.json", orjson.dumps(state))

    def close(self) -> None:
        """fsync and close every file; each file is closed even if another one fails."""
        try:
            self.sync()
        finally:
            errors = []
            for f in [*self._files.values(), self._rejects]:
                if f is not None:
                    try:
                        f.close()
                    except OSError as e:  # its buffer could not be flushed: disk full
                        errors.append(e)
            self._files.clear()
            self._dirty.clear()
            self._rejects = None
            if errors:
                raise errors[0]
