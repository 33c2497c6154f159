"""The evaluation's design: window log returns, future targets, the HAR-RV baseline's
covariates and the competitor flags, from a window tape. No look-ahead: every covariate and
flag of window ``i`` is known at its end; the scaling constants and floors come from the
warm-up alone; only the competitors' rate-matching threshold uses the whole sample (it sets
how many windows they flag, not which).

Covariates (``Design.x``, after an intercept; standardized on the warm-up):

    log trailing mean r^2 over each span (20 s, 5 min, 30 min, 6 h), current window included
    log of the window's own volatility relative to its price (+ realized and Parkinson
        variance when the windows have them), log1p trade count, log1p volume, log |r|
    r and min(r, 0) (the signed return and its falls), log close (the price level, which
        the detector sees through volatility in USD): every input of the detector
    log1p trailing mean trade count (30 min)
    sin/cos of one and two daily cycles, weekend (UTC)   -- enter after 7 days of training

then the flags, in ``FLAGS`` order: the model (prediction -1) and the z-score competitors
(trade count, |r|, relative volatility, each against its trailing 30 min mean and sd, the
current window excluded), flagged above the ``1 - rate`` quantile at the model's flag rate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import polars as pl

from engine import config
from engine.durations import format_ms, parse_duration
from engine.errors import DataError

__all__ = ["COMPETITORS", "FLAGS", "Design", "EvalParams", "design", "targets"]

COMPETITORS = ("trade_count_z", "abs_return_z", "volatility_z")
FLAGS = ("model", *COMPETITORS)
DAY_MS = 86_400_000


@dataclass(frozen=True)
class EvalParams:
    """The evaluation's settings (durations in ms); defaults in ``engine.config``."""

    spans_ms: tuple[int, ...] = tuple(parse_duration(s) for s in config.EVAL_SPANS)
    activity_ms: int = parse_duration(config.EVAL_ACTIVITY_SPAN)
    zscore_ms: int = parse_duration(config.EVAL_ZSCORE_SPAN)
    warmup_ms: int = parse_duration(config.EVAL_WARMUP)
    refit_ms: int = parse_duration(config.EVAL_REFIT)
    season_after_ms: int = parse_duration(config.EVAL_SEASON_AFTER)
    min_shift_ms: int = parse_duration(config.EVAL_MIN_SHIFT)
    floor_share: float = config.EVAL_FLOOR_SHARE
    alpha: float = config.EVAL_ALPHA
    min_flags: int = config.EVAL_MIN_FLAGS
    min_shifts: int = config.EVAL_MIN_SHIFTS

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = asdict(self)
        for key in [k for k in d if k.endswith("_ms") and k != "spans_ms"]:
            d[key.removesuffix("_ms")] = format_ms(d.pop(key))
        d["spans"] = [format_ms(s) for s in d.pop("spans_ms")]
        d["method"] = {
            "baseline": "HAR-RV + activity + time of day, OLS walk-forward, embargo k",
            "p_value": "rotation test of flag . residual, one-sided",
            "effect": "y ~ 1 + forecast + its inputs + flag, on the evaluation sample",
            "interval": "Newey-West HAC, lag: Newey-West 1994 plug-in, at least 2k",
            "family": "Benjamini-Hochberg over the run's rows",
        }
        return d


def _col(w: pl.DataFrame, name: str) -> np.ndarray | None:
    """Column ``name`` as float64 (null: NaN), or None if the windows lack it."""
    return w[name].cast(pl.Float64).to_numpy() if name in w.columns else None


def _req(w: pl.DataFrame, name: str) -> np.ndarray:
    return w[name].cast(pl.Float64).to_numpy()


def _cum(x: np.ndarray) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(x)])


