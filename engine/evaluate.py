"""The verdict: does the flag tell us anything about the future move that volatility does not?

For each horizon ``H = k`` windows and each flag, window ``i``'s future is windows
``i+1 .. i+k`` (``(end, end + H]``). With ``r`` the window log return (close to close, the
close carried over empty windows, so an empty window has ``r = 0``):

    log_rv               log(sum r_j^2 + k * floor)          (primary)
    log_abs_return_sum   log(sum |r_j| + k * floor_abs)      (the prototype's metric, in logs)

The floors are 1 % of the warm-up's mean ``r^2`` (``|r|``) per window. A window is left out
when its future touches a gap, reaches the last window with trades (it may be partly filled)
or runs past the data (an ``--end`` beyond the last trade creates no zero moves).

**Baseline.** A HAR-RV forecast (Corsi 2009) extended with activity and seasonality, from what
is known at the window's end: log trailing mean ``r^2`` over 20 s, 5 min, 30 min and 6 h
(spans in time, so other window sizes scale); the window's own log volatility (relative to the
price; also its log realized and Parkinson variance when the windows have them), log1p trade
count, log1p volume, log ``|r|``; log1p mean trade count over 30 min; time of day (two daily
harmonics) and a weekend dummy, these two only once 7 days of training exist (fitted on a day
or two they take that day's volatility path for a season: on simulated tapes the forecasts'
out-of-sample R^2 fell from about 0.7 to below 0). The augmented model adds the flag (0/1).
Both are fitted by OLS walk-forward: no forecast before a warm-up of 12 h (and the longest
span), refits once a day on an expanding window, and a training row ``i`` serves a block
starting at ``t0`` only if ``i + k < t0`` (its own target is known by then). Gram matrices are
accumulated per day, so a refit is a small solve whatever the history
(``engine.econometrics.walk_forward_ols``).

**Effect.** ``y ~ 1 + base_forecast + baseline inputs + flag`` over the evaluation sample
(windows with an out-of-sample forecast and a valid future); ``effect = exp(gamma)`` is the
flag's multiplicative effect on future realized variance (``abs_return_sum`` for the second
metric) beyond the forecast and beyond any linear use of its inputs. The inputs are in
because on a short history the walk-forward fit errs most where volatility is extreme, which
is exactly where a flag that reads volatility fires: against the forecast alone, a flag that
is a threshold on the window's own volatility "added information" in 35-40 % of simulated
nulls. The 95 % interval is Newey-West (HAC), lag: the Newey-West (1994) plug-in on the
flag's score series, at least ``2k`` (``engine.econometrics.flag_effect``).

**p-value: a rotation test.** The flag series is shifted circularly against the outcomes and
covariates by every offset from a day (at most a quarter of the sample, at least ``2k`` +
30 min) to ``n`` minus that. The statistic is ``flag_s . y~`` (``y~``: the outcome's residual
on the covariates above, so it is the numerator of the shifted flag's coefficient), for all
shifts at once by FFT; ``p = (1 + #{stat(s) >= stat(0)}) / (1 + #shifts)``, one-sided. Why
this and not HAC or a bootstrap: a rotation keeps everything that makes naive p-values lie
intact in every replicate, the flags' own clustering (runs of flagged windows), the outcome's
volatility clustering and the overlap of neighbouring horizons, and only breaks the alignment
of flag and future. It needs no bandwidth, block length or model of the dependence; it
assumes only that a day's shift of the flag process is a draw from it. Why the numerator and
not ``gamma`` itself: the observed flag may be correlated with the covariates while shifted
ones are not, and dividing by its smaller residual variance would make ``gamma(0)`` more
variable than its rotations. The evaluation sample starts up to ~0.1 % later so that its
length factors into small primes (a fast FFT length). Validated in the test suite on nulls
(clustered-noise flags, flags that are a threshold on the window's own volatility) and on
planted precursors; the HAC p-value (``p_hac``) is reported beside it and is less well
calibrated on those nulls.

**Forecast comparison.** ``oos_r2_gain = 1 - MSE_aug / MSE_base`` of the log forecasts,
``qlike_gain`` likewise with ``QLIKE(RV, exp(forecast))`` (primary metric), the Clark-West
(2007) test of the nested pair, and for each competitor flag Diebold-Mariano with the
Harvey-Leybourne-Newbold correction against the model's augmented forecast (squared error,
``dm_stat > 0``: the model's forecast is more accurate; ``dm_p`` one-sided in that direction).

**Competitors**, at the model's realized flag rate (threshold: the ``1 - rate`` quantile of
the z-score over the rows that get a forecast; a rate-matching device, not a forecast input):
z-scores of the trade count, ``|r|`` and the relative volatility against the trailing 30 min
(current window excluded).

**Verdict.** ``adds information``: Benjamini-Hochberg adjusted p (over this run's rows) below
0.05 and effect above 1; ``too little data``: fewer than 30 flagged windows or 100 rotations;
otherwise ``no evidence beyond volatility``. Every row is appended to
``DATA_DIR/results/ledger.ndjson``, so a report can say how many comparisons a store has seen.

Errors: :class:`engine.errors.InputError` (bad parameters), :class:`engine.errors.DataError`
(windows out of order or missing columns).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import orjson
import polars as pl

from engine.durations import format_ms
from engine.econometrics import (
    bh_adjust,
    clark_west,
    diebold_mariano,
    fft_length,
    flag_effect,
    residualize,
    rotation_p,
    rotation_spectrum,
    rotation_stats,
    walk_forward_ols,
)
from engine.errors import DataError
from engine.har import COMPETITORS, FLAGS, Design, EvalParams, design, targets
from engine.horizons import Horizon, horizons_for

if TYPE_CHECKING:
    from engine.pipeline import Settings

__all__ = [
    "COMPETITORS",
    "FLAGS",
    "METRICS",
    "ROW_KEYS",
    "EvalParams",
    "Evaluation",
    "append_ledger",
    "evaluate",
    "evaluate_csv",
    "evaluate_scored",
]

METRICS = ("log_rv", "log_abs_return_sum")
# The keys first; then p_bh (Benjamini-Hochberg over the run), p_hac (one-sided, from
# the HAC interval), qlike_gain (log_rv only), Clark-West t and p (aug vs base), dm_stat/dm_p
# (competitors only: > 0 and small p mean the model's forecast beats theirs), flags (flagged
# windows in the sample), flag_rate, shifts (rotations behind p_value), hac_lags.
ROW_KEYS = (
    "horizon",
    "flag",
    "metric",
    "n",
    "effect",
    "effect_ci_low",
    "effect_ci_high",
    "p_value",
    "oos_r2_gain",
    "verdict",
    "p_bh",
    "p_hac",
    "qlike_gain",
    "clark_west_stat",
    "clark_west_p",
    "dm_stat",
    "dm_p",
    "flags",
    "flag_rate",
    "shifts",
    "hac_lags",
)
ADDS, NO_EVIDENCE, TOO_LITTLE = (
    "adds information",
    "no evidence beyond volatility",
    "too little data",
)
HALF_HOUR_MS = 1_800_000
Z975 = 1.959963984540054


class PoolInput(NamedTuple):
    """The model flag's evaluation sample for one (metric, horizon): the rows' places on the
    window grid (window start // window size), the outcome's and the flag's residuals on the
    adjustment design, the flag (0/1), and the horizon in windows."""

    grid: np.ndarray
    y_res: np.ndarray
    f_res: np.ndarray
    flag: np.ndarray
    k: int


@dataclass(frozen=True)
class Evaluation:
    """One run of ``engine evaluate``: rows in ``ROW_KEYS`` order (primary metric first)."""

    rows: list[dict[str, Any]]
    parameters: dict[str, Any]
    flag_rate: float | None
    evaluated_windows: int  # windows with a baseline forecast (largest over horizons)
    comparisons: int  # rows with a p-value: this run's Benjamini-Hochberg family
    ledger_comparisons: int | None = None  # rows in the store's ledger, this run included
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- the evaluation ----------------------------------------------------------------------------


def _f(v: float | None) -> float | None:
    return float(v) if v is not None and np.isfinite(v) else None


def _row(
    label: str,
    name: str,
    metric: str,
    y: np.ndarray,
    pb: np.ndarray,
    pa: np.ndarray,
    f: np.ndarray,
    y_res: np.ndarray,
    f_res: np.ndarray,
    rot: np.ndarray,
    k: int,
    min_shift: int,
    model_pa: np.ndarray | None,
    blocks: np.ndarray,
    p: EvalParams,
) -> dict[str, Any]:
    """One (horizon, flag, metric) row: evaluation-sample arrays in, numbers out."""
    n = len(y)
    nf = int(f.sum())
    row: dict[str, Any] = dict.fromkeys(ROW_KEYS)
    row.update(horizon=label, flag=name, metric=metric, n=n, flags=nf)
    row["flag_rate"] = nf / n if n else None
    if n > 10 and 0 < nf < n and float(f_res @ f_res) > 1e-9 * nf:
        gamma, se, p_hac, row["hac_lags"] = flag_effect(y_res, f_res, k)
        row["effect"] = _f(np.exp(gamma))
        row["effect_ci_low"] = _f(np.exp(gamma - Z975 * se))
        row["effect_ci_high"] = _f(np.exp(gamma + Z975 * se))
        row["p_hac"] = _f(p_hac)
        row["p_value"], row["shifts"] = rotation_p(rot, min_shift)
        mse_b, mse_a = np.mean((y - pb) ** 2), np.mean((y - pa) ** 2)
        row["oos_r2_gain"] = _f(1 - mse_a / mse_b) if mse_b > 0 else None
        if metric == "log_rv":
            row["qlike_gain"] = _f(1 - _qlike(y, pa) / _qlike(y, pb))
        row["clark_west_stat"], row["clark_west_p"] = map(_f, clark_west(y, pb, pa, blocks))
        if model_pa is not None:  # competitor vs the model: both augmented forecasts
            row["dm_stat"], row["dm_p"] = map(
                _f, diebold_mariano((y - model_pa) ** 2, (y - pa) ** 2, blocks)
            )
    little = nf < p.min_flags or (row["shifts"] or 0) < p.min_shifts
    row["verdict"] = TOO_LITTLE if little or row["effect"] is None else NO_EVIDENCE
    return row


def _adjustment_rows(
    x: np.ndarray, rows: np.ndarray, n_base: int, plain: list[int], edges: np.ndarray
) -> Callable[[slice], np.ndarray]:
    """The adjustment design of the evaluation sample ``rows`` (of ``x``), a slice of it at a
    time: the baseline's inputs and the decile steps of the ``plain`` ones. Built per chunk
    into one reused buffer: for a year the whole would take 1.6 GB, and fresh pages for
    every chunk cost more than the arithmetic."""
    width = n_base + len(plain) * len(edges)
    buffer = np.empty(0)
    scratch = np.empty(0, dtype=bool)

    def part(sl: slice) -> np.ndarray:
        nonlocal buffer, scratch
        r = rows[sl]
        if len(buffer) < len(r) * width:
            buffer = np.empty(len(r) * width)
            scratch = np.empty(len(r) * edges.size, dtype=bool)
        out = buffer[: len(r) * width].reshape(len(r), width)
        # The sample's rows mostly run without a break: then a view, not a gathered copy.
        xr = x[r[0] : r[-1] + 1] if len(r) and r[-1] - r[0] == len(r) - 1 else x[r]
        out[:, :n_base] = xr[:, :n_base]
        steps = scratch[: len(r) * edges.size].reshape(len(r), *edges.shape)
        quantile_steps(xr[:, plain], edges, out=out[:, n_base:], scratch=steps)
        return out

    return part


def decile_edges(columns: Sequence[np.ndarray], q: int = 10) -> np.ndarray:
    """The ``q - 1`` inner quantiles of each column, shape ``(q - 1, columns)`` (0 for an
    empty column)."""
    at = np.arange(1, q) / q
    out = np.zeros((q - 1, len(columns)))
    for j, c in enumerate(columns):  # one contiguous column at a time: axis=0's numbers, faster
        if len(c):
            out[:, j] = np.quantile(np.ascontiguousarray(c), at)
    return out


def quantile_steps(
    x: np.ndarray,
    edges: np.ndarray,
    out: np.ndarray | None = None,
    scratch: np.ndarray | None = None,
) -> np.ndarray:
    """For each column of ``x``, the indicators ``x > edge``: with the column itself, a
    flexible (piecewise) function of it in a linear regression. Columns edge by edge (all
    the columns' first edges, then their second ...); into ``out`` if given, by way of
    ``scratch`` (booleans of shape ``(len(x), *edges.shape)``) if given."""
    # Compared into booleans, then converted in one copy: comparing straight into floats
    # converts element by element, three times as slow (this runs for every chunk).
    steps = np.greater(x[:, None, :], edges[None, :, :], out=scratch)
    if out is None:
        return steps.reshape(len(x), edges.size).astype(np.float64)
    out[...] = steps.reshape(len(x), edges.size)
    return out


def _qlike(logrv: np.ndarray, pred: np.ndarray) -> float:
    q = np.exp(logrv - pred)
    return float(np.mean(q - np.log(q) - 1))


def judge(rows: list[dict[str, Any]], alpha: float) -> list[dict[str, Any]]:
    """Benjamini-Hochberg over the ``rows`` with a p-value (one family), in place: each gets
    ``p_bh``, and ``adds information`` when that is below ``alpha`` with an effect above 1
    (``too little data`` stays). The family, in order."""
    family = [r for r in rows if r["p_value"] is not None]
    for r, adj in zip(family, bh_adjust([r["p_value"] for r in family]), strict=True):
        r["p_bh"] = adj
        if r["verdict"] != TOO_LITTLE:
            r["verdict"] = ADDS if adj < alpha and (r["effect"] or 0) > 1 else NO_EVIDENCE
    return family


def _horizon_rows(
    tp: Design,
    h: Horizon,
    starts: np.ndarray,
    models: list[np.ndarray],
    min_rows: int,
    every_ms: int,
    p: EvalParams,
    pool: dict[tuple[str, str], PoolInput] | None = None,
) -> tuple[dict[tuple[str, str, str], dict[str, Any]], int]:
    """The rows of one horizon (keyed by metric, horizon, flag) and its evaluation sample's
    size. One function per horizon so that its arrays (hundreds of MB for a year) are gone
    before the next horizon's are made. ``pool``: filled with the model flag's arrays per
    (metric, horizon), for a test pooled over symbols (``engine.pooled``)."""
    k = h.k
    y, future_ok = targets(tp, k)
    train = tp.base_ok & future_ok
    pred = walk_forward_ols(tp.x, y, train, starts, k, models, min_rows, tp.enter_after)
    ev = np.flatnonzero(train & np.isfinite(pred[:, 0, 0]) & np.isfinite(y).all(axis=1))
    # Start the sample up to ~0.1 % later so that its length suits the rotation's FFT.
    ev = ev[len(ev) - fft_length(len(ev)) :]
    pe, ye = pred[ev], y[ev]
    del pred, y, train, future_ok
    per_day = max(1, round(p.min_shift_ms / every_ms))
    min_shift = max(min(per_day, len(ev) // 4), 2 * k + max(1, round(HALF_HOUR_MS / every_ms)))
    fe = tp.x[ev, tp.n_base :]
    blocks = np.searchsorted(starts, ev, side="right")  # the refit block of each row
    res = _adjusted_residuals(tp, ev, ye, pe[:, :, 0], fe)
    spectrum = rotation_spectrum(fe) if len(ev) else None  # the flags' FFT, for both metrics
    rows = {}
    for mi, metric in enumerate(METRICS):
        rot = rotation_stats(res[mi][:, 0], fe, spectrum) if len(ev) else np.zeros((0, len(FLAGS)))
        if pool is not None:
            pool[(metric, h.label)] = PoolInput(
                tp.index[ev], res[mi][:, 0].copy(), res[mi][:, 1].copy(), fe[:, 0].copy(), k
            )
        for j, name in enumerate(FLAGS):
            rows[(metric, h.label, name)] = _row(
                h.label,
                name,
                metric,
                ye[:, mi],
                pe[:, mi, 0],
                pe[:, mi, 1 + j],
                fe[:, j],
                res[mi][:, 0],
                res[mi][:, 1 + j],
                rot[:, j],
                k,
                min_shift,
                None if j == 0 else pe[:, mi, 1],
                blocks,
                p,
            )
    return rows, len(ev)


def _adjusted_residuals(
    tp: Design, ev: np.ndarray, ye: np.ndarray, pb: np.ndarray, fe: np.ndarray
) -> list[np.ndarray]:
    """Per metric, the residuals of its outcome and of the flags on the adjustment design:
    the baseline's forecast of that metric, its inputs, and the inputs' decile steps.

    The effect is judged beyond the forecast and beyond every input of it, fitted on the
    evaluation sample: on a short history the walk-forward fit errs most where volatility is
    extreme, which is where a flag that reads volatility fires. The inputs enter with decile
    steps too: a flag that is only a threshold on one of them (quiet or busy windows) would
    otherwise "add" the baseline's nonlinearity.

    The two metrics share all of the design but the forecast, so everything (both outcomes,
    the flags and both forecasts) is residualized on the shared part in one pass, and then
    on the metric's own forecast residual (Frisch-Waugh: the same residuals as regressing on
    the whole design at once, to rounding)."""
    plain = [i for i in range(1, tp.n_base) if tp.enter_after[i] == 0]  # not the season terms
    edges = decile_edges([tp.x[ev, c] for c in plain])
    m = len(METRICS)
    shared = residualize(
        np.column_stack([ye, fe, pb]), _adjustment_rows(tp.x, ev, tp.n_base, plain, edges)
    )
    out = []
    for mi in range(m):
        v = shared[:, [mi, *range(m, m + fe.shape[1])]]
        f = shared[:, m + fe.shape[1] + mi]
        ff = float(f @ f)
        if ff > 1e-12 * float(pb[:, mi] @ pb[:, mi]):  # else the forecast is in the design
            v -= np.outer(f, (f @ v) / ff)
        out.append(v)
    return out


def evaluate(
    windows: pl.DataFrame,
    horizons: Sequence[Horizon],
    every_ms: int,
    params: EvalParams | None = None,
    pool: dict[tuple[str, str], PoolInput] | None = None,
) -> Evaluation:
    """Evaluate the ``prediction`` column (-1 = flagged; null = not scored) and the competitor
    flags against the walk-forward volatility baseline, for every horizon. ``pool``: a dict
    to fill with the model flag's evaluation arrays per (metric, horizon label), the inputs
    of ``engine.pooled``'s test across symbols.

    ``windows``: one row per window in time order (a complete grid from the store, or the
    prototype's rows), with ``window_start``, ``trade_count``, ``volume``, ``return``,
    ``volatility`` and ``prediction``; ``close`` and ``gap`` when known."""
    p = params or EvalParams()
    tp = design(windows, every_ms, p)
    n = windows.height
    base = np.arange(tp.n_base)
    models = [base] + [np.append(base, tp.n_base + j) for j in range(len(FLAGS))]
    starts = np.arange(tp.warmup, n, max(1, round(p.refit_ms / every_ms)), dtype=np.int64)
    min_rows = max(50, 10 * tp.x.shape[1])
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    evaluated = 0
    for h in horizons:
        got, n_ev = _horizon_rows(tp, h, starts, models, min_rows, every_ms, p, pool)
        rows.update(got)
        evaluated = max(evaluated, n_ev)
    ordered = [rows[(m, h.label, name)] for m in METRICS for h in horizons for name in FLAGS]
    family = judge(ordered, p.alpha)
    notes = []
    if evaluated == 0:
        notes.append(
            f"no window got a baseline forecast: the evaluation needs more than "
            f"{format_ms(tp.warmup * every_ms)} of scored windows (warm-up) plus the horizon"
        )
    return Evaluation(
        rows=ordered,
        parameters={"every": format_ms(every_ms), "evaluate": p.as_dict()},
        flag_rate=tp.rate,
        evaluated_windows=evaluated,
        comparisons=len(family),
        notes=notes,
    )


# --- entry points: the store (with the ledger) and the prototype's CSV ----------------------


def append_ledger(data_dir: Path, ev: Evaluation) -> int:
    """Append ``ev``'s rows to ``DATA_DIR/results/ledger.ndjson``; the comparisons (rows with a
    p-value) the ledger now holds."""
    path = data_dir / "results" / "ledger.ndjson"
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    keys = ("horizon", "flag", "metric", "n", "effect", "p_value", "p_bh", "verdict")
    lines = b"".join(
        orjson.dumps(
            {"time": stamp, "parameters": ev.parameters, **{k: r[k] for k in keys}},
            option=orjson.OPT_SERIALIZE_NUMPY,
        )
        + b"\n"
        for r in ev.rows
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+b") as f:  # one write: concurrent runs do not interleave lines
            if f.seek(0, 2):  # not empty: end a torn line (a run that died mid-write)
                f.seek(-1, 2)
                if f.read(1) != b"\n":
                    lines = b"\n" + lines
            f.write(lines)
        held = path.read_bytes().splitlines()
    except OSError as e:
        raise DataError(f"cannot write the ledger {path} ({e.strerror})") from None
    # Text, not parsing: a torn last line (a crash mid-write) must not stop the next run.
    return sum(b'"p_value":' in line and b'"p_value":null' not in line for line in held)


def evaluate_scored(
    s: Settings,
    scored: pl.DataFrame,
    ledger: bool = True,
    pool: dict[tuple[str, str], PoolInput] | None = None,
) -> Evaluation:
    """``evaluate`` on a store's scored windows, recorded in the store's ledger."""
    ev = evaluate(scored, horizons_for(s.horizons, s.every_ms), s.every_ms, pool=pool)
    ev = replace(ev, parameters={**s.parameters(), **ev.parameters})
    return replace(ev, ledger_comparisons=append_ledger(s.data_dir, ev)) if ledger else ev


def evaluate_csv(path: Path, every_ms: int, horizons: Sequence[tuple[str, int]]) -> Evaluation:
    """``evaluate`` on the prototype's window CSV (rows as windows, as the prototype counted
    horizons; no gaps known; the return is within the window). No ledger: no store."""
    from engine.prototype import read_prototype_csv

    rows = read_prototype_csv(path)
    start = rows["timestamp"]
    if start.dtype == pl.String:  # naive times are UTC, as the prototype wrote them
        try:
            start = start.str.to_datetime(time_zone="UTC", strict=True)
        except Exception:
            raise DataError(f"{path}: a timestamp is not a date and time") from None
    w = rows.with_columns(start.alias("window_start"))
    ev = evaluate(w, horizons_for(horizons, every_ms), every_ms)
    return replace(ev, parameters={"windows_csv": str(path), **ev.parameters})
