"""``engine``: rebuild windows, scores and horizon comparisons from the stored trades.

Heavy libraries (Polars, scikit-learn, SciPy) are imported inside the commands so that
``engine --help`` stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from engine import config
from engine.durations import parse_time
from engine.errors import EngineError, InputError
from engine.results import HorizonTable
from recorder import cliutil
from recorder.cliutil import data_dir_option

CONTEXT = cliutil.CONTEXT
_errors = cliutil.errors(EngineError)


class _SettingType(click.ParamType):
    """A row of ``config.SETTINGS`` as a click type: a value that cannot be read or is out of
    range is one ``Error:`` line (exit 1) naming the option, or the environment variable it
    came from, before any work starts."""

    def __init__(self, setting: config.Setting, many: bool = False):
        self.s = setting
        self.many = many
        self.name = {"int": "integer", "float": "float", "text": "text"}.get(
            setting.kind, setting.kind
        )

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value  # a default already read, or a value given in code
        label = self.s.option
        name = param.name if param is not None else None
        if ctx and name and ctx.get_parameter_source(name) is ParameterSource.ENVIRONMENT:
            label = _env(self.s)
        try:
            return self.s.parse(value, label, many=self.many)
        except InputError as e:
            raise click.ClickException(str(e)) from None


class _Time(click.ParamType):
    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return value if isinstance(value, int) else parse_time(value)
        except InputError as e:
            raise click.ClickException(str(e)) from None


def _env(s: config.Setting) -> str:
    return cliutil.ENGINE_ENV_PREFIX + s.name.upper()


def _option(name: str, many: bool = False) -> Callable[[Callable[..., Any]], Any]:
    """The click option of setting ``name``: flag, default, help and environment variable
    from ``config.SETTINGS``."""
    s = config.SETTING[name]
    if s.kind == "choice":
        kind: click.ParamType = click.Choice(s.choices)
    elif s.kind == "symbol":
        kind = cliutil.SYMBOL
    else:
        kind = _SettingType(s, many)
    return click.option(
        s.option,
        s.name,
        type=kind,
        default=s.default,
        envvar=_env(s),
        show_envvar=True,
        help=s.help
        + (" Comma-separated for a grid." if many else "")
        + (f" Range: {s.bounds}." if s.bounds else ""),
    )


def _options(*names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        for name in reversed(names):
            fn = _option(name)(fn)
        return fn

    return decorate


def _range_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option(
        "--end",
        type=_Time(),
        default=None,
        help="End, exclusive (ISO 8601, UTC); default: the last trade.",
    )(fn)
    return click.option(
        "--start",
        type=_Time(),
        default=None,
        help="First window (ISO 8601, UTC); default: the first trade.",
    )(fn)


def store_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--data-dir``: a local store (a Path) or the ``s3://`` URL of a copy (text)."""
    return data_dir_option(fn, remote=True)


