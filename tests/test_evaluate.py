"""engine evaluate: calibrated on simulated nulls, powerful on a planted precursor, exact against
statsmodels and arch, blind past the end of the data, and its command line.

The window tapes are made here (numpy, no trades): latent log-variance h is AR(1) with
phi = 0.999 per 20 s window (half-life ~3.9 h, sd 0.8), plus an intraday cycle of +-0.6 in
log-variance; returns are Student t(6) scaled to that variance; trade counts follow
exp(h / 2); the window's price sd measures the volatility with a little noise.
"""

from __future__ import annotations

import numpy as np
import orjson
import polars as pl
import pytest
from click.testing import CliRunner
from scipy.signal import lfilter
from scipy.stats import t as student
from synth import window_frame

from engine.cli import main
from engine.econometrics import (
    bh_adjust,
    block_means,
    clark_west,
    diebold_mariano,
    fft_length,
    flag_effect,
    hac_lags,
    long_run_variance,
    residualize,
    rotation_p,
    rotation_spectrum,
    rotation_stats,
    walk_forward_ols,
)
from engine.evaluate import FLAGS, METRICS, ROW_KEYS, EvalParams, evaluate
from engine.har import design, targets
from engine.horizons import horizons_for

T0 = 1_767_225_600_000  # 2026-01-01 00:00 UTC
DAY_MS = 86_400_000
EVERY_MS = 20_000
HS = horizons_for([("1m", 60_000), ("5m", 300_000)], EVERY_MS)  # k = 3 and 15: overlapping
SEEDS = range(20)


def window_tape(
    seed: int,
    flags: str,
    days: float = 3.0,
    rate: float = 0.05,
    boost: float = 1.0,
    boost_windows: int = 15,
) -> pl.DataFrame:
    """``flags``: ``noise`` (a 2-state Markov chain, runs of ~10 windows, independent of all
    else), ``volatility`` (the window's own price sd above its 95th percentile) or ``planted``
    (independent Bernoulli(rate); each flag multiplies the variance of the next
    ``boost_windows`` windows by ``boost``, compounding when flags overlap)."""
    rng = np.random.default_rng(seed)
    n = int(days * 86_400_000 / EVERY_MS)
    t = T0 + np.arange(n, dtype=np.int64) * EVERY_MS
    phi = 0.999
    e = rng.normal(0, 0.8 * np.sqrt(1 - phi**2), n)
    e[0] = rng.normal(0, 0.8)
    h = lfilter([1.0], [1.0, -phi], e)
    season = 0.6 * np.cos(2 * np.pi * ((t % DAY_MS) / DAY_MS - 0.6))
    f = np.zeros(n, dtype=bool)
    if flags == "noise":
        stay_off, stay_on = rate / 10 / (1 - rate), 1 / 10  # leave rates; 5 % on, runs of 10
        m = n
        runs = np.empty(2 * m, dtype=np.int64)
        runs[0::2], runs[1::2] = rng.geometric(stay_off, m), rng.geometric(stay_on, m)
        f = np.repeat(np.tile([False, True], m), runs)[:n]
    return window_frame(rng, t, h, season, flags, f, _t6, rate, boost, boost_windows)


def _t6(rng: np.random.Generator, var: np.ndarray) -> np.ndarray:
    """Student t(6) returns of variance ``var``."""
    return np.sqrt(var) * rng.standard_t(6, len(var)) / np.sqrt(1.5)


def model_rows(ev, metric: str = "log_rv") -> dict[str, dict]:
    return {r["horizon"]: r for r in ev.rows if r["flag"] == "model" and r["metric"] == metric}


# --- (a) null calibration and (b) power ----------------------------------------------------


@pytest.mark.parametrize("kind", ["noise", "volatility"])
def test_null_flags_are_rejected_at_about_the_nominal_rate(kind):
    """Flags that are clustered noise, and flags that are a threshold on the window's own
    volatility (information the baseline already has), over 20 seeds: the share of p < 0.05
    stays near 0.05 (measured: noise 0.00 / 0.00, volatility 0.00 / 0.05 at 1m / 5m)."""
    p = {h.label: [] for h in HS}
    for seed in SEEDS:
        for label, r in model_rows(evaluate(window_tape(seed, kind), HS, EVERY_MS)).items():
            p[label].append(r["p_value"])
    rates = {label: float(np.mean(np.array(v) < 0.05)) for label, v in p.items()}
    print(f"null {kind}: share of p < 0.05 over {len(SEEDS)} seeds: {rates}")
    assert all(rate <= 0.15 for rate in rates.values()), rates


