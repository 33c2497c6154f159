"""The simulator: deterministic, on the tick and lot grids, BTCUSDT-like, with its truth;
detection scoring against that truth, with and without precursors of known lead."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import orjson
import polars as pl
import pytest

from engine.detection import evaluate
from engine.scan import open_store
from engine.simulate import PRECURSOR_LEAD_S, START_MS, simulate, truth_path, write_simulation
from engine.windows import build_windows


def tape(days: float, seed: int, scenario: str = "calibration") -> tuple[pl.DataFrame, dict]:
    gen = simulate(days, seed, scenario=scenario)
    parts = []
    while True:
        try:
            parts.append(next(gen))
        except StopIteration as done:
            return pl.concat(parts), done.value


def test_same_seed_same_tape_and_another_seed_another():
    a, ta = tape(0.05, 7)
    b, tb = tape(0.05, 7)
    c, _ = tape(0.05, 8)
    assert a.equals(b) and ta == tb
    assert not a.equals(c)


def test_tape_is_on_the_grids_with_consecutive_ids_and_ordered_times():
    t, truth = tape(0.1, 3)
    assert t.height == truth["trades"]
    assert (t["trade_id"].diff().drop_nulls() == 1).all()
    assert (t["trade_time"].diff().drop_nulls().dt.total_microseconds() >= 0).all()
    assert np.allclose(
        (t["price"] * 100).to_numpy(), np.round((t["price"] * 100).to_numpy()), atol=1e-6
    )
    assert np.allclose(
        (t["qty"] * 1e5).to_numpy(), np.round((t["qty"] * 1e5).to_numpy()), atol=1e-6
    )
    assert t["qty"].min() >= 0.00001


def test_written_store_looks_like_btcusdt_and_keeps_its_truth(tmp_path):
    truth = write_simulation(tmp_path, "simusdt", 1, 7)
    saved = orjson.loads(truth_path(tmp_path, "SIMUSDT").read_bytes())
    assert saved == orjson.loads(orjson.dumps(truth))
    kinds = {e["kind"] for e in saved["events"]}
    assert kinds == {"regime_shift", "activity_burst", "price_jump"}
    assert [e["time_ms"] for e in saved["events"]] == sorted(e["time_ms"] for e in saved["events"])
    w = build_windows(open_store(tmp_path, "SIMUSDT"), [20_000])[20_000]
    # Scale (fixtures/README.md, BTCUSDT 20 s windows): ~4 M trades a day, median ~970 trades
    # and ~2.4 BTC per window, 95th percentile ~3,500, max ~17,500.
    assert 2e6 < saved["trades"] < 8e6
    assert 150 < w["trade_count"].median() < 2000  # type: ignore[operator]
    assert 0.5 < w["volume"].median() < 10  # type: ignore[operator]
    assert w["trade_count"].max() > 3 * w["trade_count"].median()  # type: ignore[operator]
    # Bursty: far more variable than Poisson arrivals at the same mean.
    c = w["trade_count"].to_numpy()
    assert c.var() > 10 * c.mean()


def test_detection_scores_by_hand():
    t0 = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000)
    starts = [t0 + i * 20_000 for i in range(200)]
    pred = [1] * 200
    for i in (30, 31, 32, 120, 170):  # episodes at 600 s (near the shift), 2400 s, 3400 s
        pred[i] = -1
    scored = pl.DataFrame(
        {
            "window_start": [datetime.fromtimestamp(s / 1000, UTC) for s in starts],
            "prediction": pred,
        }
    )
    truth = {
        "events": [
            {"kind": "regime_shift", "time_ms": t0 + 640_000},
            {"kind": "activity_burst", "time_ms": t0 + 2_300_000},
            {"kind": "price_jump", "time_ms": t0 + 1_200_000},
            {"kind": "regime_shift", "time_ms": t0 + 10**9},  # outside the data: not counted
        ]
    }
    r = evaluate(scored, truth, tolerance_ms=120_000)
    assert (r["episodes"], r["events"]) == (3, 3)
    # Alarms at the first window's end plus 2 s: 622 s, 2422 s, 3422 s. Only the first comes
    # before an event (the shift at 640 s); the burst at 2300 s was flagged 122 s after it.
    assert r["precision"] == pytest.approx(1 / 3)
    assert r["recall"] == pytest.approx(1 / 3)
    assert (r["median_lead_s"], r["late"]) == (18.0, 0)
    # Chance: the flags rotated by 1000 s .. 3000 s (a quarter of the 4000 s span), 101 ways.
    assert (r["shifts"], r["min_shift_s"]) == (101, 1000.0)
    assert r["precision_chance"] == r["recall_chance"] == pytest.approx(12 / 101)
    assert r["p_recall"] == pytest.approx(35 / 102)
    assert r["by_kind"]["regime_shift"] == {
        "events": 1,
        "found": 1,
        "recall": 1.0,
        "recall_chance": pytest.approx(12 / 101),
        "p_recall": pytest.approx(13 / 102),
        "median_lead_s": 18.0,
        "late": 0,
    }
    assert r["by_kind"]["activity_burst"]["found"] == 0
    assert r["by_kind"]["price_jump"]["found"] == 0


def scored_tape(days: float, seed: int, scenario: str) -> tuple[pl.DataFrame, dict]:
    """The simulated tape's 20 s windows, scored walk-forward with the default model."""
    from engine.model import ModelParams, walk_forward
    from engine.windows import window_features

    t, truth = tape(days, seed, scenario)
    lo = START_MS // 20_000 * 20_000
    w = window_features(t, 20_000, lo, lo + int(days * 86_400_000))
    return walk_forward(w, ModelParams(), 2), truth


