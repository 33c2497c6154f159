"""Many symbols in one ``engine run``: one task per symbol, results per symbol, and a verdict
pooled over them.

Each symbol is ``pipeline.run`` on its own (windows, walk-forward scores, horizons, the
evaluation, its results folder ``RESULTS/SYMBOL-EVERY`` and its ledger rows), as one task on
the executor: here, in a process pool, or on Ray, the same function either way. The task
also hands back its evaluation's inputs to the pooled test (``engine.pooled``). Then:

- **per symbol**: every symbol's rows, judged again by Benjamini-Hochberg over all the
  symbols' rows together (a symbol's own folder keeps its single-run judgement);
- **pooled**: does the model's flag add information across the symbols? One rotation test
  for all symbols, Driscoll-Kraay intervals, Benjamini-Hochberg over metrics and horizons.

Written to ``RESULTS/pooled-EVERY/``: ``evaluate.json`` (the pooled rows in the shape ``engine
verdict`` reads), ``pooled.csv``, ``per_symbol.csv`` and ``summary.json`` (everything). The
pooled rows are appended to the ledger too: they are comparisons made on the store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
import polars as pl

from engine.errors import DataError, EngineError, InputError
from engine.evaluate import Evaluation, append_ledger, judge
from engine.executors import Executor, LocalExecutor
from engine.har import EvalParams
from engine.horizons import horizons_for
from engine.pipeline import Progress, Settings, run
from engine.pooled import pooled_rows, pooling_notes
from engine.results import HorizonTable
from recorder.store import layout

__all__ = [
    "MultiRun",
    "SymbolRun",
    "SymbolTask",
    "pooled_dir",
    "run_symbol",
    "run_symbols",
    "store_symbols",
]


def _quiet(stage: str, done: int, total: int) -> None:
    pass


@dataclass(frozen=True)
class SymbolTask:
    """One symbol of a run, shipped to an executor."""

    settings: Settings
    results: Path
    plots: bool

    @property
    def name(self) -> str:
        return self.settings.symbol.upper()


@dataclass(frozen=True)
class SymbolRun:
    """What a symbol's task hands back: its report, its folder, and its pooled inputs."""

    symbol: str
    report: HorizonTable
    results: Path
    pool: dict


def run_symbol(task: SymbolTask) -> SymbolRun:
    """A run's task: ``pipeline.run`` for one symbol (module level, so that a process pool or
    Ray can pickle it; it writes only its own folder, so it may run twice)."""
    pool: dict = {}
    try:
        report, out = run(task.settings, task.results, plots=task.plots, pool=pool)
    except EngineError as e:  # the run's answer about this symbol: say which
        raise type(e)(f"{task.name}: {e}") from None
    return SymbolRun(task.name, report, out, pool)


@dataclass(frozen=True)
class MultiRun:
    """A run over several symbols: per symbol, pooled, and where it was written."""

    parameters: dict[str, Any]
    symbols: list[str]
    pooled: Evaluation
    per_symbol: list[dict[str, Any]]  # every symbol's rows with "symbol", judged together
    reports: dict[str, HorizonTable]
    results: Path  # the pooled folder

    def as_dict(self) -> dict[str, Any]:
        return {
            "parameters": self.parameters,
            "symbols": self.symbols,
            "pooled": self.pooled.as_dict(),
            "per_symbol": self.per_symbol,
            "results": {
                sym: str(self.results.parent / f"{sym}-{self.parameters['every']}")
                for sym in self.symbols
            },
        }


def store_symbols(store: Path | str) -> list[str]:
    """Every symbol in the store with an hour or a day of trades (``--symbols all``), sorted;
    DataError without a store."""
    if isinstance(store, str):
        raise InputError(
            f"--symbols all lists a local store, not {store}; name the symbols: "
            "--symbols btcusdt,ethusdt"
        )
    if not (store / layout.TRADES).is_dir():
        raise DataError(f"no store at {store}; pass --data-dir where `recorder run` writes")
    return [
        sym
        for sym in layout.symbol_dirs(store)
        if layout.hour_dirs(store, sym)
        or any((d / layout.PARQUET).exists() for d in layout.day_dirs(store, sym))
    ]


def pooled_dir(root: Path, every: str) -> Path:
    return root / f"pooled-{every}"


def run_symbols(
    s: Settings,
    symbols: Sequence[str],
    results: Path | None = None,
    progress: Progress = _quiet,
    plots: bool = True,
    executor: Executor | None = None,
) -> MultiRun:
    """``pipeline.run`` for each of ``symbols`` (``s.symbol`` is ignored) as tasks on
    ``executor`` (default: one after another in this process), under ``results`` (default
    ``DATA_DIR/results``), then the pooled verdict."""
    root = results or s.data_dir / "results"
    names = [sym.upper() for sym in symbols]
    tasks = [SymbolTask(replace(s, symbol=sym), root / f"{sym}-{s.every}", plots) for sym in names]
    runs = (executor or LocalExecutor()).map(
        run_symbol, tasks, lambda t: t.name, progress, "symbols"
    )
    p = EvalParams()
    per_symbol = [
        {"symbol": r.symbol, **row}
        for r in runs
        for row in (r.report.evaluate or {}).get("rows", [])
    ]
    family = judge(per_symbol, p.alpha)
    labels = [h.label for h in horizons_for(s.horizons, s.every_ms)]
    parameters = {"symbols": names, **s.parameters()}
    del parameters["symbol"]
    inputs = {r.symbol: r.pool for r in runs}
    rows = pooled_rows(inputs, labels, s.every_ms, p)
    pooled = Evaluation(
        rows=rows,
        parameters={**parameters, "pooled": "one rotation for all symbols; Driscoll-Kraay"},
        flag_rate=None,
        evaluated_windows=max((r["windows"] or 0 for r in rows), default=0),
        comparisons=sum(r["p_value"] is not None for r in rows),
        notes=_notes(rows, len(names)) + pooling_notes(inputs, rows, s.every_ms),
    )
    pooled = replace(pooled, ledger_comparisons=append_ledger(s.data_dir, pooled))
    out = pooled_dir(root, s.every)
    multi = MultiRun(
        parameters=parameters,
        symbols=names,
        pooled=pooled,
        per_symbol=per_symbol,
        reports={r.symbol: r.report for r in runs},
        results=out,
    )
    _write(multi, len(family))
    return multi


def _notes(rows: list[dict[str, Any]], symbols: int) -> list[str]:
    if any(r["windows"] for r in rows):
        return []
    return [
        f"the {symbols} symbols' evaluation samples share no windows, so nothing could be "
        "pooled: run symbols recorded over the same period"
    ]


def _write(multi: MultiRun, per_symbol_comparisons: int) -> None:
    out = multi.results
    out.mkdir(parents=True, exist_ok=True)
    opts = orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY
    (out / "evaluate.json").write_bytes(orjson.dumps(multi.pooled.as_dict(), option=opts))
    summary = {**multi.as_dict(), "per_symbol_comparisons": per_symbol_comparisons}
    (out / "summary.json").write_bytes(orjson.dumps(summary, option=opts))
    pl.DataFrame(multi.pooled.rows, infer_schema_length=None).write_csv(out / "pooled.csv")
    pl.DataFrame(multi.per_symbol, infer_schema_length=None).write_csv(out / "per_symbol.csv")
