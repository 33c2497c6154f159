"""The engine's jobs as library calls: windows, scores, horizon tables, runs and sweeps.

Every result is a pure function of (store, settings): rerunning with another window size,
model setting or horizon needs no new data, and nothing here writes to the store's trades.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
import polars as pl

from engine import config
from engine.durations import format_ms, parse_duration, parse_durations
from engine.errors import EngineError
from engine.executors import Executor, LocalExecutor
from engine.horizons import (
    adjustment_covariates,
    compare,
    forward_moves,
    group_windows,
    horizons_for,
)
from engine.model import ModelParams, WalkForwardFeed, walk_forward
from engine.results import HorizonTable
from engine.scan import StoreIndex, open_store
from engine.windows import build_windows, build_windows_with

__all__ = [
    "DEFAULT_HORIZONS",
    "Settings",
    "SizeTask",
    "flag_rate",
    "horizon_report",
    "load_scored",
    "load_windows",
    "prototype_report",
    "run",
    "score_size",
    "score_windows",
    "sweep",
]

DEFAULT_HORIZONS = tuple(parse_durations(config.HORIZONS))
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Settings:
    """A run's settings. The trades come from ``data_dir``, or from ``store_url`` (a copy in
    object storage, ``s3://bucket/prefix``), and then ``data_dir`` is only where the results
    and the ledger go (the current folder, as the CLI sets it)."""

    data_dir: Path
    symbol: str
    every_ms: int = parse_duration(config.EVERY)
    start_ms: int | None = None
    end_ms: int | None = None
    model: ModelParams = field(default_factory=ModelParams)
    horizons: tuple[tuple[str, int], ...] = DEFAULT_HORIZONS
    baseline: str = config.BASELINE
    jobs: int = config.JOBS
    reps: int = config.REPS
    store_url: str | None = None

    @property
    def store(self) -> Path | str:
        """Where the trades are read: the store's folder or its ``s3://`` URL."""
        return self.store_url or self.data_dir

    @property
    def every(self) -> str:
        return format_ms(self.every_ms)

    def parameters(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol.upper(),
            "every": self.every,
            "start": self.start_ms,
            "end": self.end_ms,
            "model": self.model.as_dict(),
            "horizons": [label for label, _ in self.horizons],
            "baseline": self.baseline,
            "baseline_lookahead": self.baseline == "full",
            "bootstrap": {
                "kind": "circular block",
                "reps": self.reps,
                "block": "Politis-White (arch, circular), at least 2k windows",
            },
        }


def _quiet(stage: str, done: int, total: int) -> None:
    pass


def load_windows(s: Settings, progress: Progress = _quiet) -> pl.DataFrame:
    index = open_store(s.store, s.symbol)
    return build_windows(
        index, [s.every_ms], s.start_ms, s.end_ms, lambda d, t: progress("scan", d, t)
    )[s.every_ms]


def score_windows(s: Settings, windows: pl.DataFrame, progress: Progress = _quiet) -> pl.DataFrame:
    return walk_forward(windows, s.model, s.jobs, lambda d, t: progress("refits", d, t))


