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
    block            its block length in windows: Politis-White (as ``arch``) on the resampled
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

import operator
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import polars as pl

from engine import config
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
    "politis_white",
    "propensity_strata",
]

GROUPS = ("normal", "vol_only", "if_only", "both")
METRICS = ("abs_return_sum", "abs_return")
BOOTSTRAP_REPS = config.REPS
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

    x = np.asarray(covariates.to_numpy(), dtype=float)
    stratum = np.full(len(code), strata, dtype=np.int64)
    odds = np.zeros(len(code))
    ok = ((code == 0) | (code == _IF_ONLY)) & np.isfinite(x).all(axis=1)
    target = code[ok] == _IF_ONLY
    if target.sum() < strata or (~target).sum() < strata:
        return stratum, odds
    xs = x[ok]
    del x
    mu, sd = xs.mean(axis=0), xs.std(axis=0)
    xs -= mu  # standardized in place: a year's copies would be 180 MB each
    xs /= np.where(sd > 0, sd, 1.0)
    z = LogisticRegression(max_iter=2000).fit(xs, target).decision_function(xs)
    bounds = np.quantile(z[target], np.arange(1, strata) / strata)
    stratum[ok] = np.searchsorted(bounds, z, side="right")
    odds[ok] = np.exp(z - z.max())  # log odds z; the common factor cancels within a stratum
    return stratum, odds


def politis_white(x: np.ndarray) -> np.ndarray:
    """The Politis-White (2004, corrected 2009) circular block length of each column of ``x``
    (one row per window): arch's ``optimal_block_length(x)["circular"]``, step for step, but
    with the autocovariances for every lag up to ``sqrt(n) + 5`` from one FFT instead of
    three dot products per lag (arch takes about 0.3 s a column at a year of 20 s windows;
    the lengths agree to ~1e-12). Each column on its own, so a column's length does not
    depend on the others. At least 10 rows."""
    from scipy import fft

    x = np.asarray(x, dtype=float).reshape(len(x), -1)
    n = len(x)
    b_max = np.ceil(min(3 * np.sqrt(n), n / 3))
    kn = max(5, int(np.log10(n)))
    m_max = int(np.ceil(np.sqrt(n))) + kn
    cv = 2 * np.sqrt(np.log10(n) / n)
    size = fft.next_fast_len(n + m_max + 1, real=True)
    lags = np.arange(m_max + 1)
    out = np.empty(x.shape[1])
    for c in range(x.shape[1]):
        eps = np.ascontiguousarray(x[:, c])
        eps = eps - eps.mean()
        spec = fft.rfft(eps, size)
        # cross[i] = eps[i:] . eps[:n - i], as arch's loop has it
        cross = fft.irfft(spec.real**2 + spec.imag**2, size)[: m_max + 1]
        # Sums of squares without the first (v1) and without the last (v2) i + 1 windows.
        total = float(eps @ eps)
        head = np.cumsum(eps[: m_max + 1] ** 2)
        tail = np.cumsum(eps[::-1][: m_max + 1] ** 2)
        inside = lags + 1 < n
        v1 = np.where(inside, total - head, 0.0)
        v2 = np.where(inside, total - tail, 0.0)
        acv = cross / n
        with np.errstate(invalid="ignore", divide="ignore"):
            abs_acorr = np.abs(cross) / np.sqrt(v1 * v2)
        # m: twice the first lag that starts kn autocorrelations in a row inside the band.
        run = np.concatenate([[0], np.cumsum(abs_acorr[:m_max] < cv)])
        first = np.flatnonzero(run[kn:] - run[:-kn] == kn)
        m = min(2 * max(int(first[0]), 1) if len(first) else m_max, m_max)
        g = 0.0
        lr_acv = acv[0]
        for k in range(1, m + 1):  # arch's sums, in its order
            lam = 1 if k / m <= 1 / 2 else 2 * (1 - k / m)
            g += 2 * lam * k * acv[k]
            lr_acv += 2 * lam * acv[k]
        d_cb = 4 / 3 * lr_acv**2
        with np.errstate(invalid="ignore", divide="ignore"):
            out[c] = min(((2 * g**2) / d_cb) ** (1 / 3) * n ** (1 / 3), b_max)
    return out


def block_length(series: np.ndarray, k: int) -> int:
    """Circular block length in windows: the Politis-White estimate (``politis_white``, as
    ``arch``) of each column of ``series`` (one row per window; constant columns skipped),
    the longest, rounded up, and at least ``2k`` (a horizon's overlap) and at most the
    number of rows."""
    return _block_from(_block_estimates(series), len(series), k)


