"""``recorder``: record Binance spot trades to hourly files, compact them, report status."""

from __future__ import annotations

import functools
import logging
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from recorder import __version__, config
from recorder.errors import ConfigError, RecorderError

CONTEXT = {
    "help_option_names": ["-h", "--help"],
    "auto_envvar_prefix": "TAPEWATCH",
    "show_default": True,
}
_SYMBOL = re.compile(r"^[A-Za-z0-9]+$")


def _errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Library errors become one ``Error:`` line and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RecorderError as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(1)

    return wrapper


def parse_symbols(text: str) -> tuple[str, ...]:
    """``"btcusdt, ETHusdt"`` -> ``("BTCUSDT", "ETHUSDT")``; ConfigError for anything else."""
    out = []
    for part in text.split(","):
        s = part.strip()
        if not _SYMBOL.fullmatch(s):
            raise ConfigError(
                f"symbol {s!r} is not alphanumeric; give symbols like --symbols btcusdt,ethusdt"
            )
        if s.upper() not in out:
            out.append(s.upper())
    return tuple(out)


def _data_dir_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--data-dir",
        envvar="TAPEWATCH_DATA_DIR",
        default=config.DEFAULT_DATA_DIR,
        type=click.Path(file_okay=False, path_type=Path),
        help="The store (env TAPEWATCH_DATA_DIR).",
    )(fn)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, prog_name="recorder")
def main() -> None:
    """Record Binance spot trades, every one of them, to hourly files.

    \b
    Example:
      recorder run --symbols btcusdt,ethusdt --data-dir data
      recorder status --data-dir data
    """


def _setting_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """One option per row of ``config.SETTINGS``, with its range checked by click."""
    for s in reversed(config.SETTINGS):
        hi = s.hi
        kind = (
            click.IntRange(int(s.lo), None if hi is None else int(hi))
            if s.type is int
            else click.FloatRange(s.lo, hi)
        )
        fn = click.option(s.option, s.name, type=kind, default=s.default, help=s.help)(fn)
    return fn


@main.command(context_settings=CONTEXT)
@click.option(
    "--symbols", required=True, help="Comma-separated symbols, any case (env TAPEWATCH_SYMBOLS)."
)
@_data_dir_option
@click.option(
    "--ws-url", default=config.DEFAULT_WS_URL, help="Stream host; /stream?streams=... is appended."
)
@click.option("--rest-url", default=config.DEFAULT_REST_URL, help="REST host for backfill.")
@click.option(
    "--metrics-addr",
    default=None,
    help="Serve Prometheus metrics on HOST:PORT (e.g. 127.0.0.1:9108); off by default.",
)
@_setting_options
@click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info"
)
@_errors
def run(symbols: str, data_dir: Path, log_level: str, **tunables: Any) -> None:
    """Stream trades of SYMBOLS into the store until SIGTERM or SIGINT.

    The stream must open at start; REST (backfill only) may be down: the recorder records
    the stream and fills gaps once REST answers again.

    \b
    Example:
      recorder run --symbols btcusdt,ethusdt --data-dir /var/lib/tapewatch
    """
    from recorder.service import run as run_recorder

    _setup_logging(log_level)
    cfg = config.RecorderConfig(symbols=parse_symbols(symbols), data_dir=data_dir, **tunables)
    run_recorder(cfg)


@main.command(context_settings=CONTEXT)
@_data_dir_option
@click.option(
    "--grace",
    type=float,
    default=config.default("compact_grace"),
    help="Only hours that ended this many seconds ago.",
)
@click.option("--all", "everything", is_flag=True, help="Compact open hours too.")
@click.option(
    "--repair",
    is_flag=True,
    help="Rebuild torn Parquet files from NDJSON, or move them aside and have the next "
    "`recorder run` refetch their trades.",
)
@_errors
def compact(data_dir: Path, grace: float, everything: bool, repair: bool) -> None:
    """Turn closed hours' NDJSON into Parquet and repair what a crash left behind.

    Removes temporaries of processes that died, and names torn Parquet files (mended with
    --repair). Idempotent; refuses to run while a recorder writes the same store.

    \b
    Example:
      recorder compact --data-dir data
      recorder compact --data-dir data --repair
    """
    from recorder.compact import compact_store
    from recorder.errors import StoreError
    from recorder.lock import StoreLock
    from recorder.store import init_store

    init_store(data_dir)
    with StoreLock(data_dir):
        now_ms = 2**62 if everything else int(time.time() * 1000)
        r = compact_store(data_dir, now_ms, int(grace * 1000), repair)
    trades = sum(c.rows for c in r.compacted)
    rejected = sum(c.rejected_lines for c in r.compacted)
    click.echo(
        f"compacted {len(r.compacted)} hours ({trades} trades); "
        f"{rejected} unparseable lines quarantined"
    )
    for path in r.removed_temporaries:
        click.echo(f"removed {path}, left by a process that stopped")
    for f in r.repaired:
        ids = ", ".join(f"{m.first}..{m.last}" for m in f.refetch) or "none"
        click.echo(
            f"repaired {f.path}: moved aside as {f.moved_to.name}; {f.rows} trades rebuilt "
            f"from NDJSON; ids to refetch on the next `recorder run`: {ids}"
        )
        if f.unknown:
            click.echo(
                f"  no earlier hour bounds its first ids: import the archive of that day "
                f"(recorder fetch-archive) to refill {f.path.parent}",
                err=True,
            )
    if r.unreadable:
        listed = "; ".join(f"{path} ({why})" for path, why in r.unreadable)
        raise StoreError(
            f"{len(r.unreadable)} unreadable Parquet file(s): {listed}; "
            "run `recorder compact --repair` (stop the recorder first)"
        )