def test_planted_precursor_is_found_and_its_effect_covered():
    """Each flag doubles the variance of the next 5 minutes (15 windows). For a flagged window
    the 5-minute future's realized variance is then exactly twice what it would have been
    (flags are independent of the past, and doubling every term of a sum doubles the sum), so
    exp(gamma) = 2 for log_rv; the floor (1 % of the mean, added to both) pulls the estimand
    a little below (about 1.95 here). |r| scales by sqrt(2): 1.41 for log_abs_return_sum."""
    found = covered = 0
    effects = []
    for seed in SEEDS:
        ev = evaluate(window_tape(seed, "planted", rate=0.01, boost=2.0), HS, EVERY_MS)
        r = model_rows(ev)["5m"]
        effects.append(r["effect"])
        found += r["p_value"] < 0.05 and r["verdict"] == "adds information"
        covered += r["effect_ci_low"] <= 2.0 <= r["effect_ci_high"]
        a = model_rows(ev, "log_abs_return_sum")["5m"]
        assert 1.2 < a["effect"] < 1.6
    print(
        f"planted x2: found in {found}/{len(SEEDS)} seeds, interval covers 2 in "
        f"{covered}/{len(SEEDS)}, geometric mean effect {np.exp(np.mean(np.log(effects))):.3f}"
    )
    assert found >= 18 and covered >= 14


# --- (c) exact figures against statsmodels and arch -------------------------------------------


def _clustered(rng, n, p_on=0.05, p_off=0.2):
    """0/1 runs: a Markov chain switching on with p_on and off with p_off."""
    runs = np.empty(2 * n, dtype=np.int64)
    runs[0::2], runs[1::2] = rng.geometric(p_on, n), rng.geometric(p_off, n)
    return np.repeat(np.tile([0.0, 1.0], n), runs)[:n]


def test_flag_effect_equals_statsmodels_hac_regression():
    import statsmodels.api as sm

    rng = np.random.default_rng(3)
    n = 800
    z = np.column_stack(
        [np.ones(n), rng.normal(size=n), lfilter([1], [1, -0.8], rng.normal(size=n))]
    )
    f = _clustered(rng, n)
    y = z @ [0.5, 1.0, -0.3] + 0.4 * f + lfilter([1, 0.6, 0.3], [1], rng.normal(size=n))
    res = residualize(np.column_stack([y, f]), z)
    gamma, se, p_hac, lags = flag_effect(res[:, 0], res[:, 1], k=5)
    full = sm.OLS(y, np.column_stack([z, f])).fit(
        cov_type="HAC", cov_kwds={"maxlags": lags, "use_correction": False}
    )
    assert gamma == pytest.approx(full.params[-1], rel=1e-9)
    assert se == pytest.approx(full.bse[-1], rel=1e-9)
    assert p_hac == pytest.approx(full.pvalues[-1] / 2, rel=1e-7)  # one-sided, gamma > 0
    assert lags >= 10  # at least 2k


def test_hac_lag_is_arch_newey_west_bandwidth_and_variance_matches_statsmodels():
    from arch.covariance.kernel import Bartlett
    from statsmodels.stats.sandwich_covariance import S_hac_simple

    x = lfilter([1], [1, -0.7], np.random.default_rng(4).normal(size=2000))
    bw = Bartlett(x, center=False).bandwidth
    assert hac_lags(x, 0) == int(np.ceil(bw)) and hac_lags(x, 500) == 500
    for lags in (0, 3, 17):
        assert len(x) * long_run_variance(x, lags) == pytest.approx(
            S_hac_simple(x, lags)[0, 0], rel=1e-12
        )


def test_clark_west_and_diebold_mariano_on_block_means_against_scipy():
    """Both are t-tests of the means per refit block (a day): scipy's one-sample t-test on
    those means gives the same figures; fewer than 20 blocks gives no figure."""
    from scipy.stats import ttest_1samp

    rng = np.random.default_rng(5)
    n = 600
    y = lfilter([1, 0.5, 0.5, 0.5], [1], rng.normal(size=n))
    pb, pa = 0.3 * y + rng.normal(size=n), 0.5 * y + rng.normal(size=n)
    blocks = np.repeat(np.arange(30), 20)
    f = (y - pb) ** 2 - ((y - pa) ** 2 - (pb - pa) ** 2)
    means = f.reshape(30, 20).mean(axis=1)
    assert block_means(f, blocks) == pytest.approx(means, rel=1e-12)
    ref = ttest_1samp(means, 0.0, alternative="greater")
    stat, p = clark_west(y, pb, pa, blocks)
    assert (stat, p) == (
        pytest.approx(ref.statistic, rel=1e-9),
        pytest.approx(ref.pvalue, rel=1e-9),
    )

    la, lb = (y - pa) ** 2, (y - pb) ** 2
    dm, p_dm = diebold_mariano(la, lb, blocks)
    t = ttest_1samp((lb - la).reshape(30, 20).mean(axis=1), 0.0).statistic
    assert dm == pytest.approx(t * np.sqrt(29 / 30), rel=1e-9)
    assert p_dm == pytest.approx(student.sf(t * np.sqrt(29 / 30), 29), rel=1e-9)
    few = np.repeat(np.arange(10), 60)
    assert (
        np.isnan(clark_west(y, pb, pa, few)).all() and np.isnan(diebold_mariano(la, lb, few)).all()
    )


