"""The statistics behind ``engine evaluate``, as plain functions over arrays.

- :func:`walk_forward_ols`: out-of-sample least-squares forecasts, refitted per block on an
  expanding window with an embargo, from cumulative Gram matrices (one small solve per block
  and model, however many rows).
- :func:`rotation_stats` / :func:`rotation_p`: the flag's association with the outcome beyond
  the covariates for every circular shift of the flag at once (FFT), and the rotation p-value.
- :func:`flag_effect`: the flag's coefficient with its Newey-West (HAC) standard error, from
  Frisch-Waugh residuals (:func:`residualize`).
- :func:`clark_west`: Clark and West (2007), nested out-of-sample comparison.
- :func:`diebold_mariano`: Diebold and Mariano (1995) with the Harvey, Leybourne and Newbold
  (1997) small-sample correction.

HAC variances are arch's Bartlett kernel estimator (:func:`long_run_variance`) with the
Newey-West (1994) plug-in lag arch estimates (:func:`hac_lags`), floored by the horizon. They
equal statsmodels' ``OLS(..., cov_type="HAC", use_correction=False)`` with the same lag (the
test suite checks it); statsmodels' loop over lags costs ~25 s on a year of 20 s windows
where arch takes under one.
- :func:`bh_adjust`: Benjamini-Hochberg over a family (statsmodels ``multipletests``).

No loops over rows: at most over refit blocks (days).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "bh_adjust",
    "clark_west",
    "diebold_mariano",
    "fft_length",
    "flag_effect",
    "hac_lags",
    "long_run_variance",
    "residualize",
    "rotation_p",
    "rotation_spectrum",
    "rotation_stats",
    "walk_forward_ols",
]


def hac_lags(score: np.ndarray, least: int) -> int:
    """Bartlett (Newey-West) truncation lag for the long-run variance of ``score``: the
    Newey-West (1994) plug-in bandwidth that arch estimates from the series itself, and at
    least ``least`` (``2k`` for an effect: overlapping ``k``-window targets make neighbours
    dependent up to ``k - 1`` apart, and flags come in runs)."""
    from arch.covariance.kernel import Bartlett

    if len(score) < 3 or not np.any(score):
        return int(least)
    return int(max(least, np.ceil(Bartlett(score, center=False).bandwidth)))


def long_run_variance(x: np.ndarray, lags: int, center: bool = False) -> float:
    """``(1/n) sum_t sum_s w(t-s) x_t x_s`` with Bartlett weights ``1 - |j|/(lags+1)``: arch's
    kernel estimator (``center``: of ``x - mean``). ``n`` times it is statsmodels' HAC meat
    ``S_hac_simple(x, lags)``, at a fraction of the cost for long lags."""
    from arch.covariance.kernel import Bartlett

    est = Bartlett(x, bandwidth=int(lags), force_int=True, center=center)
    return float(est.cov.long_run[0, 0])


def walk_forward_ols(
    x: np.ndarray,
    y: np.ndarray,
    train_ok: np.ndarray,
    starts: np.ndarray,
    k: int,
    models: Sequence[np.ndarray],
    min_rows: int,
    enter_after: np.ndarray | None = None,
) -> np.ndarray:
    """Out-of-sample OLS forecasts, shape ``(n, targets, models)`` (NaN where none).

    ``x`` (n, p) regressors, ``y`` (n, targets); ``models`` are column index arrays into ``x``
    (each model is fitted to every target). Block ``j`` covers rows ``[starts[j],
    starts[j+1])`` (the last runs to ``n``) and is forecast by coefficients fitted on the rows
    ``i < starts[j] - k`` with ``train_ok`` (the embargo: row ``i``'s target ends at
    ``i + k``, so it is known before the block starts). Blocks with fewer than ``min_rows``
    training rows get no forecast. ``enter_after[c]``: column ``c`` joins a block's fit only
    once its training rows reach that far on the grid (``starts[j] - k >= enter_after[c]``;
    time-of-day terms fitted on a day or two mistake the day's volatility path for a season).
    Least squares via the pseudo-inverse, so a column that is left out or constant so far
    (weekend in the first days, a flag that never fired) gets coefficient 0.
    """
    n, p = x.shape
    m = y.shape[1]
    out = np.full((n, m, len(models)), np.nan)
    starts = np.asarray(starts, dtype=np.int64)
    if len(starts) == 0:
        return out
    ok = train_ok & np.isfinite(y).all(axis=1) & np.isfinite(x).all(axis=1)
    cuts = np.clip(starts - k, 0, n)
    edges = np.concatenate([[0], cuts])
    nb = len(starts)
    gram = np.empty((nb, p, p))
    cross = np.empty((nb, p, m))
    for j in range(nb):  # one pass over the rows, a block (day) at a time
        seg = slice(edges[j], edges[j + 1])
        xs = np.where(ok[seg, None], x[seg], 0.0)
        gram[j] = xs.T @ xs
        cross[j] = xs.T @ np.where(ok[seg, None], y[seg], 0.0)
    gram = np.cumsum(gram, axis=0)
    cross = np.cumsum(cross, axis=0)
    rows = np.concatenate([[0], np.cumsum(ok)])[cuts]  # training rows per block
    if enter_after is not None:  # a column not in yet: zero its row and column of the Gram
        out_ = cuts[:, None] < np.asarray(enter_after)[None, :]  # (nb, p)
        gram = np.where(out_[:, :, None] | out_[:, None, :], 0.0, gram)
        cross = np.where(out_[:, :, None], 0.0, cross)
    coef = np.zeros((nb, p, m * len(models)))
    for mi, cols in enumerate(models):
        g = gram[:, cols][:, :, cols]
        b = cross[:, cols, :]
        beta = np.linalg.pinv(g, 1e-12, True) @ b  # (nb, q, m); rcond 1e-12, hermitian
        coef[:, cols, mi :: len(models)] = beta
    ends = np.concatenate([starts[1:], [n]])
    for j in range(nb):
        if rows[j] < min_rows or ends[j] <= starts[j]:
            continue
        blk = slice(starts[j], ends[j])
        out[blk] = (x[blk] @ coef[j]).reshape(-1, m, len(models))
    return out


def residualize(
    v: np.ndarray, z: np.ndarray | Callable[[slice], np.ndarray], chunk: int = 1 << 17
) -> np.ndarray:
    """Residuals of each column of ``v`` (or of ``v`` itself, 1-D) regressed on ``z``: least
    squares from the normal equations, pseudo-inverse so that collinear columns of ``z`` do
    no harm. ``z`` may be a function giving the rows of a slice: with a hundred columns and
    millions of rows, the normal equations are then accumulated ``chunk`` rows at a time and
    the whole of ``z`` is never held in memory."""
    part = z if callable(z) else (lambda sl: z[sl])
    cuts = [slice(i, min(i + chunk, len(v))) for i in range(0, len(v), chunk)]
    if not cuts:
        return v.copy()
    gram: Any = 0
    cross: Any = 0
    for sl in cuts:  # one pass builds both sums
        zc = part(sl)
        gram = gram + zc.T @ zc
        cross = cross + zc.T @ v[sl]
    beta = np.linalg.pinv(gram, hermitian=True) @ cross
    out = np.empty_like(v)
    for sl in cuts:
        out[sl] = v[sl] - part(sl) @ beta
    return out


def fft_length(n: int) -> int:
    """The largest ``m <= n`` whose prime factors are all at most 11 (a length the FFT does
    fast; at 1.5 M rows it is within about 0.1 % of ``n``)."""
    m = n
    while m > 1:
        r = m
        for q in (2, 3, 5, 7, 11):
            while r % q == 0:
                r //= q
        if r == 1:
            return m
        m -= 1
    return max(n, 0)


def rotation_spectrum(flags: np.ndarray) -> np.ndarray:
    """The flags' real FFT along the windows, for :func:`rotation_stats` (reused when several
    outcomes are rotated against the same flags)."""
    from scipy import fft

    return fft.rfft(flags.astype(np.float64), axis=0, workers=-1)  # columns in parallel


def rotation_stats(
    y_res: np.ndarray, flags: np.ndarray, spectrum: np.ndarray | None = None
) -> np.ndarray:
    """``stat[s, j] = sum_i flags[(i - s) mod n, j] * y_res[i]`` for every circular shift ``s``
    in ``0 .. n-1`` and every flag column ``j``, all at once (circular cross-correlations by
    FFT). With ``y_res`` the outcome's residual on the covariates, ``stat[s, j]`` is the
    numerator of the shifted flag's Frisch-Waugh coefficient; ``stat[0, j]`` is the observed
    one. Fast when ``n`` has only small prime factors (:func:`fft_length`). ``spectrum``:
    :func:`rotation_spectrum` of ``flags``, if already computed."""
    from scipy import fft

    n = len(y_res)
    fy = fft.rfft(y_res)
    ff = rotation_spectrum(flags) if spectrum is None else spectrum
    return fft.irfft(fy[:, None] * np.conj(ff), n, axis=0, workers=-1)


def rotation_p(stats: np.ndarray, min_shift: int) -> tuple[float | None, int]:
    """(one-sided p-value, shifts used): ``(1 + #{s: stat(s) >= stat(0)}) / (1 + #shifts)``
    over the shifts ``min_shift .. n - min_shift``; (None, 0) if there are none."""
    n = len(stats)
    if n == 0 or not np.isfinite(stats[0]) or min_shift < 1 or min_shift > n - min_shift:
        return None, 0
    g = stats[min_shift : n - min_shift + 1]
    return float((1 + np.sum(g >= stats[0])) / (1 + len(g))), len(g)


def flag_effect(y_res: np.ndarray, flag_res: np.ndarray, k: int) -> tuple[float, float, float, int]:
    """(gamma, HAC standard error, one-sided HAC p-value, lag) of the flag in ``y ~ Z + flag``
    from ``y`` and the flag residualized on ``Z``. Frisch-Waugh: the same coefficient and
    residuals as the full regression, hence the same sandwich, which is statsmodels'
    ``OLS(...).fit(cov_type="HAC", cov_kwds={"maxlags": lag, "use_correction": False})``
    (the test suite checks it to 1e-9); the lag is :func:`hac_lags` with a floor of ``2k``."""
    from scipy.stats import norm

    ff = float(flag_res @ flag_res)
    gamma = float(flag_res @ y_res) / ff
    score = flag_res * (y_res - gamma * flag_res)
    lags = hac_lags(score, 2 * k)
    se = float(np.sqrt(len(score) * long_run_variance(score, lags)) / ff)
    return gamma, se, float(norm.sf(gamma / se)) if se > 0 else float("nan"), lags


def _hac_mean(d: np.ndarray, lags: int) -> tuple[float, float]:
    """(mean of ``d``, its HAC standard error): statsmodels' ``OLS(d, 1)`` with HAC, computed
    as the centered long-run variance over ``n``."""
    return float(d.mean()), float(np.sqrt(long_run_variance(d, lags, center=True) / len(d)))


def block_means(x: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    """Means of ``x`` over runs of equal ``blocks`` (block ids in order, e.g. refit days)."""
    if not len(x):
        return np.zeros(0)
    starts = np.flatnonzero(np.diff(blocks, prepend=blocks[0] - 1))
    return np.add.reduceat(x, starts) / np.diff(np.append(starts, len(x)))


def _block_t(d: np.ndarray, blocks: np.ndarray, min_blocks: int) -> tuple[float, float, int]:
    """Mean of the block means of ``d`` over its standard error: (t, one-sided p of mean > 0
    from Student t, number of blocks); NaN below ``min_blocks``."""
    from scipy.stats import t as student

    m = block_means(d, blocks)
    b = len(m)
    sd = float(m.std(ddof=1)) if b > 1 else 0.0
    if b < min_blocks or not sd > 0:
        return float("nan"), float("nan"), b
    t = float(m.mean() / (sd / np.sqrt(b)))
    return t, float(student.sf(t, b - 1)), b


def clark_west(
    y: np.ndarray,
    pred_base: np.ndarray,
    pred_aug: np.ndarray,
    blocks: np.ndarray,
    min_blocks: int = 20,
) -> tuple[float, float]:
    """Clark-West (2007) statistic and one-sided p-value (the larger, nesting model forecasts
    better): ``f = e_base^2 - (e_aug^2 - (pred_base - pred_aug)^2)``, tested on its means per
    refit block (a day): the forecasts' coefficients change once a block, so ``f`` depends
    on itself for a whole block, which a HAC of a few dozen lags does not see (it rejected
    13-27 % of true nulls). NaN with fewer than ``min_blocks`` blocks."""
    f = (y - pred_base) ** 2 - ((y - pred_aug) ** 2 - (pred_base - pred_aug) ** 2)
    t, p, _ = _block_t(f, blocks, min_blocks)
    return t, p


def diebold_mariano(
    loss_a: np.ndarray, loss_b: np.ndarray, blocks: np.ndarray, min_blocks: int = 20
) -> tuple[float, float]:
    """Diebold-Mariano: (statistic, one-sided p-value that forecast ``a`` has the smaller
    expected loss), ``d = loss_b - loss_a`` tested on its means per refit block (see
    :func:`clark_west`), with the Harvey-Leybourne-Newbold small-sample factor for one-step
    block means, ``sqrt((B - 1) / B)``, and Student t with ``B - 1`` degrees of freedom.
    Positive: ``a`` is more accurate. NaN with fewer than ``min_blocks`` blocks."""
    from scipy.stats import t as student

    t, _, b = _block_t(loss_b - loss_a, blocks, min_blocks)
    if not np.isfinite(t):
        return t, t
    dm = t * np.sqrt((b - 1) / b)
    return float(dm), float(student.sf(dm, b - 1))


def bh_adjust(p: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (statsmodels ``multipletests``, ``fdr_bh``)."""
    if not len(p):
        return []
    from statsmodels.stats.multitest import multipletests

    return [float(v) for v in multipletests(np.asarray(p, dtype=float), method="fdr_bh")[1]]
