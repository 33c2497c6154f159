"""Forward moves, groups and statistics, against direct computations and scipy."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from scipy.stats import false_discovery_control, mannwhitneyu

from engine.errors import DataError, InputError
from engine.horizons import (
    GROUPS,
    Horizon,
    block_length,
    compare,
    forward_moves,
    group_windows,
    horizons_for,
    propensity_strata,
)
from engine.pipeline import prototype_report


def grid(returns, closes, gaps=None) -> pl.DataFrame:
    n = len(returns)
    return pl.DataFrame(
        {
            "window_start": [
                datetime(2024, 1, 1, tzinfo=UTC) + timedelta(seconds=20 * i) for i in range(n)
            ],
            "return": returns,
            "close": closes,
            "gap": gaps or [False] * n,
        },
        schema_overrides={"return": pl.Float64, "close": pl.Float64},
    )


def test_forward_moves_by_hand():
    w = grid(
        [0.01, -0.02, None, 0.03, 0.0, -0.01],
        [100, 98, None, 101, 101, 100],
        [False, False, False, False, True, False],
    )
    m = forward_moves(w, [Horizon("40s", 40_000, 2), Horizon("20s", 20_000, 1)])
    assert m["abs_return_sum@40s"][0] == pytest.approx(0.02)
    assert m["abs_return_sum@40s"][1] == pytest.approx(0.03)  # empty window counts 0
    assert m["abs_return_sum@40s"][2] is None  # window 4 is a gap
    assert m["abs_return_sum@40s"][5] is None and m["abs_return_sum@40s"][4] is None  # past the end
    # Close to close, carrying the price through the empty window: |98/100 - 1|, |98/98 - 1|
    assert m["abs_return@40s"][0] == pytest.approx(0.02)
    assert m["abs_return@20s"][1] == pytest.approx(0.0)
    assert m["abs_return@20s"][3] is None  # next window is a gap


def test_horizon_must_be_a_multiple_of_the_window():
    with pytest.raises(InputError, match=r"horizon 50s is not a multiple of the window \(20s\)"):
        horizons_for([("50s", 50_000)], 20_000)


def _random_case(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    vol = rng.gamma(2.0, 1.0, n)
    y = np.abs(rng.normal(0, 1, n)) * vol  # moves scale with volatility: clustering
    flag = rng.random(n) < 0.06
    high = vol > np.quantile(vol, 0.9)
    g = np.where(
        flag & high, "both", np.where(flag, "if_only", np.where(high, "vol_only", "normal"))
    )
    return y, g, vol


def test_statistics_equal_direct_computation():
    y, g, vol = _random_case()
    h = [Horizon("1m", 60_000, 3)]
    rng = np.random.default_rng(5)
    cov = pl.DataFrame({"vol": np.log(vol), "other": rng.normal(size=len(vol))})
    rows = compare(
        pl.DataFrame({"abs_return_sum@1m": y, "abs_return@1m": y * 2}),
        pl.Series(g),
        cov,
        h,
        reps=200,
    )
    assert len(rows) == 8
    normal = y[g == "normal"]
    code = np.array([GROUPS.index(x) for x in g])
    stratum, odds = propensity_strata(cov, code)
    for r in rows[:4]:
        v = y[g == r["group"]]
        assert r["n"] == len(v)
        assert r["mean"] == v.mean() and r["median"] == np.median(v)
        assert r["ratio_mean"] == pytest.approx(v.mean() / normal.mean(), rel=1e-12)
        assert r["ratio_median"] == np.median(v) / np.median(normal)
        assert r["block"] == block_length(
            np.column_stack([y, *(g == name for name in GROUPS[1:])]), 3
        )
        if r["group"] == "normal":
            assert r["p_naive"] is None
        else:
            assert r["p_naive"] == mannwhitneyu(v, normal, alternative="greater").pvalue
            assert r["ci_low"] < r["ratio_mean"] < r["ci_high"]
        if r["group"] != "if_only":  # no adjusted figure for groups defined by volatility
            assert (r["ratio_adjusted"], r["adj_ci_low"], r["adj_ci_high"]) == (None,) * 3
            assert r["overlap"] is None
            continue
        # Adjusted: within propensity quintiles of the group, normal windows weighted by their
        # odds, over strata whose normal weights are worth at least 20 windows.
        num = den = 0.0
        group_total = usable_total = 0
        for s in range(5):
            a = (g == "if_only") & (stratum == s)
            b = (g == "normal") & (stratum == s)
            w = odds[b]
            group_total += a.sum()
            if w.sum() ** 2 / (w**2).sum() >= 20:
                usable_total += a.sum()
                num += a.sum() * y[a].mean() / (np.sum(w * y[b]) / w.sum())
                den += a.sum()
        assert r["overlap"] == pytest.approx(usable_total / group_total, rel=1e-12)
        assert r["ratio_adjusted"] == pytest.approx(num / den, rel=1e-9)
        assert r["adj_ci_low"] < r["ratio_adjusted"] < r["adj_ci_high"]
    ps = [r["p_naive"] for r in rows if r["p_naive"] is not None]
    assert [r["p_naive_bh"] for r in rows if r["p_naive_bh"] is not None] == list(
        false_discovery_control(ps, method="bh")
    )


def test_naive_p_and_medians_equal_scipy_and_numpy_with_ties():
    """Moves on a coarse grid (many ties, many exact zeros, a -0.0): the naive p-values are
    scipy's to the last bit, though the normal windows are ranked once for all groups."""
    y, g, vol = _random_case(n=5000, seed=3)
    y = np.round(y * 4) / 4
    y[::7] = 0.0
    y[3] = -0.0
    g[g == "both"] = "if_only"
    g[:3] = "both"  # a group of 3 goes to scipy's exact method
    rows = compare(
        pl.DataFrame({"m@1m": y}),
        pl.Series(g),
        pl.DataFrame({"vol": np.log(vol)}),
        [Horizon("1m", 60_000, 3)],
        reps=20,
        metrics=("m",),
    )
    normal = y[g == "normal"]
    for r in rows[1:]:
        v = y[g == r["group"]]
        assert r["p_naive"] == mannwhitneyu(v, normal, alternative="greater").pvalue
        assert r["median"] == np.median(v)
        assert r["ratio_median"] == np.median(v) / np.median(normal)
    assert (g == "both").sum() == 3


