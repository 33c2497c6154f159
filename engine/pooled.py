"""Does the flag add information across symbols? One test of the model's flag pooled over the
symbols of a run, honest about what the symbols share.

Per symbol and per (metric, horizon), ``engine.evaluate`` hands over the model flag's
evaluation sample (``PoolInput``): each row's place on the window grid, the outcome's residual
``y~`` and the flag's residual ``f~`` on that symbol's own adjustment design (its volatility
forecast, the forecast's inputs and their decile steps), and the flag itself.

**The common grid.** The windows every symbol's sample spans: from the latest first window to
the earliest last one (shortened by up to ~0.1 % so that its length suits the FFT). A window a
symbol's sample left out (its future touched a gap, say) counts 0 for it, after each
symbol's residuals are centred on the rows it has in the grid (a symbol-specific intercept
over the common span). Symbols whose samples do not overlap cannot be pooled: the run says
so rather than pooling fewer.

**p-value: one rotation for all symbols.** Per symbol, ``stat_i(s) = sum_t flag_i(t - s)
y~_i(t)`` for every circular shift ``s`` of the grid (by FFT); pooled,
``T(s) = sum_i stat_i(s) / sd_i`` with ``sd_i`` the spread of ``stat_i`` over the shifts, so
that each symbol weighs the same whatever the scale of its outcome. Every symbol is shifted by
the same ``s``: the flags' correlation across symbols (a market-wide burst flags many at once),
the outcomes' (volatility moves together), each flag's clustering and the overlap of
neighbouring horizons are all kept in every rotation; only the alignment of flags with their
futures is broken. ``p = (1 + #{T(s) >= T(0)}) / (1 + #shifts)``, one-sided, over the shifts
the per-symbol test uses. Treating the symbols as independent (a sum of per-symbol z-scores)
would count one market-wide episode once per symbol: on simulated nulls with common volatility
and common flag bursts that rejects far above the nominal rate, and this does not (tests).

**Effect.** The slope of the stacked regression, each symbol with its own adjustment:
``gamma = sum f~ y~ / sum f~^2`` over symbols and windows, ``effect = exp(gamma)``. Its 95 %
interval and ``p_dk`` are Driscoll-Kraay: Newey-West on the sum over symbols of the scores at
each window (lag: the Newey-West plug-in, at least ``2k``), so correlation across symbols and
over time both widen it.

**Family.** Benjamini-Hochberg over the pooled rows (metrics x horizons), ``adds
information`` as for one symbol (``engine.evaluate.judge``). The per-symbol rows are judged
again over all symbols' rows together: a symbol's finding is one of that many comparisons.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from engine.econometrics import (
    fft_length,
    hac_lags,
    long_run_variance,
    rotation_p,
    rotation_stats,
)
from engine.evaluate import HALF_HOUR_MS, METRICS, NO_EVIDENCE, TOO_LITTLE, Z975, PoolInput, judge
from engine.har import EvalParams

__all__ = ["POOLED_KEYS", "min_shift", "pooled_rows", "pooling_notes"]

POOLED_KEYS = (
    "horizon",
    "flag",
    "metric",
    "symbols",
    "n",
    "effect",
    "effect_ci_low",
    "effect_ci_high",
    "p_value",
    "verdict",
    "p_bh",
    "p_dk",
    "flags",
    "shifts",
    "hac_lags",
    "first_window",
    "windows",
)


def min_shift(n: int, k: int, every_ms: int, p: EvalParams) -> int:
    """The smallest rotation, as the per-symbol test takes it: a day (at most a quarter of
    the sample), and at least ``2k`` windows plus half an hour."""
    per_day = max(1, round(p.min_shift_ms / every_ms))
    return max(min(per_day, n // 4), 2 * k + max(1, round(HALF_HOUR_MS / every_ms)))


def _on_grid(inp: PoolInput, lo: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y~, f~, flag) of one symbol on the grid ``lo .. lo + n - 1``, 0 where it has no row.
    The residuals are centred on the rows the grid keeps: they have mean 0 over the symbol's
    whole sample, not over the grid's part of it, and a mean left in them would make the
    zeros of a hole look like information (rotations that move flags into the hole lose
    it)."""
    keep = (inp.grid >= lo) & (inp.grid < lo + n)
    at = inp.grid[keep] - lo
    out = np.zeros((3, n))
    if len(at):
        y, f_res = inp.y_res[keep], inp.f_res[keep]
        out[0, at], out[1, at] = y - y.mean(), f_res - f_res.mean()
        out[2, at] = inp.flag[keep]
    return out[0], out[1], out[2]


