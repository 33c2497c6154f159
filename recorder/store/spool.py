"""Closed hours written in bulk: trades of any order and size into verified hour files.

``HourSpool`` takes trades in batches (an archive import, a simulated tape), spills them as
sorted runs, and merges each hour's runs, and the hour's stored rows, into one Parquet file
sorted by trade id, unique by id (``merge_rows``' rule), written under a staging directory and
read back against per-row-group digests before anything is renamed into the store. Memory is
bounded by the merge's batches, whatever the hour's size.

An hour of a day already merged into a day file (``recorder/store/days.py``) holds the day
file's rows of that hour too: they are merged like the hour's own, so an import into a merged
day writes an hour file beside the day file with every trade of that hour (readers deduplicate
such a day; ``recorder compact --days``, or the import itself, folds it back in).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recorder.errors import ArchiveError, CompactionError
from recorder.store import layout
from recorder.store.days import day_rows
from recorder.store.durable import changing, fsync_dir
from recorder.store.files import hour_files, parquet_problem, read_ndjson
from recorder.store.schema import (
    ARROW_SCHEMA,
    PARQUET_SCHEMA,
    PARQUET_WRITE,
    ROW_GROUP_ROWS,
    merge_rows,
)

__all__ = ["BATCH_ROWS", "FAN_IN", "HourSpool"]


_EMPTY = pl.DataFrame(schema=PARQUET_SCHEMA)


FAN_IN = 16  # sorted runs merged at once; more are first merged in groups of this many


BATCH_ROWS = ROW_GROUP_ROWS  # rows an hour file's row group holds, and the merge's unit of memory


@dataclass(slots=True)
class _Run:
    """A Parquet file sorted by trade id, and (row group, min id, max id) of its row groups."""

    path: Path
    groups: tuple[tuple[int, int, int], ...]
    _file: pq.ParquetFile | None = None

    @classmethod
    def of(cls, path: Path) -> _Run:
        meta = pq.read_metadata(path)
        col = meta.schema.names.index("trade_id")
        groups = []
        for i in range(meta.num_row_groups):
            if meta.row_group(i).num_rows == 0:
                continue
            st = meta.row_group(i).column(col).statistics
            if st is None or not st.has_min_max:
                ids = pq.ParquetFile(path).read_row_group(i, columns=["trade_id"])["trade_id"]
                groups.append((i, pc.min(ids).as_py(), pc.max(ids).as_py()))
            else:
                groups.append((i, st.min, st.max))
        return cls(path, tuple(groups))

    @property
    def ordered(self) -> bool:
        """Row groups in ascending, non-overlapping id ranges (as every writer here leaves
        them); within a group, ``read`` sorts if needed."""
        return all(a[2] <= b[1] for a, b in zip(self.groups, self.groups[1:], strict=False))

    def read(self, group: int) -> pl.DataFrame:
        if self._file is None:  # opened once: its footer lists every row group
            self._file = pq.ParquetFile(self.path)
        table = self._file.read_row_group(group, columns=list(PARQUET_SCHEMA))
        rows = _frame(table)
        return rows if rows["trade_id"].is_sorted() else rows.sort("trade_id", maintain_order=True)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _frame(table: pa.Table) -> pl.DataFrame:
    """Rows read from one of our Parquet files, typed as the store's columns."""
    rows = pl.from_arrow(table)
    assert isinstance(rows, pl.DataFrame)
    return rows.cast(pl.Schema(PARQUET_SCHEMA))


def _digest(table: pl.DataFrame) -> tuple[int, int]:
    """(rows, a checksum of every value): to check a file read back without keeping it."""
    return table.height, int(table.hash_rows(seed=7).to_numpy().sum(dtype=np.uint64))