def test_adjusted_ratio_removes_pure_volatility_clustering():
    """A detector that merely fires more in volatile regimes (and, within a regime, at
    random): a big raw ratio and a tiny naive p-value, but an adjusted ratio near 1."""
    rng = np.random.default_rng(1)
    n = 40000
    vol = rng.gamma(2.0, 1.0, n)
    y = np.abs(rng.normal(0, 1, n)) * vol
    decile = (np.argsort(np.argsort(vol)) * 10) // n
    flag = rng.random(n) < np.where(decile >= 8, 0.3, 0.01)
    g = np.where(flag, "if_only", "normal")
    rows = compare(
        pl.DataFrame({"m@1m": y}),
        pl.Series(g),
        pl.DataFrame({"volatility": np.log(vol)}),
        [Horizon("1m", 60_000, 3)],
        reps=200,
        metrics=("m",),
    )
    r = rows[GROUPS.index("if_only")]
    assert r["group"] == "if_only"
    assert r["ratio_mean"] > 2.0
    assert r["p_naive"] < 1e-50
    assert r["overlap"] == 1.0
    assert 0.95 < r["ratio_adjusted"] < 1.05
    assert r["adj_ci_low"] < 1.0 < r["adj_ci_high"]


def test_trailing_baseline_uses_only_the_past():
    rng = np.random.default_rng(2)
    n = 400
    w = pl.DataFrame(
        {
            "window_start": range(n),
            "trade_count": [5] * n,
            "gap": [False] * n,
            "volatility": rng.gamma(2.0, 1.0, n),
            "prediction": [None] * 50 + [1] * (n - 50),
        },
        schema_overrides={"prediction": pl.Int8},
    )
    g1 = group_windows(w, "trailing", 50)
    w2 = w.with_columns(
        pl.when(pl.col("window_start") >= 300)
        .then(100.0)
        .otherwise(pl.col("volatility"))
        .alias("volatility")
    )
    g2 = group_windows(w2, "trailing", 50)
    assert g1[:300].to_list() == g2[:300].to_list()
    assert g1[:50].null_count() == 50
    vol = w["volatility"].to_numpy()
    i = 200
    line = vol[i - 50 : i].mean() + 2 * vol[i - 50 : i].std(ddof=1)
    assert g1[i] == ("vol_only" if vol[i] > line else "normal")
    assert g2[300] == "vol_only"


