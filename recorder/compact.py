"""Closing an hour: its NDJSON (and any earlier Parquet) become one Parquet file; and the
offline repairs ``recorder compact`` makes.

Steps, each safe to crash in and to rerun:
1. remove temporaries that dead processes left in the hour (``.trades.parquet.tmp-PID``);
2. read every row of the hour (Parquet plus NDJSON), quarantining lines that do not parse;
3. keep one row per trade id (the richest source), sort by trade id;
4. write under a temporary name, fsync, rename over ``trades.parquet``, fsync the directory;
5. read the file back and compare it with what was meant to be written;
6. only then delete the NDJSON files that went into it, inside ``store.changing`` so that
   readers which cannot list the store atomically notice and read again.
A crash before 6 leaves rows in both places; readers deduplicate and the next run repairs it.

``repair_hour`` mends an hour whose Parquet file is torn (its footer cannot be read): the file
is moved aside as ``trades.parquet.corrupt-<ns>``, the hour is rebuilt from its NDJSON if it
has any, and the ids it no longer holds (bounded by the neighbouring hours' ids) are written
to ``state/SYMBOL.json`` so that the next ``recorder run`` fetches them from REST.

``merge_days`` (``recorder compact --days``) merges each closed day's hour files into its day
file (``recorder/store/days.py``): a day that ended ``grace`` ago, with no NDJSON left and no
unreadable file, and with hour files to merge (rerunning it finishes a merge that crashed).
A torn day file is named like a torn hour file, but ``--repair`` cannot rebuild it: its hours
are gone, so the day's archive has to be imported again.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import polars as pl

from recorder.store import (
    BadLine,
    add_missing,
    changing,
    hour_files,
    layout,
    parquet_problem,
    pid_alive,
    read_hour,
    unreadable_parquet,
)
from recorder.store.days import DayMerge, merge_day
from recorder.store.durable import fsync_dir, write_parquet_atomic
from recorder.store.files import list_day
from recorder.store.schema import PARQUET_SCHEMA, merge_rows
from recorder.tracker import Missing

__all__ = [
    "CompactResult",
    "RepairResult",
    "StoreCompaction",
    "closed_days",
    "closed_hours",
    "compact_hour",
    "compact_store",
    "lost_ids",
    "merge_days",
    "repair_hour",
    "sweep_temporaries",
]

log = logging.getLogger("recorder")

# ``.trades.parquet.tmp-123`` (write_parquet_atomic, atomic_write) and ``.import-123`` (an
# archive import's staging directory): the number is the pid of the process writing it.
_TEMPORARY = re.compile(r"^\..+\.tmp-(\d+)$|^\.import-(\d+)$")


@dataclass(slots=True)
class CompactResult:
    hour_dir: Path
    rows: int
    ndjson_files: int
    rejected_lines: int


@dataclass(slots=True)
class RepairResult:
    """What ``repair_hour`` did to one torn Parquet file."""

    path: Path  # the torn file, as it was named
    moved_to: Path
    rows: int  # trades the hour holds after the repair (from its NDJSON)
    refetch: list[Missing]  # id ranges written to state/SYMBOL.json for the next run
    unknown: bool  # no earlier hour bounds the lost ids: import that day's archive instead


@dataclass(slots=True)
class StoreCompaction:
    """What ``compact_store`` did."""

    compacted: list[CompactResult] = field(default_factory=list)
    repaired: list[RepairResult] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)  # left as they are
    removed_temporaries: list[Path] = field(default_factory=list)
    merged: list[DayMerge] = field(default_factory=list)  # days merged (``days=True``)


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


def sweep_temporaries(directory: Path) -> list[Path]:
    """Remove the temporaries in ``directory`` (not below it) of processes that no longer
    run: a half-written Parquet file after a SIGKILL, an import's staging directory. Returns
    what was removed. Those of live processes (this one included) are left alone."""
    removed = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for e in entries:
        m = _TEMPORARY.match(e.name)
        if not m or pid_alive(int(m.group(1) or m.group(2))):
            continue
        path = Path(e.path)
        try:
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            continue
        log.info(
            "removed %s, left by a process that stopped (pid %s)", path, m.group(1) or m.group(2)
        )
        removed.append(path)
    return removed


# Compactions of one hour in one process take turns. A stopped recorder's compactor thread is
# abandoned, not joined (``sink.DaemonWorker``), and may still be at work when the process
# compacts the hour again; both would write ``.trades.parquet.tmp-PID``. Other processes are
# kept out by the store lock. Striped: a bounded set of locks, whatever the number of hours.
_HOUR_LOCKS = tuple(threading.Lock() for _ in range(64))


def compact_hour(root: Path, hour_dir: Path, include_active: bool = True) -> CompactResult:
    """Compact one hour directory. A running recorder passes ``include_active=False``: the
    open file it may still append to is left for the next round."""
    with _HOUR_LOCKS[hash(hour_dir.absolute()) % len(_HOUR_LOCKS)]:
        return _compact_hour(root, hour_dir, include_active)


def _compact_hour(root: Path, hour_dir: Path, include_active: bool) -> CompactResult:
    sweep_temporaries(hour_dir)
    ndjson = hour_files(hour_dir, include_active)[1]
    table, bad = read_hour(hour_dir, include_active)
    _quarantine(root, bad)
    table = merge_rows(table)
    final = hour_dir / layout.PARQUET
    write_parquet_atomic(table, final, root=root)
    # Only files listed before the read went into the Parquet file; one sealed since waits.
    if ndjson:
        with changing(root):
            for path in ndjson:
                path.unlink(missing_ok=True)
            fsync_dir(hour_dir)
    return CompactResult(hour_dir, table.height, len(ndjson), len(bad))


def closed_hours(root: Path, now_ms: int, grace_ms: int) -> list[Path]:
    """Hour directories holding NDJSON whose hour ended more than ``grace_ms`` before now."""
    out = []
    for d in layout.hour_dirs(root):
        _, hour = layout.parse_hour_dir(d)
        if (hour + 1) * layout.HOUR_MS + grace_ms <= now_ms and hour_files(d)[1]:
            out.append(d)
    return out


def lost_ids(
    before: tuple[int, int] | None, held: pl.DataFrame, after: tuple[int, int] | None
) -> tuple[list[Missing], bool]:
    """Ids an hour should hold but does not: (ranges, unknown). ``before`` and ``after`` are
    (trade id, trade time UTC ms) of the nearest trades stored in earlier and later hours,
    ``held`` the hour's remaining trades (``trade_id``, ``trade_time``). Ids step by one, so
    every id strictly between two neighbours in that sequence is lost. ``unknown`` is True
    when nothing earlier bounds the hour: its first ids cannot be told."""
    ms = held.select("trade_id", pl.col("trade_time").dt.epoch("ms").alias("ms")).sort("trade_id")
    edges = [pl.DataFrame([before], schema=ms.schema, orient="row")] if before else []
    edges.append(ms)
    if after:
        edges.append(pl.DataFrame([after], schema=ms.schema, orient="row"))
    seq = pl.concat(edges)
    gaps = seq.select(
        first=pl.col("trade_id").shift() + 1,
        last=pl.col("trade_id") - 1,
        after_time=pl.col("ms").shift(),
        before_time=pl.col("ms"),
    ).filter(pl.col("last") >= pl.col("first"))
    return [Missing(*r) for r in gaps.iter_rows()], before is None


def _edge(hour_dir: Path, last: bool) -> tuple[int, int] | None:
    """(id, time ms) of the highest (``last``) or lowest stored trade of an hour; None if it
    holds none or cannot be read (a torn neighbour is repaired in its own turn)."""
    try:
        table, _ = read_hour(hour_dir)
    except Exception:
        return None
    if table.is_empty():
        return None
    row = table.sort("trade_id").row(-1 if last else 0, named=True)
    return row["trade_id"], int(row["trade_time"].timestamp() * 1000)


def _neighbour(dirs: list[Path], last: bool) -> tuple[int, int] | None:
    for d in dirs:
        found = _edge(d, last)
        if found is not None:
            return found
    return None


def repair_hour(root: Path, torn: Path) -> RepairResult:
    """Move the torn Parquet file ``torn`` aside, rebuild its hour from NDJSON if the hour has
    any, and schedule the ids it no longer holds for refetching (``state/SYMBOL.json``).
    Run only while no recorder runs (the caller holds the store lock)."""
    hour_dir = torn.parent
    symbol, _ = layout.parse_hour_dir(hour_dir)
    aside = hour_dir / f"{layout.PARQUET}.corrupt-{time.time_ns()}"
    with changing(root):
        os.replace(torn, aside)
        fsync_dir(hour_dir)
    log.warning("moved the unreadable %s aside to %s", torn, aside.name)
    held = pl.DataFrame(schema=PARQUET_SCHEMA)
    if hour_files(hour_dir)[1]:
        compact_hour(root, hour_dir)
        held, _ = read_hour(hour_dir)
    dirs = layout.hour_dirs(root, symbol)
    i = dirs.index(hour_dir)
    before = _neighbour(dirs[:i][::-1], last=True)
    after = _neighbour(dirs[i + 1 :], last=False)
    refetch, unknown = lost_ids(before, held, after)
    add_missing(root, symbol, refetch)
    return RepairResult(torn, aside, held.height, refetch, unknown)


def closed_days(root: Path, now_ms: int, grace_ms: int) -> list[tuple[str, int]]:
    """(symbol, day index) of every day that ended more than ``grace_ms`` before now, holds
    hour files and no NDJSON, and whose files can all be read: the days to merge."""
    out = []
    for symbol in layout.symbol_dirs(root):
        for d in layout.day_dirs(root, symbol):
            _, day = layout.parse_day_dir(d)
            if (day + 1) * layout.DAY_MS + grace_ms > now_ms:
                continue
            try:
                files = list_day(root, symbol, day)
            except FileNotFoundError:
                continue  # nothing else writes a locked store; the next run sees it
            stored = [*files.hour_parquet.values(), *filter(None, [files.day_file])]
            if files.hour_parquet and not files.ndjson and not any(map(parquet_problem, stored)):
                out.append((symbol, day))
    return out


def merge_days(root: Path, now_ms: int, grace_ms: int) -> list[DayMerge]:
    """Merge every closed day (``closed_days``) into its day file, after removing what dead
    processes left in its date directory. The caller holds the store lock."""
    out = []
    for symbol, day in closed_days(root, now_ms, grace_ms):
        sweep_temporaries(layout.day_dir(root, symbol, day))
        out.append(merge_day(root, symbol, day))
        log.info("merged %s %s: %d trades", symbol, out[-1].path.parent.name, out[-1].rows)
    return out


def compact_store(
    root: Path, now_ms: int, grace_ms: int, repair: bool = False, days: bool = False
) -> StoreCompaction:
    """``recorder compact``: remove dead processes' temporaries, compact every closed hour,
    list (or with ``repair``, mend) torn Parquet files, and with ``days`` merge closed days
    into day files. The caller holds the store lock."""
    out = StoreCompaction()
    day_dirs = [d for s in layout.symbol_dirs(root) for d in layout.day_dirs(root, s)]
    for d in [root, root / layout.TRADES, root / layout.STATE, *day_dirs, *layout.hour_dirs(root)]:
        out.removed_temporaries += sweep_temporaries(d)
    torn = unreadable_parquet(root)
    if repair:  # a torn day file cannot be rebuilt here: it stays listed
        out.repaired = [repair_hour(root, p) for p, _ in torn if p.parent.name.startswith("hour=")]
        out.unreadable = [(p, why) for p, why in torn if not p.parent.name.startswith("hour=")]
    else:
        out.unreadable = torn
    skip = {path.parent for path, _ in out.unreadable}
    for d in closed_hours(root, now_ms, grace_ms):
        if d not in skip:
            out.compacted.append(compact_hour(root, d))
    if days:
        out.merged = merge_days(root, now_ms, grace_ms)
    return out
