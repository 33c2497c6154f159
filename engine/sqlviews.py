"""DuckDB over the store: the views in ``sql/`` plus the engine's results."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from engine.errors import DataError, InputError

__all__ = ["SQL_DIR", "connect", "find_cli", "interactive", "query_frame"]

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
VIEW_FILES = ("views.sql", "windows.sql")


def _quote(path: Path) -> str:
    return str(path).replace("'", "''")


def connect(data_dir: Path):
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET VARIABLE data_dir = '{_quote(data_dir)}'")
    for name in VIEW_FILES:
        con.execute((SQL_DIR / name).read_text())
    return con


def query_frame(data_dir: Path, query: str):
    """The result of ``query`` as a Polars frame; InputError with DuckDB's message if it fails."""
    import duckdb

    con = connect(data_dir)
    try:
        return con.sql(query).pl()
    except duckdb.Error as e:
        raise InputError(f"DuckDB: {str(e).splitlines()[0]}") from None
    except AttributeError:
        raise InputError("the query returned no rows to show (use SELECT ...)") from None


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
        args += ["-cmd", f".read {SQL_DIR / name}"]
    os.execv(exe, args)