def _trailing(x: np.ndarray, ok: np.ndarray, span: int, current: bool = True):
    """(mean, sd, count) of ``x`` over the ``ok`` windows among the ``span`` windows ending at
    each window (``current``) or just before it. Cumulative sums, centered for precision."""
    n = len(x)
    c0 = float(np.mean(x[ok])) if ok.any() else 0.0
    xz = np.where(ok, x - c0, 0.0)
    cs, cq, cn = _cum(xz), _cum(xz * xz), _cum(ok.astype(np.float64))
    hi = np.arange(n) + (1 if current else 0)
    lo = np.maximum(hi - span, 0)
    cnt = cn[hi] - cn[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        m = (cs[hi] - cs[lo]) / cnt
        var = np.maximum((cq[hi] - cq[lo]) / cnt - m * m, 0.0)
    need = max(1, span // 2)
    m = np.where(cnt >= need, m + c0, np.nan)
    sd = np.where(cnt >= max(need, 2), np.sqrt(var * cnt / np.maximum(cnt - 1, 1)), np.nan)
    return m, sd, cnt


def _forward(x: np.ndarray, k: int) -> np.ndarray:
    """``x[i+1] + ... + x[i+k]``; NaN past the end."""
    n = len(x)
    c = _cum(x)
    i = np.arange(n)
    j = np.minimum(i + k + 1, n)
    return np.where(i + k < n, c[j] - c[np.minimum(i + 1, n)], np.nan)


def _times_ms(w: pl.DataFrame) -> np.ndarray:
    t = w["window_start"]
    if isinstance(t.dtype, pl.Datetime):
        return t.dt.epoch("ms").to_numpy().astype(np.int64)
    if t.dtype.is_integer():
        return t.to_numpy().astype(np.int64)
    raise DataError("window_start must be a UTC datetime or epoch milliseconds")


@dataclass
class Design:
    """The evaluation's design over a window tape: everything that does not depend on the
    horizon, one entry per window."""

    r: np.ndarray  # window log return (NaN before the first price)
    ok: np.ndarray  # r is usable: a price is known and the window is not touched by a gap
    last: int  # index of the last window with trades
    x: np.ndarray  # regressors: intercept, standardized covariates, then the FLAGS (0/1)
    n_base: int  # columns of the baseline
    enter_after: np.ndarray  # per column of x: training windows needed before it is used
    base_ok: np.ndarray  # covariates and model flag known
    warmup: int  # first window that may be forecast
    floor: float
    floor_abs: float
    rate: float | None  # the model's flag rate over the rows that may be forecast
    index: np.ndarray  # each window's place on the epoch grid: start // window size


def design(w: pl.DataFrame, every_ms: int, p: EvalParams) -> Design:
    """Window log returns, the baseline's covariates and the flags of a window tape (see the
    module docstring); DataError for missing columns or windows out of time order."""
    missing = [
        c
        for c in ("window_start", "trade_count", "volume", "return", "volatility", "prediction")
        if c not in w.columns
    ]
    if missing:
        raise DataError(f"the windows lack the columns {', '.join(missing)}")
    n = w.height
    t = _times_ms(w)
    if n > 1 and not (np.diff(t) > 0).all():
        bad = int(np.argmin(np.diff(t) > 0)) + 1
        raise DataError(f"windows are not in strictly increasing time order (row {bad + 1})")
    tc = np.nan_to_num(_req(w, "trade_count"), nan=0.0)
    volume = np.nan_to_num(_req(w, "volume"), nan=0.0)
    ret, vol = _req(w, "return"), _req(w, "volatility")
    gap = np.zeros(n, dtype=bool)
    if "gap" in w.columns:
        gap = w["gap"].fill_null(False).to_numpy().astype(bool)
    close = _col(w, "close")
    with np.errstate(invalid="ignore", divide="ignore"):
        if close is not None:  # close to close, the last price carried over empty windows
            cff = pl.Series(close).fill_nan(None).forward_fill().to_numpy().astype(np.float64)
            prev = np.concatenate([[np.nan], cff[:-1]])
            r = np.where(np.isfinite(prev), np.log(cff / prev), np.log1p(ret))
            rel = vol / cff
        else:  # the prototype's rows: only the within-window return is known
            r, rel = np.log1p(ret), vol
    r = np.where(tc > 0, r, np.where(np.isfinite(r), 0.0, np.nan))
    ok = np.isfinite(r) & ~gap
    traded = np.flatnonzero(tc > 0)
    last = int(traded[-1]) if len(traded) else -1

    def windows(ms: int) -> int:
        return max(1, round(ms / every_ms))

    spans = [windows(s) for s in p.spans_ms]
    warmup = max(windows(p.warmup_ms), max(spans))
    head = ok & (np.arange(n) < warmup)
    r2 = np.where(ok, r * r, 0.0)
    ar = np.where(ok, np.abs(r), 0.0)
    floor = p.floor_share * float(r2[head].mean()) if head.any() else 0.0
    floor_abs = p.floor_share * float(ar[head].mean()) if head.any() else 0.0
    floor, floor_abs = max(floor, 1e-30), max(floor_abs, 1e-15)

    rel = np.where(np.isfinite(rel), rel, 0.0)
    rel_floor = max(p.floor_share * float(rel[head].mean()) if head.any() else 0.0, 1e-15)
    cov = [np.log(_trailing(r2, ok, s)[0] + floor) for s in spans]
    cov.append(np.log(rel + rel_floor))
    for extra in ("realized_variance", "parkinson_variance"):
        v = _col(w, extra)
        if v is not None:
            cov.append(np.log(np.nan_to_num(v, nan=0.0) + floor))
    cov += [np.log1p(tc), np.log1p(volume), np.log(np.abs(r) + np.sqrt(floor))]
    # What else the detector sees: the signed return (and its negative part: falls are
    # followed by more volatility than rises) and, through volatility in USD, the price level.
    rs = np.where(ok, r, 0.0)
    cov += [rs, np.minimum(rs, 0.0)]
    if close is not None:
        cov.append(np.log(np.where(np.isfinite(cff) & (cff > 0), cff, np.nan)))
    cov.append(np.log1p(_trailing(tc, ~gap, windows(p.activity_ms))[0]))
    n_plain = len(cov)
    end = t + every_ms
    phase = 2 * np.pi * (end % DAY_MS) / DAY_MS
    cov += [np.sin(phase), np.cos(phase), np.sin(2 * phase), np.cos(2 * phase)]
    cov.append(((end // DAY_MS + 3) % 7 >= 5).astype(np.float64))  # Saturday, Sunday (UTC)
    # x is filled in place (intercept, covariates, flags): for a year each copy is 280 MB.
    x = np.empty((n, 1 + len(cov) + len(FLAGS)))
    x[:, 0] = 1.0
    c = x[:, 1 : 1 + len(cov)]
    for j, col in enumerate(cov):
        c[:, j] = col
    del cov
    enter_after = np.zeros(x.shape[1], dtype=np.int64)
    enter_after[1 + n_plain : 1 + c.shape[1]] = windows(p.season_after_ms)

    pred = _req(w, "prediction")
    flag_ok = np.isfinite(pred)
    base_ok = ok & (tc > 0) & flag_ok & np.isfinite(c).all(axis=1)
    fit = base_ok & (np.arange(n) < warmup)
    ref = c[fit] if fit.any() else c[base_ok] if base_ok.any() else np.zeros((1, c.shape[1]))
    mu, sd = ref.mean(axis=0), ref.std(axis=0)
    sd[~(sd > 0)] = 1.0
    c -= mu  # scaling with the warm-up only: conditioning, not information
    c /= sd

    model = (pred == -1).astype(np.float64)
    may = base_ok & (np.arange(n) >= warmup)
    rate = float(model[may].mean()) if may.any() else None
    zspan = windows(p.zscore_ms)
    flags = [model]
    for v, okv in ((tc, ~gap), (np.abs(np.nan_to_num(r)), ok), (rel, ok)):
        m, s, _ = _trailing(v, okv, zspan, current=False)
        with np.errstate(invalid="ignore", divide="ignore"):
            z = np.where(s > 0, (v - m) / s, np.nan)
        zs = np.where(np.isfinite(z), z, -np.inf)
        hit = np.zeros(n)
        if rate and may.any():
            thr = float(np.quantile(zs[may], 1 - rate))
            hit = ((zs > thr) & np.isfinite(zs)).astype(np.float64)
        flags.append(hit)
    for j, f in enumerate(flags):
        x[:, 1 + c.shape[1] + j] = f
    return Design(
        r,
        ok,
        last,
        x,
        1 + c.shape[1],
        enter_after,
        base_ok,
        warmup,
        floor,
        floor_abs,
        rate,
        t // every_ms,
    )


def targets(d: Design, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(``y``, ``future_ok``) for horizon ``k`` windows: ``y[:, 0] = log(sum r^2 + k floor)``
    and ``y[:, 1] = log(sum |r| + k floor_abs)`` over windows ``i+1 .. i+k``; ``future_ok``
    is False where that future touches a gap or reaches the last window with trades (which
    may be partly filled), so windows past the data never count as zero moves."""
    n = len(d.r)
    bad = np.where(d.ok, 0.0, 1.0)
    r2 = np.where(d.ok, d.r * d.r, 0.0)
    ar = np.where(d.ok, np.abs(np.nan_to_num(d.r)), 0.0)
    future_ok = (np.arange(n) + k <= d.last - 1) & (_forward(bad, k) == 0)
    with np.errstate(invalid="ignore"):
        y = np.column_stack(
            [np.log(_forward(r2, k) + k * d.floor), np.log(_forward(ar, k) + k * d.floor_abs)]
        )
    return y, future_ok
