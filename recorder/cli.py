"""``recorder``: record Binance spot trades to hourly files, compact them, report status."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from recorder import __version__, cliutil, config
from recorder.cliutil import SYMBOL, SYMBOLS, data_dir_option
from recorder.errors import ConfigError, RecorderError

# click's auto_envvar_prefix: every option also reads TAPEWATCH_ + its parameter's name in
# capitals (TAPEWATCH_FSYNC_INTERVAL, TAPEWATCH_SYMBOLS), shown in --help (show_envvars).
ENV_PREFIX = "TAPEWATCH"
CONTEXT = {**cliutil.CONTEXT, "auto_envvar_prefix": ENV_PREFIX}
_errors = cliutil.errors(RecorderError)


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, prog_name="recorder")
def main() -> None:
    """Record Binance spot trades, every one of them, to hourly files.

    Options can also come from environment variables (TAPEWATCH_SYMBOLS,
    TAPEWATCH_FSYNC_INTERVAL ...), named in each command's --help; an unknown TAPEWATCH_*
    variable is refused. The engine's variables start with TAPEWATCH_ENGINE_.

    \b
    Example:
      recorder run --symbols btcusdt,ethusdt --data-dir data
      recorder status --data-dir data
    """
    cliutil.check_environment(
        lambda: cliutil.env_names(main, ENV_PREFIX), others=(cliutil.ENGINE_ENV_PREFIX,)
    )


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
    "--symbols",
    type=SYMBOLS,
    required=True,
    help="Comma-separated symbols, any case.",
)
@data_dir_option
@click.option(
    "--ws-url", default=config.DEFAULT_WS_URL, help="Stream host; /stream?streams=... is appended."
)
@click.option("--rest-url", default=config.DEFAULT_REST_URL, help="REST host for backfill.")
@click.option(
    "--metrics-addr",
    default=None,
    help="Serve Prometheus metrics on HOST:PORT (e.g. 127.0.0.1:9108); off by default.",
)
@click.option(
    "--upload-to",
    default=None,
    help="Also copy closed Parquet files and the gap log to s3://bucket/prefix, verified, "
    "as `recorder upload` does (local files stay); off by default.",
)
@click.option(
    "--endpoint-url",
    envvar="AWS_ENDPOINT_URL",
    default=None,
    help="S3-compatible server for --upload-to, e.g. http://127.0.0.1:8333; AWS S3 if unset. "
    "Credentials come from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION.",
)
@_setting_options
@cliutil.log_level_option()
@_errors
def run(symbols: tuple[str, ...], data_dir: Path, log_level: str, **tunables: Any) -> None:
    """Stream trades of SYMBOLS into the store until SIGTERM or SIGINT.

    The stream must open at start; REST (backfill only) may be down: the recorder records
    the stream and fills gaps once REST answers again. With --upload-to, closed files are
    copied in the background after each compaction and every --upload-interval seconds; an
    object store that is down or hangs is retried, and never stops or slows recording.

    \b
    Example:
      recorder run --symbols btcusdt,ethusdt --data-dir /var/lib/tapewatch
      recorder run --symbols btcusdt --data-dir data --upload-to s3://my-bucket/tapewatch
    """
    from recorder.service import run as run_recorder

    cliutil.setup_logging(log_level)
    cfg = config.RecorderConfig(symbols=symbols, data_dir=data_dir, **tunables)
    run_recorder(cfg)


@main.command(context_settings=CONTEXT)
@data_dir_option
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
@click.option(
    "--days",
    is_flag=True,
    help="Also merge each closed day's hour files into one day file "
    "(symbol=S/date=D/trades.parquet); rerun it to finish a merge that was interrupted.",
)
@_errors
def compact(data_dir: Path, grace: float, everything: bool, repair: bool, days: bool) -> None:
    """Turn closed hours' NDJSON into Parquet and repair what a crash left behind.

    Removes temporaries of processes that died, and names torn Parquet files (mended with
    --repair). With --days, days that ended --grace seconds ago and hold no NDJSON are merged
    into day files. Idempotent; refuses to run while a recorder writes the same store.

    \b
    Example:
      recorder compact --data-dir data
      recorder compact --data-dir data --repair
      recorder compact --data-dir data --days
    """
    from recorder.compact import compact_store
    from recorder.errors import StoreError
    from recorder.store import init_store
    from recorder.store.lock import StoreLock

    init_store(data_dir)
    with StoreLock(data_dir):
        now_ms = 2**62 if everything else int(time.time() * 1000)
        r = compact_store(data_dir, now_ms, int(grace * 1000), repair, days)
    trades = sum(c.rows for c in r.compacted)
    rejected = sum(c.rejected_lines for c in r.compacted)
    click.echo(
        f"compacted {len(r.compacted)} hours ({trades} trades); "
        f"{rejected} unparseable lines quarantined"
    )
    if days:
        click.echo(
            f"merged {len(r.merged)} days into day files "
            f"({sum(m.rows for m in r.merged)} trades, "
            f"{sum(m.hour_files for m in r.merged)} hour files removed)"
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
        hint = "run `recorder compact --repair` (stop the recorder first)"
        if any(not p.parent.name.startswith("hour=") for p, _ in r.unreadable):
            hint += "; a torn day file cannot be rebuilt: move it aside and import its day again"
        raise StoreError(f"{len(r.unreadable)} unreadable Parquet file(s): {listed}; {hint}")


@main.command(context_settings=CONTEXT)
@data_dir_option
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@_errors
def status(data_dir: Path, fmt: str) -> None:
    """Per symbol: last trade, how far behind now, hour files (Parquet, NDJSON) and day
    files stored, gaps; rejects; and any stored Parquet file that cannot be read.

    \b
    Example:
      recorder status --data-dir data --format json
    """
    import orjson

    from recorder.status import store_status

    cliutil.require_store(data_dir)
    report = store_status(data_dir)
    if fmt == "json":
        click.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return
    running = f"running (pid {report['pid']})" if report["recorder_running"] else "not running"
    click.echo(
        f"store {report['data_dir']}: recorder {running}; {report['rejects']} rejected frames"
    )
    if not report["symbols"]:
        click.echo("no symbols recorded yet")
        return
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
    if any(r["day_files"] for r in report["symbols"]):  # a store that merged days
        cols[6:6] = ["day_files", "hours_in_day_files"]
    rows = [[("" if r[c] is None else str(r[c])) for c in cols] for r in report["symbols"]]
    cliutil.write_table(cols, rows)
    for s in report["symbols"]:
        for f in s["unreadable_parquet"]:
            click.echo(
                f"unreadable {f['path']}: {f['reason']}; "
                "run `recorder compact --repair` (with the recorder stopped)"
            )


@main.command("import-archive", context_settings=CONTEXT)
@data_dir_option
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--symbol", type=SYMBOL, default=None, help="Symbol of the files; default: from the file names."
)
@_errors
def import_archive(data_dir: Path, files: tuple[Path, ...], symbol: str | None) -> None:
    """Import Binance archive zips (daily or monthly trades) into the store.

    Trades already stored are not duplicated; a file that does not parse imports nothing.

    \b
    Example:
      recorder import-archive --data-dir data BTCUSDT-trades-2024-08-08.zip
    """
    from recorder.archive import import_archives

    with cliutil.progress("bytes") as update:
        r = import_archives(data_dir, list(files), symbol, lambda d, t: update("import", d, t))
    rate = r.rows / r.seconds if r.seconds else 0
    folded = f", folded into {r.days_merged} day files" if r.days_merged else ""
    click.echo(
        f"imported {r.files} files: {r.rows} trades read, {r.new_rows} new, "
        f"{r.hours} hour files written{folded} ({rate:,.0f} trades/s)"
    )


@main.command("fetch-archive", context_settings=CONTEXT)
@data_dir_option
@click.option("--symbol", type=SYMBOL, required=True, help="Symbol, any case.")
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
@click.option("--base-url", default=config.DEFAULT_ARCHIVE_URL, help="Archive host.")
@_errors
def fetch_archive(data_dir: Path, symbol: str, start_day, end_day, base_url: str) -> None:
    """Download daily trade archives, verify their sha256, and import them.

    Downloads resume where they stopped; a day not published yet is reported, not fatal.

    \b
    Example:
      recorder fetch-archive --data-dir data --symbol btcusdt --start 2024-08-01 --end 2024-08-31
    """
    from recorder.archive import fetch_archives

    if end_day < start_day:
        raise ConfigError("--end is before --start")
    with cliutil.progress("bytes") as update:
        r = fetch_archives(
            data_dir,
            symbol,
            start_day.date(),
            end_day.date(),
            base_url,
            lambda d, t: update("import", d, t),
        )
    for name in r.not_published:
        click.echo(f"not published yet: {name}", err=True)
    i = r.imported
    click.echo(
        f"{len(r.downloaded)} downloaded, {len(r.cached)} already here, "
        f"{len(r.not_published)} not published; "
        f"imported {i.rows} trades ({i.new_rows} new) into {i.hours} hour files"
    )


@main.command(context_settings=CONTEXT)
@data_dir_option
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


@main.command(context_settings=CONTEXT)
@data_dir_option
@click.option(
    "--to", "to", required=True, help="Destination, s3://bucket/prefix (the bucket must exist)."
)
@click.option(
    "--endpoint-url",
    envvar="AWS_ENDPOINT_URL",
    show_envvar=True,
    default=None,
    help="S3-compatible server, e.g. http://127.0.0.1:8333; AWS S3 if unset. Credentials "
    "come from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION.",
)
@click.option(
    "--delete-local",
    is_flag=True,
    help="Delete each local file whose verified copy is recorded (each symbol's newest file "
    "stays, for the recorder to resume from).",
)
@_errors
def upload(data_dir: Path, to: str, endpoint_url: str | None, delete_local: bool) -> None:
    """Copy the store's closed Parquet files (hour and day files) and its gap log to S3,
    verified.

    Each copy is read back (size and sha256) before it is recorded in
    DATA_DIR/state/uploads.ndjson; files recorded and unchanged are skipped, so a rerun or
    a resumed run copies only what is missing or changed. Local files stay unless
    --delete-local. The engine reads the copy: engine run --data-dir s3://bucket/prefix.

    \b
    Example:
      AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... \\
        recorder upload --data-dir data --to s3://my-bucket/tapewatch
    """
    from recorder.store.objects import S3Settings, parse_target
    from recorder.upload import upload_store

    target = parse_target(to, "--to")
    settings = S3Settings.from_env(endpoint_url, option="--endpoint-url")
    with cliutil.progress("bytes") as update:
        r = upload_store(data_dir, target, settings, delete_local, update)
    rate = r.copied_bytes / 1e6 / r.seconds if r.seconds > 0 else 0.0
    line = (
        f"uploaded {r.copied} files ({r.copied_bytes / 1e6:.1f} MB, {rate:.1f} MB/s) "
        f"to {target.url}; {r.skipped} already uploaded"
    )
    if delete_local:
        line += f"; deleted {r.deleted} local files"
    if r.stale:
        line += (
            f"; {r.stale} copies had changed on the server since they were verified: "
            "their files are kept and go again on the next run"
        )
    click.echo(line)


cliutil.show_envvars(main)

if __name__ == "__main__":
    main()
