"""Do flagged windows precede larger moves? Forward moves per horizon, groups, statistics.

For a scored window ``i`` and horizon ``H = k * every``, the future is windows ``i+1 .. i+k``
of the complete grid, i.e. ``[end, end + H)``:

    abs_return_sum   sum of |return| over those windows (the prototype's metric; empty = 0)
    abs_return       |close at end+H / close of i - 1| (close to close; empty windows carry
                     the last price forward)

A future that touches a gap window or runs past the data is excluded. Windows are grouped by
the model flag and a volatility baseline (``volatility > mean + 2 sd``): ``normal``,
``vol_only``, ``if_only``, ``both``. The ``trailing`` baseline uses the ``buffer`` scoreable
windows before each window (no look-ahead); ``full`` uses all scored windows, as the
prototype did, and is look-ahead.

Statistics per horizon, metric and group: n, mean, median, both ratios to normal, the
one-sided Mann-Whitney p-value (group larger than normal), a 95 % circular block bootstrap
interval for ``ratio_mean`` (blocks of ``max(2k, N^(1/3))`` windows keep overlapping horizons
and volatility clusters together), and ``ratio_vol_matched``: the ratio within deciles of the
window's own volatility, averaged with the group's counts as weights, with its interval.
Benjamini-Hochberg adjusted p-values cover the whole table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from engine.errors import InputError

__all__ = [
    "GROUPS",
    "METRICS",
    "Horizon",
    "compare",
    "forward_moves",
    "group_windows",
    "horizons_for",
]

GROUPS = ("normal", "vol_only", "if_only", "both")
METRICS = ("abs_return_sum", "abs_return")
BOOTSTRAP_REPS = 1000
DECILES = 10


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
    """Columns ``<metric>@<label>`` for every window of a complete grid (null if excluded)."""
    n = windows.height
    r = windows["return"].abs().fill_null(0.0).to_numpy()
    gap = windows["gap"].to_numpy().astype(np.int64)
    gsum = np.concatenate([[0], np.cumsum(gap)])
    close = windows["close"].to_numpy()
    close_ff = windows["close"].forward_fill().to_numpy()
    i = np.arange(n)
    cols = {}
    for h in horizons:
        j = i + h.k
        ok = j < n
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


def _block_ratios(y, code, dec, block, reps, rng):
    """Bootstrap replicates of per-(group, decile) sums and counts (circular blocks)."""
    n = len(y)
    nb = -(-n // block)
    key = code * DECILES + dec
    size = len(GROUPS) * DECILES
    sums = np.empty((reps, size))
    cnts = np.empty((reps, size))
    step = max(1, 20_000_000 // max(n, 1))
    offs = np.arange(block)
    for r0 in range(0, reps, step):
        m = min(step, reps - r0)
        starts = rng.integers(0, n, size=(m, nb))
        idx = ((starts[:, :, None] + offs) % n).reshape(m, -1)[:, :n]
        k = key[idx] + (np.arange(m)[:, None] * size)
        sums[r0 : r0 + m] = np.bincount(
            k.ravel(), weights=y[idx].ravel(), minlength=m * size
        ).reshape(m, size)
        cnts[r0 : r0 + m] = np.bincount(k.ravel(), minlength=m * size).reshape(m, size)
    return sums.reshape(reps, len(GROUPS), DECILES), cnts.reshape(reps, len(GROUPS), DECILES)


def _ratios(sums, cnts):
    """(ratio_mean, ratio_vol_matched) per group from per-(group, decile) sums and counts."""
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums.sum(-1) / cnts.sum(-1)
        ratio = mean / mean[..., :1]
        dmean = sums / cnts
        dratio = dmean / dmean[..., :1, :]
        w = np.where(np.isfinite(dratio), cnts, 0)
        matched = np.nansum(np.where(w > 0, dratio, 0) * w, -1) / w.sum(-1)
    return ratio, matched


def compare(
    moves: pl.DataFrame,
    groups: pl.Series,
    volatility: pl.Series,
    horizons: Sequence[Horizon],
    seed: int = 0,
    reps: int = BOOTSTRAP_REPS,
    metrics: Sequence[str] = METRICS,
) -> list[dict]:
    """The comparison table (one dict per horizon, metric and group), in time order input."""
    from scipy.stats import false_discovery_control, mannwhitneyu

    rng = np.random.default_rng(seed)
    scored = groups.is_not_null().to_numpy()
    code_all = (
        groups.replace_strict(
            {name: i for i, name in enumerate(GROUPS)}, default=-1, return_dtype=pl.Int8
        )
        .fill_null(-1)
        .to_numpy()
    )
    vol_all = volatility.to_numpy()
    rows: list[dict] = []
    for h in horizons:
        for metric in metrics:
            col = moves[f"{metric}@{h.label}"].to_numpy()
            keep = scored & ~np.isnan(col.astype(float))
            y = col[keep].astype(float)
            code = code_all[keep]
            vol = vol_all[keep].astype(float)
            # Deciles of the window's own volatility (ties broken by time order).
            dec = (np.argsort(np.argsort(vol, kind="stable"), kind="stable") * DECILES) // max(
                len(vol), 1
            )
            normal = y[code == 0]
            point_s = np.zeros((len(GROUPS), DECILES))
            point_c = np.zeros((len(GROUPS), DECILES))
            np.add.at(point_s, (code, dec), y)
            np.add.at(point_c, (code, dec), 1)
            ratio, matched = _ratios(point_s, point_c)
            if len(y):
                block = max(2 * h.k, int(np.ceil(len(y) ** (1 / 3))))
                bs, bc = _block_ratios(y, code, dec, block, reps, rng)
                b_ratio, b_matched = _ratios(bs, bc)
            for gi, name in enumerate(GROUPS):
                v = y[code == gi]
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
                    "p_mannwhitney": (
                        float(mannwhitneyu(v, normal, alternative="greater").pvalue)
                        if name != "normal" and len(v) and len(normal)
                        else None
                    ),
                    "ci_low": None,
                    "ci_high": None,
                    "ratio_vol_matched": _f(matched[gi]),
                    "vm_ci_low": None,
                    "vm_ci_high": None,
                }
                if len(y) and len(v) and len(normal):
                    row["ci_low"], row["ci_high"] = _ci(b_ratio[:, gi])
                    row["vm_ci_low"], row["vm_ci_high"] = _ci(b_matched[:, gi])
                rows.append(row)
    ps = [r["p_mannwhitney"] for r in rows if r["p_mannwhitney"] is not None]
    adj = iter(false_discovery_control(ps, method="bh").tolist() if ps else [])
    for r in rows:
        r["p_bh"] = next(adj) if r["p_mannwhitney"] is not None else None
    return rows


def _f(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _ci(samples: np.ndarray) -> tuple[float | None, float | None]:
    s = samples[np.isfinite(samples)]
    if len(s) < 10:
        return None, None
    lo, hi = np.percentile(s, [2.5, 97.5])
    return float(lo), float(hi)