def _pooled_row(
    metric: str, horizon: str, inputs: Sequence[PoolInput], every_ms: int, p: EvalParams
) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(POOLED_KEYS)
    inputs = [i for i in inputs if len(i.grid)]  # a symbol without a sample is not pooled
    row.update(
        horizon=horizon, flag="model", metric=metric, symbols=len(inputs), verdict=TOO_LITTLE
    )
    if not inputs:
        return row
    k = inputs[0].k
    lo = max(int(i.grid[0]) for i in inputs)
    hi = min(int(i.grid[-1]) for i in inputs) + 1
    n = fft_length(hi - lo) if hi > lo else 0
    lo = hi - n
    row.update(first_window=lo * every_ms, windows=n)
    if n < 10:
        return row
    least = min_shift(n, k, every_ms, p)
    total = np.zeros(n)
    cross = np.zeros(n)  # sum over symbols of f~ y~, per window
    square = np.zeros(n)  # sum over symbols of f~^2, per window
    rows = flags = 0
    for inp in inputs:
        y, f_res, flag = _on_grid(inp, lo, n)
        rows += int(np.count_nonzero((inp.grid >= lo) & (inp.grid < hi)))
        flags += int(flag.sum())
        cross += f_res * y
        square += f_res * f_res
        stat = rotation_stats(y, flag[:, None])[:, 0]
        spread = float(stat[least : n - least + 1].std()) if n - least >= least else 0.0
        if spread > 0:
            total += stat / spread
    row.update(n=rows, flags=flags)
    ff = float(square.sum())
    if ff <= 1e-9 * max(flags, 1):
        return row
    gamma = float(cross.sum()) / ff
    score = cross - gamma * square
    lags = hac_lags(score, 2 * k)
    se = float(np.sqrt(n * long_run_variance(score, lags)) / ff)
    from scipy.stats import norm

    row.update(
        effect=float(np.exp(gamma)),
        effect_ci_low=float(np.exp(gamma - Z975 * se)),
        effect_ci_high=float(np.exp(gamma + Z975 * se)),
        p_dk=float(norm.sf(gamma / se)) if se > 0 else None,
        hac_lags=lags,
    )
    row["p_value"], row["shifts"] = rotation_p(total, least)
    little = flags < p.min_flags or (row["shifts"] or 0) < p.min_shifts
    row["verdict"] = TOO_LITTLE if little or row["p_value"] is None else NO_EVIDENCE
    return row


def pooling_notes(
    inputs: Mapping[str, Mapping[tuple[str, str], PoolInput]],
    rows: Sequence[dict[str, Any]],
    every_ms: int,
) -> list[str]:
    """What a reader of the pooled verdict must know about its first row (the primary
    metric, the first horizon): symbols left out for want of an evaluation sample, and a
    common span that keeps less than 90 % of some symbol's sample (and which symbols set it)."""
    if not rows:
        return []
    key = (rows[0]["metric"], rows[0]["horizon"])
    have = {sym: got[key] for sym, got in inputs.items() if key in got and len(got[key].grid)}
    notes = []
    empty = sorted(set(inputs) - set(have))
    if empty:
        notes.append(
            f"not pooled, no evaluation sample (too short for the warm-up and horizons): "
            f"{', '.join(empty)}"
        )
    if len(have) < 2:
        notes.append("fewer than 2 symbols pooled: the pooled test is one symbol's")
    if not rows[0]["windows"]:
        return notes
    lo = rows[0]["first_window"] // every_ms
    hi = lo + rows[0]["windows"]
    kept = {
        sym: int(np.count_nonzero((i.grid >= lo) & (i.grid < hi))) / len(i.grid)
        for sym, i in have.items()
    }
    if min(kept.values()) < 0.9:
        start = max(have, key=lambda sym: int(have[sym].grid[0]))
        end = min(have, key=lambda sym: int(have[sym].grid[-1]))
        low = ", ".join(f"{sym} {share:.0%}" for sym, share in sorted(kept.items()) if share < 0.9)
        notes.append(
            f"pooled over the {rows[0]['windows']:,} windows all symbols share, set by "
            f"{start} (starts last) and {end} (ends first); share of each symbol's evaluated "
            f"windows kept: {low}"
        )
    return notes


def pooled_rows(
    inputs: Mapping[str, Mapping[tuple[str, str], PoolInput]],
    horizons: Sequence[str],
    every_ms: int,
    p: EvalParams | None = None,
) -> list[dict[str, Any]]:
    """The pooled rows, metric by metric then horizon by horizon (``POOLED_KEYS``), judged
    by Benjamini-Hochberg over themselves. ``inputs``: per symbol, what ``evaluate(...,
    pool=...)`` filled."""
    p = p or EvalParams()
    rows = [
        _pooled_row(
            metric,
            h,
            [got[(metric, h)] for got in inputs.values() if (metric, h) in got],
            every_ms,
            p,
        )
        for metric in METRICS
        for h in horizons
    ]
    judge(rows, p.alpha)
    return rows