class _Writer:
    """Row groups of ``rows`` rows into a Parquet file, buffered; digests of what was written."""

    def __init__(self, path: Path, rows: int, spill: bool = False):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.rows = path, rows
        # A spilled run is read once, soon: fast compression, no read-back check.
        self.spill = spill
        fast = {"compression": "lz4", "compression_level": None}
        self._out = pq.ParquetWriter(
            path, ARROW_SCHEMA, **(PARQUET_WRITE | fast if spill else PARQUET_WRITE)
        )
        self._buf: list[pl.DataFrame] = []
        self.buffered = 0
        self.digests: list[tuple[int, int]] = []

    def write(self, rows: pl.DataFrame) -> None:
        self._buf.append(rows)
        self.buffered += rows.height
        while self.buffered >= self.rows:
            self._flush(self.rows)

    def _flush(self, n: int) -> None:
        buf = pl.concat(self._buf)
        group, rest = buf.head(n), buf.slice(n)
        self._out.write_table(group.to_arrow().cast(ARROW_SCHEMA), row_group_size=n)
        if not self.spill:
            self.digests.append(_digest(group))
        self._buf, self.buffered = ([rest] if rest.height else []), rest.height

    def close(self) -> None:
        if self.buffered:
            self._flush(self.buffered)
        self._out.close()
        with open(self.path, "rb") as f:
            os.fsync(f.fileno())

    def verify(self) -> None:
        back = pq.ParquetFile(self.path)
        for i, want in enumerate(self.digests):
            if _digest(_frame(back.read_row_group(i))) != want:
                raise CompactionError(
                    f"{self.path} did not read back as written; nothing was imported. "
                    "Check the disk, then run the command again"
                )


def _merge(runs: list[_Run], emit: Callable[[pl.DataFrame], None], batch: int) -> int:
    """Merge sorted runs one row group at a time (the one with the lowest ids next): every id
    below the lowest id not read yet has all its copies read, so once ``batch`` rows are
    held, those rows are passed to ``emit`` (with ``_run``, the run's index) and dropped.
    Returns the most rows held at once."""
    heads = [0] * len(runs)
    held: list[pl.DataFrame] = []
    rows = peak = 0
    try:
        while True:
            nexts = [
                (runs[r].groups[h][1], r) for r, h in enumerate(heads) if h < len(runs[r].groups)
            ]
            if not nexts:
                break
            _, r = min(nexts)
            group = runs[r].read(runs[r].groups[heads[r]][0])
            heads[r] += 1
            held.append(group.with_columns(_run=pl.lit(r, pl.Int32)))
            rows += group.height
            peak = max(peak, rows)
            left = [runs[r].groups[h][1] for r, h in enumerate(heads) if h < len(runs[r].groups)]
            if left and rows < batch:
                continue
            pending = pl.concat(held)
            below = pl.col("trade_id") < (min(left) if left else 2**63 - 1)
            ready, pending = pending.filter(below), pending.filter(~below)
            held, rows = [pending], pending.height
            if ready.height:
                emit(ready)
    finally:
        for run in runs:
            run.close()
    return peak