def load_scored(s: Settings, progress: Progress = _quiet) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(windows, scored windows): ``load_windows`` then ``score_windows``, the same tables.
    With ``isotree`` the refits start while the windows are still being built (each as soon
    as the windows it reads are final), so they use the cores the scan leaves idle."""
    if s.model.backend != "isotree":
        windows = load_windows(s, progress)
        return windows, score_windows(s, windows, progress)
    feed = WalkForwardFeed(s.model, s.jobs, lambda d, t: progress("refits", d, t))
    try:
        index = open_store(s.store, s.symbol)
        windows = build_windows(
            index,
            [s.every_ms],
            s.start_ms,
            s.end_ms,
            lambda d, t: progress("scan", d, t),
            on_final=feed.add,
        )[s.every_ms]
        return windows, feed.finish(windows)
    finally:
        feed.close()


def flag_rate(scored: pl.DataFrame) -> float:
    """Share of scored windows the model flagged (-1)."""
    p = scored["prediction"].drop_nulls()
    return float((p == -1).sum()) / len(p) if len(p) else 0.0


def horizon_report(s: Settings, scored: pl.DataFrame) -> HorizonTable:
    hs = horizons_for(s.horizons, s.every_ms)
    moves = forward_moves(scored, hs)
    groups = group_windows(scored, s.baseline, s.model.buffer)
    rows = compare(moves, groups, adjustment_covariates(scored), hs, seed=s.model.seed, reps=s.reps)
    return HorizonTable(
        parameters=s.parameters(),
        flag_rate=flag_rate(scored),
        scored_windows=int(scored["prediction"].is_not_null().sum()),
        comparisons=sum(r["p_naive"] is not None for r in rows),
        rows=rows,
    )


def prototype_report(
    csv: Path, every_ms: int, horizons: Sequence[tuple[str, int]], baseline: str, reps: int
) -> HorizonTable:
    """The prototype's method on its own window file (``--windows-csv``)."""
    from engine.prototype import prototype_moves, read_prototype_csv

    rows = read_prototype_csv(csv)
    hs = horizons_for(horizons, every_ms)
    scored = rows.with_columns(gap=pl.lit(False))
    groups = group_windows(scored, baseline, 0) if baseline == "full" else None
    if groups is None:
        from engine.errors import InputError

        raise InputError(
            "--windows-csv needs --baseline full "
            "(the prototype's rows have no past buffer to trail)"
        )
    table = compare(
        prototype_moves(rows, hs),
        groups,
        adjustment_covariates(rows),
        hs,
        reps=reps,
        metrics=("abs_return_sum",),
    )
    return HorizonTable(
        parameters={
            "windows_csv": str(csv),
            "every": format_ms(every_ms),
            "horizons": [h.label for h in hs],
            "baseline": baseline,
            "baseline_lookahead": True,
            "horizon_unit": "rows",
        },
        flag_rate=flag_rate(rows),
        scored_windows=int(rows["prediction"].is_not_null().sum()),
        comparisons=sum(r["p_naive"] is not None for r in table),
        rows=table,
    )


def results_dir_for(s: Settings) -> Path:
    return s.data_dir / "results" / f"{s.symbol.upper()}-{s.every}"


def run(
    s: Settings,
    results: Path | None = None,
    progress: Progress = _quiet,
    plots: bool = True,
    pool: dict | None = None,
) -> tuple[HorizonTable, Path]:
    """Windows, scores, the horizon table and the evaluation (``report.evaluate``, also
    ``evaluate.json`` and ``evaluate.csv``), written to a results folder. ``pool``: filled
    with the evaluation's inputs to a test pooled over symbols (``engine.pooled``)."""
    t0 = time.monotonic()
    out = results or results_dir_for(s)
    windows, scored = load_scored(s, progress)
    report = horizon_report(s, scored)
    from engine.evaluate import evaluate_scored

    verdict = evaluate_scored(s, scored, pool=pool)  # the flag against a forecast; in the ledger
    report = replace(report, evaluate=verdict.as_dict())
    from engine.simulate import truth_path

    truth = truth_path(s.data_dir, s.symbol)
    if s.store_url is None and truth.exists():  # simulated: score against the ground truth
        from engine.detection import evaluate

        report = replace(report, detection=evaluate(scored, orjson.loads(truth.read_bytes())))
    report = replace(report, seconds=round(time.monotonic() - t0, 3))
    out.mkdir(parents=True, exist_ok=True)
    windows.write_parquet(out / "windows.parquet")
    scored.with_columns(
        pl.lit(s.symbol.upper()).alias("symbol"), pl.lit(s.every).alias("every")
    ).write_parquet(out / "scores.parquet")
    (out / "horizons.json").write_bytes(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2))
    pl.DataFrame(report.rows).write_csv(out / "horizons.csv")
    (out / "evaluate.json").write_bytes(orjson.dumps(report.evaluate, option=orjson.OPT_INDENT_2))
    pl.DataFrame(verdict.rows, infer_schema_length=None).write_csv(out / "evaluate.csv")
    (out / "parameters.json").write_bytes(orjson.dumps(s.parameters(), option=orjson.OPT_INDENT_2))
    if plots:
        from engine.plots import write_plots

        write_plots(scored, report, out / "plots")
    return report, out


@dataclass(frozen=True)
class SizeTask:
    """One window size of a sweep, shipped to an executor: the run's settings at that size
    and its window table."""

    settings: Settings
    windows: pl.DataFrame

    @property
    def name(self) -> str:
        return f"{self.settings.symbol.upper()} every {self.settings.every}"


def score_size(task: SizeTask) -> HorizonTable:
    """A sweep's task: scores and the horizon table of one window size (module level, so
    that a process pool or Ray can pickle it; pure, so it may run twice)."""
    try:
        scored = score_windows(task.settings, task.windows)
    except EngineError as e:  # the answer about this symbol and size: say which
        raise type(e)(f"{task.name}: {e}") from None
    return horizon_report(task.settings, scored)