@main.command(context_settings=CONTEXT)
@_data_dir_option
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@_errors
def status(data_dir: Path, fmt: str) -> None:
    """Per symbol: last trade, how far behind now, hours stored, gaps; rejects; and any
    stored Parquet file that cannot be read.

    \b
    Example:
      recorder status --data-dir data --format json
    """
    import orjson

    from recorder.status import store_status

    if not data_dir.is_dir():
        raise ConfigError(f"no store at {data_dir}; pass --data-dir where `recorder run` writes")
    report = store_status(data_dir)
    if fmt == "json":
        click.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return
    running = f"running (pid {report['pid']})" if report["recorder_running"] else "not running"
    click.echo(
        f"store {report['data_dir']}: recorder {running}; {report['rejects']} rejected frames"
    )
    cols = [
        "symbol",
        "last_trade_id",
        "last_trade_time",
        "behind_seconds",
        "hours_parquet",
        "hours_ndjson",
        "gaps",
        "gap_trades",
    ]
    rows = [[("" if r[c] is None else str(r[c])) for c in cols] for r in report["symbols"]]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for r in rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
    for s in report["symbols"]:
        for f in s["unreadable_parquet"]:
            click.echo(
                f"unreadable {f['path']}: {f['reason']}; "
                "run `recorder compact --repair` (with the recorder stopped)"
            )


def _bar(label: str):
    """(context manager, progress callback): a bar on stderr when it is a terminal."""
    if not sys.stderr.isatty():
        import contextlib

        return contextlib.nullcontext(), lambda done, total: None
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    task = bar.add_task(label, total=None)

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    return bar, update


@main.command("import-archive", context_settings=CONTEXT)
@_data_dir_option
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--symbol", default=None, help="Symbol of the files; default: from the file names.")
@_errors
def import_archive(data_dir: Path, files: tuple[Path, ...], symbol: str | None) -> None:
    """Import Binance archive zips (daily or monthly trades) into the store.

    Trades already stored are not duplicated; a file that does not parse imports nothing.

    \b
    Example:
      recorder import-archive --data-dir data BTCUSDT-trades-2024-08-08.zip
    """
    from recorder.archive import import_archives

    if symbol is not None:
        symbol = parse_symbols(symbol)[0]
    bar, progress = _bar("import")
    with bar:
        r = import_archives(data_dir, list(files), symbol, progress)
    rate = r.rows / r.seconds if r.seconds else 0
    click.echo(
        f"imported {r.files} files: {r.rows} trades read, {r.new_rows} new, "
        f"{r.hours} hour files written ({rate:,.0f} trades/s)"
    )


@main.command("fetch-archive", context_settings=CONTEXT)
@_data_dir_option
@click.option("--symbol", required=True, help="Symbol, any case.")
@click.option(
    "--start",
    "start_day",
    required=True,
    type=click.DateTime(["%Y-%m-%d"]),
    help="First day (UTC).",
)
@click.option(
    "--end",
    "end_day",
    required=True,
    type=click.DateTime(["%Y-%m-%d"]),
    help="Last day (UTC), inclusive.",
)
@click.option("--base-url", default="https://data.binance.vision", help="Archive host.")
@_errors
def fetch_archive(data_dir: Path, symbol: str, start_day, end_day, base_url: str) -> None:
    """Download daily trade archives, verify their sha256, and import them.

    Downloads resume where they stopped; a day not published yet is reported, not fatal.

    \b
    Example:
      recorder fetch-archive --data-dir data --symbol btcusdt --start 2024-08-01 --end 2024-08-31
    """
    from recorder.archive import fetch_archives

    sym = parse_symbols(symbol)[0]
    if end_day < start_day:
        raise ConfigError("--end is before --start")
    bar, progress = _bar("import")
    with bar:
        r = fetch_archives(data_dir, sym, start_day.date(), end_day.date(), base_url, progress)
    for name in r.not_published:
        click.echo(f"not published yet: {name}", err=True)
    i = r.imported
    click.echo(
        f"{len(r.downloaded)} downloaded, {len(r.cached)} already here, "
        f"{len(r.not_published)} not published; "
        f"imported {i.rows} trades ({i.new_rows} new) into {i.hours} hour files"
    )


@main.command(context_settings=CONTEXT)
@_data_dir_option
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@_errors
def replay(data_dir: Path, files: tuple[Path, ...]) -> None:
    """Store captured stream frames (one combined-stream frame per line, .gz allowed) through
    the recorder's own writer and compaction.

    \b
    Example:
      recorder replay --data-dir data capture.jsonl.gz
    """
    from recorder.archive import replay_frames

    r = replay_frames(data_dir, list(files))
    click.echo(f"replayed {r.rows} trades from {r.files} files; {r.hours} hours compacted")


if __name__ == "__main__":
    main()