def prototype_reference(csv: Path, k: int) -> dict:
    """The prototype's method, written out plainly: next k rows, full-sample baseline."""
    df = pl.read_csv(csv, infer_schema_length=0)
    ret = [float(x) for x in df["return"]]
    vol = [float(x) for x in df["volatility"]]
    pred = [int(float(x)) if x not in (None, "") else None for x in df["prediction"]]
    scored = [i for i, p in enumerate(pred) if p is not None]
    sv = np.array([vol[i] for i in scored])
    line = sv.mean() + 2 * sv.std(ddof=1)
    groups: dict[str, list[float]] = {g: [] for g in GROUPS}
    for i in scored:
        if i + k >= len(ret):
            continue
        fwd = sum(abs(r) for r in ret[i + 1 : i + k + 1])
        flag, high = pred[i] == -1, vol[i] > line
        groups[
            "both" if flag and high else "if_only" if flag else "vol_only" if high else "normal"
        ].append(fwd)
    out = {}
    normal = np.array(groups["normal"])
    for g, v in groups.items():
        a = np.array(v)
        out[g] = {
            "n": len(a),
            "mean": a.mean(),
            "median": np.median(a),
            "ratio_mean": a.mean() / normal.mean(),
            "ratio_median": np.median(a) / np.median(normal),
            "p": None if g == "normal" else mannwhitneyu(a, normal, alternative="greater").pvalue,
        }
    return out


def write_prototype_csv(path: Path, n=1500, seed=4) -> None:
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.choice([20, 20, 20, 40, 60], n))  # skipped empty windows: irregular
    vol = rng.gamma(2.0, 1.0, n)
    ret = rng.normal(0, 1e-4, n) * vol
    pred = np.where(rng.random(n) < 0.07, -1, 1).astype(object)
    pred[:300] = ""
    score = np.where(pred == "", "", rng.normal(0.1, 0.05, n).round(6).astype(str))
    rows = ["timestamp,trade_count,volume,avg_trade_size,return,volatility,score,prediction"]
    for i in range(n):
        ts = (datetime(2024, 8, 8, tzinfo=UTC) + timedelta(seconds=int(t[i]))).strftime(
            "%Y-%m-%d %H:%M:%S"
        )
        rows.append(
            f"{ts},{rng.integers(1, 900)},{rng.random():.6f},{rng.random() / 100:.8f},{float(ret[i])!r},{float(vol[i])!r},{score[i]},{pred[i]}"
        )
    path.write_text("\n".join(rows) + "\n")


def test_prototype_numbers_are_reproduced_exactly(tmp_path):
    csv = tmp_path / "proto.csv"
    write_prototype_csv(csv)
    report = prototype_report(csv, 20_000, [("5m", 300_000), ("1m", 60_000)], "full", reps=50)
    for label, k in (("5m", 15), ("1m", 3)):
        ref = prototype_reference(csv, k)
        for r in (r for r in report.rows if r["horizon"] == label):
            want = ref[r["group"]]
            assert r["metric"] == "abs_return_sum"
            assert (r["n"], r["mean"], r["median"]) == (want["n"], want["mean"], want["median"])
            assert (r["ratio_median"], r["p_naive"]) == (want["ratio_median"], want["p"])
            assert r["ratio_mean"] == pytest.approx(want["ratio_mean"], rel=1e-14)
    assert report.parameters["baseline_lookahead"] is True


def test_prototype_csv_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,trade_count,volume\n2024-01-01,1,2\n")
    with pytest.raises(
        DataError,
        match=r"bad\.csv lacks the prototype's columns avg_trade_size, return, volatility, score, prediction",
    ):
        prototype_report(bad, 20_000, [("1m", 60_000)], "full", 10)
    with pytest.raises(DataError, match=r"missing\.csv does not exist"):
        prototype_report(tmp_path / "missing.csv", 20_000, [("1m", 60_000)], "full", 10)