def test_rotation_statistics_equal_a_loop_over_shifts():
    rng = np.random.default_rng(6)
    n = 97  # prime: the FFT handles any length
    y_res = rng.normal(size=n)
    flags = np.column_stack([_clustered(rng, n), rng.random(n) < 0.2])
    stats = rotation_stats(y_res, flags)
    brute = np.array([[np.roll(flags[:, j], s) @ y_res for j in range(2)] for s in range(n)])
    np.testing.assert_allclose(stats, brute, rtol=0, atol=1e-10)
    p, shifts = rotation_p(stats[:, 0], 20)
    window = brute[20 : n - 20 + 1, 0]
    assert shifts == len(window) == 58
    assert p == (1 + np.sum(window >= brute[0, 0])) / (1 + len(window))
    assert fft_length(1_576_789) == 1_575_000 and fft_length(97) == 96


def test_walk_forward_forecasts_equal_a_direct_fit_with_the_embargo():
    rng = np.random.default_rng(7)
    n, k = 500, 6
    x = np.column_stack([np.ones(n), rng.normal(size=(n, 3))])
    y = x @ [1.0, 0.5, -0.2, 0.1] + rng.normal(size=n)
    ok = rng.random(n) > 0.1
    starts = np.array([100, 250, 400])
    out = walk_forward_ols(x, y[:, None], ok, starts, k, [np.arange(3), np.arange(4)], 20)
    for j, s0 in enumerate(starts):
        s1 = starts[j + 1] if j + 1 < len(starts) else n
        train = ok & (np.arange(n) < s0 - k)  # row i's target ends at i + k: known before s0
        for mi, cols in enumerate([np.arange(3), np.arange(4)]):
            beta = np.linalg.lstsq(x[train][:, cols], y[train], rcond=None)[0]
            np.testing.assert_allclose(out[s0:s1, 0, mi], x[s0:s1, cols] @ beta, rtol=1e-9)
    assert np.isnan(out[:100]).all()


def test_benjamini_hochberg_is_statsmodels_and_scipy():
    from scipy.stats import false_discovery_control

    p = [0.001, 0.02, 0.03, 0.2, 0.5]
    np.testing.assert_allclose(bh_adjust(p), false_discovery_control(p), rtol=1e-12)


# --- (d) the end of the data and gaps ----------------------------------------------------------


def test_horizons_past_the_last_trade_are_excluded():
    w = window_tape(1, "noise", days=2)
    n = w.height
    # --end an hour past the data: empty windows, no price, not scored.
    empty = pl.DataFrame(
        {
            "window_start": pl.datetime_range(
                w["window_start"][-1], w["window_start"][-1] + pl.duration(hours=1), "20s",
                closed="right", eager=True, time_zone="UTC",
            ).cast(pl.Datetime("us", "UTC")),
        }
    ).with_columns(
        trade_count=pl.lit(0, pl.Int64), volume=pl.lit(0.0), close=pl.lit(None, pl.Float64),
        **{"return": pl.lit(None, pl.Float64)}, volatility=pl.lit(0.0), gap=pl.lit(False),
        prediction=pl.lit(None, pl.Int8),
    )  # fmt: skip
    padded = pl.concat([w, empty])
    d = design(padded, EVERY_MS, EvalParams())
    assert d.last == n - 1
    for k in (3, 15):
        y, ok = targets(d, k)
        # The last window with trades may be partly filled: never a future.
        assert ok[: n - 1 - k].all() and not ok[n - 1 - k :].any()
        assert np.isfinite(y[: n - 1 - k]).all()
    a, b = evaluate(w, HS, EVERY_MS), evaluate(padded, HS, EVERY_MS)
    for ra, rb in zip(a.rows, b.rows, strict=True):  # the empty tail changed nothing
        for key, va in ra.items():  # (but the last bits of centring constants)
            assert rb[key] == (pytest.approx(va, rel=1e-6) if isinstance(va, float) else va)


