"""``engine``: rebuild windows, scores and horizon comparisons from the stored trades.

Heavy libraries (Polars, scikit-learn, SciPy) are imported inside the commands so that
``engine --help`` stays fast.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from engine import config
from engine.durations import parse_duration, parse_durations, parse_time
from engine.errors import EngineError, InputError

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True}


DATA_DIR_OPTION = click.option(
    "--data-dir",
    envvar="TAPEWATCH_DATA_DIR",
    default="./data",
    type=click.Path(path_type=Path),
    help="The store (env TAPEWATCH_DATA_DIR).",
)


def _errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from recorder.errors import RecorderError

        try:
            return fn(*args, **kwargs)
        except (EngineError, RecorderError) as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(1)

    return wrapper


def _progress():
    """A progress callback drawing a bar on stderr when it is a terminal."""
    if not sys.stderr.isatty():
        return lambda stage, done, total: None
    from rich.console import Console
    from rich.progress import Progress

    bar = Progress(transient=True, console=Console(stderr=True))
    tasks: dict[str, Any] = {}

    def update(stage: str, done: int, total: int) -> None:
        if not bar.live.is_started:
            bar.start()
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total)
        bar.update(tasks[stage], completed=done, total=total)
        if all(t.finished for t in bar.tasks):
            bar.stop()

    return update


def store_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed(
        [
            DATA_DIR_OPTION,
            click.option("--symbol", default="BTCUSDT", help="Symbol, any case."),
            click.option("--every", default=config.EVERY, help="Window size: 250ms, 20s, 5m, 1h."),
            click.option(
                "--start",
                default=None,
                help="First window (ISO 8601, UTC); default: the first trade.",
            ),
            click.option(
                "--end",
                default=None,
                help="End, exclusive (ISO 8601, UTC); default: the last trade.",
            ),
        ]
    ):
        fn = opt(fn)
    return fn


def model_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed(
        [
            click.option(
                "--buffer",
                default=config.BUFFER,
                help="Windows per training set (first model after this many).",
            ),
            click.option(
                "--retrain-every", default=config.RETRAIN_EVERY, help="Windows between refits."
            ),
            click.option(
                "--contamination",
                default=config.CONTAMINATION,
                help="Isolation Forest contamination.",
            ),
            click.option("--trees", default=config.TREES, help="Trees per forest."),
            click.option("--seed", default=config.SEED, help="Random seed (every refit uses it)."),
            click.option(
                "--features",
                default=",".join(config.FEATURES),
                help="Comma-separated window features.",
            ),
            click.option("--jobs", default=config.JOBS, help="Parallel refits (processes)."),
            click.option(
                "--backend",
                type=click.Choice(["sklearn", "numpy"]),
                default=config.BACKEND,
                help="Isolation Forest: sklearn (reference) or numpy (faster, not bit-identical).",
            ),
        ]
    ):
        fn = opt(fn)
    return fn


def output_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option(
        "--output",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Write to FILE (.parquet, .csv, .json, .ndjson).",
    )(fn)
    return click.option(
        "--format", "fmt", type=click.Choice(["table", "csv", "json", "ndjson"]), default="table"
    )(fn)


def horizons_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--horizons",
        default=config.HORIZONS,
        help="Comma-separated horizons, multiples of --every.",
    )(fn)


def horizon_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = horizons_option(fn)
    fn = click.option(
        "--baseline",
        type=click.Choice(["trailing", "full"]),
        default=config.BASELINE,
        help="Volatility baseline; full is look-ahead (prototype).",
    )(fn)
    return click.option("--reps", default=config.REPS, help="Bootstrap replicates.")(fn)


def settings(kw: dict[str, Any]):
    from engine.model import ModelParams
    from engine.pipeline import DEFAULT_HORIZONS, Settings

    model = ModelParams(
        buffer=kw.get("buffer", config.BUFFER),
        retrain_every=kw.get("retrain_every", config.RETRAIN_EVERY),
        contamination=kw.get("contamination", config.CONTAMINATION),
        trees=kw.get("trees", config.TREES),
        seed=kw.get("seed", config.SEED),
        backend=kw.get("backend", config.BACKEND),
        features=tuple(
            f.strip() for f in kw.get("features", ",".join(config.FEATURES)).split(",") if f.strip()
        ),
    )
    from engine.scan import parse_symbol

    symbol = parse_symbol(kw["symbol"])
    return Settings(
        data_dir=kw["data_dir"],
        symbol=symbol,
        every_ms=parse_duration(kw["every"]),
        start_ms=parse_time(kw["start"]) if kw.get("start") else None,
        end_ms=parse_time(kw["end"]) if kw.get("end") else None,
        model=model,
        horizons=tuple(parse_durations(kw["horizons"])) if kw.get("horizons") else DEFAULT_HORIZONS,
        baseline=kw.get("baseline", config.BASELINE),
        jobs=kw.get("jobs", config.JOBS),
        reps=kw.get("reps", config.REPS),
    )


def print_report(report: dict[str, Any], fmt: str, output: Path | None) -> None:
    import polars as pl

    from engine.output import emit_table

    rows = pl.DataFrame(report["rows"], infer_schema_length=None)
    envelope = {k: v for k, v in report.items() if k != "rows"}
    if fmt == "table" and output is None:
        rate = report["flag_rate"]
        rate_text = (
            f"{rate:.2%}"
            if isinstance(rate, float)
            else ", ".join(f"{k}: {v:.2%}" for k, v in rate.items())
        )
        click.echo(
            f"flag rate {rate_text}; {report['comparisons']} comparisons "
            "(p_naive: Mann-Whitney as if windows were independent, which overlapping "
            "horizons are not: it overstates confidence; p_naive_bh: Benjamini-Hochberg "
            "over the table; ratio_adjusted: if_only against normal windows alike in "
            "trailing volatility, activity and time of day)"
        )
        if report["parameters"].get("baseline_lookahead"):
            click.echo("baseline: full sample (look-ahead, reproduces the prototype)")
    emit_table(rows, fmt, output, envelope)


def print_verdict(ev: dict[str, Any]) -> None:
    """The answer first: one sentence, then the model against the forecast per horizon."""
    import polars as pl

    from engine.output import emit_table
    from engine.verdict import by_horizon, headline

    click.echo(f"VERDICT: {headline(ev)}")
    emit_table(pl.DataFrame(by_horizon(ev), infer_schema_length=None), "table")
    ledger = ev.get("ledger_comparisons")
    if ledger is not None:
        click.echo(
            f"({ev['comparisons']} comparisons in this run, {ledger} on this store so far: "
            "the more are run, the more will look significant by chance)"
        )


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="tapewatch", prog_name="engine")
def main() -> None:
    """Rebuild windows, walk-forward scores and horizon comparisons from the stored trades.

    \b
    Example:
      engine run --data-dir data --symbol btcusdt --every 20s
      engine horizons --data-dir data --every 30s --horizons 1m,5m
    """


@main.command(context_settings=CONTEXT)
@store_options
@output_options
@_errors
def windows(fmt: str, output: Path | None, **kw: Any) -> None:
    """The window table: one row per window on the complete grid.

    \b
    Example:
      engine windows --data-dir data --symbol btcusdt --every 20s --output w.parquet
    """
    from engine.output import emit_table
    from engine.pipeline import load_windows

    emit_table(load_windows(settings(kw), _progress()), fmt, output)


@main.command(context_settings=CONTEXT)
@store_options
@model_options
@output_options
@_errors
def score(fmt: str, output: Path | None, **kw: Any) -> None:
    """Windows plus the walk-forward model's score, prediction and refit.

    \b
    Example:
      engine score --data-dir data --every 20s --buffer 500 --retrain-every 100
    """
    from engine.output import emit_table
    from engine.pipeline import flag_rate, load_windows, score_windows

    s = settings(kw)
    progress = _progress()
    scored = score_windows(s, load_windows(s, progress), progress)
    n = int(scored["prediction"].is_not_null().sum())
    click.echo(f"flag rate {flag_rate(scored):.2%} of {n} scored windows", err=True)
    emit_table(scored, fmt, output)


@main.command(context_settings=CONTEXT)
@store_options
@model_options
@horizon_options
@click.option(
    "--windows-csv",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Read the prototype's window file instead of the store.",
)
@output_options
@_errors
def horizons(fmt: str, output: Path | None, windows_csv: Path | None, **kw: Any) -> None:
    """Do flagged windows precede larger moves? The comparison table.

    \b
    Example:
      engine horizons --data-dir data --every 20s --horizons 1m,5m,15m,30m
      engine horizons --windows-csv prototype.csv --every 20s --baseline full
    """
    from engine.pipeline import horizon_report, load_windows, prototype_report, score_windows

    s = settings(kw)
    if windows_csv is not None:
        report = prototype_report(windows_csv, s.every_ms, s.horizons, s.baseline, s.reps)
    else:
        progress = _progress()
        report = horizon_report(s, score_windows(s, load_windows(s, progress), progress))
    print_report(report, fmt, output)


@main.command(context_settings=CONTEXT)
@store_options
@model_options
@horizons_option
@click.option(
    "--windows-csv",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Read the prototype's window file (prediction -1 = flagged) instead of the store.",
)
@output_options
@_errors
def evaluate(fmt: str, output: Path | None, windows_csv: Path | None, **kw: Any) -> None:
    """The verdict: does the flag tell anything about future moves that volatility does not?

    Per horizon and flag (the model and three z-score competitors at its flag rate): the
    flag's multiplicative effect on future realized variance beyond a walk-forward HAR-RV
    forecast, with a 95 % HAC interval, a one-sided rotation-test p-value, the out-of-sample
    gain, Clark-West and Diebold-Mariano tests. Each row is added to the store's ledger
    (DATA_DIR/results/ledger.ndjson).

    \b
    Example:
      engine evaluate --data-dir data --symbol btcusdt --every 20s --horizons 1m,5m,15m,30m
      engine evaluate --windows-csv prototype.csv --every 20s --format json
    """
    import polars as pl

    from engine.evaluate import evaluate_csv, evaluate_scored
    from engine.output import emit_table
    from engine.pipeline import load_windows, score_windows

    s = settings(kw)
    if windows_csv is not None:
        ev = evaluate_csv(windows_csv, s.every_ms, s.horizons)
    else:
        progress = _progress()
        ev = evaluate_scored(s, score_windows(s, load_windows(s, progress), progress))
    for note in ev.notes:
        click.echo(f"note: {note}", err=True)
    rows = pl.DataFrame(ev.rows, infer_schema_length=None)
    if fmt == "table" and output is None:
        rate = "n/a" if ev.flag_rate is None else f"{ev.flag_rate:.2%}"
        ledger = "" if ev.ledger_comparisons is None else f", {ev.ledger_comparisons} so far"
        click.echo(
            f"model flag rate {rate}; {ev.evaluated_windows} windows with a forecast; "
            f"{ev.comparisons} comparisons in this run{ledger} on this store "
            "(p_value: rotation test, one-sided; p_bh: Benjamini-Hochberg over this run)"
        )
        rows = rows.select(
            "horizon", "flag", "metric", "n", "flags", "effect", "effect_ci_low",
            "effect_ci_high", "p_value", "p_bh", "oos_r2_gain", "qlike_gain",
            "clark_west_p", "dm_stat", "dm_p", "verdict",
        )  # fmt: skip
    emit_table(rows, fmt, output)


@main.command(context_settings=CONTEXT)
@click.option(
    "--results",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    required=True,
    help="A results folder `engine run` wrote.",
)
@_errors
def verdict(results: Path) -> None:
    """Print the answer of a finished `engine run`: does the flag tell anything about the
    next moves that a volatility forecast built from the same information does not?

    \b
    Example:
      engine verdict --results data/results/BTCUSDT-20s
    """
    import orjson

    path = results / "evaluate.json"
    try:
        ev = orjson.loads(path.read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError) as e:
        raise InputError(f"{path} is missing or damaged ({e}); rerun `engine run`") from None
    print_verdict(ev)


@main.command(context_settings=CONTEXT)
@store_options
@model_options
@horizon_options
@click.option(
    "--results",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Results folder; default DATA_DIR/results/SYMBOL-EVERY.",
)
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots.")
@click.option(
    "--report", "with_report", is_flag=True, help="Also write report.html into the results folder."
)
@output_options
@_errors
def run(
    fmt: str,
    output: Path | None,
    results: Path | None,
    no_plots: bool,
    with_report: bool,
    **kw: Any,
) -> None:
    """Windows, scores and horizons in one go, written to a results folder.

    \b
    Example:
      engine run --data-dir data --symbol btcusdt --every 20s --horizons 1m,5m,15m,30m
    """
    from engine.pipeline import run as run_all

    report, out = run_all(settings(kw), results, _progress(), plots=not no_plots or with_report)
    if fmt == "table" and output is None:
        print_verdict(report["evaluate"])
        click.echo("\nThe prototype's view, for comparison (not a test of the question):")
    print_report(report, fmt, output)
    if fmt == "table" and output is None and "detection" in report:
        d = report["detection"]
        click.echo(
            f"detection vs simulated truth (within {d['tolerance_s']:.0f} s): "
            f"precision {_pct(d.get('precision'))} (chance {_pct(d.get('precision_chance'))}), "
            f"recall {_pct(d.get('recall'))} (chance {_pct(d.get('recall_chance'))}), "
            f"median lead {d.get('median_lead_s')} s"
        )
    if with_report:
        from engine.report import write_report

        click.echo(f"report: {write_report(out)}", err=True)
    click.echo(f"results in {out}", err=True)


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0%}"


@main.command(context_settings=CONTEXT)
@click.option(
    "--results",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    required=True,
    help="A folder `engine run` wrote.",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="HTML file; default RESULTS/report.html.",
)
@_errors
def report(results: Path, output: Path | None) -> None:
    """Write one self-contained HTML report (opens offline) for a results folder.

    \b
    Example:
      engine report --results data/results/BTCUSDT-20s
    """
    from engine.report import write_report

    click.echo(str(write_report(results, output)))


@main.command(context_settings=CONTEXT)
@DATA_DIR_OPTION
@click.option("--symbol", default="SIMUSDT", help="Symbol to write the tape under.")
@click.option("--days", default=3.0, help="Days of simulated trading.")
@click.option("--seed", default=7, help="Random seed (same seed, same tape).")
@click.option(
    "--scenario",
    # engine.simulate.SCENARIOS and PRECURSOR_LEAD_S, spelt out here: the CLI does not
    # import numpy to show --help.
    type=click.Choice(["calibration", "precursor"]),
    default="calibration",
    help="calibration: nothing announces the events (anticipation must score at chance); "
    "precursor: adds volatility bursts announced by raised activity --lead seconds before.",
)
@click.option(
    "--lead",
    "lead_s",
    default=120,
    help="Seconds by which each precursor comes before its volatility burst (precursor only).",
)
@_errors
def simulate(
    data_dir: Path, symbol: str, days: float, seed: int, scenario: str, lead_s: int
) -> None:
    """Write a synthetic BTCUSDT-like tape with known regime shifts into the store.

    The ground truth goes to DATA_DIR/simulations/SYMBOL.json; `engine run` on the symbol
    then reports how often the detector warned before the events (precision, recall, lead),
    against chance.

    \b
    Example:
      engine simulate --symbol SIMUSDT --days 3 --seed 7 --data-dir data
      engine simulate --symbol PREUSDT --days 3 --scenario precursor --lead 120 --data-dir data
    """
    import time as _time

    from engine.scan import parse_symbol
    from engine.simulate import write_simulation

    symbol = parse_symbol(symbol)
    if not 0 < days <= 400:
        raise InputError("--days must be in (0, 400]")
    if not 20 <= lead_s <= 1800:
        raise InputError("--lead must be between 20 and 1800 seconds")
    t0 = _time.monotonic()
    truth = write_simulation(data_dir, symbol, days, seed, scenario, lead_s)
    kinds: dict[str, int] = {}
    for e in truth["events"]:
        kinds[e["kind"]] = kinds.get(e["kind"], 0) + 1
    click.echo(
        f"simulated {truth['symbol']}: {truth['trades']:,} trades, "
        f"{truth['start']} .. {truth['end']}, "
        f"{', '.join(f'{v} {k}s' for k, v in kinds.items())}"
        + (f", precursors {lead_s} s ahead" if scenario == "precursor" else "")
        + f" ({_time.monotonic() - t0:.1f} s)"
    )


@main.command(context_settings=CONTEXT)
@store_options
@model_options
@horizon_options
@output_options
@_errors
def sweep(fmt: str, output: Path | None, **kw: Any) -> None:
    """A grid of window sizes (one scan of the store), one combined table.

    \b
    Example:
      engine sweep --data-dir data --every 10s,20s,30s,60s --horizons 1m,5m
    """
    from engine.pipeline import sweep as run_sweep

    everies = [ms for _, ms in parse_durations(kw["every"])]
    print_report(run_sweep(settings({**kw, "every": "20s"}), everies, _progress()), fmt, output)


@main.command(context_settings=CONTEXT)
@DATA_DIR_OPTION
@click.option("--symbol", default="BTCUSDT", help="Symbol, any case.")
@click.option("--every", default=config.EVERY, help="Window size: 250ms, 20s, 5m, 1h.")
@model_options
@click.option(
    "--grace",
    default="2s",
    help="Wait this long (exchange time) after a window ends, for late trades.",
)
@click.option("--poll", default=0.2, help="Seconds between looks at the store.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "ndjson"]),
    default="table",
    help="One line per window, for people or machines.",
)
@click.option(
    "--on-anomaly", default=None, help="Command to run for a flagged window (window JSON on stdin)."
)
@click.option(
    "--webhook", default=None, help="URL to POST a flagged window's JSON to (with retries)."
)
@click.option("--webhook-tries", default=config.WEBHOOK_TRIES, help="Tries per alert (1-10).")
@click.option(
    "--hook-timeout",
    default=config.HOOK_TIMEOUT,
    help="Seconds one webhook request (reply included) or --on-anomaly run may take, in all.",
)
@click.option(
    "--alert-queue-max",
    default=config.ALERT_QUEUE_MAX,
    help="Alerts waiting for or in delivery; more are dropped (and counted).",
)
@click.option(
    "--metrics-addr",
    default=None,
    help="Serve Prometheus metrics on HOST:PORT (port 0: any free port, logged); default off.",
)
@click.option(
    "--results",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Results file; default DATA_DIR/results/SYMBOL-EVERY-watch/scores.ndjson.",
)
@click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info"
)
@_errors
def watch(
    grace: str,
    poll: float,
    fmt: str,
    on_anomaly: str | None,
    webhook: str | None,
    webhook_tries: int,
    hook_timeout: float,
    alert_queue_max: int,
    metrics_addr: str | None,
    results: Path | None,
    log_level: str,
    **kw: Any,
) -> None:
    """Score each window as it closes, exactly as `engine score` would, and raise alerts.

    Resumes after the last window it scored; stops on SIGTERM or Ctrl-C within a few
    seconds, giving up (and counting) alerts not delivered by then.

    \b
    Example:
      engine watch --data-dir data --symbol btcusdt --every 20s --webhook http://localhost:9000/hook
      engine watch --data-dir data --symbol btcusdt --metrics-addr 127.0.0.1:9109
    """
    import logging
    import signal

    from engine.watch import Watcher, WatchOptions
    from recorder.sdnotify import Notifier

    opts = WatchOptions(
        grace_ms=parse_duration(grace),
        poll=poll,
        fmt=fmt,
        on_anomaly=on_anomaly,
        webhook=webhook,
        webhook_tries=webhook_tries,
        hook_timeout=hook_timeout,
        alert_queue_max=alert_queue_max,
        metrics_addr=metrics_addr,
        results=results,
    )
    logging.basicConfig(
        level=getattr(logging, log_level.upper()),
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    w = Watcher(settings(kw), opts, notifier=Notifier())
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: w.stop_event.set())
    w.run()


@main.command(context_settings=CONTEXT)
@click.argument("query", required=False)
@DATA_DIR_OPTION
@output_options
@_errors
def sql(query: str | None, data_dir: Path, fmt: str, output: Path | None) -> None:
    """Run DuckDB SQL over the views trades, gaps, windows and scores.

    With no QUERY, open the DuckDB shell with the views loaded (needs the DuckDB CLI).

    \b
    Example:
      engine sql "SELECT symbol, count(*) FROM trades GROUP BY 1" --data-dir data
    """
    from engine.sqlviews import interactive, query_frame

    if query is None:
        interactive(data_dir)
        return
    from engine.output import emit_table

    emit_table(query_frame(data_dir, query), fmt, output)


if __name__ == "__main__":
    main()