def report_size(task: SizeTask) -> HorizonTable:
    """A sweep's task on an executor that spreads work: the horizon table of one window
    size's windows, already scored (``task.windows``)."""
    return horizon_report(task.settings, task.windows)


REFITS_PER_TASK = 500  # isotree: ~2 CPU-s a task, against Ray's ~1 ms a task


def _scored_by_batches(tasks: Sequence[SizeTask], executor: Executor, progress: Progress):
    """Every task's windows scored, the walk-forward refits of all of them shipped as
    batches of ``REFITS_PER_TASK`` (each refit is independent: the same scores as
    ``score_windows``). The scored tasks, in order."""
    from engine.model import plan_walk_forward, run_batch, scored_windows

    plans = []
    for t in tasks:
        try:
            plans.append(plan_walk_forward(t.windows, t.settings.model, REFITS_PER_TASK, t.name))
        except EngineError as e:  # as score_size says it
            raise type(e)(f"{t.name}: {e}") from None
    flat = [b for wf in plans for b in wf.batches]
    results = iter(executor.map(run_batch, flat, lambda b: b.name, progress, "refit batches"))
    return [
        replace(t, windows=scored_windows(t.windows, wf, [next(results) for _ in wf.batches]))
        for t, wf in zip(tasks, plans, strict=True)
    ]


def _stage(progress: Progress, stage: str) -> Callable[[int, int], None]:
    return lambda done, total: progress(stage, done, total)


def sweep(
    s: Settings,
    everies: Sequence[int],
    progress: Progress = _quiet,
    executor: Executor | None = None,
    symbols: Sequence[str] = (),
) -> HorizonTable:
    """One scan of the store per symbol, windows for every size, then scores and horizons,
    one task per (symbol, size) on ``executor`` (default: in this process). On an executor
    that spreads work (a pool, Ray), the tasks are smaller: a local store's scan is a task a
    day, the walk-forward batches of ``REFITS_PER_TASK`` refits, then a horizon table per
    (symbol, size); the results are the same.
    ``symbols``: several symbols instead of ``s.symbol``; their rows carry ``symbol`` and
    their flag rates are keyed ``SYMBOL EVERY``. Benjamini-Hochberg runs over the whole
    grid."""
    names = list(symbols) or [s.symbol]
    many = bool(symbols)
    executor = executor or LocalExecutor()
    tasks: list[SizeTask] = []
    for symbol in names:
        index = open_store(s.store, symbol)
        stage = f"scan {symbol.upper()}" if many else "scan"
        if executor.spreads and isinstance(index, StoreIndex):  # a day of windows a task
            built = build_windows_with(
                executor, index, list(everies), s.start_ms, s.end_ms, _stage(progress, stage)
            )
        else:  # one scan here, the next day read while this one is aggregated
            built = build_windows(
                index, list(everies), s.start_ms, s.end_ms, _stage(progress, stage)
            )
        tasks += [SizeTask(replace(s, symbol=symbol, every_ms=e), built.pop(e)) for e in everies]
    if executor.spreads:  # refits in batches, then one horizon table per (symbol, size)
        scored = _scored_by_batches(tasks, executor, progress)
        reports = executor.map(report_size, scored, lambda t: t.name, progress, "horizons")
    else:
        reports = executor.map(
            score_size, tasks, lambda t: t.name, progress, "tasks" if many else "window sizes"
        )
    rows: list[dict] = []
    rates = {}
    for task, rep in zip(tasks, reports, strict=True):
        every = task.settings.every
        symbol = task.settings.symbol.upper()
        rates[f"{symbol} {every}" if many else every] = float(rep.flag_rate)  # type: ignore[arg-type]
        rows += [
            {"symbol": symbol, "every": every, **r} if many else {"every": every, **r}
            for r in rep.rows
        ]
    from scipy.stats import false_discovery_control

    ps = [r["p_naive"] for r in rows if r["p_naive"] is not None]
    adj = iter(false_discovery_control(ps, method="bh").tolist() if ps else [])
    for r in rows:  # adjust across the whole grid, not per size
        r["p_naive_bh"] = next(adj) if r["p_naive"] is not None else None
    parameters = {**s.parameters(), "every": [format_ms(e) for e in everies]}
    if many:
        parameters = {"symbols": [n.upper() for n in names], **parameters}
        del parameters["symbol"]
    return HorizonTable(
        parameters=parameters,
        flag_rate=rates,
        comparisons=len(ps),
        rows=rows,
    )