def test_futures_touching_a_gap_are_excluded():
    w = window_tape(2, "noise", days=1).with_columns(
        gap=pl.int_range(pl.len()) == 2000, trade_count=pl.col("trade_count")
    )
    d = design(w, EVERY_MS, EvalParams())
    _, ok = targets(d, 15)
    assert not ok[1985:2000].any() and ok[1984] and ok[2000]
    assert not d.base_ok[2000]


# --- (e) the command line ----------------------------------------------------------------------


def _prototype_csv(path, w: pl.DataFrame) -> None:
    w.select(
        pl.col("window_start").dt.strftime("%Y-%m-%d %H:%M:%S").alias("timestamp"),
        "trade_count",
        "volume",
        (pl.col("volume") / pl.col("trade_count")).alias("avg_trade_size"),
        "return",
        "volatility",
        pl.lit(0.1).alias("score"),
        "prediction",
    ).write_csv(path)


def engine(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_cli_json_rows_keys_and_order(tmp_path):
    csv = tmp_path / "prototype.csv"
    _prototype_csv(csv, window_tape(3, "noise", days=2))
    r = engine(
        "evaluate", "--windows-csv", str(csv), "--every", "20s", "--horizons", "1m,5m",
        "--format", "json",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    rows = orjson.loads(r.stdout)
    assert isinstance(rows, list) and len(rows) == 2 * 2 * len(FLAGS)
    assert list(rows[0]) == list(ROW_KEYS)
    assert list(rows[0])[:10] == [
        "horizon", "flag", "metric", "n", "effect", "effect_ci_low", "effect_ci_high",
        "p_value", "oos_r2_gain", "verdict",
    ]  # fmt: skip
    assert [(x["metric"], x["horizon"], x["flag"]) for x in rows] == [
        (m, h, f) for m in METRICS for h in ("1m", "5m") for f in FLAGS
    ]
    assert rows[0]["flag"] == "model" and rows[1]["flag"] == "trade_count_z"
    assert {x["verdict"] for x in rows} <= {
        "adds information",
        "no evidence beyond volatility",
        "too little data",
    }
    assert not (tmp_path / "results").exists()  # no store, no ledger


def test_cli_store_run_writes_the_ledger(tmp_path):
    from synth import tape, write_store

    write_store(tmp_path, "SIMUSDT", tape(1_723_075_200_000, 3 * 3600, 2, seed=11))
    args = [
        "evaluate", "--data-dir", str(tmp_path), "--symbol", "simusdt", "--every", "20s",
        "--horizons", "1m,5m", "--buffer", "100", "--retrain-every", "50", "--trees", "20",
        "--jobs", "1", "--format", "ndjson",
    ]  # fmt: skip
    r = engine(*args)
    assert r.exit_code == 0, r.output
    rows = [orjson.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 16 and {x["verdict"] for x in rows} == {"too little data"}
    assert r.stderr.startswith("note: no window got a baseline forecast")
    ledger = (tmp_path / "results" / "ledger.ndjson").read_bytes().splitlines()
    assert len(ledger) == 16
    assert orjson.loads(ledger[0])["parameters"]["symbol"] == "SIMUSDT"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--horizons", "30s"], "Error: horizon 30s is not a multiple of the window (20s)"),
        (["--windows-csv", "/nonexistent.csv"], "Error: /nonexistent.csv does not exist"),
        (["--every", "twenty"], "Error: cannot read duration 'twenty'"),
    ],
)
def test_cli_bad_input_is_one_error_line(tmp_path, args, message):
    csv = tmp_path / "p.csv"
    _prototype_csv(csv, window_tape(4, "noise", days=0.1))
    base = ["evaluate", "--windows-csv", str(csv), "--every", "20s"]
    r = engine(*base, *args)
    assert r.exit_code == 1
    assert r.stdout == "" and len(r.stderr.splitlines()) == 1
    assert r.stderr.startswith(message)


def test_cli_unsorted_windows_are_refused(tmp_path):
    csv = tmp_path / "p.csv"
    w = window_tape(5, "noise", days=0.1)
    _prototype_csv(csv, pl.concat([w[10:], w[:10]]))
    r = engine("evaluate", "--windows-csv", str(csv), "--every", "20s")
    assert r.exit_code == 1 and len(r.stderr.splitlines()) == 1
    assert r.stderr.startswith("Error: ")


def test_ledger_counts_every_comparison_run_on_the_store(tmp_path):
    from engine.evaluate import append_ledger

    ev = evaluate(window_tape(6, "noise", days=2), HS, EVERY_MS)
    assert ev.comparisons == 16
    assert append_ledger(tmp_path, ev) == 16
    with open(tmp_path / "results" / "ledger.ndjson", "ab") as f:
        f.write(b'{"time": "2026-')  # a run that died mid-write
    assert append_ledger(tmp_path, ev) == 32
    lines = (tmp_path / "results" / "ledger.ndjson").read_bytes().splitlines()
    assert len(lines) == 33 and lines[16] == b'{"time": "2026-'
    assert all(orjson.loads(line) for line in lines[17:])
    first = orjson.loads((tmp_path / "results" / "ledger.ndjson").read_bytes().splitlines()[0])
    assert list(first) == [
        "time", "parameters", "horizon", "flag", "metric", "n", "effect", "p_value", "p_bh",
        "verdict",
    ]  # fmt: skip


@pytest.mark.parametrize("side", ["busy", "quiet"])
def test_a_threshold_on_an_input_is_not_information_on_a_longer_history(side):
    """A flag that is only a threshold on the window's own volatility (the busiest or the
    quietest 5 %) knows nothing the baseline's inputs do not. A linear-in-logs adjustment
    reads the baseline's nonlinearity as information, and more surely the more data there is
    (before the decile steps: 'Yes' in 12 of 40 runs of 20 days for the quiet side)."""
    from engine.verdict import headline

    yes, low_p = 0, 0
    for seed in range(6):
        w = window_tape(100 + seed, "volatility", days=10)
        rel = (w["volatility"] / w["close"]).to_numpy()
        cut = np.quantile(rel, 0.95 if side == "busy" else 0.05)
        flag = rel > cut if side == "busy" else rel < cut
        w = w.with_columns(prediction=pl.Series(np.where(flag, -1, 1), dtype=pl.Int8))
        ev = evaluate(w, HS, EVERY_MS)
        yes += headline(ev.as_dict()).startswith("Yes")
        low_p += sum(r["p_value"] < 0.05 for r in model_rows(ev).values())
    assert yes == 0
    assert low_p <= 2  # of 12 p-values (6 seeds x 2 horizons)


def test_residuals_from_chunked_normal_equations_equal_the_whole_matrix():
    rng = np.random.default_rng(9)
    z = np.column_stack([np.ones(1001), rng.normal(size=(1001, 5))])
    v = np.column_stack([z @ rng.normal(size=6) + rng.normal(size=1001), rng.normal(size=1001)])
    whole = residualize(v, z)
    assert residualize(v, lambda sl: z[sl], chunk=97) == pytest.approx(whole, abs=1e-10)
    assert abs(whole[:, 0] @ z).max() < 1e-8  # residuals are orthogonal to every column


def test_adjustment_shares_the_design_between_metrics_exactly_to_rounding():
    """Both metrics' outcomes and the flags are residualized on the shared design once,
    then on the metric's own forecast (Frisch-Waugh): the residuals of regressing on the
    whole design [inputs, forecast, decile steps] at once."""
    from engine.evaluate import _adjusted_residuals, decile_edges, quantile_steps

    tp = design(window_tape(2, "noise", days=1.0), EVERY_MS, EvalParams())
    rng = np.random.default_rng(8)
    ev = np.flatnonzero(tp.base_ok)[:2000]
    xe, fe = tp.x[ev, : tp.n_base], tp.x[ev, tp.n_base :]
    ye = rng.normal(size=(len(ev), 2)) + xe[:, 1:2]
    pb = xe[:, 1:3] + rng.normal(0, 0.1, size=(len(ev), 2))
    got = _adjusted_residuals(tp, ev, ye, pb, fe)
    plain = [i for i in range(1, tp.n_base) if tp.enter_after[i] == 0]
    steps = quantile_steps(xe[:, plain], decile_edges(list(xe[:, plain].T)))
    for m in range(2):
        z = np.column_stack([xe, pb[:, m], steps])
        whole = residualize(np.column_stack([ye[:, m], fe]), z)
        np.testing.assert_allclose(got[m], whole, rtol=0, atol=1e-8)


def test_rotation_statistics_reuse_the_flags_spectrum():
    rng = np.random.default_rng(10)
    flags = np.column_stack([_clustered(rng, 96), rng.random(96) < 0.1])
    y = rng.normal(size=96)
    spectrum = rotation_spectrum(flags)
    assert np.array_equal(rotation_stats(y, flags, spectrum), rotation_stats(y, flags))