def test_detector_lead_on_the_precursor_scenario_is_the_planted_lead():
    # Two days (24 bursts): with one, p_recall was below 0.01 for one seed of scikit-learn
    # and 0.012-0.032 for the others and for isotree; with two it is 0.002 for every seed
    # tried (42, 7, 1) on both backends.
    scored, truth = scored_tape(2, 7, "precursor")
    assert truth["scenario"] == "precursor" and truth["precursor_lead_s"] == PRECURSOR_LEAD_S
    bursts = [e for e in truth["events"] if e["kind"] == "volatility_burst"]
    assert len(bursts) == 24
    assert all(e["time_ms"] - e["precursor"]["start_ms"] == 120_000 for e in bursts)
    r = evaluate(scored, truth)
    k = r["by_kind"]["volatility_burst"]
    # The alarm comes at the end of the first flagged window of the precursor plus 2 s grace:
    # the lead is 118 s less up to two 20 s windows.
    assert 118 - 2 * 20 <= k["median_lead_s"] <= 118
    assert k["recall"] >= 0.7 and k["recall"] > 2 * k["recall_chance"]
    assert k["p_recall"] < 0.01
    # Bursts that announce nothing are not anticipated beyond chance.
    assert r["by_kind"]["activity_burst"]["p_recall"] > 0.05


def test_detector_anticipates_nothing_on_the_calibration_scenario():
    scored, truth = scored_tape(1, 7, "calibration")
    assert truth["scenario"] == "calibration"
    r = evaluate(scored, truth)
    assert r["recall"] == pytest.approx(r["recall_chance"], abs=0.15)
    assert min(r["p_recall"], r["p_precision"], r["p_lead"]) > 0.05


def test_simulate_command_writes_the_precursor_scenario(tmp_path):
    from click.testing import CliRunner

    from engine.cli import main

    args = ["simulate", "--data-dir", str(tmp_path), "--symbol", "preusdt", "--days", "0.2"]
    r = CliRunner().invoke(main, [*args, "--scenario", "precursor", "--lead", "90"])
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("simulated PREUSDT: ")
    assert "2 volatility_bursts, " in r.stdout and ", precursors 90 s ahead (" in r.stdout
    truth = orjson.loads(truth_path(tmp_path, "PREUSDT").read_bytes())
    assert (truth["scenario"], truth["precursor_lead_s"]) == ("precursor", 90)
    bad = CliRunner().invoke(main, [*args, "--scenario", "precursor", "--lead", "5"])
    assert (bad.exit_code, bad.stdout) == (1, "")
    assert bad.stderr == "Error: --lead must be between 20 and 1800 seconds\n"
    assert CliRunner().invoke(main, [*args, "--scenario", "nope"]).exit_code == 2
