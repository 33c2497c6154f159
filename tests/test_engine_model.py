"""Walk-forward model: schedule, causality, what is scored, parallel equals serial; the
isotree backend against the scikit-learn reference."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import polars as pl
import pytest
from synth import tape, write_recorded_gap, write_store

from engine.errors import DataError, InputError
from engine.model import BACKENDS, ModelParams, fit, fit_score, refit_plan, walk_forward
from engine.scan import open_store
from engine.windows import build_windows

T0 = 1_723_075_200_000
P = ModelParams(buffer=60, retrain_every=20, trees=25)  # the default backend


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

    s = walk_forward(windows, replace(P, backend="sklearn"), jobs=1)
    x = s.filter((pl.col("trade_count") > 0) & ~pl.col("gap")).select(P.features).to_numpy()
    t0, s0, s1 = 3 * 20, 3 * 20 + 60, 3 * 20 + 80
    train = x[t0:s0]
    mu, sd = train.mean(0), train.std(0)
    f = IsolationForest(n_estimators=25, contamination=0.05, random_state=42).fit((train - mu) / sd)
    want = f.decision_function((x[s0:s1] - mu) / sd)
    got = s.filter(pl.col("refit") == 3)["score"].to_numpy()
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_future_trades_never_change_a_past_score(windows, backend):
    q = replace(P, backend=backend)
    base = walk_forward(windows, q, jobs=1)
    cut = windows["window_start"][250]
    future = pl.col("window_start") >= cut
    changed = windows.with_columns(
        pl.when(future).then(pl.col("volume") * 50).otherwise(pl.col("volume")).alias("volume"),
        pl.when(future)
        .then(pl.col("trade_count") * 7)
        .otherwise(pl.col("trade_count"))
        .alias("trade_count"),
    )
    again = walk_forward(changed, q, jobs=1)
    past = pl.col("window_start") < cut
    assert (
        base.filter(past)
        .select("score", "prediction", "refit")
        .equals(again.filter(past).select("score", "prediction", "refit"))
    )
    assert not base.filter(future)["score"].equals(again.filter(future)["score"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_parallel_refits_equal_serial(windows, backend):
    q = replace(P, backend=backend)
    assert walk_forward(windows, q, jobs=2).equals(walk_forward(windows, q, jobs=1))


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
    with pytest.raises(InputError, match="--buffer must be at least 3"):
        ModelParams(buffer=2)
    with pytest.raises(InputError, match="unknown backend 'numpy'; choose isotree or sklearn"):
        ModelParams(backend="numpy")


@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_score_handles_a_constant_feature(backend):
    train = np.column_stack([np.ones(50), np.arange(50.0)])
    d, p = fit_score(train, train[:5], ModelParams(trees=10, backend=backend))
    assert d.shape == (5,) and set(p) <= {-1, 1}


def test_isotree_is_deterministic_and_scores_rows_independently():
    """Same seed, same forest; another seed, another forest. A row's score does not depend on
    the rows scored with it: one window at a time (engine watch) equals a block (batch)."""
    rng = np.random.default_rng(2)
    x = rng.lognormal(size=(600, 5))
    p = ModelParams(backend="isotree")
    a, b = fit(x[:500], p), fit(x[:500], p)
    block, flags = a.score(x[500:])
    np.testing.assert_array_equal(b.score(x[500:])[0], block)
    assert not np.array_equal(fit(x[:500], replace(p, seed=7)).score(x[500:])[0], block)
    one = [a.score(x[i : i + 1]) for i in range(500, 600)]
    np.testing.assert_array_equal(np.concatenate([d for d, _ in one]), block)
    np.testing.assert_array_equal(np.concatenate([f for _, f in one]), flags)
    np.testing.assert_array_equal(a.score(x[599:499:-1])[0], block[::-1])


def test_isotree_conventions_by_hand():
    """scikit-learn's signs and offset on isotree's depths: rows 0, 1, 1 split once (the
    only possible split), so row 0 is isolated at depth 1 and the two 1s end in a leaf of two
    at depth 1 (+ c(2) = 1); isotree normalizes by the exact c(3) = 2 (H(3) - 1) = 5/3."""
    from engine.model import _Isotree

    f = _Isotree(ModelParams(trees=5, contamination=0.5, backend="isotree"), 3)
    f.fit(np.array([[0.0], [1.0], [1.0]]))
    want = [-(2 ** (-1 / (5 / 3))), -(2 ** (-2 / (5 / 3)))]
    np.testing.assert_allclose(f.score_samples(np.array([[0.0], [1.0]])), want, rtol=1e-12)
    # The offset is the contamination quantile of the training rows' scores (numpy's linear
    # interpolation, as scikit-learn): the median of (s0, s1, s1) is s1.
    assert f.offset_ == pytest.approx(want[1], rel=1e-12)
    np.testing.assert_allclose(f.decision_function(np.array([[0.0]])), [want[0] - want[1]])
    # An outlier is flagged, the crowd is not.
    rng = np.random.default_rng(1)
    x = np.vstack([rng.normal(size=(300, 3)), [[8.0, 8.0, 8.0]]])
    d, flag = fit(x, ModelParams(backend="isotree")).score(x[[-1, 0]])
    assert flag.tolist() == [-1, 1] and d[0] < 0 < d[1]
    with pytest.raises(DataError, match="NaN or infinite"):
        fit(x, ModelParams(backend="isotree")).score(np.full((1, 3), np.nan))
    bad = x.copy()
    bad[5, 1] = np.nan  # a training row: refused before isotree's fit sees it
    with pytest.raises(DataError, match="NaN or infinite"):
        fit(bad, ModelParams(backend="isotree"))


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> pl.DataFrame:
    """Half a day of 20 s windows of the BTCUSDT-like simulation (engine simulate)."""
    from engine.simulate import write_simulation

    root = tmp_path_factory.mktemp("sim")
    write_simulation(root, "SIMUSDT", 0.5, 7)
    return build_windows(open_store(root, "SIMUSDT"), [20_000])[20_000]


def test_isotree_agrees_with_scikit_learn(simulated):
    """Same algorithm, other random draws: on half a day of simulated 20 s windows with the
    default model (1,660 scored windows, 17 refits), 98.1 % of flags are the same and the
    scores' rank correlation is 0.977; scikit-learn against itself with another seed agrees
    about as well (bench/model_bench.py measures both at scale)."""
    from scipy.stats import spearmanr

    ref = walk_forward(simulated, ModelParams(backend="sklearn"), jobs=1)
    fast = walk_forward(simulated, ModelParams(backend="isotree"), jobs=1)
    ok = ref["score"].is_not_null()
    assert ok.sum() == 1660 and (fast["score"].is_not_null() == ok).all()
    same = (fast.filter(ok)["prediction"] == ref.filter(ok)["prediction"]).mean()
    rho = spearmanr(fast.filter(ok)["score"], ref.filter(ok)["score"]).statistic
    assert same >= 0.96 and rho >= 0.95, (same, rho)


def _gappy_store(root) -> None:
    """Three days and a half with: ids missing inside day 1, ids missing across the midnight
    before day 2 (the two chunks' last and first trades), day 3 without a trade (so the
    jump before day 4 is only known two chunks later), and a recorded gap in day 0."""
    day = 86_400_000
    t = tape(T0, 3.5 * 86_400, 0.05, seed=11)
    ms = pl.col("trade_time").dt.epoch("ms")
    t = t.filter(~((ms >= T0 + 3 * day) & (ms < T0 + 3 * day + day)))  # day 3: nothing
    t = t.with_columns(trade_id=pl.int_range(1, t.height + 1, dtype=pl.Int64))
    inside = t.filter(ms >= T0 + day + day // 2)["trade_id"][0]
    across = t.filter(ms >= T0 + 2 * day)["trade_id"][0]
    drop = [*range(inside, inside + 5), across - 2, across - 1, across, across + 1]
    write_store(root, "SIMUSDT", t.filter(~pl.col("trade_id").is_in(drop)))
    write_recorded_gap(root, "SIMUSDT", T0 + 3_000_000, T0 + 3_700_000)


@pytest.mark.parametrize("jobs", [1, 2])
@pytest.mark.parametrize("every", [60_000, 7_000])  # 7 s does not divide a day: carried
def test_scores_fed_during_the_scan_equal_the_batch(tmp_path, jobs, every):
    """``load_scored`` starts refits while the windows are built: the same windows and the
    same scores, bit for bit, as building the table and then scoring it."""
    from engine.pipeline import Settings, load_scored, load_windows, score_windows

    _gappy_store(tmp_path)
    q = replace(P, buffer=100, retrain_every=30)
    s = Settings(tmp_path, "SIMUSDT", every_ms=every, model=q, jobs=jobs)
    windows = load_windows(s)
    assert windows["gap"].sum() > 10  # every kind of gap is in there
    seen: list[tuple[str, int, int]] = []
    fed, scored = load_scored(s, lambda stage, done, total: seen.append((stage, done, total)))
    assert fed.equals(windows)
    assert scored.equals(score_windows(s, windows))
    assert scored["refit"].max() > 20
    refits = [(d, t) for stage, d, t in seen if stage == "refits"]
    assert refits[-1] == (scored["refit"].max() + 1,) * 2
    stages = [stage for stage, _, _ in seen]
    assert stages.index("refits") < len(stages) - 1 - stages[::-1].index("scan")  # started early


def test_scores_fed_during_the_scan_fail_as_the_batch(tmp_path):
    from engine.pipeline import Settings, load_scored

    write_store(tmp_path, "SIMUSDT", tape(T0, 600, 1, seed=3))
    s = Settings(tmp_path, "SIMUSDT", every_ms=10_000, model=ModelParams(buffer=5000))
    with pytest.raises(InputError, match="fewer windows than the buffer"):
        load_scored(s)


def test_a_failing_refit_fails_the_run_and_stops_the_feed(tmp_path, windows):
    """A window feature that is not finite fails its refit: ``load_scored`` raises the
    refit's error, and the feed raises it at the next ``add`` once the refit has failed
    (the scan stops there, not at its end)."""
    from concurrent.futures import wait

    from engine.model import WalkForwardFeed
    from engine.pipeline import Settings, load_scored

    t = tape(T0, 2 * 86_400, 0.05, seed=4)
    bad = t["trade_id"][len(t) // 4]
    t = t.with_columns(
        qty=pl.when(pl.col("trade_id") == bad).then(float("inf")).otherwise(pl.col("qty"))
    )
    write_store(tmp_path, "SIMUSDT", t)
    s = Settings(tmp_path, "SIMUSDT", every_ms=60_000, model=replace(P, buffer=100))
    with pytest.raises(DataError, match="a window feature is NaN or infinite"):
        load_scored(s)

    broken = windows.with_columns(
        volume=pl.when(pl.int_range(pl.len()) == 100).then(float("nan")).otherwise("volume")
    )
    feed = WalkForwardFeed(P, jobs=2)
    try:
        feed.add(broken.head(200))
        wait([f for _, f in feed.futures])
        with pytest.raises(DataError, match="a window feature is NaN or infinite"):
            feed.add(broken.slice(200, 10))
    finally:
        feed.close()