def _block_estimates(series: np.ndarray) -> np.ndarray:
    """``politis_white`` of the columns of ``series`` that are not constant (none below 10
    rows)."""
    x = np.asarray(series, dtype=float).reshape(len(series), -1)
    x = x[:, np.ptp(x, axis=0) > 0] if len(x) else x
    return politis_white(x) if len(x) >= 10 and x.shape[1] else np.zeros(0)


def _block_from(estimates: np.ndarray, n: int, k: int) -> int:
    b = estimates[np.isfinite(estimates)]
    best = int(np.ceil(b.max())) if len(b) else 0
    return max(1, min(max(max(2 * k, 1), best), n))


def block_sums(
    values: np.ndarray,
    block: int,
    reps: int,
    rng: np.random.Generator,
    chunk_entries: int = 4_000_000,
) -> np.ndarray:
    """Circular block bootstrap replicates of the column sums of ``values`` (one row per
    window, in time order), shape ``(reps, columns)``: ``ceil(n / block)`` blocks with uniform
    random starts, wrapping at the end, the last one cut so a replicate has ``n`` windows.

    The sum of a block from every possible start is one table (differences of cumulative
    sums), and a replicate is a sparse row that picks its blocks' starts from it, so a
    replicate costs O(blocks x columns), not O(windows), and the blocks are added in the
    order drawn. Starts are drawn ``chunk_entries`` at a time (the same stream as one draw),
    columns are done a few at a time, to bound memory; chunks of replicates are picked on
    ``_THREADS`` threads."""
    return _block_sums(values, block, reps, rng, chunk_entries)[0]


_CHUNK = 8  # columns of ``values`` per pass of the bootstrap
_THREADS = 2  # replicates are picked from a table by this many threads at once


def _work_size(n: int, reps: int) -> int:
    """Floats of scratch ``_block_sums`` needs for ``n`` windows and ``reps`` replicates."""
    return (2 * n + reps + 1) * _CHUNK


