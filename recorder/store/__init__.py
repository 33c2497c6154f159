"""The store's contract: the one public way to write and read tapewatch's trade store.

The recorder writes through it and the engine reads through it; no other recorder module is
part of the contract.

    layout    where everything lives: ``DATA_DIR/trades/symbol=S/date=D/hour=H/`` with the
              open hour's ``trades.ndjson`` (and sealed ``*.ndjson`` left by restarts) and the
              closed hour's ``trades.parquet``; gaps, state, rejects, the lock, the marker
    schema    the stored columns and types (``PARQUET_SCHEMA``), how a stream frame or a REST
              trade maps onto them (``lines_to_table``, the one mapping: the SQL view is
              checked against it by a test), and which copy of a trade stored twice is kept
    files     reading: an hour's files from one listing (``hour_files``), NDJSON lines with a
              torn tail set aside (``parse_ndjson``), the last stored trade, gaps, missing ids
    durable   writing: ``atomic_write``, ``write_parquet_atomic`` (verified by reading back),
              ``fsync_dir``, and the generation counter that tells readers files changed
    lock      ``StoreLock``: one writer per data directory (``flock`` on the directory)
    spool     ``HourSpool``: closed hours written in bulk (imports, simulations), staged and
              verified before they are renamed in
    days      ``merge_day``: a closed day's hour files merged into one day file, verified,
              renamed in, then the hours deleted (readers count each trade once meanwhile)
    objects   a copy in S3-compatible storage: ``s3://bucket/prefix`` (``parse_target``), the
              ``AWS_*`` settings and a pyarrow S3 filesystem, shared by ``recorder upload``
              and the engine's reader (imported from ``recorder.store.objects`` directly)

Names are imported lazily (``from recorder.store import init_store`` loads ``files``), so a
command's ``--help`` does not pay for Polars and pyarrow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names as mypy sees them; at run time they load on first use
    from recorder.store.days import DayMerge, merge_day
    from recorder.store.durable import (
        atomic_write,
        changing,
        check_writable,
        fsync_dir,
        generation,
        pid_alive,
        settled_generation,
        write_parquet_atomic,
    )
    from recorder.store.files import (
        STORE_FORMAT,
        BadLine,
        add_missing,
        hour_files,
        hour_ndjson,
        init_store,
        last_trade,
        parquet_problem,
        parse_ndjson,
        read_gaps,
        read_hour,
        read_missing,
        read_ndjson,
        unreadable_parquet,
    )
    from recorder.store.lock import StoreLock, holder_pid
    from recorder.store.schema import (
        FIELDS,
        LINE_SCHEMA,
        PARQUET_SCHEMA,
        SOURCE_RANK,
        lines_to_table,
        merge_rows,
    )
    from recorder.store.spool import HourSpool

_HOME = {
    # files
    "BadLine": "files",
    "STORE_FORMAT": "files",
    "add_missing": "files",
    "hour_files": "files",
    "hour_ndjson": "files",
    "init_store": "files",
    "last_trade": "files",
    "parquet_problem": "files",
    "parse_ndjson": "files",
    "read_gaps": "files",
    "read_hour": "files",
    "read_missing": "files",
    "read_ndjson": "files",
    "unreadable_parquet": "files",
    # durable
    "atomic_write": "durable",
    "changing": "durable",
    "check_writable": "durable",
    "fsync_dir": "durable",
    "generation": "durable",
    "pid_alive": "durable",
    "settled_generation": "durable",
    "write_parquet_atomic": "durable",
    # schema
    "FIELDS": "schema",
    "LINE_SCHEMA": "schema",
    "PARQUET_SCHEMA": "schema",
    "SOURCE_RANK": "schema",
    "lines_to_table": "schema",
    "merge_rows": "schema",
    # lock
    "StoreLock": "lock",
    "holder_pid": "lock",
    # spool
    "HourSpool": "spool",
    # days
    "DayMerge": "days",
    "merge_day": "days",
}

__all__ = [
    "FIELDS",
    "LINE_SCHEMA",
    "PARQUET_SCHEMA",
    "SOURCE_RANK",
    "STORE_FORMAT",
    "BadLine",
    "DayMerge",
    "HourSpool",
    "StoreLock",
    "add_missing",
    "atomic_write",
    "changing",
    "check_writable",
    "fsync_dir",
    "generation",
    "holder_pid",
    "hour_files",
    "hour_ndjson",
    "init_store",
    "last_trade",
    "lines_to_table",
    "merge_day",
    "merge_rows",
    "parquet_problem",
    "parse_ndjson",
    "pid_alive",
    "read_gaps",
    "read_hour",
    "read_missing",
    "read_ndjson",
    "settled_generation",
    "unreadable_parquet",
    "write_parquet_atomic",
]


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'recorder.store' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"recorder.store.{home}"), name)
    globals()[name] = value
    return value