class HourSpool:
    """Rows bound for hour files, spilled to disk as they come (sorted runs), and merged with
    what each hour already holds only at the end, as an external merge sort: at most
    ``FAN_IN`` runs at once, one small row group of each. So memory is bounded by a few
    ``batch_rows``, not by the rows of an hour: a zip bomb of 30 M trades in one hour is
    merged like any other. The merged files are staged beside the store and renamed in by
    ``commit``: all or nothing.

    Merge rule (compaction's): one row per trade id, the richest source (stream, then REST,
    then archive), among equals the stored copy. ``new_rows`` counts ids the hour did not hold
    (in Parquet or in the recorder's NDJSON); an hour that gains none is left alone.
    ``peak_rows`` is the most rows the merge held in memory at once."""

    def __init__(self, root: Path, batch_rows: int = BATCH_ROWS):
        self.root = root
        self.dir = root / f".import-{os.getpid()}"
        shutil.rmtree(self.dir, ignore_errors=True)
        self.batch_rows = batch_rows
        self.group_rows = max(64, batch_rows // FAN_IN)  # a run's row group
        self.parts: dict[tuple[str, int], list[_Run]] = {}
        self.new_rows = 0
        self.peak_rows = 0
        self._n = 0

    def _spill(self, rows: pl.DataFrame) -> _Run:
        """Write rows (sorted by id) as a run of small row groups."""
        self._n += 1
        path = self.dir / "spill" / f"run-{self._n:08d}.parquet"
        w = _Writer(path, self.group_rows, spill=True)
        w.write(rows.sort("trade_id", maintain_order=True))
        w.close()
        return _Run.of(path)

    def add(self, symbol: str, hour: int, rows: pl.DataFrame) -> None:
        """Queue ``rows`` (store columns) for the hour ``hour`` (hours since the epoch)."""
        if rows.height:
            self.parts.setdefault((symbol, hour), []).append(self._spill(rows))

    def _stored(self, symbol: str, hour: int) -> list[_Run]:
        """What an hour holds now (its rows in a day file, its Parquet, its NDJSON spilled
        sorted), as runs, the day file's first (among equal copies, it is kept)."""
        runs = []
        hour_dir = layout.hour_dir(self.root, symbol, hour)
        day_file = hour_dir.parent / layout.PARQUET
        if day_file.exists():
            problem = parquet_problem(day_file)
            if problem is not None:
                raise ArchiveError(
                    f"{day_file} is not a readable Parquet file ({problem}); move it aside and "
                    "import its day again; nothing was imported"
                )
            if (rows := day_rows(day_file, hour)).height:
                runs.append(self._spill(rows))
        pq_path, ndjson = hour_files(hour_dir)
        if pq_path is not None:
            problem = parquet_problem(pq_path)
            if problem is not None:
                raise ArchiveError(
                    f"{pq_path} is not a readable Parquet file ({problem}); "
                    "run `recorder compact --repair` first; nothing was imported"
                )
            run = _Run.of(pq_path)
            runs.append(run if run.ordered else self._spill(pl.read_parquet(pq_path)))
        tables = [read_ndjson(p)[0] for p in ndjson]  # a torn line waits for compaction
        if tables and (rows := pl.concat(tables)).height:
            runs.append(self._spill(rows))
        return runs

    def _reduce(self, runs: list[_Run]) -> list[_Run]:
        """Merge runs FAN_IN at a time until at most FAN_IN are left (order kept)."""
        while len(runs) > FAN_IN:
            merged = []
            for i in range(0, len(runs), FAN_IN):
                self._n += 1
                w = _Writer(
                    self.dir / "spill" / f"run-{self._n:08d}.parquet", self.group_rows, spill=True
                )

                def emit(rows: pl.DataFrame, w: _Writer = w) -> None:
                    w.write(merge_rows(rows.sort("_run", maintain_order=True)).drop("_run"))

                peak = _merge(runs[i : i + FAN_IN], emit, self.group_rows * FAN_IN)
                self.peak_rows = max(self.peak_rows, peak)
                w.close()
                for run in runs[i : i + FAN_IN]:
                    run.path.unlink()
                merged.append(_Run.of(w.path))
            runs = merged
        return runs

    def _merge_hour(self, symbol: str, hour: int, parts: list[_Run]) -> Path | None:
        """Merge an hour into a staged file; None if it would gain no trade."""
        final = layout.hour_dir(self.root, symbol, hour) / layout.PARQUET
        stored = self._stored(symbol, hour)
        runs = stored + self._reduce(parts)
        out = _Writer(self.dir / final.relative_to(self.root), self.batch_rows)
        new = most = 0  # trades the hour gains; most rows in the output buffer and a batch

        def emit(rows: pl.DataFrame) -> None:
            nonlocal new, most
            held = rows.filter(pl.col("_run") < len(stored))["trade_id"].n_unique()
            merged = merge_rows(rows.sort("_run", maintain_order=True)).drop("_run")
            new += merged.height - held
            out.write(merged)
            most = max(most, out.buffered + rows.height)

        peak = _merge(runs, emit, self.group_rows * FAN_IN)
        self.peak_rows = max(self.peak_rows, peak + most)
        out.close()
        if new == 0:
            out.path.unlink()
            return None
        out.verify()
        self.new_rows += new
        return out.path

    def merged_days(self) -> list[tuple[str, int]]:
        """(symbol, day index) of the days this spool wrote into that hold a day file."""
        days = sorted({(s, h // 24) for s, h in self.parts})
        return [
            (s, d) for s, d in days if (layout.day_dir(self.root, s, d) / layout.PARQUET).exists()
        ]

    def commit(self) -> int:
        """Merge every hour, then rename the merged files into the store; hours written."""
        staged = {}
        for (symbol, hour), parts in sorted(self.parts.items()):
            path = self._merge_hour(symbol, hour, parts)
            if path is not None:
                staged[(symbol, hour)] = path
        with changing(self.root):
            for (symbol, hour), path in staged.items():
                final = layout.hour_dir(self.root, symbol, hour) / layout.PARQUET
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, final)
                fsync_dir(final.parent)
        self.abort()
        return len(staged)

    def abort(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