def _local_store_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--data-dir`` of a command that reads only a local store: an ``s3://`` URL is kept as
    text, so that ``_local_only`` refuses it with the reason (not a folder named ``s3:``)."""
    return data_dir_option(fn, remote=True, help="The store (a local folder).")


def _local_only(data_dir: Path | str, why: str) -> Path:
    """The local store of a command that cannot read a copy in object storage."""
    if isinstance(data_dir, str):
        raise InputError(f"--data-dir {data_dir} is a copy in object storage: {why}")
    return data_dir


def _store_options(grid: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The store, symbol, window size (``grid``: a comma-separated list) and range."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn = _option("max_windows")(fn)
        fn = _range_options(fn)
        fn = _option("every", many=grid)(fn)
        fn = _option("symbol")(fn)
        return store_option(fn)

    return decorate


store_options = _store_options(grid=False)


# The fields of engine.model.ModelParams; the commands' model options add --jobs.
_MODEL = ("buffer", "retrain_every", "contamination", "trees", "seed", "features", "backend")
model_options = _options(
    "buffer", "retrain_every", "contamination", "trees", "seed", "features", "jobs", "backend"
)
horizons_option = _options("horizons")
horizon_options = _options("horizons", "baseline", "reps")


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


def settings(kw: dict[str, Any]):
    """The run's Settings from the commands' options (already read and range-checked), with
    the checks that need more than one option: horizons against the window size."""
    from engine.model import ModelParams
    from engine.pipeline import Settings

    model = ModelParams(**{k: kw[k] for k in _MODEL if k in kw})
    every_ms = kw["every"]
    horizons = kw.get("horizons") or config.SETTING["horizons"].parse(config.HORIZONS)
    if "horizons" in kw:
        _check_horizons(horizons, every_ms)
    store_url = kw["data_dir"] if isinstance(kw["data_dir"], str) else None
    return Settings(
        data_dir=Path() if store_url else kw["data_dir"],  # a copy's results go here
        store_url=store_url,
        symbol=kw["symbol"],
        every_ms=every_ms,
        start_ms=kw.get("start"),
        end_ms=kw.get("end"),
        model=model,
        horizons=horizons,
        baseline=kw.get("baseline", config.BASELINE),
        jobs=kw.get("jobs", config.JOBS),
        reps=kw.get("reps", config.REPS),
    )


def _check_horizons(horizons: tuple[tuple[str, int], ...], every_ms: int) -> None:
    from engine.durations import format_ms
    from engine.horizons import horizons_for

    for h in horizons_for(horizons, every_ms):  # InputError unless multiples of the window
        if h.k > config.MAX_HORIZON_WINDOWS:
            raise InputError(
                f"horizon {h.label} is {h.k:,} windows of {format_ms(every_ms)}; at most "
                f"{config.MAX_HORIZON_WINDOWS:,} windows per horizon: give a shorter horizon "
                "or a larger --every"
            )


def _check_grid(
    s: Any, max_windows: int, everies: list[int] | None = None, one_of_many: bool = False
) -> None:
    """Refuse, before reading a trade, a window grid too big to build (see
    ``config.window_count_problem``); the range defaults to the stored hours. With
    ``one_of_many`` (a symbol of ``--symbols``), also a symbol whose whole span holds no
    more windows than the model's buffer, by name: it would fail after the others ran."""
    from engine.durations import format_ms
    from engine.scan import open_store

    index = open_store(s.store, s.symbol)  # DataError: no store, unknown symbol
    first = index.first_hour * 3_600_000 if s.start_ms is None else s.start_ms
    end = (index.last_hour + 1) * 3_600_000 if s.end_ms is None else s.end_ms
    explicit = s.start_ms is not None or s.end_ms is not None
    problem = config.window_count_problem(
        everies or [s.every_ms], first, end, max_windows, explicit
    )
    if problem:
        raise InputError(problem)
    every = max(everies or [s.every_ms])
    windows = max(0, end - first) // every
    if one_of_many and windows <= s.model.buffer:
        raise InputError(
            f"{s.symbol.upper()} spans {windows:,} windows of {format_ms(every)} in this range, "
            f"no more than --buffer {s.model.buffer}: the model cannot score it; leave it out "
            "of --symbols, or give a longer range or a smaller --buffer"
        )


def _check_output(output: Path | None) -> None:
    """Refuse an ``--output`` of unknown format, or one that cannot be written, up front."""
    if output is None:
        return
    from engine.output import output_kind

    output_kind(output)
    cliutil.check_writable(output, "--output")