def _block_sums(
    values: np.ndarray,
    block: int,
    reps: int,
    rng: np.random.Generator,
    chunk_entries: int = 4_000_000,
    work: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(``block_sums``, the column totals added in time order), with ``work`` (at least
    ``_work_size`` floats) as scratch: fresh pages cost more than the arithmetic here, so a
    caller that bootstraps again and again passes the same buffer."""
    from scipy.sparse import csr_array

    n, cols = values.shape
    nb = -(-n // block)
    last = n - block * (nb - 1)  # the last block's length
    threads = min(_THREADS, os.cpu_count() or 1)
    step = max(1, min(chunk_entries // nb, -(-reps // threads)))
    out = np.empty((reps, cols))
    totals = np.empty(cols)
    ones = np.ones(min(step, reps) * nb)  # the sparse rows' entries, shared
    pick = []  # per chunk of replicates: (a sparse row per replicate, the last blocks' starts)
    for r0 in range(0, reps, step):
        s = rng.integers(0, n, size=(min(step, reps - r0), nb))
        rr = len(s)
        idx = s.astype(np.int32 if n + reps < 2**31 else np.int64)
        idx[:, -1] = n + r0 + np.arange(rr)  # the last (cut) block: a row of its own below
        m = csr_array(
            (ones[: rr * nb], idx.ravel(), np.arange(0, rr * nb + 1, nb)), shape=(rr, n + reps)
        )
        pick.append((r0, m, s[:, -1].copy()))
        del s, idx
    if work is None or len(work) < _work_size(n, reps):
        work = np.empty(_work_size(n, reps))
    cut = n - block + 1  # blocks from here on wrap
    with ThreadPoolExecutor(threads) as pool:
        for c0 in range(0, cols, _CHUNK):
            c1 = min(cols, c0 + _CHUNK)
            width = c1 - c0
            cum = work[: (n + 1) * width].reshape(n + 1, width)
            table = work[(n + 1) * width : (2 * n + reps + 1) * width].reshape(n + reps, width)
            cum[0] = 0.0
            np.cumsum(values[:, c0:c1], axis=0, out=cum[1:])
            totals[c0:c1] = cum[n]
            # The sum of the `block` windows from start s: cum[min(e, n)] - cum[s] +
            # cum[max(e - n, 0)] with e = s + block, as slices.
            np.add(np.subtract(cum[block:], cum[:cut], out=table[:cut]), cum[0], out=table[:cut])
            np.add(
                np.subtract(cum[n], cum[cut:n], out=table[cut:n]), cum[1:block], out=table[cut:n]
            )
            for r0, _, s in pick:
                e = s + last
                table[n + r0 : n + r0 + len(s)] = (
                    cum[np.minimum(e, n)] - cum[s] + cum[np.maximum(e - n, 0)]
                )
            # The sparse products release the GIL: a few chunks of replicates at once.
            got = pool.map(operator.matmul, [m for _, m, _ in pick], [table] * len(pick))
            for (r0, m, _), part in zip(pick, got, strict=True):
                out[r0 : r0 + m.shape[0], c0:c1] = part
    return out, totals


_COLUMNS = 2 * len(GROUPS) + 4 * STRATA


def _table_columns(
    y: np.ndarray,
    code: np.ndarray,
    stratum: np.ndarray,
    odds: np.ndarray,
    buffer: np.ndarray | None = None,
) -> np.ndarray:
    """What the statistics are made of, one row per window, as columns to be summed:
    per group the moves and the count, then per stratum the ``if_only`` moves and count and
    the normal windows' odds-weighted moves and odds. Column-major (a column at a time is
    summed), in ``buffer`` (at least ``len(y) * _COLUMNS`` floats) if given."""
    g = len(GROUPS)
    if buffer is None:
        out = np.zeros((len(y), _COLUMNS), order="F")
    else:
        out = buffer[: len(y) * _COLUMNS].reshape((len(y), _COLUMNS), order="F")
        out.fill(0.0)
    rows = np.arange(len(y))
    out[rows, code] = y
    out[rows, g + code] = 1.0
    # The strata columns: each if_only or normal window in a stratum sets two of them.
    grp = code == _IF_ONLY
    at = np.flatnonzero((stratum >= 0) & (stratum < STRATA) & (grp | (code == 0)))
    grp = grp[at]
    base = 2 * g + 4 * stratum[at] + np.where(grp, 0, 2)
    out[at, base] = np.where(grp, y[at], odds[at] * y[at])
    out[at, base + 1] = np.where(grp, 1.0, odds[at])
    return out


def _squares(values: np.ndarray, columns: slice) -> np.ndarray:
    """Sums of squares of some columns, added in time order (as a row-major
    ``sum(axis=0)`` adds them), not pairwise."""
    picked = range(values.shape[1])[columns]
    if not len(values):
        return np.zeros(len(picked))
    return np.array([np.cumsum(values[:, j] ** 2)[-1] for j in picked])


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
    from scipy.stats import false_discovery_control

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
    seen: tuple[np.ndarray, np.ndarray] | None = None  # kept windows, their indicators' estimates
    # Scratch for every horizon and metric: a year's table is 350 MB, and fresh pages for it
    # on every pass cost more than filling it.
    buffer = np.empty(len(code_all) * _COLUMNS)
    work = np.empty(_work_size(len(code_all), reps))
    for h in horizons:
        for metric in metrics:
            col = moves[f"{metric}@{h.label}"].to_numpy().astype(float)
            keep = scored & ~np.isnan(col)
            y, code = col[keep], code_all[keep]
            values = _table_columns(y, code, stratum_all[keep], odds_all[keep], buffer)
            point = np.zeros(_COLUMNS)
            block = None
            if len(y):
                # block_length of [y, group indicators]; the indicators' estimates are the
                # same for both metrics when the same windows are kept.
                if seen is None or not np.array_equal(seen[0], keep):
                    indicators = np.stack([code == g for g in range(1, len(GROUPS))], axis=1)
                    seen = (keep, _block_estimates(indicators))
                estimates = np.concatenate([_block_estimates(y), seen[1]])
                block = _block_from(estimates, len(y), h.k)
                boot, point = _block_sums(values, block, reps, rng, work=work)
            # Overlap: strata whose normal windows weigh as much as MIN_NORMAL equal ones
            # (Kish's effective sample size of the odds weights).
            w = slice(2 * len(GROUPS) + 3, None, 4)
            with np.errstate(invalid="ignore", divide="ignore"):
                ess = point[w] ** 2 / _squares(values, w)
            usable = ess >= MIN_NORMAL
            ratio, adjusted = _ratios(point, usable)
            if len(y):
                b_ratio, b_adjusted = _ratios(boot, usable)
            in_strata = point[2 * len(GROUPS) + 1 :: 4]
            overlap = float(in_strata[usable].sum() / in_strata.sum()) if in_strata.sum() else None
            has_adjusted = overlap is not None and overlap >= MIN_OVERLAP
            ref = _Reference(y[code == 0])
            normal_median = ref.median() if len(ref.sorted) else None
            for gi, name in enumerate(GROUPS):
                v = y[code == gi]
                median = float(np.median(v)) if len(v) else None
                adjust = gi == _IF_ONLY and has_adjusted
                row = {
                    "horizon": h.label,
                    "metric": metric,
                    "group": name,
                    "n": len(v),
                    "mean": float(v.mean()) if len(v) else None,
                    "median": median,
                    "ratio_mean": _f(ratio[gi]),
                    "ratio_median": (
                        float(np.float64(median) / np.float64(normal_median))
                        if median is not None and normal_median
                        else None
                    ),
                    "p_naive": (
                        _mann_whitney_greater(v, ref)
                        if name != "normal" and len(v) and len(ref.sorted)
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
                if len(y) and len(v) and len(ref.sorted):
                    row["ci_low"], row["ci_high"] = _ci(b_ratio[:, gi])
                    if adjust:
                        row["adj_ci_low"], row["adj_ci_high"] = _ci(b_adjusted)
                rows.append(row)
    ps = [r["p_naive"] for r in rows if r["p_naive"] is not None]
    adj_p = iter(false_discovery_control(ps, method="bh").tolist() if ps else [])
    for r in rows:
        r["p_naive_bh"] = next(adj_p) if r["p_naive"] is not None else None
    return rows


class _Reference:
    """The normal windows' moves sorted once, for Mann-Whitney against every group."""

    def __init__(self, values: np.ndarray) -> None:
        self.sorted = np.sort(values)
        _, counts = _runs(self.sorted)
        self.ties = int(np.sum(counts**3 - counts))  # scipy's tie term over this sample

    def median(self) -> float:
        return float(np.median(self.sorted))


