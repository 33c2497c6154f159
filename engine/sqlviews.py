"""DuckDB over the store: the views in ``sql/`` plus the engine's results.

The views glob the store's files, and a compaction may finish between two globs of one query
(the Parquet file renamed in after one glob, the NDJSON deleted before the next), which would
drop that hour silently. So ``query_frame`` reads the store's generation (see
``recorder.store``) before and after the query and runs it again if it moved, or if a file
vanished under DuckDB ("Cannot open file"): a result never undercounts.
"""

from __future__ import annotations

import importlib.resources
import os
import shutil
import sys
from pathlib import Path

from engine.errors import DataError, InputError
from recorder.store import generation, settled_generation

__all__ = ["VIEW_FILES", "connect", "find_cli", "interactive", "query_frame", "sql_file"]

VIEW_FILES = ("views.sql", "windows.sql")
_ATTEMPTS = 20  # runs of one query that keeps meeting a compaction before giving up


def sql_file(name: str) -> Path:
    """The path of one of the SQL scripts shipped with the engine (``views.sql``,
    ``windows.sql``): package data ``engine/sql/`` of the installed wheel, or in a checkout the
    top-level ``sql/``, which ``engine/sql`` links to. DataError if the install lacks it."""
    resource = importlib.resources.files("engine") / "sql" / name
    if not resource.is_file():
        raise DataError(f"{name} is missing from the engine package; reinstall tapewatch")
    # pip unpacks wheels, so the resource is a file on disk that the DuckDB CLI can .read.
    return Path(str(resource))


def _quote(path: Path) -> str:
    return str(path).replace("'", "''")


def connect(data_dir: Path):
    """A DuckDB connection with the views loaded; DataError naming the cause if they fail."""
    import duckdb

    con = duckdb.connect()
    try:
        con.execute(f"SET VARIABLE data_dir = '{_quote(data_dir)}'")
        for name in VIEW_FILES:
            con.execute(sql_file(name).read_text())
    except duckdb.Error as e:
        raise DataError(f"cannot load the views over {data_dir}: {_message(e)}") from None
    return con


def _message(e: Exception) -> str:
    text = str(e).splitlines()[0]
    if ".parquet" in text and "/trades/" in text.replace("\\", "/"):
        text += (
            "; `recorder status` lists unreadable store files, "
            "`recorder compact --repair` mends them"
        )
    return text


def query_frame(data_dir: Path, query: str):
    """The result of ``query`` as a Polars frame; InputError with DuckDB's message if it fails.
    Run again while compaction changes the files under it (see the module docstring)."""
    import duckdb

    con = connect(data_dir)
    for _ in range(_ATTEMPTS):
        before = settled_generation(data_dir)
        try:
            frame = con.sql(query).pl()
        except duckdb.IOException:
            continue  # a file listed by one glob was gone when opened: compacted meanwhile
        except duckdb.Error as e:
            if generation(data_dir) != before:
                continue  # a file replaced under the query
            raise InputError(f"DuckDB: {_message(e)}") from None
        except AttributeError:
            raise InputError("the query returned no rows to show (use SELECT ...)") from None
        if generation(data_dir) == before:
            return frame
    try:
        con.sql(query).pl()
    except duckdb.Error as e:
        raise InputError(f"DuckDB: {_message(e)}") from None
    raise DataError(f"the store at {data_dir} kept changing during the query; run it again")


def find_cli() -> str | None:
    """The DuckDB CLI: on PATH, or beside this Python (the venv's ``duckdb-cli``)."""
    here = os.path.dirname(sys.executable)
    return shutil.which("duckdb", path=os.pathsep.join([here, os.environ.get("PATH", "")]))


def interactive(data_dir: Path) -> None:
    """Replace this process with the DuckDB shell, the views loaded."""
    exe = find_cli()
    if exe is None:
        raise DataError(
            "the DuckDB CLI is not installed; `pip install duckdb-cli` (or see "
            'https://duckdb.org/docs/installation), or run one query: engine sql "SELECT ..."'
        )
    args = [exe, "-cmd", f"SET VARIABLE data_dir='{_quote(data_dir)}'"]
    for name in VIEW_FILES:
        args += ["-cmd", f".read {sql_file(name)}"]
    os.execv(exe, args)
