"""Do flagged windows precede larger moves? Forward moves per horizon, groups, statistics.

This is the prototype's view of the question, kept and mended; the verdict that controls for a
volatility forecast is ``engine evaluate``. For a scored window ``i`` and horizon
``H = k * every``, the future is windows ``i+1 .. i+k`` of the complete grid, i.e.
``[end, end + H)``:

    abs_return_sum   sum of |return| over those windows (the prototype's metric; empty = 0)
    abs_return       |close at end+H / close of i - 1| (close to close; empty windows carry
                     the last price forward)

A future is excluded when it touches a gap window, or when it reaches the last window that
holds a trade: the data stops inside that window, so it is only partly filled, and the
windows after it (a grid run to an ``--end`` beyond the data) are no observation at all.
Windows are grouped by the model flag and a volatility baseline (``volatility > mean + 2 sd``):
``normal``, ``vol_only``, ``if_only``, ``both``. The ``trailing`` baseline uses the ``buffer``
scoreable windows before each window (no look-ahead); ``full`` uses all scored windows, as the
prototype did, and is look-ahead.

Per horizon, metric and group:

    n, mean, median, ratio_mean, ratio_median   (ratios to ``normal``)
    p_naive          one-sided Mann-Whitney p (group larger than normal). Naive: it takes the
                     windows as independent samples, which overlapping horizons and clustered
                     volatility are not, so it overstates confidence. ``p_naive_bh`` is its
                     Benjamini-Hochberg adjustment over the whole table.
    ci_low, ci_high  95 % circular block bootstrap interval of ``ratio_mean``
    block            its block length in windows: Politis-White (``arch``) on the resampled
                     series (the move and each group's indicator; the longest), at least 2k
    ratio_adjusted   ``if_only`` only: its mean move over what normal windows like it moved.
                     A logistic regression of ``if_only`` against ``normal`` on what is known
                     at the window's end (``adjustment_covariates``: trailing mean |return|
                     and trade count over 5 min, 30 min and 6 h, the window's own volatility
                     and trade count, time of day) gives each window a propensity; strata
                     are the quintiles of the group's propensities; within a stratum the
                     normal windows are weighted by their propensity odds (quintiles alone
                     leave much of the confounding in place when the flag is rare); the
                     ratio of the group's mean to that weighted normal mean is averaged over
                     strata with the group's counts as weights. ``adj_ci_low``/``adj_ci_high``
                     come from the same bootstrap, the fitted propensities held fixed.
    overlap          the share of the group's windows in strata whose weighted normal windows
                     count as at least ``MIN_NORMAL`` (Kish's effective sample size); only
                     those strata enter the adjusted ratio, and below ``MIN_OVERLAP`` there is
                     none

``vol_only`` and ``both`` get no adjusted figure: they are defined by the window's own
volatility, and a comparison matched on the variable that defines a group is biased by
construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from engine.errors import InputError

__all__ = [
    "ADJUSTMENT_COVARIATES",
    "GROUPS",
    "METRICS",
    "Horizon",
    "adjustment_covariates",
    "block_length",
    "compare",
    "forward_moves",
    "group_windows",
    "horizons_for",
    "propensity_strata",
]

GROUPS = ("normal", "vol_only", "if_only", "both")
METRICS = ("abs_return_sum", "abs_return")
BOOTSTRAP_REPS = 1000
TRAILING_SPANS = (("5m", 300_000), ("30m", 1_800_000), ("6h", 21_600_000))
ADJUSTMENT_COVARIATES = (
    *(f"trailing_abs_return_{label}" for label, _ in TRAILING_SPANS),
    *(f"trailing_trade_count_{label}" for label, _ in TRAILING_SPANS),
    "volatility",
    "trade_count",
    "day_sin",
    "day_cos",
    "day_sin2",
    "day_cos2",
)
STRATA = 5  # quintiles of the group's propensity
MIN_NORMAL = 20  # effective normal windows a stratum needs to count as overlap
MIN_OVERLAP = 0.5  # below this share of the group in overlapping strata: no adjusted ratio
_IF_ONLY = GROUPS.index("if_only")
_DAY_MS = 86_400_000


@dataclass(frozen=True)
class Horizon:
    label: str  # as the user wrote it, e.g. "5m"
    ms: int
    k: int  # windows


def horizons_for(spec: Sequence[tuple[str, int]], every_ms: int) -> list[Horizon]:
    out = []
    for label, ms in spec:
        if ms % every_ms:
            raise InputError(
                f"horizon {label} is not a multiple of the window ({every_ms / 1000:g}s); "
                "choose horizons that the window size divides"
            )
        out.append(Horizon(label, ms, ms // every_ms))
    return out


def forward_sum(values: np.ndarray, k: int) -> np.ndarray:
    """``out[i] = values[i+1] + ... + values[i+k]``, added left to right exactly as a plain
    ``sum()`` would (a cumulative-sum difference would differ in the last bits); NaN where
    the future runs past the end."""
    n = len(values)
    out = np.zeros(n)
    for j in range(1, k + 1):
        out[: max(0, n - j)] += values[j:]
    out[max(0, n - k) :] = np.nan
    return out


def forward_moves(windows: pl.DataFrame, horizons: Sequence[Horizon]) -> pl.DataFrame:
    """Columns ``<metric>@<label>`` for every window of a complete grid (null if excluded).

    A future may use only windows before the last one with a trade (a window with trades
    has a close): the data ends inside that one, and the grid may run on, empty, to an
    ``--end`` beyond the data."""
    n = windows.height
    r = windows["return"].abs().fill_null(0.0).to_numpy()
    gap = windows["gap"].to_numpy().astype(np.int64)
    gsum = np.concatenate([[0], np.cumsum(gap)])
    close = windows["close"].to_numpy()
    close_ff = windows["close"].forward_fill().to_numpy()
    traded = np.flatnonzero(windows["close"].is_not_null().to_numpy())
    last = int(traded[-1]) if len(traded) else 0  # futures must end before this window
    i = np.arange(n)
    cols = {}
    for h in horizons:
        j = i + h.k
        ok = j < last
        jj = np.minimum(j, n - 1)
        ok &= (gsum[jj + 1] - gsum[i + 1]) == 0
        with np.errstate(invalid="ignore", divide="ignore"):
            s = np.where(ok, forward_sum(r, h.k), np.nan)
            a = np.where(ok, np.abs(close_ff[jj] / close - 1.0), np.nan)
        cols[f"abs_return_sum@{h.label}"] = pl.Series(s).fill_nan(None)
        cols[f"abs_return@{h.label}"] = pl.Series(a).fill_nan(None)
    return pl.DataFrame(cols)


def group_windows(scored: pl.DataFrame, baseline: str, buffer: int) -> pl.Series:
    """The group of every window (null where not scored)."""
    vol = pl.col("volatility")
    ok = pl.col("prediction").is_not_null()
    if baseline == "full":
        s = scored.filter(ok)["volatility"].to_numpy()
        line = pl.lit(float(s.mean() + 2 * s.std(ddof=1)) if len(s) > 1 else float("inf"))
    elif baseline == "trailing":
        # mean + 2 sd over the `buffer` scoreable windows strictly before each window.
        able = scored.select((pl.col("trade_count") > 0) & ~pl.col("gap")).to_series()
        past = scored.filter(able).select(
            pl.col("window_start"),
            (vol.rolling_mean(buffer) + 2 * vol.rolling_std(buffer, ddof=1))
            .shift(1)
            .alias("_line"),
        )
        line = pl.lit(
            scored.select("window_start").join(past, on="window_start", how="left")["_line"]
        )
    else:
        raise InputError(f"unknown baseline {baseline!r}; choose trailing or full")
    flag = pl.col("prediction") == -1
    high = vol > line
    return scored.select(
        pl.when(~ok)
        .then(None)
        .when(flag & high)
        .then(pl.lit("both"))
        .when(flag)
        .then(pl.lit("if_only"))
        .when(high)
        .then(pl.lit("vol_only"))
        .otherwise(pl.lit("normal"))
        .alias("group")
    ).to_series()


def adjustment_covariates(windows: pl.DataFrame, time_col: str = "window_start") -> pl.DataFrame:
    """What is known at each window's end, for the adjusted ratio (``ADJUSTMENT_COVARIATES``).

    Trailing mean |return| over the windows starting in the last 5 min, 30 min and 6 h (by
    time, so other window sizes and the prototype's irregular rows scale; an empty window
    moved 0) and trailing mean trade count over the same spans, the window's own volatility
    (price sd, USD) and trade count, each as ``log1p(x / median)`` (the median of its positive
    values in windows with trades), and two harmonics of the time of day (UTC).
    ``time_col`` must be sorted."""
    t = pl.col(time_col)
    absret = pl.col("return").abs().fill_null(0.0)
    trailing = [
        x.rolling_mean_by(t, window_size=f"{ms}ms", closed="right").alias(
            f"trailing_{name}_{label}"
        )
        for name, x in (
            ("abs_return", absret),
            ("trade_count", pl.col("trade_count").cast(pl.Float64)),
        )
        for label, ms in TRAILING_SPANS
    ]
    phase = 2 * np.pi * (t.dt.epoch("ms") % _DAY_MS) / _DAY_MS
    raw = windows.select(
        *trailing,
        pl.col("volatility").cast(pl.Float64).fill_null(0.0),
        pl.col("trade_count").cast(pl.Float64),
        phase.sin().alias("day_sin"),
        phase.cos().alias("day_cos"),
        (2 * phase).sin().alias("day_sin2"),
        (2 * phase).cos().alias("day_cos2"),
    )
    scaled = ADJUSTMENT_COVARIATES[: 2 * len(TRAILING_SPANS) + 2]
    traded = windows["trade_count"] > 0  # an empty grid beyond the data changes no scale
    return raw.with_columns(
        (pl.col(c) / pl.col(c).filter(traded & (pl.col(c) > 0)).median().fill_null(1.0)).log1p()
        for c in scaled
    )


def propensity_strata(
    covariates: pl.DataFrame, code: np.ndarray, strata: int = STRATA
) -> tuple[np.ndarray, np.ndarray]:
    """The propensity stratum and odds weight of every ``normal`` and ``if_only`` window.

    A logistic regression of ``if_only`` against ``normal`` on the standardized covariates
    gives each window a propensity ``p``; the strata (0 .. strata-1) are the quantiles of the
    group's own propensities, so each holds a ``1/strata`` share of the group, and a normal
    window's weight is its odds ``p / (1 - p)`` (scaled; only ratios within a stratum count),
    so that within a stratum the normal windows resemble the group's. Other windows, and all
    when there are too few of either kind to fit, get stratum ``strata`` (none) and weight 0."""
    from sklearn.linear_model import LogisticRegression

    x = covariates.to_numpy().astype(float)
    stratum = np.full(len(code), strata, dtype=np.int64)
    odds = np.zeros(len(code))
    ok = ((code == 0) | (code == _IF_ONLY)) & np.isfinite(x).all(axis=1)
    target = code[ok] == _IF_ONLY
    if target.sum() < strata or (~target).sum() < strata:
        return stratum, odds
    xo = x[ok]
    sd = xo.std(axis=0)
    xs = (xo - xo.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    z = LogisticRegression(max_iter=2000).fit(xs, target).decision_function(xs)
    bounds = np.quantile(z[target], np.arange(1, strata) / strata)
    stratum[ok] = np.searchsorted(bounds, z, side="right")
    odds[ok] = np.exp(z - z.max())  # log odds z; the common factor cancels within a stratum
    return stratum, odds


def block_length(series: np.ndarray, k: int) -> int:
    """Circular block length in windows: the Politis-White estimate (``arch``) of each
    column of ``series`` (one row per window; constant columns skipped), the longest,
    rounded up, and at least ``2k`` (a horizon's overlap) and at most the number of rows."""
    from arch.bootstrap import optimal_block_length

    x = np.asarray(series, dtype=float).reshape(len(series), -1)
    floor = max(2 * k, 1)
    x = x[:, np.ptp(x, axis=0) > 0] if len(x) else x
    if len(x) < 10 or x.shape[1] == 0:
        return max(1, min(floor, len(x)))
    b = optimal_block_length(x)["circular"].to_numpy()
    b = b[np.isfinite(b)]
    best = int(np.ceil(b.max())) if len(b) else 0
    return max(1, min(max(floor, best), len(x)))


def block_sums(values: np.ndarray, block: int, reps: int, rng: np.random.Generator) -> np.ndarray:
    """Circular block bootstrap replicates of the column sums of ``values`` (one row per
    window, in time order), shape ``(reps, columns)``: ``ceil(n / block)`` blocks with uniform
    random starts, wrapping at the end, the last one cut so a replicate has ``n`` windows.
    A block's sums are differences of cumulative sums, so a replicate costs
    O(blocks x columns), not O(windows); columns are done a few at a time to bound memory."""
    n, cols = values.shape
    nb = -(-n // block)
    length = np.full(nb, block)
    length[-1] = n - block * (nb - 1)
    starts = rng.integers(0, n, size=(reps, nb)).astype(np.int32 if n < 2**30 else np.int64)
    out = np.empty((reps, cols))
    chunk = 8
    step = max(1, 4_000_000 // (nb * chunk))
    for c0 in range(0, cols, chunk):
        cum = np.zeros((n + 1, min(chunk, cols - c0)))
        np.cumsum(values[:, c0 : c0 + chunk], axis=0, out=cum[1:])
        for r0 in range(0, reps, step):
            s = starts[r0 : r0 + step]
            e = s + length
            out[r0 : r0 + step, c0 : c0 + chunk] = (
                cum[np.minimum(e, n)] - cum[s] + cum[np.maximum(e - n, 0)]
            ).sum(axis=1)
    return out


def _table_columns(
    y: np.ndarray, code: np.ndarray, stratum: np.ndarray, odds: np.ndarray
) -> np.ndarray:
    """What the statistics are made of, one row per window, as columns to be summed:
    per group the moves and the count, then per stratum the ``if_only`` moves and count and
    the normal windows' odds-weighted moves and odds."""
    g = len(GROUPS)
    out = np.zeros((len(y), 2 * g + 4 * STRATA))
    rows = np.arange(len(y))
    out[rows, code] = y
    out[rows, g + code] = 1.0
    for s in range(STRATA):
        in_s = stratum == s
        grp, nrm = in_s & (code == _IF_ONLY), in_s & (code == 0)
        base = 2 * g + 4 * s
        out[grp, base] = y[grp]
        out[grp, base + 1] = 1.0
        out[nrm, base + 2] = odds[nrm] * y[nrm]
        out[nrm, base + 3] = odds[nrm]
    return out


def _ratios(sums: np.ndarray, usable: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ratio_mean per group, ratio_adjusted of ``if_only``) from column sums (last axis
    as ``_table_columns``); the adjusted ratio only over ``usable`` strata."""
    g = len(GROUPS)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums[..., :g] / sums[..., g : 2 * g]
        ratio = mean / mean[..., :1]
        st = sums[..., 2 * g :].reshape(*sums.shape[:-1], STRATA, 4)
        within = (st[..., 0] / st[..., 1]) / (st[..., 2] / st[..., 3])
        w = np.where(np.isfinite(within) & usable, st[..., 1], 0.0)
        adjusted = (np.where(w > 0, within, 0.0) * w).sum(-1) / w.sum(-1)
    return ratio, adjusted


def compare(
    moves: pl.DataFrame,
    groups: pl.Series,
    covariates: pl.DataFrame,
    horizons: Sequence[Horizon],
    seed: int = 0,
    reps: int = BOOTSTRAP_REPS,
    metrics: Sequence[str] = METRICS,
) -> list[dict]:
    """The comparison table (one dict per horizon, metric and group; see the module's
    docstring for the columns). Rows of ``moves``, ``groups`` and ``covariates``
    (``adjustment_covariates``) are windows in time order."""
    from scipy.stats import false_discovery_control, mannwhitneyu

    rng = np.random.default_rng(seed)
    scored = groups.is_not_null().to_numpy()
    code_all = (
        groups.replace_strict(
            {name: i for i, name in enumerate(GROUPS)}, default=-1, return_dtype=pl.Int8
        )
        .fill_null(-1)
        .to_numpy()
        .astype(np.int64)
    )
    stratum_all, odds_all = propensity_strata(covariates, code_all)
    rows: list[dict] = []
    for h in horizons:
        for metric in metrics:
            col = moves[f"{metric}@{h.label}"].to_numpy().astype(float)
            keep = scored & ~np.isnan(col)
            y, code = col[keep], code_all[keep]
            values = _table_columns(y, code, stratum_all[keep], odds_all[keep])
            point = values.sum(axis=0)
            # Overlap: strata whose normal windows weigh as much as MIN_NORMAL equal ones
            # (Kish's effective sample size of the odds weights).
            w = values[:, 2 * len(GROUPS) + 3 :: 4]
            with np.errstate(invalid="ignore", divide="ignore"):
                ess = w.sum(axis=0) ** 2 / (w**2).sum(axis=0)
            usable = ess >= MIN_NORMAL
            ratio, adjusted = _ratios(point, usable)
            in_strata = point[2 * len(GROUPS) + 1 :: 4]
            overlap = float(in_strata[usable].sum() / in_strata.sum()) if in_strata.sum() else None
            has_adjusted = overlap is not None and overlap >= MIN_OVERLAP
            block = None
            if len(y):
                indicators = np.stack([code == g for g in range(1, len(GROUPS))], axis=1)
                block = block_length(np.column_stack([y, indicators]), h.k)
                b_ratio, b_adjusted = _ratios(block_sums(values, block, reps, rng), usable)
            normal = y[code == 0]
            for gi, name in enumerate(GROUPS):
                v = y[code == gi]
                adjust = gi == _IF_ONLY and has_adjusted
                row = {
                    "horizon": h.label,
                    "metric": metric,
                    "group": name,
                    "n": len(v),
                    "mean": float(v.mean()) if len(v) else None,
                    "median": float(np.median(v)) if len(v) else None,
                    "ratio_mean": _f(ratio[gi]),
                    "ratio_median": (
                        float(np.median(v) / np.median(normal))
                        if len(v) and len(normal) and np.median(normal)
                        else None
                    ),
                    "p_naive": (
                        float(mannwhitneyu(v, normal, alternative="greater").pvalue)
                        if name != "normal" and len(v) and len(normal)
                        else None
                    ),
                    "ci_low": None,
                    "ci_high": None,
                    "ratio_adjusted": _f(float(adjusted)) if adjust else None,
                    "adj_ci_low": None,
                    "adj_ci_high": None,
                    "overlap": overlap if gi == _IF_ONLY else None,
                    "block": block,
                }
                if len(y) and len(v) and len(normal):
                    row["ci_low"], row["ci_high"] = _ci(b_ratio[:, gi])
                    if adjust:
                        row["adj_ci_low"], row["adj_ci_high"] = _ci(b_adjusted)
                rows.append(row)
    ps = [r["p_naive"] for r in rows if r["p_naive"] is not None]
    adj_p = iter(false_discovery_control(ps, method="bh").tolist() if ps else [])
    for r in rows:
        r["p_naive_bh"] = next(adj_p) if r["p_naive"] is not None else None
    return rows


def _f(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _ci(samples: np.ndarray) -> tuple[float | None, float | None]:
    s = samples[np.isfinite(samples)]
    if len(s) < 10:
        return None, None
    lo, hi = np.percentile(s, [2.5, 97.5])
    return float(lo), float(hi)