def print_report(report: HorizonTable, fmt: str, output: Path | None) -> None:
    import polars as pl

    from engine.output import emit_table

    rows = pl.DataFrame(report.rows, infer_schema_length=None)
    envelope = {k: v for k, v in report.as_dict().items() if k != "rows"}
    if fmt == "table" and output is None:
        rate = report.flag_rate
        rate_text = (
            f"{rate:.2%}"
            if isinstance(rate, float)
            else ", ".join(f"{k}: {v:.2%}" for k, v in rate.items())
        )
        click.echo(
            f"flag rate {rate_text}; {report.comparisons} comparisons "
            "(p_naive: Mann-Whitney as if windows were independent, which overlapping "
            "horizons are not: it overstates confidence; p_naive_bh: Benjamini-Hochberg "
            "over the table; ratio_adjusted: if_only against normal windows alike in "
            "trailing volatility, activity and time of day)"
        )
        if report.parameters.get("baseline_lookahead"):
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

    Settings can also come from environment variables, TAPEWATCH_ENGINE_ + the option's name
    (TAPEWATCH_ENGINE_EVERY, TAPEWATCH_ENGINE_BUFFER ...; the store from TAPEWATCH_DATA_DIR),
    shown in each command's --help; an unknown TAPEWATCH_* variable is refused.

    \b
    Example:
      engine run --data-dir data --symbol btcusdt --every 20s
      engine horizons --data-dir data --every 30s --horizons 1m,5m
    """
    cliutil.check_environment(_known_variables)


def _known_variables() -> set[str]:
    """Every TAPEWATCH_* variable the engine or the recorder reads (one environment)."""
    return cliutil.env_names(main) | cliutil.recorder_variables()


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

    s = settings(kw)
    _check_output(output)
    _check_grid(s, kw["max_windows"])
    with cliutil.progress() as progress:
        table = load_windows(s, progress)
    emit_table(table, fmt, output)


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
    from engine.pipeline import flag_rate, load_scored

    s = settings(kw)
    _check_output(output)
    _check_grid(s, kw["max_windows"])
    with cliutil.progress() as progress:
        scored = load_scored(s, progress)[1]
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
    from engine.pipeline import horizon_report, load_scored, prototype_report

    s = settings(kw)
    _check_output(output)
    if windows_csv is not None:
        report = prototype_report(windows_csv, s.every_ms, s.horizons, s.baseline, s.reps)
    else:
        _check_grid(s, kw["max_windows"])
        with cliutil.progress() as progress:
            report = horizon_report(s, load_scored(s, progress)[1])
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
    (DATA_DIR/results/ledger.ndjson; ./results/ledger.ndjson for an s3:// store).

    \b
    Example:
      engine evaluate --data-dir data --symbol btcusdt --every 20s --horizons 1m,5m,15m,30m
      engine evaluate --windows-csv prototype.csv --every 20s --format json
    """
    import polars as pl

    from engine.evaluate import evaluate_csv, evaluate_scored
    from engine.output import emit_table
    from engine.pipeline import load_scored

    s = settings(kw)
    _check_output(output)
    if windows_csv is not None:
        ev = evaluate_csv(windows_csv, s.every_ms, s.horizons)
    else:
        _check_grid(s, kw["max_windows"])
        cliutil.check_writable(s.data_dir / "results", "the ledger's folder", directory=True)
        with cliutil.progress() as progress:
            ev = evaluate_scored(s, load_scored(s, progress)[1])
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
      engine verdict --results data/results/pooled-20s
    """
    import orjson

    path = results / "evaluate.json"
    try:
        ev = orjson.loads(path.read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError) as e:
        raise InputError(f"{path} is missing or damaged ({e}); rerun `engine run`") from None
    if "pooled" in ev.get("parameters", {}):  # RESULTS/pooled-EVERY of engine run --symbols
        print_pooled(ev)
    else:
        print_verdict(ev)


@main.command(context_settings=CONTEXT)
@store_options
@_options("symbols")
@model_options
@horizon_options
@_options("executor", "ray_address")
@click.option(
    "--results",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Results folder; default DATA_DIR/results/SYMBOL-EVERY, or ./results/SYMBOL-EVERY "
    "for an s3:// store (the ledger then goes to ./results/ledger.ndjson). With --symbols, "
    "the folder that holds SYMBOL-EVERY for each and pooled-EVERY; default DATA_DIR/results.",
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
    executor: str,
    ray_address: str | None,
    **kw: Any,
) -> None:
    """Windows, scores and horizons in one go, written to a results folder.

    With --symbols, each symbol is one task (here, or on Ray with --executor ray), written
    to RESULTS/SYMBOL-EVERY, and the verdict is pooled over the symbols: one rotation test
    for all of them (their shared volatility and shared flag bursts kept intact), written to
    RESULTS/pooled-EVERY.

    With --data-dir s3://bucket/prefix (a copy `recorder upload` made; AWS_ENDPOINT_URL for an
    S3-compatible server), the results and the ledger are written under ./results.

    \b
    Example:
      engine run --data-dir data --symbol btcusdt --every 20s --horizons 1m,5m,15m,30m
      engine run --data-dir data --symbols btcusdt,ethusdt,solusdt --every 20s
      AWS_ENDPOINT_URL=http://127.0.0.1:8333 engine run --data-dir s3://my-bucket/tapewatch
    """
    from engine.pipeline import results_dir_for
    from engine.pipeline import run as run_all

    symbols = _symbol_list(kw)
    s = settings(kw)
    _check_output(output)
    if symbols:
        _run_symbols(
            s,
            symbols,
            kw["max_windows"],
            results,
            not no_plots or with_report,
            with_report,
            executor,
            ray_address,
            fmt,
            output,
        )
        return
    if executor != "local" or ray_address:
        raise InputError(
            "--executor and --ray-address spread the symbols of --symbols; one --symbol runs here"
        )
    _check_grid(s, kw["max_windows"])
    cliutil.check_writable(results or results_dir_for(s), "--results", directory=True)
    cliutil.check_writable(s.data_dir / "results", "the ledger's folder", directory=True)
    with cliutil.progress() as progress:
        report, out = run_all(s, results, progress, plots=not no_plots or with_report)
    if fmt == "table" and output is None:
        print_verdict(report.evaluate or {})
        click.echo("\nThe prototype's view, for comparison (not a test of the question):")
    print_report(report, fmt, output)
    if fmt == "table" and output is None and report.detection is not None:
        d = report.detection
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


def _symbol_list(kw: dict[str, Any]) -> list[str]:
    """``--symbols`` as symbols (``all``: every symbol in the store), [] without it; an
    error beside an explicit ``--symbol``, for a symbol named twice, or an unknown one."""
    given = kw.pop("symbols", None)
    if not given:
        return []
    source = click.get_current_context().get_parameter_source("symbol")
    if source is ParameterSource.COMMANDLINE:
        raise InputError("give --symbol or --symbols, not both")
    if source is ParameterSource.ENVIRONMENT:
        raise InputError(
            f"--symbols is given and so is {_env(config.SETTING['symbol'])}: "
            "unset the variable, or give --symbol instead"
        )
    from engine.multirun import store_symbols
    from engine.scan import parse_symbol

    if [g.lower() for g in given] == ["all"]:
        names = store_symbols(kw["data_dir"])
        if not names:
            raise InputError(f"--symbols all: the store at {kw['data_dir']} has no symbols yet")
        return names
    names = [parse_symbol(g) for g in given]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice or "ALL" in names:
        what = "mixes all with symbols" if "ALL" in names else f"names {twice[0]} twice"
        raise InputError(f"--symbols {','.join(given)} {what}; give each symbol once, or all")
    return names


def _run_symbols(
    s: Any,
    symbols: list[str],
    max_windows: int,
    results: Path | None,
    plots: bool,
    with_report: bool,
    executor: str,
    ray_address: str | None,
    fmt: str,
    output: Path | None,
) -> None:
    """``engine run --symbols``: every symbol's grid checked before any work, then one task
    per symbol and the pooled verdict."""
    from dataclasses import replace

    from engine.executors import make
    from engine.multirun import run_symbols

    for symbol in symbols:
        _check_grid(replace(s, symbol=symbol), max_windows, one_of_many=True)
    root = results or s.data_dir / "results"
    cliutil.check_writable(root, "--results", directory=True)
    cliutil.check_writable(s.data_dir / "results", "the ledger's folder", directory=True)
    with make(executor, ray_address) as tasks, cliutil.progress() as progress:
        multi = run_symbols(s, symbols, results, progress, plots, tasks)
    print_multi(multi, fmt, output)
    if with_report:
        from engine.report import write_report

        for symbol in multi.symbols:
            click.echo(f"report: {write_report(root / f'{symbol}-{s.every}')}", err=True)
    click.echo(f"results in {root} (pooled: {multi.results})", err=True)


def print_pooled(pooled: dict[str, Any]) -> None:
    """The pooled verdict in words, its table (primary metric) and its notes."""
    import polars as pl

    from engine.output import emit_table
    from engine.verdict import headline

    symbols = pooled["parameters"].get("symbols", [])
    many = f"{len(symbols)} symbol{'s' if len(symbols) != 1 else ''}"
    click.echo(f"VERDICT, pooled over {many} ({', '.join(symbols)}): {headline(pooled)}")
    keys = ("horizon", "effect", "effect_ci_low", "effect_ci_high", "p_value", "p_bh")
    rows = pooled["rows"]
    table = [
        {
            **{k: r[k] for k in keys},
            "p_driscoll_kraay": r["p_dk"],
            "symbols": r["symbols"],
            "windows": r["windows"],
            "flags": r["flags"],
            "verdict": r["verdict"],
        }
        for r in rows
        if r["metric"] == rows[0]["metric"]
    ]
    emit_table(pl.DataFrame(table, infer_schema_length=None), "table")
    for note in pooled["notes"]:
        click.echo(f"note: {note}")


def print_multi(multi: Any, fmt: str, output: Path | None) -> None:
    """The pooled verdict first, then each symbol's. JSON: the run (``pooled`` holds the
    pooled evaluation) with every symbol's rows as ``rows``; CSV and NDJSON: the pooled rows
    (symbol ``pooled``), then every symbol's."""
    import polars as pl

    from engine.output import emit_table

    pooled = multi.pooled.as_dict()
    if fmt == "table" and output is None:
        print_pooled(pooled)
        primary = multi.per_symbol[0]["metric"] if multi.per_symbol else None
        own = [
            {
                k: r[k]
                for k in (
                    "symbol",
                    "horizon",
                    "effect",
                    "effect_ci_low",
                    "effect_ci_high",
                    "p_value",
                    "p_bh",
                    "verdict",
                )
            }
            for r in multi.per_symbol
            if r["flag"] == "model" and r["metric"] == primary
        ]
        family = sum(r["p_value"] is not None for r in multi.per_symbol)
        click.echo(
            f"\nPer symbol (the model's flag; p_bh: Benjamini-Hochberg over all "
            f"{family} per-symbol comparisons):"
        )
        emit_table(pl.DataFrame(own, infer_schema_length=None), "table")
        ledger = pooled.get("ledger_comparisons")
        if ledger is not None:
            click.echo(
                f"({ledger} comparisons on this store so far: the more are run, the "
                "more will look significant by chance)"
            )
        return
    if fmt == "json" or (output is not None and output.suffix == ".json"):
        envelope = {k: v for k, v in multi.as_dict().items() if k != "per_symbol"}
        emit_table(pl.DataFrame(multi.per_symbol, infer_schema_length=None), fmt, output, envelope)
        return
    rows = [{"symbol": "pooled", **r} for r in multi.pooled.rows] + multi.per_symbol
    emit_table(pl.DataFrame(rows, infer_schema_length=None), fmt, output)


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

    cliutil.check_writable(output or results / "report.html", "--output")
    click.echo(str(write_report(results, output)))


