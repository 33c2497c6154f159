"""The simulator: deterministic, on the tick and lot grids, BTCUSDT-like, with its truth;
detection scoring against that truth."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import orjson
import polars as pl
import pytest

from engine.detection import evaluate
from engine.scan import open_store
from engine.simulate import simulate, truth_path, write_simulation
from engine.windows import build_windows


def tape(days: float, seed: int) -> tuple[pl.DataFrame, dict]:
    gen = simulate(days, seed)
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
    assert r["precision"] == pytest.approx(2 / 3)
    assert r["recall"] == pytest.approx(2 / 3)
    # Chance: the scored span is 3980 s; each event's +-120 s covers 240 s (no overlap).
    span = 199 * 20_000
    assert r["precision_chance"] == pytest.approx(3 * 240_000 / span)
    assert r["recall_chance"] == pytest.approx(1 - (1 - 240_000 / span) ** 3)
    assert r["by_kind"]["regime_shift"] == {
        "events": 1,
        "found": 1,
        "recall": 1.0,
        "median_lead_s": 40.0,
    }
    assert r["by_kind"]["activity_burst"]["median_lead_s"] == -100.0
    assert r["by_kind"]["price_jump"]["found"] == 0