def _runs(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first index, length) of each run of equal values in sorted ``x``."""
    first = np.flatnonzero(np.concatenate([[True], x[1:] != x[:-1]]) if len(x) else x[:0])
    return first, np.diff(np.append(first, len(x)))


def _mann_whitney_greater(v: np.ndarray, ref: _Reference) -> float:
    """One-sided Mann-Whitney p-value, ``v`` larger than the reference: the number scipy's
    ``mannwhitneyu(v, normal, alternative="greater").pvalue`` gives (asymptotic, with the tie
    and continuity corrections, the same arithmetic), without ranking the 1.5 M pooled
    windows again for every group: U counts, for each of ``v``, the reference values below
    it (ties half), by binary search in the sorted reference. Small samples (scipy's exact
    method) and tie terms too large for exact float arithmetic go to scipy itself."""
    from scipy import special
    from scipy.stats import mannwhitneyu

    n1, n2 = len(v), len(ref.sorted)
    if n1 <= 8 or n2 <= 8 or n1 + n2 > 2_000_000:  # beyond: t**3 may overflow int64
        return float(mannwhitneyu(v, ref.sorted, alternative="greater").pvalue)
    below = np.searchsorted(ref.sorted, v, "left") + np.searchsorted(ref.sorted, v, "right")
    u1 = np.float64(int(below.sum()) / 2)  # exact: a sum of halves well below 2**53
    vs = np.sort(v)
    first, cv = _runs(vs)
    value = vs[first]
    cn = np.searchsorted(ref.sorted, value, "right") - np.searchsorted(ref.sorted, value, "left")
    both = cn + cv
    tie = ref.ties - int(np.sum(cn**3 - cn)) + int(np.sum(both**3 - both))
    if max(tie, ref.ties) >= 2**53:  # scipy's float sum is not exact there: let it decide
        return float(mannwhitneyu(v, ref.sorted, alternative="greater").pvalue)
    # As scipy.stats._mannwhitneyu._get_mwu_z, term for term.
    n = n1 + n2
    tie_term = np.float64(tie)
    s = np.sqrt(n1 * n2 / 12 * ((n + 1) - tie_term / (n * (n - 1))))
    numerator = u1 - n1 * n2 / 2
    numerator -= 0.5
    with np.errstate(divide="ignore", invalid="ignore"):
        z = numerator / s
    return float(np.clip(special.ndtr(-z), 0.0, 1.0))


def _f(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _ci(samples: np.ndarray) -> tuple[float | None, float | None]:
    s = samples[np.isfinite(samples)]
    if len(s) < 10:
        return None, None
    lo, hi = np.percentile(s, [2.5, 97.5])
    return float(lo), float(hi)
