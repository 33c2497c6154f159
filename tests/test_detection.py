"""Detection scores that measure anticipation: the lead counting rules on small exact cases,
the rotation null against a plain loop, and its calibration on the no-precursor scenario."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest

from engine.detection import evaluate, shift_offsets
from engine.simulate import _seconds

T0 = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000)
EVERY = 20_000


def grid(n: int, flagged: list[int] | np.ndarray) -> pl.DataFrame:
    """``n`` scored 20 s windows from T0; the windows numbered in ``flagged`` are flagged."""
    pred = np.ones(n, dtype=np.int64)
    pred[np.asarray(flagged, dtype=np.int64)] = -1
    return pl.DataFrame(
        {
            "window_start": pl.Series(T0 + np.arange(n) * EVERY).cast(pl.Datetime("ms", "UTC")),
            "prediction": pred,
        }
    )


def events(*seconds: float, kind: str = "regime_shift") -> dict:
    return {"events": [{"kind": kind, "time_ms": T0 + int(s * 1000)} for s in seconds]}


def test_lead_runs_from_the_window_end_plus_grace():
    # Window 50 is [1000 s, 1020 s): its alarm is at 1022 s, not 1000 s.
    r = evaluate(grid(300, [50]), events(1100))
    assert (r["episodes"], r["events"], r["recall"], r["precision"]) == (1, 1, 1.0, 1.0)
    assert r["median_lead_s"] == 78.0
    assert r["by_kind"]["regime_shift"]["median_lead_s"] == 78.0
    assert evaluate(grid(300, [50]), events(1100), grace_ms=0)["median_lead_s"] == 80.0


def test_a_window_holding_the_event_is_late_not_a_lead():
    # The window starts 10 s before the event but ends after it: a hit after the event.
    r = evaluate(grid(300, [50]), events(1010))
    assert (r["recall"], r["precision"], r["median_lead_s"], r["late"]) == (0.0, 0.0, None, 1)
    assert r["by_kind"]["regime_shift"] == {
        "events": 1,
        "found": 0,
        "recall": 0.0,
        "recall_chance": r["recall_chance"],
        "p_recall": r["p_recall"],
        "median_lead_s": None,
        "late": 1,
    }
    # After the window, before the grace has passed: still late. At the alarm: a lead of 0.
    assert evaluate(grid(300, [50]), events(1021.999))["late"] == 1
    at = evaluate(grid(300, [50]), events(1022))
    assert (at["recall"], at["median_lead_s"], at["late"]) == (1.0, 0.0, 0)


def test_tolerance_bounds_the_lead():
    assert evaluate(grid(300, [50]), events(1022 + 300))["median_lead_s"] == 300.0
    far = evaluate(grid(300, [50]), events(1022.001 + 300))
    assert (far["recall"], far["precision"], far["late"]) == (0.0, 0.0, 0)
    # Later than the tolerance after the alarm's event is not "late" either: not noticed.
    assert evaluate(grid(300, [50]), events(1022 - 300.001))["late"] == 0


def test_the_latest_alarm_before_the_event_gives_the_lead_and_episodes_merge():
    # Windows 40 and 50 (starts 200 s apart): two episodes, alarms at 822 s and 1022 s.
    r = evaluate(grid(300, [40, 50]), events(1100))
    assert (r["episodes"], r["precision"], r["median_lead_s"]) == (2, 1.0, 78.0)
    # Starts 60 s apart merge into one episode (alarm at the first); 80 s apart do not.
    assert evaluate(grid(300, [47, 50]), events(1100))["episodes"] == 1
    assert evaluate(grid(300, [47, 50]), events(1100))["median_lead_s"] == 138.0
    assert evaluate(grid(300, [46, 50]), events(1100))["episodes"] == 2
    assert evaluate(grid(300, [46, 50]), events(1100))["median_lead_s"] == 78.0


def test_an_episode_going_on_through_the_event_leads_it():
    r = evaluate(grid(300, list(range(50, 61))), events(1100))
    assert (r["episodes"], r["recall"], r["median_lead_s"], r["late"]) == (1, 1.0, 78.0, 0)


def test_events_outside_the_scored_span_are_not_counted_and_no_flags_score_zero():
    r = evaluate(grid(300, [50]), events(1100, 10_000, -50))
    assert r["events"] == 1
    none = evaluate(grid(300, []), events(1100))
    assert (none["episodes"], none["recall"], none["precision"], none["p_recall"]) == (
        0,
        0.0,
        None,
        None,
    )


def test_shift_offsets_are_at_least_a_day_or_a_quarter_of_the_span():
    day, every = 86_400_000, 20_000
    o = shift_offsets(10 * day, every, 300_000)
    assert len(o) == 499 and o.min() == day and o.max() == 9 * day
    assert (o % every == 0).all() and (np.diff(o) > 0).all()
    short = shift_offsets(4_000_000, every, 120_000)  # 4000 s: from 1000 s to 3000 s
    assert (short.min(), short.max(), len(short)) == (1_000_000, 3_000_000, 101)
    assert len(shift_offsets(4_000_000, every, 600_000)) == 0  # shorter than 2 tolerances


def test_rotation_null_equals_a_loop_over_rotated_flag_series():
    rng = np.random.default_rng(5)
    n = 2000  # 40,000 s
    flagged = np.flatnonzero(rng.random(n) < 0.04)
    truth = events(*np.sort(rng.uniform(0, n * 20, 25)))
    r = evaluate(grid(n, flagged), truth)
    offsets = shift_offsets(n * EVERY, EVERY, 300_000)
    assert r["shifts"] == len(offsets) and r["min_shift_s"] == offsets.min() / 1000
    loop = [
        evaluate(grid(n, (flagged + d // EVERY) % n), truth, shifts=0) for d in offsets.tolist()
    ]
    recalls = np.array([x["recall"] for x in loop])
    precisions = np.array([x["precision"] for x in loop])
    leads = np.array([x["median_lead_s"] for x in loop if x["median_lead_s"] is not None])
    assert r["recall_chance"] == pytest.approx(recalls.mean(), abs=1e-12)
    assert r["precision_chance"] == pytest.approx(precisions.mean(), abs=1e-12)
    assert r["median_lead_chance_s"] == pytest.approx(np.median(leads), abs=1e-9)
    ge = (1 + (recalls >= r["recall"] - 1e-12).sum()) / (1 + len(offsets))
    assert r["p_recall"] == pytest.approx(ge)
    le = (1 + (leads <= r["median_lead_s"] + 1e-9).sum()) / (1 + len(offsets))
    gl = (1 + (leads >= r["median_lead_s"] - 1e-9).sum()) / (1 + len(offsets))
    assert r["p_lead"] == pytest.approx(min(1, 2 * min(le, gl)))


def test_flags_placed_ahead_of_every_event_beat_every_rotation():
    rng = np.random.default_rng(9)
    n = 4320  # a day of 20 s windows
    times = np.sort(rng.choice(np.arange(30, n - 30), 30, replace=False)) * 20 + 7  # seconds
    flagged = (times - 100) // 20  # alarm 100 - 22 + (times % 20) s before each event
    r = evaluate(grid(n, flagged), events(*times))
    assert (r["recall"], r["precision"]) == (1.0, 1.0)
    assert r["median_lead_s"] == 85.0  # 107 s from the window start, less a window and grace
    assert r["p_recall"] == r["p_precision"] == 1 / (1 + r["shifts"])
    assert r["recall_chance"] < 0.3


def clustered_flags(n: int, rate: float, run: float, rng) -> np.ndarray:
    """Flagged window numbers of a two-state Markov chain: share ``rate`` flagged, in runs of
    ``run`` windows on average (flags cluster, as a detector's do)."""
    leave = 1 / run
    enter = rate * leave / (1 - rate)
    u = rng.random(n)
    state = np.zeros(n, dtype=bool)
    on = rng.random() < rate
    for i in range(n):  # a test helper: n is a few thousand
        on = (u[i] >= leave) if on else (u[i] < enter)
        state[i] = on
    return np.flatnonzero(state)


def test_random_clustered_flags_on_the_no_precursor_scenario_score_at_chance():
    """The calibration case: nothing announces the simulated events, so clustered random
    flags must get p < 0.05 at about the nominal rate, and a lead like the rotations'."""
    n = 3 * 4320  # 3 days of 20 s windows
    ps: dict[str, list[float]] = {"p_recall": [], "p_precision": [], "p_lead": []}
    excess = []
    for sim_seed in (7, 8):
        _, evs = _seconds(3, sim_seed, T0)
        truth = {"events": evs}
        for seed in range(10):
            flags = clustered_flags(n, 0.05, 3.0, np.random.default_rng([sim_seed, seed]))
            r = evaluate(grid(n, flags), truth)
            for k in ps:
                ps[k].append(r[k])
            excess.append(r["median_lead_s"] - r["median_lead_chance_s"])
    for k, v in ps.items():
        assert sum(p < 0.05 for p in v) <= 3, (k, v)  # 20 runs: ~1 expected, P(>3) = 1.6 %
    assert abs(np.median(excess)) < 30  # seconds; the old rule gave random flags +130 s