@main.command(context_settings=CONTEXT)
@data_dir_option
@_options("sim_symbol", "sim_days", "sim_seed", "scenario", "lead")
@_errors
def simulate(
    data_dir: Path, sim_symbol: str, sim_days: float, sim_seed: int, scenario: str, lead: int
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

    from engine.simulate import write_simulation

    t0 = _time.monotonic()
    truth = write_simulation(data_dir, sim_symbol, sim_days, sim_seed, scenario, lead)
    kinds: dict[str, int] = {}
    for e in truth["events"]:
        kinds[e["kind"]] = kinds.get(e["kind"], 0) + 1
    click.echo(
        f"simulated {truth['symbol']}: {truth['trades']:,} trades, "
        f"{truth['start']} .. {truth['end']}, "
        f"{', '.join(f'{v} {k}s' for k, v in kinds.items())}"
        + (f", precursors {lead} s ahead" if scenario == "precursor" else "")
        + f" ({_time.monotonic() - t0:.1f} s)"
    )


@main.command(context_settings=CONTEXT)
@_store_options(grid=True)
@_options("symbols")
@model_options
@horizon_options
@_options("executor", "ray_address")
@output_options
@_errors
def sweep(fmt: str, output: Path | None, executor: str, ray_address: str | None, **kw: Any) -> None:
    """A grid of window sizes (one scan of the store per symbol), one combined table.

    Each (symbol, window size) is one task, run here or on Ray (--executor ray): the same
    table either way. A task that fails is tried again; one that keeps failing is an error
    naming it. With --symbols the rows carry their symbol, and p_naive_bh adjusts over the
    whole grid of symbols, sizes and horizons.

    \b
    Example:
      engine sweep --data-dir data --every 10s,20s,30s,60s --horizons 1m,5m
      engine sweep --data-dir data --symbols all --every 10s,20s --executor ray --ray-address auto
    """
    from dataclasses import replace

    from engine.executors import make
    from engine.pipeline import sweep as run_sweep

    symbols = _symbol_list(kw)
    everies = [ms for _, ms in kw["every"]]
    s = settings({**kw, "every": everies[0]})
    for e in everies[1:]:
        _check_horizons(s.horizons, e)
    _check_output(output)
    for symbol in symbols or [s.symbol]:
        _check_grid(replace(s, symbol=symbol), kw["max_windows"], everies, bool(symbols))
    with make(executor, ray_address) as tasks, cliutil.progress() as progress:
        report = run_sweep(s, everies, progress, tasks, symbols)
    print_report(report, fmt, output)


@main.command(context_settings=CONTEXT)
@_local_store_option
@_options("symbol", "every", "max_windows")
@model_options
@_options("grace", "poll")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "ndjson"]),
    default="table",
    help="One line per window, for people or machines.",
)
@_options("on_anomaly", "webhook", "webhook_tries", "hook_timeout", "alert_queue_max")
@_options("metrics_addr")
@click.option(
    "--results",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Results file; default DATA_DIR/results/SYMBOL-EVERY-watch/scores.ndjson.",
)
@cliutil.log_level_option(envvar=cliutil.ENGINE_ENV_PREFIX + "LOG_LEVEL")
@_errors
def watch(
    grace: int,
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
    import signal

    from engine.watch import Watcher, WatchOptions, results_path

    opts = WatchOptions(
        grace_ms=grace,
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
    _local_only(
        kw["data_dir"],
        "engine watch follows the store the recorder is writing, on local disk; "
        "give the recorder's --data-dir",
    )
    s = settings(kw)
    cliutil.check_writable(results or results_path(s), "--results")
    _check_grid(s, kw["max_windows"])
    cliutil.setup_logging(log_level)
    w = Watcher(s, opts, notifier=cliutil.Notifier())
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: w.stop_event.set())
    w.run()


@main.command(context_settings=CONTEXT)
@click.argument("query", required=False)
@_local_store_option
@output_options
@_errors
def sql(query: str | None, data_dir: Path | str, fmt: str, output: Path | None) -> None:
    """Run DuckDB SQL over the views trades, gaps, windows and scores.

    With no QUERY, open the DuckDB shell with the views loaded (needs the DuckDB CLI).

    A trusted local shell, like the DuckDB CLI: the SQL runs with your rights and can read
    and write any file you can (COPY ... TO, read_text('/etc/hostname'), ATTACH). Run only
    queries you would run in the DuckDB CLI; never pass it SQL from someone else.

    \b
    Example:
      engine sql "SELECT symbol, count(*) FROM trades GROUP BY 1" --data-dir data
    """
    data_dir = _local_only(
        data_dir,
        "engine sql needs a local store (DuckDB reads s3:// only through its httpfs extension, "
        'which it downloads at run time; see "DuckDB and object storage" in docs/scaling.md); '
        "query a local copy, or run engine windows, score or run on the s3:// store",
    )
    cliutil.require_store(data_dir)
    _check_output(output)
    from engine.sqlviews import interactive, query_frame

    if query is None:
        interactive(data_dir)
        return
    from engine.output import emit_table

    emit_table(query_frame(data_dir, query), fmt, output)


if __name__ == "__main__":
    main()
