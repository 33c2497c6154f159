"""Walk-forward model: schedule, causality, what is scored, parallel equals serial."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from synth import tape, write_store

from engine.errors import InputError
from engine.model import ModelParams, fit_score, refit_plan, walk_forward
from engine.scan import open_store
from engine.windows import build_windows

T0 = 1_723_075_200_000
P = ModelParams(buffer=60, retrain_every=20, trees=25)


@pytest.fixture(scope="module")
def windows(tmp_path_factory) -> pl.DataFrame:
    root = tmp_path_factory.mktemp("model")
    write_store(root, "SIMUSDT", tape(T0, 3600, 3, seed=5))
    w = build_windows(open_store(root, "SIMUSDT"), [10_000])[10_000]
    # Make some windows gaps and some empty, to check they are skipped.
    return w.with_columns(gap=pl.int_range(pl.len()).is_in([70, 71, 150]))


def test_schedule_and_scored_windows(windows):
    s = walk_forward(windows, P, jobs=1)
    able = (s["trade_count"] > 0) & ~s["gap"]
    n = int(able.sum())
    assert s.filter(~able)["prediction"].null_count() == s.filter(~able).height
    scored = s.filter(pl.col("prediction").is_not_null())
    assert scored.height == n - P.buffer
    # The first scored window is the buffer-th scoreable one; refits every 20 of them.
    first = s.filter(able).row(P.buffer, named=True)["window_start"]
    assert scored["window_start"][0] == first
    assert scored["refit"].to_list() == [i // P.retrain_every for i in range(scored.height)]
    assert len(refit_plan(n, P)) == -(-(n - P.buffer) // P.retrain_every)
    assert set(scored["prediction"].unique().to_list()) <= {-1, 1}
    assert ((scored["score"] < 0) == (scored["prediction"] == -1)).all()


def test_refit_equals_a_direct_scikit_learn_fit(windows):
    """Refit 3 is exactly a forest trained on its 60 windows, standardized on them."""
    from sklearn.ensemble import IsolationForest

    s = walk_forward(windows, P, jobs=1)
    x = s.filter((pl.col("trade_count") > 0) & ~pl.col("gap")).select(P.features).to_numpy()
    t0, s0, s1 = 3 * 20, 3 * 20 + 60, 3 * 20 + 80
    train = x[t0:s0]
    mu, sd = train.mean(0), train.std(0)
    f = IsolationForest(n_estimators=25, contamination=0.05, random_state=42).fit((train - mu) / sd)
    want = f.decision_function((x[s0:s1] - mu) / sd)
    got = s.filter(pl.col("refit") == 3)["score"].to_numpy()
    np.testing.assert_array_equal(got, want)


def test_future_trades_never_change_a_past_score(windows):
    base = walk_forward(windows, P, jobs=1)
    cut = windows["window_start"][250]
    future = pl.col("window_start") >= cut
    changed = windows.with_columns(
        pl.when(future).then(pl.col("volume") * 50).otherwise(pl.col("volume")).alias("volume"),
        pl.when(future)
        .then(pl.col("trade_count") * 7)
        .otherwise(pl.col("trade_count"))
        .alias("trade_count"),
    )
    again = walk_forward(changed, P, jobs=1)
    past = pl.col("window_start") < cut
    assert (
        base.filter(past)
        .select("score", "prediction", "refit")
        .equals(again.filter(past).select("score", "prediction", "refit"))
    )
    assert not base.filter(future)["score"].equals(again.filter(future)["score"])


def test_parallel_refits_equal_serial(windows):
    assert walk_forward(windows, P, jobs=2).equals(walk_forward(windows, P, jobs=1))


def test_fewer_windows_than_the_buffer(windows):
    with pytest.raises(
        InputError, match=r"fewer windows than the buffer: \d+ scoreable windows, --buffer 5000"
    ):
        walk_forward(windows, ModelParams(buffer=5000), jobs=1)


def test_bad_model_parameters():
    with pytest.raises(InputError, match="unknown feature 'nope'"):
        ModelParams(features=("nope",))
    with pytest.raises(InputError, match="contamination"):
        ModelParams(contamination=0.7)


def test_fit_score_handles_a_constant_feature():
    train = np.column_stack([np.ones(50), np.arange(50.0)])
    d, p = fit_score(train, train[:5], ModelParams(trees=10))
    assert d.shape == (5,) and set(p) <= {-1, 1}


def test_numpy_backend_agrees_with_scikit_learn(windows):
    """The faster backend is the same algorithm with other random draws: flags and score
    ranks must agree closely with the scikit-learn reference (bench/model_bench.py measures
    it at scale)."""
    from dataclasses import replace

    from scipy.stats import spearmanr

    ref = walk_forward(windows, P, jobs=1)
    fast = walk_forward(windows, replace(P, backend="numpy"), jobs=1)
    ok = ref["score"].is_not_null()
    assert (fast["score"].is_not_null() == ok).all()
    same = (fast.filter(ok)["prediction"] == ref.filter(ok)["prediction"]).mean()
    rho = spearmanr(fast.filter(ok)["score"], ref.filter(ok)["score"]).statistic
    assert same >= 0.93 and rho >= 0.9, (same, rho)
    assert walk_forward(windows, replace(P, backend="numpy"), jobs=2).equals(fast)


def test_numpy_forest_path_lengths_by_hand():
    from engine.iforest import ArrayForest, _c

    # Two distinct rows: one split, two leaves of one row at depth 1: path 1, c(2) = 1.
    f = ArrayForest(3, 0.1, 0).fit(np.array([[0.0], [1.0]]))
    assert f.score_samples(np.array([[0.0], [1.0], [0.5]])).tolist() == [-0.5, -0.5, -0.5]
    # All rows equal: no split, one leaf of n rows: path c(n), score -2^-1.
    g = ArrayForest(2, 0.1, 0).fit(np.zeros((10, 2)))
    assert g.score_samples(np.zeros((1, 2))).tolist() == [-0.5]
    assert _c(np.array([1, 2, 256])).round(6).tolist() == [
        0.0,
        1.0,
        round(2 * (np.log(255) + np.euler_gamma) - 2 * 255 / 256, 6),
    ]
    # An outlier isolates faster than the crowd.
    rng = np.random.default_rng(1)
    x = np.vstack([rng.normal(size=(300, 3)), [[8.0, 8.0, 8.0]]])
    h = ArrayForest(100, 0.05, 3).fit(x)
    assert h.decision_function(x[-1:])[0] < h.decision_function(x[:1])[0]
    assert h.decision_function(x[-1:])[0] < 0
